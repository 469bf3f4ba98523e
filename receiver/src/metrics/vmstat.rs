//! `vmstat`: virtual-memory statistics from `/proc/vmstat`.
//!
//! Every selected key becomes `linux.vmstat.<key>`:
//! - current amounts (`nr_*` page counts) are gauges in bytes;
//! - everything else counts events since boot: cumulative sums in `{page}`
//!   (pages scanned, stolen, swapped...), `{fault}`, bytes (`pgpgin`,
//!   `pgpgout`) or `{event}`.
//!
//! See [`classify`] for the few keys whose kernel unit is not a page.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use kotel_pipelines::{KeyValue, Metric, MetricData, Number, NumberPoint};
use regex::RegexSet;
use serde::{Deserialize, Serialize};

use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode, spec::default_true,
};
use crate::procfs::{self, ProcFile};

const VMSTAT: &str = "/proc/vmstat";
const THP_PMD_SIZE: &str = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size";

/// HUATUO's host vmstat key set plus a few reclaim/OOM signals.
const DEFAULT_INCLUDE: &[&str] = &[
    "allocstall.*",
    "nr_active_anon",
    "nr_active_file",
    "nr_inactive_anon",
    "nr_inactive_file",
    "nr_boost_pages",
    "nr_dirty",
    "nr_free_pages",
    "nr_kswapd_boost",
    "nr_mlock",
    "nr_shmem",
    "nr_slab_reclaimable",
    "nr_slab_unreclaimable",
    "nr_unevictable",
    "nr_writeback",
    "numa_pages_migrated",
    "pgdeactivate",
    "pgrefill",
    "pgscan_direct",
    "pgscan_kswapd",
    "pgsteal_direct",
    "pgsteal_kswapd",
    "compact_stall",
    "pgmajfault",
    "pgfault",
    "oom_kill",
];

pub struct Vmstat;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Keys to report: regular expressions matched against the whole key.
    /// An empty list selects every key.
    pub include: Vec<String>,
    /// Keys never to report (whole-key regular expressions); wins over `include`.
    pub exclude: Vec<String>,
    /// Most keys reported per collection (0 = no limit); the rest are
    /// counted in `linux.collector.series.dropped`.
    pub max_series: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            include: DEFAULT_INCLUDE.iter().map(|s| (*s).to_owned()).collect(),
            exclude: Vec::new(),
            max_series: 500,
        }
    }
}

crate::common_settings!(Config);

impl CollectorSpec for Vmstat {
    const NAME: &'static str = "vmstat";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str =
        "Virtual-memory counters and page counts (/proc/vmstat), filtered by key";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        crate::framework::spec::probe_path(VMSTAT)
    }

    fn build(
        config: &Config,
        host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let collector = VmstatCollector::new(Path::new(VMSTAT), config, host)?;
        Ok(Instance::metrics(
            config.interval,
            default_interval,
            collector,
        ))
    }
}

/// Compile whole-key patterns; the error names the offending pattern.
fn key_set(what: &str, patterns: &[String]) -> anyhow::Result<RegexSet> {
    for p in patterns {
        regex::Regex::new(&format!("^(?:{p})$"))
            .with_context(|| format!("vmstat: invalid {what} regex {p:?}"))?;
    }
    Ok(RegexSet::new(
        patterns.iter().map(|p| format!("^(?:{p})$")),
    )?)
}

/// How one key is reported.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Kind {
    gauge: bool,
    /// Multiplier from the kernel's number to `unit`.
    scale: u64,
    unit: &'static str,
}

/// `nr_*` keys that count events since boot rather than current pages.
const NR_COUNTERS: &[&str] = &[
    "nr_dirtied",
    "nr_written",
    "nr_throttled_written",
    "nr_vmscan_write",
    "nr_vmscan_immediate_reclaim",
    "nr_foll_pin_acquired",
    "nr_foll_pin_released",
];
/// `nr_*` keys the kernel prints in transparent huge pages, not pages.
const THP_GAUGES: &[&str] = &[
    "nr_anon_transparent_hugepages",
    "nr_shmem_hugepages",
    "nr_shmem_pmdmapped",
    "nr_file_hugepages",
    "nr_file_pmdmapped",
];
/// `nr_*` keys the kernel prints in KiB.
const KIB_GAUGES: &[&str] = &["nr_kernel_stack", "nr_shadow_call_stack"];
/// Event counters outside `pg*`/`pswp*` that count pages.
const PAGE_COUNTERS: &[&str] = &[
    "numa_pages_migrated",
    "compact_migrate_scanned",
    "compact_free_scanned",
    "compact_isolated",
];

