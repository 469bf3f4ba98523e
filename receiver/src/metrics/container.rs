//! `containers`: per-cgroup CPU, memory, IO and pressure of every container
//! cgroup (and of extra cgroups chosen by path), on cgroup v1 and v2.
//!
//! Which cgroups: every container's own cgroup that the host
//! [`Registry`](crate::cgroups::Registry) knows (the registry follows
//! creation and removal with inotify), plus cgroups whose path matches
//! `include_paths`, minus `exclude_paths`, at most `max_cgroups` (the rest
//! counted in `linux.collector.series.dropped`). Each cgroup is one set of
//! series labelled with its container / pod / unit attributes and
//! `linux.cgroup.path`.
//!
//! Each file is read from the v2 directory when it exists there (its
//! controller is enabled in v2), else from the v1 controller's hierarchy at
//! the same path, so nothing is counted twice on hybrid hosts. Files are
//! opened once per cgroup and re-read with `pread`; they are closed when the
//! cgroup leaves the registry or its files vanish.
//!
//! Counters start when the cgroup was made: the start time of every sum is
//! the ctime of the cgroup directory (kernfs sets it at `mkdir`; only a
//! later `chmod`/`chown` of the directory would move it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kotel_pipelines::{KeyValue, Metric, MetricData, Number, NumberPoint};
use regex::RegexSet;
use serde::{Deserialize, Serialize};

use crate::cgroups::{CgroupInfo, Mounts, Registry};
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode, spec::default_true,
};
use crate::procfs::{self, ProcFile};

/// `memory.stat` keys reported by default (v2 names; v1 `total_*` keys are
/// reported without the prefix, so `rss`, `cache`, `mapped_file` appear on v1).
const DEFAULT_MEMORY_STAT: &[&str] = &[
    "anon",
    "file",
    "kernel",
    "kernel_stack",
    "pagetables",
    "sock",
    "shmem",
    "file_mapped",
    "file_dirty",
    "file_writeback",
    "swapcached",
    "(in)?active_(anon|file)",
    "unevictable",
    "slab_(un)?reclaimable",
    "rss",
    "cache",
    "mapped_file",
    "dirty",
    "writeback",
    "swap",
    "pgfault",
    "pgmajfault",
    "workingset_refault_(anon|file)",
    "pgscan",
    "pgsteal",
];

/// Limits at or above this are "no limit" (v1 prints `PAGE_COUNTER_MAX`
/// pages in bytes, about 2^63).
const NO_LIMIT: u64 = 1 << 60;

pub struct Containers;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Report every container's cgroup (docker, containerd, CRI-O, podman, LXC).
    pub containers: bool,
    /// Extra cgroups to report: regular expressions matched against the
    /// whole path without its leading `/` (`system.slice/.*\.service`).
    pub include_paths: Vec<String>,
    /// Cgroups never reported (whole-path regexes); wins over the above.
    pub exclude_paths: Vec<String>,
    /// Most cgroups reported (0 = no limit); the rest are counted in
    /// `linux.collector.series.dropped`.
    pub max_cgroups: usize,
    /// `memory.stat` keys to report (whole-key regexes; empty = all).
    pub memory_stat_include: Vec<String>,
    pub memory_stat_exclude: Vec<String>,
    /// Report v2 pressure stall time per cgroup.
    pub pressure: bool,
    /// Kubernetes metadata from the kubelet (see docs/containers.md).
    pub kubelet: crate::kube::KubeletConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            containers: true,
            include_paths: Vec::new(),
            exclude_paths: Vec::new(),
            max_cgroups: 1000,
            memory_stat_include: DEFAULT_MEMORY_STAT
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            memory_stat_exclude: Vec::new(),
            pressure: true,
            kubelet: Default::default(),
        }
    }
}

crate::common_settings!(Config);

impl CollectorSpec for Containers {
    const NAME: &'static str = "containers";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str = "Per-container (and selected cgroup) CPU, throttling, memory, IO and pressure, cgroup v1 and v2";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        if Mounts::detect().hierarchies.is_empty() {
            Availability::Unavailable("no cgroup filesystem mounted".into())
        } else {
            Availability::Available
        }
    }

    fn build(
        config: &Config,
        host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let collector = ContainersCollector::new(config, host, crate::cgroups::global().clone())?;
        crate::kube::start_global(&config.kubelet)?;
        Ok(Instance::metrics(
            config.interval,
            default_interval,
            collector,
        ))
    }
}

fn regex_set(what: &str, patterns: &[String]) -> anyhow::Result<RegexSet> {
    for p in patterns {
        regex::Regex::new(&format!("^(?:{p})$"))
            .with_context(|| format!("containers: invalid {what} regex {p:?}"))?;
    }
    Ok(RegexSet::new(
        patterns.iter().map(|p| format!("^(?:{p})$")),
    )?)
}

