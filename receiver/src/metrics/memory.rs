//! `memory`: host memory from `/proc/meminfo`.
//!
//! Emits the OpenTelemetry `system.memory.*` metrics, and every meminfo
//! field as `linux.memory.<field in snake_case>` (`Active(anon)` becomes
//! `linux.memory.active_anon`), in bytes; the few unit-less fields
//! (`HugePages_Total`, ...) are counts of huge pages.

use std::path::Path;
use std::time::Duration;

use kotel_pipelines::{KeyValue, Metric, MetricData, Number, NumberPoint};

use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode,
};
use crate::procfs::{self, ProcFile};

const MEMINFO: &str = "/proc/meminfo";

pub struct Memory;

/// No settings beyond `enabled` and `interval`.
pub type Config = crate::framework::spec::BasicConfig;

impl CollectorSpec for Memory {
    const NAME: &'static str = "memory";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str = "Memory usage, availability, slab and every /proc/meminfo field";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        crate::framework::spec::probe_path(MEMINFO)
    }

    fn build(
        config: &Config,
        _host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let collector = MemoryCollector::new(Path::new(MEMINFO))?;
        Ok(Instance::metrics(
            config.interval,
            default_interval,
            collector,
        ))
    }
}

/// `MemTotal` -> `mem_total`, `Active(anon)` -> `active_anon`,
/// `SReclaimable` -> `s_reclaimable`, `HugePages_Total` -> `huge_pages_total`,
/// `DirectMap2M` -> `direct_map2m`.
fn snake_case(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for (i, &c) in key.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev = if i > 0 { key[i - 1] } else { b'_' };
            let next_lower = key.get(i + 1).is_some_and(u8::is_ascii_lowercase);
            let boundary = prev.is_ascii_lowercase() || (prev.is_ascii_uppercase() && next_lower);
            if boundary && !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase() as char);
        } else if c.is_ascii_alphanumeric() {
            out.push(c as char);
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

/// Names derived from one meminfo key, cached by line position.
#[derive(Debug)]
struct Field {
    key: Box<[u8]>,
    name: &'static str,
    description: &'static str,
}

impl Field {
    fn new(key: &[u8]) -> Self {
        let text = String::from_utf8_lossy(key);
        Self {
            key: key.into(),
            name: procfs::intern(&format!("linux.memory.{}", snake_case(key))),
            description: procfs::intern(&format!("{text} from /proc/meminfo")),
        }
    }
}

/// The meminfo values the `system.memory.*` metrics derive from, in bytes.
#[derive(Debug, Default)]
struct Known {
    total: Option<u64>,
    free: Option<u64>,
    available: Option<u64>,
    buffers: Option<u64>,
    cached: Option<u64>,
    s_reclaimable: Option<u64>,
    s_unreclaim: Option<u64>,
}

struct MemoryCollector {
    file: ProcFile,
    fields: Vec<Field>,
}

impl MemoryCollector {
    fn new(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            file: ProcFile::open(path)?,
            fields: Vec::new(),
        })
    }
}

fn gauge(
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    points: Vec<NumberPoint>,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: MetricData::Gauge(points),
    }
}

