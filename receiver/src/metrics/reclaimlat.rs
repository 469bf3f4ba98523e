//! `reclaimlat`: time spent reclaiming and compacting memory (BPF `tp_btf`
//! on the `vmscan` and `compaction` tracepoints).
//!
//! Metrics:
//! - `linux.memory.reclaim.duration` {`linux.memory.reclaim.kind` =
//!   `softlimit` | `node` | `kswapd`}: memcg soft-limit reclaim, node
//!   reclaim (`zone_reclaim_mode`) and kswapd busy periods (wake → sleep per
//!   node). The `direct` and `memcg` kinds of the same metric come from the
//!   `memreclaim` event collector; with `direct_and_memcg: true` this
//!   collector exports them instead (disable memreclaim's then, or the
//!   series collide).
//! - `linux.memory.compaction.duration` {`linux.memory.compaction.context` =
//!   `task` (direct compaction in an allocating task, or a write to
//!   `compact_memory`) | `kthread` (kcompactd, proactive)}.
//! - `linux.memory.kswapd.wakeups` {`linux.numa.node`}.
//! - per memory cgroup of the stalled task (containers and `cgroups`
//!   matches; child cgroups roll up): `linux.cgroup.memory.reclaim.stalls`
//!   and `linux.cgroup.memory.reclaim.stall.time` {kind = direct | memcg}.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kotel_ebpf::maps::{HIST_LEN, Log2Hist, log2_bounds};
use kotel_ebpf::preflight::Requirements;
use kotel_ebpf::{Hook, LoadOptions, Loaded, objects};
use kotel_pipelines::{KeyValue, Metric, Number, NumberPoint};
use serde::{Deserialize, Serialize};

use crate::autotracing::scope::Scopes;
use crate::events::bpf;
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode, spec::default_true,
};
use crate::metrics::disk::dropped_metric;
use crate::metrics::runqlat::{percpu_array_flat, percpu_hash_arrays};

pub struct Reclaimlat;

const NAME: &str = "reclaimlat";
/// Histogram buckets start at 1.024 µs.
const MIN_SLOT: usize = 9;
/// Kernel histogram index → reclaim kind (5, 6: compaction).
pub const KINDS: [&str; 5] = ["direct", "memcg", "softlimit", "node", "kswapd"];
pub const COMPACTION: [&str; 2] = ["task", "kthread"];
/// NUMA nodes the kernel side counts (`MAX_NODES` in reclaimlat.bpf.c).
const MAX_NODES: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Also export the `direct` and `memcg` reclaim histograms (off by
    /// default: the `memreclaim` event collector exports them).
    pub direct_and_memcg: bool,
    /// Export per-cgroup stall totals.
    pub per_cgroup: bool,
    /// Regexes over cgroup paths watched in addition to containers.
    pub cgroups: Vec<String>,
    /// Watch every container's cgroup.
    pub containers: bool,
    /// At most this many cgroups are exported.
    pub max_series: usize,
    /// Capacity of the kernel's (memory cgroup, kind) table.
    pub max_cgroups: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            direct_and_memcg: false,
            per_cgroup: true,
            cgroups: Vec::new(),
            containers: true,
            max_series: 500,
            max_cgroups: 2048,
        }
    }
}

crate::common_settings!(Config);

const fn btf(program: &'static str, name: &'static str) -> Hook {
    Hook::BtfTracePoint { program, name }
}

fn hooks() -> [Hook; 12] {
    [
        btf("kotel_rcl_direct_begin", "mm_vmscan_direct_reclaim_begin"),
        btf("kotel_rcl_direct_end", "mm_vmscan_direct_reclaim_end"),
        btf("kotel_rcl_memcg_begin", "mm_vmscan_memcg_reclaim_begin"),
        btf("kotel_rcl_memcg_end", "mm_vmscan_memcg_reclaim_end"),
        btf(
            "kotel_rcl_softlimit_begin",
            "mm_vmscan_memcg_softlimit_reclaim_begin",
        ),
        btf(
            "kotel_rcl_softlimit_end",
            "mm_vmscan_memcg_softlimit_reclaim_end",
        ),
        btf("kotel_rcl_node_begin", "mm_vmscan_node_reclaim_begin"),
        btf("kotel_rcl_node_end", "mm_vmscan_node_reclaim_end"),
        btf("kotel_rcl_kswapd_wake", "mm_vmscan_kswapd_wake"),
        btf("kotel_rcl_kswapd_sleep", "mm_vmscan_kswapd_sleep"),
        btf("kotel_rcl_compact_begin", "mm_compaction_begin"),
        btf("kotel_rcl_compact_end", "mm_compaction_end"),
    ]
}

