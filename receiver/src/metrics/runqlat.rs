//! `runqlat`: run-queue latency (BPF `tp_btf` sched_wakeup, sched_wakeup_new,
//! sched_switch), host-wide and per cgroup, and context switches by kind.
//!
//! The kernel side (`ebpf/runqlat.bpf.c`) stamps a task when it is woken or
//! preempted (task-local storage) and, when the task is switched in, adds
//! the wait to a per-CPU log2 histogram and to its cgroup's entry (a per-CPU
//! hash keyed by cgroup id, capped at `max_cgroups`). Each cgroup entry also
//! sums its tasks' on-CPU time, so the wait-to-run ratio of a container can
//! be computed from two readings (the `waitrate` detector does).
//!
//! Metrics:
//! - `linux.scheduler.runqueue.latency` (histogram, s): host.
//! - `linux.scheduler.context_switches` {`linux.switch.type`}: voluntary
//!   (the task blocked) or involuntary (preempted while runnable), the same
//!   rule as the kernel's `nvcsw`/`nivcsw`.
//! - per watched cgroup (containers, plus paths matching `cgroups`):
//!   `linux.cgroup.scheduler.runqueue.latency` (histogram),
//!   `linux.cgroup.scheduler.wait.time` and `linux.cgroup.scheduler.run.time`
//!   (s, counters). Tasks in a child cgroup count for the deepest watched
//!   ancestor.
//!
//! The loaded object is shared with the `waitrate` detector ([`acquire`]):
//! one set of programs, whoever starts first loads it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use anyhow::Context as _;
use kotel_ebpf::aya::Pod;
use kotel_ebpf::aya::maps::PerCpuHashMap;
use kotel_ebpf::maps::{HIST_LEN, HIST_SLOTS, Log2Hist, log2_bounds};
use kotel_ebpf::preflight::Requirements;
use kotel_ebpf::{Hook, LoadOptions, Loaded, objects};
use kotel_pipelines::{KeyValue, Metric, Number, NumberPoint};
use serde::{Deserialize, Serialize};

use crate::autotracing::scope::{Scope, Scopes};
use crate::events::bpf;
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode, spec::default_true,
};

pub struct Runqlat;

const NAME: &str = "runqlat";
/// Histogram buckets start at 1.024 µs (slots 0..=9 fold into the first).
pub const MIN_SLOT: usize = 9;
/// Per-cgroup value: HIST_SLOTS wait slots, wait sum (ns), run sum (ns).
pub const CG_LEN: usize = HIST_SLOTS + 2;
pub const SWITCH_TYPES: [&str; 2] = ["voluntary", "involuntary"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Export per-cgroup series (containers and `cgroups` matches).
    pub per_cgroup: bool,
    /// Regexes over cgroup paths watched in addition to containers (e.g.
    /// `^/system.slice/[^/]+$`).
    pub cgroups: Vec<String>,
    /// Watch every container's cgroup.
    pub containers: bool,
    /// At most this many cgroups are exported; the rest are counted in
    /// `linux.collector.series.dropped`.
    pub max_series: usize,
    /// Capacity of the kernel's per-cgroup table (every cgroup that runs a
    /// task takes an entry until it is removed).
    pub max_cgroups: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            per_cgroup: true,
            cgroups: Vec::new(),
            containers: true,
            max_series: 500,
            max_cgroups: 4096,
        }
    }
}

crate::common_settings!(Config);

/// Which cgroup id the kernel keys per-cgroup entries by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// cgroup v2 id (`dfl_cgrp`): pure v2 hosts.
    V2,
    /// The v1 `cpu` hierarchy's cgroup (hybrid hosts, where CPU limits live).
    CpuV1,
}

impl CgroupMode {
    pub fn detect() -> Self {
        if crate::cgroups::global().mounts().v1("cpu").is_some() {
            CgroupMode::CpuV1
        } else {
            CgroupMode::V2
        }
    }

    /// The cgroup of a kernel key.
    pub fn resolve(self, id: u64) -> Option<Arc<crate::cgroups::CgroupInfo>> {
        match self {
            CgroupMode::V2 => crate::cgroups::resolve_cgroup_id(id),
            CgroupMode::CpuV1 => crate::cgroups::resolve_controller_id("cpu", id),
        }
    }
}

