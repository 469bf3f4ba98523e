//! `iotracer`: per-disk IO anomaly (HUATUO `iotracing`).
//!
//! Every interval, per whole disk of `/proc/diskstats` (partitions and
//! `exclude`d names skipped): utilisation %, read/write throughput and
//! read/write await since the previous sample. Anomalous when
//! `util > 90` (not NVMe), or NVMe with `util > 90` and `rbps > 2000 MiB/s`
//! or `wbps > 1500 MiB/s`, or `r_await > 100 ms`, or `w_await > 100 ms`
//! (HUATUO's rules and defaults); a trigger needs two consecutive anomalous
//! samples. Unlike HUATUO, each disk then cools down (default 30 min).
//!
//! Capture (default 10 s): `tp_btf/block_io_start` (else `block_rq_issue`)
//! remembers each request's submitter and start time by request pointer;
//! `tp_btf/block_rq_complete` adds bytes, count and latency to a kernel
//! hash keyed by (process, disk). The record lists the trigger disk's top
//! processes (bytes, IOs, mean and max latency, cgroup) and top cgroups.
//! Record `linux.autotrace.iotracer`.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kotel_ebpf::aya::maps::{HashMap as BpfHashMap, PerCpuArray};
use kotel_ebpf::{Hook, LoadOptions, objects};
use kotel_pipelines::{EventRecord, KeyValue, Value};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::framework::{
    Availability, CollectorSpec, Detector, HostContext, Instance, Mode, Trigger, spec::default_true,
};

pub struct Iotracer;

const NAME: &str = "iotracer";
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Skip captures while kotel used more than this many CPUs over the
    /// last minute (0: no budget).
    pub cpu_budget: f64,
    /// Utilisation %, above which a disk is saturated.
    pub util_threshold: f64,
    /// NVMe read throughput, MiB/s.
    pub read_mibps_threshold: f64,
    /// NVMe write throughput, MiB/s.
    pub write_mibps_threshold: f64,
    /// Read or write await, milliseconds.
    pub await_threshold_ms: f64,
    /// Only disks whose name matches one of these (empty: all).
    pub include: Vec<String>,
    /// Never these disks.
    pub exclude: Vec<String>,
    /// Length of the block-IO capture.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Processes and cgroups listed in the record.
    pub top: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            cooldown: super::DEFAULT_COOLDOWN,
            cpu_budget: super::DEFAULT_CPU_BUDGET,
            util_threshold: 90.0,
            read_mibps_threshold: 2000.0,
            write_mibps_threshold: 1500.0,
            await_threshold_ms: 100.0,
            include: Vec::new(),
            exclude: vec!["^(ram|md|zram)[0-9]+$".into()],
            duration: Duration::from_secs(10),
            top: 10,
        }
    }
}

crate::common_settings!(Config);

fn hooks() -> [Hook; 3] {
    [
        Hook::BtfTracePoint {
            program: "kotel_bio_start",
            name: "block_io_start",
        },
        Hook::BtfTracePoint {
            program: "kotel_bio_issue",
            name: "block_rq_issue",
        },
        Hook::BtfTracePoint {
            program: "kotel_bio_done",
            name: "block_rq_complete",
        },
    ]
}

impl CollectorSpec for Iotracer {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Autotracing;
    const ABOUT: &'static str = "per-disk util/await/throughput anomaly (/proc/diskstats) -> top IO processes and cgroups (block tracepoints)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        if !Path::new("/proc/diskstats").exists() {
            return Availability::Unavailable("/proc/diskstats not present".into());
        }
        crate::events::bpf::probe(&kotel_ebpf::preflight::Requirements {
            btf_tracepoints: vec!["block_rq_issue", "block_rq_complete"],
            ..Default::default()
        })
    }

    fn build(
        config: &Config,
        host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        Ok(Instance::Autotracing {
            interval: config.interval.unwrap_or(default_interval),
            cooldown: config.cooldown,
            detector: Box::new(IotracerDetector::new(
                "/proc/diskstats",
                config.clone(),
                host.capture_dir.clone(),
            )?),
        })
    }
}

/// Cumulative counters of one disk.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskCounters {
    pub major: u32,
    pub minor: u32,
    pub reads: u64,
    pub read_sectors: u64,
    pub read_ms: u64,
    pub writes: u64,
    pub write_sectors: u64,
    pub write_ms: u64,
    pub in_flight: u64,
    pub io_ms: u64,
    pub weighted_ms: u64,
}