impl CollectorSpec for Reclaimlat {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str = "memory reclaim (kswapd, soft-limit, node) and compaction duration histograms, per-cgroup reclaim stalls (BPF tp_btf vmscan/compaction)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        bpf::probe(&Requirements {
            btf_tracepoints: vec![
                "mm_vmscan_direct_reclaim_begin",
                "mm_vmscan_direct_reclaim_end",
                "mm_vmscan_memcg_reclaim_begin",
                "mm_vmscan_memcg_reclaim_end",
            ],
            ..Default::default()
        })
    }

    fn build(
        config: &Config,
        _host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let opts = LoadOptions::new().max_entries("cgroups", config.max_cgroups.max(16));
        let loaded = kotel_ebpf::loader::load(NAME, objects::RECLAIMLAT, &opts, &hooks())?;
        // Compaction and node reclaim hooks are optional (CONFIG_COMPACTION,
        // CONFIG_NUMA); the four direct/memcg hooks are required.
        if let Some((p, e)) = loaded
            .failed
            .iter()
            .find(|(p, _)| p.starts_with("kotel_rcl_direct") || p.starts_with("kotel_rcl_memcg"))
        {
            anyhow::bail!("{p}: {e}");
        }
        Ok(Instance::Metrics {
            interval: config.interval.unwrap_or(default_interval),
            collector: Box::new(Collector {
                first_kind: if config.direct_and_memcg { 0 } else { 2 },
                per_cgroup: config.per_cgroup,
                scopes: Scopes::new(&config.cgroups, config.containers)?,
                max_series: config.max_series,
                bounds: log2_bounds(MIN_SLOT),
                loaded,
            }),
        })
    }
}

