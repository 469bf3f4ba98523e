//! `cpusys`: host system CPU surge (HUATUO `cpusys`).
//!
//! Every interval: the system share of all CPU time since the previous
//! sample (aggregate `cpu` line of `/proc/stat`), and its change since the
//! previous interval. Trigger when `system % > sys_threshold` and
//! `Δ system % > sys_delta_threshold` (HUATUO: 45 and 20). Capture: a
//! host-wide CPU profile (see [`super::profile`]).
//! Record `linux.autotrace.cpusys`.

use std::time::{Duration, Instant};

use kotel_pipelines::{EventRecord, KeyValue};
use serde::{Deserialize, Serialize};

use super::{ProfileSettings, profile::ProfileScope};
use crate::framework::{
    Availability, CollectorSpec, Detector, HostContext, Instance, Mode, Trigger, spec::default_true,
};
use crate::procfs::{self, ProcFile};

pub struct Cpusys;

const NAME: &str = "cpusys";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Time between two captures (host scope).
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Skip captures while kotel used more than this many CPUs over the
    /// last minute (0: no budget).
    pub cpu_budget: f64,
    /// System CPU % (of all CPUs) above which the host is anomalous.
    pub sys_threshold: f64,
    /// ... and by how many points it must have risen since the last sample.
    pub sys_delta_threshold: f64,
    /// Length of the CPU profile.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Samples per second per CPU.
    pub frequency: u64,
    /// Functions and processes listed in the record.
    pub top: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            cooldown: super::DEFAULT_COOLDOWN,
            cpu_budget: super::DEFAULT_CPU_BUDGET,
            sys_threshold: 45.0,
            sys_delta_threshold: 20.0,
            duration: Duration::from_secs(10),
            frequency: 99,
            top: 20,
        }
    }
}

crate::common_settings!(Config);

impl CollectorSpec for Cpusys {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Autotracing;
    const ABOUT: &'static str =
        "host system CPU surge (/proc/stat) -> host CPU flame graph (BPF perf_event 99 Hz)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        super::probe_profiling()
    }

    fn build(
        config: &Config,
        host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let interval = config.interval.unwrap_or(default_interval);
        Ok(Instance::Autotracing {
            interval,
            cooldown: config.cooldown,
            detector: Box::new(CpusysDetector::new(
                "/proc/stat",
                config.clone(),
                host.capture_dir.clone(),
            )?),
        })
    }
}

/// Busy and system jiffies of the aggregate `cpu` line.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    pub total: u64,
    pub system: u64,
}

/// Parse the aggregate `cpu` line: total = user..steal (guest is already in
/// user/nice), system = the third column.
pub fn parse_cpu_line(buf: &[u8]) -> Option<CpuTimes> {
    let line = procfs::lines(buf).next()?;
    let mut f = procfs::fields(line);
    if f.next()? != b"cpu" {
        return None;
    }
    let vals: Vec<u64> = f.take(8).filter_map(procfs::parse_u64).collect();
    if vals.len() < 4 {
        return None;
    }
    Some(CpuTimes {
        total: vals.iter().sum(),
        system: vals[2],
    })
}

pub struct CpusysDetector {
    stat: ProcFile,
    config: Config,
    capture_dir: std::path::PathBuf,
    prev: Option<CpuTimes>,
    prev_pct: Option<f64>,
    last_check: Option<Instant>,
}

impl CpusysDetector {
    pub fn new(
        path: &str,
        config: Config,
        capture_dir: std::path::PathBuf,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            stat: ProcFile::open(path)?,
            config,
            capture_dir,
            prev: None,
            prev_pct: None,
            last_check: None,
        })
    }
}

impl Detector for CpusysDetector {
    fn capture_cpu_budget(&self) -> Option<f64> {
        (self.config.cpu_budget > 0.0).then_some(self.config.cpu_budget)
    }

    fn check(&mut self) -> anyhow::Result<Vec<Trigger>> {
        let now = parse_cpu_line(self.stat.read()?)
            .ok_or_else(|| anyhow::anyhow!("/proc/stat: no aggregate cpu line"))?;
        let window = self.last_check.map(|t| t.elapsed());
        self.last_check = Some(Instant::now());
        let Some(prev) = self.prev.replace(now) else {
            return Ok(Vec::new());
        };
        let pct = super::percent(
            now.system.saturating_sub(prev.system) as f64,
            now.total.saturating_sub(prev.total) as f64,
        );
        let Some(prev_pct) = self.prev_pct.replace(pct) else {
            return Ok(Vec::new());
        };
        let delta = pct - prev_pct;
        let c = &self.config;
        if !(pct > c.sys_threshold && delta > c.sys_delta_threshold) {
            return Ok(Vec::new());
        }
        let attributes = vec![
            KeyValue::new("linux.autotrace.scope", "host"),
            KeyValue::new(
                "linux.autotrace.window",
                window.unwrap_or_default().as_secs_f64(),
            ),
            KeyValue::new("linux.cpu.system.percent", pct),
            KeyValue::new("linux.cpu.system.percent.threshold", c.sys_threshold),
            KeyValue::new("linux.cpu.system.percent.delta", delta),
            KeyValue::new(
                "linux.cpu.system.percent.delta.threshold",
                c.sys_delta_threshold,
            ),
        ];
        Ok(vec![Trigger {
            scope: "host".into(),
            excess: (pct - c.sys_threshold) + (delta - c.sys_delta_threshold),
            attributes,
        }])
    }

    fn capture(&mut self, trigger: &Trigger) -> anyhow::Result<EventRecord> {
        super::profile_record(
            NAME,
            trigger,
            ProfileScope::Host,
            ProfileSettings {
                duration: self.config.duration,
                frequency: self.config.frequency,
                top: self.config.top,
            },
            &self.capture_dir,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_aggregate_line() {
        let t = parse_cpu_line(b"cpu  100 5 50 800 10 1 2 3 7 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(t.system, 50);
        assert_eq!(t.total, 100 + 5 + 50 + 800 + 10 + 1 + 2 + 3);
        assert!(parse_cpu_line(b"intr 1 2").is_none());
    }

    #[test]
    fn triggers_on_level_and_rise() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stat");
        let write = |user: u64, sys: u64, idle: u64| {
            std::fs::write(&p, format!("cpu  {user} 0 {sys} {idle} 0 0 0 0 0 0\n")).unwrap();
        };
        write(0, 0, 0);
        let mut d =
            CpusysDetector::new(p.to_str().unwrap(), Config::default(), dir.path().into()).unwrap();
        assert!(d.check().unwrap().is_empty());
        write(90, 10, 100); // 5 % sys
        assert!(d.check().unwrap().is_empty());
        write(100, 90, 110); // 80/100 = 80 % sys, +75
        let t = d.check().unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].scope, "host");
        assert!((t[0].excess - (35.0 + 55.0)).abs() < 1e-9);
        write(110, 170, 120); // still 80 %, but no rise
        assert!(d.check().unwrap().is_empty());
    }
}
