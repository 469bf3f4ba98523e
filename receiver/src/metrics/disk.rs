//! `disk`: block-device I/O counters from `/proc/diskstats`.
//!
//! Every selected device gets the OpenTelemetry `system.disk.*` metrics
//! (sectors become bytes, milliseconds become seconds) plus the discard and
//! flush counters of newer kernels (4.18+ and 5.5+) where the line has them.
//!
//! This module also holds the small helpers the other host collectors of
//! this folder share: whole-name regex filters, the series-cap gauge, and
//! point/metric constructors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kotel_pipelines::{KeyValue, Metric, MetricData, Number, NumberPoint};
use serde::{Deserialize, Serialize};

use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode, spec::default_true,
};
use crate::procfs::{self, ProcFile};

const DISKSTATS: &str = "/proc/diskstats";
const SYS_BLOCK: &str = "/sys/block";
/// Bytes per diskstats sector: the kernel always counts 512-byte units.
const SECTOR: u64 = 512;

// ---------------------------------------------------------------------------
// Helpers shared by the host collectors (disk, pressure, buddyinfo,
// interrupts, filesystem, schedstat).

pub(crate) use super::filter::Filter;

/// `linux.collector.series.dropped` for `collector`.
pub(crate) fn dropped_metric(collector: &'static str, dropped: u64) -> Metric {
    Metric {
        name: "linux.collector.series.dropped".into(),
        description: "Series left out of the last collection by the max_series cap".into(),
        unit: "{series}".into(),
        data: MetricData::Gauge(vec![NumberPoint {
            attributes: vec![KeyValue::new("kotel.collector.name", collector)],
            start_time: 0,
            value: Number::Int(to_i64(dropped)),
        }]),
    }
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn metric(
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    data: MetricData,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data,
    }
}

/// A cumulative monotonic sum.
pub(crate) fn counter(points: Vec<NumberPoint>) -> MetricData {
    MetricData::Sum {
        monotonic: true,
        points,
    }
}

pub(crate) fn point(attributes: Vec<KeyValue>, start_time: u64, value: Number) -> NumberPoint {
    NumberPoint {
        attributes,
        start_time,
        value,
    }
}

// ---------------------------------------------------------------------------

pub struct Disk;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Devices to report (whole-name regexes); empty = every device.
    pub include: Vec<String>,
    /// Devices never reported; wins over `include`.
    pub exclude: Vec<String>,
    /// Report partitions (`sda1`) as well as whole disks (`sda`).
    pub partitions: bool,
    /// Most devices reported per collection (0 = no limit); the series of the
    /// rest are counted in `linux.collector.series.dropped`.
    pub max_devices: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            include: Vec::new(),
            // RAM disks and floppies only; loop devices are real block I/O.
            exclude: vec![r"(ram|fd)\d+".into()],
            partitions: true,
            max_devices: 256,
        }
    }
}

crate::common_settings!(Config);

impl CollectorSpec for Disk {
    const NAME: &'static str = "disk";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str =
        "Block-device I/O: operations, bytes, time, queue (/proc/diskstats)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        crate::framework::spec::probe_path(DISKSTATS)
    }

    fn build(
        config: &Config,
        host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let collector =
            DiskCollector::new(Path::new(DISKSTATS), Path::new(SYS_BLOCK), config, host)?;
        Ok(Instance::metrics(
            config.interval,
            default_interval,
            collector,
        ))
    }
}

/// The numeric columns after the device name, in kernel order.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Stats {
    v: [u64; 17],
    n: usize,
}

// Column indexes (Documentation/admin-guide/iostats.rst).
const READS: usize = 0;
const READS_MERGED: usize = 1;
const SECTORS_READ: usize = 2;
const MS_READING: usize = 3;
const WRITES: usize = 4;
const WRITES_MERGED: usize = 5;
const SECTORS_WRITTEN: usize = 6;
const MS_WRITING: usize = 7;
const IN_PROGRESS: usize = 8;
const MS_IO: usize = 9;
const MS_WEIGHTED: usize = 10;
const DISCARDS: usize = 11;
const DISCARDS_MERGED: usize = 12;
const SECTORS_DISCARDED: usize = 13;
const MS_DISCARDING: usize = 14;
const FLUSHES: usize = 15;
const MS_FLUSHING: usize = 16;