struct Collector {
    loaded: Loaded,
    first_kind: usize,
    per_cgroup: bool,
    scopes: Scopes,
    max_series: usize,
    bounds: Arc<[f64]>,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct CgKey {
    memcg_id: u64,
    kind: u32,
    _pad: u32,
}
// SAFETY: mirror of `struct cg_key` (u64, u32, u32: no padding holes).
unsafe impl kotel_ebpf::aya::Pod for CgKey {}

fn int_point(attributes: Vec<KeyValue>, start_time: u64, v: u64) -> NumberPoint {
    NumberPoint {
        attributes,
        start_time,
        value: Number::Int(i64::try_from(v).unwrap_or(i64::MAX)),
    }
}

impl MetricsCollector for Collector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let start = self.loaded.loaded_at;
        let values = percpu_array_flat::<HIST_LEN>(&self.loaded, "hists")?;
        let hists = Log2Hist::split(&values);
        let point = |h: &Log2Hist, key: &'static str, v: &'static str| {
            bpf::hist_point(
                h,
                MIN_SLOT,
                &self.bounds,
                vec![KeyValue::new(key, v)],
                start,
            )
        };
        out.push(bpf::histogram(
            "linux.memory.reclaim.duration",
            "Time spent in memory reclaim, by kind (kswapd: from wake-up to sleep)",
            hists
                .iter()
                .zip(KINDS)
                .skip(self.first_kind)
                .map(|(h, k)| point(h, "linux.memory.reclaim.kind", k))
                .collect(),
        ));
        out.push(bpf::histogram(
            "linux.memory.compaction.duration",
            "Time spent compacting memory, by context (an allocating task or a kernel thread)",
            hists
                .iter()
                .skip(KINDS.len())
                .zip(COMPACTION)
                .map(|(h, c)| point(h, "linux.memory.compaction.context", c))
                .collect(),
        ));
        let wakes = percpu_array_flat::<MAX_NODES>(&self.loaded, "kswapd_wakes")?;
        let nodes = online_nodes();
        out.push(bpf::counter(
            "linux.memory.kswapd.wakeups",
            "Times kswapd woke up to balance a NUMA node",
            "{wakeup}",
            wakes
                .iter()
                .enumerate()
                .filter(|(n, v)| **v > 0 || nodes.contains(n))
                .map(|(n, v)| {
                    int_point(vec![KeyValue::new("linux.numa.node", n as i64)], start, *v)
                })
                .collect(),
        ));
        let ov = kotel_ebpf::maps::percpu_array_sums(&self.loaded.bpf, "overflow")?;
        out.push(bpf::counter(
            "kotel.ebpf.map.full",
            "Updates a BPF collector dropped because its kernel table was full",
            "{update}",
            vec![int_point(
                vec![
                    KeyValue::new("collector", NAME),
                    KeyValue::new("map", "cgroups"),
                ],
                start,
                ov.first().copied().unwrap_or(0),
            )],
        ));
        if !self.per_cgroup {
            return Ok(());
        }
        let entries = percpu_hash_arrays::<CgKey, 2>(&self.loaded, "cgroups")?;
        let scopes = self.scopes.list();
        // (scope index, kind) → (stalls, ns, earliest cgroup creation)
        let mut sums: HashMap<(usize, u32), (u64, u64, u64)> = HashMap::new();
        for (k, v) in entries {
            let Some(info) = crate::cgroups::resolve_memcg_id(k.memcg_id) else {
                continue;
            };
            let Some(scope) = Scopes::find(&scopes, &info.path) else {
                continue;
            };
            let idx = scopes
                .iter()
                .position(|s| std::ptr::eq(s, scope))
                .unwrap_or(0);
            let e = sums.entry((idx, k.kind)).or_insert((0, 0, u64::MAX));
            e.0 += v[0];
            e.1 += v[1];
            e.2 = e.2.min(info.created);
        }
        let mut keys: Vec<(usize, u32)> = sums.keys().copied().collect();
        keys.sort_by_key(|k| std::cmp::Reverse(sums[k].1));
        let mut seen: Vec<usize> = Vec::new();
        let mut dropped = 0u64;
        let mut stalls = Vec::new();
        let mut time = Vec::new();
        for key in keys {
            if !seen.contains(&key.0) {
                if seen.len() >= self.max_series {
                    dropped += 1;
                    continue;
                }
                seen.push(key.0);
            }
            let (n, ns, created) = sums[&key];
            let st = start.max(created);
            let mut a = scopes[key.0].attributes.clone();
            a.push(KeyValue::new(
                "linux.memory.reclaim.kind",
                KINDS.get(key.1 as usize).copied().unwrap_or("other"),
            ));
            stalls.push(int_point(a.clone(), st, n));
            time.push(NumberPoint {
                attributes: a,
                start_time: st,
                value: Number::Double(ns as f64 / 1e9),
            });
        }
        out.push(bpf::counter(
            "linux.cgroup.memory.reclaim.stalls",
            "Direct and memcg reclaim runs the cgroup's tasks stalled in",
            "{stall}",
            stalls,
        ));
        out.push(bpf::counter(
            "linux.cgroup.memory.reclaim.stall.time",
            "Time the cgroup's tasks spent stalled in direct and memcg reclaim",
            "s",
            time,
        ));
        out.push(dropped_metric(NAME, dropped));
        Ok(())
    }
}

/// Online NUMA node numbers (`/sys/devices/system/node/online`, e.g. `0-1`).
fn online_nodes() -> Vec<usize> {
    let Ok(s) = std::fs::read_to_string("/sys/devices/system/node/online") else {
        return vec![0];
    };
    parse_node_list(&s)
}

pub fn parse_node_list(s: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend(a..=b.min(a + 1023));
                }
            }
            None => out.extend(part.parse::<usize>().ok()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists() {
        assert_eq!(parse_node_list("0\n"), vec![0]);
        assert_eq!(parse_node_list("0-2,4"), vec![0, 1, 2, 4]);
        assert_eq!(parse_node_list(""), Vec::<usize>::new());
    }
}
