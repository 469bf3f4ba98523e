//! `pressure`: host pressure stall information (PSI) from `/proc/pressure`.
//!
//! Each of `cpu`, `memory`, `io` and `irq` (6.1+ with
//! `CONFIG_IRQ_TIME_ACCOUNTING`) has a `some` line (at least one task
//! stalled) and, except for `cpu` before 5.13, a `full` line (all non-idle
//! tasks stalled). `total` is the cumulative stall time in microseconds and
//! becomes a counter in seconds; the kernel's running averages become
//! ratios (0..1) per window.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kotel_pipelines::{KeyValue, Metric, MetricData, Number};
use serde::{Deserialize, Serialize};

use super::disk::{counter, metric, point};
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode, spec::default_true,
};
use crate::procfs::{self, ProcFile};

const PRESSURE: &str = "/proc/pressure";
const RESOURCES: [&str; 4] = ["cpu", "memory", "io", "irq"];
const WINDOWS: [(&[u8], &str); 3] = [(b"avg10", "10s"), (b"avg60", "60s"), (b"avg300", "300s")];

pub struct Pressure;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Also export the kernel's 10 s / 60 s / 300 s averages as gauges.
    /// The stall-time counter alone lets any backend compute exact rates.
    pub averages: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            averages: true,
        }
    }
}

crate::common_settings!(Config);

impl CollectorSpec for Pressure {
    const NAME: &'static str = "pressure";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str =
        "Pressure stall information for cpu, memory, io, irq (/proc/pressure)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        probe_dir(Path::new(PRESSURE))
    }

    fn build(
        config: &Config,
        host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let collector = PressureCollector::new(Path::new(PRESSURE), config, host)?;
        Ok(Instance::metrics(
            config.interval,
            default_interval,
            collector,
        ))
    }
}

fn probe_dir(dir: &Path) -> Availability {
    if !dir.exists() {
        return Availability::Unavailable(format!(
            "{} not present (kernel without CONFIG_PSI)",
            dir.display()
        ));
    }
    // With psi=0 (or CONFIG_PSI_DEFAULT_DISABLED) the files exist but reads
    // fail with EOPNOTSUPP.
    match std::fs::read(dir.join("memory")) {
        Ok(_) => Availability::Available,
        Err(e) => Availability::Unavailable(format!(
            "{}: {e} (boot with psi=1)",
            dir.join("memory").display()
        )),
    }
}

