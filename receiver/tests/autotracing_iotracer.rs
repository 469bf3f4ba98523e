//! Live test of `iotracer`: a process doing back-to-back 1 MiB O_DIRECT
//! writes to a loop device keeps it busy; with a low utilisation threshold
//! the detector fires after two anomalous samples and the block-tracepoint
//! capture names the process and its cgroup.

mod autotracing_util;

use std::time::Duration;

use autotracing_util::*;
use kotel_pipelines::{Value, attr};
use kotel_receiver::autotracing::iotracer;
use kotel_receiver::framework::Detector;

const WRITER: &str = r#"
import os, mmap, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 1 << 20)
off = 0
while True:
    os.pwritev(fd, [buf], off)
    off = (off + (1 << 20)) % (64 << 20)
"#;

#[test]
fn iotracer_names_the_process_hammering_a_disk() {
    require_root();
    let lo = LoopDev::new(64);
    let mut cg = TestCgroup::new("kotel-test-iotracer", &["/sys/fs/cgroup/unified"]);
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("writer.py");
    std::fs::write(&script, WRITER).unwrap();
    let config = iotracer::Config {
        include: vec![format!("^{}$", lo.name())],
        util_threshold: 30.0,
        duration: Duration::from_secs(2),
        ..Default::default()
    };
    let mut d =
        iotracer::IotracerDetector::new("/proc/diskstats", config, tmp.path().into()).unwrap();
    let t0 = std::time::Instant::now();
    assert!(d.check().unwrap().is_empty());
    let idle_check = t0.elapsed();
    let dirs = cg.dirs.clone();
    let child = in_cgroup(&dirs, &format!("python3 {} {}", script.display(), lo.dev))
        .spawn()
        .unwrap();
    let pid = child.id();
    cg.children.push(child);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        d.check().unwrap().is_empty(),
        "one anomalous sample is not enough"
    );
    std::thread::sleep(Duration::from_millis(1000));
    let triggers = d.check().unwrap();
    eprintln!("idle check {idle_check:?}; {triggers:?}");
    assert_eq!(triggers.len(), 1);
    let t = &triggers[0];
    assert_eq!(t.scope, format!("disk:{}", lo.name()));
    let r = d.capture(t).unwrap();
    assert_eq!(r.event_name, "linux.autotrace.iotracer");
    let Some(Value::Map(body)) = &r.body else {
        panic!()
    };
    let Some(Value::Array(procs)) = attr(body, "top_processes") else {
        panic!()
    };
    let Value::Map(first) = &procs[0] else {
        panic!()
    };
    eprintln!("{first:?}");
    assert_eq!(attr(first, "process.pid"), Some(&Value::Int(pid as i64)));
    assert!(matches!(attr(first, "write_bytes"), Some(Value::Int(n)) if *n > 4 << 20));
    assert_eq!(
        attr(first, "linux.cgroup.path"),
        Some(&Value::Str(cg.path.clone().into()))
    );
    let Some(Value::Array(cgs)) = attr(body, "top_cgroups") else {
        panic!()
    };
    assert!(format!("{cgs:?}").contains(&cg.path));
    let Some(Value::Array(files)) = attr(&r.attributes, "linux.autotrace.artifacts") else {
        panic!()
    };
    let Value::Str(f) = &files[0] else { panic!() };
    assert!(
        std::fs::read_to_string(f.as_ref())
            .unwrap()
            .contains(&format!("{pid}\tpython3"))
    );
}
