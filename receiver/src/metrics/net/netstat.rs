//! `netstat`: every protocol counter group of `/proc/net/netstat`,
//! `/proc/net/snmp` and `/proc/net/snmp6` (Ip, Icmp, IcmpMsg, Tcp, Udp,
//! UdpLite, TcpExt, IpExt, MPTcpExt, Ip6, Icmp6, Udp6, UdpLite6, ...).
//!
//! Group `G` becomes one cumulative sum `linux.net.snmp.<g>` with attribute
//! `linux.snmp.field`; its `*Octets` fields go to `linux.net.snmp.<g>.octets`
//! in bytes; the few fields that are levels or settings become gauges of
//! their own ([`GAUGES`]).

use std::path::Path;
use std::time::Duration;

use kotel_pipelines::{KeyValue, Metric, Number, NumberPoint};

use super::{Cap, Filter, gauge, net_config, point, probe_path, sum};
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode,
};
use crate::procfs::{self, ProcFile, intern};

pub struct Netstat;

net_config!(filtered(
    "`Group:Field` key (`Tcp:RetransSegs`, `Ip6:InOctets`)",
    1000
));

impl CollectorSpec for Netstat {
    const NAME: &'static str = "netstat";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str =
        "IPv4/IPv6 protocol counters, all groups (/proc/net/netstat, snmp, snmp6)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        probe_path(Path::new("/proc/net/snmp"))
    }

    fn build(config: &Config, host: &HostContext, default: Duration) -> anyhow::Result<Instance> {
        let c = NetstatCollector::new(Path::new("/proc"), config, host)?;
        Ok(crate::framework::Instance::metrics(
            config.interval,
            default,
            c,
        ))
    }
}

/// Fields that are levels or settings: (group, field, metric, unit, ms → s, description).
type GaugeSpec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static str,
);
const GAUGES: &[GaugeSpec] = &[
    (
        "Ip",
        "Forwarding",
        "linux.net.snmp.ip.forwarding",
        "{state}",
        false,
        "IPv4 forwarding setting: 1 = forwarding, 2 = not forwarding (Ip Forwarding)",
    ),
    (
        "Ip",
        "DefaultTTL",
        "linux.net.snmp.ip.default_ttl",
        "{hop}",
        false,
        "Default IPv4 time-to-live (Ip DefaultTTL)",
    ),
    (
        "Tcp",
        "RtoAlgorithm",
        "linux.net.snmp.tcp.rto_algorithm",
        "{algorithm}",
        false,
        "TCP retransmission timeout algorithm; 1 = other (Tcp RtoAlgorithm)",
    ),
    (
        "Tcp",
        "RtoMin",
        "linux.net.snmp.tcp.rto_min",
        "s",
        true,
        "Minimum TCP retransmission timeout (Tcp RtoMin)",
    ),
    (
        "Tcp",
        "RtoMax",
        "linux.net.snmp.tcp.rto_max",
        "s",
        true,
        "Maximum TCP retransmission timeout (Tcp RtoMax)",
    ),
    (
        "Tcp",
        "MaxConn",
        "linux.net.snmp.tcp.max_conn",
        "{connection}",
        false,
        "Limit on TCP connections; -1 = no limit (Tcp MaxConn)",
    ),
    (
        "Tcp",
        "CurrEstab",
        "linux.net.snmp.tcp.curr_estab",
        "{connection}",
        false,
        "TCP connections in ESTABLISHED or CLOSE-WAIT now (Tcp CurrEstab)",
    ),
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Octets,
    /// Index into [`GAUGES`].
    Gauge(usize),
}