/// Parse `/proc/diskstats` into (name, counters).
pub fn parse_diskstats(text: &str) -> Vec<(String, DiskCounters)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 14 {
                return None;
            }
            let n = |i: usize| f[i].parse::<u64>().ok();
            Some((
                f[2].to_string(),
                DiskCounters {
                    major: f[0].parse().ok()?,
                    minor: f[1].parse().ok()?,
                    reads: n(3)?,
                    read_sectors: n(5)?,
                    read_ms: n(6)?,
                    writes: n(7)?,
                    write_sectors: n(9)?,
                    write_ms: n(10)?,
                    in_flight: n(11)?,
                    io_ms: n(12)?,
                    weighted_ms: n(13)?,
                },
            ))
        })
        .collect()
}

/// Rates of one disk over one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskRates {
    pub util: f64,
    pub read_mibps: f64,
    pub write_mibps: f64,
    pub read_iops: f64,
    pub write_iops: f64,
    pub read_await_ms: f64,
    pub write_await_ms: f64,
    /// Average queue size (weighted ms per ms).
    pub queue: f64,
}

pub fn rates(a: &DiskCounters, b: &DiskCounters, dt: Duration) -> DiskRates {
    let ms = dt.as_secs_f64() * 1000.0;
    let s = dt.as_secs_f64().max(1e-9);
    let d = |x: u64, y: u64| y.saturating_sub(x) as f64;
    let reads = d(a.reads, b.reads);
    let writes = d(a.writes, b.writes);
    DiskRates {
        util: (super::percent(d(a.io_ms, b.io_ms), ms)).min(100.0),
        read_mibps: d(a.read_sectors, b.read_sectors) * 512.0 / MIB / s,
        write_mibps: d(a.write_sectors, b.write_sectors) * 512.0 / MIB / s,
        read_iops: reads / s,
        write_iops: writes / s,
        read_await_ms: if reads > 0.0 {
            d(a.read_ms, b.read_ms) / reads
        } else {
            0.0
        },
        write_await_ms: if writes > 0.0 {
            d(a.write_ms, b.write_ms) / writes
        } else {
            0.0
        },
        queue: if ms > 0.0 {
            d(a.weighted_ms, b.weighted_ms) / ms
        } else {
            0.0
        },
    }
}

/// HUATUO's rules: the reasons this sample is anomalous, with their excess.
pub fn reasons(name: &str, r: &DiskRates, c: &Config) -> Vec<(&'static str, f64)> {
    let mut out = Vec::new();
    let nvme = name.starts_with("nvme");
    if r.util > c.util_threshold {
        if !nvme {
            out.push(("ioutil", r.util - c.util_threshold));
        } else {
            if r.read_mibps > c.read_mibps_threshold {
                out.push((
                    "read_bps",
                    (r.read_mibps - c.read_mibps_threshold) / c.read_mibps_threshold * 100.0,
                ));
            }
            if r.write_mibps > c.write_mibps_threshold {
                out.push((
                    "write_bps",
                    (r.write_mibps - c.write_mibps_threshold) / c.write_mibps_threshold * 100.0,
                ));
            }
        }
    }
    if r.read_await_ms > c.await_threshold_ms {
        out.push((
            "read_await",
            (r.read_await_ms - c.await_threshold_ms) / c.await_threshold_ms * 100.0,
        ));
    }
    if r.write_await_ms > c.await_threshold_ms {
        out.push((
            "write_await",
            (r.write_await_ms - c.await_threshold_ms) / c.await_threshold_ms * 100.0,
        ));
    }
    out
}

struct DiskState {
    counters: DiskCounters,
    at: Instant,
    anomalous: bool,
}

pub struct IotracerDetector {
    path: String,
    config: Config,
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    capture_dir: std::path::PathBuf,
    disks: HashMap<String, DiskState>,
    devs: HashMap<String, (u32, u32)>,
}

fn regexes(list: &[String]) -> anyhow::Result<Vec<Regex>> {
    list.iter()
        .map(|r| Regex::new(r).with_context(|| format!("bad disk regex {r:?}")))
        .collect()
}

impl IotracerDetector {
    pub fn new(
        path: &str,
        config: Config,
        capture_dir: std::path::PathBuf,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            path: path.to_string(),
            include: regexes(&config.include)?,
            exclude: regexes(&config.exclude)?,
            config,
            capture_dir,
            disks: HashMap::new(),
            devs: HashMap::new(),
        })
    }

    fn wanted(&self, name: &str) -> bool {
        // Whole disks only: partitions have no /sys/block/<name>.
        Path::new("/sys/block").join(name).exists()
            && (self.include.is_empty() || self.include.iter().any(|r| r.is_match(name)))
            && !self.exclude.iter().any(|r| r.is_match(name))
    }
}

