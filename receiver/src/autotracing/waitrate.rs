//! `waitrate`: run-queue contention per container (HUATUO's `cpu_stat`
//! `wait_sum_percent`, which needs `kernel.sched_schedstats=1`; here from
//! BPF, no sysctl).
//!
//! Every interval, for each watched cgroup (containers, plus cgroups whose
//! path matches `cgroups`; child cgroups count for the deepest watched
//! ancestor): the time its tasks spent runnable but waiting for a CPU
//! (Δwait) and on a CPU (Δrun) since the previous check, from the `runqlat`
//! programs' per-cgroup sums (shared with the `runqlat` metrics collector).
//! `wait ratio = Δwait / (Δwait + Δrun)`. Trigger when the ratio is above
//! `threshold` (default 0.5: the tasks waited as long as they ran) and the
//! cgroup was busy enough to matter: `Δwait + Δrun ≥ min_demand` CPUs × the
//! interval (default 0.1 CPU), so one wake-up of an idle service cannot fire.
//!
//! Capture (record `linux.autotrace.waitrate`), during a window of
//! `duration` (default 10 s): the cgroup's run-queue latency histogram over
//! the window, its wait ratio over the window, the tasks of the cgroup that
//! waited most (summed in the kernel only while a capture watches the
//! cgroup; tasks of child cgroups are not listed), and, with `profile: true`,
//! a CPU flame graph of the cgroup taken during the same window (the shared
//! profile capture of `cpuidle`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kotel_ebpf::maps::{HIST_SLOTS, log2_bounds};
use kotel_pipelines::{EventRecord, KeyValue, Value};
use serde::{Deserialize, Serialize};

use super::ProfileSettings;
use super::profile::ProfileScope;
use super::scope::{Scope, Scopes};
use crate::framework::{
    Availability, CollectorSpec, Detector, HostContext, Instance, Mode, Trigger, spec::default_true,
};
use crate::metrics::runqlat::{self, CgroupSums, MIN_SLOT, SharedRunq, TopTask};

pub struct Waitrate;

const NAME: &str = "waitrate";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Time between two captures of the same cgroup.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Watch containers.
    pub containers: bool,
    /// Also watch cgroups whose path matches one of these regexes.
    pub cgroups: Vec<String>,
    /// Trigger when Δwait / (Δwait + Δrun) is above this (0..1).
    pub threshold: f64,
    /// Ignore cgroups whose tasks wanted less than this many CPUs
    /// ((Δwait + Δrun) / interval).
    pub min_demand: f64,
    /// At most this many captures per check (highest ratio first).
    pub max_captures_per_check: usize,
    /// Capture window.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Also take a CPU flame graph of the cgroup during the window.
    pub profile: bool,
    /// Profile sampling frequency (Hz per CPU).
    pub frequency: u64,
    /// Entries in the record's top lists.
    pub top: usize,
    /// Capacity of the kernel's per-cgroup table when this detector loads
    /// the runqlat programs (the `runqlat` collector's setting wins when it
    /// started first).
    pub max_cgroups: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            cooldown: super::DEFAULT_COOLDOWN,
            containers: true,
            cgroups: Vec::new(),
            threshold: 0.5,
            min_demand: 0.1,
            max_captures_per_check: 4,
            duration: Duration::from_secs(10),
            profile: true,
            frequency: 99,
            top: 20,
            max_cgroups: 4096,
        }
    }
}

crate::common_settings!(Config);

impl CollectorSpec for Waitrate {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Autotracing;
    const ABOUT: &'static str = "per-container run-queue wait ratio (BPF sched_switch) -> run-queue latency histogram, top waiting tasks, CPU flame graph";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        crate::events::bpf::probe(&runqlat::requirements())
    }

    fn build(
        config: &Config,
        host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        if !(0.0..1.0).contains(&config.threshold) {
            anyhow::bail!(
                "waitrate: threshold must be in [0, 1), got {}",
                config.threshold
            );
        }
        Ok(Instance::Autotracing {
            interval: config.interval.unwrap_or(default_interval),
            cooldown: config.cooldown,
            detector: Box::new(WaitrateDetector::new(
                config.clone(),
                host.capture_dir.clone(),
            )?),
        })
    }
}

