//! `buddyinfo`: free memory per NUMA node, zone and allocation order from
//! `/proc/buddyinfo`, as block counts and as bytes.
//!
//! A block of order `n` is `2^n` contiguous pages; a shortage of high-order
//! blocks while plenty of memory is free is external fragmentation (and the
//! cause of compaction stalls and failed huge-page allocations).

use std::path::Path;
use std::time::Duration;

use kotel_pipelines::{KeyValue, Metric, MetricData, Number};

use super::disk::{metric, point, to_i64};
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode,
};
use crate::procfs::{self, ProcFile};

const BUDDYINFO: &str = "/proc/buddyinfo";

pub struct Buddyinfo;

/// No settings beyond `enabled` and `interval`.
pub type Config = crate::framework::spec::BasicConfig;

impl CollectorSpec for Buddyinfo {
    const NAME: &'static str = "buddyinfo";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str =
        "Free memory blocks per NUMA node, zone and order (/proc/buddyinfo)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        crate::framework::spec::probe_path(BUDDYINFO)
    }

    fn build(
        config: &Config,
        host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let collector = BuddyinfoCollector::new(Path::new(BUDDYINFO), host)?;
        Ok(Instance::metrics(
            config.interval,
            default_interval,
            collector,
        ))
    }
}

struct BuddyinfoCollector {
    file: ProcFile,
    page_size: u64,
}

impl BuddyinfoCollector {
    fn new(path: &Path, host: &HostContext) -> anyhow::Result<Self> {
        Ok(Self {
            file: ProcFile::open(path)?,
            page_size: host.page_size,
        })
    }
}

/// `Node 0, zone   Normal  29287 8884 …` → (node, zone, counts).
fn parse_line(line: &[u8]) -> Option<(i64, &[u8], impl Iterator<Item = &[u8]>)> {
    let mut f = procfs::fields(line);
    if f.next()? != b"Node" {
        return None;
    }
    let node = procfs::parse_u64(f.next()?.strip_suffix(b",")?)?;
    if f.next()? != b"zone" {
        return None;
    }
    let zone = f.next()?;
    Some((to_i64(node), zone, f))
}

impl MetricsCollector for BuddyinfoCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let buf = self.file.read()?;
        let mut blocks = Vec::with_capacity(64);
        let mut bytes = Vec::with_capacity(64);
        for line in procfs::lines(buf) {
            let Some((node, zone, counts)) = parse_line(line) else {
                continue;
            };
            let zone = procfs::intern(&String::from_utf8_lossy(zone));
            for (order, count) in counts.enumerate() {
                let Some(count) = procfs::parse_u64(count) else {
                    continue;
                };
                let attrs = vec![
                    KeyValue::new("linux.numa.node", node),
                    KeyValue::new("linux.memory.zone", zone),
                    KeyValue::new("linux.memory.buddy.order", order as i64),
                ];
                let block = self.page_size << order.min(63);
                bytes.push(point(
                    attrs.clone(),
                    0,
                    Number::Int(to_i64(count.saturating_mul(block))),
                ));
                blocks.push(point(attrs, 0, Number::Int(to_i64(count))));
            }
        }
        if blocks.is_empty() {
            anyhow::bail!("no zone lines in {}", self.file.path().display());
        }
        out.push(metric(
            "linux.memory.buddy.free_blocks",
            "Free blocks of 2^order contiguous pages in the buddy allocator",
            "{block}",
            MetricData::Gauge(blocks),
        ));
        out.push(metric(
            "linux.memory.buddy.free",
            "Free memory held in blocks of each order (blocks × page size × 2^order)",
            "By",
            MetricData::Gauge(bytes),
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kotel_pipelines::{NumberPoint, Value, attr};

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
        let mut c = BuddyinfoCollector::new(tmp.path(), &host())?;
        let mut out = Vec::new();
        c.collect(&mut out)?;
        Ok(out)
    }

    fn points(m: &Metric) -> &[NumberPoint] {
        match &m.data {
            MetricData::Gauge(p) => p,
            _ => panic!("not a gauge"),
        }
    }

    fn get(m: &Metric, node: i64, zone: &str, order: i64) -> Option<i64> {
        points(m)
            .iter()
            .find(|p| {
                attr(&p.attributes, "linux.numa.node") == Some(&Value::Int(node))
                    && attr(&p.attributes, "linux.memory.zone").and_then(|v| v.as_str())
                        == Some(zone)
                    && attr(&p.attributes, "linux.memory.buddy.order") == Some(&Value::Int(order))
            })
            .map(|p| match p.value {
                Number::Int(v) => v,
                Number::Double(d) => panic!("double {d}"),
            })
    }

    #[test]
    fn machine_capture() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/host/buddyinfo"),
        )
        .unwrap();
        let out = collect_text(&text).unwrap();
        let (blocks, bytes) = (&out[0], &out[1]);
        assert_eq!(blocks.name, "linux.memory.buddy.free_blocks");
        assert_eq!(bytes.unit, "By");
        assert_eq!(points(blocks).len(), 33);
        assert_eq!(get(blocks, 0, "Normal", 0), Some(1335));
        assert_eq!(get(blocks, 0, "DMA32", 10), Some(752));
        assert_eq!(get(bytes, 0, "DMA32", 10), Some(752 * 4096 * 1024));
        assert_eq!(get(bytes, 0, "Normal", 3), Some(1262 * 4096 * 8));
        assert_eq!(get(blocks, 0, "Movable", 0), None);
    }

    #[test]
    fn multi_node_and_garbage() {
        let text = "Node 0, zone   Normal   1 2 3\n\
                    garbage line\n\
                    Node 1, zone   Normal   4 5 6\n\
                    Node 1, zone  Movable   7 x 9\n";
        let out = collect_text(text).unwrap();
        assert_eq!(get(&out[0], 1, "Normal", 2), Some(6));
        assert_eq!(get(&out[0], 1, "Movable", 1), None);
        assert_eq!(get(&out[1], 1, "Movable", 2), Some(9 * 4096 * 4));
        assert!(collect_text("").is_err());
    }
}
