//! `interrupts`: hardware interrupts per source and CPU from
//! `/proc/interrupts`, and softirqs per type and CPU from `/proc/softirqs`.
//!
//! `/proc/interrupts` is the most expensive procfs file the host collectors
//! read (the kernel walks every IRQ descriptor): it is re-read with `pread`
//! on a kept descriptor and parsed in place. Each line's names are resolved
//! once and cached by line position; a line is only re-resolved when its
//! label or description changes (a driver was loaded or unloaded).

use std::path::Path;
use std::time::Duration;

use kotel_pipelines::{KeyValue, Metric, Number, NumberPoint};
use serde::{Deserialize, Serialize};

use super::disk::{Filter, counter, dropped_metric, metric, point, to_i64};
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode, spec::default_true,
};
use crate::procfs::{self, ProcFile};

const INTERRUPTS: &str = "/proc/interrupts";
const SOFTIRQS: &str = "/proc/softirqs";

pub struct Interrupts;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// One series per CPU (`true`) or summed over CPUs (`false`).
    pub per_cpu: bool,
    /// IRQs to report: whole-string regexes matched against the IRQ (`24`,
    /// `LOC`) and against its description (`IO-APIC 5-edge ACPI:Ged`,
    /// `Local timer interrupts`); empty = every IRQ.
    pub include: Vec<String>,
    /// IRQs never reported (same matching); wins over `include`.
    pub exclude: Vec<String>,
    /// Most `linux.interrupts` series per collection (0 = no limit); the
    /// rest are counted in `linux.collector.series.dropped`.
    pub max_series: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            per_cpu: true,
            include: Vec::new(),
            exclude: Vec::new(),
            max_series: 2000,
        }
    }
}

crate::common_settings!(Config);

impl CollectorSpec for Interrupts {
    const NAME: &'static str = "interrupts";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str =
        "Interrupts per IRQ and CPU, softirqs per type and CPU (/proc/interrupts, /proc/softirqs)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        match [INTERRUPTS, SOFTIRQS]
            .iter()
            .find(|p| !Path::new(p).exists())
        {
            Some(p) => Availability::Unavailable(format!("{p} not present")),
            None => Availability::Available,
        }
    }

    fn build(
        config: &Config,
        host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let collector =
            InterruptsCollector::new(Path::new(INTERRUPTS), Path::new(SOFTIRQS), config, host)?;
        Ok(Instance::metrics(
            config.interval,
            default_interval,
            collector,
        ))
    }
}

/// The CPU numbers of the header line (`CPU0 CPU2 …`; offline CPUs are
/// missing), into `cpus`.
fn parse_header(line: &[u8], cpus: &mut Vec<i64>) -> bool {
    cpus.clear();
    for f in procfs::fields(line) {
        match f.strip_prefix(b"CPU").and_then(procfs::parse_u64) {
            Some(n) => cpus.push(to_i64(n)),
            None => return false,
        }
    }
    !cpus.is_empty()
}

/// Splits a counter line into label (without `:`), up to `max` counts into
/// `counts`, and the description after them (trimmed).
fn parse_counts<'a>(
    line: &'a [u8],
    max: usize,
    counts: &mut Vec<u64>,
) -> Option<(&'a [u8], &'a [u8])> {
    counts.clear();
    let line = line.trim_ascii_start();
    let colon = line.iter().position(|&b| b == b':')?;
    let label = &line[..colon];
    let mut rest = &line[colon + 1..];
    while counts.len() < max {
        let trimmed = rest.trim_ascii_start();
        let end = trimmed
            .iter()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(trimmed.len());
        match procfs::parse_u64(&trimmed[..end]) {
            Some(v) => {
                counts.push(v);
                rest = &trimmed[end..];
            }
            None => break,
        }
    }
    Some((label, rest.trim_ascii()))
}

/// One `/proc/interrupts` line, resolved once.
#[derive(Debug)]
struct Irq {
    /// Label and raw description, to notice when the line changes.
    key: Box<[u8]>,
    irq: &'static str,
    description: &'static str,
    selected: bool,
}

struct InterruptsCollector {
    interrupts: ProcFile,
    softirqs: ProcFile,
    filter: Filter,
    per_cpu: bool,
    max_series: usize,
    boot_time: u64,
    cpus: Vec<i64>,
    counts: Vec<u64>,
    irqs: Vec<Irq>,
}

