//! Live test of the CPU profile capture (BPF perf_event, 99 Hz): a burner
//! with a known function name in a test cgroup; the cgroup-scoped profile
//! sees only it, and its flame graph names `kotel_test_burn_cpu`.

mod autotracing_util;

use std::process::Command;
use std::time::Duration;

use autotracing_util::*;
use kotel_receiver::autotracing::profile::{self, ProfileRequest, ProfileScope};

/// The tests share two CPUs: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// CPU seconds (user + system) a process has used, from /proc/<pid>/stat.
fn task_cpu(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are 12 and 13 after the comm.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn cgroup_profile_contains_the_burner_function() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let bin = build_burner(tmp.path());
    let mut cg = TestCgroup::new("kotel-test-profile", &["/sys/fs/cgroup/unified"]);
    let pid = cg.spawn(&mut Command::new(&bin));
    // Someone else burning CPU outside the cgroup must not show up.
    let mut outsider = Command::new(&bin).spawn().unwrap();

    let scope = ProfileScope::for_cgroup(&cg.path).unwrap();
    assert!(
        matches!(scope, ProfileScope::Cgroup { v2: true, .. }),
        "{scope:?}"
    );
    let _stats = kotel_ebpf::loader::enable_stats().ok();
    let cpu0 = process_cpu();
    let burner0 = task_cpu(pid);
    let wall0 = std::time::Instant::now();
    let req = ProfileRequest {
        duration: Duration::from_secs(3),
        frequency: 99,
        scope,
    };
    let p = profile::capture(&req).unwrap();
    let cpu = process_cpu() - cpu0;
    // The burner's CPU rate over the whole call, applied to the 3 s window.
    let burned = (task_cpu(pid) - burner0) * 3.0 / wall0.elapsed().as_secs_f64();
    let _ = outsider.kill();
    let _ = outsider.wait();
    eprintln!(
        "profile: {} samples, {} stacks, {} cpus, bpf run time {:?} ns, capture process CPU {:.3}s in {:?}",
        p.samples,
        p.folded.len(),
        p.cpus,
        p.bpf_run_ns,
        cpu,
        p.elapsed
    );
    // One sample per 1/99 s of the burner's CPU time (an independent
    // reading from /proc), within scheduler-tick accounting slack.
    let expected = burned * 99.0;
    eprintln!("burner used {burned:.2} CPU s per 3 s: {expected:.0} samples expected");
    assert!(p.samples > 20, "samples {}", p.samples);
    assert!(
        (p.samples as f64) > expected * 0.6 - 10.0 && (p.samples as f64) < expected * 1.4 + 10.0,
        "samples {} vs expected {expected:.0}",
        p.samples
    );
    assert!(
        p.processes.iter().all(|(tgid, _, _)| *tgid == pid),
        "only the cgroup's process is sampled: {:?}",
        p.processes
    );
    let folded = p.folded_text();
    assert!(folded.contains("kotel_test_burn_cpu"), "{folded}");
    assert!(
        folded.contains("__libc_start_call_main;"),
        "the user stack is walked beyond the leaf: {folded}"
    );
    assert_eq!(p.top[0].name, "kotel_test_burn_cpu", "{:?}", p.top);
    let files = p
        .write_artifacts(tmp.path(), "test", "burner", "kotel burner")
        .unwrap();
    let svg = std::fs::read_to_string(&files[1]).unwrap();
    assert!(svg.contains("kotel_test_burn_cpu"));
    if let Ok(keep) = std::env::var("KOTEL_KEEP_FLAMEGRAPH") {
        std::fs::copy(&files[1], keep).unwrap();
    }
}

#[test]
fn host_profile_sees_kernel_and_user_stacks() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let bin = build_burner(tmp.path());
    let mut burner = Command::new(&bin).spawn().unwrap();
    let req = ProfileRequest {
        duration: Duration::from_secs(1),
        frequency: 99,
        scope: ProfileScope::Host,
    };
    let p = profile::capture(&req).unwrap();
    let _ = burner.kill();
    let _ = burner.wait();
    assert!(p.samples > 50, "samples {}", p.samples);
    assert!(p.processes.iter().any(|(tgid, _, _)| *tgid == burner.id()));
    assert!(p.folded_text().contains("kotel_test_burn_cpu"));
}

/// This process's CPU time (user + system), seconds.
fn process_cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
