//! `sockstat`: socket counts and socket memory from `/proc/net/sockstat`
//! and `/proc/net/sockstat6`, against the `tcp_mem` / `udp_mem` limits.

use std::path::Path;
use std::time::Duration;

use kotel_pipelines::{KeyValue, Metric, NumberPoint};

use super::{gauge, net_config, point, probe_path};
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode,
};
use crate::procfs::{self, ProcFile};

pub struct Sockstat;

net_config!();

impl CollectorSpec for Sockstat {
    const NAME: &'static str = "sockstat";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str = "Sockets per protocol and state, TCP/UDP memory vs tcp_mem/udp_mem (/proc/net/sockstat{,6})";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        probe_path(Path::new("/proc/net/sockstat"))
    }

    fn build(config: &Config, host: &HostContext, default: Duration) -> anyhow::Result<Instance> {
        let c = SockstatCollector::new(Path::new("/proc"), host)?;
        Ok(crate::framework::Instance::metrics(
            config.interval,
            default,
            c,
        ))
    }
}

/// Kernel protocol label → `linux.socket.protocol`.
const PROTOCOLS: &[(&[u8], &str)] = &[
    (b"TCP", "tcp"),
    (b"UDP", "udp"),
    (b"UDPLITE", "udplite"),
    (b"RAW", "raw"),
    (b"FRAG", "frag"),
    (b"TCP6", "tcp6"),
    (b"UDP6", "udp6"),
    (b"UDPLITE6", "udplite6"),
    (b"RAW6", "raw6"),
    (b"FRAG6", "frag6"),
    (b"MPTCP", "mptcp"),
];
/// Kernel key → `linux.socket.state`.
const STATES: &[(&[u8], &str)] = &[
    (b"inuse", "in_use"),
    (b"orphan", "orphan"),
    (b"tw", "time_wait"),
    (b"alloc", "allocated"),
];

pub(crate) struct SockstatCollector {
    sockstat: ProcFile,
    sockstat6: Option<ProcFile>,
    tcp_mem: Option<ProcFile>,
    udp_mem: Option<ProcFile>,
    page_size: u64,
}

impl SockstatCollector {
    pub(crate) fn new(root: &Path, host: &HostContext) -> anyhow::Result<Self> {
        let opt = |rel: &str| ProcFile::open(root.join(rel)).ok();
        Ok(Self {
            sockstat: ProcFile::open(root.join("net/sockstat"))?,
            sockstat6: opt("net/sockstat6"),
            tcp_mem: opt("sys/net/ipv4/tcp_mem"),
            udp_mem: opt("sys/net/ipv4/udp_mem"),
            page_size: host.page_size,
        })
    }
}

/// Values read in one collection.
#[derive(Default)]
struct Read {
    used: Option<u64>,
    sockets: Vec<NumberPoint>,
    tcp_mem: Option<u64>,
    udp_mem: Option<u64>,
    frag: Vec<NumberPoint>,
}

fn parse(buf: &[u8], page: u64, r: &mut Read) {
    for line in procfs::lines(buf) {
        let Some((label, rest)) = procfs::key_value(line) else {
            continue;
        };
        if label == b"sockets" {
            // "sockets: used N"
            r.used = procfs::fields(rest).nth(1).and_then(procfs::parse_u64);
            continue;
        }
        let Some(&(_, proto)) = PROTOCOLS.iter().find(|(k, _)| *k == label) else {
            continue;
        };
        let mut fields = procfs::fields(rest);
        while let (Some(key), Some(v)) = (fields.next(), fields.next()) {
            let Some(v) = procfs::parse_u64(v) else {
                continue;
            };
            if let Some(&(_, state)) = STATES.iter().find(|(k, _)| *k == key) {
                let attrs = vec![
                    KeyValue::new("linux.socket.protocol", proto),
                    KeyValue::new("linux.socket.state", state),
                ];
                r.sockets.push(point(attrs, 0, v));
            } else if key == b"mem" && proto == "tcp" {
                r.tcp_mem = Some(v.saturating_mul(page));
            } else if key == b"mem" && proto == "udp" {
                r.udp_mem = Some(v.saturating_mul(page));
            } else if key == b"memory" {
                // FRAG / FRAG6 report bytes already.
                let ty = if proto == "frag6" { "ipv6" } else { "ipv4" };
                r.frag
                    .push(point(vec![KeyValue::new("network.type", ty)], 0, v));
            }
        }
    }
}

/// The third value (the hard limit) of a `tcp_mem`-style sysctl, in bytes.
fn limit(file: &mut Option<ProcFile>, page: u64) -> Option<u64> {
    let buf = file.as_mut()?.read().ok()?;
    procfs::fields(buf)
        .nth(2)
        .and_then(procfs::parse_u64)
        .map(|p| p.saturating_mul(page))
}

