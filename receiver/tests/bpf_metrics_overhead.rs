//! Overhead figures of the BPF metrics collectors (root; `--ignored`,
//! prints a table): per-event cost from the kernel's BPF run statistics and
//! workload throughput with nothing attached, with kotel's programs, and with
//! the libbpf-tools equivalents (`runqlat`, `biolatency`, Debian package
//! `libbpf-tools`), all in the same run.
//!
//! cargo test -p kotel-receiver --release --test bpf_metrics_overhead -- --ignored --nocapture

mod bpf_metrics_support;

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use bpf_metrics_support::*;
use kotel_receiver::metrics::blocklat::{Blocklat, Config as BlkConfig};
use kotel_receiver::metrics::runqlat;

fn pin_to(cpu: usize) {
    // SAFETY: plain libc calls on a zeroed cpu_set_t for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Round trips/s of a one-byte ping-pong between two threads on CPU 0:
/// every round trip is two wakeups and two context switches.
fn pingpong(dur: Duration) -> f64 {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let peer = std::thread::spawn(move || {
        pin_to(0);
        let mut buf = [0u8; 1];
        while b.read_exact(&mut buf).is_ok() && buf[0] != 0 {
            b.write_all(&buf).unwrap();
        }
    });
    pin_to(0);
    let mut buf = [1u8; 1];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        for _ in 0..1000 {
            a.write_all(&[1]).unwrap();
            a.read_exact(&mut buf).unwrap();
        }
        n += 1000;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    a.write_all(&[0]).unwrap();
    peer.join().unwrap();
    pin_to_all();
    rate
}

fn pin_to_all() {
    // SAFETY: as in pin_to.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// (name, run_time_ns, run_cnt) of every loaded BPF program, by bpftool.
fn bpftool_progs() -> Vec<(u32, String, u64, u64)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap_or(0) as u32,
                p["name"].as_str().unwrap_or("").to_string(),
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["run_cnt"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Per-program ns/run of the programs that appeared since `before`, over
/// the window between `t0` and `t1` readings.
fn new_prog_costs(
    before: &[(u32, String, u64, u64)],
    t0: &[(u32, String, u64, u64)],
    t1: &[(u32, String, u64, u64)],
) -> Vec<(String, f64, u64)> {
    t1.iter()
        .filter(|p| !before.iter().any(|b| b.0 == p.0))
        .filter_map(|p| {
            let z = t0.iter().find(|x| x.0 == p.0)?;
            let cnt = p.3 - z.3;
            (cnt > 0).then(|| (p.1.clone(), (p.2 - z.2) as f64 / cnt as f64, cnt))
        })
        .collect()
}

struct Bg(std::process::Child);
impl Drop for Bg {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

fn start_tool(bin: &str, args: &[&str]) -> Bg {
    let before = bpftool_progs().len();
    let c = Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e} (apt-get install libbpf-tools)"));
    let t = Instant::now();
    while bpftool_progs().len() <= before && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    Bg(c)
}

fn print_costs(label: &str, costs: &[(String, f64, u64)]) {
    for (name, ns, cnt) in costs {
        println!("  {label:<22} {name:<18} {ns:>8.0} ns/run  ({cnt} runs)");
    }
}

#[test]
#[ignore]
fn runqlat_overhead_vs_libbpf_tools() {
    let _stats = kotel_ebpf::loader::enable_stats().expect("BPF stats");
    let dur = Duration::from_secs(3);
    let base0 = pingpong(dur);

    let before = bpftool_progs();
    let shared = runqlat::acquire(4096).unwrap();
    let t0 = bpftool_progs();
    let kotel = pingpong(dur);
    let t1 = bpftool_progs();
    let kotel_costs = new_prog_costs(&before, &t0, &t1);
    drop(shared);

    let base1 = pingpong(dur);
    let before = bpftool_progs();
    let tool = start_tool("runqlat", &["60"]);
    let t0 = bpftool_progs();
    let lib = pingpong(dur);
    let t1 = bpftool_progs();
    let lib_costs = new_prog_costs(&before, &t0, &t1);
    drop(tool);
    let base2 = pingpong(dur);

    let base = (base0 + base1 + base2) / 3.0;
    println!("pipe ping-pong on one CPU, round trips/s (3 s each):");
    println!("  baseline runs          {base0:.0} {base1:.0} {base2:.0}");
    println!(
        "  kotel runqlat          {kotel:.0} ({:+.1}%)",
        (kotel / base - 1.0) * 100.0
    );
    println!(
        "  libbpf-tools runqlat   {lib:.0} ({:+.1}%)",
        (lib / base - 1.0) * 100.0
    );
    print_costs("kotel runqlat", &kotel_costs);
    print_costs("libbpf-tools runqlat", &lib_costs);
    let per_rt = |c: &[(String, f64, u64)], secs_rate: f64| {
        c.iter().map(|(_, ns, cnt)| ns * *cnt as f64).sum::<f64>() / (secs_rate * dur.as_secs_f64())
    };
    println!(
        "  BPF ns per round trip: kotel {:.0}, libbpf-tools {:.0}",
        per_rt(&kotel_costs, kotel),
        per_rt(&lib_costs, lib)
    );
    assert!(!kotel_costs.is_empty() && !lib_costs.is_empty());
}

#[test]
#[ignore]
fn blocklat_overhead_vs_libbpf_tools() {
    let _stats = kotel_ebpf::loader::enable_stats().expect("BPF stats");
    let file = std::env::temp_dir().join(format!("kotel-blk-overhead-{}.img", std::process::id()));
    std::fs::File::create(&file)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let out = Command::new("losetup")
        .args(["--find", "--show", "--direct-io=on"])
        .arg(&file)
        .output()
        .unwrap();
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let n = 20_000;
    // Median of three runs: a loop device's throughput is noisy.
    let dd = || {
        let mut r = [dd_once(&dev, n), dd_once(&dev, n), dd_once(&dev, n)];
        r.sort_by(f64::total_cmp);
        r[1]
    };
    let base0 = dd();
    let before = bpftool_progs();
    let mut c = build::<Blocklat>(&BlkConfig::default());
    let t0 = bpftool_progs();
    let kotel = dd();
    let t1 = bpftool_progs();
    let kotel_costs = new_prog_costs(&before, &t0, &t1);
    let _ = collect(&mut c);
    drop(c);
    let base1 = dd();
    let before = bpftool_progs();
    let tool = start_tool("biolatency", &["-Q", "60"]);
    let t0 = bpftool_progs();
    let lib = dd();
    let t1 = bpftool_progs();
    let lib_costs = new_prog_costs(&before, &t0, &t1);
    drop(tool);
    let base2 = dd();
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    let _ = std::fs::remove_file(&file);

    let base = (base0 + base1 + base2) / 3.0;
    println!("dd O_DIRECT 4 KiB writes to {dev}, IOs/s ({n} each):");
    println!("  baseline runs          {base0:.0} {base1:.0} {base2:.0}");
    println!(
        "  kotel blocklat         {kotel:.0} ({:+.1}%)",
        (kotel / base - 1.0) * 100.0
    );
    println!(
        "  libbpf-tools biolatency -Q {lib:.0} ({:+.1}%)",
        (lib / base - 1.0) * 100.0
    );
    print_costs("kotel blocklat", &kotel_costs);
    print_costs("biolatency -Q", &lib_costs);
    let per_io = |c: &[(String, f64, u64)]| {
        c.iter().map(|(_, ns, cnt)| ns * *cnt as f64).sum::<f64>() / (3 * n) as f64
    };
    println!(
        "  BPF ns per dd write (a loop request plus the backing disk's): kotel {:.0}, libbpf-tools {:.0}",
        per_io(&kotel_costs),
        per_io(&lib_costs)
    );
}

fn dd_once(dev: &str, n: u64) -> f64 {
    let t = Instant::now();
    let st = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={dev}"),
            "bs=4096",
            &format!("count={n}"),
            "oflag=direct",
            "status=none",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    n as f64 / t.elapsed().as_secs_f64()
}
