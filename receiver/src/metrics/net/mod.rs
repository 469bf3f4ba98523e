//! Network collectors: interfaces, protocol counters, sockets, softnet,
//! qdiscs, neighbour tables and conntrack (see docs/metrics.md, "Network").
//!
//! Each collector reads the network namespace kotel runs in. This module
//! holds what they share: config boilerplate, whole-name regex filters, the
//! series cap, start-time tracking for counters that start after boot, and
//! 32-bit counter wrap extension.

pub mod conntrack;
pub mod neighbor;
pub mod netdev;
pub mod netstat;
pub mod qdisc;
pub mod sockstat;
pub mod softnet;

mod netlink;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

use anyhow::Context as _;
use kotel_pipelines::{KeyValue, Metric, MetricData, Number, NumberPoint};

/// Declares a collector `Config` with `enabled` and `interval`, plus, with
/// `filtered(what, max)`, `include`/`exclude` regexes over `what` and a
/// `max_series` cap defaulting to `max`.
macro_rules! net_config {
    () => {
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Config {
            #[serde(default = "crate::framework::spec::default_true")]
            pub enabled: bool,
            #[serde(with = "humantime_serde")]
            pub interval: Option<std::time::Duration>,
        }
        impl Default for Config {
            fn default() -> Self {
                Self {
                    enabled: true,
                    interval: None,
                }
            }
        }
        crate::common_settings!(Config);
    };
    (filtered($what:literal, $max:expr)) => {
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Config {
            #[serde(default = "crate::framework::spec::default_true")]
            pub enabled: bool,
            #[serde(with = "humantime_serde")]
            pub interval: Option<std::time::Duration>,
            #[doc = concat!("Regexes matched against the whole ", $what, "; empty = all.")]
            pub include: Vec<String>,
            #[doc = concat!("Regexes (whole ", $what, ") never reported; wins over `include`.")]
            pub exclude: Vec<String>,
            /// Most series per collection (0 = no limit); the rest are
            /// counted in `linux.collector.series.dropped`.
            pub max_series: usize,
        }
        impl Default for Config {
            fn default() -> Self {
                Self {
                    enabled: true,
                    interval: None,
                    include: Vec::new(),
                    exclude: Vec::new(),
                    max_series: $max,
                }
            }
        }
        crate::common_settings!(Config);
    };
}
pub(crate) use net_config;

pub(crate) use crate::framework::spec::probe_path;

pub(crate) use super::filter::Filter;

/// Series budget of one collection.
pub(crate) struct Cap {
    max: usize,
    used: usize,
    dropped: u64,
}

impl Cap {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            used: 0,
            dropped: 0,
        }
    }

    /// Whether `n` more series fit; counts them as dropped when not.
    pub fn admit(&mut self, n: usize) -> bool {
        if self.max > 0 && self.used + n > self.max {
            self.dropped += n as u64;
            false
        } else {
            self.used += n;
            true
        }
    }

    /// Push `linux.collector.series.dropped` (only when a cap is set).
    pub fn report(&self, collector: &'static str, out: &mut Vec<Metric>) {
        if self.max > 0 {
            out.push(gauge(
                "linux.collector.series.dropped",
                "Series left out of the last collection by the max_series cap",
                "{series}",
                vec![point(
                    vec![KeyValue::new("kotel.collector.name", collector)],
                    0,
                    self.dropped,
                )],
            ));
        }
    }
}

pub(crate) fn int(v: u64) -> Number {
    Number::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

pub(crate) fn point(attributes: Vec<KeyValue>, start_time: u64, value: u64) -> NumberPoint {
    NumberPoint {
        attributes,
        start_time,
        value: int(value),
    }
}

pub(crate) fn sum(
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    points: Vec<NumberPoint>,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: MetricData::Sum {
            monotonic: true,
            points,
        },
    }
}

pub(crate) fn gauge(
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

/// Start times of counters whose object (an interface, a qdisc) can appear
/// after boot or be recreated: an object seen on the first collection
/// started at boot as far as we can tell; one that appears later, or whose
/// reference counter steps back (recreated under the same key), started
/// after the previous collection.
pub(crate) struct Starts<K> {
    boot_time: u64,
    prev_collection: Option<u64>,
    now: u64,
    /// key -> (start time, last reference value, seen this cycle)
    map: HashMap<K, (u64, u64, bool)>,
}

impl<K: Hash + Eq> Starts<K> {
    pub fn new(boot_time: u64) -> Self {
        Self {
            boot_time,
            prev_collection: None,
            now: 0,
            map: HashMap::new(),
        }
    }

    pub fn begin(&mut self, now: u64) {
        self.now = now;
    }

    /// Start time for `key`, whose monotonic reference counter reads `reference`.
    pub fn start<Q>(&mut self, key: &Q, reference: u64) -> u64
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let later = self.prev_collection.unwrap_or(self.boot_time);
        match self.map.get_mut(key) {
            Some(e) => {
                if reference < e.1 {
                    e.0 = later;
                }
                e.1 = reference;
                e.2 = true;
                e.0
            }
            None => {
                self.map.insert(key.to_owned(), (later, reference, true));
                later
            }
        }
    }

    /// Forget keys not seen this cycle.
    pub fn end(&mut self) {
        self.map.retain(|_, e| std::mem::take(&mut e.2));
        self.prev_collection = Some(self.now);
    }
}