/// Files of one cgroup, each from the hierarchy that has it.
#[derive(Default)]
struct Files {
    /// v2 `cpu.stat` (usage, user, system; throttling when the cpu
    /// controller is on).
    cpu_stat_v2: Option<ProcFile>,
    /// v1 `cpu.stat` (throttling).
    cpu_stat_v1: Option<ProcFile>,
    /// v1 `cpuacct.usage_user` / `cpuacct.usage_sys` (ns).
    cpuacct_user: Option<ProcFile>,
    cpuacct_sys: Option<ProcFile>,
    /// v1 `cpuacct.stat` (ticks), when the ns files are missing.
    cpuacct_stat: Option<ProcFile>,
    /// v2 `cpu.max`, or v1 `cpu.cfs_quota_us` + `cpu.cfs_period_us`.
    cpu_max: Option<ProcFile>,
    cfs_quota: Option<ProcFile>,
    cfs_period: Option<ProcFile>,
    /// v2 `cpuset.cpus.effective` or v1 `cpuset.effective_cpus`.
    cpuset: Option<ProcFile>,
    /// v2 `memory.current` or v1 `memory.usage_in_bytes`.
    mem_usage: Option<ProcFile>,
    /// v2 `memory.max` or v1 `memory.limit_in_bytes`.
    mem_limit: Option<ProcFile>,
    mem_stat: Option<ProcFile>,
    mem_v1: bool,
    /// v2 `memory.events`; v1 `memory.oom_control` + `memory.failcnt`.
    mem_events: Option<ProcFile>,
    mem_failcnt: Option<ProcFile>,
    /// v2 `io.stat`; v1 `blkio.throttle.io_service_bytes` + `io_serviced`.
    io_stat: Option<ProcFile>,
    blkio_bytes: Option<ProcFile>,
    blkio_ios: Option<ProcFile>,
    /// v2 `cpu.pressure`, `memory.pressure`, `io.pressure`.
    pressure: [Option<ProcFile>; 3],
}

fn open(dir: Option<&PathBuf>, name: &str) -> Option<ProcFile> {
    ProcFile::open(dir?.join(name)).ok()
}

impl Files {
    fn open(mounts: &Mounts, path: &str, pressure: bool) -> Self {
        let v2 = mounts
            .v2()
            .and_then(|h| h.dir_of(path))
            .filter(|d| d.is_dir());
        let v1 = |ctrl: &str| {
            mounts
                .v1(ctrl)
                .and_then(|h| h.dir_of(path))
                .filter(|d| d.is_dir())
        };
        let (cpu, cpuacct, cpuset, memory, blkio) = (
            v1("cpu"),
            v1("cpuacct"),
            v1("cpuset"),
            v1("memory"),
            v1("blkio"),
        );
        let v2 = v2.as_ref();
        let mut f = Files {
            cpu_stat_v2: open(v2, "cpu.stat"),
            cpu_stat_v1: open(cpu.as_ref(), "cpu.stat"),
            ..Default::default()
        };
        if f.cpu_stat_v2.is_none() {
            f.cpuacct_user = open(cpuacct.as_ref(), "cpuacct.usage_user");
            f.cpuacct_sys = open(cpuacct.as_ref(), "cpuacct.usage_sys");
            if f.cpuacct_user.is_none() {
                f.cpuacct_stat = open(cpuacct.as_ref(), "cpuacct.stat");
            }
        }
        f.cpu_max = open(v2, "cpu.max");
        if f.cpu_max.is_none() {
            f.cfs_quota = open(cpu.as_ref(), "cpu.cfs_quota_us");
            f.cfs_period = open(cpu.as_ref(), "cpu.cfs_period_us");
        }
        f.cpuset = open(v2, "cpuset.cpus.effective")
            .or_else(|| open(cpuset.as_ref(), "cpuset.effective_cpus"));
        f.mem_usage = open(v2, "memory.current");
        if f.mem_usage.is_some() {
            f.mem_limit = open(v2, "memory.max");
            f.mem_stat = open(v2, "memory.stat");
            f.mem_events = open(v2, "memory.events");
        } else if memory.is_some() {
            let m = memory.as_ref();
            f.mem_v1 = true;
            f.mem_usage = open(m, "memory.usage_in_bytes");
            f.mem_limit = open(m, "memory.limit_in_bytes");
            f.mem_stat = open(m, "memory.stat");
            f.mem_events = open(m, "memory.oom_control");
            f.mem_failcnt = open(m, "memory.failcnt");
        }
        f.io_stat = open(v2, "io.stat");
        if f.io_stat.is_none() {
            f.blkio_bytes = open(blkio.as_ref(), "blkio.throttle.io_service_bytes");
            f.blkio_ios = open(blkio.as_ref(), "blkio.throttle.io_serviced");
        }
        if pressure {
            f.pressure = ["cpu.pressure", "memory.pressure", "io.pressure"].map(|n| open(v2, n));
        }
        f
    }

    fn is_empty(&self) -> bool {
        self.cpu_stat_v2.is_none()
            && self.cpu_stat_v1.is_none()
            && self.cpuacct_user.is_none()
            && self.cpuacct_stat.is_none()
            && self.mem_usage.is_none()
    }
}

/// One reported cgroup.
struct Target {
    info: Arc<CgroupInfo>,
    attributes: Vec<KeyValue>,
    start: u64,
    generation: u64,
    files: Files,
}

/// Metric slots, in emission order.
#[derive(Clone, Copy)]
enum M {
    CpuTime,
    Periods,
    Throttled,
    ThrottledTime,
    Bursts,
    BurstTime,
    CpuLimit,
    MemUsage,
    MemLimit,
    MemStat,
    MemStatEvents,
    MemEvents,
    DiskIo,
    DiskOps,
    Pressure,
}

