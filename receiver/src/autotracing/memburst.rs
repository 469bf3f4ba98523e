//! `memburst`: anonymous memory burst, for the host and per container
//! (HUATUO `memburst` is host-only).
//!
//! Every interval: anonymous memory (host: `Active(anon) + Inactive(anon)`
//! of `/proc/meminfo`; cgroup v2: `anon` of `memory.stat`; v1:
//! `total_active_anon + total_inactive_anon`) into a sliding window of
//! `window` samples. Trigger when the window is full, the newest sample is
//! at least `(1 + delta_percent/100)` times the oldest (100 %: it doubled),
//! and it is at least `limit_percent` of the limit (host: `MemTotal`;
//! cgroup: its memory limit, or `MemTotal` when unlimited). HUATUO: 60
//! samples, 100 %, 70 %.
//!
//! Capture: the processes of the scope (host: every process) by anonymous
//! RSS growth over a short sampling period (`sample`), then by anonymous
//! RSS, with their cgroup; `/proc/<pid>/statm` is read only for those
//! candidates and only at capture time. Processes also seen at the scope's
//! previous capture report their growth since then. Record
//! `linux.autotrace.memburst`.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use kotel_pipelines::{EventRecord, KeyValue, Value};
use serde::{Deserialize, Serialize};

use super::scope::{Scope, Scopes};
use crate::framework::{
    Availability, CollectorSpec, Detector, HostContext, Instance, Mode, Trigger, spec::default_true,
};

pub struct Memburst;

const NAME: &str = "memburst";

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
    /// Samples in the sliding window.
    pub window: usize,
    /// Growth of the newest sample over the oldest, percent (100 = doubled).
    pub delta_percent: f64,
    /// Share of the limit the newest sample must reach, percent.
    pub limit_percent: f64,
    pub host: bool,
    pub containers: bool,
    /// Also watch cgroups whose path matches one of these regexes.
    pub cgroups: Vec<String>,
    /// Processes listed in the record.
    pub top: usize,
    /// Sampling period of per-process RSS during a capture.
    #[serde(with = "humantime_serde")]
    pub sample: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            cooldown: super::DEFAULT_COOLDOWN,
            cpu_budget: super::DEFAULT_CPU_BUDGET,
            window: 60,
            delta_percent: 100.0,
            limit_percent: 70.0,
            host: true,
            containers: true,
            cgroups: Vec::new(),
            top: 10,
            sample: Duration::from_secs(1),
        }
    }
}

crate::common_settings!(Config);

impl CollectorSpec for Memburst {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Autotracing;
    const ABOUT: &'static str =
        "anonymous memory burst, host and per container -> top processes by RSS growth";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        if Path::new("/proc/meminfo").exists() {
            Availability::Available
        } else {
            Availability::Unavailable("/proc/meminfo not present".into())
        }
    }

    fn build(
        config: &Config,
        _host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        Ok(Instance::Autotracing {
            interval: config.interval.unwrap_or(default_interval),
            cooldown: config.cooldown,
            detector: Box::new(MemburstDetector::new(config.clone())?),
        })
    }
}

/// Host anon and MemTotal (bytes) from `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let (mut active, mut inactive, mut total) = (None, None, None);
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let kb = || {
            v.split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
                .map(|n| n * 1024)
        };
        match k {
            "Active(anon)" => active = kb(),
            "Inactive(anon)" => inactive = kb(),
            "MemTotal" => total = kb(),
            _ => {}
        }
    }
    Some((active? + inactive?, total?))
}

/// Cgroup anon bytes from `memory.stat` (v2 `anon`, v1 hierarchical
/// `total_active_anon + total_inactive_anon`).
pub fn parse_memory_stat(text: &str, v2: bool) -> Option<u64> {
    let (mut anon, mut active, mut inactive) = (None, None, None);
    for line in text.lines() {
        let Some((k, v)) = line.split_once(' ') else {
            continue;
        };
        let v = v.trim().parse::<u64>().ok();
        match k {
            "anon" => anon = v,
            "total_active_anon" => active = v,
            "total_inactive_anon" => inactive = v,
            _ => {}
        }
    }
    if v2 { anon } else { Some(active? + inactive?) }
}

/// Where a cgroup's memory files are.
fn memory_dir(scope: &Scope) -> Option<(std::path::PathBuf, bool)> {
    scope.v1_dir("memory").map(|d| (d, false)).or_else(|| {
        scope
            .v2_dir()
            .filter(|d| d.join("memory.stat").exists())
            .map(|d| (d, true))
    })
}