/// Extends a 32-bit kernel counter to 64 bits across wraps seen between
/// collections (wraps before the first collection cannot be known).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Wrap32 {
    last: u32,
    high: u64,
}

impl Wrap32 {
    pub fn update(&mut self, raw: u32) -> u64 {
        if raw < self.last {
            self.high += 1 << 32;
        }
        self.last = raw;
        self.high + u64::from(raw)
    }
}

/// Column sums of a per-CPU hex table (`/proc/net/stat/*`): a header line of
/// names, then one row per CPU. Calls `f(name, sum)` per column; the
/// `entries` column is a table-wide level repeated on every row, so its
/// value is taken from the first row instead of summed.
pub(crate) fn hex_table(buf: &[u8], mut f: impl FnMut(&[u8], u64)) -> anyhow::Result<()> {
    let mut lines = crate::procfs::lines(buf);
    let header = lines.next().context("empty table")?;
    let mut sums = [0u64; 32];
    let mut rows = 0;
    for row in lines {
        for (i, field) in crate::procfs::fields(row).take(sums.len()).enumerate() {
            let v = parse_hex(field).context("malformed hex field")?;
            if i == 0 && rows > 0 {
                continue;
            }
            sums[i] = sums[i].wrapping_add(v);
        }
        rows += 1;
    }
    for (name, &v) in crate::procfs::fields(header).zip(&sums) {
        f(name, v);
    }
    Ok(())
}

pub(crate) fn parse_hex(field: &[u8]) -> Option<u64> {
    if field.is_empty() || field.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for &b in field {
        v = (v << 4) | u64::from((b as char).to_digit(16)?);
    }
    Some(v)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use crate::framework::HostContext;
    use kotel_pipelines::{Value, attr};

    pub fn host() -> HostContext {
        HostContext {
            boot_time: 1_700_000_000_000_000_000,
            agent_start: 1_700_000_100_000_000_000,
            clock_tick: 0.01,
            page_size: 4096,
            capture_dir: std::env::temp_dir(),
        }
    }

    /// The captured `/proc` tree under tests/fixtures/net.
    pub fn root() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/net/proc")
    }

    pub fn find<'a>(out: &'a [Metric], name: &str) -> &'a Metric {
        out.iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    pub fn points(m: &Metric) -> &[NumberPoint] {
        match &m.data {
            MetricData::Gauge(p) | MetricData::Sum { points: p, .. } => p,
            MetricData::Histogram(_) => panic!("histogram"),
        }
    }

    pub fn is_sum(m: &Metric) -> bool {
        matches!(
            m.data,
            MetricData::Sum {
                monotonic: true,
                ..
            }
        )
    }

    /// The value of the point of `m` whose attributes include all of `want`.
    pub fn value(m: &Metric, want: &[(&str, &str)]) -> Option<i64> {
        points(m).iter().find_map(|p| {
            let ok = want
                .iter()
                .all(|(k, v)| attr(&p.attributes, k).and_then(Value::as_str) == Some(*v));
            match (ok, p.value) {
                (true, Number::Int(v)) => Some(v),
                _ => None,
            }
        })
    }

    pub fn dropped(out: &[Metric]) -> i64 {
        value(find(out, "linux.collector.series.dropped"), &[]).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_counts_overflow() {
        let mut c = Cap::new(5);
        assert!(c.admit(4));
        assert!(!c.admit(2));
        assert!(c.admit(1));
        assert!(!c.admit(1));
        assert_eq!((c.used, c.dropped), (5, 3));
        let mut unlimited = Cap::new(0);
        assert!(unlimited.admit(1_000_000));
        let mut out = Vec::new();
        unlimited.report("x", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn wrap32_extends() {
        let mut w = Wrap32::default();
        assert_eq!(w.update(10), 10);
        assert_eq!(w.update(u32::MAX), u64::from(u32::MAX));
        assert_eq!(w.update(5), (1 << 32) + 5);
        assert_eq!(w.update(5), (1 << 32) + 5);
    }

    #[test]
    fn starts_track_new_and_recreated_objects() {
        let boot = 100;
        let mut s = Starts::<&str>::new(boot);
        s.begin(1000);
        assert_eq!(s.start(&"eth0", 50), boot);
        s.end();
        s.begin(2000);
        assert_eq!(s.start(&"eth0", 60), boot);
        assert_eq!(
            s.start(&"veth1", 1),
            1000,
            "appeared after the first collection"
        );
        s.end();
        s.begin(3000);
        assert_eq!(s.start(&"eth0", 3), 2000, "counter stepped back: recreated");
        s.end();
        s.begin(4000);
        // veth1 was not seen at 3000, so it is new again.
        assert_eq!(s.start(&"veth1", 9), 3000);
    }

    #[test]
    fn hex_tables() {
        let buf =
            b"entries  allocs lookups\n00000004 00000002 0000000a\n00000004 00000001 ffffffff\n";
        let mut got = Vec::new();
        hex_table(buf, |n, v| {
            got.push((String::from_utf8_lossy(n).into_owned(), v))
        })
        .unwrap();
        assert_eq!(
            got,
            vec![
                ("entries".into(), 4),
                ("allocs".into(), 3),
                ("lookups".into(), 10 + 0xffff_ffff)
            ]
        );
        assert!(hex_table(b"a b\nzz 1\n", |_, _| ()).is_err());
        assert_eq!(parse_hex(b"0000127e"), Some(0x127e));
        assert_eq!(parse_hex(b""), None);
    }
}
