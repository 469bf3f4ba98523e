//! `load`: load averages and the thread count from `/proc/loadavg`.

use std::path::Path;
use std::time::Duration;

use kotel_pipelines::{Metric, MetricData, Number, NumberPoint};

use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode,
};
use crate::procfs::{self, ProcFile};

const LOADAVG: &str = "/proc/loadavg";

pub struct Load;

/// No settings beyond `enabled` and `interval`.
pub type Config = crate::framework::spec::BasicConfig;

impl CollectorSpec for Load {
    const NAME: &'static str = "load";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str = "1/5/15-minute load averages and thread count (/proc/loadavg)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        crate::framework::spec::probe_path(LOADAVG)
    }

    fn build(
        config: &Config,
        _host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let collector = LoadCollector::new(Path::new(LOADAVG))?;
        Ok(Instance::metrics(
            config.interval,
            default_interval,
            collector,
        ))
    }
}

/// The parsed fields of `/proc/loadavg`: `0.20 0.18 0.12 1/80 11206`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LoadAvg {
    load: [f64; 3],
    threads: u64,
}

fn parse(buf: &[u8]) -> Option<LoadAvg> {
    let mut f = procfs::fields(buf);
    let load = [
        procfs::parse_f64(f.next()?)?,
        procfs::parse_f64(f.next()?)?,
        procfs::parse_f64(f.next()?)?,
    ];
    // `running/total` scheduling entities.
    let entities = f.next()?;
    let slash = entities.iter().position(|&b| b == b'/')?;
    let threads = procfs::parse_u64(&entities[slash + 1..])?;
    Some(LoadAvg { load, threads })
}

struct LoadCollector {
    file: ProcFile,
}

impl LoadCollector {
    fn new(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            file: ProcFile::open(path)?,
        })
    }
}

fn gauge(
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    value: Number,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: MetricData::Gauge(vec![NumberPoint {
            attributes: Vec::new(),
            start_time: 0,
            value,
        }]),
    }
}

impl MetricsCollector for LoadCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let buf = self.file.read()?;
        let Some(l) = parse(buf) else {
            let text = String::from_utf8_lossy(buf).into_owned();
            anyhow::bail!("malformed {}: {text:?}", self.file.path().display());
        };
        out.push(gauge(
            "system.cpu.load_average.1m",
            "Load average over the last minute",
            "{thread}",
            Number::Double(l.load[0]),
        ));
        out.push(gauge(
            "system.cpu.load_average.5m",
            "Load average over the last 5 minutes",
            "{thread}",
            Number::Double(l.load[1]),
        ));
        out.push(gauge(
            "system.cpu.load_average.15m",
            "Load average over the last 15 minutes",
            "{thread}",
            Number::Double(l.load[2]),
        ));
        out.push(gauge(
            "linux.process.count",
            "Threads (kernel scheduling entities) currently existing",
            "{thread}",
            Number::Int(i64::try_from(l.threads).unwrap_or(i64::MAX)),
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/proc")
            .join(name)
    }

    fn value(out: &[Metric], name: &str) -> Number {
        let m = out
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(m.unit, "{thread}");
        match &m.data {
            MetricData::Gauge(p) => p[0].value,
            _ => panic!("{name} not a gauge"),
        }
    }

    #[test]
    fn parses_fixture() {
        let mut c = LoadCollector::new(&fixture("loadavg")).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(
            value(&out, "system.cpu.load_average.1m"),
            Number::Double(3.17)
        );
        assert_eq!(
            value(&out, "system.cpu.load_average.5m"),
            Number::Double(1.61)
        );
        assert_eq!(
            value(&out, "system.cpu.load_average.15m"),
            Number::Double(0.67)
        );
        assert_eq!(value(&out, "linux.process.count"), Number::Int(100));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"0.1 0.2\n").is_none());
        assert!(parse(b"0.1 0.2 0.3 12 99\n").is_none());
        assert!(parse(b"a b c 1/2 3\n").is_none());
        assert_eq!(
            parse(b"0.00 0.01 0.05 1/80 11206\n"),
            Some(LoadAvg {
                load: [0.0, 0.01, 0.05],
                threads: 80
            })
        );
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = LoadCollector::new(Path::new("/nonexistent/loadavg"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/loadavg"), "{err}");
    }
}