/// (anon, limit) of a cgroup; an unlimited cgroup's limit is `host_total`.
fn read_cgroup(scope: &Scope, host_total: u64) -> Option<(u64, u64)> {
    let (dir, v2) = memory_dir(scope)?;
    let anon = parse_memory_stat(&std::fs::read_to_string(dir.join("memory.stat")).ok()?, v2)?;
    let limit_file = if v2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let limit = std::fs::read_to_string(dir.join(limit_file))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(host_total)
        .min(host_total);
    Some((anon, limit))
}

/// The rule on one window: Some(growth ratio) when it fires.
pub fn evaluate(window: &VecDeque<u64>, len: usize, limit: u64, c: &Config) -> Option<f64> {
    if window.len() < len.max(2) {
        return None;
    }
    let oldest = *window.front()? as f64;
    let newest = *window.back()? as f64;
    let grown = newest >= oldest * (1.0 + c.delta_percent / 100.0);
    let high = newest >= limit as f64 * c.limit_percent / 100.0;
    (grown && high).then(|| {
        if oldest > 0.0 {
            newest / oldest
        } else {
            f64::INFINITY
        }
    })
}

struct Series {
    samples: VecDeque<u64>,
    limit: u64,
    since: VecDeque<Instant>,
}

pub struct MemburstDetector {
    config: Config,
    scopes: Scopes,
    series: HashMap<String, Series>,
    watched: HashMap<String, Scope>,
    /// Per scope: per-pid anon RSS at the previous capture.
    previous: HashMap<String, HashMap<u32, u64>>,
}

impl MemburstDetector {
    pub fn new(config: Config) -> anyhow::Result<Self> {
        Ok(Self {
            scopes: Scopes::new(&config.cgroups, config.containers)?,
            config,
            series: HashMap::new(),
            watched: HashMap::new(),
            previous: HashMap::new(),
        })
    }

    fn push(&mut self, key: &str, anon: u64, limit: u64, now: Instant) -> Option<Trigger> {
        let len = self.config.window.max(2);
        let s = self
            .series
            .entry(key.to_string())
            .or_insert_with(|| Series {
                samples: VecDeque::with_capacity(len + 1),
                limit,
                since: VecDeque::with_capacity(len + 1),
            });
        s.samples.push_back(anon);
        s.since.push_back(now);
        s.limit = limit;
        while s.samples.len() > len {
            s.samples.pop_front();
            s.since.pop_front();
        }
        let ratio = evaluate(&s.samples, len, limit, &self.config)?;
        let oldest = *s.samples.front()?;
        let window = now.duration_since(*s.since.front()?);
        let c = &self.config;
        let attributes = vec![
            KeyValue::new("linux.autotrace.scope", key.to_string()),
            KeyValue::new("linux.autotrace.window", window.as_secs_f64()),
            KeyValue::new("linux.autotrace.window.samples", s.samples.len() as u64),
            KeyValue::new("linux.memory.anon", anon),
            KeyValue::new("linux.memory.anon.window_start", oldest),
            KeyValue::new("linux.memory.anon.growth.percent", (ratio - 1.0) * 100.0),
            KeyValue::new(
                "linux.memory.anon.growth.percent.threshold",
                c.delta_percent,
            ),
            KeyValue::new("linux.memory.limit", limit),
            KeyValue::new(
                "linux.memory.limit.percent",
                super::percent(anon as f64, limit as f64),
            ),
            KeyValue::new("linux.memory.limit.percent.threshold", c.limit_percent),
        ];
        Some(Trigger {
            scope: key.to_string(),
            excess: super::percent(anon as f64, limit as f64) - c.limit_percent,
            attributes,
        })
    }
}

impl Detector for MemburstDetector {
    fn capture_cpu_budget(&self) -> Option<f64> {
        (self.config.cpu_budget > 0.0).then_some(self.config.cpu_budget)
    }

    fn check(&mut self) -> anyhow::Result<Vec<Trigger>> {
        let now = Instant::now();
        let (host_anon, host_total) = parse_meminfo(&std::fs::read_to_string("/proc/meminfo")?)
            .ok_or_else(|| anyhow::anyhow!("/proc/meminfo: no anon or MemTotal"))?;
        let mut out = Vec::new();
        if self.config.host
            && let Some(t) = self.push("host", host_anon, host_total, now)
        {
            out.push(t);
        }
        let scopes = if self.config.containers || !self.config.cgroups.is_empty() {
            self.scopes.list()
        } else {
            Vec::new()
        };
        let mut live: HashMap<String, Scope> = HashMap::new();
        for s in scopes {
            if let Some((anon, limit)) = read_cgroup(&s, host_total)
                && let Some(mut t) = self.push(&s.key, anon, limit, now)
            {
                t.attributes.extend(s.attributes.iter().cloned());
                out.push(t);
            }
            live.insert(s.key.clone(), s);
        }
        self.series
            .retain(|k, _| k == "host" || live.contains_key(k));
        self.previous
            .retain(|k, _| k == "host" || live.contains_key(k));
        self.watched = live;
        Ok(out)
    }

