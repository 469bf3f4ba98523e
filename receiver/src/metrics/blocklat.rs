//! `blocklat`: block I/O latency histograms per disk and operation (BPF
//! `tp_btf` block_rq_issue / block_rq_complete / block_rq_requeue).
//!
//! Two stages per request, both ending at `block_rq_complete`:
//! - `dispatch_to_complete` (d2c): from `block_rq_issue` (handed to the
//!   driver) — the device's service time;
//! - `queue_to_complete` (q2c): from the request's own `start_time_ns`, set
//!   by blk-mq when the request is set up for its first bio (when the queue
//!   keeps I/O statistics or has an I/O scheduler, the default for disks) —
//!   what the submitter waits for, queueing included. Devices without a start
//!   time report d2c only (`linux.disk.latency.no_start`).
//!
//! Buckets are log2 from 1.024 µs up (HUATUO's iolatency only counted IOs
//! of 20 ms and more). Partitions count for their whole disk. Flushes are the
//! `flush` operation. Requeues and failed completions are counted per disk.
//! The kernel has no tracepoint for queue freezes (checked on 6.18:
//! `events/block/` has none), so they are not counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kotel_ebpf::maps::{HIST_LEN, HIST_SLOTS, Log2Hist, log2_bounds};
use kotel_ebpf::preflight::Requirements;
use kotel_ebpf::{Hook, LoadOptions, Loaded, objects};
use kotel_pipelines::{KeyValue, Metric, Number, NumberPoint};
use serde::{Deserialize, Serialize};

use crate::events::bpf;
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode, spec::default_true,
};
use crate::metrics::disk::{Filter, dropped_metric};
use crate::metrics::runqlat::percpu_hash_arrays;

pub struct Blocklat;

const NAME: &str = "blocklat";
/// Histogram buckets start at 1.024 µs.
const MIN_SLOT: usize = 9;
const ST_LEN: usize = 2 * HIST_LEN;
/// `linux.disk.operation` by kernel op index (REQ_OP_* low values, 4 = other).
pub const OPERATIONS: [&str; 5] = ["read", "write", "flush", "discard", "other"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Devices reported (whole-name regexes; empty = all).
    pub include: Vec<String>,
    /// Devices never reported; wins over `include`.
    pub exclude: Vec<String>,
    /// At most this many (device, operation) pairs are exported.
    pub max_series: usize,
    /// Capacity of the kernel's (device, operation) table.
    pub max_kernel_entries: u32,
    /// Capacity of the in-flight request table (issue times).
    pub max_inflight: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            include: Vec::new(),
            exclude: vec![r"(ram|fd)\d+".into()],
            max_series: 256,
            max_kernel_entries: 1024,
            max_inflight: 16384,
        }
    }
}

crate::common_settings!(Config);

fn hooks() -> [Hook; 3] {
    [
        Hook::BtfTracePoint {
            program: "kotel_blk_issue",
            name: "block_rq_issue",
        },
        Hook::BtfTracePoint {
            program: "kotel_blk_complete",
            name: "block_rq_complete",
        },
        Hook::BtfTracePoint {
            program: "kotel_blk_requeue",
            name: "block_rq_requeue",
        },
    ]
}

impl CollectorSpec for Blocklat {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str = "block I/O latency histograms per disk and operation: queue->complete and dispatch->complete (BPF tp_btf block_rq_*)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        bpf::probe(&Requirements {
            btf_tracepoints: vec!["block_rq_issue", "block_rq_complete", "block_rq_requeue"],
            ..Default::default()
        })
    }

    fn build(
        config: &Config,
        _host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let filter = Filter::new(NAME, &config.include, &config.exclude)?;
        let opts = LoadOptions::new()
            .max_entries("stats", config.max_kernel_entries.max(16))
            .max_entries("issued", config.max_inflight.max(64));
        let loaded = kotel_ebpf::loader::load(NAME, objects::BLOCKLAT, &opts, &hooks())?;
        loaded.require_all()?;
        Ok(Instance::Metrics {
            interval: config.interval.unwrap_or(default_interval),
            collector: Box::new(Collector {
                loaded,
                filter,
                max_series: config.max_series,
                bounds: log2_bounds(MIN_SLOT),
                names: DeviceNames::default(),
            }),
        })
    }
}

/// dev_t (kernel encoding, major << 20 | minor) → device name, from
/// `/sys/dev/block/<major>:<minor>/uevent` (`DEVNAME=`).
#[derive(Default)]
pub struct DeviceNames {
    cache: HashMap<u32, Option<Arc<str>>>,
}

/// `major:minor` of a kernel dev_t.
pub fn major_minor(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xfffff)
}

