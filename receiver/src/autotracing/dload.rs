//! `dload`: D-state (uninterruptible) load per container and for the host,
//! cgroup v1 and v2 (HUATUO `dload` is cgroup-v1 only).
//!
//! Every interval a BPF task iterator lists the tasks in D state (skipping
//! `TASK_NOLOAD` idle kworkers) with their v2 and v1 `cpu` cgroup ids; each
//! is counted for the host and for the watched cgroup containing it. Each
//! count feeds an exponential moving average like the kernel's load average:
//!
//! `avg ← avg·e^(−Δt/W) + n·(1 − e^(−Δt/W))`
//!
//! with Δt the measured time since the previous check and W = `ema_window`
//! (60 s: the 1-minute average). The kernel samples every 5 s with the fixed
//! factor `EXP_1 = 1884/2048 = e^(−5/60)`; using the real Δt keeps the
//! window 1 minute at any check interval (HUATUO reused the kernel's
//! constants at a 10 s interval, which makes its "1-minute" average a
//! 2-minute one). Trigger when `avg > threshold` (HUATUO: 5).
//!
//! Capture: the kernel stacks of every D-state task in scope (host: all),
//! grouped by identical stack with counts and tasks. Record
//! `linux.autotrace.dload`; the full grouping goes to a text artifact.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kotel_pipelines::{EventRecord, KeyValue, Value};
use serde::{Deserialize, Serialize};

use super::dstacks::{self, DTask, DstateIter};
use super::scope::{Scope, Scopes};
use crate::framework::{
    Availability, CollectorSpec, Detector, HostContext, Instance, Mode, Trigger, spec::default_true,
};

pub struct Dload;

const NAME: &str = "dload";

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
    /// D-state load average above which a scope is anomalous.
    pub threshold: f64,
    /// Time constant of the moving average (60 s = the 1-minute load).
    #[serde(with = "humantime_serde")]
    pub ema_window: Duration,
    /// Watch the host as a whole.
    pub host: bool,
    /// Watch containers.
    pub containers: bool,
    /// Also watch cgroups whose path matches one of these regexes.
    pub cgroups: Vec<String>,
    /// Stack groups in the record (largest first); all go to the artifact.
    pub max_groups: usize,
    /// Tasks listed per stack group in the record.
    pub max_tasks: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            cooldown: super::DEFAULT_COOLDOWN,
            cpu_budget: super::DEFAULT_CPU_BUDGET,
            threshold: 5.0,
            ema_window: Duration::from_secs(60),
            host: true,
            containers: true,
            cgroups: Vec::new(),
            max_groups: 16,
            max_tasks: 16,
        }
    }
}

crate::common_settings!(Config);

impl CollectorSpec for Dload {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Autotracing;
    const ABOUT: &'static str =
        "D-state load per container and host, cgroup v1+v2 (BPF task iterator) -> D-state stacks";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        crate::events::bpf::probe(&kotel_ebpf::preflight::Requirements {
            task_iter: true,
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
            detector: Box::new(DloadDetector::new(
                config.clone(),
                host.capture_dir.clone(),
            )?),
        })
    }
}

/// One step of the moving average over `dt` with time constant `window`.
pub fn ema_step(avg: f64, n: f64, dt: Duration, window: Duration) -> f64 {
    let w = window.as_secs_f64().max(1e-3);
    let a = (-dt.as_secs_f64() / w).exp();
    avg * a + n * (1.0 - a)
}

pub struct DloadDetector {
    config: Config,
    scopes: Scopes,
    iter: DstateIter,
    capture_dir: std::path::PathBuf,
    avg: HashMap<String, f64>,
    last: Option<Instant>,
    watched: HashMap<String, Scope>,
}

/// The cgroup paths of a D-state task: from its BPF cgroup ids, else from
/// `/proc/<pid>/cgroup`.
fn task_paths(t: &DTask) -> Vec<String> {
    let mut out = Vec::new();
    if t.cg_v2 != 0
        && let Some(c) = crate::cgroups::resolve_cgroup_id(t.cg_v2)
    {
        out.push(c.path.to_string());
    }
    if t.cg_cpu != 0
        && let Some(c) = crate::cgroups::resolve_controller_id("cpu", t.cg_cpu)
    {
        out.push(c.path.to_string());
    }
    if out.is_empty()
        && let Ok(text) = std::fs::read_to_string(format!("/proc/{}/cgroup", t.pid))
    {
        for line in text.lines() {
            if let Some(p) = line.splitn(3, ':').nth(2) {
                out.push(p.to_string());
            }
        }
    }
    out
}

fn in_scope(scope: &Scope, paths: &[String]) -> bool {
    paths.iter().any(|p| scope.contains(p))
}

impl DloadDetector {
    pub fn new(config: Config, capture_dir: std::path::PathBuf) -> anyhow::Result<Self> {
        Ok(Self {
            scopes: Scopes::new(&config.cgroups, config.containers)?,
            iter: DstateIter::load()?,
            config,
            capture_dir,
            avg: HashMap::new(),
            last: None,
            watched: HashMap::new(),
        })
    }
}

impl Detector for DloadDetector {
    fn capture_cpu_budget(&self) -> Option<f64> {
        (self.config.cpu_budget > 0.0).then_some(self.config.cpu_budget)
    }