impl Detector for IotracerDetector {
    fn capture_cpu_budget(&self) -> Option<f64> {
        (self.config.cpu_budget > 0.0).then_some(self.config.cpu_budget)
    }

    fn check(&mut self) -> anyhow::Result<Vec<Trigger>> {
        let text = std::fs::read_to_string(&self.path)?;
        let now = Instant::now();
        let mut out = Vec::new();
        let mut seen: HashMap<String, DiskState> = HashMap::new();
        for (name, c) in parse_diskstats(&text) {
            if !self.wanted(&name) {
                continue;
            }
            let mut st = DiskState {
                counters: c,
                at: now,
                anomalous: false,
            };
            if let Some(prev) = self.disks.remove(&name) {
                let r = rates(&prev.counters, &c, now - prev.at);
                let why = reasons(&name, &r, &self.config);
                st.anomalous = !why.is_empty();
                if st.anomalous && prev.anomalous {
                    out.push(self.trigger(&name, &c, &r, &why, now - prev.at));
                }
            }
            self.devs.insert(name.clone(), (c.major, c.minor));
            seen.insert(name, st);
        }
        self.disks = seen;
        Ok(out)
    }

    fn capture(&mut self, trigger: &Trigger) -> anyhow::Result<EventRecord> {
        let disk = trigger.scope.trim_start_matches("disk:").to_string();
        let (major, minor) = *self.devs.get(&disk).context("disk vanished")?;
        let dev = (major << 20) | minor;
        let top = capture_io(self.config.duration)?;
        let mut r = super::base_record(NAME, trigger);
        r.attributes.push(KeyValue::new(
            "linux.autotrace.capture.duration",
            self.config.duration.as_secs_f64(),
        ));
        let mut rows: Vec<&IoRow> = top.rows.iter().filter(|row| row.dev == dev).collect();
        rows.sort_by(|a, b| {
            b.bytes()
                .cmp(&a.bytes())
                .then(b.lat_sum_ns.cmp(&a.lat_sum_ns))
        });
        r.attributes
            .push(KeyValue::new("linux.iotracer.processes", rows.len() as u64));
        r.attributes
            .push(KeyValue::new("linux.iotracer.untracked", top.untracked));
        let secs = self.config.duration.as_secs_f64().max(1e-9);
        let mut cgroups: HashMap<String, CgroupSum> = HashMap::new();
        let procs: Vec<Value> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, row)| {
                let cg = crate::cgroups::resolve_pid(row.tgid)
                    .or_else(|| crate::cgroups::resolve_cgroup_id(row.cgid));
                let mut cg_attrs = Vec::new();
                if let Some(cg) = &cg {
                    cg.append_attributes(&mut cg_attrs);
                }
                let key = cg
                    .as_ref()
                    .map(|c| c.path.to_string())
                    .unwrap_or_else(|| "/".into());
                let e = cgroups
                    .entry(key)
                    .or_insert_with(|| (cg_attrs.clone(), 0, 0));
                e.1 += row.bytes();
                e.2 += row.ios();
                if i >= self.config.top {
                    return None;
                }
                let ios = row.ios().max(1) as f64;
                let mut kv = vec![
                    KeyValue::new("process.pid", u64::from(row.tgid)),
                    KeyValue::new("process.command", row.comm.clone()),
                    KeyValue::new("read_bytes", row.read_bytes),
                    KeyValue::new("write_bytes", row.write_bytes),
                    KeyValue::new("read_bytes_per_second", row.read_bytes as f64 / secs),
                    KeyValue::new("write_bytes_per_second", row.write_bytes as f64 / secs),
                    KeyValue::new("ios", row.ios()),
                    KeyValue::new("latency.mean", row.lat_sum_ns as f64 / ios / 1e9),
                    KeyValue::new("latency.max", row.lat_max_ns as f64 / 1e9),
                ];
                kv.extend(cg_attrs);
                Some(Value::Map(kv))
            })
            .collect();
        let mut cgs: Vec<(String, CgroupSum)> = cgroups.into_iter().collect();
        cgs.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(&b.0)));
        let cgs: Vec<Value> = cgs
            .into_iter()
            .take(self.config.top)
            .map(|(path, (mut attrs, bytes, ios))| {
                if attrs.is_empty() {
                    attrs.push(KeyValue::new("linux.cgroup.path", path));
                }
                attrs.push(KeyValue::new("bytes", bytes));
                attrs.push(KeyValue::new("ios", ios));
                Value::Map(attrs)
            })
            .collect();
        r.body = Some(Value::Map(vec![
            KeyValue::new("top_processes", Value::Array(procs)),
            KeyValue::new("top_cgroups", Value::Array(cgs)),
        ]));
        // Every (process, disk) row of the capture, all disks, as TSV.
        let mut tsv = String::from(
            "pid\tcomm\tmajor\tminor\tread_bytes\twrite_bytes\tread_ios\twrite_ios\tlatency_sum_ns\tlatency_max_ns\tcgroup_v2_id\n",
        );
        for row in &top.rows {
            tsv.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                row.tgid,
                row.comm,
                row.dev >> 20,
                row.dev & 0xfffff,
                row.read_bytes,
                row.write_bytes,
                row.read_ios,
                row.write_ios,
                row.lat_sum_ns,
                row.lat_max_ns,
                row.cgid
            ));
        }
        let base = super::artifacts::base_name(r.time, &trigger.scope);
        match super::artifacts::write(&self.capture_dir, NAME, &base, "tsv", tsv.as_bytes()) {
            Ok(p) => r.attributes.push(super::artifacts_attribute(&[p])),
            Err(e) => r.attributes.push(KeyValue::new(
                "linux.autotrace.artifacts.error",
                format!("{e:#}"),
            )),
        }
        Ok(r)
    }
}