/// The loaded runqlat programs and how its cgroup keys are to be read.
pub struct RunqObject {
    pub loaded: Loaded,
    pub mode: CgroupMode,
}

pub type SharedRunq = Arc<Mutex<RunqObject>>;

pub fn lock(s: &SharedRunq) -> MutexGuard<'_, RunqObject> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn hooks() -> [Hook; 4] {
    [
        Hook::BtfTracePoint {
            program: "kotel_runq_wakeup",
            name: "sched_wakeup",
        },
        Hook::BtfTracePoint {
            program: "kotel_runq_wakeup_new",
            name: "sched_wakeup_new",
        },
        Hook::BtfTracePoint {
            program: "kotel_runq_switch",
            name: "sched_switch",
        },
        Hook::BtfTracePoint {
            program: "kotel_runq_cgroup_rmdir",
            name: "cgroup_rmdir",
        },
    ]
}

pub fn requirements() -> Requirements {
    Requirements {
        btf_tracepoints: vec!["sched_wakeup", "sched_wakeup_new", "sched_switch"],
        ..Default::default()
    }
}

/// The running runqlat object, loading it when nobody holds one. The
/// programs stay attached while any holder keeps the returned handle.
pub fn acquire(max_cgroups: u32) -> anyhow::Result<SharedRunq> {
    static CURRENT: Mutex<Weak<Mutex<RunqObject>>> = Mutex::new(Weak::new());
    let mut cur = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = cur.upgrade() {
        return Ok(s);
    }
    let mode = CgroupMode::detect();
    let opts = LoadOptions::new()
        .global(
            "cgroup_mode",
            match mode {
                CgroupMode::V2 => 0u32,
                CgroupMode::CpuV1 => 1u32,
            },
        )
        .max_entries("cgroups", max_cgroups.max(16));
    let loaded = kotel_ebpf::loader::load(NAME, objects::RUNQLAT, &opts, &hooks())?;
    // cgroup_rmdir only prunes; the three scheduler hooks are required.
    if let Some((p, e)) = loaded
        .failed
        .iter()
        .find(|(p, _)| *p != "kotel_runq_cgroup_rmdir")
    {
        anyhow::bail!("{p}: {e}");
    }
    let s = Arc::new(Mutex::new(RunqObject { loaded, mode }));
    *cur = Arc::downgrade(&s);
    Ok(s)
}

/// Sum of each per-CPU value array of a per-CPU hash, by key.
pub(crate) fn percpu_hash_arrays<K: Pod + Eq + std::hash::Hash, const N: usize>(
    loaded: &Loaded,
    map: &str,
) -> anyhow::Result<Vec<(K, [u64; N])>> {
    let m = loaded
        .bpf
        .map(map)
        .with_context(|| format!("map {map} missing"))?;
    let h = PerCpuHashMap::<_, K, [u64; N]>::try_from(m).with_context(|| format!("map {map}"))?;
    let mut out = Vec::new();
    for kv in h.iter() {
        // An entry deleted between key walk and lookup is skipped.
        let Ok((k, per_cpu)) = kv else { continue };
        let mut sum = [0u64; N];
        for v in per_cpu.iter() {
            for (s, x) in sum.iter_mut().zip(v.iter()) {
                *s = s.wrapping_add(*x);
            }
        }
        out.push((k, sum));
    }
    Ok(out)
}

/// Every entry of a per-CPU array whose values are `[u64; N]`, summed over
/// CPUs and flattened (`N` values per entry): one read per entry.
pub(crate) fn percpu_array_flat<const N: usize>(
    loaded: &Loaded,
    map: &str,
) -> anyhow::Result<Vec<u64>> {
    let m = loaded
        .bpf
        .map(map)
        .with_context(|| format!("map {map} missing"))?;
    let arr = kotel_ebpf::aya::maps::PerCpuArray::<_, [u64; N]>::try_from(m)
        .with_context(|| format!("map {map}"))?;
    let mut out = Vec::with_capacity(arr.len() as usize * N);
    for per_cpu in arr.iter() {
        let per_cpu = per_cpu.with_context(|| format!("reading {map}"))?;
        let mut sum = [0u64; N];
        for v in per_cpu.iter() {
            for (s, x) in sum.iter_mut().zip(v.iter()) {
                *s = s.wrapping_add(*x);
            }
        }
        out.extend_from_slice(&sum);
    }
    Ok(out)
}

