//! The collector framework: one trait per mode, per-collector health, and the
//! declarative registry (see [`crate::registry`]).
//!
//! A collector knows how to read the kernel and build [`kotel_pipelines`]
//! model values; it knows nothing about OTLP or Prometheus.

pub mod health;
pub mod runner;
pub mod spec;

use std::time::Duration;

use kotel_pipelines::{EventEmitter, EventRecord, Metric};

pub use health::{Health, HealthBoard, Status};
pub use spec::{Availability, CollectorSpec, CommonSettings, Mode};

/// Facts every collector may need, computed once at start-up.
#[derive(Debug, Clone)]
pub struct HostContext {
    /// Boot time (Unix nanoseconds): the start time of kernel counters.
    pub boot_time: u64,
    /// Agent start (Unix nanoseconds): the start time of kotel's own counters.
    pub agent_start: u64,
    /// Seconds per clock tick (`USER_HZ`), for `/proc/stat` style values.
    pub clock_tick: f64,
    /// Bytes per page.
    pub page_size: u64,
    /// Folder where collectors put heavy artifacts (flame graphs, dumps).
    pub capture_dir: std::path::PathBuf,
}

impl HostContext {
    pub fn detect(capture_dir: std::path::PathBuf) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let boot_secs = procfs::boot_time_secs().context("reading boot time from /proc/stat")?;
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Ok(Self {
            boot_time: boot_secs * 1_000_000_000,
            agent_start: kotel_pipelines::now_nanos(),
            clock_tick: 1.0 / if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size: if page > 0 { page as u64 } else { 4096 },
            capture_dir,
        })
    }
}

/// A metrics collector: reads its sources into metrics, once per interval.
/// Called from the scheduler only, never from a scrape.
pub trait MetricsCollector: Send {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()>;
}

/// An event collector: long-running; emits one record per captured event.
/// Returning `Ok(())` means it stopped because `shutdown` fired.
pub trait EventCollector: Send {
    fn run(
        self: Box<Self>,
        emitter: EventEmitter,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;
}

/// What a detector saw that warrants a capture.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// Scope of the anomaly: `host`, or a container/cgroup identifier. The
    /// framework keeps one cooldown per (detector, scope).
    pub scope: String,
    /// How far past its threshold the anomaly is; larger captures first.
    pub excess: f64,
    /// Trigger values and thresholds, copied into the capture record.
    pub attributes: kotel_pipelines::Attributes,
}

/// An autotracing detector: watches cheap signals every `interval`, and on a
/// trigger captures heavy context. Cooldowns and the one-capture-at-a-time
/// rule are the framework's job (see [`runner::AutotracingRunner`]).
pub trait Detector: Send {
    /// Sample signals; return the anomalies seen now (may be several scopes).
    fn check(&mut self) -> anyhow::Result<Vec<Trigger>>;
    /// Capture context for one trigger; blocking is allowed (runs off the
    /// async executor).
    fn capture(&mut self, trigger: &Trigger) -> anyhow::Result<EventRecord>;
    /// Skip captures while kotel's own CPU use over the last minute is above
    /// this many cores (`None`: no budget).
    fn capture_cpu_budget(&self) -> Option<f64> {
        None
    }
}

impl Instance {
    /// A metrics collector on its configured interval, else the default.
    pub fn metrics(
        interval: Option<Duration>,
        default: Duration,
        collector: impl MetricsCollector + 'static,
    ) -> Self {
        Instance::Metrics {
            interval: interval.unwrap_or(default),
            collector: Box::new(collector),
        }
    }
}

/// A built collector, ready to run.
pub enum Instance {
    Metrics {
        interval: Duration,
        collector: Box<dyn MetricsCollector>,
    },
    /// An event collector, plus the always-on metrics it keeps (counters and
    /// histograms aggregated in the kernel), collected on `interval`.
    Events {
        collector: Box<dyn EventCollector>,
        metrics: Option<(Duration, Box<dyn MetricsCollector>)>,
    },
    Autotracing {
        interval: Duration,
        cooldown: Duration,
        detector: Box<dyn Detector>,
    },
}