/// The `DEVNAME` of a uevent file's text.
pub fn uevent_devname(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

impl DeviceNames {
    pub fn name(&mut self, dev: u32) -> Option<Arc<str>> {
        if let Some(n) = self.cache.get(&dev) {
            return n.clone();
        }
        let (ma, mi) = major_minor(dev);
        let n = std::fs::read_to_string(format!("/sys/dev/block/{ma}:{mi}/uevent"))
            .ok()
            .and_then(|t| uevent_devname(&t).map(Arc::from));
        // A missing device is retried next cycle (it may appear).
        if n.is_some() {
            self.cache.insert(dev, n.clone());
        }
        n
    }
}

struct Collector {
    loaded: Loaded,
    filter: Filter,
    max_series: usize,
    bounds: Arc<[f64]>,
    names: DeviceNames,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct HistKey {
    dev: u32,
    op: u32,
}
// SAFETY: mirror of `struct hist_key` (two u32, no padding).
unsafe impl kotel_ebpf::aya::Pod for HistKey {}

fn int_point(attributes: Vec<KeyValue>, start_time: u64, v: u64) -> NumberPoint {
    NumberPoint {
        attributes,
        start_time,
        value: Number::Int(i64::try_from(v).unwrap_or(i64::MAX)),
    }
}

/// Attributes of one (device, operation, stage) histogram.
pub fn attributes(device: &str, op: usize, stage: &'static str) -> Vec<KeyValue> {
    let op_name = OPERATIONS.get(op).copied().unwrap_or("other");
    let mut a = vec![
        KeyValue::new("system.device", device.to_string()),
        KeyValue::new("linux.disk.latency.stage", stage),
        KeyValue::new("linux.disk.operation", op_name),
    ];
    if op < 2 {
        a.push(KeyValue::new("disk.io.direction", op_name));
    }
    a
}

impl MetricsCollector for Collector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let start = self.loaded.loaded_at;
        let mut stats = percpu_hash_arrays::<HistKey, ST_LEN>(&self.loaded, "stats")?;
        stats.sort_by_key(|(k, _)| (k.dev, k.op));
        let mut points = Vec::new();
        let mut kept = 0usize;
        let mut dropped = 0u64;
        for (k, v) in &stats {
            let Some(dev) = self.names.name(k.dev) else {
                continue;
            };
            if !self.filter.matches(&dev) {
                continue;
            }
            if kept >= self.max_series {
                dropped += 1;
                continue;
            }
            kept += 1;
            let op = k.op as usize;
            for (stage, off) in [("queue_to_complete", 0), ("dispatch_to_complete", HIST_LEN)] {
                let h = Log2Hist {
                    slots: v[off..off + HIST_SLOTS].to_vec(),
                    sum_ns: v[off + HIST_SLOTS],
                };
                if stage == "queue_to_complete" && h.count() == 0 {
                    continue;
                }
                points.push(bpf::hist_point(
                    &h,
                    MIN_SLOT,
                    &self.bounds,
                    attributes(&dev, op, stage),
                    start,
                ));
            }
        }
        out.push(bpf::histogram(
            "linux.disk.latency",
            "Block request latency: queue->complete (from request setup) and dispatch->complete (from issue to the driver)",
            points,
        ));

        let counters = percpu_hash_arrays::<u32, 3>(&self.loaded, "counters")?;
        let mut requeues = Vec::new();
        let mut errors = Vec::new();
        let mut no_start = Vec::new();
        for (dev, v) in counters {
            let Some(name) = self.names.name(dev) else {
                continue;
            };
            if !self.filter.matches(&name) {
                continue;
            }
            let a = vec![KeyValue::new("system.device", name.to_string())];
            requeues.push(int_point(a.clone(), start, v[0]));
            errors.push(int_point(a.clone(), start, v[1]));
            no_start.push(int_point(a, start, v[2]));
        }
        out.push(bpf::counter(
            "linux.disk.requeues",
            "Block requests the driver handed back to be issued again",
            "{request}",
            requeues,
        ));
        out.push(bpf::counter(
            "linux.disk.request.errors",
            "Block request completions with an error status",
            "{request}",
            errors,
        ));
        out.push(bpf::counter(
            "linux.disk.latency.no_start",
            "Completions without a request start time (no queue->complete sample)",
            "{request}",
            no_start,
        ));
        let ov = kotel_ebpf::maps::percpu_array_sums(&self.loaded.bpf, "overflow")?;
        out.push(bpf::counter(
            "kotel.ebpf.map.full",
            "Updates a BPF collector dropped because its kernel table was full",
            "{update}",
            ["stats", "issued"]
                .iter()
                .zip(&ov)
                .map(|(m, v)| {
                    int_point(
                        vec![KeyValue::new("collector", NAME), KeyValue::new("map", *m)],
                        start,
                        *v,
                    )
                })
                .collect(),
        ));
        out.push(dropped_metric(NAME, dropped));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_encoding_and_uevent() {
        assert_eq!(major_minor((7 << 20) | 3), (7, 3));
        assert_eq!(major_minor((259 << 20) | 0x10000), (259, 0x10000));
        // Captured from /sys/dev/block/7:0/uevent on the build machine.
        let t = "MAJOR=7\nMINOR=0\nDEVNAME=loop0\nDEVTYPE=disk\nDISKSEQ=46\n";
        assert_eq!(uevent_devname(t), Some("loop0"));
        assert_eq!(uevent_devname("MAJOR=7\nDEVNAME=\n"), None);
        assert_eq!(uevent_devname(""), None);
    }

    #[test]
    fn direction_only_for_read_and_write() {
        let w = attributes("vda", 1, "dispatch_to_complete");
        assert!(w.iter().any(|kv| kv.key == "disk.io.direction"));
        let f = attributes("vda", 2, "queue_to_complete");
        assert!(!f.iter().any(|kv| kv.key == "disk.io.direction"));
        assert!(
            f.iter()
                .any(|kv| kv.key == "linux.disk.operation" && kv.value.as_str() == Some("flush"))
        );
        let o = attributes("vda", 9, "queue_to_complete");
        assert!(o.iter().any(|kv| kv.value.as_str() == Some("other")));
    }
}
