//! `dropwatch`: packets the kernel drops (`skb:kfree_skb` tracepoint).
//!
//! Always: per-reason drop counters in the kernel → `linux.net.packet.drops`
//! (Sum by `reason`). Events: `linux.packet_drop`, one per drop that passes
//! the in-kernel filters (protocol, port, reason include/exclude) and the
//! token bucket (`max_events_per_second`, default 100), with the reason name,
//! the symbolised drop location, IPv4/IPv6 addresses and ports, netns, device
//! and task; optionally a rate-limited kernel stack.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use kotel_ebpf::event::{Record, c_str};
use kotel_ebpf::{EventHeader, Hook, LoadOptions, objects, read_record};
use kotel_pipelines::{EventEmitter, EventRecord, KeyValue, Metric, Number, NumberPoint, Severity};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::bpf::{self, Shared};
use crate::framework::{
    Availability, CollectorSpec, EventCollector, HostContext, Instance, MetricsCollector, Mode,
    spec::default_true,
};

pub struct Dropwatch;

const NAME: &str = "dropwatch";
const SCOPE: &str = "kotel/dropwatch";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Interval of the drop counters (default: the metrics interval).
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Only events of this L4 protocol: `tcp`, `udp`, `icmp`, `icmpv6`,
    /// `sctp` or a number. Counters always count every drop.
    pub protocol: Option<String>,
    /// Only events whose source or destination port is this (0 = any).
    pub port: u16,
    /// Only these drop reasons (names as the kernel prints them, e.g.
    /// `NO_SOCKET`); empty = all.
    pub reasons: Vec<String>,
    /// Never these drop reasons.
    pub exclude_reasons: Vec<String>,
    /// Token bucket for events (0 = unlimited).
    pub max_events_per_second: u64,
    /// Kernel stacks per second attached to events (0 = none; each costs a
    /// few µs in the kernel).
    pub stacks_per_second: u64,
    /// Ring buffer size in bytes (power of two, at least a page).
    pub ring_buffer_bytes: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            protocol: None,
            port: 0,
            reasons: Vec::new(),
            exclude_reasons: Vec::new(),
            max_events_per_second: 100,
            stacks_per_second: 0,
            ring_buffer_bytes: 256 * 1024,
        }
    }
}

crate::common_settings!(Config);

fn hooks() -> [Hook; 1] {
    [Hook::TracePoint {
        program: "kotel_kfree_skb",
        category: "skb",
        name: "kfree_skb",
    }]
}

fn protocol_number(p: &str) -> anyhow::Result<u8> {
    Ok(match p.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "icmpv6" | "icmp6" => 58,
        "sctp" => 132,
        "udplite" => 136,
        n => n
            .parse()
            .with_context(|| format!("unknown protocol {p:?}"))?,
    })
}

fn protocol_name(n: u8) -> Option<&'static str> {
    Some(match n {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        58 => "icmpv6",
        132 => "sctp",
        _ => return None,
    })
}

fn reason_mask(names: &[String]) -> anyhow::Result<[u64; 4]> {
    let table = kotel_ebpf::dropreason::table();
    let mut mask = [0u64; 4];
    for n in names {
        let want = n.trim_start_matches("SKB_DROP_REASON_");
        let code = table
            .iter()
            .find(|(_, v)| v.as_str() == want)
            .map(|(k, _)| *k)
            .or_else(|| want.parse().ok())
            .with_context(|| format!("unknown drop reason {n:?}"))?;
        anyhow::ensure!(
            code < 256,
            "drop reason {n} ({code}) cannot be filtered in the kernel (>= 256)"
        );
        mask[(code / 64) as usize] |= 1 << (code % 64);
    }
    Ok(mask)
}

impl CollectorSpec for Dropwatch {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Events;
    const ABOUT: &'static str =
        "packet drops with reason and location (skb:kfree_skb), per-reason counters";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        bpf::probe_hooks(&hooks())
    }

    fn build(
        config: &Config,
        _host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let proto = config
            .protocol
            .as_deref()
            .map(protocol_number)
            .transpose()?
            .unwrap_or(0);
        let opts = LoadOptions::new()
            .global("filter_l4_proto", proto)
            .global("filter_port", config.port)
            .global("reason_include_on", u8::from(!config.reasons.is_empty()))
            .global("reason_include", reason_mask(&config.reasons)?)
            .global("reason_exclude", reason_mask(&config.exclude_reasons)?)
            .global("event_rate", config.max_events_per_second)
            .global("stack_rate", config.stacks_per_second)
            .max_entries("events", config.ring_buffer_bytes);
        let mut loaded = kotel_ebpf::loader::load(NAME, objects::DROPWATCH, &opts, &hooks())?;
        loaded.require_all()?;
        let ring = bpf::take_ring(&mut loaded, "events")?;
        let shared: Shared = Arc::new(Mutex::new(loaded));
        Ok(Instance::Events {
            collector: Box::new(Events {
                shared: shared.clone(),
                ring: Some(ring),
            }),
            metrics: Some((
                config.interval.unwrap_or(default_interval),
                Box::new(Counters { shared }),
            )),
        })
    }
}

