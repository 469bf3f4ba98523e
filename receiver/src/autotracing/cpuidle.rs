//! `cpuidle`: container CPU surge (HUATUO `cpuidle`; the name is historical).
//!
//! Every interval, for each watched cgroup (containers, plus cgroups whose
//! path matches `cgroups`): user, system and total CPU usage since the
//! previous sample as a percentage of the cgroup's CPU capacity (CFS quota,
//! else its cpuset, capped at the host's CPUs), and each one's change since
//! the previous interval. Trigger when any of
//! `user > 75 and Δuser > 45`, `sys > 45 and Δsys > 20`,
//! `total > 90 and Δtotal > 55` (HUATUO's defaults, all configurable).
//!
//! Unlike HUATUO (one container per tick), every qualifying cgroup is
//! returned, ordered by excess; at most `max_captures_per_check` captures per
//! check (the rest wait for the next check), each cgroup at most once per
//! cooldown. Capture: a CPU profile scoped to the cgroup (v1 `cpu`
//! hierarchy, else v2). Record `linux.autotrace.cpuidle`.
//!
//! Usage comes from v1 `cpuacct.usage_user`/`usage_sys`/`usage` (ns) when the
//! cgroup exists in the cpuacct hierarchy, else v2 `cpu.stat`.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kotel_pipelines::{EventRecord, KeyValue};
use serde::{Deserialize, Serialize};

use super::ProfileSettings;
use super::profile::ProfileScope;
use super::scope::{Scope, Scopes};
use crate::framework::{
    Availability, CollectorSpec, Detector, HostContext, Instance, Mode, Trigger, spec::default_true,
};

pub struct Cpuidle;

const NAME: &str = "cpuidle";

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
    /// Skip captures while kotel used more than this many CPUs over the
    /// last minute (0: no budget).
    pub cpu_budget: f64,
    /// Watch containers (cgroups the cgroup model recognises as containers).
    pub containers: bool,
    /// Also watch cgroups whose path matches one of these regexes.
    pub cgroups: Vec<String>,
    pub user_threshold: f64,
    pub user_delta_threshold: f64,
    pub sys_threshold: f64,
    pub sys_delta_threshold: f64,
    pub usage_threshold: f64,
    pub usage_delta_threshold: f64,
    /// At most this many captures per check (highest excess first).
    pub max_captures_per_check: usize,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    pub frequency: u64,
    pub top: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            cooldown: super::DEFAULT_COOLDOWN,
            cpu_budget: super::DEFAULT_CPU_BUDGET,
            containers: true,
            cgroups: Vec::new(),
            user_threshold: 75.0,
            user_delta_threshold: 45.0,
            sys_threshold: 45.0,
            sys_delta_threshold: 20.0,
            usage_threshold: 90.0,
            usage_delta_threshold: 55.0,
            max_captures_per_check: 4,
            duration: Duration::from_secs(10),
            frequency: 99,
            top: 20,
        }
    }
}

crate::common_settings!(Config);

impl CollectorSpec for Cpuidle {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Autotracing;
    const ABOUT: &'static str =
        "per-container CPU surge (user/sys/total % of capacity) -> container CPU flame graph";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        super::probe_profiling()
    }

    fn build(
        config: &Config,
        host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        Ok(Instance::Autotracing {
            interval: config.interval.unwrap_or(default_interval),
            cooldown: config.cooldown,
            detector: Box::new(CpuidleDetector::new(
                config.clone(),
                host.capture_dir.clone(),
            )?),
        })
    }
}

/// Cumulative CPU usage of a cgroup, nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub user: u64,
    pub system: u64,
    pub total: u64,
}

/// Percentages of capacity over one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pct {
    pub user: f64,
    pub system: f64,
    pub total: f64,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Parse v2 `cpu.stat` (`usage_usec`, `user_usec`, `system_usec`) into ns.
pub fn parse_cpu_stat(text: &str) -> Option<Usage> {
    let mut u = Usage::default();
    let mut seen = 0;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(' ') else {
            continue;
        };
        let Ok(v) = v.trim().parse::<u64>() else {
            continue;
        };
        match k {
            "usage_usec" => (u.total, seen) = (v * 1000, seen | 1),
            "user_usec" => (u.user, seen) = (v * 1000, seen | 2),
            "system_usec" => (u.system, seen) = (v * 1000, seen | 4),
            _ => {}
        }
    }
    (seen == 7).then_some(u)
}

