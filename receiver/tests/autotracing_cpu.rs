//! Live tests of `cpuidle` (container CPU surge) and `cpusys` (host system
//! CPU surge) with low thresholds and real load.

mod autotracing_util;

use std::process::Command;
use std::time::Duration;

use autotracing_util::*;
use kotel_pipelines::{Value, attr};
use kotel_receiver::autotracing::{cpuidle, cpusys};
use kotel_receiver::framework::Detector;

/// The tests measure host-wide CPU shares: run them one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::Str(s)) => s.to_string(),
        other => format!("{other:?}"),
    }
}

#[test]
fn cpuidle_fires_for_a_burning_cgroup_and_profiles_it() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let bin = build_burner(tmp.path());
    let mut cg = TestCgroup::new(
        "kotel-test-cpuidle",
        &["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct"],
    );
    // A second watched cgroup that stays idle must not fire.
    let idle = TestCgroup::new(
        "kotel-test-cpuidle-idle",
        &["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct"],
    );
    let config = cpuidle::Config {
        containers: false,
        cgroups: vec![format!("^{}$", cg.path), format!("^{}$", idle.path)],
        user_threshold: 1000.0,
        sys_threshold: 1000.0,
        usage_threshold: 20.0,
        usage_delta_threshold: 10.0,
        duration: Duration::from_secs(2),
        ..Default::default()
    };
    let mut d = cpuidle::CpuidleDetector::new(config, tmp.path().into()).unwrap();
    assert!(d.check().unwrap().is_empty());
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.check().unwrap().is_empty(), "both cgroups idle");
    let pid = cg.spawn(&mut Command::new(&bin));
    std::thread::sleep(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let triggers = d.check().unwrap();
    let check_cost = started.elapsed();
    assert_eq!(triggers.len(), 1, "{triggers:?}");
    let t = &triggers[0];
    assert_eq!(t.scope, cg.path);
    eprintln!(
        "cpuidle check took {check_cost:?}; trigger {:?}",
        t.attributes
    );
    assert!(
        matches!(attr(&t.attributes, "linux.cpu.total.percent"), Some(Value::Double(v)) if *v > 20.0)
    );

    let r = d.capture(t).unwrap();
    assert_eq!(r.event_name, "linux.autotrace.cpuidle");
    assert_eq!(s(attr(&r.attributes, "linux.cgroup.path")), cg.path);
    let body = format!("{:?}", r.body);
    assert!(body.contains("kotel_test_burn_cpu"), "{body}");
    assert!(body.contains(&format!("Int({pid})")), "{body}");
    let Some(Value::Array(files)) = attr(&r.attributes, "linux.autotrace.artifacts") else {
        panic!("no artifacts: {:?}", r.attributes)
    };
    assert_eq!(files.len(), 2);
    for f in files {
        let Value::Str(f) = f else { panic!() };
        let text = std::fs::read_to_string(f.as_ref()).unwrap();
        assert!(text.contains("kotel_test_burn_cpu"), "{f}");
    }
    // Still burning, but the cgroup is cooling down: no second trigger.
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.check().unwrap().is_empty());
}

#[test]
fn cpusys_fires_on_a_system_time_surge() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let config = cpusys::Config {
        sys_threshold: 15.0,
        sys_delta_threshold: 10.0,
        duration: Duration::from_secs(1),
        ..Default::default()
    };
    let mut d = cpusys::CpusysDetector::new("/proc/stat", config, tmp.path().into()).unwrap();
    assert!(d.check().unwrap().is_empty());
    std::thread::sleep(Duration::from_millis(1000));
    assert!(d.check().unwrap().is_empty());
    // One-byte reads and writes: almost all system time.
    let mut kids: Vec<_> = (0..2)
        .map(|_| {
            Command::new("dd")
                .args(["if=/dev/zero", "of=/dev/null", "bs=1", "count=100000000"])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let triggers = d.check().unwrap();
    assert_eq!(triggers.len(), 1, "sys surge not seen");
    let r = d.capture(&triggers[0]).unwrap();
    for k in &mut kids {
        let _ = k.kill();
        let _ = k.wait();
    }
    assert_eq!(r.event_name, "linux.autotrace.cpusys");
    let body = format!("{:?}", r.body);
    assert!(body.contains("\"dd\""), "{body}");
}