impl InterruptsCollector {
    fn new(
        interrupts: &Path,
        softirqs: &Path,
        config: &Config,
        host: &HostContext,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            interrupts: ProcFile::open(interrupts)?,
            softirqs: ProcFile::open(softirqs)?,
            filter: Filter::new(Interrupts::NAME, &config.include, &config.exclude)?,
            per_cpu: config.per_cpu,
            max_series: config.max_series,
            boot_time: host.boot_time,
            cpus: Vec::new(),
            counts: Vec::new(),
            irqs: Vec::new(),
        })
    }
}

/// Appends one point per CPU (or one summed point) for `counts`.
fn push_points(
    points: &mut Vec<NumberPoint>,
    per_cpu: bool,
    cpus: &[i64],
    counts: &[u64],
    boot: u64,
    attrs: impl Fn() -> Vec<KeyValue>,
) {
    // ERR and MIS print one host-wide number, not one per CPU.
    if per_cpu && counts.len() == cpus.len() {
        for (cpu, &v) in cpus.iter().zip(counts) {
            let mut a = attrs();
            a.insert(0, KeyValue::new("cpu.logical_number", *cpu));
            points.push(point(a, boot, Number::Int(to_i64(v))));
        }
    } else {
        let total = counts.iter().fold(0u64, |a, &b| a.saturating_add(b));
        points.push(point(attrs(), boot, Number::Int(to_i64(total))));
    }
}

impl MetricsCollector for InterruptsCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let Self {
            interrupts,
            softirqs,
            filter,
            per_cpu,
            max_series,
            boot_time,
            cpus,
            counts,
            irqs,
        } = self;
        let (per_cpu, max_series, boot) = (*per_cpu, *max_series, *boot_time);

        // /proc/interrupts
        let buf = interrupts.read()?;
        let mut lines = procfs::lines(buf);
        if !lines.next().is_some_and(|h| parse_header(h, cpus)) {
            anyhow::bail!("{INTERRUPTS}: no CPU header line");
        }
        let per_line = if per_cpu { cpus.len() } else { 1 };
        let mut points = Vec::with_capacity(irqs.len() * per_line);
        let mut dropped = 0u64;
        let mut i = 0usize;
        for line in lines {
            let Some((label, description)) = parse_counts(line, cpus.len(), counts) else {
                continue;
            };
            if counts.is_empty() {
                continue;
            }
            let label = label.trim_ascii();
            let same = irqs.get(i).is_some_and(|e| {
                e.key.len() == label.len() + description.len()
                    && e.key.starts_with(label)
                    && e.key.ends_with(description)
            });
            if !same {
                let irq = String::from_utf8_lossy(label);
                // Collapse the column padding: "IO-APIC   5-edge" → "IO-APIC 5-edge".
                let desc = String::from_utf8_lossy(description)
                    .split_ascii_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                let entry = Irq {
                    key: [label, description].concat().into(),
                    selected: filter.matches_any(&[&irq, &desc]),
                    irq: procfs::intern(&irq),
                    description: procfs::intern(&desc),
                };
                if i < irqs.len() {
                    irqs[i] = entry;
                } else {
                    irqs.push(entry);
                }
            }
            let e = &irqs[i];
            i += 1;
            if !e.selected {
                continue;
            }
            let n = if per_cpu && counts.len() == cpus.len() {
                counts.len()
            } else {
                1
            };
            if max_series > 0 && points.len() + n > max_series {
                dropped += n as u64;
                continue;
            }
            let (irq, description) = (e.irq, e.description);
            push_points(&mut points, per_cpu, cpus, counts, boot, || {
                let mut a = Vec::with_capacity(3);
                a.push(KeyValue::new("linux.irq", irq));
                if !description.is_empty() {
                    a.push(KeyValue::new("linux.irq.description", description));
                }
                a
            });
        }
        irqs.truncate(i);
        out.push(metric(
            "linux.interrupts",
            "Hardware and architecture interrupts handled, per IRQ",
            "{interrupt}",
            counter(points),
        ));
        out.push(dropped_metric(Interrupts::NAME, dropped));

        // /proc/softirqs: a fixed set of ten types.
        let buf = softirqs.read()?;
        let mut lines = procfs::lines(buf);
        if !lines.next().is_some_and(|h| parse_header(h, cpus)) {
            anyhow::bail!("{SOFTIRQS}: no CPU header line");
        }
        let mut points = Vec::with_capacity(10 * if per_cpu { cpus.len() } else { 1 });
        for line in lines {
            let Some((label, _)) = parse_counts(line, cpus.len(), counts) else {
                continue;
            };
            if counts.is_empty() {
                continue;
            }
            let kind = softirq_name(label.trim_ascii());
            push_points(&mut points, per_cpu, cpus, counts, boot, || {
                vec![KeyValue::new("linux.softirq.type", kind)]
            });
        }
        out.push(metric(
            "linux.softirqs",
            "Softirq handler runs, per softirq type",
            "{softirq}",
            counter(points),
        ));
        Ok(())
    }
}

