//! `softirq`: softirq scheduling delay and handler time
//! (`irq:softirq_raise/entry/exit`), and scheduler-tick gaps.
//!
//! Always: log2 histograms in the kernel per vector (and per CPU with
//! `per_cpu: true`) → `linux.softirq.delay` (raise→entry) and
//! `linux.softirq.duration` (entry→exit). Event `linux.softirq.latency` when
//! either exceeds `threshold` (default 10 ms), with the vector, CPU, latency
//! and the interrupted task.
//!
//! Scheduler-tick gaps (interrupts or preemption disabled for long): the time
//! between two ticks of a busy CPU (`timer:hrtimer_expire_entry` of the tick
//! handler; `power:cpu_idle` resets it, so idle NOHZ periods do not count) →
//! histogram `linux.cpu.tick.gap` and event `linux.cpu.tick_gap` past
//! `tick_gap_threshold` (default 10 ms, HUATUO's `SchedTick`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use kotel_ebpf::event::Record;
use kotel_ebpf::maps::{Log2Hist, log2_bounds};
use kotel_ebpf::preflight::Requirements;
use kotel_ebpf::{EventHeader, Hook, LoadOptions, objects, read_record};
use kotel_pipelines::{EventEmitter, EventRecord, HistogramPoint, KeyValue, Metric, Severity};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::bpf::{self, Shared};
use crate::framework::{
    Availability, CollectorSpec, EventCollector, HostContext, Instance, MetricsCollector, Mode,
    spec::default_true,
};

pub struct Softirq;

const NAME: &str = "softirq";
const SCOPE: &str = "kotel/softirq";
/// Kernel softirq vector names, by number.
pub const VECTORS: [&str; 10] = [
    "HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU",
];
/// Histogram buckets start at 1.024 µs.
const MIN_SLOT: usize = 9;
const KIND_TICK_GAP: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Emit an event when a delay or handler run exceeds this.
    #[serde(with = "humantime_serde")]
    pub threshold: Duration,
    /// Token bucket for events (0 = unlimited).
    pub max_events_per_second: u64,
    /// Histograms per CPU (`cpu.logical_number`) instead of per host.
    pub per_cpu: bool,
    /// Watch for gaps between scheduler ticks of a busy CPU.
    pub tick_gaps: bool,
    /// Emit `linux.cpu.tick_gap` when a tick comes this late.
    #[serde(with = "humantime_serde")]
    pub tick_gap_threshold: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            threshold: Duration::from_millis(10),
            max_events_per_second: 100,
            per_cpu: false,
            tick_gaps: true,
            tick_gap_threshold: Duration::from_millis(10),
        }
    }
}

crate::common_settings!(Config);

fn hooks() -> [Hook; 3] {
    [
        Hook::TracePoint {
            program: "kotel_softirq_raise",
            category: "irq",
            name: "softirq_raise",
        },
        Hook::TracePoint {
            program: "kotel_softirq_entry",
            category: "irq",
            name: "softirq_entry",
        },
        Hook::TracePoint {
            program: "kotel_softirq_exit",
            category: "irq",
            name: "softirq_exit",
        },
    ]
}

fn tick_hooks() -> [Hook; 2] {
    [
        Hook::TracePoint {
            program: "kotel_hrtimer_expire",
            category: "timer",
            name: "hrtimer_expire_entry",
        },
        Hook::TracePoint {
            program: "kotel_cpu_idle",
            category: "power",
            name: "cpu_idle",
        },
    ]
}

impl CollectorSpec for Softirq {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Events;
    const ABOUT: &'static str = "softirq raise->entry delay and handler time, scheduler-tick gaps (irq:softirq_*, timer, power)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        bpf::probe(&Requirements {
            tracepoints: vec![
                ("irq", "softirq_raise"),
                ("irq", "softirq_entry"),
                ("irq", "softirq_exit"),
            ],
            ..Default::default()
        })
    }

    fn build(
        config: &Config,
        _host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        // The tick handler: tick_nohz_handler (6.9+) or tick_sched_timer.
        let ks = kotel_ebpf::ksyms::get();
        let tick_fn = if config.tick_gaps {
            ks.address_of("tick_nohz_handler")
                .or_else(|| ks.address_of("tick_sched_timer"))
                .unwrap_or(0)
        } else {
            0
        };
        let opts = LoadOptions::new()
            .global("threshold_ns", config.threshold.as_nanos() as u64)
            .global("event_rate", config.max_events_per_second)
            .global("tick_fn", tick_fn)
            .global(
                "tick_threshold_ns",
                config.tick_gap_threshold.as_nanos() as u64,
            );
        let mut all = hooks().to_vec();
        if tick_fn != 0 {
            all.extend(tick_hooks());
        } else if config.tick_gaps {
            tracing::warn!(
                collector = NAME,
                "no tick handler in /proc/kallsyms; tick gaps not watched"
            );
        }
        let mut loaded = kotel_ebpf::loader::load(NAME, objects::SOFTIRQ, &opts, &all)?;
        // The softirq programs are required; the tick-gap ones are a bonus
        // (their failure is logged by the loader).
        let required: Vec<String> = loaded
            .failed
            .iter()
            .filter(|(p, _)| hooks().iter().any(|h| h.program() == *p))
            .map(|(p, e)| format!("{p}: {e}"))
            .collect();
        anyhow::ensure!(required.is_empty(), "{}", required.join("; "));
        let ring = bpf::take_ring(&mut loaded, "events")?;
        let shared: Shared = Arc::new(Mutex::new(loaded));
        Ok(Instance::Events {
            collector: Box::new(Events {
                shared: shared.clone(),
                ring: Some(ring),
                threshold: config.threshold,
                tick_threshold: config.tick_gap_threshold,
            }),
            metrics: Some((
                config.interval.unwrap_or(default_interval),
                Box::new(Histograms {
                    shared,
                    per_cpu: config.per_cpu,
                    bounds: log2_bounds(MIN_SLOT),
                }),
            )),
        })
    }
}

