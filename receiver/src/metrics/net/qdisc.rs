//! `qdisc`: traffic-control queueing discipline statistics from an
//! rtnetlink `RTM_GETQDISC` dump (what `tc -s qdisc show` prints).
//!
//! Every qdisc is reported, root and child (the children of `mq` on
//! multi-queue NICs too; the root of such a tree already aggregates its
//! children, so sum over `linux.qdisc.parent="root"` only). `noqueue`
//! qdiscs carry no statistics and are skipped.

use std::collections::HashMap;
use std::time::Duration;

use kotel_pipelines::{KeyValue, Metric, NumberPoint, Value, now_nanos};

use super::netlink::{IfNames, Rtnetlink, attrs, u32_at, u64_at};
use super::{Cap, Filter, Starts, Wrap32, gauge, net_config, point, sum};
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode,
};
use crate::procfs::intern;

pub struct Qdisc;

net_config!(filtered("interface name", 4000));

impl CollectorSpec for Qdisc {
    const NAME: &'static str = "qdisc";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str =
        "Qdisc bytes, packets, drops, requeues, overlimits, backlog and queue length (rtnetlink)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        match Rtnetlink::open()
            .and_then(|mut n| n.dump(libc::RTM_GETQDISC, &[0; TCMSG_LEN], |_| ()))
        {
            Ok(()) => Availability::Available,
            Err(e) => Availability::Unavailable(format!("rtnetlink RTM_GETQDISC dump failed: {e}")),
        }
    }

    fn build(config: &Config, host: &HostContext, default: Duration) -> anyhow::Result<Instance> {
        let c = QdiscCollector::new(config, host)?;
        Ok(crate::framework::Instance::metrics(
            config.interval,
            default,
            c,
        ))
    }
}

const TCMSG_LEN: usize = 20;
const TCA_KIND: u16 = 1;
const TCA_STATS: u16 = 3;
const TCA_STATS2: u16 = 7;
const TCA_STATS_BASIC: u16 = 1;
const TCA_STATS_QUEUE: u16 = 3;
const TCA_STATS_PKT64: u16 = 8;
const TC_H_ROOT: u32 = 0xffff_ffff;

/// One qdisc as the kernel reports it.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Stats {
    pub ifindex: u32,
    pub handle: u32,
    pub parent: u32,
    pub kind: String,
    pub bytes: u64,
    /// 64-bit when the kernel sends `TCA_STATS_PKT64` (5.2+), else 32-bit.
    pub packets: u64,
    pub packets64: bool,
    pub drops: u32,
    pub requeues: u32,
    pub overlimits: u32,
    pub backlog: u32,
    pub qlen: u32,
}

/// Decode one `RTM_NEWQDISC` message body (tcmsg + attributes).
pub(crate) fn parse(body: &[u8]) -> Option<Stats> {
    let mut s = Stats {
        ifindex: u32_at(body, 4)?,
        handle: u32_at(body, 8)?,
        parent: u32_at(body, 12)?,
        ..Stats::default()
    };
    let mut have_stats2 = false;
    for (kind, payload) in attrs(body.get(TCMSG_LEN..)?) {
        match kind {
            TCA_KIND => {
                s.kind = String::from_utf8_lossy(payload.split(|&b| b == 0).next()?).into_owned()
            }
            TCA_STATS2 => {
                have_stats2 = true;
                for (k, p) in attrs(payload) {
                    match k {
                        TCA_STATS_BASIC => {
                            s.bytes = u64_at(p, 0)?;
                            if !s.packets64 {
                                s.packets = u64::from(u32_at(p, 8)?);
                            }
                        }
                        TCA_STATS_PKT64 => {
                            s.packets = u64_at(p, 0)?;
                            s.packets64 = true;
                        }
                        TCA_STATS_QUEUE => {
                            s.qlen = u32_at(p, 0)?;
                            s.backlog = u32_at(p, 4)?;
                            s.drops = u32_at(p, 8)?;
                            s.requeues = u32_at(p, 12)?;
                            s.overlimits = u32_at(p, 16)?;
                        }
                        _ => {}
                    }
                }
            }
            // Legacy struct tc_stats, used only without TCA_STATS2.
            TCA_STATS if !have_stats2 => {
                s.bytes = u64_at(payload, 0)?;
                s.packets = u64::from(u32_at(payload, 8)?);
                s.drops = u32_at(payload, 12)?;
                s.overlimits = u32_at(payload, 16)?;
                s.qlen = u32_at(payload, 28)?;
                s.backlog = u32_at(payload, 32)?;
            }
            _ => {}
        }
    }
    Some(s)
}