/// (name, description, unit, cumulative) per [`M`].
const SPECS: [(&str, &str, &str, bool); 15] = [
    (
        "container.cpu.time",
        "CPU time the cgroup's tasks used, per mode",
        "s",
        true,
    ),
    (
        "linux.cgroup.cpu.periods",
        "CFS bandwidth enforcement periods that elapsed while the cgroup was runnable",
        "{period}",
        true,
    ),
    (
        "linux.cgroup.cpu.throttled.periods",
        "CFS periods in which the cgroup was throttled (ran out of quota)",
        "{period}",
        true,
    ),
    (
        "linux.cgroup.cpu.throttled.time",
        "Time the cgroup's tasks were throttled",
        "s",
        true,
    ),
    (
        "linux.cgroup.cpu.bursts",
        "CFS periods in which the cgroup used burst quota",
        "{burst}",
        true,
    ),
    (
        "linux.cgroup.cpu.burst.time",
        "CPU time the cgroup ran on burst quota",
        "s",
        true,
    ),
    (
        "linux.cgroup.cpu.limit",
        "CPU capacity of the cgroup in CPUs: quota/period, else its cpuset size, capped at the host's CPUs",
        "{cpu}",
        false,
    ),
    (
        "container.memory.usage",
        "Memory charged to the cgroup, page cache included (memory.current / memory.usage_in_bytes)",
        "By",
        false,
    ),
    (
        "linux.cgroup.memory.limit",
        "Memory limit of the cgroup (absent when unlimited)",
        "By",
        false,
    ),
    (
        "linux.cgroup.memory.stat",
        "Amounts from the cgroup's memory.stat (hierarchical)",
        "By",
        false,
    ),
    (
        "linux.cgroup.memory.stat.events",
        "Event counters from the cgroup's memory.stat (faults, refaults, reclaim scans)",
        "{event}",
        true,
    ),
    (
        "linux.cgroup.memory.events",
        "Memory limit events of the cgroup: low, high, max, oom, oom_kill, oom_group_kill",
        "{event}",
        true,
    ),
    (
        "container.disk.io",
        "Bytes the cgroup read from and wrote to each block device",
        "By",
        true,
    ),
    (
        "linux.cgroup.disk.operations",
        "Read and write requests the cgroup issued to each block device",
        "{operation}",
        true,
    ),
    (
        "linux.pressure.stall.time",
        "Time tasks of the cgroup were stalled on a resource (PSI total)",
        "s",
        true,
    ),
];

struct ContainersCollector {
    registry: Arc<Registry>,
    containers: bool,
    include: Option<RegexSet>,
    exclude: RegexSet,
    max_cgroups: usize,
    stat_include: Option<RegexSet>,
    stat_exclude: RegexSet,
    pressure: bool,
    host_cpus: f64,
    clock_tick: f64,
    generation: u64,
    /// Pod-cache version the targets' attributes were built with.
    pods_version: u64,
    targets: HashMap<Arc<str>, Target>,
    /// Selection decided per path (regexes run once per path).
    decided: HashMap<Arc<str>, (u64, bool)>,
    /// memory.stat key → (selected, counter, exported key).
    stat_keys: HashMap<Box<[u8]>, Option<(bool, &'static str)>>,
    devices: HashMap<Box<[u8]>, Arc<str>>,
    points: Vec<Vec<NumberPoint>>,
}

impl ContainersCollector {
    fn new(config: &Config, host: &HostContext, registry: Arc<Registry>) -> anyhow::Result<Self> {
        let include = if config.include_paths.is_empty() {
            None
        } else {
            Some(regex_set("include_paths", &config.include_paths)?)
        };
        let stat_include = if config.memory_stat_include.is_empty() {
            None
        } else {
            Some(regex_set(
                "memory_stat_include",
                &config.memory_stat_include,
            )?)
        };
        Ok(Self {
            registry,
            containers: config.containers,
            include,
            exclude: regex_set("exclude_paths", &config.exclude_paths)?,
            max_cgroups: config.max_cgroups,
            stat_include,
            stat_exclude: regex_set("memory_stat_exclude", &config.memory_stat_exclude)?,
            pressure: config.pressure,
            host_cpus: host_cpus(),
            clock_tick: host.clock_tick,
            generation: 0,
            pods_version: 0,
            targets: HashMap::new(),
            decided: HashMap::new(),
            stat_keys: HashMap::new(),
            devices: HashMap::new(),
            points: (0..SPECS.len()).map(|_| Vec::new()).collect(),
        })
    }

    fn wanted(&mut self, info: &CgroupInfo) -> bool {
        if let Some((g, yes)) = self.decided.get_mut(&info.path) {
            *g = self.generation;
            return *yes;
        }
        let rel = info.path.trim_start_matches('/');
        let yes = ((self.containers && info.is_container_root())
            || self.include.as_ref().is_some_and(|s| s.is_match(rel)))
            && !self.exclude.is_match(rel);
        self.decided
            .insert(info.path.clone(), (self.generation, yes));
        yes
    }

    /// Pick this cycle's cgroups; returns how many were left out by the cap.
    fn select(&mut self) -> u64 {
        self.generation += 1;
        let generation = self.generation;
        let infos = self.registry.filter(|_| true);
        let mut dropped = 0u64;
        let mut last: Option<Arc<str>> = None;
        for info in infos {
            if last.as_deref() == Some(&*info.path) {
                continue;
            }
            last = Some(info.path.clone());
            if !self.wanted(&info) {
                continue;
            }
            if let Some(t) = self.targets.get_mut(&info.path) {
                t.generation = generation;
                continue;
            }
            if self.max_cgroups > 0 && self.targets.len() >= self.max_cgroups {
                dropped += 1;
                continue;
            }
            let files = Files::open(self.registry.mounts(), &info.path, self.pressure);
            if files.is_empty() {
                continue;
            }
            // Prefer the attributes of the hierarchy that named the container.
            self.targets.insert(
                info.path.clone(),
                Target {
                    attributes: info.attributes(),
                    info: info.clone(),
                    start: info.created,
                    generation,
                    files,
                },
            );
        }
        // Gone from the registry: close the files.
        self.targets.retain(|_, t| t.generation == generation);
        // New pod metadata from the kubelet: rebuild the attributes.
        let pods = crate::kube::global_cache()
            .version
            .load(std::sync::atomic::Ordering::Relaxed);
        if pods != self.pods_version {
            self.pods_version = pods;
            for t in self.targets.values_mut() {
                t.attributes = t.info.attributes();
            }
        }
        self.decided.retain(|_, (g, _)| *g == generation);
        dropped
    }
}

fn host_cpus() -> f64 {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| cpuset_size(s.trim().as_bytes()))
        .map(|n| n as f64)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as f64)
                .unwrap_or(1.0)
        })
}