/// The wait ratio of a delta, `None` when nothing ran or waited.
pub fn wait_ratio(d: &CgroupSums) -> Option<f64> {
    let total = d.wait_ns() + d.run_ns;
    (total > 0).then(|| d.wait_ns() as f64 / total as f64)
}

/// Excess over the threshold when the rule fires.
pub fn evaluate(c: &Config, d: &CgroupSums, window: Duration) -> Option<f64> {
    let ratio = wait_ratio(d)?;
    let demand = (d.wait_ns() + d.run_ns) as f64 / window.as_nanos().max(1) as f64;
    (ratio > c.threshold && demand >= c.min_demand).then_some(ratio - c.threshold)
}

struct State {
    at: Instant,
    sums: CgroupSums,
}

pub struct WaitrateDetector {
    config: Config,
    shared: SharedRunq,
    scopes: Scopes,
    capture_dir: std::path::PathBuf,
    state: HashMap<String, State>,
    watched: HashMap<String, Scope>,
    fired: HashMap<String, Instant>,
    bounds: Arc<[f64]>,
}

impl WaitrateDetector {
    pub fn new(config: Config, capture_dir: std::path::PathBuf) -> anyhow::Result<Self> {
        Ok(Self {
            shared: runqlat::acquire(config.max_cgroups)?,
            scopes: Scopes::new(&config.cgroups, config.containers)?,
            config,
            capture_dir,
            state: HashMap::new(),
            watched: HashMap::new(),
            fired: HashMap::new(),
            bounds: log2_bounds(MIN_SLOT),
        })
    }

    /// Current sums of every watched scope, by scope key.
    fn read(&self, scopes: &[Scope]) -> anyhow::Result<HashMap<String, CgroupSums>> {
        let entries = runqlat::read_cgroups(&runqlat::lock(&self.shared))?;
        Ok(runqlat::roll_up(scopes, &entries)
            .into_iter()
            .map(|(i, (s, _))| (scopes[i].key.clone(), s))
            .collect())
    }

    fn trigger(&self, scope: &Scope, d: &CgroupSums, window: Duration, excess: f64) -> Trigger {
        let mut a = vec![
            KeyValue::new("linux.autotrace.scope", scope.key.clone()),
            KeyValue::new("linux.autotrace.window", window.as_secs_f64()),
            KeyValue::new("linux.scheduler.wait_ratio", wait_ratio(d).unwrap_or(0.0)),
            KeyValue::new(
                "linux.scheduler.wait_ratio.threshold",
                self.config.threshold,
            ),
            KeyValue::new("linux.scheduler.wait.time", d.wait_ns() as f64 / 1e9),
            KeyValue::new("linux.scheduler.run.time", d.run_ns as f64 / 1e9),
        ];
        a.extend(scope.attributes.iter().cloned());
        Trigger {
            scope: scope.key.clone(),
            excess,
            attributes: a,
        }
    }
}