/// The cgroup's cumulative usage (v1 cpuacct, else v2 cpu.stat).
pub fn read_usage(scope: &Scope) -> Option<Usage> {
    if let Some(d) = scope.v1_dir("cpuacct") {
        return Some(Usage {
            user: read_u64(&d.join("cpuacct.usage_user"))?,
            system: read_u64(&d.join("cpuacct.usage_sys"))?,
            total: read_u64(&d.join("cpuacct.usage"))?,
        });
    }
    let d = scope.v2_dir()?;
    parse_cpu_stat(&std::fs::read_to_string(d.join("cpu.stat")).ok()?)
}

/// CPUs the cgroup may use: its CFS quota, else its cpuset, capped at the
/// host's online CPUs.
pub fn capacity(scope: &Scope) -> f64 {
    let host = super::scope::online_cpus() as f64;
    let mut cap = host;
    if let Some(d) = scope.v1_dir("cpu") {
        if let (Some(q), Some(p)) = (
            std::fs::read_to_string(d.join("cpu.cfs_quota_us"))
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok()),
            read_u64(&d.join("cpu.cfs_period_us")),
        ) && q > 0
            && p > 0
        {
            cap = cap.min(q as f64 / p as f64);
        }
    } else if let Some(d) = scope.v2_dir()
        && let Ok(s) = std::fs::read_to_string(d.join("cpu.max"))
    {
        let mut it = s.split_whitespace();
        if let (Some(q), Some(p)) = (it.next(), it.next())
            && let (Ok(q), Ok(p)) = (q.parse::<f64>(), p.parse::<f64>())
            && p > 0.0
        {
            cap = cap.min(q / p);
        }
    }
    let cpuset = scope
        .v1_dir("cpuset")
        .and_then(|d| {
            std::fs::read_to_string(d.join("cpuset.effective_cpus"))
                .or_else(|_| std::fs::read_to_string(d.join("cpuset.cpus")))
                .ok()
        })
        .or_else(|| {
            scope
                .v2_dir()
                .and_then(|d| std::fs::read_to_string(d.join("cpuset.cpus.effective")).ok())
        })
        .map(|s| super::scope::cpuset_count(&s))
        .unwrap_or(0);
    if cpuset > 0 {
        cap = cap.min(cpuset as f64);
    }
    cap.max(0.01)
}

/// Which rule fired and by how much: the largest (value - threshold) +
/// (delta - delta threshold) among the rules that fired.
pub fn evaluate(c: &Config, now: Pct, prev: Pct) -> Option<f64> {
    let rules = [
        (
            now.user,
            now.user - prev.user,
            c.user_threshold,
            c.user_delta_threshold,
        ),
        (
            now.system,
            now.system - prev.system,
            c.sys_threshold,
            c.sys_delta_threshold,
        ),
        (
            now.total,
            now.total - prev.total,
            c.usage_threshold,
            c.usage_delta_threshold,
        ),
    ];
    rules
        .iter()
        .filter(|(v, d, t, dt)| v > t && d > dt)
        .map(|(v, d, t, dt)| (v - t) + (d - dt))
        .max_by(f64::total_cmp)
}

struct State {
    at: Instant,
    usage: Usage,
    pct: Option<Pct>,
}

pub struct CpuidleDetector {
    config: Config,
    scopes: Scopes,
    capture_dir: std::path::PathBuf,
    state: HashMap<String, State>,
    /// Scopes returned as triggers, with when: keeps the per-check budget
    /// for cgroups that can actually be captured (the runner's cooldown
    /// would skip the others).
    fired: HashMap<String, Instant>,
    watched: HashMap<String, Scope>,
}

impl CpuidleDetector {
    pub fn new(config: Config, capture_dir: std::path::PathBuf) -> anyhow::Result<Self> {
        Ok(Self {
            scopes: Scopes::new(&config.cgroups, config.containers)?,
            config,
            capture_dir,
            state: HashMap::new(),
            fired: HashMap::new(),
            watched: HashMap::new(),
        })
    }
}

impl Detector for CpuidleDetector {
    fn capture_cpu_budget(&self) -> Option<f64> {
        (self.config.cpu_budget > 0.0).then_some(self.config.cpu_budget)
    }

