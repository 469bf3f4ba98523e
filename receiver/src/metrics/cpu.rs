//! `cpu`: CPU time, utilization and scheduler counters from `/proc/stat`.
//!
//! `guest` and `guest_nice` time are already included in `user` and `nice`
//! by the kernel, so they are not reported as modes of their own (that would
//! count guest time twice in a sum over modes).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use kotel_pipelines::{KeyValue, Metric, MetricData, Number, NumberPoint};
use serde::{Deserialize, Serialize};

use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode, spec::default_true,
};
use crate::procfs::{self, ProcFile};

const STAT: &str = "/proc/stat";

/// `cpu.mode` values, in `/proc/stat` column order (guest columns excluded).
const MODES: [&str; 8] = [
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "interrupt",
    "softirq",
    "steal",
];

pub struct Cpu;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Report `system.cpu.time` per logical CPU (`true`) or only the
    /// host-wide total without `cpu.logical_number` (`false`).
    pub per_cpu: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            per_cpu: true,
        }
    }
}

crate::common_settings!(Config);

impl CollectorSpec for Cpu {
    const NAME: &'static str = "cpu";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str =
        "CPU time per mode, utilization, context switches, forks and interrupts (/proc/stat)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        crate::framework::spec::probe_path(STAT)
    }

    fn build(
        config: &Config,
        host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let collector = CpuCollector::new(Path::new(STAT), config, host)?;
        Ok(Instance::metrics(
            config.interval,
            default_interval,
            collector,
        ))
    }
}

/// Tick counters of one `cpu` line: `n` of the [`MODES`] columns present
/// (older kernels have fewer columns).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Times {
    ticks: [u64; MODES.len()],
    n: usize,
}

impl Times {
    fn parse(rest: &[u8]) -> Option<Self> {
        let mut t = Times::default();
        for field in procfs::fields(rest).take(MODES.len()) {
            t.ticks[t.n] = procfs::parse_u64(field)?;
            t.n += 1;
        }
        (t.n > 0).then_some(t)
    }
}

/// One parse of `/proc/stat`; `cpus` is reused across collections.
#[derive(Debug, Default)]
struct Stat {
    total: Option<Times>,
    cpus: Vec<(u32, Times)>,
    intr: Option<u64>,
    ctxt: Option<u64>,
    processes: Option<u64>,
    running: Option<u64>,
    blocked: Option<u64>,
    softirq: Option<u64>,
}

impl Stat {
    fn parse(&mut self, buf: &[u8]) -> anyhow::Result<()> {
        self.total = None;
        self.cpus.clear();
        self.intr = None;
        self.ctxt = None;
        self.processes = None;
        self.running = None;
        self.blocked = None;
        self.softirq = None;
        for line in procfs::lines(buf) {
            let Some((key, rest)) = procfs::first_field(line) else {
                continue;
            };
            let first = || procfs::fields(rest).next().and_then(procfs::parse_u64);
            match key {
                b"cpu" => {
                    self.total = Some(Times::parse(rest).context("malformed aggregate cpu line")?)
                }
                b"intr" => self.intr = first(),
                b"ctxt" => self.ctxt = first(),
                b"processes" => self.processes = first(),
                b"procs_running" => self.running = first(),
                b"procs_blocked" => self.blocked = first(),
                b"softirq" => self.softirq = first(),
                _ => {
                    if let Some(num) = key.strip_prefix(b"cpu") {
                        let id = procfs::parse_u64(num).and_then(|n| u32::try_from(n).ok());
                        if let (Some(id), Some(times)) = (id, Times::parse(rest)) {
                            self.cpus.push((id, times));
                        }
                    }
                }
            }
        }
        if self.total.is_none() {
            anyhow::bail!("no aggregate cpu line");
        }
        Ok(())
    }
}

struct CpuCollector {
    file: ProcFile,
    stat: Stat,
    prev: Option<Times>,
    per_cpu: bool,
    clock_tick: f64,
    boot_time: u64,
    /// Highest tick count reported per (cpu, mode): iowait (and idle on
    /// NO_HZ kernels) can step backwards in /proc/stat, and a cumulative
    /// counter must not, or backends see a counter reset.
    high_water: std::collections::HashMap<Option<u32>, [u64; MODES.len()]>,
}

