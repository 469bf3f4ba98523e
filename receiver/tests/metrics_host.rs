//! Runs the host collectors (disk, pressure, buddyinfo, interrupts,
//! filesystem, schedstat) against the live kernel and checks them against
//! readings the test takes itself, around activity the test causes: direct
//! writes to a loop device it attaches, a read-only tmpfs it mounts.
//!
//! The loop-device and mount tests need root; without it they are skipped
//! with a message.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kotel_pipelines::{Metric, MetricData, Number, NumberPoint, Value, attr};
use kotel_receiver::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector,
};
use kotel_receiver::metrics::{buddyinfo, disk, filesystem, interrupts, pressure, schedstat};

fn host() -> HostContext {
    HostContext::detect(std::env::temp_dir()).expect("host context")
}

fn build<S: CollectorSpec>(config: &S::Config, host: &HostContext) -> Box<dyn MetricsCollector> {
    assert_eq!(
        S::probe(config),
        Availability::Available,
        "{} unavailable",
        S::NAME
    );
    match S::build(config, host, Duration::from_secs(15)).expect("build") {
        Instance::Metrics { collector, .. } => collector,
        _ => panic!("{} is not a metrics collector", S::NAME),
    }
}

fn collect(c: &mut Box<dyn MetricsCollector>) -> Vec<Metric> {
    let mut out = Vec::new();
    c.collect(&mut out).expect("collect");
    for m in &out {
        assert!(!m.unit.is_empty(), "{} has no unit", m.name);
        assert!(!m.description.is_empty(), "{} has no description", m.name);
    }
    out
}

fn find<'a>(out: &'a [Metric], name: &str) -> &'a Metric {
    out.iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

fn points(m: &Metric) -> &[NumberPoint] {
    match &m.data {
        MetricData::Gauge(p) | MetricData::Sum { points: p, .. } => p,
        MetricData::Histogram(_) => panic!("{} is a histogram", m.name),
    }
}

fn s<'a>(p: &'a NumberPoint, key: &str) -> Option<&'a str> {
    attr(&p.attributes, key).and_then(|v| v.as_str())
}

