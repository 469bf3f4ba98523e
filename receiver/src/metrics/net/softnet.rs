//! `softnet`: per-CPU packet processing from `/proc/net/softnet_stat`.
//!
//! The kernel prints 32-bit counters in hex; they are extended across wraps
//! seen between collections ([`Wrap32`]).

use std::path::Path;
use std::time::Duration;

use kotel_pipelines::{KeyValue, Metric, NumberPoint};

use super::{Wrap32, gauge, net_config, parse_hex, point, probe_path, sum};
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode,
};
use crate::procfs::{self, ProcFile};

pub struct Softnet;

net_config!();

impl CollectorSpec for Softnet {
    const NAME: &'static str = "softnet";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str =
        "Per-CPU packets processed, dropped and time squeezes in NET_RX (/proc/net/softnet_stat)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        probe_path(Path::new("/proc/net/softnet_stat"))
    }

    fn build(config: &Config, host: &HostContext, default: Duration) -> anyhow::Result<Instance> {
        let c = SoftnetCollector::new(Path::new("/proc"), host)?;
        Ok(crate::framework::Instance::metrics(
            config.interval,
            default,
            c,
        ))
    }
}

/// Counter columns: (column, metric, description, unit). Columns 9 and 10
/// exist since 2.6.36 and 3.11; older kernels print fewer.
const COUNTERS: [(usize, &str, &str, &str); 5] = [
    (
        0,
        "linux.net.softnet.processed",
        "Packets taken off the backlog and processed by NET_RX",
        "{packet}",
    ),
    (
        1,
        "linux.net.softnet.dropped",
        "Packets dropped because the per-CPU backlog was full (netdev_max_backlog)",
        "{packet}",
    ),
    (
        2,
        "linux.net.softnet.time_squeeze",
        "NET_RX runs that stopped with work left (budget or time exhausted)",
        "{event}",
    ),
    (
        9,
        "linux.net.softnet.received_rps",
        "Inter-processor interrupts received to process RPS packets",
        "{interrupt}",
    ),
    (
        10,
        "linux.net.softnet.flow_limit",
        "Packets dropped by the RPS flow limit",
        "{packet}",
    ),
];
/// Column of the backlog length (5.10+) and of the CPU number (5.10+).
const BACKLOG: usize = 11;
const CPU: usize = 12;

pub(crate) struct SoftnetCollector {
    file: ProcFile,
    boot_time: u64,
    /// Per CPU number, per counter column.
    wraps: Vec<[Wrap32; 5]>,
}

impl SoftnetCollector {
    pub(crate) fn new(root: &Path, host: &HostContext) -> anyhow::Result<Self> {
        Ok(Self {
            file: ProcFile::open(root.join("net/softnet_stat"))?,
            boot_time: host.boot_time,
            wraps: Vec::new(),
        })
    }
}

impl MetricsCollector for SoftnetCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let buf = self.file.read()?;
        let mut points: [Vec<NumberPoint>; 5] = Default::default();
        let mut backlog = Vec::new();
        for (i, line) in procfs::lines(buf).enumerate() {
            let mut cols = [0u64; 16];
            let mut n = 0;
            for (slot, f) in cols.iter_mut().zip(procfs::fields(line)) {
                let Some(v) = parse_hex(f) else { break };
                *slot = v;
                n += 1;
            }
            if n < 3 {
                continue;
            }
            // Without the CPU column, lines are in CPU order but offline CPUs
            // are skipped, so the index is only a best guess.
            let cpu = if n > CPU { cols[CPU] as usize } else { i };
            if cpu > 65_536 {
                continue;
            }
            if self.wraps.len() <= cpu {
                self.wraps.resize(cpu + 1, Default::default());
            }
            let attrs = || vec![KeyValue::new("cpu.logical_number", cpu as i64)];
            for (k, &(col, ..)) in COUNTERS.iter().enumerate() {
                if col < n {
                    let v = self.wraps[cpu][k].update(cols[col] as u32);
                    points[k].push(point(attrs(), self.boot_time, v));
                }
            }
            if n > BACKLOG {
                backlog.push(point(attrs(), 0, cols[BACKLOG]));
            }
        }
        if points[0].is_empty() {
            anyhow::bail!("{}: no per-CPU lines", self.file.path().display());
        }
        for ((_, name, desc, unit), p) in COUNTERS.iter().zip(points) {
            if !p.is_empty() {
                out.push(sum(name, desc, unit, p));
            }
        }
        if !backlog.is_empty() {
            out.push(gauge(
                "linux.net.softnet.backlog",
                "Packets waiting in the per-CPU backlog queues now",
                "{packet}",
                backlog,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::net::testutil::*;

    fn at(m: &Metric, cpu: i64) -> i64 {
        points(m)
            .iter()
            .find(|p| p.attributes[0].value == kotel_pipelines::Value::Int(cpu))
            .map(|p| match p.value {
                kotel_pipelines::Number::Int(v) => v,
                _ => panic!(),
            })
            .unwrap()
    }

    #[test]
    fn fixture() {
        let mut c = SoftnetCollector::new(&root(), &host()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        let text = std::fs::read_to_string(root().join("net/softnet_stat")).unwrap();
        let rows: Vec<Vec<i64>> = text
            .lines()
            .map(|l| {
                l.split_whitespace()
                    .map(|f| i64::from_str_radix(f, 16).unwrap())
                    .collect()
            })
            .collect();
        let processed = find(&out, "linux.net.softnet.processed");
        assert!(is_sum(processed));
        assert_eq!(points(processed).len(), rows.len());
        for r in &rows {
            assert_eq!(at(processed, r[12]), r[0]);
            assert_eq!(
                at(find(&out, "linux.net.softnet.time_squeeze"), r[12]),
                r[2]
            );
            assert_eq!(at(find(&out, "linux.net.softnet.flow_limit"), r[12]), r[10]);
            assert_eq!(at(find(&out, "linux.net.softnet.backlog"), r[12]), r[11]);
        }
        assert_eq!(points(processed)[0].start_time, host().boot_time);
    }

    #[test]
    fn old_kernel_gaps_and_wrap() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        let file = dir.path().join("net/softnet_stat");
        // 3.x layout: 11 columns, no CPU number; then 5.10+ with CPU 2 only
        // (CPU 1 offline) and a wrapped counter.
        std::fs::write(&file, "fffffff0 00000001 00000002 0 0 0 0 0 0 00000003 00000004\n00000010 0 0 0 0 0 0 0 0 0 0\n").unwrap();
        let mut c = SoftnetCollector::new(dir.path(), &host()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        assert_eq!(
            at(find(&out, "linux.net.softnet.processed"), 0),
            0xffff_fff0
        );
        assert_eq!(at(find(&out, "linux.net.softnet.received_rps"), 0), 3);
        assert!(out.iter().all(|m| m.name != "linux.net.softnet.backlog"));
        std::fs::write(
            &file,
            "00000005 1 2 0 0 0 0 0 0 3 4 7 00000000\n00000020 0 0 0 0 0 0 0 0 0 0 0 00000002\n",
        )
        .unwrap();
        out.clear();
        c.collect(&mut out).unwrap();
        let processed = find(&out, "linux.net.softnet.processed");
        assert_eq!(at(processed, 0), (1 << 32) + 5, "wrapped once");
        assert_eq!(at(processed, 2), 0x20);
        assert_eq!(at(find(&out, "linux.net.softnet.backlog"), 0), 7);
        std::fs::write(&file, "").unwrap();
        assert!(c.collect(&mut Vec::new()).is_err());
    }
}
