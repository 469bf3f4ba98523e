//! Live test of `memburst`: a process in a memory cgroup (v1, 256 MiB
//! limit) allocates 200 MiB of anonymous memory quickly; with a 3-sample
//! window the detector fires for the cgroup and the capture names it.

mod autotracing_util;

use std::time::Duration;

use autotracing_util::*;
use kotel_pipelines::{Value, attr};
use kotel_receiver::autotracing::memburst;
use kotel_receiver::framework::Detector;

const ALLOC: &str = r#"
import time, sys
time.sleep(1.5)
chunks = []
for _ in range(25):
    chunks.append(b'\x01' * (8 << 20))
    time.sleep(0.02)
time.sleep(60)
"#;

#[test]
fn memburst_names_the_allocating_process() {
    require_root();
    let mut cg = TestCgroup::new("kotel-test-memburst", &["/sys/fs/cgroup/memory"]);
    std::fs::write(
        cg.dir("/sys/fs/cgroup/memory")
            .join("memory.limit_in_bytes"),
        (256u64 << 20).to_string(),
    )
    .unwrap();
    let config = memburst::Config {
        host: false,
        containers: false,
        cgroups: vec![format!("^{}$", cg.path)],
        window: 3,
        sample: Duration::from_millis(300),
        ..Default::default()
    };
    let mut d = memburst::MemburstDetector::new(config).unwrap();
    let dirs = cg.dirs.clone();
    let child = in_cgroup(&dirs, &format!("python3 -c \"{ALLOC}\""))
        .spawn()
        .unwrap();
    let pid = child.id();
    cg.children.push(child);
    let mut fired = None;
    let mut checks = Vec::new();
    for _ in 0..30 {
        let t0 = std::time::Instant::now();
        let t = d.check().unwrap();
        checks.push(t0.elapsed());
        if let Some(t) = t.into_iter().next() {
            fired = Some(t);
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("check durations: {checks:?}");
    let t = fired.expect("memburst never fired");
    assert_eq!(t.scope, cg.path);
    let r = d.capture(&t).unwrap();
    assert_eq!(r.event_name, "linux.autotrace.memburst");
    let Some(Value::Map(body)) = &r.body else {
        panic!()
    };
    let Some(Value::Array(top)) = attr(body, "top_processes") else {
        panic!()
    };
    let Value::Map(first) = &top[0] else { panic!() };
    eprintln!("{first:?}");
    assert_eq!(attr(first, "process.pid"), Some(&Value::Int(pid as i64)));
    assert!(matches!(attr(first, "rss_anon"), Some(Value::Int(n)) if *n > 150 << 20));
    assert_eq!(
        attr(first, "linux.cgroup.path"),
        Some(&Value::Str(cg.path.clone().into()))
    );
}