/// One task's run-queue waits while a capture watched its cgroup.
#[derive(Debug, Clone, PartialEq)]
pub struct TopTask {
    pub tid: u32,
    pub comm: String,
    pub wait_ns: u64,
    pub waits: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TopEntry {
    wait_ns: u64,
    waits: u64,
    cgid: u64,
    comm: [u8; 16],
}
// SAFETY: mirror of `struct top_entry` (three u64 and 16 bytes, no padding).
unsafe impl Pod for TopEntry {}

/// Start (`Some(id)`) or stop (`None`) summing per-task waits of the tasks
/// in kernel cgroup `id` (same key space as the per-cgroup table).
pub fn set_watch(obj: &mut RunqObject, id: Option<u64>) -> anyhow::Result<()> {
    let m = obj
        .loaded
        .bpf
        .map_mut("watch")
        .context("map watch missing")?;
    let mut arr = kotel_ebpf::aya::maps::Array::<_, u64>::try_from(m)?;
    arr.set(0, id.unwrap_or(0), 0)?;
    Ok(())
}

/// The per-task waits gathered since the last call, most waiting first;
/// empties the table.
pub fn take_top(obj: &mut RunqObject) -> anyhow::Result<Vec<TopTask>> {
    let m = obj.loaded.bpf.map_mut("top").context("map top missing")?;
    let mut h = kotel_ebpf::aya::maps::HashMap::<_, u32, TopEntry>::try_from(m)?;
    let mut out = Vec::new();
    for kv in h.iter() {
        let Ok((tid, e)) = kv else { continue };
        let end = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
        out.push(TopTask {
            tid,
            comm: String::from_utf8_lossy(&e.comm[..end]).into_owned(),
            wait_ns: e.wait_ns,
            waits: e.waits,
        });
    }
    for t in &out {
        let _ = h.remove(&t.tid);
    }
    out.sort_by_key(|t| std::cmp::Reverse(t.wait_ns));
    Ok(out)
}

/// The kernel key of cgroup `path` in `mode`'s hierarchy (its inode).
pub fn kernel_id(mode: CgroupMode, path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mounts = crate::cgroups::global().mounts();
    let h = match mode {
        CgroupMode::V2 => mounts.v2(),
        CgroupMode::CpuV1 => mounts.v1("cpu"),
    }?;
    Some(std::fs::metadata(h.dir_of(path)?).ok()?.ino())
}

/// One cgroup's (or scope's) totals.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupSums {
    pub hist: Log2Hist,
    pub run_ns: u64,
}

impl Default for CgroupSums {
    fn default() -> Self {
        Self {
            hist: Log2Hist {
                slots: vec![0; HIST_SLOTS],
                sum_ns: 0,
            },
            run_ns: 0,
        }
    }
}

impl CgroupSums {
    pub fn add(&mut self, v: &[u64; CG_LEN]) {
        for (s, x) in self.hist.slots.iter_mut().zip(&v[..HIST_SLOTS]) {
            *s += x;
        }
        self.hist.sum_ns += v[HIST_SLOTS];
        self.run_ns += v[HIST_SLOTS + 1];
    }

    pub fn wait_ns(&self) -> u64 {
        self.hist.sum_ns
    }

    /// Totals accumulated since `earlier` (saturating: a recreated entry
    /// restarts from zero).
    pub fn since(&self, earlier: &CgroupSums) -> CgroupSums {
        CgroupSums {
            hist: Log2Hist {
                slots: self
                    .hist
                    .slots
                    .iter()
                    .zip(&earlier.hist.slots)
                    .map(|(a, b)| a.saturating_sub(*b))
                    .collect(),
                sum_ns: self.hist.sum_ns.saturating_sub(earlier.hist.sum_ns),
            },
            run_ns: self.run_ns.saturating_sub(earlier.run_ns),
        }
    }
}

