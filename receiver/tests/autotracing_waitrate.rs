//! Live test of `waitrate` (root): two CPU burners pinned to the same CPU
//! inside a test cgroup wait about as long as they run → the detector fires
//! for that cgroup (and not for a calm one), and the capture carries the
//! cgroup's run-queue latency histogram and names both burners as the top
//! waiting tasks.

#[path = "bpf_metrics_support/mod.rs"]
mod bpf_metrics_support;

use std::time::Duration;

use bpf_metrics_support::*;
use kotel_pipelines::{Value, attr};
use kotel_receiver::autotracing::waitrate::{Config, WaitrateDetector};
use kotel_receiver::framework::Detector;

fn f64_attr(v: Option<&Value>) -> f64 {
    match v {
        Some(Value::Double(d)) => *d,
        Some(Value::Int(i)) => *i as f64,
        other => panic!("not a number: {other:?}"),
    }
}

fn body_get<'a>(body: &'a Value, key: &str) -> &'a Value {
    let Value::Map(kv) = body else {
        panic!("body is not a map")
    };
    &kv.iter()
        .find(|k| k.key == key)
        .unwrap_or_else(|| panic!("no {key}"))
        .value
}

#[test]
fn waitrate_fires_for_contended_cgroup() {
    let me = std::process::id();
    let busy_name = format!("kotel-test-waitrate-{me}");
    let calm_name = format!("kotel-test-waitrate-calm-{me}");
    let busy = TestCgroup::new(format!("/sys/fs/cgroup/cpu/{busy_name}"));
    let calm = TestCgroup::new(format!("/sys/fs/cgroup/cpu/{calm_name}"));
    let tmp = std::env::temp_dir().join(format!("kotel-waitrate-{me}"));
    let mut d = WaitrateDetector::new(
        Config {
            containers: false,
            cgroups: vec![format!("^/{busy_name}$"), format!("^/{calm_name}$")],
            threshold: 0.3,
            min_demand: 0.5,
            duration: Duration::from_secs(2),
            ..Config::default()
        },
        tmp.clone(),
    )
    .unwrap();
    let a = burner(0);
    let b = burner(0);
    busy.add(a.0.id());
    busy.add(b.0.id());
    let sleeper = Child(
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap(),
    );
    calm.add(sleeper.0.id());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        d.check().unwrap().is_empty(),
        "first check only takes a baseline"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let t0 = std::time::Instant::now();
    let triggers = d.check().unwrap();
    eprintln!("waitrate check took {:?}", t0.elapsed());
    assert_eq!(triggers.len(), 1, "{triggers:?}");
    let t = &triggers[0];
    assert_eq!(t.scope, format!("/{busy_name}"));
    let ratio = f64_attr(attr(&t.attributes, "linux.scheduler.wait_ratio"));
    eprintln!("wait ratio {ratio:.3}");
    assert!(
        (0.35..0.65).contains(&ratio),
        "two tasks on one CPU: ratio {ratio}"
    );

    let pids = [i64::from(a.0.id()), i64::from(b.0.id())];
    let r = d.capture(t).unwrap();
    drop((a, b, sleeper));
    assert_eq!(r.event_name, "linux.autotrace.waitrate");
    assert!(
        matches!(attr(&r.attributes, "linux.cgroup.path"), Some(Value::Str(p)) if p.as_ref() == format!("/{busy_name}"))
    );
    let w = f64_attr(attr(&r.attributes, "linux.autotrace.capture.window"));
    assert!(w >= 1.9, "window {w}");
    let body = r.body.as_ref().expect("body");
    let hist = body_get(body, "runqueue_latency");
    let n = f64_attr(Some(body_get(hist, "count")));
    assert!(n > 10.0, "histogram count {n}");
    let Value::Array(top) = body_get(body, "top_waiting_tasks") else {
        panic!()
    };
    let tids: Vec<i64> = top
        .iter()
        .map(|t| match body_get(t, "thread.id") {
            Value::Int(i) => *i,
            other => panic!("{other:?}"),
        })
        .collect();
    eprintln!("top waiting tasks {tids:?}; attributes {:?}", r.attributes);
    assert_eq!(tids.len(), 2, "only the burners ran in the cgroup");
    for p in pids {
        assert!(
            tids.contains(&p),
            "burner {p} among the top waiting tasks {tids:?}"
        );
    }
    // The CPU flame graph of the same window (profile capture) is attached.
    let Some(Value::Array(files)) = attr(&r.attributes, "linux.autotrace.artifacts") else {
        panic!("no flame graph: {:?}", r.attributes)
    };
    assert!(
        files
            .iter()
            .any(|f| matches!(f, Value::Str(s) if s.ends_with(".svg")))
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
