//! Cost measurements for docs/autotracing.md (run with `--ignored
//! --nocapture`): the CPU of one 10 s, 99 Hz host-wide profile capture, and
//! the duration of each detector's idle `check()`.

mod autotracing_util;

use std::process::Command;
use std::time::{Duration, Instant};

use autotracing_util::*;
use kotel_receiver::autotracing::profile::{self, ProfileRequest, ProfileScope};
use kotel_receiver::autotracing::{cpuidle, cpusys, dload, iotracer, memburst};
use kotel_receiver::framework::Detector;

fn process_cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn measure_profile_capture_cost() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let bin = build_burner(tmp.path());
    let mut burner = Command::new(&bin).spawn().unwrap();
    let _stats = kotel_ebpf::loader::enable_stats().unwrap();
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let req = ProfileRequest {
        duration: Duration::from_secs(10),
        frequency: 99,
        scope: ProfileScope::Host,
    };
    let p = profile::capture(&req).unwrap();
    let files = p
        .write_artifacts(tmp.path(), "cost", "host", "cost")
        .unwrap();
    let cpu = process_cpu() - cpu0;
    let _ = burner.kill();
    let _ = burner.wait();
    let bpf = p.bpf_run_ns.unwrap_or(0);
    eprintln!(
        "10 s 99 Hz host profile: {} samples on {} CPUs, {} stacks; wall {:?}; \
         kotel process CPU {:.3} s (load+attach+read+symbolise+SVG); \
         BPF program {:.3} ms total = {:.0} ns/sample; SVG {} bytes",
        p.samples,
        p.cpus,
        p.folded.len(),
        t0.elapsed(),
        cpu,
        bpf as f64 / 1e6,
        bpf as f64 / p.samples.max(1) as f64,
        std::fs::metadata(&files[1]).unwrap().len()
    );
}

fn time_checks(name: &str, d: &mut dyn Detector) {
    d.check().unwrap();
    let n = 50;
    let t0 = Instant::now();
    for _ in 0..n {
        d.check().unwrap();
    }
    eprintln!("{name}: idle check {:?} mean over {n}", t0.elapsed() / n);
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn measure_idle_check_cost() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    time_checks(
        "cpusys",
        &mut cpusys::CpusysDetector::new("/proc/stat", Default::default(), dir.clone()).unwrap(),
    );
    time_checks(
        "cpuidle",
        &mut cpuidle::CpuidleDetector::new(Default::default(), dir.clone()).unwrap(),
    );
    time_checks(
        "dload",
        &mut dload::DloadDetector::new(Default::default(), dir.clone()).unwrap(),
    );
    time_checks(
        "memburst",
        &mut memburst::MemburstDetector::new(Default::default()).unwrap(),
    );
    time_checks(
        "iotracer",
        &mut iotracer::IotracerDetector::new("/proc/diskstats", Default::default(), dir).unwrap(),
    );
    let tasks = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        })
        .count();
    eprintln!("({tasks} processes on the host)");
}
