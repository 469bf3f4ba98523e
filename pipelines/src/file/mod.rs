//! File exporter: OTLP-JSON lines, the format of the Collector's file
//! exporter (replayable with its `otlpjsonfile` receiver). Size-based
//! rotation, a retention count, files created 0600.

mod rotate;

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::warn;

use crate::config::FileConfig;
use crate::model::{EventRecord, MetricsSnapshot, Resource};
use crate::otlp::encode;
use crate::router::{EventSink, MetricsSink};
use crate::stats::{ExporterStats, stats_for};
pub use rotate::RotatingFile;

enum Item {
    Log(Arc<EventRecord>),
    Metrics(Arc<MetricsSnapshot>),
}

pub struct FileExporter {
    tx: std::sync::Mutex<Option<SyncSender<Item>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    logs_stats: Arc<ExporterStats>,
    metrics_stats: Arc<ExporterStats>,
}

const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_millis(200);

impl FileExporter {
    pub fn start(cfg: &FileConfig, resource: Resource) -> anyhow::Result<Self> {
        let file = RotatingFile::open(&cfg.path, cfg.max_megabytes * 1024 * 1024, cfg.max_files)
            .with_context(|| format!("opening event file {}", cfg.path.display()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue_capacity.max(1));
        let logs_stats = stats_for("file", "logs");
        let metrics_stats = stats_for("file", "metrics");
        let (ls, ms) = (logs_stats.clone(), metrics_stats.clone());
        let thread = std::thread::Builder::new()
            .name("kotel-file".into())
            .spawn(move || writer(rx, file, resource, ls, ms))
            .context("spawning file writer thread")?;
        Ok(Self {
            tx: std::sync::Mutex::new(Some(tx)),
            thread: std::sync::Mutex::new(Some(thread)),
            logs_stats,
            metrics_stats,
        })
    }

    fn send(&self, item: Item, stats: &ExporterStats, weight: u64) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = tx.as_ref() else {
            ExporterStats::add(&stats.dropped, weight);
            return;
        };
        match tx.try_send(item) {
            Ok(()) => ExporterStats::add(&stats.queued, weight),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                ExporterStats::add(&stats.dropped, weight)
            }
        }
    }

    /// Write what is queued and close the file, within `deadline`.
    pub fn shutdown(&self, deadline: Duration) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(handle) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let until = Instant::now() + deadline;
            while !handle.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                warn!("file exporter did not finish writing within {deadline:?}");
            }
        }
    }
}

impl EventSink for FileExporter {
    fn name(&self) -> &str {
        "file"
    }
    fn publish(&self, record: Arc<EventRecord>) {
        self.send(Item::Log(record), &self.logs_stats, 1);
    }
}

impl MetricsSink for FileExporter {
    fn name(&self) -> &str {
        "file"
    }
    fn publish(&self, snapshot: Arc<MetricsSnapshot>) {
        let w = snapshot.point_count() as u64;
        self.send(Item::Metrics(snapshot), &self.metrics_stats, w);
    }
}

fn writer(
    rx: Receiver<Item>,
    mut file: RotatingFile,
    resource: Resource,
    ls: Arc<ExporterStats>,
    ms: Arc<ExporterStats>,
) {
    let mut logs: Vec<Arc<EventRecord>> = Vec::new();
    let mut metrics: Vec<Arc<MetricsSnapshot>> = Vec::new();
    let mut line = Vec::with_capacity(64 * 1024);
    let mut deadline = Instant::now() + FLUSH_EVERY;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let closed = match rx.recv_timeout(wait) {
            Ok(Item::Log(r)) => {
                logs.push(r);
                false
            }
            Ok(Item::Metrics(m)) => {
                metrics.push(m);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        let full = logs.len() >= BATCH || metrics.len() >= BATCH;
        if full || closed || Instant::now() >= deadline {
            if !logs.is_empty() {
                let n = logs.len() as u64;
                line.clear();
                let ok = serde_json::to_writer(&mut line, &encode::logs_request(&resource, &logs))
                    .is_ok();
                finish(&mut file, &mut line, ok, n, &ls);
                logs.clear();
            }
            if !metrics.is_empty() {
                let n: u64 = metrics.iter().map(|m| m.point_count() as u64).sum();
                line.clear();
                let ok =
                    serde_json::to_writer(&mut line, &encode::metrics_request(&resource, &metrics))
                        .is_ok();
                finish(&mut file, &mut line, ok, n, &ms);
                metrics.clear();
            }
            deadline = Instant::now() + FLUSH_EVERY;
        }
        if closed {
            let _ = file.flush();
            return;
        }
    }
}

fn finish(
    file: &mut RotatingFile,
    line: &mut Vec<u8>,
    encoded: bool,
    n: u64,
    stats: &ExporterStats,
) {
    stats.queued.fetch_sub(
        n.min(ExporterStats::get(&stats.queued)),
        std::sync::atomic::Ordering::Relaxed,
    );
    line.push(b'\n');
    match encoded.then(|| file.write_line(line)) {
        Some(Ok(())) => ExporterStats::add(&stats.sent, n),
        Some(Err(e)) => {
            warn!("writing event file: {e:#}");
            ExporterStats::add(&stats.failed, n);
        }
        None => ExporterStats::add(&stats.failed, n),
    }
}