impl Detector for WaitrateDetector {
    fn check(&mut self) -> anyhow::Result<Vec<Trigger>> {
        let scopes = self.scopes.list();
        let now = Instant::now();
        let sums = self.read(&scopes)?;
        let mut out = Vec::new();
        let mut next = HashMap::with_capacity(sums.len());
        for scope in &scopes {
            let Some(cur) = sums.get(&scope.key) else {
                continue;
            };
            if let Some(prev) = self.state.get(&scope.key) {
                let d = cur.since(&prev.sums);
                let window = now.duration_since(prev.at);
                if let Some(excess) = evaluate(&self.config, &d, window) {
                    out.push(self.trigger(scope, &d, window, excess));
                }
            }
            next.insert(
                scope.key.clone(),
                State {
                    at: now,
                    sums: cur.clone(),
                },
            );
            self.watched.insert(scope.key.clone(), scope.clone());
        }
        self.state = next;
        self.watched.retain(|k, _| self.state.contains_key(k));
        let cooldown = self.config.cooldown;
        self.fired.retain(|_, t| t.elapsed() < cooldown);
        out.retain(|t| !self.fired.contains_key(&t.scope));
        out.sort_by(|a, b| b.excess.total_cmp(&a.excess));
        out.truncate(self.config.max_captures_per_check.max(1));
        for t in &out {
            self.fired.insert(t.scope.clone(), Instant::now());
        }
        Ok(out)
    }

    fn capture(&mut self, trigger: &Trigger) -> anyhow::Result<EventRecord> {
        let scope = self
            .watched
            .get(&trigger.scope)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("cgroup {} is gone", trigger.scope))?;
        let one = std::slice::from_ref(&scope);
        let before = self.read(one)?.remove(&scope.key).unwrap_or_default();
        let kid = {
            let mut obj = runqlat::lock(&self.shared);
            let kid = runqlat::kernel_id(obj.mode, &scope.path);
            runqlat::take_top(&mut obj)?;
            runqlat::set_watch(&mut obj, kid)?;
            kid
        };
        let started = Instant::now();
        // The window: a CPU profile of the cgroup when asked (it blocks for
        // `duration`), else a plain wait.
        let mut record = None;
        let mut profile_error = None;
        if self.config.profile {
            match ProfileScope::for_cgroup(&scope.path).and_then(|ps| {
                super::profile_record(
                    NAME,
                    trigger,
                    ps,
                    ProfileSettings {
                        duration: self.config.duration,
                        frequency: self.config.frequency,
                        top: self.config.top,
                    },
                    &self.capture_dir,
                )
            }) {
                Ok(r) => record = Some(r),
                Err(e) => profile_error = Some(format!("{e:#}")),
            }
        }
        if let Some(rest) = self.config.duration.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
        let window = started.elapsed();
        let top = {
            let mut obj = runqlat::lock(&self.shared);
            runqlat::set_watch(&mut obj, None)?;
            runqlat::take_top(&mut obj)?
        };
        let after = self.read(one)?.remove(&scope.key).unwrap_or_default();
        let d = after.since(&before);

        let mut r = record.unwrap_or_else(|| super::base_record(NAME, trigger));
        r.attributes.push(KeyValue::new(
            "linux.autotrace.capture.window",
            window.as_secs_f64(),
        ));
        r.attributes.push(KeyValue::new(
            "linux.autotrace.capture.wait_ratio",
            wait_ratio(&d).unwrap_or(0.0),
        ));
        if let Some(e) = profile_error {
            r.attributes
                .push(KeyValue::new("linux.autotrace.profile.error", e));
        }
        if kid.is_none() {
            r.attributes.push(KeyValue::new(
                "linux.autotrace.top_tasks.error",
                "cgroup not found in the scheduler's hierarchy",
            ));
        }
        let mut body = match r.body.take() {
            Some(Value::Map(kv)) => kv,
            _ => Vec::new(),
        };
        body.push(KeyValue::new(
            "runqueue_latency",
            histogram_value(&d, &self.bounds),
        ));
        body.push(KeyValue::new(
            "top_waiting_tasks",
            top_value(&top, self.config.top, window),
        ));
        r.body = Some(Value::Map(body));
        Ok(r)
    }
}

/// Upper bound (s) of the bucket holding quantile `q` of the histogram.
pub fn quantile_bound(d: &CgroupSums, bounds: &[f64], q: f64) -> Option<f64> {
    let counts = d.hist.bucket_counts(MIN_SLOT);
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let want = (q * total as f64).ceil().max(1.0) as u64;
    let mut acc = 0;
    for (i, c) in counts.iter().enumerate() {
        acc += c;
        if acc >= want {
            return Some(bounds.get(i).copied().unwrap_or(f64::INFINITY));
        }
    }
    None
}

