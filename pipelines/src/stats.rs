//! Exporter self-telemetry: items exported, failed and dropped, queue length.
//!
//! Counters live in a process-wide registry keyed by exporter and signal, so
//! they keep counting across config reloads (they are cumulative sums).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Debug, Default)]
pub struct ExporterStats {
    pub exporter: String,
    pub signal: &'static str,
    /// Items (log records or metric points) the receiver accepted.
    pub sent: AtomicU64,
    /// Items given up on after retries or rejected by the receiver.
    pub failed: AtomicU64,
    /// Items dropped before sending because the queue was full.
    pub dropped: AtomicU64,
    /// Export attempts that were retried.
    pub retries: AtomicU64,
    /// Items waiting in the queue now.
    pub queued: AtomicU64,
}

impl ExporterStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn registry() -> &'static Mutex<Vec<Arc<ExporterStats>>> {
    static REGISTRY: OnceLock<Mutex<Vec<Arc<ExporterStats>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The stats of one exporter and signal; the same object on every call.
pub fn stats_for(exporter: &str, signal: &'static str) -> Arc<ExporterStats> {
    let mut all = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = all
        .iter()
        .find(|s| s.exporter == exporter && s.signal == signal)
    {
        return s.clone();
    }
    let s = Arc::new(ExporterStats {
        exporter: exporter.to_owned(),
        signal,
        ..Default::default()
    });
    all.push(s.clone());
    s
}

pub fn all_stats() -> Vec<Arc<ExporterStats>> {
    registry().lock().unwrap_or_else(|e| e.into_inner()).clone()
}