impl IotracerDetector {
    fn trigger(
        &self,
        name: &str,
        c: &DiskCounters,
        r: &DiskRates,
        why: &[(&'static str, f64)],
        window: Duration,
    ) -> Trigger {
        let cf = &self.config;
        let attributes = vec![
            KeyValue::new("linux.autotrace.scope", format!("disk:{name}")),
            KeyValue::new("linux.autotrace.window", window.as_secs_f64()),
            KeyValue::new("system.device", name.to_string()),
            KeyValue::new("linux.disk.major", u64::from(c.major)),
            KeyValue::new("linux.disk.minor", u64::from(c.minor)),
            KeyValue::new(
                "linux.iotracer.reasons",
                Value::Array(why.iter().map(|(w, _)| Value::from(*w)).collect()),
            ),
            KeyValue::new("linux.disk.util.percent", r.util),
            KeyValue::new("linux.disk.util.percent.threshold", cf.util_threshold),
            KeyValue::new("linux.disk.read.mibps", r.read_mibps),
            KeyValue::new("linux.disk.read.mibps.threshold", cf.read_mibps_threshold),
            KeyValue::new("linux.disk.write.mibps", r.write_mibps),
            KeyValue::new("linux.disk.write.mibps.threshold", cf.write_mibps_threshold),
            KeyValue::new("linux.disk.read.iops", r.read_iops),
            KeyValue::new("linux.disk.write.iops", r.write_iops),
            KeyValue::new("linux.disk.read.await_ms", r.read_await_ms),
            KeyValue::new("linux.disk.write.await_ms", r.write_await_ms),
            KeyValue::new("linux.disk.await_ms.threshold", cf.await_threshold_ms),
            KeyValue::new("linux.disk.queue", r.queue),
        ];
        Trigger {
            scope: format!("disk:{name}"),
            excess: why.iter().map(|w| w.1).fold(0.0, f64::max),
            attributes,
        }
    }
}

/// A cgroup's attributes, bytes and IOs in a capture.
type CgroupSum = (Vec<KeyValue>, u64, u64);

/// One (process, disk) aggregate of a capture.
#[derive(Debug, Clone, PartialEq)]
pub struct IoRow {
    pub tgid: u32,
    /// major << 20 | minor.
    pub dev: u32,
    pub comm: String,
    pub cgid: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ios: u64,
    pub write_ios: u64,
    pub lat_sum_ns: u64,
    pub lat_max_ns: u64,
}

impl IoRow {
    pub fn bytes(&self) -> u64 {
        self.read_bytes + self.write_bytes
    }
    pub fn ios(&self) -> u64 {
        self.read_ios + self.write_ios
    }
}

/// A finished block-IO capture.
#[derive(Debug, Clone, Default)]
pub struct IoCapture {
    pub rows: Vec<IoRow>,
    /// Completions of requests started before the capture.
    pub untracked: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct BioKey {
    tgid: u32,
    dev: u32,
}
// SAFETY: mirror of `struct bio_key`, no padding.
unsafe impl kotel_ebpf::aya::Pod for BioKey {}

#[repr(C)]
#[derive(Clone, Copy)]
struct BioVal {
    read_bytes: u64,
    write_bytes: u64,
    read_ios: u64,
    write_ios: u64,
    lat_sum_ns: u64,
    lat_max_ns: u64,
    cgid: u64,
    comm: [u8; 16],
}
// SAFETY: mirror of `struct bio_val`, no padding.
unsafe impl kotel_ebpf::aya::Pod for BioVal {}

/// Trace block IO for `duration` and return the per-(process, disk) sums.
pub fn capture_io(duration: Duration) -> anyhow::Result<IoCapture> {
    let loaded = kotel_ebpf::loader::load(NAME, objects::BIOTOP, &LoadOptions::new(), &hooks())?;
    // block_io_start is optional (kernel 6.5+); issue + complete are not.
    if !loaded.attached.contains(&"kotel_bio_done") || !loaded.attached.contains(&"kotel_bio_issue")
    {
        loaded.require_all()?;
    }
    std::thread::sleep(duration);
    let top: BpfHashMap<_, BioKey, BioVal> =
        BpfHashMap::try_from(loaded.bpf.map("bio_top").context("bio_top map missing")?)?;
    let rows = top
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| {
            let end = v.comm.iter().position(|&b| b == 0).unwrap_or(16);
            IoRow {
                tgid: k.tgid,
                dev: k.dev,
                comm: String::from_utf8_lossy(&v.comm[..end]).into_owned(),
                cgid: v.cgid,
                read_bytes: v.read_bytes,
                write_bytes: v.write_bytes,
                read_ios: v.read_ios,
                write_ios: v.write_ios,
                lat_sum_ns: v.lat_sum_ns,
                lat_max_ns: v.lat_max_ns,
            }
        })
        .collect();
    let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(
        loaded
            .bpf
            .map("bio_stats")
            .context("bio_stats map missing")?,
    )?;
    let untracked = stats.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
    Ok(IoCapture { rows, untracked })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "   7       0 loop0 10 0 80 5 20 0 160 40 0 30 45 0 0 0 0 0 0\n   7       1 loop0p1 1 0 8 1 0 0 0 0 0 1 1 0 0 0 0 0 0\n";
    const B: &str = "   7       0 loop0 20 0 2128 1005 30 0 2208 3040 2 1000 4045 0 0 0 0 0 0\n";

    #[test]
    fn rates_and_rules() {
        let a = parse_diskstats(A);
        assert_eq!(a.len(), 2);
        let b = parse_diskstats(B);
        let r = rates(&a[0].1, &b[0].1, Duration::from_secs(1));
        assert!((r.util - 97.0).abs() < 1e-9, "{r:?}");
        assert!((r.read_await_ms - 100.0).abs() < 1e-9); // 1000 ms / 10 reads
        assert!((r.write_await_ms - 300.0).abs() < 1e-9); // 3000 ms / 10 writes
        assert!((r.read_mibps - 1.0).abs() < 1e-9); // 2048 sectors
        let c = Config::default();
        let why: Vec<&str> = reasons("loop0", &r, &c).into_iter().map(|w| w.0).collect();
        assert_eq!(why, vec!["ioutil", "write_await"]);
        // NVMe needs throughput on top of utilisation.
        let why: Vec<&str> = reasons("nvme0n1", &r, &c)
            .into_iter()
            .map(|w| w.0)
            .collect();
        assert_eq!(why, vec!["write_await"]);
    }

    #[test]
    fn needs_two_consecutive_anomalous_samples() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("diskstats");
        let line = |ms: u64| format!("   7 0 loop0 0 0 0 0 0 0 0 0 0 {ms} 0 0 0 0 0 0 0\n");
        std::fs::write(&p, line(0)).unwrap();
        let c = Config {
            include: vec!["^loop0$".into()],
            util_threshold: 50.0,
            ..Default::default()
        };
        let mut d = IotracerDetector::new(p.to_str().unwrap(), c, dir.path().into()).unwrap();
        if !Path::new("/sys/block/loop0").exists() {
            return;
        }
        assert!(d.check().unwrap().is_empty());
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(&p, line(100)).unwrap();
        assert!(d.check().unwrap().is_empty(), "first anomalous sample");
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(&p, line(200)).unwrap();
        let t = d.check().unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].scope, "disk:loop0");
    }
}