/// `tc`'s notation: `8001:`, `8001:a`, `root`.
pub(crate) fn handle_text(h: u32) -> String {
    match (h, h >> 16, h & 0xffff) {
        (TC_H_ROOT, ..) => "root".into(),
        (_, major, 0) => format!("{major:x}:"),
        (_, major, minor) => format!("{major:x}:{minor:x}"),
    }
}

type Key = (u32, u32, u32);

/// Counter extension state of one qdisc.
struct Track {
    start: u64,
    wraps: [Wrap32; 4],
}

const SERIES_PER_QDISC: usize = 7;

pub(crate) struct QdiscCollector {
    netlink: Rtnetlink,
    names: IfNames,
    filter: Filter,
    max_series: usize,
    starts: Starts<Key>,
    tracks: HashMap<Key, Track>,
    seen: Vec<Stats>,
}

impl QdiscCollector {
    pub(crate) fn new(config: &Config, host: &HostContext) -> anyhow::Result<Self> {
        Ok(Self {
            netlink: Rtnetlink::open()?,
            names: IfNames::default(),
            filter: Filter::new(Qdisc::NAME, &config.include, &config.exclude)?,
            max_series: config.max_series,
            starts: Starts::new(host.boot_time),
            tracks: HashMap::new(),
            seen: Vec::new(),
        })
    }
}

