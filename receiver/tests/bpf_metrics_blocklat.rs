//! blocklat against the running kernel (root): N O_DIRECT 4 KiB writes and
//! reads with dd to a raw loop device (no filesystem, so nothing else does
//! I/O to it) → the device's histogram counts grow by exactly N.

mod bpf_metrics_support;

use std::process::Command;

use bpf_metrics_support::*;
use kotel_receiver::metrics::blocklat::{Blocklat, Config};

struct Loop {
    dev: String,
    file: std::path::PathBuf,
}

impl Loop {
    fn new(mib: u64) -> Self {
        let file = std::env::temp_dir().join(format!("kotel-blocklat-{}.img", std::process::id()));
        let f = std::fs::File::create(&file).unwrap();
        f.set_len(mib << 20).unwrap();
        drop(f);
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(&file)
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Self { dev, file }
    }

    fn name(&self) -> &str {
        self.dev.trim_start_matches("/dev/")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

fn dd(args: &[&str]) {
    let out = Command::new("dd").args(args).output().expect("dd");
    assert!(
        out.status.success(),
        "dd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn loop_device_counts_match_issued_ios() {
    const N: u64 = 200;
    let lo = Loop::new(16);
    let dev = lo.name().to_string();
    let mut c = build::<Blocklat>(&Config {
        include: vec![dev.clone()],
        ..Config::default()
    });
    let d2c = |m: &[kotel_pipelines::Metric], op: &str| {
        hist_count(
            m,
            "linux.disk.latency",
            &[
                ("system.device", dev.as_str()),
                ("linux.disk.latency.stage", "dispatch_to_complete"),
                ("linux.disk.operation", op),
            ],
        )
    };
    let q2c = |m: &[kotel_pipelines::Metric], op: &str| {
        hist_count(
            m,
            "linux.disk.latency",
            &[
                ("system.device", dev.as_str()),
                ("linux.disk.latency.stage", "queue_to_complete"),
                ("linux.disk.operation", op),
            ],
        )
    };
    // The kernel's own count of completed requests (/proc/diskstats) is the
    // independent reading: it equals N unless the block layer merged some.
    let completed = |dev: &str| -> (u64, u64) {
        let stats = std::fs::read_to_string("/proc/diskstats").unwrap();
        let f: Vec<u64> = stats
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&dev))
            .map(|f| f[3..].iter().map(|v| v.parse().unwrap()).collect())
            .unwrap_or_else(|| panic!("{dev} not in /proc/diskstats"));
        (f[0], f[4])
    };
    let k0 = completed(&dev);
    let m0 = collect(&mut c);
    let of = format!("of={}", lo.dev);
    let count = format!("count={N}");
    dd(&[
        "if=/dev/zero",
        &of,
        "bs=4096",
        &count,
        "oflag=direct",
        "status=none",
    ]);
    let m1 = collect(&mut c);
    let k1 = completed(&dev);
    let iff = format!("if={}", lo.dev);
    dd(&[
        &iff,
        "of=/dev/null",
        "bs=4096",
        &count,
        "iflag=direct",
        "status=none",
    ]);
    let m2 = collect(&mut c);
    let k2 = completed(&dev);
    let (kernel_writes, kernel_reads) = (k1.1 - k0.1, k2.0 - k1.0);
    assert!(
        (N * 9 / 10..=N).contains(&kernel_writes),
        "kernel writes {kernel_writes}"
    );
    assert!(
        (N * 9 / 10..=N).contains(&kernel_reads),
        "kernel reads {kernel_reads}"
    );

    assert_eq!(
        d2c(&m1, "write") - d2c(&m0, "write"),
        kernel_writes,
        "writes, dispatch->complete"
    );
    assert_eq!(
        q2c(&m1, "write") - q2c(&m0, "write"),
        kernel_writes,
        "writes, queue->complete"
    );
    assert_eq!(
        d2c(&m2, "read") - d2c(&m1, "read"),
        kernel_reads,
        "reads, dispatch->complete"
    );
    assert_eq!(
        q2c(&m2, "read") - q2c(&m1, "read"),
        kernel_reads,
        "reads, queue->complete"
    );
    // Every point of this device carries its direction, and q2c >= d2c.
    let w = hists(
        &m2,
        "linux.disk.latency",
        &[
            ("system.device", dev.as_str()),
            ("disk.io.direction", "write"),
        ],
    );
    assert_eq!(w.len(), 2);
    let (q, d) = (
        w.iter()
            .find(|p| {
                p.attributes
                    .iter()
                    .any(|kv| kv.value.as_str() == Some("queue_to_complete"))
            })
            .unwrap(),
        w.iter()
            .find(|p| {
                p.attributes
                    .iter()
                    .any(|kv| kv.value.as_str() == Some("dispatch_to_complete"))
            })
            .unwrap(),
    );
    assert!(
        q.sum >= d.sum && d.sum > 0.0,
        "q2c sum {} d2c sum {}",
        q.sum,
        d.sum
    );
    assert_eq!(q.bounds[0], 1.024e-6);
    // Only the included device is reported.
    assert!(hists(&m2, "linux.disk.latency", &[]).iter().all(|p| {
        p.attributes
            .iter()
            .any(|kv| kv.key == "system.device" && kv.value.as_str() == Some(dev.as_str()))
    }));
}