/// Number of CPUs in a cpuset list (`0-3,8,10-11`).
fn cpuset_size(list: &[u8]) -> Option<u64> {
    let list = list.trim_ascii();
    if list.is_empty() {
        return Some(0);
    }
    let mut n = 0;
    for part in list.split(|&b| b == b',') {
        let part = part.trim_ascii();
        match part.iter().position(|&b| b == b'-') {
            Some(dash) => {
                let (a, b) = (
                    procfs::parse_u64(&part[..dash])?,
                    procfs::parse_u64(&part[dash + 1..])?,
                );
                n += b.checked_sub(a)? + 1;
            }
            None => {
                procfs::parse_u64(part)?;
                n += 1;
            }
        }
    }
    Some(n)
}

/// A single-number file; `None` for `max`, empty or negative values.
fn single(file: &mut Option<ProcFile>) -> Option<u64> {
    let buf = file.as_mut()?.read().ok()?;
    procfs::parse_u64(buf.trim_ascii())
}

/// Value of `key` in a flat `key value` file.
fn keyed(buf: &[u8], key: &[u8]) -> Option<u64> {
    procfs::lines(buf).find_map(|l| {
        let (k, rest) = procfs::first_field(l)?;
        (k == key).then(|| procfs::fields(rest).next().and_then(procfs::parse_u64))?
    })
}

fn device_name(cache: &mut HashMap<Box<[u8]>, Arc<str>>, dev: &[u8]) -> Arc<str> {
    if let Some(n) = cache.get(dev) {
        return n.clone();
    }
    let text = String::from_utf8_lossy(dev).into_owned();
    let name = std::fs::read_to_string(format!("/sys/dev/block/{text}/uevent"))
        .ok()
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_owned))
        })
        .unwrap_or(text);
    let name: Arc<str> = name.into();
    cache.insert(dev.into(), name.clone());
    name
}

