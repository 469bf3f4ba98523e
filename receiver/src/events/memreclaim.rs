//! `memreclaim`: tasks stalled in memory reclaim (`vmscan` direct reclaim and
//! memcg reclaim begin/end tracepoints).
//!
//! Always: duration histograms per kind → `linux.memory.reclaim.duration`
//! (`linux.memory.reclaim.kind` = `direct` | `memcg`). Event
//! `linux.memory.reclaim_stall` when one reclaim exceeds `threshold`
//! (default 900 ms), with pid, comm, memory cgroup, order, gfp flags and
//! pages reclaimed. Host tasks are reported too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use kotel_ebpf::event::Record;
use kotel_ebpf::maps::{Log2Hist, log2_bounds};
use kotel_ebpf::{EventHeader, Hook, LoadOptions, objects, read_record};
use kotel_pipelines::{EventEmitter, EventRecord, KeyValue, Metric, Severity};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::bpf::{self, Shared};
use super::cgroup;
use crate::framework::{
    Availability, CollectorSpec, EventCollector, HostContext, Instance, MetricsCollector, Mode,
    spec::default_true,
};

pub struct Memreclaim;

const NAME: &str = "memreclaim";
const SCOPE: &str = "kotel/memreclaim";
const KINDS: [&str; 2] = ["direct", "memcg"];
/// Histogram buckets start at 1.024 µs.
const MIN_SLOT: usize = 9;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Emit an event when one reclaim takes longer than this.
    #[serde(with = "humantime_serde")]
    pub threshold: Duration,
    /// Token bucket for events (0 = unlimited).
    pub max_events_per_second: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            threshold: Duration::from_millis(900),
            max_events_per_second: 100,
        }
    }
}

crate::common_settings!(Config);

fn hooks() -> [Hook; 4] {
    [
        Hook::TracePoint {
            program: "kotel_direct_begin",
            category: "vmscan",
            name: "mm_vmscan_direct_reclaim_begin",
        },
        Hook::TracePoint {
            program: "kotel_direct_end",
            category: "vmscan",
            name: "mm_vmscan_direct_reclaim_end",
        },
        Hook::TracePoint {
            program: "kotel_memcg_begin",
            category: "vmscan",
            name: "mm_vmscan_memcg_reclaim_begin",
        },
        Hook::TracePoint {
            program: "kotel_memcg_end",
            category: "vmscan",
            name: "mm_vmscan_memcg_reclaim_end",
        },
    ]
}

impl CollectorSpec for Memreclaim {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Events;
    const ABOUT: &'static str = "direct and memcg reclaim duration histograms, reclaim-stall events (vmscan:*reclaim_begin/end)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        bpf::probe_hooks(&hooks())
    }

    fn build(
        config: &Config,
        _host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let opts = LoadOptions::new()
            .global("threshold_ns", config.threshold.as_nanos() as u64)
            .global("event_rate", config.max_events_per_second);
        let mut loaded = kotel_ebpf::loader::load(NAME, objects::MEMRECLAIM, &opts, &hooks())?;
        loaded.require_all()?;
        let ring = bpf::take_ring(&mut loaded, "events")?;
        let shared: Shared = Arc::new(Mutex::new(loaded));
        Ok(Instance::Events {
            collector: Box::new(Events {
                shared: shared.clone(),
                ring: Some(ring),
                threshold: config.threshold,
            }),
            metrics: Some((
                config.interval.unwrap_or(default_interval),
                Box::new(Histograms {
                    shared,
                    bounds: log2_bounds(MIN_SLOT),
                }),
            )),
        })
    }
}

/// Mirror of `struct reclaim_event` in memreclaim.bpf.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct ReclaimEvent {
    hdr: EventHeader,
    duration_ns: u64,
    gfp_flags: u64,
    nr_reclaimed: u64,
    memcg_id: u64,
    order: i32,
    kind: u32,
}

// SAFETY: plain integers and byte arrays.
unsafe impl Record for ReclaimEvent {}

fn to_record(e: &ReclaimEvent, threshold: Duration) -> EventRecord {
    let mut r = EventRecord::new(
        SCOPE,
        "linux.memory.reclaim_stall",
        Severity::Warn,
        e.hdr.unix_ns(),
    )
    .with(
        "linux.memory.reclaim.kind",
        KINDS.get(e.kind as usize).copied().unwrap_or("unknown"),
    )
    .with("linux.memory.reclaim.duration_ns", e.duration_ns)
    .with(
        "linux.memory.reclaim.threshold_ns",
        threshold.as_nanos() as u64,
    )
    .with("linux.memory.reclaim.order", e.order)
    .with("linux.memory.reclaim.gfp_flags", bpf::hex(e.gfp_flags))
    .with("linux.memory.reclaim.nr_reclaimed", e.nr_reclaimed);
    if let Some(p) = cgroup::memcg_path_of_id(e.memcg_id) {
        r = r.with("linux.memory.cgroup.path", p);
    }
    bpf::with_task(r, &e.hdr)
}

struct Events {
    shared: Shared,
    ring: Option<kotel_ebpf::aya::maps::Map>,
    threshold: Duration,
}

impl EventCollector for Events {
    fn run(
        mut self: Box<Self>,
        emitter: EventEmitter,
        shutdown: watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>> {
        let ring = self.ring.take();
        let threshold = self.threshold;
        let shared = self.shared.clone();
        Box::pin(async move {
            // Holding the object keeps the programs attached while we run.
            let _programs = shared;
            let ring = ring.context("memreclaim ring buffer already consumed")?;
            bpf::run_ring(ring, shutdown, |bytes| {
                if let Some(e) = read_record::<ReclaimEvent>(bytes) {
                    emitter.emit(to_record(&e, threshold));
                }
            })
            .await
        })
    }
}

struct Histograms {
    shared: Shared,
    bounds: Arc<[f64]>,
}

impl MetricsCollector for Histograms {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let loaded = bpf::lock(&self.shared);
        let values = kotel_ebpf::maps::percpu_array_sums(&loaded.bpf, "duration_hist")?;
        let points = Log2Hist::split(&values)
            .iter()
            .zip(KINDS)
            .map(|(h, kind)| {
                bpf::hist_point(
                    h,
                    MIN_SLOT,
                    &self.bounds,
                    vec![KeyValue::new("linux.memory.reclaim.kind", kind)],
                    loaded.loaded_at,
                )
            })
            .collect();
        out.push(bpf::histogram(
            "linux.memory.reclaim.duration",
            "Time tasks spent in direct or memcg reclaim",
            points,
        ));
        out.push(bpf::lost_metric(NAME, &loaded)?);
        Ok(())
    }
}