impl Stats {
    fn parse(rest: &[u8]) -> Option<Self> {
        let mut s = Stats::default();
        for f in procfs::fields(rest).take(17) {
            s.v[s.n] = procfs::parse_u64(f)?;
            s.n += 1;
        }
        // 2.6.25+ prints at least 11 columns; older partition lines had 4.
        (s.n >= 11).then_some(s)
    }
}

/// One device, decided once per (name, line position).
#[derive(Debug)]
struct Device {
    name: Box<[u8]>,
    device: &'static str,
    selected: bool,
}

struct DiskCollector {
    file: ProcFile,
    sys_block: PathBuf,
    filter: Filter,
    partitions: bool,
    max_devices: usize,
    boot_time: u64,
    devices: Vec<Device>,
    rows: Vec<(&'static str, Stats)>,
}

impl DiskCollector {
    fn new(
        path: &Path,
        sys_block: &Path,
        config: &Config,
        host: &HostContext,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            file: ProcFile::open(path)?,
            sys_block: sys_block.to_path_buf(),
            filter: Filter::new(Disk::NAME, &config.include, &config.exclude)?,
            partitions: config.partitions,
            max_devices: config.max_devices,
            boot_time: host.boot_time,
            devices: Vec::new(),
            rows: Vec::new(),
        })
    }
}

/// Series one device produces, for the drop count.
fn series_of(s: &Stats) -> u64 {
    // io, operations, operation_time, merged (read and write each), then
    // io_time, weighted_io_time, pending_operations.
    let mut n = 11;
    if s.n >= 15 {
        n += 4;
    }
    if s.n >= 17 {
        n += 2;
    }
    n
}

impl MetricsCollector for DiskCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let buf = self.file.read()?;
        self.rows.clear();
        let mut dropped = 0u64;
        let mut lines = 0usize;
        // Device entries are cached by line position and rebuilt only when
        // the name on that line changes (a device appeared or went away).
        let mut i = 0usize;
        for line in procfs::lines(buf) {
            lines += 1;
            let mut f = procfs::fields(line);
            let (Some(_major), Some(_minor), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let rest_start = name.as_ptr() as usize - line.as_ptr() as usize + name.len();
            let Some(stats) = Stats::parse(&line[rest_start..]) else {
                continue;
            };
            if self.devices.get(i).is_none_or(|d| *d.name != *name) {
                let text = String::from_utf8_lossy(name);
                // A whole disk has a /sys/block entry ("cciss/c0d0" is "cciss!c0d0").
                let selected = self.filter.matches(&text)
                    && (self.partitions || self.sys_block.join(text.replace('/', "!")).exists());
                let dev = Device {
                    name: name.into(),
                    // Only selected names are interned (kept for the process life).
                    device: if selected { procfs::intern(&text) } else { "" },
                    selected,
                };
                if i < self.devices.len() {
                    self.devices[i] = dev;
                } else {
                    self.devices.push(dev);
                }
            }
            let d = &self.devices[i];
            i += 1;
            if !d.selected {
                continue;
            }
            if self.max_devices > 0 && self.rows.len() >= self.max_devices {
                dropped += series_of(&stats);
                continue;
            }
            self.rows.push((d.device, stats));
        }
        self.devices.truncate(i);
        if lines == 0 {
            anyhow::bail!("{} is empty", self.file.path().display());
        }
        emit(&self.rows, self.boot_time, out);
        out.push(dropped_metric(Disk::NAME, dropped));
        Ok(())
    }
}