fn with(attrs: &[KeyValue], extra: &[(&'static str, kotel_pipelines::Value)]) -> Vec<KeyValue> {
    let mut v = Vec::with_capacity(attrs.len() + extra.len());
    v.extend_from_slice(attrs);
    for (k, val) in extra {
        v.push(KeyValue::new(*k, val.clone()));
    }
    v
}

fn int(v: u64) -> Number {
    Number::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

/// Classify a memory.stat key: `None` = never reported (v1 local duplicates
/// and hierarchical limits), else (counter?, exported key).
fn memory_stat_key(key: &str, v1: bool) -> Option<(bool, &'static str)> {
    let key = if v1 {
        if key.starts_with("hierarchical_") {
            return None;
        }
        key.strip_prefix("total_")?
    } else {
        key
    };
    let counter = (key.starts_with("pg")
        || key.starts_with("thp_")
        || key.starts_with("zswp")
        || key.starts_with("workingset_"))
        && key != "workingset_nodes";
    Some((counter, procfs::intern(key)))
}

impl ContainersCollector {
    fn read_target(&mut self, path: &Arc<str>) {
        let Some(t) = self.targets.get_mut(path) else {
            return;
        };
        let (attrs, start) = (&t.attributes, t.start);
        let f = &mut t.files;
        let pts = &mut self.points;
        let mut push = |m: M, value: Number, extra: &[(&'static str, kotel_pipelines::Value)]| {
            pts[m as usize].push(NumberPoint {
                attributes: with(attrs, extra),
                start_time: if SPECS[m as usize].3 { start } else { 0 },
                value,
            });
        };
        let us = |v: u64| Number::Double(v as f64 / 1e6);
        let ns = |v: u64| Number::Double(v as f64 / 1e9);

        // CPU time and throttling.
        let mut quota: Option<(u64, u64)> = None;
        let mut v2_throttling = false;
        if let Some(buf) = f.cpu_stat_v2.as_mut().and_then(|x| x.read().ok()) {
            for (key, mode) in [(&b"user_usec"[..], "user"), (b"system_usec", "system")] {
                if let Some(v) = keyed(buf, key) {
                    push(M::CpuTime, us(v), &[("cpu.mode", mode.into())]);
                }
            }
            for (key, m, time) in [
                (&b"nr_periods"[..], M::Periods, false),
                (b"nr_throttled", M::Throttled, false),
                (b"throttled_usec", M::ThrottledTime, true),
                (b"nr_bursts", M::Bursts, false),
                (b"burst_usec", M::BurstTime, true),
            ] {
                if let Some(v) = keyed(buf, key) {
                    v2_throttling = true;
                    push(m, if time { us(v) } else { int(v) }, &[]);
                }
            }
        } else if let (Some(u), Some(s)) = (single(&mut f.cpuacct_user), single(&mut f.cpuacct_sys))
        {
            push(M::CpuTime, ns(u), &[("cpu.mode", "user".into())]);
            push(M::CpuTime, ns(s), &[("cpu.mode", "system".into())]);
        } else if let Some(buf) = f.cpuacct_stat.as_mut().and_then(|x| x.read().ok()) {
            for (key, mode) in [(&b"user"[..], "user"), (b"system", "system")] {
                if let Some(v) = keyed(buf, key) {
                    push(
                        M::CpuTime,
                        Number::Double(v as f64 * self.clock_tick),
                        &[("cpu.mode", mode.into())],
                    );
                }
            }
        }
        if !v2_throttling && let Some(buf) = f.cpu_stat_v1.as_mut().and_then(|x| x.read().ok()) {
            for (key, m, time) in [
                (&b"nr_periods"[..], M::Periods, false),
                (b"nr_throttled", M::Throttled, false),
                (b"throttled_time", M::ThrottledTime, true),
                (b"nr_bursts", M::Bursts, false),
                (b"burst_time", M::BurstTime, true),
            ] {
                if let Some(v) = keyed(buf, key) {
                    push(m, if time { ns(v) } else { int(v) }, &[]);
                }
            }
        }

        // CPU capacity.
        if let Some(buf) = f.cpu_max.as_mut().and_then(|x| x.read().ok()) {
            let mut it = procfs::fields(buf);
            if let (Some(q), Some(p)) = (
                it.next().and_then(procfs::parse_u64),
                it.next().and_then(procfs::parse_u64),
            ) {
                quota = Some((q, p));
            }
        } else if let Some(buf) = f.cfs_quota.as_mut().and_then(|x| x.read().ok()) {
            // -1 (no quota) does not parse as u64.
            if let Some(q) = procfs::parse_u64(buf.trim_ascii())
                && let Some(p) = single(&mut f.cfs_period)
            {
                quota = Some((q, p));
            }
        }
        let mut limit = self.host_cpus;
        if let Some((q, p)) = quota.filter(|(_, p)| *p > 0) {
            limit = limit.min(q as f64 / p as f64);
        } else if let Some(n) = f
            .cpuset
            .as_mut()
            .and_then(|x| x.read().ok())
            .and_then(cpuset_size)
            .filter(|n| *n > 0)
        {
            limit = limit.min(n as f64);
        }
        push(M::CpuLimit, Number::Double(limit), &[]);

        // Memory.
        if let Some(v) = single(&mut f.mem_usage) {
            push(M::MemUsage, int(v), &[]);
        }
        if let Some(v) = single(&mut f.mem_limit).filter(|v| *v < NO_LIMIT) {
            push(M::MemLimit, int(v), &[]);
        }
        if let Some(buf) = f.mem_stat.as_mut().and_then(|x| x.read().ok()) {
            for line in procfs::lines(buf) {
                let Some((key, rest)) = procfs::first_field(line) else {
                    continue;
                };
                let class = match self.stat_keys.get(key) {
                    Some(c) => *c,
                    None => {
                        let text = String::from_utf8_lossy(key);
                        let c = memory_stat_key(&text, f.mem_v1).filter(|(_, k)| {
                            self.stat_include.as_ref().is_none_or(|s| s.is_match(k))
                                && !self.stat_exclude.is_match(k)
                        });
                        self.stat_keys.insert(key.into(), c);
                        c
                    }
                };
                let Some((counter, k)) = class else { continue };
                let Some(v) = procfs::fields(rest).next().and_then(procfs::parse_u64) else {
                    continue;
                };
                let m = if counter {
                    M::MemStatEvents
                } else {
                    M::MemStat
                };
                push(m, int(v), &[("linux.cgroup.memory.stat.key", k.into())]);
            }
        }
        if let Some(buf) = f.mem_events.as_mut().and_then(|x| x.read().ok()) {
            for line in procfs::lines(buf) {
                let Some((key, rest)) = procfs::first_field(line) else {
                    continue;
                };
                let event: &'static str = match key {
                    b"low" => "low",
                    b"high" => "high",
                    b"max" => "max",
                    b"oom" => "oom",
                    b"oom_kill" => "oom_kill",
                    b"oom_group_kill" => "oom_group_kill",
                    _ => continue,
                };
                if let Some(v) = procfs::fields(rest).next().and_then(procfs::parse_u64) {
                    push(
                        M::MemEvents,
                        int(v),
                        &[("linux.cgroup.memory.event", event.into())],
                    );
                }
            }
        }
        if let Some(v) = single(&mut f.mem_failcnt) {
            push(
                M::MemEvents,
                int(v),
                &[("linux.cgroup.memory.event", "max".into())],
            );
        }

        // IO per device.
        let devices = &mut self.devices;
        if let Some(buf) = f.io_stat.as_mut().and_then(|x| x.read().ok()) {
            for line in procfs::lines(buf) {
                let mut it = procfs::fields(line);
                let Some(dev) = it.next() else { continue };
                let name = device_name(devices, dev);
                for kv in it {
                    let Some(eq) = kv.iter().position(|&b| b == b'=') else {
                        continue;
                    };
                    let (m, dir) = match &kv[..eq] {
                        b"rbytes" => (M::DiskIo, "read"),
                        b"wbytes" => (M::DiskIo, "write"),
                        b"rios" => (M::DiskOps, "read"),
                        b"wios" => (M::DiskOps, "write"),
                        _ => continue,
                    };
                    if let Some(v) = procfs::parse_u64(&kv[eq + 1..]) {
                        push(
                            m,
                            int(v),
                            &[
                                ("disk.io.direction", dir.into()),
                                ("system.device", name.to_string().into()),
                            ],
                        );
                    }
                }
            }
        } else {
            for (file, m) in [
                (&mut f.blkio_bytes, M::DiskIo),
                (&mut f.blkio_ios, M::DiskOps),
            ] {
                let Some(buf) = file.as_mut().and_then(|x| x.read().ok()) else {
                    continue;
                };
                for line in procfs::lines(buf) {
                    let mut it = procfs::fields(line);
                    let (Some(dev), Some(op), Some(v)) = (it.next(), it.next(), it.next()) else {
                        continue;
                    };
                    let dir = match op {
                        b"Read" => "read",
                        b"Write" => "write",
                        _ => continue,
                    };
                    let Some(v) = procfs::parse_u64(v) else {
                        continue;
                    };
                    let name = device_name(devices, dev);
                    push(
                        m,
                        int(v),
                        &[
                            ("disk.io.direction", dir.into()),
                            ("system.device", name.to_string().into()),
                        ],
                    );
                }
            }
        }

        // Pressure.
        for (file, resource) in f.pressure.iter_mut().zip(["cpu", "memory", "io"]) {
            let Some(buf) = file.as_mut().and_then(|x| x.read().ok()) else {
                continue;
            };
            for line in procfs::lines(buf) {
                let Some((kind, rest)) = procfs::first_field(line) else {
                    continue;
                };
                let kind = match kind {
                    b"some" => "some",
                    b"full" => "full",
                    _ => continue,
                };
                let total = procfs::fields(rest)
                    .find_map(|kv| kv.strip_prefix(b"total="))
                    .and_then(procfs::parse_u64);
                if let Some(v) = total {
                    push(
                        M::Pressure,
                        us(v),
                        &[
                            ("linux.pressure.resource", resource.into()),
                            ("linux.pressure.type", kind.into()),
                        ],
                    );
                }
            }
        }
    }
}

impl MetricsCollector for ContainersCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let dropped = self.select();
        let paths: Vec<Arc<str>> = self.targets.keys().cloned().collect();
        for p in &paths {
            self.read_target(p);
        }
        for (i, (name, description, unit, cumulative)) in SPECS.iter().enumerate() {
            let points = std::mem::take(&mut self.points[i]);
            if points.is_empty() {
                continue;
            }
            let data = if *cumulative {
                MetricData::Sum {
                    monotonic: true,
                    points,
                }
            } else {
                MetricData::Gauge(points)
            };
            out.push(Metric {
                name: (*name).into(),
                description: (*description).into(),
                unit: (*unit).into(),
                data,
            });
        }
        if self.max_cgroups > 0 {
            out.push(Metric {
                name: "linux.collector.series.dropped".into(),
                description: "Series left out of the last collection by the max_series cap".into(),
                unit: "{series}".into(),
                data: MetricData::Gauge(vec![NumberPoint {
                    attributes: vec![KeyValue::new("kotel.collector.name", Containers::NAME)],
                    start_time: 0,
                    value: int(dropped),
                }]),
            });
        }
        Ok(())
    }
}

/// Exposed for tests and benches: a collector over `registry` instead of
/// the host's.
pub fn collector_with(
    config: &Config,
    host: &HostContext,
    registry: Arc<Registry>,
) -> anyhow::Result<Box<dyn MetricsCollector>> {
    Ok(Box::new(ContainersCollector::new(config, host, registry)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::Hierarchy;
    use kotel_pipelines::attr;
    use std::path::Path;

    const ID: &str = "3f0c6d1c59fdb0e0a9c3b0e1e5b2c3d4a5f6e7d8c9b0a1f2e3d4c5b6a7980123";

    fn host() -> HostContext {
        HostContext {
            boot_time: 1_700_000_000_000_000_000,
            agent_start: 1_700_000_100_000_000_000,
            clock_tick: 0.01,
            page_size: 4096,
            capture_dir: std::env::temp_dir(),
        }
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroups")
    }

    /// A fake hybrid tree: v2 (cpu.stat without the cpu controller,
    /// pressure) plus v1 cpu, cpuacct, cpuset, memory, blkio, filled with
    /// files captured from this machine.
    fn tree(root: &Path, path: &str) -> Arc<Registry> {
        let ctrls: [(&str, Vec<String>); 6] = [
            ("unified", vec![]),
            ("cpu", vec!["cpu".into()]),
            ("cpuacct", vec!["cpuacct".into()]),
            ("cpuset", vec!["cpuset".into()]),
            ("memory", vec!["memory".into()]),
            ("blkio", vec!["blkio".into()]),
        ];
        let mut hierarchies = Vec::new();
        for (dir, controllers) in ctrls {
            let d = root.join(dir).join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&d).unwrap();
            let src = fixtures().join(format!("v1-{dir}"));
            let src = if dir == "unified" {
                fixtures().join("v2-nocontrollers")
            } else {
                src
            };
            for e in std::fs::read_dir(&src).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
            }
            hierarchies.push(Hierarchy {
                mount_point: root.join(dir),
                root: "/".into(),
                controllers,
                number: 0,
            });
        }
        let reg = Arc::new(Registry::for_host(Mounts { hierarchies }, 100));
        reg.scan();
        reg
    }

    fn find<'a>(out: &'a [Metric], name: &str) -> &'a Metric {
        out.iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    fn pts(m: &Metric) -> &[NumberPoint] {
        match &m.data {
            MetricData::Gauge(p) | MetricData::Sum { points: p, .. } => p,
            MetricData::Histogram(_) => panic!(),
        }
    }

    fn with_attr<'a>(m: &'a Metric, k: &str, v: &str) -> Vec<&'a NumberPoint> {
        pts(m)
            .iter()
            .filter(|p| attr(&p.attributes, k).and_then(|x| x.as_str()) == Some(v))
            .collect()
    }

    fn fixture_value(file: &str, key: &str) -> u64 {
        let text = std::fs::read_to_string(fixtures().join(file)).unwrap();
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().unwrap())
            })
            .unwrap()
    }

    #[test]
    fn hybrid_container_from_fixtures() {
        let dir = tempfile::tempdir().unwrap();
        let path = format!("/system.slice/docker-{ID}.scope");
        let reg = tree(dir.path(), &path);
        let mut c = ContainersCollector::new(&Config::default(), &host(), reg).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();

        let cpu = find(&out, "container.cpu.time");
        assert_eq!(pts(cpu).len(), 2);
        let user = with_attr(cpu, "cpu.mode", "user")[0];
        // v2 cpu.stat wins over v1 cpuacct.
        assert_eq!(
            user.value,
            Number::Double(fixture_value("v2-nocontrollers/cpu.stat", "user_usec") as f64 / 1e6)
        );
        assert_eq!(
            attr(&user.attributes, "container.id").and_then(|v| v.as_str()),
            Some(ID)
        );
        assert_eq!(
            attr(&user.attributes, "container.runtime.name").and_then(|v| v.as_str()),
            Some("docker")
        );
        assert_eq!(
            attr(&user.attributes, "linux.cgroup.path").and_then(|v| v.as_str()),
            Some(path.as_str())
        );
        assert!(user.start_time > 1_600_000_000_000_000_000);
        // Throttling comes from v1 cpu.stat (v2 has no cpu controller here).
        let throttled = find(&out, "linux.cgroup.cpu.throttled.time");
        assert_eq!(
            pts(throttled)[0].value,
            Number::Double(fixture_value("v1-cpu/cpu.stat", "throttled_time") as f64 / 1e9)
        );
        // Quota 50000/100000 = half a CPU.
        assert_eq!(
            pts(find(&out, "linux.cgroup.cpu.limit"))[0].value,
            Number::Double(0.5f64.min(host_cpus()))
        );
        let mem = find(&out, "container.memory.usage");
        let usage: u64 =
            std::fs::read_to_string(fixtures().join("v1-memory/memory.usage_in_bytes"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
        assert_eq!(pts(mem)[0].value, int(usage));
        assert!(matches!(mem.data, MetricData::Gauge(_)));
        // Unlimited v1 memory: no limit series.
        assert!(out.iter().all(|m| m.name != "linux.cgroup.memory.limit"));
        // v1 total_* keys, without the prefix.
        let stat = find(&out, "linux.cgroup.memory.stat");
        let rss = with_attr(stat, "linux.cgroup.memory.stat.key", "rss");
        assert_eq!(
            rss[0].value,
            int(fixture_value("v1-memory/memory.stat", "total_rss"))
        );
        let faults = find(&out, "linux.cgroup.memory.stat.events");
        assert_eq!(
            with_attr(faults, "linux.cgroup.memory.stat.key", "pgfault")[0].value,
            int(fixture_value("v1-memory/memory.stat", "total_pgfault"))
        );
        assert!(
            with_attr(
                stat,
                "linux.cgroup.memory.stat.key",
                "hierarchical_memory_limit"
            )
            .is_empty()
        );
        let events = find(&out, "linux.cgroup.memory.events");
        assert_eq!(
            with_attr(events, "linux.cgroup.memory.event", "oom_kill").len(),
            1
        );
        assert_eq!(
            with_attr(events, "linux.cgroup.memory.event", "max").len(),
            1
        );
        // blkio per device and direction.
        let io = find(&out, "container.disk.io");
        let reads = with_attr(io, "disk.io.direction", "read");
        assert!(!reads.is_empty());
        assert!(attr(&reads[0].attributes, "system.device").is_some());
        // PSI from v2.
        let psi = find(&out, "linux.pressure.stall.time");
        let cpu_some: Vec<_> = with_attr(psi, "linux.pressure.resource", "cpu")
            .into_iter()
            .filter(|p| {
                attr(&p.attributes, "linux.pressure.type").and_then(|v| v.as_str()) == Some("some")
            })
            .collect();
        assert_eq!(cpu_some.len(), 1);
        assert_eq!(
            pts(find(&out, "linux.collector.series.dropped"))[0].value,
            Number::Int(0)
        );
        // Steady state: the same values again.
        let mut again = Vec::new();
        c.collect(&mut again).unwrap();
        assert_eq!(out, again);
    }

    #[test]
    fn v2_controllers_from_fixtures() {
        let dir = tempfile::tempdir().unwrap();
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0e9d5b1a_7c2f_4f3e_9a1b_2c3d4e5f6a7b.slice/cri-containerd-{ID}.scope"
        );
        let d = dir.path().join("cg").join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(fixtures().join("v2-full")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        let mounts = Mounts {
            hierarchies: vec![Hierarchy {
                mount_point: dir.path().join("cg"),
                root: "/".into(),
                controllers: vec![],
                number: 0,
            }],
        };
        let reg = Arc::new(Registry::for_host(mounts, 100));
        reg.scan();
        let mut c = ContainersCollector::new(&Config::default(), &host(), reg).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        let cpu = find(&out, "container.cpu.time");
        let p = &pts(cpu)[0];
        assert_eq!(
            attr(&p.attributes, "k8s.pod.uid").and_then(|v| v.as_str()),
            Some("0e9d5b1a-7c2f-4f3e-9a1b-2c3d4e5f6a7b")
        );
        assert_eq!(
            attr(&p.attributes, "container.runtime.name").and_then(|v| v.as_str()),
            Some("containerd")
        );
        assert_eq!(
            pts(find(&out, "linux.cgroup.cpu.throttled.periods"))[0].value,
            int(fixture_value("v2-full/cpu.stat", "nr_throttled"))
        );
        // cpu.max "200000 100000": 2 CPUs, capped at the host's.
        assert_eq!(
            pts(find(&out, "linux.cgroup.cpu.limit"))[0].value,
            Number::Double(2f64.min(host_cpus()))
        );
        assert_eq!(
            pts(find(&out, "linux.cgroup.memory.limit"))[0].value,
            int(536870912)
        );
        let stat = find(&out, "linux.cgroup.memory.stat");
        assert_eq!(
            with_attr(stat, "linux.cgroup.memory.stat.key", "anon")[0].value,
            int(fixture_value("v2-full/memory.stat", "anon"))
        );
        let events = find(&out, "linux.cgroup.memory.events");
        assert_eq!(
            with_attr(events, "linux.cgroup.memory.event", "oom_kill")[0].value,
            int(fixture_value("v2-full/memory.events", "oom_kill"))
        );
        let io = find(&out, "linux.cgroup.disk.operations");
        assert_eq!(pts(io).len(), 4, "two devices x read/write");
        let psi = find(&out, "linux.pressure.stall.time");
        assert_eq!(pts(psi).len(), 6);
    }

    #[test]
    fn selection_cap_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cg");
        let mounts = Mounts {
            hierarchies: vec![Hierarchy {
                mount_point: root.clone(),
                root: "/".into(),
                controllers: vec![],
                number: 0,
            }],
        };
        let mk = |p: &str| {
            let d = root.join(p);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("cpu.stat"),
                "usage_usec 10\nuser_usec 6\nsystem_usec 4\n",
            )
            .unwrap();
        };
        for i in 0..5 {
            mk(&format!("docker/{:064x}", i));
        }
        mk("system.slice/sshd.service");
        mk("system.slice/cron.service");
        mk("user.slice");
        let reg = Arc::new(Registry::for_host(mounts, 100));
        reg.scan();
        let config = Config {
            include_paths: vec![r"system\.slice/.*\.service".into()],
            exclude_paths: vec![r"system\.slice/cron\.service".into()],
            max_cgroups: 4,
            ..Config::default()
        };
        let mut c = ContainersCollector::new(&config, &host(), reg.clone()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        let cpu = find(&out, "container.cpu.time");
        assert_eq!(pts(cpu).len(), 8, "4 cgroups x 2 modes");
        assert_eq!(
            pts(find(&out, "linux.collector.series.dropped"))[0].value,
            Number::Int(2)
        );
        // Without the cap: 5 containers + sshd.
        let mut c = ContainersCollector::new(
            &Config {
                max_cgroups: 0,
                ..config.clone()
            },
            &host(),
            reg.clone(),
        )
        .unwrap();
        out.clear();
        c.collect(&mut out).unwrap();
        assert_eq!(pts(find(&out, "container.cpu.time")).len(), 12);
        assert!(
            with_attr(
                find(&out, "container.cpu.time"),
                "systemd.unit",
                "sshd.service"
            )
            .len()
                == 2
        );
        // A removed cgroup stops being exported and its files are closed.
        reg.remove_path(0, "/system.slice/sshd.service");
        out.clear();
        c.collect(&mut out).unwrap();
        assert_eq!(pts(find(&out, "container.cpu.time")).len(), 10);
        assert_eq!(c.targets.len(), 5);
    }

    #[test]
    fn parsers() {
        assert_eq!(cpuset_size(b"0-3,8,10-11\n"), Some(7));
        assert_eq!(cpuset_size(b"0"), Some(1));
        assert_eq!(cpuset_size(b""), Some(0));
        assert_eq!(cpuset_size(b"3-1"), None);
        assert_eq!(memory_stat_key("rss", true), None);
        assert_eq!(memory_stat_key("total_rss", true), Some((false, "rss")));
        assert_eq!(
            memory_stat_key("total_pgfault", true),
            Some((true, "pgfault"))
        );
        assert_eq!(memory_stat_key("hierarchical_memory_limit", true), None);
        assert_eq!(
            memory_stat_key("workingset_nodes", false),
            Some((false, "workingset_nodes"))
        );
        assert_eq!(
            memory_stat_key("workingset_refault_file", false),
            Some((true, "workingset_refault_file"))
        );
        assert_eq!(keyed(b"a 1\nbb 2\n", b"bb"), Some(2));
        assert_eq!(keyed(b"a 1\n", b"b"), None);
    }

    #[test]
    fn config_errors_and_defaults() {
        let c: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(c, Config::default());
        assert!(serde_json::from_str::<Config>(r#"{"include": []}"#).is_err());
        let bad = Config {
            include_paths: vec!["(".into()],
            ..Config::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let reg = Arc::new(Registry::new(Mounts::default(), vec![], 10));
        let err = ContainersCollector::new(&bad, &host(), reg).err().unwrap();
        assert!(format!("{err:#}").contains("include_paths"));
        drop(dir);
    }
}
