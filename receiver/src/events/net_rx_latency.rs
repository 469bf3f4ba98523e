//! `net_rx_latency`: how long received TCP packets (IPv4 and IPv6) take from
//! the driver to the stack, to TCP and to user space.
//!
//! Hooks: `tp_btf/netif_receive_skb`, `tp_btf/tcp_probe` (start of
//! `tcp_rcv_established`) and `tp_btf/skb_copy_datagram_iovec`, measuring
//! against the skb's software receive timestamp. kotel keeps one socket with
//! `SO_TIMESTAMPNS` open so the kernel stamps every received packet, and
//! handles the timestamp clock domains (only `SKB_CLOCK_REALTIME` stamps are
//! used; implausible values are skipped and counted, never reported).
//!
//! Always: `linux.net.rx.latency` histogram per stage and
//! `linux.net.rx.timestamps_skipped`. Event `linux.net.rx_latency` past the
//! per-stage threshold (HUATUO defaults 5 / 10 / 115 ms).

use std::os::fd::{FromRawFd as _, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use kotel_ebpf::aya::maps::Array;
use kotel_ebpf::event::Record;
use kotel_ebpf::maps::{Log2Hist, log2_bounds};
use kotel_ebpf::{EventHeader, Hook, LoadOptions, RingReader, objects, read_record};
use kotel_pipelines::{EventEmitter, EventRecord, KeyValue, Metric, Number, NumberPoint, Severity};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::bpf::{self, Shared};
use crate::framework::{
    Availability, CollectorSpec, EventCollector, HostContext, Instance, MetricsCollector, Mode,
    spec::default_true,
};

pub struct NetRxLatency;

const NAME: &str = "net_rx_latency";
const SCOPE: &str = "kotel/net_rx_latency";
const STAGES: [&str; 3] = ["netif", "tcp", "usercopy"];
const SKIP_REASONS: [&str; 3] = ["no_timestamp", "not_realtime", "implausible"];
/// Histogram buckets start at 1.024 µs.
const MIN_SLOT: usize = 9;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Driver → `netif_receive_skb`.
    #[serde(with = "humantime_serde")]
    pub driver_to_netif: Duration,
    /// Driver → TCP (`tcp_rcv_established`).
    #[serde(with = "humantime_serde")]
    pub driver_to_tcp: Duration,
    /// Driver → copy to user space.
    #[serde(with = "humantime_serde")]
    pub driver_to_user: Duration,
    /// Token bucket for events (0 = unlimited).
    pub max_events_per_second: u64,
    /// Ignore packets of the host's network namespace (only containers).
    pub exclude_host_netns: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            driver_to_netif: Duration::from_millis(5),
            driver_to_tcp: Duration::from_millis(10),
            driver_to_user: Duration::from_millis(115),
            max_events_per_second: 100,
            exclude_host_netns: false,
        }
    }
}

crate::common_settings!(Config);

fn hooks() -> [Hook; 3] {
    [
        Hook::BtfTracePoint {
            program: "kotel_netif_receive_skb",
            name: "netif_receive_skb",
        },
        Hook::BtfTracePoint {
            program: "kotel_tcp_probe",
            name: "tcp_probe",
        },
        Hook::BtfTracePoint {
            program: "kotel_skb_copy_datagram",
            name: "skb_copy_datagram_iovec",
        },
    ]
}

/// A socket with `SO_TIMESTAMPNS`: while it is open the kernel timestamps
/// every received packet (`net_enable_timestamp`).
fn timestamp_socket() -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket/setsockopt calls; the fd is owned right away.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let rc = libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
        anyhow::ensure!(
            rc == 0,
            "SO_TIMESTAMPNS: {}",
            std::io::Error::last_os_error()
        );
        Ok(fd)
    }
}

fn host_netns_inode() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/1/ns/net")
        .map(|m| m.ino() as u32)
        .unwrap_or(0)
}

/// Write REALTIME − MONOTONIC into the object's `clock_offset`.
fn update_clock_offset(loaded: &mut kotel_ebpf::Loaded) -> anyhow::Result<()> {
    let off = kotel_ebpf::clock::unix_now_ns() - kotel_ebpf::clock::mono_ns();
    let map = loaded
        .bpf
        .map_mut("clock_offset")
        .context("clock_offset map")?;
    let mut arr = Array::<_, u64>::try_from(map)?;
    arr.set(0, off, 0)?;
    Ok(())
}

impl CollectorSpec for NetRxLatency {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Events;
    const ABOUT: &'static str = "TCP receive latency driver->stack->TCP->user space (tp_btf netif_receive_skb, tcp_probe, skb_copy_datagram_iovec)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        bpf::probe_hooks(&hooks())
    }

    fn build(
        config: &Config,
        _host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let ns = |d: Duration| d.as_nanos() as u64;
        let opts = LoadOptions::new()
            .global(
                "threshold_ns",
                [
                    ns(config.driver_to_netif),
                    ns(config.driver_to_tcp),
                    ns(config.driver_to_user),
                ],
            )
            .global("event_rate", config.max_events_per_second)
            .global(
                "exclude_netns",
                if config.exclude_host_netns {
                    host_netns_inode()
                } else {
                    0
                },
            );
        let tsock = Arc::new(timestamp_socket().context("enabling receive timestamps")?);
        let mut loaded = kotel_ebpf::loader::load(NAME, objects::NETRX, &opts, &hooks())?;
        loaded.require_all()?;
        update_clock_offset(&mut loaded)?;
        let ring = bpf::take_ring(&mut loaded, "events")?;
        let shared: Shared = Arc::new(Mutex::new(loaded));
        Ok(Instance::Events {
            collector: Box::new(Events {
                shared: shared.clone(),
                ring: Some(ring),
                _tsock: tsock.clone(),
            }),
            metrics: Some((
                config.interval.unwrap_or(default_interval),
                Box::new(Histograms {
                    shared,
                    bounds: log2_bounds(MIN_SLOT),
                    _tsock: tsock,
                }),
            )),
        })
    }
}