    fn check(&mut self) -> anyhow::Result<Vec<Trigger>> {
        let scopes = self.scopes.list();
        let mut out: Vec<Trigger> = Vec::new();
        let mut seen = HashMap::with_capacity(scopes.len());
        for scope in scopes {
            let Some(usage) = read_usage(&scope) else {
                continue;
            };
            let now = Instant::now();
            let cap = capacity(&scope);
            let prev = self.state.remove(&scope.key);
            let mut st = State {
                at: now,
                usage,
                pct: None,
            };
            if let Some(prev) = prev {
                let wall = now.duration_since(prev.at).as_nanos() as f64 * cap;
                let pct = Pct {
                    user: super::percent(usage.user.saturating_sub(prev.usage.user) as f64, wall),
                    system: super::percent(
                        usage.system.saturating_sub(prev.usage.system) as f64,
                        wall,
                    ),
                    total: super::percent(
                        usage.total.saturating_sub(prev.usage.total) as f64,
                        wall,
                    ),
                };
                st.pct = Some(pct);
                if let Some(prev_pct) = prev.pct
                    && let Some(excess) = evaluate(&self.config, pct, prev_pct)
                {
                    out.push(self.trigger(&scope, pct, prev_pct, cap, now - prev.at, excess));
                }
            }
            seen.insert(scope.key.clone(), st);
            self.watched.insert(scope.key.clone(), scope);
        }
        self.state = seen;
        self.watched.retain(|k, _| self.state.contains_key(k));
        // Budget: the highest excess first, skipping cgroups still cooling down.
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
            .ok_or_else(|| anyhow::anyhow!("cgroup {} is gone", trigger.scope))?;
        let pscope = ProfileScope::for_cgroup(&scope.path)?;
        super::profile_record(
            NAME,
            trigger,
            pscope,
            ProfileSettings {
                duration: self.config.duration,
                frequency: self.config.frequency,
                top: self.config.top,
            },
            &self.capture_dir,
        )
    }
}

impl CpuidleDetector {
    fn trigger(
        &self,
        scope: &Scope,
        now: Pct,
        prev: Pct,
        cap: f64,
        window: Duration,
        excess: f64,
    ) -> Trigger {
        let c = &self.config;
        let mut a = vec![
            KeyValue::new("linux.autotrace.scope", scope.key.clone()),
            KeyValue::new("linux.autotrace.window", window.as_secs_f64()),
            KeyValue::new("linux.cgroup.cpu.capacity", cap),
        ];
        for (name, v, d, t, dt) in [
            (
                "user",
                now.user,
                now.user - prev.user,
                c.user_threshold,
                c.user_delta_threshold,
            ),
            (
                "system",
                now.system,
                now.system - prev.system,
                c.sys_threshold,
                c.sys_delta_threshold,
            ),
            (
                "total",
                now.total,
                now.total - prev.total,
                c.usage_threshold,
                c.usage_delta_threshold,
            ),
        ] {
            a.push(KeyValue::new(format!("linux.cpu.{name}.percent"), v));
            a.push(KeyValue::new(
                format!("linux.cpu.{name}.percent.threshold"),
                t,
            ));
            a.push(KeyValue::new(format!("linux.cpu.{name}.percent.delta"), d));
            a.push(KeyValue::new(
                format!("linux.cpu.{name}.percent.delta.threshold"),
                dt,
            ));
        }
        a.extend(scope.attributes.iter().cloned());
        Trigger {
            scope: scope.key.clone(),
            excess,
            attributes: a,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stat_v2() {
        let u =
            parse_cpu_stat("usage_usec 30\nuser_usec 20\nsystem_usec 10\nnr_periods 0\n").unwrap();
        assert_eq!(
            u,
            Usage {
                user: 20_000,
                system: 10_000,
                total: 30_000
            }
        );
        assert!(parse_cpu_stat("usage_usec 1\n").is_none());
    }

    #[test]
    fn rules_match_huatuo() {
        let c = Config::default();
        let z = Pct::default();
        // user 80 rising by 50: fires (5 + 5).
        let e = evaluate(
            &c,
            Pct {
                user: 80.0,
                system: 0.0,
                total: 80.0,
            },
            Pct {
                user: 30.0,
                system: 0.0,
                total: 30.0,
            },
        )
        .unwrap();
        assert!((e - 10.0).abs() < 1e-9);
        // high but flat: no.
        let high = Pct {
            user: 95.0,
            system: 50.0,
            total: 99.0,
        };
        assert!(evaluate(&c, high, high).is_none());
        // total 95 rising by 60 fires even with user below its threshold.
        assert!(
            evaluate(
                &c,
                Pct {
                    user: 50.0,
                    system: 45.0,
                    total: 95.0
                },
                Pct { total: 35.0, ..z }
            )
            .is_some()
        );
    }
}
