//! reclaimlat against the running kernel (root): a 128 MiB file read
//! (clean page cache) inside a v1 memory cgroup with a 32 MiB limit forces
//! memcg reclaim → the
//! cgroup's memcg stall count grows, and the kernel's own limit-hit counter
//! (`memory.failcnt`) agrees that the limit was reached.

mod bpf_metrics_support;

use std::process::Command;

use bpf_metrics_support::*;
use kotel_receiver::metrics::reclaimlat::{Config, Reclaimlat};

#[test]
fn memcg_reclaim_in_a_small_cgroup() {
    let name = format!("kotel-test-reclaimlat-{}", std::process::id());
    let path = format!("/{name}");
    let cg = TestCgroup::new(format!("/sys/fs/cgroup/memory/{name}"));
    cg.write("memory.limit_in_bytes", &(32u64 << 20).to_string());
    let mut c = build::<Reclaimlat>(&Config {
        containers: false,
        cgroups: vec![format!("^{path}$")],
        direct_and_memcg: true,
        ..Config::default()
    });
    let want = [
        ("linux.cgroup.path", path.as_str()),
        ("linux.memory.reclaim.kind", "memcg"),
    ];
    let m0 = collect(&mut c);
    // Written and flushed outside the cgroup, then dropped from the page
    // cache, so reading it charges 128 MiB of clean, reclaimable pages.
    let file = std::env::temp_dir().join(format!("{name}.data"));
    let of = format!("of={}", file.display());
    let iff = format!("if={}", file.display());
    for args in [
        vec![
            "if=/dev/zero",
            of.as_str(),
            "bs=1M",
            "count=128",
            "conv=fsync",
            "status=none",
        ],
        vec![iff.as_str(), "iflag=nocache", "count=0", "status=none"],
    ] {
        assert!(Command::new("dd").args(&args).status().unwrap().success());
    }
    let procs = cg.0.join("cgroup.procs");
    let script = format!(
        "echo $$ > {} && exec cat {} > /dev/null",
        procs.display(),
        file.display()
    );
    let st = Command::new("sh").args(["-c", &script]).status().unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(st.success(), "reading in the cgroup");
    let m1 = collect(&mut c);
    let failcnt: u64 = std::fs::read_to_string(cg.0.join("memory.failcnt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stalls = sum(&m1, "linux.cgroup.memory.reclaim.stalls", &want)
        - sum(&m0, "linux.cgroup.memory.reclaim.stalls", &want);
    let secs = sum(&m1, "linux.cgroup.memory.reclaim.stall.time", &want)
        - sum(&m0, "linux.cgroup.memory.reclaim.stall.time", &want);
    eprintln!("memcg stalls {stalls}, {secs:.6} s, failcnt {failcnt}");
    assert!(failcnt > 0, "the 32 MiB limit was hit");
    assert!(
        stalls > 0.0 && secs > 0.0,
        "memcg reclaim stalls {stalls} ({secs} s)"
    );
    let host = hist_count(
        &m1,
        "linux.memory.reclaim.duration",
        &[("linux.memory.reclaim.kind", "memcg")],
    ) - hist_count(
        &m0,
        "linux.memory.reclaim.duration",
        &[("linux.memory.reclaim.kind", "memcg")],
    );
    // Host-wide memcg reclaims include this cgroup's.
    assert!(
        host as f64 >= stalls,
        "host memcg count {host} < cgroup stalls {stalls}"
    );
    // Default: no direct/memcg series (the memreclaim collector has them).
    let mut d = build::<Reclaimlat>(&Config::default());
    let md = collect(&mut d);
    assert!(
        hists(
            &md,
            "linux.memory.reclaim.duration",
            &[("linux.memory.reclaim.kind", "memcg")]
        )
        .is_empty()
    );
    assert_eq!(hists(&md, "linux.memory.reclaim.duration", &[]).len(), 3);
    assert_eq!(hists(&md, "linux.memory.compaction.duration", &[]).len(), 2);
}