/// Mirror of `struct drop_event` in dropwatch.bpf.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct DropEvent {
    hdr: EventHeader,
    location: u64,
    skbaddr: u64,
    reason: u32,
    netns_ino: u32,
    ifindex: u32,
    len: u32,
    stack_id: i32,
    eth_proto: u16,
    sport: u16,
    dport: u16,
    l4_proto: u8,
    ip_version: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
    ifname: [u8; 16],
    sock_cgroup_id: u64,
}

// SAFETY: plain integers and byte arrays.
unsafe impl Record for DropEvent {}

fn addr(version: u8, b: &[u8; 16]) -> Option<IpAddr> {
    match version {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(*b))),
        _ => None,
    }
}

fn to_record(e: &DropEvent, stack: Option<kotel_pipelines::Value>) -> EventRecord {
    let mut r = EventRecord::new(SCOPE, "linux.packet_drop", Severity::Warn, e.hdr.unix_ns());
    r = r
        .with(
            "linux.skb.drop_reason",
            kotel_ebpf::dropreason::name(e.reason),
        )
        .with("linux.skb.drop_reason_code", e.reason)
        .with(
            "linux.skb.drop_location",
            kotel_ebpf::ksyms::symbolize(e.location),
        )
        .with("linux.skb.drop_location_address", bpf::hex(e.location))
        .with("linux.skb.len", e.len)
        .with("linux.skb.protocol", format!("{:#06x}", e.eth_proto));
    if let (Some(s), Some(d)) = (addr(e.ip_version, &e.saddr), addr(e.ip_version, &e.daddr)) {
        r = r
            .with(
                "network.type",
                if e.ip_version == 4 { "ipv4" } else { "ipv6" },
            )
            .with("source.address", s.to_string())
            .with("destination.address", d.to_string());
        match protocol_name(e.l4_proto) {
            Some(p) => r = r.with("network.transport", p),
            None => r = r.with("linux.ip.protocol", u32::from(e.l4_proto)),
        }
        if e.l4_proto == 6 || e.l4_proto == 17 {
            r = r
                .with("source.port", u32::from(e.sport))
                .with("destination.port", u32::from(e.dport));
        }
    }
    if e.netns_ino != 0 {
        r = r.with("linux.netns.inode", e.netns_ino);
    }
    if e.ifindex != 0 {
        r = r
            .with("network.interface.name", c_str(&e.ifname))
            .with("linux.net.ifindex", e.ifindex);
    }
    // Attribute the drop to the socket's cgroup (its container) when the
    // packet belongs to a socket: a receive-path drop runs in softirq context
    // on behalf of whichever task happened to be on the CPU.
    let mut hdr = e.hdr;
    if e.sock_cgroup_id != 0 {
        hdr.cgroup_id = e.sock_cgroup_id;
    }
    r = bpf::with_task(r, &hdr);
    if let Some(s) = stack {
        r = r.with("linux.kernel.stack", s);
    }
    r
}

struct Events {
    shared: Shared,
    ring: Option<kotel_ebpf::aya::maps::Map>,
}

impl EventCollector for Events {
    fn run(
        mut self: Box<Self>,
        emitter: EventEmitter,
        shutdown: watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>> {
        let ring = self.ring.take();
        let shared = self.shared.clone();
        Box::pin(async move {
            let ring = ring.context("dropwatch ring buffer already consumed")?;
            bpf::run_ring(ring, shutdown, |bytes| {
                let Some(e) = read_record::<DropEvent>(bytes) else {
                    return;
                };
                let stack = if e.stack_id >= 0 {
                    bpf::kernel_stack(&bpf::lock(&shared), "stacks", e.stack_id)
                } else {
                    None
                };
                emitter.emit(to_record(&e, stack));
            })
            .await
        })
    }
}

struct Counters {
    shared: Shared,
}

impl MetricsCollector for Counters {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let loaded = bpf::lock(&self.shared);
        let mut counts: Vec<(u32, u64)> =
            kotel_ebpf::maps::percpu_array_sums(&loaded.bpf, "drop_counts")?
                .into_iter()
                .enumerate()
                .filter(|&(_, v)| v > 0)
                .map(|(r, v)| (r as u32, v))
                .collect();
        counts.extend(kotel_ebpf::maps::percpu_hash_sums(
            &loaded.bpf,
            "drop_counts_subsys",
        )?);
        let points = counts
            .into_iter()
            .map(|(reason, v)| NumberPoint {
                attributes: vec![KeyValue::new(
                    "reason",
                    kotel_ebpf::dropreason::name(reason),
                )],
                start_time: loaded.loaded_at,
                value: Number::Int(v as i64),
            })
            .collect();
        out.push(bpf::counter(
            "linux.net.packet.drops",
            "Packets the kernel dropped (skb:kfree_skb), by drop reason",
            "{packet}",
            points,
        ));
        out.push(bpf::lost_metric(NAME, &loaded)?);
        Ok(())
    }
}