    fn check(&mut self) -> anyhow::Result<Vec<Trigger>> {
        let tasks = self.iter.tasks()?;
        let now = Instant::now();
        let dt = self.last.map(|t| now - t).unwrap_or(Duration::ZERO);
        self.last = Some(now);
        let scopes = if self.config.containers || !self.config.cgroups.is_empty() {
            self.scopes.list()
        } else {
            Vec::new()
        };
        let mut counts: HashMap<&str, u64> = scopes.iter().map(|s| (s.key.as_str(), 0)).collect();
        if !tasks.is_empty() && !scopes.is_empty() {
            for t in &tasks {
                let paths = task_paths(t);
                // A task counts for the deepest watched cgroup containing it.
                if let Some(s) = scopes
                    .iter()
                    .filter(|s| in_scope(s, &paths))
                    .max_by_key(|s| s.path.len())
                {
                    *counts.entry(s.key.as_str()).or_default() += 1;
                }
            }
        }
        let mut out = Vec::new();
        let mut next: HashMap<String, f64> = HashMap::new();
        let mut consider = |key: &str, n: u64, scope: Option<&Scope>, out: &mut Vec<Trigger>| {
            let prev = self.avg.get(key).copied().unwrap_or(0.0);
            let avg = ema_step(prev, n as f64, dt, self.config.ema_window);
            next.insert(key.to_string(), avg);
            if avg > self.config.threshold {
                let mut a = vec![
                    KeyValue::new("linux.autotrace.scope", key.to_string()),
                    KeyValue::new(
                        "linux.autotrace.window",
                        self.config.ema_window.as_secs_f64(),
                    ),
                    KeyValue::new("linux.dload.tasks", n),
                    KeyValue::new("linux.dload.avg", avg),
                    KeyValue::new("linux.dload.threshold", self.config.threshold),
                ];
                if let Some(s) = scope {
                    a.extend(s.attributes.iter().cloned());
                }
                out.push(Trigger {
                    scope: key.to_string(),
                    excess: avg - self.config.threshold,
                    attributes: a,
                });
            }
        };
        if self.config.host {
            consider("host", tasks.len() as u64, None, &mut out);
        }
        for s in &scopes {
            consider(
                &s.key,
                counts.get(s.key.as_str()).copied().unwrap_or(0),
                Some(s),
                &mut out,
            );
        }
        self.avg = next;
        self.watched = scopes.into_iter().map(|s| (s.key.clone(), s)).collect();
        Ok(out)
    }

    fn capture(&mut self, trigger: &Trigger) -> anyhow::Result<EventRecord> {
        let tasks = self.iter.tasks_with_stacks()?;
        let host_total = tasks.len();
        let scoped: Vec<DTask> = match self.watched.get(&trigger.scope) {
            Some(scope) => tasks
                .iter()
                .filter(|t| in_scope(scope, &task_paths(t)))
                .cloned()
                .collect(),
            None => tasks.clone(),
        };
        let groups = dstacks::group(&scoped);
        let mut r = super::base_record(NAME, trigger);
        r.attributes.push(KeyValue::new(
            "linux.dload.captured.tasks",
            scoped.len() as u64,
        ));
        r.attributes
            .push(KeyValue::new("linux.dload.host.tasks", host_total as u64));
        r.attributes.push(KeyValue::new(
            "linux.dload.stack_groups",
            groups.len() as u64,
        ));
        let mut text = format!(
            "# D-state tasks in {} ({} tasks)\n\n",
            trigger.scope,
            scoped.len()
        );
        text.push_str(&dstacks::groups_text(&groups));
        if self.watched.contains_key(&trigger.scope) {
            text.push_str(&format!(
                "# D-state tasks on the host ({host_total} tasks)\n\n"
            ));
            text.push_str(&dstacks::groups_text(&dstacks::group(&tasks)));
        }
        let base = super::artifacts::base_name(r.time, &trigger.scope);
        match super::artifacts::write(&self.capture_dir, NAME, &base, "txt", text.as_bytes()) {
            Ok(p) => r.attributes.push(super::artifacts_attribute(&[p])),
            Err(e) => r.attributes.push(KeyValue::new(
                "linux.autotrace.artifacts.error",
                format!("{e:#}"),
            )),
        }
        r.body = Some(Value::Map(vec![KeyValue::new(
            "stack_groups",
            dstacks::groups_value(&groups, self.config.max_groups, self.config.max_tasks),
        )]));
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_matches_the_kernel_constant() {
        // The kernel's EXP_1 = 1884/2048 is e^(-5/60).
        let a = ema_step(1.0, 0.0, Duration::from_secs(5), Duration::from_secs(60));
        assert!((a - 1884.0 / 2048.0).abs() < 1e-3, "{a}");
        // Constant load n converges to n.
        let mut v = 0.0;
        for _ in 0..100 {
            v = ema_step(v, 8.0, Duration::from_secs(10), Duration::from_secs(60));
        }
        assert!((v - 8.0).abs() < 1e-6);
        // No time passed: no change.
        assert_eq!(
            ema_step(3.0, 9.0, Duration::ZERO, Duration::from_secs(60)),
            3.0
        );
    }
}