impl CpuCollector {
    fn new(path: &Path, config: &Config, host: &HostContext) -> anyhow::Result<Self> {
        Ok(Self {
            file: ProcFile::open(path)?,
            stat: Stat::default(),
            prev: None,
            per_cpu: config.per_cpu,
            clock_tick: host.clock_tick,
            boot_time: host.boot_time,
            high_water: std::collections::HashMap::new(),
        })
    }

    fn time_points(&mut self, id: Option<u32>, t: &Times, points: &mut Vec<NumberPoint>) {
        let high = self.high_water.entry(id).or_insert([0; MODES.len()]);
        for ((mode, &ticks), high) in MODES.iter().zip(&t.ticks[..t.n]).zip(high.iter_mut()) {
            *high = (*high).max(ticks);
            let ticks = *high;
            let mut attributes = Vec::with_capacity(2);
            if let Some(id) = id {
                attributes.push(KeyValue::new("cpu.logical_number", id));
            }
            attributes.push(KeyValue::new("cpu.mode", *mode));
            points.push(NumberPoint {
                attributes,
                start_time: self.boot_time,
                value: Number::Double(ticks as f64 * self.clock_tick),
            });
        }
    }
}

fn metric(
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

fn point(value: Number, start_time: u64) -> NumberPoint {
    NumberPoint {
        attributes: Vec::new(),
        start_time,
        value,
    }
}

impl MetricsCollector for CpuCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let buf = self.file.read()?;
        self.stat
            .parse(buf)
            .with_context(|| format!("parsing {}", self.file.path().display()))?;
        let total = self.stat.total.unwrap_or_default();

        let mut points = Vec::with_capacity(MODES.len() * self.stat.cpus.len().max(1));
        if self.per_cpu {
            let cpus = std::mem::take(&mut self.stat.cpus);
            for (id, t) in &cpus {
                self.time_points(Some(*id), t, &mut points);
            }
            self.stat.cpus = cpus;
        } else {
            self.time_points(None, &total, &mut points);
        }
        out.push(metric(
            "system.cpu.time",
            "Seconds each logical CPU spent in each mode (guest time is included in user and nice)",
            "s",
            MetricData::Sum {
                monotonic: true,
                points,
            },
        ));

        if let Some(prev) = self.prev {
            let n = prev.n.min(total.n);
            let mut deltas = [0u64; MODES.len()];
            for (d, (now, then)) in deltas
                .iter_mut()
                .zip(total.ticks[..n].iter().zip(&prev.ticks[..n]))
            {
                // iowait (and idle on NO_HZ kernels) can step backwards.
                *d = now.saturating_sub(*then);
            }
            let sum: u64 = deltas.iter().sum();
            if sum > 0 {
                let points = MODES[..n]
                    .iter()
                    .zip(deltas)
                    .map(|(mode, d)| NumberPoint {
                        attributes: vec![KeyValue::new("cpu.mode", *mode)],
                        start_time: 0,
                        value: Number::Double(d as f64 / sum as f64),
                    })
                    .collect();
                out.push(metric(
                    "system.cpu.utilization",
                    "Share of host CPU time spent in each mode since the previous collection",
                    "1",
                    MetricData::Gauge(points),
                ));
            }
        }
        self.prev = Some(total);

        out.push(metric(
            "system.cpu.logical.count",
            "Number of online logical CPUs",
            "{cpu}",
            MetricData::Gauge(vec![point(Number::Int(self.stat.cpus.len() as i64), 0)]),
        ));

        let boot = self.boot_time;
        let counters: [(&'static str, &'static str, &'static str, Option<u64>); 4] = [
            (
                "linux.cpu.context_switches",
                "Context switches since boot",
                "{context_switch}",
                self.stat.ctxt,
            ),
            (
                "system.process.created",
                "Processes and threads created (forks and clones) since boot",
                "{process}",
                self.stat.processes,
            ),
            (
                "linux.cpu.interrupts",
                "Hardware interrupts serviced since boot, all sources",
                "{interrupt}",
                self.stat.intr,
            ),
            (
                "linux.cpu.softirqs",
                "Softirqs serviced since boot, all types",
                "{softirq}",
                self.stat.softirq,
            ),
        ];
        for (name, description, unit, value) in counters {
            if let Some(v) = value {
                let points = vec![point(Number::Int(to_i64(v)), boot)];
                out.push(metric(
                    name,
                    description,
                    unit,
                    MetricData::Sum {
                        monotonic: true,
                        points,
                    },
                ));
            }
        }
        let gauges: [(&'static str, &'static str, Option<u64>); 2] = [
            (
                "linux.process.running",
                "Runnable threads right now (procs_running)",
                self.stat.running,
            ),
            (
                "linux.process.blocked",
                "Threads blocked waiting for I/O right now (procs_blocked)",
                self.stat.blocked,
            ),
        ];
        for (name, description, value) in gauges {
            if let Some(v) = value {
                out.push(metric(
                    name,
                    description,
                    "{process}",
                    MetricData::Gauge(vec![point(Number::Int(to_i64(v)), 0)]),
                ));
            }
        }
        Ok(())
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kotel_pipelines::attr;

    pub(crate) fn host() -> HostContext {
        HostContext {
            boot_time: 1_700_000_000_000_000_000,
            agent_start: 1_700_000_100_000_000_000,
            clock_tick: 0.01,
            page_size: 4096,
            capture_dir: std::env::temp_dir(),
        }
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/proc")
            .join(name)
    }

    fn collect(path: &Path, per_cpu: bool) -> Vec<Metric> {
        let config = Config {
            per_cpu,
            ..Config::default()
        };
        let mut c = CpuCollector::new(path, &config, &host()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        out
    }

    #[test]
    fn iowait_stepping_backwards_never_lowers_the_counter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stat");
        let line = |iowait: u64| {
            format!(
                "cpu  100 0 50 1000 {iowait} 0 0 0 0 0\ncpu0 100 0 50 1000 {iowait} 0 0 0 0 0\n"
            )
        };
        std::fs::write(&path, line(500)).unwrap();
        let mut c = CpuCollector::new(&path, &Config::default(), &host()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        std::fs::write(&path, line(480)).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        let pts = points(find(&out, "system.cpu.time"));
        let iowait = pts.iter().find(|p| value(p, Some(0), "iowait")).unwrap();
        assert_eq!(iowait.value, Number::Double(500.0 * 0.01));
    }

    fn find<'a>(out: &'a [Metric], name: &str) -> &'a Metric {
        out.iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    fn points(m: &Metric) -> &[NumberPoint] {
        match &m.data {
            MetricData::Gauge(p) | MetricData::Sum { points: p, .. } => p,
            MetricData::Histogram(_) => panic!("histogram"),
        }
    }

    fn value(p: &NumberPoint, cpu: Option<i64>, mode: &str) -> bool {
        let cpu_ok = match cpu {
            Some(c) => {
                attr(&p.attributes, "cpu.logical_number") == Some(&kotel_pipelines::Value::Int(c))
            }
            None => attr(&p.attributes, "cpu.logical_number").is_none(),
        };
        cpu_ok && attr(&p.attributes, "cpu.mode").and_then(|v| v.as_str()) == Some(mode)
    }

    #[test]
    fn parses_real_stat() {
        let out = collect(&fixture("stat"), true);
        let time = find(&out, "system.cpu.time");
        assert_eq!(time.unit, "s");
        assert!(matches!(
            time.data,
            MetricData::Sum {
                monotonic: true,
                ..
            }
        ));
        let pts = points(time);
        // fixture: 2 CPUs, 8 modes each.
        assert_eq!(pts.len(), 16);
        let user0 = pts.iter().find(|p| value(p, Some(0), "user")).unwrap();
        assert_eq!(user0.value, Number::Double(14263.0 * 0.01));
        assert_eq!(user0.start_time, host().boot_time);
        let steal1 = pts.iter().find(|p| value(p, Some(1), "steal")).unwrap();
        assert_eq!(steal1.value, Number::Double(28.0 * 0.01));
        assert!(
            pts.iter()
                .all(|p| attr(&p.attributes, "cpu.mode").and_then(|v| v.as_str()) != Some("guest"))
        );
        assert_eq!(
            points(find(&out, "system.cpu.logical.count"))[0].value,
            Number::Int(2)
        );
        assert_eq!(
            points(find(&out, "linux.cpu.context_switches"))[0].value,
            Number::Int(1355758)
        );
        assert_eq!(
            points(find(&out, "system.process.created"))[0].value,
            Number::Int(15808)
        );
        assert_eq!(
            points(find(&out, "linux.cpu.interrupts"))[0].value,
            Number::Int(891873)
        );
        assert_eq!(
            points(find(&out, "linux.cpu.softirqs"))[0].value,
            Number::Int(314451)
        );
        assert_eq!(
            points(find(&out, "linux.process.running"))[0].value,
            Number::Int(5)
        );
        assert_eq!(
            points(find(&out, "linux.process.blocked"))[0].value,
            Number::Int(0)
        );
        // No utilization on the first collection.
        assert!(out.iter().all(|m| m.name != "system.cpu.utilization"));
    }

    #[test]
    fn aggregate_only() {
        let out = collect(&fixture("stat"), false);
        let pts = points(find(&out, "system.cpu.time"));
        assert_eq!(pts.len(), 8);
        let idle = pts.iter().find(|p| value(p, None, "idle")).unwrap();
        assert_eq!(idle.value, Number::Double(158227.0 * 0.01));
        assert_eq!(
            points(find(&out, "system.cpu.logical.count"))[0].value,
            Number::Int(2)
        );
    }

    #[test]
    fn hot_unplug_gap() {
        let out = collect(&fixture("stat-cpu-gap"), true);
        let pts = points(find(&out, "system.cpu.time"));
        assert_eq!(pts.len(), 16);
        assert!(pts.iter().any(|p| value(p, Some(0), "user")));
        assert!(pts.iter().any(|p| value(p, Some(2), "user")));
        assert!(!pts.iter().any(|p| value(p, Some(1), "user")));
        assert_eq!(
            points(find(&out, "system.cpu.logical.count"))[0].value,
            Number::Int(2)
        );
    }

    #[test]
    fn old_kernel_without_steal_and_softirq() {
        let out = collect(&fixture("stat-old"), true);
        let pts = points(find(&out, "system.cpu.time"));
        // 7 columns (no steal/guest) on 2 CPUs.
        assert_eq!(pts.len(), 14);
        assert!(!pts.iter().any(|p| value(p, Some(0), "steal")));
        assert!(out.iter().all(|m| m.name != "linux.cpu.softirqs"));
        assert_eq!(
            points(find(&out, "linux.cpu.context_switches"))[0].value,
            Number::Int(2345678)
        );
    }

    #[test]
    fn utilization_from_delta() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stat");
        std::fs::write(
            &path,
            "cpu  100 0 100 800 0 0 0 0 50 0\ncpu0 100 0 100 800 0 0 0 0 50 0\n",
        )
        .unwrap();
        let mut c = CpuCollector::new(&path, &Config::default(), &host()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        assert!(out.iter().all(|m| m.name != "system.cpu.utilization"));
        // +30 user (of which 10 guest), +10 system, +60 idle; iowait going backwards counts as 0.
        std::fs::write(
            &path,
            "cpu  130 0 110 860 0 0 0 0 60 0\ncpu0 130 0 110 860 0 0 0 0 60 0\n",
        )
        .unwrap();
        out.clear();
        c.collect(&mut out).unwrap();
        let util = find(&out, "system.cpu.utilization");
        assert_eq!(util.unit, "1");
        let pts = points(util);
        assert_eq!(pts.len(), 8);
        let get = |mode: &str| {
            pts.iter()
                .find(|p| value(p, None, mode))
                .unwrap()
                .value
                .as_f64()
        };
        assert!((get("user") - 0.3).abs() < 1e-9);
        assert!((get("system") - 0.1).abs() < 1e-9);
        assert!((get("idle") - 0.6).abs() < 1e-9);
        let sum: f64 = pts.iter().map(|p| p.value.as_f64()).sum();
        assert!((sum - 1.0).abs() < 1e-9);
    }

    #[test]
    fn malformed_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stat");
        std::fs::write(&path, "intr 5\n").unwrap();
        let mut c = CpuCollector::new(&path, &Config::default(), &host()).unwrap();
        let err = c.collect(&mut Vec::new()).unwrap_err();
        assert!(
            format!("{err:#}").contains("no aggregate cpu line"),
            "{err:#}"
        );
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = CpuCollector::new(Path::new("/nonexistent/stat"), &Config::default(), &host())
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/stat"), "{err}");
    }

    #[test]
    fn config_rejects_unknown_keys() {
        let c: Config = serde_json::from_str(r#"{"per_cpu": false, "interval": "5s"}"#).unwrap();
        assert!(!c.per_cpu && c.enabled);
        assert_eq!(c.interval, Some(Duration::from_secs(5)));
        assert!(serde_json::from_str::<Config>(r#"{"percpu": false}"#).is_err());
    }
}
