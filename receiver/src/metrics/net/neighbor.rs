//! `neighbor`: ARP (IPv4) and NDP (IPv6) neighbour entries per interface,
//! and the kernel's neighbour-table statistics.
//!
//! IPv4 entries come from `/proc/net/arp`, IPv6 entries from an
//! `RTM_GETNEIGH` dump; both skip `NUD_NOARP` entries, as `/proc/net/arp`
//! does. Table sizes and events come from `/proc/net/stat/{arp,ndisc}_cache`
//! (all network namespaces).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use kotel_pipelines::{KeyValue, Metric, Value};

use super::netlink::{IfNames, Rtnetlink, u32_at};
use super::{Cap, Filter, gauge, hex_table, net_config, point, probe_path, sum};
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode,
};
use crate::procfs::{self, ProcFile, intern};

pub struct Neighbor;

net_config!(filtered("interface name", 2000));

impl CollectorSpec for Neighbor {
    const NAME: &'static str = "neighbor";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str =
        "ARP/NDP neighbour entries per interface and neighbour-table statistics";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        probe_path(Path::new("/proc/net/arp"))
    }

    fn build(config: &Config, host: &HostContext, default: Duration) -> anyhow::Result<Instance> {
        let c = NeighborCollector::new(Path::new("/proc"), config, host, true)?;
        Ok(crate::framework::Instance::metrics(
            config.interval,
            default,
            c,
        ))
    }
}

const NUD_NOARP: u16 = 0x40;
const NDMSG_LEN: usize = 12;