struct PressureCollector {
    files: Vec<(&'static str, ProcFile)>,
    averages: bool,
    boot_time: u64,
}

impl PressureCollector {
    fn new(dir: &Path, config: &Config, host: &HostContext) -> anyhow::Result<Self> {
        let files: Vec<_> = RESOURCES
            .iter()
            .filter_map(|r| {
                let path: PathBuf = dir.join(r);
                // `irq` is absent without CONFIG_IRQ_TIME_ACCOUNTING.
                ProcFile::open(path).ok().map(|f| (*r, f))
            })
            .collect();
        if files.is_empty() {
            anyhow::bail!("no pressure files under {}", dir.display());
        }
        Ok(Self {
            files,
            averages: config.averages,
            boot_time: host.boot_time,
        })
    }
}

impl MetricsCollector for PressureCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let mut totals = Vec::with_capacity(2 * self.files.len());
        let mut ratios = Vec::with_capacity(6 * self.files.len());
        for (resource, file) in &mut self.files {
            let resource: &'static str = resource;
            let buf = file.read()?;
            for line in procfs::lines(buf) {
                let Some((kind, rest)) = procfs::first_field(line) else {
                    continue;
                };
                let kind: &'static str = match kind {
                    b"some" => "some",
                    b"full" => "full",
                    _ => continue,
                };
                let attrs = || {
                    vec![
                        KeyValue::new("linux.pressure.resource", resource),
                        KeyValue::new("linux.pressure.type", kind),
                    ]
                };
                for field in procfs::fields(rest) {
                    let Some(eq) = field.iter().position(|&b| b == b'=') else {
                        continue;
                    };
                    let (key, value) = (&field[..eq], &field[eq + 1..]);
                    if key == b"total" {
                        if let Some(us) = procfs::parse_u64(value) {
                            totals.push(point(
                                attrs(),
                                self.boot_time,
                                Number::Double(us as f64 / 1e6),
                            ));
                        }
                    } else if self.averages
                        && let Some((_, window)) = WINDOWS.iter().find(|(k, _)| *k == key)
                        && let Some(pct) = procfs::parse_f64(value)
                    {
                        let mut a = attrs();
                        a.push(KeyValue::new("linux.pressure.window", *window));
                        ratios.push(point(a, 0, Number::Double(pct / 100.0)));
                    }
                }
            }
        }
        if totals.is_empty() {
            anyhow::bail!("no some/full lines in {PRESSURE}");
        }
        out.push(metric(
            "linux.pressure.stall.time",
            "Time tasks were stalled on the resource: some = at least one task, full = all non-idle tasks at once",
            "s",
            counter(totals),
        ));
        if self.averages {
            out.push(metric(
                "linux.pressure.stall.ratio",
                "Share of wall time stalled on the resource, the kernel's running average over the window",
                "1",
                MetricData::Gauge(ratios),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kotel_pipelines::{NumberPoint, attr};

    fn host() -> HostContext {
        HostContext {
            boot_time: 1_700_000_000_000_000_000,
            agent_start: 1_700_000_100_000_000_000,
            clock_tick: 0.01,
            page_size: 4096,
            capture_dir: std::env::temp_dir(),
        }
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/host")
            .join(name)
    }

    fn collect(dir: &str, config: &Config) -> Vec<Metric> {
        let mut c = PressureCollector::new(&fixture(dir), config, &host()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        out
    }

    fn s<'a>(p: &'a NumberPoint, k: &str) -> Option<&'a str> {
        attr(&p.attributes, k).and_then(|v| v.as_str())
    }

    fn points(m: &Metric) -> &[NumberPoint] {
        match &m.data {
            MetricData::Gauge(p) | MetricData::Sum { points: p, .. } => p,
            MetricData::Histogram(_) => panic!("histogram"),
        }
    }

    fn get(m: &Metric, resource: &str, kind: &str, window: Option<&str>) -> Option<f64> {
        points(m)
            .iter()
            .find(|p| {
                s(p, "linux.pressure.resource") == Some(resource)
                    && s(p, "linux.pressure.type") == Some(kind)
                    && s(p, "linux.pressure.window") == window
            })
            .map(|p| p.value.as_f64())
    }

    #[test]
    fn machine_capture() {
        let out = collect("pressure", &Config::default());
        assert_eq!(out.len(), 2);
        let time = &out[0];
        assert_eq!(
            (time.name.as_ref(), time.unit.as_ref()),
            ("linux.pressure.stall.time", "s")
        );
        assert!(matches!(
            time.data,
            MetricData::Sum {
                monotonic: true,
                ..
            }
        ));
        assert_eq!(points(time).len(), 6);
        assert!(
            points(time)
                .iter()
                .all(|p| p.start_time == host().boot_time)
        );
        // cpu: some total=487219529 µs
        assert_eq!(get(time, "cpu", "some", None), Some(500.070004));
        assert_eq!(get(time, "memory", "full", None), Some(0.036409));
        assert_eq!(get(time, "io", "some", None), Some(16.076966));
        assert_eq!(get(time, "irq", "full", None), None);

        let ratio = &out[1];
        assert_eq!(ratio.unit, "1");
        assert!(matches!(ratio.data, MetricData::Gauge(_)));
        assert_eq!(points(ratio).len(), 18);
        let close = |v: Option<f64>, want: f64| (v.unwrap() - want).abs() < 1e-12;
        assert!(close(get(ratio, "cpu", "some", Some("300s")), 0.3912));
        assert!(close(get(ratio, "io", "full", Some("60s")), 0.0013));
        assert!(
            points(ratio)
                .iter()
                .all(|p| (0.0..=1.0).contains(&p.value.as_f64()))
        );
    }

    #[test]
    fn irq_and_old_kernel() {
        let out = collect("pressure-irq", &Config::default());
        assert_eq!(get(&out[0], "irq", "full", None), Some(1.834567));
        assert_eq!(get(&out[0], "irq", "some", None), None);
        let r = get(&out[1], "irq", "full", Some("60s")).unwrap();
        assert!((r - 0.0005).abs() < 1e-12);

        // Before 5.13 the host cpu file has no "full" line.
        let old = collect("pressure-old", &Config::default());
        assert_eq!(get(&old[0], "cpu", "full", None), None);
        assert!(get(&old[0], "cpu", "some", None).is_some());
        assert_eq!(points(&old[0]).len(), 5);
    }

    #[test]
    fn averages_off() {
        let out = collect(
            "pressure",
            &Config {
                averages: false,
                ..Config::default()
            },
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, "linux.pressure.stall.time");
    }

    #[test]
    fn missing_directory_is_unavailable() {
        let missing = fixture("no-such-dir");
        match probe_dir(&missing) {
            Availability::Unavailable(why) => assert!(why.contains("CONFIG_PSI"), "{why}"),
            Availability::Available => panic!("available"),
        }
        assert_eq!(probe_dir(&fixture("pressure")), Availability::Available);
        assert!(PressureCollector::new(&missing, &Config::default(), &host()).is_err());
    }
}