    fn capture(&mut self, trigger: &Trigger) -> anyhow::Result<EventRecord> {
        let pids = match self.watched.get(&trigger.scope) {
            Some(s) => cgroup_pids(s),
            None => all_pids(),
        };
        let page = super::scope::page_size();
        let first: HashMap<u32, Statm> = pids
            .iter()
            .filter_map(|&p| Some((p, statm(p, page)?)))
            .collect();
        std::thread::sleep(self.config.sample);
        let mut rows: Vec<(u32, Statm, i64)> = first
            .iter()
            .filter_map(|(&p, a)| {
                let b = statm(p, page)?;
                Some((p, b, b.anon as i64 - a.anon as i64))
            })
            .collect();
        rows.sort_by(|a, b| b.2.cmp(&a.2).then(b.1.anon.cmp(&a.1.anon)));
        let prev = self.previous.remove(&trigger.scope).unwrap_or_default();
        let mut r = super::base_record(NAME, trigger);
        r.attributes
            .push(KeyValue::new("linux.memburst.processes", rows.len() as u64));
        r.attributes.push(KeyValue::new(
            "linux.memburst.sample",
            self.config.sample.as_secs_f64(),
        ));
        let top: Vec<Value> = rows
            .iter()
            .take(self.config.top)
            .map(|(pid, m, growth)| {
                let mut kv = vec![
                    KeyValue::new("process.pid", u64::from(*pid)),
                    KeyValue::new("process.command", comm(*pid)),
                    KeyValue::new("rss_anon", m.anon),
                    KeyValue::new("rss", m.rss),
                    KeyValue::new("rss_anon.growth", *growth),
                ];
                if let Some(before) = prev.get(pid) {
                    kv.push(KeyValue::new(
                        "rss_anon.growth.since_previous_capture",
                        m.anon as i64 - *before as i64,
                    ));
                }
                if let Some(cg) = crate::cgroups::resolve_pid(*pid) {
                    cg.append_attributes(&mut kv);
                }
                Value::Map(kv)
            })
            .collect();
        self.previous.insert(
            trigger.scope.clone(),
            rows.iter()
                .take(256)
                .map(|(p, m, _)| (*p, m.anon))
                .collect(),
        );
        r.body = Some(Value::Map(vec![KeyValue::new(
            "top_processes",
            Value::Array(top),
        )]));
        Ok(r)
    }
}

#[derive(Debug, Clone, Copy)]
struct Statm {
    rss: u64,
    anon: u64,
}

/// RSS and anonymous RSS (resident − file/shmem-backed) of a process.
fn statm(pid: u32, page: u64) -> Option<Statm> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let mut it = s.split_whitespace().skip(1);
    let rss: u64 = it.next()?.parse().ok()?;
    let shared: u64 = it.next()?.parse().ok()?;
    Some(Statm {
        rss: rss * page,
        anon: rss.saturating_sub(shared) * page,
    })
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes of a cgroup and its descendants (memory hierarchy, else v2).
fn cgroup_pids(scope: &Scope) -> Vec<u32> {
    let Some((dir, _)) = memory_dir(scope).or_else(|| scope.v2_dir().map(|d| (d, true))) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        if let Ok(s) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo_and_memory_stat() {
        let m = "MemTotal:       1000 kB\nActive(anon):     10 kB\nInactive(anon):    5 kB\n";
        assert_eq!(parse_meminfo(m), Some((15 * 1024, 1000 * 1024)));
        assert_eq!(parse_memory_stat("anon 7\nfile 3\n", true), Some(7));
        assert_eq!(
            parse_memory_stat(
                "active_anon 1\ntotal_active_anon 4\ntotal_inactive_anon 6\n",
                false
            ),
            Some(10)
        );
        assert_eq!(parse_memory_stat("anon 7\n", false), None);
    }

    #[test]
    fn needs_a_full_window_a_doubling_and_a_high_share() {
        let c = Config {
            window: 3,
            ..Default::default()
        };
        let w = |v: &[u64]| v.iter().copied().collect::<VecDeque<u64>>();
        assert_eq!(evaluate(&w(&[10, 80]), 3, 100, &c), None, "window not full");
        assert_eq!(evaluate(&w(&[10, 20, 80]), 3, 100, &c), Some(8.0));
        assert_eq!(evaluate(&w(&[50, 60, 80]), 3, 100, &c), None, "not doubled");
        assert_eq!(
            evaluate(&w(&[10, 20, 60]), 3, 100, &c),
            None,
            "below 70 % of limit"
        );
    }
}