/// One field, classified once and cached by its position in the file.
struct Field {
    group: &'static str,
    field: &'static str,
    selected: bool,
    kind: Kind,
    /// Counter metric name and description, octets name and description.
    names: [&'static str; 4],
}

/// Per-group metric names, interned.
fn names(group: &str, file: &str) -> [&'static str; 4] {
    let g = group.to_ascii_lowercase();
    [
        intern(&format!("linux.net.snmp.{g}")),
        intern(&format!("{group} counters from {file}, by field")),
        intern(&format!("linux.net.snmp.{g}.octets")),
        intern(&format!(
            "{group} byte counters (*Octets fields) from {file}"
        )),
    ]
}

/// Points of the group being read, flushed into metrics when it ends.
#[derive(Default)]
struct Group {
    name: &'static str,
    names: [&'static str; 4],
    counters: Vec<NumberPoint>,
    octets: Vec<NumberPoint>,
}

impl Group {
    fn flush(&mut self, out: &mut Vec<Metric>) {
        if self.name.is_empty() {
            return;
        }
        let [name, desc, oname, odesc] = self.names;
        if !self.counters.is_empty() {
            out.push(sum(
                name,
                desc,
                "{event}",
                std::mem::take(&mut self.counters),
            ));
        }
        if !self.octets.is_empty() {
            out.push(sum(oname, odesc, "By", std::mem::take(&mut self.octets)));
        }
        self.name = "";
    }
}

struct Source {
    file: ProcFile,
    label: &'static str,
    fields: Vec<Field>,
}

pub(crate) struct NetstatCollector {
    sources: Vec<Source>,
    filter: Filter,
    max_series: usize,
    boot_time: u64,
}

impl NetstatCollector {
    pub(crate) fn new(root: &Path, config: &Config, host: &HostContext) -> anyhow::Result<Self> {
        let mut sources = Vec::new();
        for (rel, label) in [
            ("net/snmp", "/proc/net/snmp"),
            ("net/netstat", "/proc/net/netstat"),
            ("net/snmp6", "/proc/net/snmp6"),
        ] {
            // snmp6 is absent when IPv6 is disabled; netstat on very old kernels.
            match ProcFile::open(root.join(rel)) {
                Ok(file) => sources.push(Source {
                    file,
                    label,
                    fields: Vec::new(),
                }),
                Err(e) if rel == "net/snmp" => return Err(e.into()),
                Err(_) => {}
            }
        }
        Ok(Self {
            sources,
            filter: Filter::new(Netstat::NAME, &config.include, &config.exclude)?,
            max_series: config.max_series,
            boot_time: host.boot_time,
        })
    }
}

fn classify(filter: &Filter, file: &str, group: &[u8], field: &[u8]) -> Field {
    let (g, f) = (
        String::from_utf8_lossy(group),
        String::from_utf8_lossy(field),
    );
    let kind = match GAUGES.iter().position(|(gg, ff, ..)| *gg == g && *ff == f) {
        Some(i) => Kind::Gauge(i),
        None if f.ends_with("Octets") => Kind::Octets,
        None => Kind::Counter,
    };
    Field {
        group: intern(&g),
        field: intern(&f),
        selected: filter.matches(&format!("{g}:{f}")),
        kind,
        names: names(&g, file),
    }
}

/// Split a `/proc/net/snmp6` key into group and field: `Icmp6OutType133` →
/// (`Icmp6`, `OutType133`); the group ends at the first `6`.
fn split6(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = key.iter().position(|&b| b == b'6')? + 1;
    (at < key.len()).then(|| key.split_at(at))
}

impl MetricsCollector for NetstatCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let Self {
            sources,
            filter,
            max_series,
            boot_time,
        } = self;
        let mut cap = Cap::new(*max_series);
        let mut group = Group::default();
        let mut gauges: Vec<(usize, Number)> = Vec::new();
        for src in sources.iter_mut() {
            let buf = src.file.read()?;
            let mut pos = 0usize;
            let mut visit = |g: &[u8], f: &[u8], v: &[u8], out: &mut Vec<Metric>| {
                if src
                    .fields
                    .get(pos)
                    .is_none_or(|e| e.group.as_bytes() != g || e.field.as_bytes() != f)
                {
                    let e = classify(filter, src.label, g, f);
                    if pos < src.fields.len() {
                        src.fields[pos] = e
                    } else {
                        src.fields.push(e)
                    }
                }
                let e = &src.fields[pos];
                pos += 1;
                if group.name != e.group {
                    group.flush(out);
                    group.name = e.group;
                    group.names = e.names;
                }
                if !e.selected {
                    return;
                }
                match e.kind {
                    Kind::Gauge(i) => {
                        let Some(v) = std::str::from_utf8(v)
                            .ok()
                            .and_then(|s| s.parse::<i64>().ok())
                        else {
                            return;
                        };
                        if cap.admit(1) {
                            let n = if GAUGES[i].4 {
                                Number::Double(v as f64 / 1000.0)
                            } else {
                                Number::Int(v)
                            };
                            gauges.push((i, n));
                        }
                    }
                    kind => {
                        let Some(v) = procfs::parse_u64(v) else {
                            return;
                        };
                        if cap.admit(1) {
                            let attrs = vec![KeyValue::new("linux.snmp.field", e.field)];
                            let p = point(attrs, *boot_time, v);
                            if kind == Kind::Octets {
                                group.octets.push(p)
                            } else {
                                group.counters.push(p)
                            }
                        }
                    }
                }
            };
            if src.label.ends_with('6') {
                for line in procfs::lines(buf) {
                    let Some((key, rest)) = procfs::first_field(line) else {
                        continue;
                    };
                    let Some((g, f)) = split6(key) else { continue };
                    visit(g, f, rest.trim_ascii(), out);
                }
            } else {
                // `Group: names...` followed by `Group: values...`.
                let mut lines = procfs::lines(buf);
                while let (Some(head), Some(vals)) = (lines.next(), lines.next()) {
                    let (Some((g, names)), Some((g2, vals))) =
                        (procfs::key_value(head), procfs::key_value(vals))
                    else {
                        continue;
                    };
                    if g != g2 {
                        anyhow::bail!(
                            "{}: unpaired {} line",
                            src.label,
                            String::from_utf8_lossy(g)
                        );
                    }
                    for (f, v) in procfs::fields(names).zip(procfs::fields(vals)) {
                        visit(g, f, v, out);
                    }
                }
            }
            src.fields.truncate(pos);
            group.flush(out);
        }
        for (i, value) in gauges {
            let (.., name, unit, _, desc) = GAUGES[i];
            let p = NumberPoint {
                attributes: Vec::new(),
                start_time: 0,
                value,
            };
            out.push(gauge(name, desc, unit, vec![p]));
        }
        cap.report(Netstat::NAME, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::net::testutil::*;

    fn collect(config: &Config) -> Vec<Metric> {
        let mut c = NetstatCollector::new(&root(), config, &host()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        let mut again = Vec::new();
        c.collect(&mut again).unwrap();
        assert_eq!(out, again);
        out
    }

    /// Every `Group:Field value` pair of the three captured files.
    fn fixture_pairs() -> Vec<(String, String, String)> {
        let mut all = Vec::new();
        for f in ["snmp", "netstat"] {
            let text = std::fs::read_to_string(root().join("net").join(f)).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for pair in lines.chunks(2) {
                let (g, names) = pair[0].split_once(':').unwrap();
                let vals = pair[1].split_once(':').unwrap().1;
                for (n, v) in names.split_whitespace().zip(vals.split_whitespace()) {
                    all.push((g.to_owned(), n.to_owned(), v.to_owned()));
                }
            }
        }
        let text = std::fs::read_to_string(root().join("net/snmp6")).unwrap();
        for l in text.lines() {
            let (k, v) = l.split_once(char::is_whitespace).unwrap();
            let (g, f) = split6(k.as_bytes()).unwrap();
            all.push((
                String::from_utf8_lossy(g).into(),
                String::from_utf8_lossy(f).into(),
                v.trim().into(),
            ));
        }
        all
    }

    #[test]
    fn every_group_and_field() {
        let out = collect(&Config::default());
        let pairs = fixture_pairs();
        for group in [
            "ip", "icmp", "icmpmsg", "tcp", "udp", "udplite", "tcpext", "ipext", "mptcpext", "ip6",
            "icmp6", "udp6", "udplite6",
        ] {
            assert!(
                is_sum(find(&out, &format!("linux.net.snmp.{group}"))),
                "{group}"
            );
        }
        let mut n = 0;
        for (g, f, v) in &pairs {
            if let Some(&(.., name, _, ms, _)) = GAUGES.iter().find(|x| x.0 == g && x.1 == f) {
                let m = find(&out, name);
                let want: i64 = v.parse().unwrap();
                match points(m)[0].value {
                    Number::Int(x) => assert_eq!(x, want, "{name}"),
                    Number::Double(x) => assert!(ms && (x - want as f64 / 1000.0).abs() < 1e-9),
                }
            } else {
                let suffix = if f.ends_with("Octets") { ".octets" } else { "" };
                let m = find(
                    &out,
                    &format!("linux.net.snmp.{}{suffix}", g.to_lowercase()),
                );
                assert_eq!(
                    value(m, &[("linux.snmp.field", f)]),
                    Some(v.parse().unwrap()),
                    "{g}:{f}"
                );
            }
            n += 1;
        }
        let series: usize = out.iter().map(|m| points(m).len()).sum();
        assert_eq!(series, n + 1, "one series per field plus the drop gauge");
        assert_eq!(find(&out, "linux.net.snmp.ipext.octets").unit, "By");
        assert_eq!(
            value(find(&out, "linux.net.snmp.tcp.max_conn"), &[]),
            Some(-1)
        );
        assert_eq!(find(&out, "linux.net.snmp.tcp.rto_min").unit, "s");
        assert_eq!(
            value(
                find(&out, "linux.net.snmp.udp"),
                &[("linux.snmp.field", "NoPorts")]
            ),
            Some(3450)
        );
    }

    #[test]
    fn filters_and_cap() {
        let config = Config {
            include: vec!["Tcp:.*".into(), "Udp6:.*".into()],
            exclude: vec!["Tcp:Rto.*".into()],
            ..Config::default()
        };
        let out = collect(&config);
        let names: Vec<&str> = out.iter().map(|m| m.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "linux.net.snmp.tcp",
                "linux.net.snmp.udp6",
                "linux.net.snmp.tcp.max_conn",
                "linux.net.snmp.tcp.curr_estab",
                "linux.collector.series.dropped"
            ]
        );
        let out = collect(&Config {
            max_series: 10,
            ..Config::default()
        });
        let total = fixture_pairs().len() as i64;
        assert_eq!(dropped(&out), total - 10);
        assert_eq!(out.iter().map(|m| points(m).len()).sum::<usize>(), 11);
    }

    #[test]
    fn split_snmp6_keys() {
        assert_eq!(
            split6(b"Icmp6OutType133"),
            Some((&b"Icmp6"[..], &b"OutType133"[..]))
        );
        assert_eq!(
            split6(b"UdpLite6InErrors"),
            Some((&b"UdpLite6"[..], &b"InErrors"[..]))
        );
        assert_eq!(split6(b"Ip6"), None);
        assert_eq!(split6(b"NoSix"), None);
    }

    #[test]
    fn without_snmp6_and_with_new_fields() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        let snmp = dir.path().join("net/snmp");
        std::fs::write(&snmp, "Udp: InDatagrams NoPorts\nUdp: 5 6\n").unwrap();
        let mut c = NetstatCollector::new(dir.path(), &Config::default(), &host()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        assert_eq!(points(find(&out, "linux.net.snmp.udp")).len(), 2);
        // A kernel upgrade is not needed for the layout to change: re-classify.
        std::fs::write(&snmp, "Udp: InDatagrams MemErrors NoPorts\nUdp: 5 1 6\n").unwrap();
        out.clear();
        c.collect(&mut out).unwrap();
        let udp = find(&out, "linux.net.snmp.udp");
        assert_eq!(value(udp, &[("linux.snmp.field", "MemErrors")]), Some(1));
        assert_eq!(value(udp, &[("linux.snmp.field", "NoPorts")]), Some(6));
        std::fs::write(&snmp, "Udp: InDatagrams\nTcp: 5\n").unwrap();
        assert!(c.collect(&mut Vec::new()).is_err());
    }
}