/// Static names for the kernel's softirq vectors; others are interned.
fn softirq_name(label: &[u8]) -> &'static str {
    const KNOWN: [&str; 10] = [
        "HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER",
        "RCU",
    ];
    KNOWN
        .iter()
        .find(|k| k.as_bytes() == label)
        .copied()
        .unwrap_or_else(|| procfs::intern(&String::from_utf8_lossy(label)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kotel_pipelines::{MetricData, Value, attr};
    use std::path::PathBuf;

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

    fn collect_paths(interrupts: &Path, softirqs: &Path, config: &Config) -> Vec<Metric> {
        let mut c = InterruptsCollector::new(interrupts, softirqs, config, &host()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        let mut again = Vec::new();
        c.collect(&mut again).unwrap();
        assert_eq!(out, again);
        out
    }

    fn collect(config: &Config) -> Vec<Metric> {
        collect_paths(&fixture("interrupts"), &fixture("softirqs"), config)
    }

    fn points(m: &Metric) -> &[NumberPoint] {
        match &m.data {
            MetricData::Gauge(p) | MetricData::Sum { points: p, .. } => p,
            MetricData::Histogram(_) => panic!("histogram"),
        }
    }

    fn get<'a>(
        m: &'a Metric,
        key: &str,
        name: &str,
        cpu: Option<i64>,
    ) -> Option<(i64, &'a NumberPoint)> {
        points(m)
            .iter()
            .find(|p| {
                attr(&p.attributes, key).and_then(|v| v.as_str()) == Some(name)
                    && attr(&p.attributes, "cpu.logical_number") == cpu.map(Value::Int).as_ref()
            })
            .map(|p| match p.value {
                Number::Int(v) => (v, p),
                Number::Double(d) => panic!("double {d}"),
            })
    }

    fn dropped(out: &[Metric]) -> Number {
        let m = out
            .iter()
            .find(|m| m.name == "linux.collector.series.dropped")
            .unwrap();
        points(m)[0].value
    }

    #[test]
    fn machine_capture() {
        let out = collect(&Config::default());
        let irq = &out[0];
        assert_eq!(
            (irq.name.as_ref(), irq.unit.as_ref()),
            ("linux.interrupts", "{interrupt}")
        );
        assert!(matches!(
            irq.data,
            MetricData::Sum {
                monotonic: true,
                ..
            }
        ));
        //  36:          0     253682 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
        let (v, p) = get(irq, "linux.irq", "36", Some(1)).unwrap();
        assert_eq!(v, 253682);
        assert_eq!(p.start_time, host().boot_time);
        assert_eq!(
            attr(&p.attributes, "linux.irq.description").and_then(|v| v.as_str()),
            Some("PCI-MSIX-0000:00:02.0 1-edge virtio1-req.0")
        );
        assert_eq!(get(irq, "linux.irq", "LOC", Some(0)).unwrap().0, 591070);
        let (_, loc) = get(irq, "linux.irq", "LOC", Some(1)).unwrap();
        assert_eq!(
            attr(&loc.attributes, "linux.irq.description").and_then(|v| v.as_str()),
            Some("Local timer interrupts")
        );
        // ERR and MIS are host-wide: one point, no CPU, no description.
        let (err, p) = get(irq, "linux.irq", "ERR", None).unwrap();
        assert_eq!(err, 0);
        assert_eq!(p.attributes.len(), 1);
        // 19 numbered IRQs and 14 named per-CPU lines × 2 CPUs, plus ERR and MIS.
        assert_eq!(points(irq).len(), 33 * 2 + 2);
        assert_eq!(dropped(&out), Number::Int(0));

        let soft = out.iter().find(|m| m.name == "linux.softirqs").unwrap();
        assert_eq!(points(soft).len(), 20);
        assert_eq!(
            get(soft, "linux.softirq.type", "BLOCK", Some(1)).unwrap().0,
            253672
        );
        assert_eq!(
            get(soft, "linux.softirq.type", "RCU", Some(0)).unwrap().0,
            134773
        );
    }

    #[test]
    fn summed_filtered_and_capped() {
        let out = collect(&Config {
            per_cpu: false,
            include: vec!["LOC".into(), "RES".into(), ".*virtio2.*".into()],
            exclude: vec![".*output.*".into()],
            ..Config::default()
        });
        let irq = &out[0];
        // LOC, RES and 37, 38 (virtio2-config, virtio2-input.0); 39 is excluded.
        assert_eq!(points(irq).len(), 4);
        assert_eq!(
            get(irq, "linux.irq", "LOC", None).unwrap().0,
            591070 + 577017
        );
        assert_eq!(get(irq, "linux.irq", "38", None).unwrap().0, 58857);
        assert!(get(irq, "linux.irq", "39", None).is_none());
        let soft = &out[2];
        assert_eq!(
            get(soft, "linux.softirq.type", "NET_RX", None).unwrap().0,
            53113 + 58661
        );

        let capped = collect(&Config {
            max_series: 10,
            ..Config::default()
        });
        assert_eq!(points(&capped[0]).len(), 10);
        assert_eq!(dropped(&capped), Number::Int(68 - 10));
    }

    #[test]
    fn offline_cpu_gap_and_changing_lines() {
        let dir = tempfile::tempdir().unwrap();
        let irq_path = dir.path().join("interrupts");
        let soft_path = dir.path().join("softirqs");
        std::fs::write(
            &irq_path,
            "           CPU0       CPU2\n  1:   10   20   IO-APIC   1-edge   i8042\nNMI:  3  4   Non-maskable interrupts\n",
        )
        .unwrap();
        std::fs::write(
            &soft_path,
            "       CPU0  CPU2\n  HI:   1   2\n NEW_ONE:  5 6\n",
        )
        .unwrap();
        let mut c =
            InterruptsCollector::new(&irq_path, &soft_path, &Config::default(), &host()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        assert_eq!(get(&out[0], "linux.irq", "1", Some(2)).unwrap().0, 20);
        assert!(get(&out[0], "linux.irq", "1", Some(1)).is_none());
        assert_eq!(
            get(&out[2], "linux.softirq.type", "NEW_ONE", Some(2))
                .unwrap()
                .0,
            6
        );

        // A driver replaced IRQ 1's handler: the cached description updates.
        std::fs::write(
            &irq_path,
            "           CPU0       CPU2\n  1:   11   21   IO-APIC   1-edge   other\n",
        )
        .unwrap();
        out.clear();
        c.collect(&mut out).unwrap();
        let (v, p) = get(&out[0], "linux.irq", "1", Some(0)).unwrap();
        assert_eq!(v, 11);
        assert_eq!(
            attr(&p.attributes, "linux.irq.description").and_then(|v| v.as_str()),
            Some("IO-APIC 1-edge other")
        );
        assert_eq!(points(&out[0]).len(), 2);

        std::fs::write(&irq_path, "garbage\n").unwrap();
        assert!(c.collect(&mut Vec::new()).is_err());
    }

    #[test]
    fn config_errors() {
        let bad = Config {
            exclude: vec!["(".into()],
            ..Config::default()
        };
        assert!(
            InterruptsCollector::new(&fixture("interrupts"), &fixture("softirqs"), &bad, &host())
                .is_err()
        );
        assert!(serde_json::from_str::<Config>(r#"{"percpu": true}"#).is_err());
        let c: Config = serde_json::from_str(r#"{"per_cpu": false}"#).unwrap();
        assert!(!c.per_cpu && c.max_series == 2000);
    }
}