fn histogram_value(d: &CgroupSums, bounds: &[f64]) -> Value {
    let counts = d.hist.bucket_counts(MIN_SLOT);
    // Only up to the last non-empty bucket: the rest are zeros.
    let last = counts.iter().rposition(|&c| c > 0).map_or(0, |i| i + 1);
    debug_assert_eq!(counts.len(), HIST_SLOTS - MIN_SLOT);
    let mut kv = vec![
        KeyValue::new("count", d.hist.count()),
        KeyValue::new("sum_seconds", d.hist.sum_seconds()),
        KeyValue::new(
            "bounds_seconds",
            Value::Array(bounds.iter().take(last).map(|b| Value::from(*b)).collect()),
        ),
        KeyValue::new(
            "bucket_counts",
            Value::Array(counts.iter().take(last).map(|c| Value::from(*c)).collect()),
        ),
    ];
    for (name, q) in [("p50_le_seconds", 0.5), ("p99_le_seconds", 0.99)] {
        if let Some(b) = quantile_bound(d, bounds, q) {
            kv.push(KeyValue::new(name, b));
        }
    }
    Value::Map(kv)
}

fn top_value(top: &[TopTask], n: usize, window: Duration) -> Value {
    let secs = window.as_secs_f64().max(1e-9);
    Value::Array(
        top.iter()
            .take(n)
            .map(|t| {
                Value::Map(vec![
                    KeyValue::new("thread.id", u64::from(t.tid)),
                    KeyValue::new("thread.name", t.comm.clone()),
                    KeyValue::new("wait_seconds", t.wait_ns as f64 / 1e9),
                    KeyValue::new("wait_share", t.wait_ns as f64 / 1e9 / secs),
                    KeyValue::new("waits", t.waits),
                ])
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(wait_ns: u64, run_ns: u64, slot: usize) -> CgroupSums {
        let mut s = CgroupSums::default();
        s.hist.slots[slot] = 10;
        s.hist.sum_ns = wait_ns;
        s.run_ns = run_ns;
        s
    }

    #[test]
    fn rule() {
        let c = Config::default();
        let w = Duration::from_secs(10);
        // 6 s waiting, 4 s running in 10 s: ratio 0.6 > 0.5, demand 1 CPU.
        let e = evaluate(&c, &sums(6_000_000_000, 4_000_000_000, 20), w).unwrap();
        assert!((e - 0.1).abs() < 1e-9);
        // Same ratio but 0.01 CPU of demand: ignored.
        assert!(evaluate(&c, &sums(60_000_000, 40_000_000, 20), w).is_none());
        // Below the threshold.
        assert!(evaluate(&c, &sums(4_000_000_000, 6_000_000_000, 20), w).is_none());
        // Nothing happened.
        assert!(evaluate(&c, &CgroupSums::default(), w).is_none());
        assert_eq!(wait_ratio(&CgroupSums::default()), None);
    }

    #[test]
    fn quantiles_from_buckets() {
        let bounds = log2_bounds(MIN_SLOT);
        // slot 20: values in [2^20, 2^21) ns -> bucket 11, bound 2^21 ns.
        let d = sums(1, 1, 20);
        assert_eq!(
            quantile_bound(&d, &bounds, 0.5),
            Some((1u64 << 21) as f64 / 1e9)
        );
        assert_eq!(quantile_bound(&CgroupSums::default(), &bounds, 0.5), None);
        let Value::Map(kv) = histogram_value(&d, &bounds) else {
            panic!()
        };
        let counts = kv.iter().find(|k| k.key == "bucket_counts").unwrap();
        let Value::Array(c) = &counts.value else {
            panic!()
        };
        assert_eq!(c.len(), 12);
    }
}