impl MetricsCollector for QdiscCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let seen = &mut self.seen;
        seen.clear();
        self.netlink
            .dump(libc::RTM_GETQDISC, &[0; TCMSG_LEN], |body| {
                if let Some(s) = parse(body).filter(|s| s.kind != "noqueue") {
                    seen.push(s);
                }
            })?;
        seen.sort_unstable_by_key(|s| (s.ifindex, s.parent != TC_H_ROOT, s.parent, s.handle));
        self.starts.begin(now_nanos());
        let mut cap = Cap::new(self.max_series);
        let mut points: [Vec<NumberPoint>; SERIES_PER_QDISC] = Default::default();
        for s in seen.iter() {
            let Some(dev) = self.names.get(s.ifindex) else {
                continue;
            };
            if !self.filter.matches(dev) || !cap.admit(SERIES_PER_QDISC) {
                continue;
            }
            let dev = dev.to_owned();
            let key = (s.ifindex, s.handle, s.parent);
            let start = self.starts.start(&key, s.bytes);
            let t = self.tracks.entry(key).or_insert(Track {
                start,
                wraps: Default::default(),
            });
            if t.start != start {
                *t = Track {
                    start,
                    wraps: Default::default(),
                };
            }
            let packets = if s.packets64 {
                s.packets
            } else {
                t.wraps[0].update(s.packets as u32)
            };
            let counters = [
                s.bytes,
                packets,
                t.wraps[1].update(s.drops),
                t.wraps[2].update(s.requeues),
                t.wraps[3].update(s.overlimits),
            ];
            let attrs = || {
                vec![
                    KeyValue::new("network.interface.name", Value::from(dev.clone())),
                    KeyValue::new("linux.qdisc.kind", intern(&s.kind)),
                    KeyValue::new("linux.qdisc.handle", handle_text(s.handle)),
                    KeyValue::new("linux.qdisc.parent", handle_text(s.parent)),
                ]
            };
            for (p, v) in points.iter_mut().zip(counters) {
                p.push(point(attrs(), start, v));
            }
            points[5].push(point(attrs(), 0, u64::from(s.backlog)));
            points[6].push(point(attrs(), 0, u64::from(s.qlen)));
        }
        self.starts.end();
        self.names.end_cycle();
        let live: std::collections::HashSet<Key> = seen
            .iter()
            .map(|s| (s.ifindex, s.handle, s.parent))
            .collect();
        self.tracks.retain(|k, _| live.contains(k));

        let [bytes, packets, drops, requeues, overlimits, backlog, qlen] = points;
        if !bytes.is_empty() {
            out.push(sum(
                "linux.net.qdisc.io",
                "Bytes sent by the qdisc",
                "By",
                bytes,
            ));
            out.push(sum(
                "linux.net.qdisc.packet.count",
                "Packets sent by the qdisc",
                "{packet}",
                packets,
            ));
            out.push(sum(
                "linux.net.qdisc.packet.dropped",
                "Packets the qdisc dropped",
                "{packet}",
                drops,
            ));
            out.push(sum(
                "linux.net.qdisc.packet.requeued",
                "Packets requeued because the driver refused them",
                "{packet}",
                requeues,
            ));
            out.push(sum(
                "linux.net.qdisc.overlimits",
                "Times the qdisc delayed or dropped a packet for exceeding its limits (shaping)",
                "{event}",
                overlimits,
            ));
            out.push(gauge(
                "linux.net.qdisc.backlog",
                "Bytes queued in the qdisc now",
                "By",
                backlog,
            ));
            out.push(gauge(
                "linux.net.qdisc.queue.length",
                "Packets queued in the qdisc now",
                "{packet}",
                qlen,
            ));
        }
        cap.report(Qdisc::NAME, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::net::netlink::tests::attr;

    fn tcmsg(ifindex: u32, handle: u32, parent: u32) -> Vec<u8> {
        let mut b = vec![0u8; TCMSG_LEN];
        b[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        b[8..12].copy_from_slice(&handle.to_ne_bytes());
        b[12..16].copy_from_slice(&parent.to_ne_bytes());
        b
    }

    fn basic(bytes: u64, packets: u32) -> Vec<u8> {
        let mut b = bytes.to_ne_bytes().to_vec();
        b.extend(packets.to_ne_bytes());
        b.extend([0; 4]);
        b
    }

    fn queue(v: [u32; 5]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_ne_bytes()).collect()
    }

    #[test]
    fn parses_stats2_and_pkt64() {
        let mut body = tcmsg(3, 0x8001_0000, TC_H_ROOT);
        body.extend(attr(TCA_KIND, b"tbf\0"));
        let mut nested = attr(TCA_STATS_BASIC, &basic(1_000_000, 7));
        nested.extend(attr(TCA_STATS_PKT64, &(5_000_000_000u64).to_ne_bytes()));
        nested.extend(attr(TCA_STATS_QUEUE, &queue([2, 3000, 40, 5, 60])));
        body.extend(attr(TCA_STATS2 | 0x8000, &nested));
        // A legacy block after STATS2 must not override it.
        body.extend(attr(TCA_STATS, &[0xff; 36]));
        let s = parse(&body).unwrap();
        assert_eq!(
            s,
            Stats {
                ifindex: 3,
                handle: 0x8001_0000,
                parent: TC_H_ROOT,
                kind: "tbf".into(),
                bytes: 1_000_000,
                packets: 5_000_000_000,
                packets64: true,
                drops: 40,
                requeues: 5,
                overlimits: 60,
                backlog: 3000,
                qlen: 2,
            }
        );
    }

    #[test]
    fn parses_legacy_stats_and_truncation() {
        let mut body = tcmsg(2, 0, TC_H_ROOT);
        body.extend(attr(TCA_KIND, b"pfifo_fast\0"));
        let mut legacy = basic(99, 9);
        legacy.truncate(12);
        legacy.extend([1u32, 2, 0, 0].iter().flat_map(|x| x.to_ne_bytes())); // drops, overlimits, bps, pps
        legacy.extend([4u32, 77].iter().flat_map(|x| x.to_ne_bytes())); // qlen, backlog
        body.extend(attr(TCA_STATS, &legacy));
        let s = parse(&body).unwrap();
        assert_eq!(
            (s.bytes, s.packets, s.drops, s.overlimits, s.qlen, s.backlog),
            (99, 9, 1, 2, 4, 77)
        );
        assert!(parse(&body[..10]).is_none());
        let mut short = tcmsg(2, 0, 1);
        short.extend(attr(TCA_STATS2, &attr(TCA_STATS_QUEUE, &[1, 2, 3])));
        assert!(parse(&short).is_none(), "truncated queue stats");
    }

    #[test]
    fn handles_like_tc() {
        assert_eq!(handle_text(TC_H_ROOT), "root");
        assert_eq!(handle_text(0), "0:");
        assert_eq!(handle_text(0x8001_0000), "8001:");
        assert_eq!(handle_text(0x0001_000a), "1:a");
        assert_eq!(handle_text(0xffff_fff1), "ffff:fff1");
    }
}
