//! `schedstat`: per-CPU scheduler statistics from `/proc/schedstat`.
//!
//! The file exists only on kernels built with `CONFIG_SCHEDSTATS`. The three
//! columns used here come from the scheduler's `sched_info` accounting and
//! count always (the other columns only while `kernel.sched_schedstats=1`).
//! Each `cpuN` line of versions 15 to 17 carries,
//! after nine columns of counters: 7) nanoseconds tasks ran on the CPU,
//! 8) nanoseconds runnable tasks waited for it (run delay), 9) time slices
//! run. Domain lines (load-balancing statistics) are skipped.

use std::path::Path;
use std::time::Duration;

use kotel_pipelines::{KeyValue, Metric, Number};

use super::disk::{counter, metric, point, to_i64};
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode,
};
use crate::procfs::{self, ProcFile};

const SCHEDSTAT: &str = "/proc/schedstat";

pub struct Schedstat;

/// No settings beyond `enabled` and `interval`.
pub type Config = crate::framework::spec::BasicConfig;

impl CollectorSpec for Schedstat {
    const NAME: &'static str = "schedstat";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str = "Run delay and run time per CPU (/proc/schedstat)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        probe_path(Path::new(SCHEDSTAT))
    }

    fn build(
        config: &Config,
        host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let collector = SchedstatCollector::new(Path::new(SCHEDSTAT), host)?;
        Ok(Instance::metrics(
            config.interval,
            default_interval,
            collector,
        ))
    }
}

fn probe_path(path: &Path) -> Availability {
    if path.exists() {
        Availability::Available
    } else {
        Availability::Unavailable(format!(
            "{} not present (CONFIG_SCHEDSTATS)",
            path.display()
        ))
    }
}

struct SchedstatCollector {
    file: ProcFile,
    boot_time: u64,
}

impl SchedstatCollector {
    fn new(path: &Path, host: &HostContext) -> anyhow::Result<Self> {
        Ok(Self {
            file: ProcFile::open(path)?,
            boot_time: host.boot_time,
        })
    }
}

impl MetricsCollector for SchedstatCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let buf = self.file.read()?;
        let mut version = None;
        let mut delay = Vec::new();
        let mut run = Vec::new();
        let mut slices = Vec::new();
        for line in procfs::lines(buf) {
            let Some((key, rest)) = procfs::first_field(line) else {
                continue;
            };
            if key == b"version" {
                version = procfs::fields(rest).next().and_then(procfs::parse_u64);
                continue;
            }
            let Some(cpu) = key.strip_prefix(b"cpu").and_then(procfs::parse_u64) else {
                continue;
            };
            let mut cols = [0u64; 9];
            let mut n = 0;
            for f in procfs::fields(rest).take(9) {
                let Some(v) = procfs::parse_u64(f) else {
                    break;
                };
                cols[n] = v;
                n += 1;
            }
            if n < 9 {
                continue;
            }
            let attrs = || vec![KeyValue::new("cpu.logical_number", to_i64(cpu))];
            let secs = |ns: u64| Number::Double(ns as f64 / 1e9);
            run.push(point(attrs(), self.boot_time, secs(cols[6])));
            delay.push(point(attrs(), self.boot_time, secs(cols[7])));
            slices.push(point(attrs(), self.boot_time, Number::Int(to_i64(cols[8]))));
        }
        match version {
            Some(15..=17) => {}
            Some(v) => anyhow::bail!("{SCHEDSTAT}: unsupported version {v} (15 to 17 known)"),
            None => anyhow::bail!("{SCHEDSTAT}: no version line"),
        }
        if delay.is_empty() {
            anyhow::bail!("{SCHEDSTAT}: no cpu lines");
        }
        out.push(metric(
            "linux.cpu.run_delay",
            "Time runnable tasks waited for this CPU (run-queue wait), summed over tasks",
            "s",
            counter(delay),
        ));
        out.push(metric(
            "linux.cpu.run_time",
            "Time tasks ran on this CPU, as accounted by the scheduler",
            "s",
            counter(run),
        ));
        out.push(metric(
            "linux.cpu.timeslices",
            "Time slices run on this CPU",
            "{timeslice}",
            counter(slices),
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kotel_pipelines::{MetricData, NumberPoint, Value, attr};

    fn host() -> HostContext {
        HostContext {
            boot_time: 1_700_000_000_000_000_000,
            agent_start: 1_700_000_100_000_000_000,
            clock_tick: 0.01,
            page_size: 4096,
            capture_dir: std::env::temp_dir(),
        }
    }

    fn collect_text(text: &str) -> anyhow::Result<Vec<Metric>> {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut tmp, text.as_bytes()).unwrap();
        let mut c = SchedstatCollector::new(tmp.path(), &host())?;
        let mut out = Vec::new();
        c.collect(&mut out)?;
        Ok(out)
    }

    fn points(m: &Metric) -> &[NumberPoint] {
        match &m.data {
            MetricData::Sum { points, .. } => points,
            _ => panic!("not a sum"),
        }
    }

    fn get(m: &Metric, cpu: i64) -> Option<Number> {
        points(m)
            .iter()
            .find(|p| attr(&p.attributes, "cpu.logical_number") == Some(&Value::Int(cpu)))
            .map(|p| p.value)
    }

    #[test]
    fn version_15_fixture() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/host/schedstat"),
        )
        .unwrap();
        let out = collect_text(&text).unwrap();
        let delay = &out[0];
        assert_eq!(
            (delay.name.as_ref(), delay.unit.as_ref()),
            ("linux.cpu.run_delay", "s")
        );
        assert!(matches!(
            delay.data,
            MetricData::Sum {
                monotonic: true,
                ..
            }
        ));
        assert!(
            points(delay)
                .iter()
                .all(|p| p.start_time == host().boot_time)
        );
        // cpu2 is offline in the fixture: a gap, not an error.
        assert_eq!(points(delay).len(), 3);
        assert_eq!(get(delay, 0), Some(Number::Double(1123.558792154)));
        assert_eq!(get(delay, 3), Some(Number::Double(1087.912340008)));
        assert_eq!(get(delay, 2), None);
        assert_eq!(get(&out[1], 1), Some(Number::Double(8921.442038129)));
        assert_eq!(get(&out[2], 0), Some(Number::Int(51612039)));
    }

    #[test]
    fn versions_and_malformed_lines() {
        let v17 = "version 17\ntimestamp 1\ncpu0 0 0 1 2 3 4 5 6000000000 7\ncpu1 0 0 1 2\n";
        let out = collect_text(v17).unwrap();
        assert_eq!(points(&out[0]).len(), 1);
        assert_eq!(get(&out[0], 0), Some(Number::Double(6.0)));
        let err = collect_text("version 14\ncpu0 0 0 1 2 3 4 5 6 7\n").unwrap_err();
        assert!(err.to_string().contains("unsupported version 14"), "{err}");
        assert!(collect_text("cpu0 0 0 1 2 3 4 5 6 7\n").is_err());
        assert!(collect_text("version 15\n").is_err());
    }

    #[test]
    fn unavailable_without_schedstats() {
        match probe_path(Path::new("/nonexistent/schedstat")) {
            Availability::Unavailable(why) => {
                assert!(why.contains("not present (CONFIG_SCHEDSTATS)"), "{why}")
            }
            Availability::Available => panic!("available"),
        }
    }
}