fn classify(key: &str, page_size: u64, thp_size: u64) -> Kind {
    let gauge = |scale, unit| Kind {
        gauge: true,
        scale,
        unit,
    };
    let counter = |scale, unit| Kind {
        gauge: false,
        scale,
        unit,
    };
    if key.starts_with("nr_") && !NR_COUNTERS.contains(&key) && !key.starts_with("nr_tlb_") {
        return if THP_GAUGES.contains(&key) {
            gauge(thp_size, "By")
        } else if KIB_GAUGES.contains(&key) {
            gauge(1024, "By")
        } else if key == "nr_zspages" {
            gauge(1, "{zspage}")
        } else {
            gauge(page_size, "By")
        };
    }
    match key {
        "workingset_nodes" => gauge(1, "{node}"),
        // The kernel converts these from sectors to KiB.
        "pgpgin" | "pgpgout" => counter(1024, "By"),
        "pgfault" | "pgmajfault" => counter(1, "{fault}"),
        k if k.starts_with("pg")
            || k.starts_with("pswp")
            || NR_COUNTERS.contains(&k)
            || PAGE_COUNTERS.contains(&k) =>
        {
            counter(1, "{page}")
        }
        _ => counter(1, "{event}"),
    }
}

/// One vmstat key, classified once and cached by line position.
#[derive(Debug)]
struct Entry {
    key: Box<[u8]>,
    selected: bool,
    kind: Kind,
    name: &'static str,
    description: &'static str,
}

/// Which keys are reported, and in which units.
struct Selector {
    include: Option<RegexSet>,
    exclude: RegexSet,
    page_size: u64,
    thp_size: u64,
}

impl Selector {
    fn entry(&self, key: &[u8]) -> Entry {
        let text = String::from_utf8_lossy(key);
        let selected = self.include.as_ref().is_none_or(|s| s.is_match(&text))
            && !self.exclude.is_match(&text);
        let kind = classify(&text, self.page_size, self.thp_size);
        let what = if kind.gauge {
            "current amount"
        } else {
            "events since boot"
        };
        Entry {
            key: key.into(),
            selected,
            kind,
            name: procfs::intern(&format!("linux.vmstat.{text}")),
            description: procfs::intern(&format!("{text} from /proc/vmstat ({what})")),
        }
    }
}

struct VmstatCollector {
    file: ProcFile,
    selector: Selector,
    max_series: usize,
    boot_time: u64,
    entries: Vec<Entry>,
}

impl VmstatCollector {
    fn new(path: &Path, config: &Config, host: &HostContext) -> anyhow::Result<Self> {
        let include = if config.include.is_empty() {
            None
        } else {
            Some(key_set("include", &config.include)?)
        };
        let exclude = key_set("exclude", &config.exclude)?;
        let thp_size = std::fs::read_to_string(THP_PMD_SIZE)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            // A PMD maps page_size / 8 pages on 64-bit.
            .unwrap_or(host.page_size * (host.page_size / 8));
        Ok(Self {
            file: ProcFile::open(path)?,
            selector: Selector {
                include,
                exclude,
                page_size: host.page_size,
                thp_size,
            },
            max_series: config.max_series,
            boot_time: host.boot_time,
            entries: Vec::new(),
        })
    }
}