impl MetricsCollector for SockstatCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let page = self.page_size;
        let mut r = Read::default();
        parse(self.sockstat.read()?, page, &mut r);
        if let Some(f) = &mut self.sockstat6 {
            parse(f.read()?, page, &mut r);
        }
        let one = |v: u64| vec![point(Vec::new(), 0, v)];
        if let Some(v) = r.used {
            out.push(gauge(
                "linux.net.sockets.used",
                "Sockets allocated in this network namespace, all families",
                "{socket}",
                one(v),
            ));
        }
        if !r.sockets.is_empty() {
            out.push(gauge(
                "linux.net.sockets",
                "Sockets by protocol and state",
                "{socket}",
                r.sockets,
            ));
        }
        let mem: [(&'static str, &'static str, Option<u64>); 4] = [
            (
                "linux.net.tcp.memory.usage",
                "Memory allocated to TCP socket buffers, all namespaces",
                r.tcp_mem,
            ),
            (
                "linux.net.tcp.memory.limit",
                "TCP memory limit: net.ipv4.tcp_mem[2] (pages) in bytes",
                limit(&mut self.tcp_mem, page),
            ),
            (
                "linux.net.udp.memory.usage",
                "Memory allocated to UDP socket buffers, all namespaces",
                r.udp_mem,
            ),
            (
                "linux.net.udp.memory.limit",
                "UDP memory limit: net.ipv4.udp_mem[2] (pages) in bytes",
                limit(&mut self.udp_mem, page),
            ),
        ];
        for (name, desc, v) in mem {
            if let Some(v) = v {
                out.push(gauge(name, desc, "By", one(v)));
            }
        }
        if !r.frag.is_empty() {
            out.push(gauge(
                "linux.net.ip_fragment.memory.usage",
                "Memory held by IP fragments awaiting reassembly",
                "By",
                r.frag,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::net::testutil::*;

    fn collect(root: &Path) -> Vec<Metric> {
        let mut c = SockstatCollector::new(root, &host()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        out
    }

    #[test]
    fn fixture() {
        let out = collect(&root());
        // sockstat: "sockets: used 30", "TCP: inuse 9 orphan 0 tw 23 alloc 9 mem 10",
        // "FRAG: inuse 0 memory 0"; tcp_mem "287898 383867 575796".
        assert_eq!(value(find(&out, "linux.net.sockets.used"), &[]), Some(30));
        let s = find(&out, "linux.net.sockets");
        assert!(!is_sum(s));
        assert_eq!(
            value(
                s,
                &[
                    ("linux.socket.protocol", "tcp"),
                    ("linux.socket.state", "in_use")
                ]
            ),
            Some(9)
        );
        assert_eq!(
            value(
                s,
                &[
                    ("linux.socket.protocol", "tcp"),
                    ("linux.socket.state", "allocated")
                ]
            ),
            Some(9)
        );
        assert_eq!(
            value(
                s,
                &[
                    ("linux.socket.protocol", "tcp6"),
                    ("linux.socket.state", "in_use")
                ]
            ),
            Some(0)
        );
        assert_eq!(
            value(
                s,
                &[
                    ("linux.socket.protocol", "frag6"),
                    ("linux.socket.state", "in_use")
                ]
            ),
            Some(0)
        );
        // 5 TCP + 1 UDP + 1 UDPLITE + 1 RAW + 1 FRAG, 4 IPv6 + FRAG6.
        assert_eq!(points(s).len(), 4 + 1 + 1 + 1 + 1 + 4 + 1);
        let usage = find(&out, "linux.net.tcp.memory.usage");
        assert_eq!(
            (usage.unit.as_ref(), value(usage, &[])),
            ("By", Some(10 * 4096))
        );
        assert_eq!(
            value(find(&out, "linux.net.tcp.memory.limit"), &[]),
            Some(575796 * 4096)
        );
        assert_eq!(
            value(find(&out, "linux.net.udp.memory.usage"), &[]),
            Some(0)
        );
        assert_eq!(
            value(find(&out, "linux.net.udp.memory.limit"), &[]),
            Some(1151598 * 4096)
        );
        let frag = find(&out, "linux.net.ip_fragment.memory.usage");
        assert_eq!(points(frag).len(), 2);
    }

    #[test]
    fn ipv4_only_and_odd_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        std::fs::write(
            dir.path().join("net/sockstat"),
            "sockets: used 3\nTCP: inuse 2 orphan x tw 1 mem 7 future 9\nNEWPROTO: inuse 4\nUDP: inuse\n",
        )
        .unwrap();
        let out = collect(dir.path());
        let s = find(&out, "linux.net.sockets");
        assert_eq!(
            points(s).len(),
            2,
            "malformed value and unknown protocol skipped"
        );
        assert_eq!(value(s, &[("linux.socket.state", "time_wait")]), Some(1));
        assert_eq!(
            value(find(&out, "linux.net.tcp.memory.usage"), &[]),
            Some(7 * 4096)
        );
        assert!(out.iter().all(|m| m.name != "linux.net.tcp.memory.limit"));
    }
}