/// Mirror of `struct netrx_event` in netrx.bpf.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct NetRxEvent {
    hdr: EventHeader,
    latency_ns: u64,
    threshold_ns: u64,
    seq: u32,
    ack_seq: u32,
    netns_ino: u32,
    ifindex: u32,
    len: u32,
    sport: u16,
    dport: u16,
    stage: u8,
    ip_version: u8,
    tcp_state: u8,
    _pad: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

// SAFETY: plain integers and byte arrays.
unsafe impl Record for NetRxEvent {}

fn tcp_state(s: u8) -> &'static str {
    const NAMES: [&str; 13] = [
        "UNKNOWN",
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    NAMES.get(s as usize).copied().unwrap_or("UNKNOWN")
}

fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as required.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

fn to_record(e: &NetRxEvent) -> EventRecord {
    let addr = |b: &[u8; 16]| -> String {
        if e.ip_version == 4 {
            std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()
        } else {
            std::net::Ipv6Addr::from(*b).to_string()
        }
    };
    let stage = STAGES.get(e.stage as usize).copied().unwrap_or("unknown");
    let mut r = EventRecord::new(
        SCOPE,
        "linux.net.rx_latency",
        Severity::Warn,
        e.hdr.unix_ns(),
    )
    .with("linux.net.rx.stage", stage)
    .with("linux.net.rx.latency_ns", e.latency_ns)
    .with("linux.net.rx.threshold_ns", e.threshold_ns)
    .with("network.transport", "tcp")
    .with(
        "network.type",
        if e.ip_version == 4 { "ipv4" } else { "ipv6" },
    )
    .with("source.address", addr(&e.saddr))
    .with("source.port", u32::from(e.sport))
    .with("destination.address", addr(&e.daddr))
    .with("destination.port", u32::from(e.dport))
    .with("linux.tcp.seq", e.seq)
    .with("linux.tcp.ack_seq", e.ack_seq)
    .with("linux.skb.len", e.len)
    .with("cpu.logical_number", e.hdr.cpu);
    if e.tcp_state != 0 {
        r = r.with("linux.tcp.state", tcp_state(e.tcp_state));
    }
    if e.netns_ino != 0 {
        r = r.with("linux.netns.inode", e.netns_ino);
    }
    if e.ifindex != 0 {
        r = r.with("linux.net.ifindex", e.ifindex);
        if let Some(n) = ifname(e.ifindex) {
            r = r.with("network.interface.name", n);
        }
    }
    // Only the user-copy stage runs in the receiving process's context.
    if e.stage == 2 {
        bpf::with_task(r, &e.hdr)
    } else {
        r
    }
}

struct Events {
    shared: Shared,
    ring: Option<kotel_ebpf::aya::maps::Map>,
    _tsock: Arc<OwnedFd>,
}

impl EventCollector for Events {
    fn run(
        mut self: Box<Self>,
        emitter: EventEmitter,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>> {
        let ring = self.ring.take();
        Box::pin(async move {
            let ring = ring.context("net_rx_latency ring buffer already consumed")?;
            let mut reader = RingReader::new(ring)?;
            // Keep REALTIME − MONOTONIC current (NTP slews, clock steps).
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut on_record = |bytes: &[u8]| {
                if let Some(e) = read_record::<NetRxEvent>(bytes) {
                    emitter.emit(to_record(&e));
                }
            };
            loop {
                if *shutdown.borrow() {
                    reader.drain(&mut on_record);
                    return Ok(());
                }
                tokio::select! {
                    r = reader.read(&mut on_record) => { r?; }
                    _ = tick.tick() => {
                        if let Err(e) = update_clock_offset(&mut bpf::lock(&self.shared)) {
                            tracing::warn!(collector = NAME, "updating the clock offset: {e:#}");
                        }
                    }
                    _ = shutdown.changed() => {
                        reader.drain(&mut on_record);
                        return Ok(());
                    }
                }
            }
        })
    }
}

struct Histograms {
    shared: Shared,
    bounds: Arc<[f64]>,
    _tsock: Arc<OwnedFd>,
}

impl MetricsCollector for Histograms {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let loaded = bpf::lock(&self.shared);
        let values = kotel_ebpf::maps::percpu_array_sums(&loaded.bpf, "latency_hist")?;
        let points = Log2Hist::split(&values)
            .iter()
            .zip(STAGES)
            .map(|(h, s)| {
                bpf::hist_point(
                    h,
                    MIN_SLOT,
                    &self.bounds,
                    vec![KeyValue::new("linux.net.rx.stage", s)],
                    loaded.loaded_at,
                )
            })
            .collect();
        out.push(bpf::histogram(
            "linux.net.rx.latency",
            "Time from the driver's receive timestamp to each TCP receive stage",
            points,
        ));
        let skipped = kotel_ebpf::maps::percpu_array_sums(&loaded.bpf, "skipped")?;
        let points = SKIP_REASONS
            .iter()
            .zip(skipped)
            .map(|(r, v)| NumberPoint {
                attributes: vec![KeyValue::new("reason", *r)],
                start_time: loaded.loaded_at,
                value: Number::Int(v as i64),
            })
            .collect();
        out.push(bpf::counter(
            "linux.net.rx.timestamps_skipped",
            "Received packets not measured (no or non-realtime timestamp, implausible value)",
            "{packet}",
            points,
        ));
        out.push(bpf::lost_metric(NAME, &loaded)?);
        Ok(())
    }
}
