//! runqlat against the running kernel (root): context switches against the
//! kernel's own per-task and host counters, and a cgroup's run-queue wait and
//! on-CPU time against /proc/<pid>/schedstat of the tasks the test put in it.

mod bpf_metrics_support;

use std::time::Duration;

use bpf_metrics_support::*;
use kotel_receiver::metrics::runqlat::{Config, Runqlat};

fn proc_ctxt() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("ctxt "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn switches(m: &[kotel_pipelines::Metric], kind: &str) -> f64 {
    sum(
        m,
        "linux.scheduler.context_switches",
        &[("linux.switch.type", kind)],
    )
}

#[test]
fn context_switches_match_kernel_counters() {
    let mut c = build::<Runqlat>(&Config {
        per_cgroup: false,
        ..Config::default()
    });
    let m0 = collect(&mut c);
    let ctxt0 = proc_ctxt();
    // 300 sleeps: at least 300 voluntary switches of this thread.
    for _ in 0..300 {
        std::thread::sleep(Duration::from_micros(200));
    }
    let m1 = collect(&mut c);
    let ctxt1 = proc_ctxt();
    let vol = switches(&m1, "voluntary") - switches(&m0, "voluntary");
    let invol = switches(&m1, "involuntary") - switches(&m0, "involuntary");
    let kernel = (ctxt1 - ctxt0) as f64;
    assert!(vol >= 300.0, "voluntary {vol}");
    // /proc/stat ctxt also counts switches away from the idle task, which
    // kotel leaves out; it is the upper bound of kotel's total.
    assert!(
        vol + invol <= kernel * 1.02 + 10.0,
        "kotel {} > kernel {kernel}",
        vol + invol
    );
    assert!(
        vol + invol >= kernel * 0.3,
        "kotel {} vs kernel {kernel}",
        vol + invol
    );
    let (n, _) = (hist_count(&m1, "linux.scheduler.runqueue.latency", &[]), 0);
    assert!(n >= 300, "host run-queue latency count {n}");
}

#[test]
fn cgroup_wait_and_run_time_match_schedstat() {
    let name = format!("kotel-test-runqlat-{}", std::process::id());
    let path = format!("/{name}");
    let cg = TestCgroup::new(format!("/sys/fs/cgroup/cpu/{name}"));
    let mut c = build::<Runqlat>(&Config {
        containers: false,
        cgroups: vec![format!("^{path}$")],
        ..Config::default()
    });
    let a = burner(0);
    let b = burner(0);
    cg.add(a.0.id());
    cg.add(b.0.id());
    std::thread::sleep(Duration::from_millis(200));
    let want = [("linux.cgroup.path", path.as_str())];
    let m0 = collect(&mut c);
    let s0 = [schedstat(a.0.id()), schedstat(b.0.id())];
    std::thread::sleep(Duration::from_secs(2));
    let m1 = collect(&mut c);
    let s1 = [schedstat(a.0.id()), schedstat(b.0.id())];
    drop((a, b));

    let run = sum(&m1, "linux.cgroup.scheduler.run.time", &want)
        - sum(&m0, "linux.cgroup.scheduler.run.time", &want);
    let wait = sum(&m1, "linux.cgroup.scheduler.wait.time", &want)
        - sum(&m0, "linux.cgroup.scheduler.wait.time", &want);
    let k_run = (s1[0].0 - s0[0].0 + s1[1].0 - s0[1].0) as f64 / 1e9;
    let k_wait = (s1[0].1 - s0[0].1 + s1[1].1 - s0[1].1) as f64 / 1e9;
    eprintln!("run kotel {run:.3}s kernel {k_run:.3}s; wait kotel {wait:.3}s kernel {k_wait:.3}s");
    // Two burners sharing one CPU for 2 s: ~2 s of run and ~2 s of wait.
    assert!(
        k_run > 1.5 && k_wait > 1.0,
        "kernel run {k_run} wait {k_wait}"
    );
    assert!(
        (run - k_run).abs() <= 0.1 * k_run + 0.05,
        "run {run} vs {k_run}"
    );
    assert!(
        (wait - k_wait).abs() <= 0.1 * k_wait + 0.05,
        "wait {wait} vs {k_wait}"
    );
    let n = hist_count(&m1, "linux.cgroup.scheduler.runqueue.latency", &want)
        - hist_count(&m0, "linux.cgroup.scheduler.runqueue.latency", &want);
    assert!(n > 10, "cgroup run-queue latency count {n}");
    let p = hists(&m1, "linux.cgroup.scheduler.runqueue.latency", &want)[0];
    assert_eq!(p.bounds[0], 1.024e-6);
}