/// One kernel per-cgroup entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: u64,
    /// Cgroup path, when the id resolves.
    pub path: Option<Arc<str>>,
    /// When the cgroup was made (Unix ns), 0 when unknown.
    pub created: u64,
    pub values: [u64; CG_LEN],
}

/// Every kernel per-cgroup entry, resolved to cgroup paths.
pub fn read_cgroups(obj: &RunqObject) -> anyhow::Result<Vec<Entry>> {
    let entries = percpu_hash_arrays::<u64, CG_LEN>(&obj.loaded, "cgroups")?;
    Ok(entries
        .into_iter()
        .map(|(id, values)| {
            let info = obj.mode.resolve(id);
            Entry {
                id,
                path: info.as_ref().map(|i| i.path.clone()),
                created: info.map_or(0, |i| i.created),
                values,
            }
        })
        .collect())
}

/// Roll kernel entries up into watched scopes (deepest watched ancestor):
/// per scope index of `scopes`, the sums and the earliest creation time.
pub fn roll_up(scopes: &[Scope], entries: &[Entry]) -> HashMap<usize, (CgroupSums, u64)> {
    let mut out: HashMap<usize, (CgroupSums, u64)> = HashMap::new();
    for e in entries {
        let Some(path) = &e.path else { continue };
        let Some(scope) = Scopes::find(scopes, path) else {
            continue;
        };
        let idx = scopes
            .iter()
            .position(|s| std::ptr::eq(s, scope))
            .unwrap_or(0);
        let slot = out
            .entry(idx)
            .or_insert_with(|| (CgroupSums::default(), u64::MAX));
        slot.0.add(&e.values);
        slot.1 = slot.1.min(e.created);
    }
    out
}

impl CollectorSpec for Runqlat {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str = "run-queue latency histograms, host and per cgroup, and voluntary/involuntary context switches (BPF tp_btf sched_wakeup/sched_switch)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        bpf::probe(&requirements())
    }

    fn build(
        config: &Config,
        _host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let shared = acquire(config.max_cgroups)?;
        let scopes = Scopes::new(&config.cgroups, config.containers)?;
        Ok(Instance::Metrics {
            interval: config.interval.unwrap_or(default_interval),
            collector: Box::new(Collector {
                shared,
                scopes,
                per_cgroup: config.per_cgroup,
                max_series: config.max_series,
                bounds: log2_bounds(MIN_SLOT),
            }),
        })
    }
}

struct Collector {
    shared: SharedRunq,
    scopes: Scopes,
    per_cgroup: bool,
    max_series: usize,
    bounds: Arc<[f64]>,
}

fn seconds_point(attributes: Vec<KeyValue>, start_time: u64, ns: u64) -> NumberPoint {
    NumberPoint {
        attributes,
        start_time,
        value: Number::Double(ns as f64 / 1e9),
    }
}