fn bytes(v: u64) -> Number {
    Number::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

fn point(value: u64, attributes: Vec<KeyValue>) -> NumberPoint {
    NumberPoint {
        attributes,
        start_time: 0,
        value: bytes(value),
    }
}

impl MetricsCollector for MemoryCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let buf = self.file.read()?;
        // The system.memory.* metrics go first; the per-field ones follow.
        out.reserve(self.fields.len() + 5);
        let mut fields_out = Vec::with_capacity(self.fields.len());
        let mut known = Known::default();
        for (i, line) in procfs::lines(buf).enumerate() {
            let Some((key, rest)) = procfs::key_value(line) else {
                continue;
            };
            let mut parts = procfs::fields(rest);
            let Some(value) = parts.next().and_then(procfs::parse_u64) else {
                continue;
            };
            let (value, unit) = match parts.next() {
                Some(b"kB") => (value.saturating_mul(1024), "By"),
                _ => (value, "{page}"),
            };
            match key {
                b"MemTotal" => known.total = Some(value),
                b"MemFree" => known.free = Some(value),
                b"MemAvailable" => known.available = Some(value),
                b"Buffers" => known.buffers = Some(value),
                b"Cached" => known.cached = Some(value),
                b"SReclaimable" => known.s_reclaimable = Some(value),
                b"SUnreclaim" => known.s_unreclaim = Some(value),
                _ => {}
            }
            if self.fields.get(i).is_none_or(|f| *f.key != *key) {
                let field = Field::new(key);
                if i < self.fields.len() {
                    self.fields[i] = field;
                } else {
                    self.fields.push(field);
                }
            }
            let field = &self.fields[i];
            fields_out.push(gauge(
                field.name,
                field.description,
                unit,
                vec![point(value, Vec::new())],
            ));
        }
        let Some(total) = known.total else {
            anyhow::bail!("no MemTotal in {}", self.file.path().display());
        };

        if let (Some(free), Some(buffers), Some(cached)) = (known.free, known.buffers, known.cached)
        {
            // Kernels before 2.6.19 have no SReclaimable: nothing to subtract.
            let used = total
                .saturating_sub(free)
                .saturating_sub(buffers)
                .saturating_sub(cached)
                .saturating_sub(known.s_reclaimable.unwrap_or(0));
            let state = |s: &'static str| vec![KeyValue::new("system.memory.state", s)];
            out.push(gauge(
                "system.memory.usage",
                "Memory in use, by state (used = MemTotal - MemFree - Buffers - Cached - SReclaimable)",
                "By",
                vec![point(used, state("used")), point(free, state("free")), point(buffers, state("buffers")), point(cached, state("cached"))],
            ));
        }
        out.push(gauge(
            "system.memory.limit",
            "Total usable memory (MemTotal)",
            "By",
            vec![point(total, Vec::new())],
        ));
        if let Some(available) = known.available {
            out.push(gauge(
                "system.memory.linux.available",
                "Memory available for new workloads without swapping (MemAvailable, Linux 3.14+)",
                "By",
                vec![point(available, Vec::new())],
            ));
        }
        if let (Some(reclaimable), Some(unreclaimable)) = (known.s_reclaimable, known.s_unreclaim) {
            let state = |s: &'static str| vec![KeyValue::new("system.memory.linux.slab.state", s)];
            out.push(gauge(
                "system.memory.linux.slab.usage",
                "Kernel slab memory, by reclaimability (SReclaimable, SUnreclaim)",
                "By",
                vec![
                    point(reclaimable, state("reclaimable")),
                    point(unreclaimable, state("unreclaimable")),
                ],
            ));
        }
        out.append(&mut fields_out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kotel_pipelines::{Value, attr};

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/proc")
            .join(name)
    }

    fn collect(name: &str) -> Vec<Metric> {
        let mut c = MemoryCollector::new(&fixture(name)).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        // A second pass goes through the name cache.
        let mut again = Vec::new();
        c.collect(&mut again).unwrap();
        assert_eq!(out, again);
        out
    }

    fn find<'a>(out: &'a [Metric], name: &str) -> &'a Metric {
        out.iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    fn points(m: &Metric) -> &[NumberPoint] {
        match &m.data {
            MetricData::Gauge(p) => p,
            _ => panic!("{} not a gauge", m.name),
        }
    }

    fn single(out: &[Metric], name: &str) -> i64 {
        match points(find(out, name))[0].value {
            Number::Int(v) => v,
            Number::Double(_) => panic!("double"),
        }
    }

    fn by_state(m: &Metric, key: &str, state: &str) -> i64 {
        let p = points(m)
            .iter()
            .find(|p| attr(&p.attributes, key).and_then(Value::as_str) == Some(state))
            .unwrap();
        match p.value {
            Number::Int(v) => v,
            Number::Double(_) => panic!("double"),
        }
    }

    #[test]
    fn snake_cases_meminfo_keys() {
        for (key, want) in [
            ("MemTotal", "mem_total"),
            ("Active(anon)", "active_anon"),
            ("Inactive(file)", "inactive_file"),
            ("SReclaimable", "s_reclaimable"),
            ("SUnreclaim", "s_unreclaim"),
            ("HugePages_Total", "huge_pages_total"),
            ("NFS_Unstable", "nfs_unstable"),
            ("Committed_AS", "committed_as"),
            ("DirectMap2M", "direct_map2m"),
            ("ShmemPmdMapped", "shmem_pmd_mapped"),
            ("Hugetlb", "hugetlb"),
        ] {
            assert_eq!(snake_case(key.as_bytes()), want, "{key}");
        }
    }

    #[test]
    fn parses_real_meminfo() {
        let out = collect("meminfo");
        let kib = |k: &str| -> i64 {
            let text = std::fs::read_to_string(fixture("meminfo")).unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{k}:")))
                .unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<i64>()
                .unwrap()
                * 1024
        };
        assert_eq!(single(&out, "system.memory.limit"), kib("MemTotal"));
        assert_eq!(
            single(&out, "system.memory.linux.available"),
            kib("MemAvailable")
        );
        let usage = find(&out, "system.memory.usage");
        assert_eq!(usage.unit, "By");
        assert_eq!(
            by_state(usage, "system.memory.state", "free"),
            kib("MemFree")
        );
        assert_eq!(
            by_state(usage, "system.memory.state", "buffers"),
            kib("Buffers")
        );
        assert_eq!(
            by_state(usage, "system.memory.state", "cached"),
            kib("Cached")
        );
        assert_eq!(
            by_state(usage, "system.memory.state", "used"),
            kib("MemTotal") - kib("MemFree") - kib("Buffers") - kib("Cached") - kib("SReclaimable")
        );
        let slab = find(&out, "system.memory.linux.slab.usage");
        assert_eq!(
            by_state(slab, "system.memory.linux.slab.state", "reclaimable"),
            kib("SReclaimable")
        );
        assert_eq!(
            by_state(slab, "system.memory.linux.slab.state", "unreclaimable"),
            kib("SUnreclaim")
        );

        assert_eq!(single(&out, "linux.memory.mem_total"), kib("MemTotal"));
        assert_eq!(
            single(&out, "linux.memory.active_anon"),
            kib("Active(anon)")
        );
        assert_eq!(find(&out, "linux.memory.active_anon").unit, "By");
        assert_eq!(
            single(&out, "linux.memory.vmalloc_total"),
            kib("VmallocTotal")
        );
        let huge = find(&out, "linux.memory.huge_pages_total");
        assert_eq!(huge.unit, "{page}");
        assert_eq!(find(&out, "linux.memory.hugepagesize").unit, "By");
        // Every meminfo line is one linux.memory.* metric.
        let lines = std::fs::read_to_string(fixture("meminfo"))
            .unwrap()
            .lines()
            .count();
        assert_eq!(
            out.iter()
                .filter(|m| m.name.starts_with("linux.memory."))
                .count(),
            lines
        );
    }

    #[test]
    fn old_kernel_without_available_and_slab_split() {
        let out = collect("meminfo-old");
        assert!(
            out.iter()
                .all(|m| m.name != "system.memory.linux.available")
        );
        assert!(
            out.iter()
                .all(|m| m.name != "system.memory.linux.slab.usage")
        );
        let usage = find(&out, "system.memory.usage");
        // MemTotal 2048000 - MemFree 1024000 - Buffers 102400 - Cached 409600, no SReclaimable.
        assert_eq!(
            by_state(usage, "system.memory.state", "used"),
            (2048000 - 1024000 - 102400 - 409600) * 1024
        );
        assert_eq!(single(&out, "linux.memory.slab"), 65536 * 1024);
    }

    #[test]
    fn missing_mem_total_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meminfo");
        std::fs::write(&path, "MemFree: 1 kB\n").unwrap();
        let mut c = MemoryCollector::new(&path).unwrap();
        assert!(
            c.collect(&mut Vec::new())
                .unwrap_err()
                .to_string()
                .contains("MemTotal")
        );
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = MemoryCollector::new(Path::new("/nonexistent/meminfo"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/meminfo"), "{err}");
    }
}