pub(crate) struct NeighborCollector {
    arp: ProcFile,
    tables: Vec<(ProcFile, &'static str)>,
    netlink: Option<(Rtnetlink, IfNames)>,
    filter: Filter,
    max_series: usize,
    boot_time: u64,
    /// Entries per device this cycle: [ipv4, ipv6].
    counts: HashMap<Vec<u8>, [u64; 2]>,
}

impl NeighborCollector {
    pub(crate) fn new(
        root: &Path,
        config: &Config,
        host: &HostContext,
        ipv6: bool,
    ) -> anyhow::Result<Self> {
        let mut tables = Vec::new();
        for (rel, ty) in [
            ("net/stat/arp_cache", "ipv4"),
            ("net/stat/ndisc_cache", "ipv6"),
        ] {
            if let Ok(f) = ProcFile::open(root.join(rel)) {
                tables.push((f, ty));
            }
        }
        let netlink = if ipv6 {
            Rtnetlink::open().ok().map(|n| (n, IfNames::default()))
        } else {
            None
        };
        Ok(Self {
            arp: ProcFile::open(root.join("net/arp"))?,
            tables,
            netlink,
            filter: Filter::new(Neighbor::NAME, &config.include, &config.exclude)?,
            max_series: config.max_series,
            boot_time: host.boot_time,
            counts: HashMap::new(),
        })
    }
}

fn bump(counts: &mut HashMap<Vec<u8>, [u64; 2]>, dev: &[u8], family: usize) {
    match counts.get_mut(dev) {
        Some(c) => c[family] += 1,
        None => {
            let mut c = [0; 2];
            c[family] = 1;
            counts.insert(dev.to_vec(), c);
        }
    }
}

impl MetricsCollector for NeighborCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        self.counts.values_mut().for_each(|c| *c = [0; 2]);
        // "IP address  HW type  Flags  HW address  Mask  Device"
        for line in procfs::lines(self.arp.read()?).skip(1) {
            if let Some(dev) = procfs::fields(line).nth(5) {
                bump(&mut self.counts, dev, 0);
            }
        }
        if let Some((nl, names)) = &mut self.netlink {
            let counts = &mut self.counts;
            let mut req = [0u8; NDMSG_LEN];
            req[0] = libc::AF_INET6 as u8;
            nl.dump(libc::RTM_GETNEIGH, &req, |body| {
                let state = body
                    .get(8..10)
                    .map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]));
                if body.first() != Some(&(libc::AF_INET6 as u8)) || state & NUD_NOARP != 0 {
                    return;
                }
                if let Some(name) = u32_at(body, 4).and_then(|i| names.get(i)) {
                    bump(counts, name.as_bytes(), 1);
                }
            })?;
            names.end_cycle();
        }
        self.counts.retain(|_, c| *c != [0; 2]);

        let mut cap = Cap::new(self.max_series);
        let mut entries = Vec::new();
        let mut devices: Vec<_> = self.counts.iter().collect();
        devices.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (dev, c) in devices {
            let name = String::from_utf8_lossy(dev);
            if !self.filter.matches(&name) {
                continue;
            }
            let n = c.iter().filter(|&&v| v > 0).count();
            if !cap.admit(n) {
                continue;
            }
            for (v, ty) in c.iter().zip(["ipv4", "ipv6"]) {
                if *v > 0 {
                    let attrs = vec![
                        KeyValue::new(
                            "network.interface.name",
                            Value::from(name.clone().into_owned()),
                        ),
                        KeyValue::new("network.type", ty),
                    ];
                    entries.push(point(attrs, 0, *v));
                }
            }
        }
        if !entries.is_empty() {
            out.push(gauge(
                "linux.net.neighbor.entries",
                "Neighbour (ARP/NDP) entries per interface in this namespace",
                "{entry}",
                entries,
            ));
        }

        let mut sizes = Vec::new();
        let mut events = Vec::new();
        for (file, ty) in &mut self.tables {
            hex_table(file.read()?, |name, v| {
                if name == b"entries" {
                    sizes.push(point(vec![KeyValue::new("network.type", *ty)], 0, v));
                } else {
                    let ev = intern(&String::from_utf8_lossy(name));
                    let attrs = vec![
                        KeyValue::new("network.type", *ty),
                        KeyValue::new("linux.neighbor.event", ev),
                    ];
                    events.push(point(attrs, self.boot_time, v));
                }
            })?;
        }
        if !sizes.is_empty() {
            out.push(gauge(
                "linux.net.neighbor.table.entries",
                "Entries in the neighbour table, all namespaces",
                "{entry}",
                sizes,
            ));
        }
        if !events.is_empty() {
            out.push(sum(
                "linux.net.neighbor.table.events",
                "Neighbour-table operations and failures since boot (lookups, table_fulls, ...)",
                "{event}",
                events,
            ));
        }
        cap.report(Neighbor::NAME, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::net::testutil::*;

    fn collect(config: &Config) -> Vec<Metric> {
        let mut c = NeighborCollector::new(&root(), config, &host(), false).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        let mut again = Vec::new();
        c.collect(&mut again).unwrap();
        assert_eq!(out, again);
        out
    }

    #[test]
    fn fixture() {
        let out = collect(&Config::default());
        // One ARP entry on eth0 (192.0.2.1).
        let e = find(&out, "linux.net.neighbor.entries");
        assert_eq!(
            value(
                e,
                &[("network.interface.name", "eth0"), ("network.type", "ipv4")]
            ),
            Some(1)
        );
        assert_eq!(points(e).len(), 1);
        let t = find(&out, "linux.net.neighbor.table.entries");
        assert_eq!(value(t, &[("network.type", "ipv4")]), Some(2));
        assert_eq!(value(t, &[("network.type", "ipv6")]), Some(4));
        let ev = find(&out, "linux.net.neighbor.table.events");
        assert!(is_sum(ev));
        // arp_cache lookups: 4 + 9 over the two CPU rows; periodic_gc_runs 0x83 + 0.
        assert_eq!(
            value(
                ev,
                &[
                    ("network.type", "ipv4"),
                    ("linux.neighbor.event", "lookups")
                ]
            ),
            Some(13)
        );
        assert_eq!(
            value(
                ev,
                &[
                    ("network.type", "ipv4"),
                    ("linux.neighbor.event", "periodic_gc_runs")
                ]
            ),
            Some(0x83)
        );
        assert_eq!(points(ev).len(), 2 * 12);
        assert_eq!(dropped(&out), 0);
    }

    #[test]
    fn filter_and_cap() {
        let out = collect(&Config {
            exclude: vec!["eth.*".into()],
            ..Config::default()
        });
        assert!(out.iter().all(|m| m.name != "linux.net.neighbor.entries"));
        let out = collect(&Config {
            max_series: 1,
            ..Config::default()
        });
        assert_eq!(points(find(&out, "linux.net.neighbor.entries")).len(), 1);
        let out = collect(&Config {
            max_series: 0,
            ..Config::default()
        });
        assert!(
            out.iter()
                .all(|m| m.name != "linux.collector.series.dropped")
        );
    }

    #[test]
    fn counts_per_device() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        let arp = dir.path().join("net/arp");
        std::fs::write(&arp, "IP address HW type Flags HW address Mask Device\n1.1.1.1 0x1 0x2 aa * a\n1.1.1.2 0x1 0x2 aa * b\n1.1.1.3 0x1 0x0 00 * a\nshort line\n").unwrap();
        let mut c = NeighborCollector::new(
            dir.path(),
            &Config {
                max_series: 1,
                ..Config::default()
            },
            &host(),
            false,
        )
        .unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        let e = find(&out, "linux.net.neighbor.entries");
        assert_eq!(value(e, &[("network.interface.name", "a")]), Some(2));
        assert_eq!(dropped(&out), 1, "device b left out by the cap");
        // Entries gone: the device's series disappears.
        std::fs::write(&arp, "IP address HW type Flags HW address Mask Device\n").unwrap();
        out.clear();
        c.collect(&mut out).unwrap();
        assert!(out.iter().all(|m| m.name != "linux.net.neighbor.entries"));
        assert!(c.counts.is_empty());
    }
}