fn int(p: &NumberPoint) -> i64 {
    match p.value {
        Number::Int(v) => v,
        Number::Double(v) => panic!("expected an int, got {v}"),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

// ---------------------------------------------------------------- disk

/// A loop device over a sparse file; detached on drop.
struct Loop {
    dev: String,
    _file: tempfile::NamedTempFile,
}

impl Loop {
    fn new(bytes: u64) -> Self {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(bytes).unwrap();
        let dev = run(
            "losetup",
            &[
                "-f",
                "--show",
                "--direct-io=on",
                file.path().to_str().unwrap(),
            ],
        );
        Self { dev, _file: file }
    }

    fn name(&self) -> &str {
        self.dev.trim_start_matches("/dev/")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// The 17 (or fewer) numeric columns of `device` in /proc/diskstats.
fn diskstats(device: &str) -> Vec<u64> {
    std::fs::read_to_string("/proc/diskstats")
        .unwrap()
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(device))
        .unwrap_or_else(|| panic!("{device} not in /proc/diskstats"))
        .split_whitespace()
        .skip(3)
        .map(|v| v.parse().unwrap())
        .collect()
}

fn disk_value(out: &[Metric], name: &str, device: &str, direction: Option<&str>) -> Number {
    points(find(out, name))
        .iter()
        .find(|p| s(p, "system.device") == Some(device) && s(p, "disk.io.direction") == direction)
        .unwrap_or_else(|| panic!("{name} has no point for {device} {direction:?}"))
        .value
}

#[test]
fn disk_counts_direct_writes_to_a_loop_device() {
    if !is_root() {
        eprintln!("skipped: needs root for losetup");
        return;
    }
    const BLOCKS: u64 = 64;
    let lo = Loop::new(8 << 20);
    let host = host();
    let config = disk::Config {
        include: vec![regex_escape(lo.name())],
        ..disk::Config::default()
    };
    let mut c = build::<disk::Disk>(&config, &host);

    let before_raw = diskstats(lo.name());
    let before = collect(&mut c);
    run(
        "dd",
        &[
            "if=/dev/zero",
            &format!("of={}", lo.dev),
            "bs=4096",
            &format!("count={BLOCKS}"),
            "oflag=direct",
            "status=none",
        ],
    );
    let after = collect(&mut c);
    let after_raw = diskstats(lo.name());

    let delta = |name: &str, dir: Option<&str>| match (
        disk_value(&after, name, lo.name(), dir),
        disk_value(&before, name, lo.name(), dir),
    ) {
        (Number::Int(a), Number::Int(b)) => (a - b) as f64,
        (a, b) => a.as_f64() - b.as_f64(),
    };
    let raw = |col: usize| (after_raw[col] - before_raw[col]) as f64;

    let bytes = delta("system.disk.io", Some("write"));
    let ops = delta("system.disk.operations", Some("write"));
    assert!(bytes >= (BLOCKS * 4096) as f64, "wrote {bytes} bytes");
    // Each synchronous O_DIRECT write is its own request: nothing to merge.
    assert!(ops >= BLOCKS as f64, "{ops} write ops");
    // Nothing else touches a fresh loop device: the collector's deltas are
    // exactly the kernel's, converted to bytes.
    assert_eq!(bytes, raw(6) * 512.0);
    assert_eq!(ops, raw(4));
    // Reads (a udev probe of the new device) may land between the readings.
    assert!(delta("system.disk.io", Some("read")) <= raw(2) * 512.0);
    let write_time = delta("system.disk.operation_time", Some("write"));
    assert!((write_time - raw(7) / 1000.0).abs() < 1e-9);
    assert!((delta("system.disk.io_time", None) - raw(9) / 1000.0).abs() < 1e-9);

    let io = find(&after, "system.disk.io");
    assert_eq!(io.unit, "By");
    assert!(matches!(
        io.data,
        MetricData::Sum {
            monotonic: true,
            ..
        }
    ));
    assert!(points(io).iter().all(|p| p.start_time == host.boot_time));
    assert_eq!(
        disk_value(&after, "system.disk.pending_operations", lo.name(), None),
        Number::Int(0)
    );
    // Only the included device is reported.
    assert!(
        points(io)
            .iter()
            .all(|p| s(p, "system.device") == Some(lo.name()))
    );
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

#[test]
fn disk_default_config_reports_every_device_in_proc_diskstats() {
    let host = host();
    let mut c = build::<disk::Disk>(&disk::Config::default(), &host);
    let out = collect(&mut c);
    let names: Vec<String> = std::fs::read_to_string("/proc/diskstats")
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap().to_owned())
        .filter(|n| !(n.starts_with("ram") || n.starts_with("fd")))
        .collect();
    let ops = find(&out, "system.disk.operations");
    for n in &names {
        let reads = points(ops)
            .iter()
            .find(|p| s(p, "system.device") == Some(n) && s(p, "disk.io.direction") == Some("read"))
            .unwrap_or_else(|| panic!("{n} missing"));
        // Reads only grow: the test's later reading bounds the collector's.
        assert!(int(reads) as u64 <= diskstats(n)[0]);
    }
}

// ---------------------------------------------------------------- pressure

fn psi_total(resource: &str, kind: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/pressure/{resource}"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(kind))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

#[test]
fn pressure_totals_between_two_readings() {
    if !Path::new("/proc/pressure").exists() {
        assert!(matches!(
            pressure::Pressure::probe(&Default::default()),
            Availability::Unavailable(_)
        ));
        return;
    }
    let host = host();
    let mut c = build::<pressure::Pressure>(&Default::default(), &host);
    let mut before = Vec::new();
    for r in ["cpu", "memory", "io", "irq"] {
        for k in ["some", "full"] {
            before.push((r, k, psi_total(r, k)));
        }
    }
    let out = collect(&mut c);
    let time = find(&out, "linux.pressure.stall.time");
    assert_eq!(time.unit, "s");
    let mut seen = 0;
    for (r, k, b) in before {
        let p = points(time).iter().find(|p| {
            s(p, "linux.pressure.resource") == Some(r) && s(p, "linux.pressure.type") == Some(k)
        });
        match (b, p) {
            (None, None) => {}
            (Some(b), Some(p)) => {
                let after = psi_total(r, k).unwrap() as f64 / 1e6;
                let v = p.value.as_f64();
                assert!(
                    v >= b as f64 / 1e6 && v <= after,
                    "{r} {k}: {v} outside [{b}µs, {after}s]"
                );
                assert_eq!(p.start_time, host.boot_time);
                seen += 1;
            }
            (b, p) => panic!("{r} {k}: file says {b:?}, collector {p:?}"),
        }
    }
    assert!(seen >= 5, "{seen}");
    let ratio = find(&out, "linux.pressure.stall.ratio");
    assert_eq!(points(ratio).len(), seen * 3);
    assert!(
        points(ratio)
            .iter()
            .all(|p| (0.0..=1.0).contains(&p.value.as_f64()))
    );
}

// ---------------------------------------------------------------- buddyinfo

#[test]
fn buddyinfo_matches_proc_buddyinfo() {
    let host = host();
    let mut c = build::<buddyinfo::Buddyinfo>(&Default::default(), &host);
    let text = std::fs::read_to_string("/proc/buddyinfo").unwrap();
    let out = collect(&mut c);
    let mut want_series = 0;
    let mut want_bytes = 0f64;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        for (order, n) in f[4..].iter().enumerate() {
            want_series += 1;
            want_bytes += n.parse::<f64>().unwrap() * (host.page_size << order) as f64;
        }
    }
    let blocks = find(&out, "linux.memory.buddy.free_blocks");
    let bytes = find(&out, "linux.memory.buddy.free");
    assert_eq!(points(blocks).len(), want_series);
    assert_eq!(points(bytes).len(), want_series);
    for (b, n) in points(bytes).iter().zip(points(blocks)) {
        let Some(Value::Int(order)) = attr(&b.attributes, "linux.memory.buddy.order") else {
            panic!("no order");
        };
        assert_eq!(int(b), int(n) * (host.page_size << order) as i64);
    }
    // Free memory moves between the two reads; allow 10%.
    let got: f64 = points(bytes).iter().map(|p| int(p) as f64).sum();
    assert!(
        (got - want_bytes).abs() <= want_bytes * 0.1,
        "{got} vs {want_bytes}"
    );
}

// ---------------------------------------------------------------- interrupts

/// `(irq, cpu index) → count` from /proc/interrupts.
fn interrupt_counts() -> Vec<(String, usize, u64)> {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap();
    let mut lines = text.lines();
    let ncpu = lines.next().unwrap().split_whitespace().count();
    let mut v = Vec::new();
    for l in lines {
        let (label, rest) = l.split_once(':').unwrap();
        for (i, n) in rest.split_whitespace().take(ncpu).enumerate() {
            let Ok(n) = n.parse() else { break };
            v.push((label.trim().to_owned(), i, n));
        }
    }
    v
}

#[test]
fn interrupts_between_two_readings() {
    let host = host();
    let mut c = build::<interrupts::Interrupts>(&Default::default(), &host);
    let before = interrupt_counts();
    let out = collect(&mut c);
    let after = interrupt_counts();
    let header = std::fs::read_to_string("/proc/interrupts").unwrap();
    let cpus: Vec<i64> = header
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .map(|c| c.trim_start_matches("CPU").parse().unwrap())
        .collect();
    let irq = find(&out, "linux.interrupts");
    assert!(matches!(
        irq.data,
        MetricData::Sum {
            monotonic: true,
            ..
        }
    ));
    let mut checked = 0;
    for ((label, i, b), (_, _, a)) in before.iter().zip(&after) {
        let cpu = (cpus.len() > 1 && !matches!(label.as_str(), "ERR" | "MIS")).then(|| cpus[*i]);
        let Some(p) = points(irq).iter().find(|p| {
            s(p, "linux.irq") == Some(label)
                && attr(&p.attributes, "cpu.logical_number") == cpu.map(Value::Int).as_ref()
        }) else {
            panic!("no point for {label} cpu {cpu:?}");
        };
        let v = int(p) as u64;
        assert!(*b <= v && v <= *a, "{label}/{i}: {v} outside [{b}, {a}]");
        checked += 1;
    }
    assert_eq!(points(irq).len(), checked);

    // Softirqs: every type on every CPU, growing.
    let soft = find(&out, "linux.softirqs");
    let text = std::fs::read_to_string("/proc/softirqs").unwrap();
    for line in text.lines().skip(1) {
        let (label, rest) = line.split_once(':').unwrap();
        for (i, n) in rest.split_whitespace().enumerate() {
            let p = points(soft)
                .iter()
                .find(|p| {
                    s(p, "linux.softirq.type") == Some(label.trim())
                        && attr(&p.attributes, "cpu.logical_number") == Some(&Value::Int(cpus[i]))
                })
                .unwrap();
            assert!(int(p) as u64 <= n.parse::<u64>().unwrap());
        }
    }
}

// ---------------------------------------------------------------- filesystem

/// A tmpfs mounted by the test; unmounted on drop.
struct Mount {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn statvfs(path: &Path) -> libc::statvfs {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: valid C string and out-pointer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st
}

fn fs_points<'a>(out: &'a [Metric], name: &str, mountpoint: &str) -> Vec<&'a NumberPoint> {
    points(find(out, name))
        .iter()
        .filter(|p| s(p, "system.filesystem.mountpoint") == Some(mountpoint))
        .collect()
}

#[test]
fn filesystem_sees_a_new_read_only_mount() {
    if !is_root() {
        eprintln!("skipped: needs root to mount");
        return;
    }
    let host = host();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mountpoint = path.to_str().unwrap().to_owned();
    let config = filesystem::Config {
        include: vec![regex_escape(&mountpoint), "/".into()],
        ..filesystem::Config::default()
    };
    let mut c = build::<filesystem::Filesystem>(&config, &host);
    let first = collect(&mut c);
    assert!(fs_points(&first, "system.filesystem.limit", &mountpoint).is_empty());
    assert_eq!(fs_points(&first, "system.filesystem.limit", "/").len(), 1);

    // Mount a 4 MiB tmpfs, fill 1 MiB, then make it read-only.
    run(
        "mount",
        &["-t", "tmpfs", "-o", "size=4m", "kotel-test", &mountpoint],
    );
    let mount = Mount {
        path: path.clone(),
        _dir: dir,
    };
    std::fs::write(path.join("data"), vec![7u8; 1 << 20]).unwrap();
    run("mount", &["-o", "remount,ro", &mountpoint]);

    let out = collect(&mut c);
    let st = statvfs(&mount.path);
    let frsize = st.f_frsize as i64;
    let limit = fs_points(&out, "system.filesystem.limit", &mountpoint);
    assert_eq!(limit.len(), 1, "new mount not picked up");
    assert_eq!(int(limit[0]), st.f_blocks as i64 * frsize);
    assert_eq!(int(limit[0]), 4 << 20);
    assert_eq!(s(limit[0], "system.filesystem.type"), Some("tmpfs"));
    assert_eq!(s(limit[0], "system.device"), Some("kotel-test"));
    let usage = fs_points(&out, "system.filesystem.usage", &mountpoint);
    let state = |name: &str| {
        usage
            .iter()
            .find(|p| s(p, "system.filesystem.state") == Some(name))
            .map(|p| int(p))
            .unwrap()
    };
    assert_eq!(state("used"), (st.f_blocks - st.f_bfree) as i64 * frsize);
    assert!(state("used") >= 1 << 20);
    assert_eq!(state("free"), st.f_bavail as i64 * frsize);
    assert_eq!(
        state("reserved"),
        (st.f_bfree - st.f_bavail) as i64 * frsize
    );
    let inodes = fs_points(&out, "linux.filesystem.inodes", &mountpoint);
    let used_inodes = inodes
        .iter()
        .find(|p| s(p, "linux.filesystem.inode.state") == Some("used"))
        .unwrap();
    assert_eq!(int(used_inodes), (st.f_files - st.f_ffree) as i64);
    let ro = fs_points(&out, "linux.filesystem.readonly", &mountpoint);
    assert_eq!(int(ro[0]), 1);
    assert_eq!(int(fs_points(&out, "linux.filesystem.readonly", "/")[0]), 0);

    // Unmounting is noticed too.
    drop(mount);
    let gone = collect(&mut c);
    assert!(fs_points(&gone, "system.filesystem.limit", &mountpoint).is_empty());
}

// ---------------------------------------------------------------- schedstat

#[test]
fn schedstat_probe_matches_the_kernel() {
    let probe = schedstat::Schedstat::probe(&Default::default());
    if Path::new("/proc/schedstat").exists() {
        assert_eq!(probe, Availability::Available);
        let mut c = build::<schedstat::Schedstat>(&Default::default(), &host());
        let out = collect(&mut c);
        assert_eq!(find(&out, "linux.cpu.run_delay").unit, "s");
    } else {
        assert_eq!(
            probe,
            Availability::Unavailable("/proc/schedstat not present (CONFIG_SCHEDSTATS)".into())
        );
    }
}