/// Mirror of `struct softirq_event` in softirq.bpf.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct SoftirqEvent {
    hdr: EventHeader,
    latency_ns: u64,
    vec: u32,
    kind: u32,
}

// SAFETY: plain integers and byte arrays.
unsafe impl Record for SoftirqEvent {}

fn vector_name(v: u32) -> &'static str {
    VECTORS.get(v as usize).copied().unwrap_or("UNKNOWN")
}

fn to_record(e: &SoftirqEvent, threshold: Duration, tick_threshold: Duration) -> EventRecord {
    let r = if e.kind == KIND_TICK_GAP {
        // The task running when the late tick finally came.
        EventRecord::new(SCOPE, "linux.cpu.tick_gap", Severity::Warn, e.hdr.unix_ns())
            .with("linux.tick.gap_ns", e.latency_ns)
            .with("linux.tick.threshold_ns", tick_threshold.as_nanos() as u64)
    } else {
        // The task running when the softirq ran: the one it interrupted (or ksoftirqd).
        let stage = if e.kind == 0 { "delay" } else { "duration" };
        EventRecord::new(
            SCOPE,
            "linux.softirq.latency",
            Severity::Warn,
            e.hdr.unix_ns(),
        )
        .with("linux.softirq.vector", vector_name(e.vec))
        .with("linux.softirq.stage", stage)
        .with("linux.softirq.latency_ns", e.latency_ns)
        .with("linux.softirq.threshold_ns", threshold.as_nanos() as u64)
    };
    bpf::with_task(r, &e.hdr)
}

struct Events {
    shared: Shared,
    ring: Option<kotel_ebpf::aya::maps::Map>,
    threshold: Duration,
    tick_threshold: Duration,
}

impl EventCollector for Events {
    fn run(
        mut self: Box<Self>,
        emitter: EventEmitter,
        shutdown: watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>> {
        let ring = self.ring.take();
        let (threshold, tick_threshold) = (self.threshold, self.tick_threshold);
        let shared = self.shared.clone();
        Box::pin(async move {
            // Holding the object keeps the programs attached while we run.
            let _programs = shared;
            let ring = ring.context("softirq ring buffer already consumed")?;
            bpf::run_ring(ring, shutdown, |bytes| {
                if let Some(e) = read_record::<SoftirqEvent>(bytes) {
                    emitter.emit(to_record(&e, threshold, tick_threshold));
                }
            })
            .await
        })
    }
}

struct Histograms {
    shared: Shared,
    per_cpu: bool,
    bounds: Arc<[f64]>,
}

impl Histograms {
    /// (cpu, summed values) rows of a per-CPU histogram map.
    fn rows(
        &self,
        loaded: &kotel_ebpf::Loaded,
        map: &str,
    ) -> anyhow::Result<Vec<(Option<usize>, Vec<u64>)>> {
        Ok(if self.per_cpu {
            kotel_ebpf::maps::percpu_array_by_cpu(&loaded.bpf, map)?
                .into_iter()
                .enumerate()
                .map(|(c, v)| (Some(c), v))
                .collect()
        } else {
            vec![(None, kotel_ebpf::maps::percpu_array_sums(&loaded.bpf, map)?)]
        })
    }

    /// Points of a histogram map with one histogram per vector (`vectors`)
    /// or a single one.
    fn points(
        &self,
        loaded: &kotel_ebpf::Loaded,
        map: &str,
        vectors: bool,
    ) -> anyhow::Result<Vec<HistogramPoint>> {
        let mut points = Vec::new();
        for (cpu, values) in self.rows(loaded, map)? {
            for (vec, h) in Log2Hist::split(&values).iter().enumerate() {
                if vectors && h.count() == 0 {
                    continue;
                }
                let mut attrs = Vec::new();
                if vectors {
                    attrs.push(KeyValue::new(
                        "linux.softirq.vector",
                        vector_name(vec as u32),
                    ));
                }
                if let Some(c) = cpu {
                    attrs.push(KeyValue::new("cpu.logical_number", c as i64));
                }
                points.push(bpf::hist_point(
                    h,
                    MIN_SLOT,
                    &self.bounds,
                    attrs,
                    loaded.loaded_at,
                ));
            }
        }
        Ok(points)
    }
}

impl MetricsCollector for Histograms {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let loaded = bpf::lock(&self.shared);
        let delay = self.points(&loaded, "delay_hist", true)?;
        out.push(bpf::histogram(
            "linux.softirq.delay",
            "Time from softirq raise to handler entry",
            delay,
        ));
        let duration = self.points(&loaded, "duration_hist", true)?;
        out.push(bpf::histogram(
            "linux.softirq.duration",
            "Softirq handler run time",
            duration,
        ));
        if loaded.attached.contains(&"kotel_hrtimer_expire") {
            let gaps = self.points(&loaded, "tick_hist", false)?;
            out.push(bpf::histogram(
                "linux.cpu.tick.gap",
                "Time between scheduler ticks of a busy (non-idle) CPU",
                gaps,
            ));
        }
        out.push(bpf::lost_metric(NAME, &loaded)?);
        Ok(())
    }
}