impl MetricsCollector for VmstatCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let Self {
            file,
            selector,
            max_series,
            boot_time,
            entries,
        } = self;
        let (max_series, boot_time) = (*max_series, *boot_time);
        let buf = file.read()?;
        let mut emitted = 0usize;
        let mut dropped = 0u64;
        let mut lines = 0usize;
        for (i, line) in procfs::lines(buf).enumerate() {
            lines += 1;
            let Some((key, rest)) = procfs::first_field(line) else {
                continue;
            };
            if entries.get(i).is_none_or(|e| *e.key != *key) {
                let entry = selector.entry(key);
                if i < entries.len() {
                    entries[i] = entry;
                } else {
                    entries.push(entry);
                }
            }
            let e = &entries[i];
            if !e.selected {
                continue;
            }
            let Some(raw) = procfs::fields(rest).next().and_then(procfs::parse_u64) else {
                continue;
            };
            if max_series > 0 && emitted >= max_series {
                dropped += 1;
                continue;
            }
            emitted += 1;
            let value =
                Number::Int(i64::try_from(raw.saturating_mul(e.kind.scale)).unwrap_or(i64::MAX));
            let data = if e.kind.gauge {
                MetricData::Gauge(vec![NumberPoint {
                    attributes: Vec::new(),
                    start_time: 0,
                    value,
                }])
            } else {
                MetricData::Sum {
                    monotonic: true,
                    points: vec![NumberPoint {
                        attributes: Vec::new(),
                        start_time: boot_time,
                        value,
                    }],
                }
            };
            out.push(Metric {
                name: e.name.into(),
                description: e.description.into(),
                unit: e.kind.unit.into(),
                data,
            });
        }
        entries.truncate(lines);
        if lines == 0 {
            anyhow::bail!("{} is empty", file.path().display());
        }
        if max_series > 0 {
            out.push(Metric {
                name: "linux.collector.series.dropped".into(),
                description: "Series left out of the last collection by the max_series cap".into(),
                unit: "{series}".into(),
                data: MetricData::Gauge(vec![NumberPoint {
                    attributes: vec![KeyValue::new("kotel.collector.name", Vmstat::NAME)],
                    start_time: 0,
                    value: Number::Int(i64::try_from(dropped).unwrap_or(i64::MAX)),
                }]),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostContext {
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

    fn raw(key: &str) -> Option<i64> {
        let text = std::fs::read_to_string(fixture("vmstat")).unwrap();
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().unwrap())
        })
    }

    fn collect(config: &Config) -> Vec<Metric> {
        let mut c = VmstatCollector::new(&fixture("vmstat"), config, &host()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
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

    fn single(m: &Metric) -> &NumberPoint {
        match &m.data {
            MetricData::Gauge(p) | MetricData::Sum { points: p, .. } => &p[0],
            MetricData::Histogram(_) => panic!("histogram"),
        }
    }

    fn dropped(out: &[Metric]) -> Number {
        single(find(out, "linux.collector.series.dropped")).value
    }

    #[test]
    fn default_selection() {
        let out = collect(&Config::default());
        let nr_dirty = find(&out, "linux.vmstat.nr_dirty");
        assert_eq!(nr_dirty.unit, "By");
        assert!(matches!(nr_dirty.data, MetricData::Gauge(_)));
        assert_eq!(
            single(nr_dirty).value,
            Number::Int(raw("nr_dirty").unwrap() * 4096)
        );

        let pgfault = find(&out, "linux.vmstat.pgfault");
        assert_eq!(pgfault.unit, "{fault}");
        assert!(matches!(
            pgfault.data,
            MetricData::Sum {
                monotonic: true,
                ..
            }
        ));
        assert_eq!(single(pgfault).start_time, host().boot_time);
        assert_eq!(single(pgfault).value, Number::Int(raw("pgfault").unwrap()));

        assert_eq!(find(&out, "linux.vmstat.pgscan_kswapd").unit, "{page}");
        assert_eq!(find(&out, "linux.vmstat.oom_kill").unit, "{event}");
        assert_eq!(find(&out, "linux.vmstat.allocstall_normal").unit, "{event}");
        assert_eq!(
            find(&out, "linux.vmstat.numa_pages_migrated").unit,
            "{page}"
        );
        assert!(out.iter().all(
            |m| m.name != "linux.vmstat.pgpgin" && m.name != "linux.vmstat.nr_zone_active_anon"
        ));

        // Exactly the default keys present in the fixture, plus the drop gauge.
        let text = std::fs::read_to_string(fixture("vmstat")).unwrap();
        let set = key_set("include", &Config::default().include).unwrap();
        let want = text
            .lines()
            .filter(|l| set.is_match(l.split(' ').next().unwrap()))
            .count();
        assert_eq!(out.len(), want + 1);
        assert_eq!(dropped(&out), Number::Int(0));
    }

    #[test]
    fn include_all_exclude_some() {
        let config = Config {
            include: vec![],
            exclude: vec!["numa_.*".into(), "thp_.*".into()],
            ..Config::default()
        };
        let out = collect(&config);
        let text = std::fs::read_to_string(fixture("vmstat")).unwrap();
        let want = text
            .lines()
            .filter(|l| !l.starts_with("numa_") && !l.starts_with("thp_"))
            .count();
        assert_eq!(out.len(), want + 1);
        assert!(
            out.iter()
                .all(|m| !m.name.starts_with("linux.vmstat.numa_"))
        );
        // Keys not in page units.
        let pgpgin = find(&out, "linux.vmstat.pgpgin");
        assert_eq!(
            (pgpgin.unit.as_ref(), single(pgpgin).value),
            ("By", Number::Int(raw("pgpgin").unwrap() * 1024))
        );
        let stack = find(&out, "linux.vmstat.nr_kernel_stack");
        assert_eq!(
            single(stack).value,
            Number::Int(raw("nr_kernel_stack").unwrap() * 1024)
        );
        let dirtied = find(&out, "linux.vmstat.nr_dirtied");
        assert!(matches!(
            dirtied.data,
            MetricData::Sum {
                monotonic: true,
                ..
            }
        ));
        assert_eq!(dirtied.unit, "{page}");
        assert_eq!(find(&out, "linux.vmstat.workingset_nodes").unit, "{node}");
    }

    #[test]
    fn anchored_patterns() {
        // "pgfault" must not match "pgfault_something"; "pg" alone matches nothing.
        let config = Config {
            include: vec!["pg".into(), "pgfault".into()],
            ..Config::default()
        };
        let out = collect(&config);
        assert_eq!(out.len(), 2);
        find(&out, "linux.vmstat.pgfault");
    }

    #[test]
    fn max_series_cap() {
        let config = Config {
            include: vec![],
            max_series: 10,
            ..Config::default()
        };
        let out = collect(&config);
        assert_eq!(out.len(), 11);
        let total = std::fs::read_to_string(fixture("vmstat"))
            .unwrap()
            .lines()
            .count();
        assert_eq!(dropped(&out), Number::Int(total as i64 - 10));
        let unlimited = collect(&Config {
            include: vec![],
            max_series: 0,
            ..Config::default()
        });
        assert_eq!(unlimited.len(), total);
    }

    #[test]
    fn invalid_regex_is_a_config_error() {
        let config = Config {
            exclude: vec!["nr_(".into()],
            ..Config::default()
        };
        let err = VmstatCollector::new(&fixture("vmstat"), &config, &host())
            .err()
            .unwrap();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("invalid exclude regex") && msg.contains("nr_("),
            "{msg}"
        );
        assert!(Vmstat::build(&config, &host(), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn classification() {
        let k = |key| classify(key, 4096, 2 << 20);
        assert_eq!(
            k("nr_free_pages"),
            Kind {
                gauge: true,
                scale: 4096,
                unit: "By"
            }
        );
        assert_eq!(
            k("nr_anon_transparent_hugepages"),
            Kind {
                gauge: true,
                scale: 2 << 20,
                unit: "By"
            }
        );
        assert_eq!(
            k("nr_written"),
            Kind {
                gauge: false,
                scale: 1,
                unit: "{page}"
            }
        );
        assert_eq!(
            k("nr_tlb_remote_flush"),
            Kind {
                gauge: false,
                scale: 1,
                unit: "{event}"
            }
        );
        assert_eq!(
            k("pswpin"),
            Kind {
                gauge: false,
                scale: 1,
                unit: "{page}"
            }
        );
        assert_eq!(
            k("compact_stall"),
            Kind {
                gauge: false,
                scale: 1,
                unit: "{event}"
            }
        );
    }

    #[test]
    fn config_deserializes() {
        let c: Config = serde_json::from_str(r#"{"include": ["pg.*"], "max_series": 3}"#).unwrap();
        assert_eq!(c.include, vec!["pg.*"]);
        assert!(c.exclude.is_empty() && c.enabled);
        let d: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(d, Config::default());
        assert!(serde_json::from_str::<Config>(r#"{"includes": []}"#).is_err());
    }
}
