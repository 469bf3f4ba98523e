//! Live test of `dload`: O_DIRECT writers to a loop device throttled to
//! 64 KiB/s by cgroup v1 blkio sit in D state; the detector's moving
//! average crosses a low threshold for their cgroup and the capture shows
//! the block-layer wait in their kernel stacks.

mod autotracing_util;

use std::time::Duration;

use autotracing_util::*;
use kotel_pipelines::{Value, attr};
use kotel_receiver::autotracing::dload;
use kotel_receiver::framework::Detector;

#[test]
fn dload_fires_on_throttled_direct_io_and_shows_block_waits() {
    require_root();
    let lo = LoopDev::new(64);
    let mut cg = TestCgroup::new(
        "kotel-test-dload",
        &["/sys/fs/cgroup/blkio", "/sys/fs/cgroup/cpu"],
    );
    let throttle = cg
        .dir("/sys/fs/cgroup/blkio")
        .join("blkio.throttle.write_bps_device");
    std::fs::write(&throttle, format!("{} 65536", lo.majmin)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = dload::Config {
        host: false,
        containers: false,
        cgroups: vec![format!("^{}$", cg.path)],
        threshold: 0.5,
        ema_window: Duration::from_secs(1),
        ..Default::default()
    };
    let mut d = dload::DloadDetector::new(config, tmp.path().into()).unwrap();
    let t0 = std::time::Instant::now();
    assert!(d.check().unwrap().is_empty());
    let idle_check = t0.elapsed();
    let dirs = cg.dirs.clone();
    let mut writers = Vec::new();
    for i in 0..4 {
        let cmd = format!(
            "dd if=/dev/zero of={} bs=64k count=64 seek={} oflag=direct status=none",
            lo.dev,
            i * 64
        );
        let child = in_cgroup(&dirs, &cmd).spawn().unwrap();
        writers.push(child.id());
        cg.children.push(child);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let triggers = d.check().unwrap();
    eprintln!("idle check {idle_check:?}; triggers {triggers:?}");
    assert_eq!(triggers.len(), 1, "{triggers:?}");
    let t = &triggers[0];
    assert_eq!(t.scope, cg.path);
    let r = d.capture(t).unwrap();
    // Release the writers quickly.
    let _ = std::fs::write(&throttle, format!("{} 0", lo.majmin));
    assert_eq!(r.event_name, "linux.autotrace.dload");
    assert!(
        matches!(attr(&r.attributes, "linux.dload.captured.tasks"), Some(Value::Int(n)) if *n >= 1)
    );
    let body = format!("{:?}", r.body);
    eprintln!("{body}");
    assert!(
        [
            "io_schedule",
            "rq_qos_wait",
            "blk_mq_",
            "blkdev_direct",
            "submit_bio"
        ]
        .iter()
        .any(|f| body.contains(f)),
        "{body}"
    );
    assert!(
        writers.iter().any(|p| body.contains(&format!("Int({p})"))),
        "{body}"
    );
    let Some(Value::Array(files)) = attr(&r.attributes, "linux.autotrace.artifacts") else {
        panic!("{:?}", r.attributes)
    };
    let Value::Str(f) = &files[0] else { panic!() };
    assert!(
        std::fs::read_to_string(f.as_ref())
            .unwrap()
            .contains("D-state tasks on the host")
    );
}