fn emit(rows: &[(&'static str, Stats)], boot: u64, out: &mut Vec<Metric>) {
    let n = rows.len();
    let dev = |d: &'static str| KeyValue::new("system.device", d);
    let dir = |d: &'static str| KeyValue::new("disk.io.direction", d);
    let int = |v: u64| Number::Int(to_i64(v));
    let secs = |ms: u64| Number::Double(ms as f64 / 1000.0);
    let by_direction = |read: usize, write: usize, value: &dyn Fn(u64) -> Number| {
        let mut points = Vec::with_capacity(2 * n);
        for (d, s) in rows {
            points.push(point(vec![dev(d), dir("read")], boot, value(s.v[read])));
            points.push(point(vec![dev(d), dir("write")], boot, value(s.v[write])));
        }
        points
    };
    let per_device = |col: usize, min_cols: usize, value: &dyn Fn(u64) -> Number| {
        rows.iter()
            .filter(|(_, s)| s.n >= min_cols)
            .map(|(d, s)| point(vec![dev(d)], boot, value(s.v[col])))
            .collect::<Vec<_>>()
    };
    let bytes = |sectors: u64| Number::Int(to_i64(sectors.saturating_mul(SECTOR)));

    out.push(metric(
        "system.disk.io",
        "Bytes read from and written to the device",
        "By",
        counter(by_direction(SECTORS_READ, SECTORS_WRITTEN, &bytes)),
    ));
    out.push(metric(
        "system.disk.operations",
        "Read and write requests completed",
        "{operation}",
        counter(by_direction(READS, WRITES, &int)),
    ));
    out.push(metric(
        "system.disk.operation_time",
        "Time spent on completed reads and writes, summed over requests (overlapping requests all count)",
        "s",
        counter(by_direction(MS_READING, MS_WRITING, &secs)),
    ));
    out.push(metric(
        "system.disk.merged",
        "Adjacent requests merged into one before being issued",
        "{operation}",
        counter(by_direction(READS_MERGED, WRITES_MERGED, &int)),
    ));
    out.push(metric(
        "system.disk.io_time",
        "Wall time the device had at least one request in flight (busy time)",
        "s",
        counter(per_device(MS_IO, 11, &secs)),
    ));
    out.push(metric(
        "linux.disk.weighted_io_time",
        "Request time weighted by the number of requests in flight (queue depth integral)",
        "s",
        counter(per_device(MS_WEIGHTED, 11, &secs)),
    ));
    let pending = rows
        .iter()
        .map(|(d, s)| point(vec![dev(d)], 0, int(s.v[IN_PROGRESS])))
        .collect();
    out.push(metric(
        "system.disk.pending_operations",
        "Requests issued to the driver and not yet completed",
        "{operation}",
        MetricData::Gauge(pending),
    ));
    if rows.iter().any(|(_, s)| s.n >= 15) {
        out.push(metric(
            "linux.disk.discard.operations",
            "Discard (TRIM/UNMAP) requests completed",
            "{operation}",
            counter(per_device(DISCARDS, 15, &int)),
        ));
        out.push(metric(
            "linux.disk.discard.merged",
            "Discard requests merged before being issued",
            "{operation}",
            counter(per_device(DISCARDS_MERGED, 15, &int)),
        ));
        out.push(metric(
            "linux.disk.discard.io",
            "Bytes discarded",
            "By",
            counter(per_device(SECTORS_DISCARDED, 15, &bytes)),
        ));
        out.push(metric(
            "linux.disk.discard.operation_time",
            "Time spent on completed discards, summed over requests",
            "s",
            counter(per_device(MS_DISCARDING, 15, &secs)),
        ));
    }
    if rows.iter().any(|(_, s)| s.n >= 17) {
        out.push(metric(
            "linux.disk.flush.operations",
            "Cache flush requests completed",
            "{operation}",
            counter(per_device(FLUSHES, 17, &int)),
        ));
        out.push(metric(
            "linux.disk.flush.operation_time",
            "Time spent on completed flushes, summed over requests",
            "s",
            counter(per_device(MS_FLUSHING, 17, &secs)),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kotel_pipelines::attr;

    fn host() -> HostContext {
        HostContext {
            boot_time: 1_700_000_000_000_000_000,
            agent_start: 1_700_000_100_000_000_000,
            clock_tick: 0.01,
            page_size: 4096,
            capture_dir: std::env::temp_dir(),
        }
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/host")
            .join(name)
    }

    fn collect(file: &str, config: &Config) -> Vec<Metric> {
        let mut c =
            DiskCollector::new(&fixture(file), &fixture("sys-block"), config, &host()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        let mut again = Vec::new();
        c.collect(&mut again).unwrap();
        assert_eq!(out, again);
        out
    }

    fn find<'a>(out: &'a [Metric], name: &str) -> &'a Metric {
        out.iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    fn s<'a>(p: &'a NumberPoint, k: &str) -> Option<&'a str> {
        attr(&p.attributes, k).and_then(|v| v.as_str())
    }

    fn points(m: &Metric) -> &[NumberPoint] {
        match &m.data {
            MetricData::Gauge(p) | MetricData::Sum { points: p, .. } => p,
            MetricData::Histogram(_) => panic!("histogram"),
        }
    }

    fn value(m: &Metric, device: &str, direction: Option<&str>) -> Option<Number> {
        points(m)
            .iter()
            .find(|p| {
                s(p, "system.device") == Some(device)
                    && direction.is_none_or(|d| s(p, "disk.io.direction") == Some(d))
            })
            .map(|p| p.value)
    }

    fn devices(m: &Metric) -> Vec<&str> {
        let mut d: Vec<&str> = points(m)
            .iter()
            .filter_map(|p| attr(&p.attributes, "system.device").and_then(|v| v.as_str()))
            .collect();
        d.dedup();
        d
    }

    #[test]
    fn machine_capture() {
        let out = collect("diskstats", &Config::default());
        let io = find(&out, "system.disk.io");
        assert_eq!(io.unit, "By");
        assert!(matches!(
            io.data,
            MetricData::Sum {
                monotonic: true,
                ..
            }
        ));
        assert!(points(io).iter().all(|p| p.start_time == host().boot_time));
        // vda 193226 17150 7549834 158793 55968 396125 42278672 227532 0 33908 402703 132685 1 14089032 16319 1668 58
        assert_eq!(
            value(io, "vda", Some("read")),
            Some(Number::Int(7549834 * 512))
        );
        assert_eq!(
            value(io, "vda", Some("write")),
            Some(Number::Int(42278672 * 512))
        );
        let ops = find(&out, "system.disk.operations");
        assert_eq!(value(ops, "vda", Some("read")), Some(Number::Int(193226)));
        assert_eq!(value(ops, "vda", Some("write")), Some(Number::Int(55968)));
        let merged = find(&out, "system.disk.merged");
        assert_eq!(
            value(merged, "vda", Some("write")),
            Some(Number::Int(396125))
        );
        let t = find(&out, "system.disk.operation_time");
        assert_eq!(t.unit, "s");
        assert_eq!(value(t, "vda", Some("read")), Some(Number::Double(158.793)));
        assert_eq!(
            value(find(&out, "system.disk.io_time"), "vda", None),
            Some(Number::Double(33.908))
        );
        assert_eq!(
            value(find(&out, "linux.disk.weighted_io_time"), "vda", None),
            Some(Number::Double(402.703))
        );
        let pending = find(&out, "system.disk.pending_operations");
        assert!(matches!(pending.data, MetricData::Gauge(_)));
        assert_eq!(value(pending, "vda", None), Some(Number::Int(0)));
        let discard = find(&out, "linux.disk.discard.io");
        assert_eq!(
            value(discard, "vda", None),
            Some(Number::Int(14089032 * 512))
        );
        assert_eq!(
            value(find(&out, "linux.disk.discard.operations"), "vda", None),
            Some(Number::Int(132685))
        );
        assert_eq!(
            value(find(&out, "linux.disk.flush.operations"), "vda", None),
            Some(Number::Int(1668))
        );
        assert_eq!(
            value(find(&out, "linux.disk.flush.operation_time"), "vda", None),
            Some(Number::Double(0.058))
        );
        // Loop devices are reported by default (tests and images use them).
        assert_eq!(devices(io).len(), 10);
        assert_eq!(
            points(find(&out, "linux.collector.series.dropped"))[0].value,
            Number::Int(0)
        );
    }

    #[test]
    fn partitions_old_kernels_and_default_exclude() {
        let out = collect("diskstats-partitions", &Config::default());
        let io = find(&out, "system.disk.io");
        // ram0 excluded by default.
        assert_eq!(
            devices(io),
            vec![
                "loop0",
                "nvme0n1",
                "nvme0n1p1",
                "nvme0n1p2",
                "sda",
                "sda1",
                "dm-0"
            ]
        );
        // sda has only the 11 pre-4.18 columns: no discard or flush series.
        assert_eq!(
            value(find(&out, "linux.disk.discard.io"), "sda", None),
            None
        );
        assert_eq!(
            value(find(&out, "linux.disk.flush.operations"), "sda", None),
            None
        );
        assert_eq!(
            value(find(&out, "system.disk.io_time"), "sda", None),
            Some(Number::Double(120.644))
        );
        assert_eq!(
            value(
                find(&out, "system.disk.pending_operations"),
                "nvme0n1",
                None
            ),
            Some(Number::Int(3))
        );

        let whole = collect(
            "diskstats-partitions",
            &Config {
                partitions: false,
                ..Config::default()
            },
        );
        assert_eq!(
            devices(find(&whole, "system.disk.io")),
            vec!["loop0", "nvme0n1", "sda", "dm-0"]
        );
    }

    #[test]
    fn only_old_columns_emit_no_discard_metrics() {
        let out = collect(
            "diskstats-partitions",
            &Config {
                include: vec!["sd.*".into()],
                ..Config::default()
            },
        );
        assert_eq!(devices(find(&out, "system.disk.io")), vec!["sda", "sda1"]);
        assert!(
            out.iter()
                .all(|m| !m.name.starts_with("linux.disk.discard"))
        );
        assert!(out.iter().all(|m| !m.name.starts_with("linux.disk.flush")));
    }

    #[test]
    fn device_cap_counts_dropped_series() {
        let out = collect(
            "diskstats-partitions",
            &Config {
                exclude: vec![],
                max_devices: 2,
                ..Config::default()
            },
        );
        assert_eq!(devices(find(&out, "system.disk.io")), vec!["ram0", "loop0"]);
        // nvme0n1, p1, p2, dm-0: 17 series each; sda, sda1: 11 each.
        assert_eq!(
            points(find(&out, "linux.collector.series.dropped"))[0].value,
            Number::Int(4 * 17 + 2 * 11)
        );
    }

    #[test]
    fn filters_and_errors() {
        let out = collect(
            "diskstats-partitions",
            &Config {
                exclude: vec!["loop.*".into(), "dm-.*".into(), r".*p\d+".into()],
                ..Config::default()
            },
        );
        assert_eq!(
            devices(find(&out, "system.disk.io")),
            vec!["ram0", "nvme0n1", "sda", "sda1"]
        );
        let bad = Config {
            include: vec!["sd(".into()],
            ..Config::default()
        };
        let err = DiskCollector::new(&fixture("diskstats"), &fixture("sys-block"), &bad, &host())
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("invalid include regex"),
            "{err:#}"
        );

        let empty = tempfile::NamedTempFile::new().unwrap();
        let mut c = DiskCollector::new(
            empty.path(),
            &fixture("sys-block"),
            &Config::default(),
            &host(),
        )
        .unwrap();
        assert!(c.collect(&mut Vec::new()).is_err());
    }

    #[test]
    fn config_deserializes() {
        let c: Config = serde_json::from_str(r#"{"partitions": false}"#).unwrap();
        assert!(!c.partitions && c.enabled);
        assert_eq!(c.exclude, Config::default().exclude);
        assert!(serde_json::from_str::<Config>(r#"{"partition": false}"#).is_err());
    }
}