impl MetricsCollector for Collector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let obj = lock(&self.shared);
        let start = obj.loaded.loaded_at;
        let host = percpu_array_flat::<HIST_LEN>(&obj.loaded, "host_hist")?;
        let hist = Log2Hist::split(&host)
            .into_iter()
            .next()
            .context("host_hist is empty")?;
        debug_assert_eq!(host.len(), HIST_LEN);
        out.push(bpf::histogram(
            "linux.scheduler.runqueue.latency",
            "Time runnable tasks waited on a run queue before running (wakeup or preemption to switch-in)",
            vec![bpf::hist_point(&hist, MIN_SLOT, &self.bounds, Vec::new(), start)],
        ));
        let sw = kotel_ebpf::maps::percpu_array_sums(&obj.loaded.bpf, "switches")?;
        out.push(bpf::counter(
            "linux.scheduler.context_switches",
            "Context switches by kind: voluntary (the task blocked) or involuntary (preempted while runnable)",
            "{switch}",
            SWITCH_TYPES
                .iter()
                .zip(&sw)
                .map(|(t, v)| NumberPoint {
                    attributes: vec![KeyValue::new("linux.switch.type", *t)],
                    start_time: start,
                    value: Number::Int(i64::try_from(*v).unwrap_or(i64::MAX)),
                })
                .collect(),
        ));
        let ov = kotel_ebpf::maps::percpu_array_sums(&obj.loaded.bpf, "overflow")?;
        out.push(bpf::counter(
            "kotel.ebpf.map.full",
            "Updates a BPF collector dropped because its kernel table was full",
            "{update}",
            vec![NumberPoint {
                attributes: vec![
                    KeyValue::new("collector", NAME),
                    KeyValue::new("map", "cgroups"),
                ],
                start_time: start,
                value: Number::Int(i64::try_from(ov.first().copied().unwrap_or(0)).unwrap_or(0)),
            }],
        ));
        if !self.per_cgroup {
            return Ok(());
        }
        let entries = read_cgroups(&obj)?;
        drop(obj);
        let scopes = self.scopes.list();
        let sums = roll_up(&scopes, &entries);
        let mut idx: Vec<usize> = sums.keys().copied().collect();
        // Busiest first, so the cap keeps the cgroups that matter.
        idx.sort_by_key(|i| std::cmp::Reverse(sums[i].0.wait_ns() + sums[i].0.run_ns));
        let dropped = idx.len().saturating_sub(self.max_series);
        idx.truncate(self.max_series);
        let mut lat = Vec::with_capacity(idx.len());
        let mut wait = Vec::with_capacity(idx.len());
        let mut run = Vec::with_capacity(idx.len());
        for i in idx {
            let (s, created) = &sums[&i];
            let scope = &scopes[i];
            let st = start.max(*created);
            lat.push(bpf::hist_point(
                &s.hist,
                MIN_SLOT,
                &self.bounds,
                scope.attributes.clone(),
                st,
            ));
            wait.push(seconds_point(scope.attributes.clone(), st, s.wait_ns()));
            run.push(seconds_point(scope.attributes.clone(), st, s.run_ns));
        }
        out.push(bpf::histogram(
            "linux.cgroup.scheduler.runqueue.latency",
            "Run-queue latency of the cgroup's tasks (child cgroups included)",
            lat,
        ));
        out.push(bpf::counter(
            "linux.cgroup.scheduler.wait.time",
            "Time the cgroup's tasks spent runnable but waiting for a CPU",
            "s",
            wait,
        ));
        out.push(bpf::counter(
            "linux.cgroup.scheduler.run.time",
            "Time the cgroup's tasks spent on a CPU (from sched_switch)",
            "s",
            run,
        ));
        out.push(crate::metrics::disk::dropped_metric(NAME, dropped as u64));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_add_and_since() {
        let mut v = [0u64; CG_LEN];
        v[12] = 3;
        v[HIST_SLOTS] = 30_000;
        v[HIST_SLOTS + 1] = 90_000;
        let mut a = CgroupSums::default();
        a.add(&v);
        let before = a.clone();
        a.add(&v);
        let d = a.since(&before);
        assert_eq!(d.hist.count(), 3);
        assert_eq!(d.wait_ns(), 30_000);
        assert_eq!(d.run_ns, 90_000);
        // A recreated entry (smaller than before) saturates at zero.
        assert_eq!(before.since(&a).run_ns, 0);
    }

    #[test]
    fn roll_up_into_deepest_scope() {
        let scopes = vec![
            Scope {
                key: "/a".into(),
                path: "/a".into(),
                attributes: vec![],
            },
            Scope {
                key: "/a/b".into(),
                path: "/a/b".into(),
                attributes: vec![],
            },
        ];
        let mut v = [0u64; CG_LEN];
        v[HIST_SLOTS + 1] = 5;
        let e = |id: u64, path: Option<&str>, created: u64| Entry {
            id,
            path: path.map(Arc::from),
            created,
            values: v,
        };
        let entries = vec![
            e(1, Some("/a/b/c"), 7),
            e(2, Some("/a/x"), 9),
            e(3, Some("/a"), 8),
            e(4, Some("/z"), 1),
            e(5, None, 1),
        ];
        let r = roll_up(&scopes, &entries);
        assert_eq!(r[&0].0.run_ns, 10);
        assert_eq!(r[&0].1, 8);
        assert_eq!(r[&1].0.run_ns, 5);
        assert_eq!(r.len(), 2);
    }
}
