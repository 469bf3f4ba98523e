//! Fan-out from collectors to the exporters of each pipeline.
//!
//! The router is swapped as a whole on a config reload, so collectors that
//! hold an [`EventEmitter`] keep emitting into whatever is current.

use std::sync::{Arc, RwLock};

use crate::model::{EventRecord, MetricsSnapshot};

/// An exporter that takes metric snapshots.
pub trait MetricsSink: Send + Sync {
    fn name(&self) -> &str;
    /// Must not block: push exporters queue, pull exporters store.
    fn publish(&self, snapshot: Arc<MetricsSnapshot>);
}

/// An exporter that takes event records.
pub trait EventSink: Send + Sync {
    fn name(&self) -> &str;
    /// Must not block; a full queue counts the record as dropped.
    fn publish(&self, record: Arc<EventRecord>);
}

#[derive(Default)]
struct Sinks {
    metrics: Vec<Arc<dyn MetricsSink>>,
    logs: Vec<Arc<dyn EventSink>>,
}

/// The current set of exporters of the `metrics` and `logs` pipelines.
#[derive(Clone, Default)]
pub struct Router {
    inner: Arc<RwLock<Sinks>>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace the exporters (config load and reload).
    pub fn set(&self, metrics: Vec<Arc<dyn MetricsSink>>, logs: Vec<Arc<dyn EventSink>>) {
        let mut sinks = self.inner.write().unwrap_or_else(|e| e.into_inner());
        *sinks = Sinks { metrics, logs };
    }

    pub fn publish_metrics(&self, snapshot: MetricsSnapshot) {
        let snapshot = Arc::new(snapshot);
        let sinks = self.inner.read().unwrap_or_else(|e| e.into_inner());
        for sink in &sinks.metrics {
            sink.publish(snapshot.clone());
        }
    }

    pub fn emit(&self, record: EventRecord) {
        let record = Arc::new(record);
        let sinks = self.inner.read().unwrap_or_else(|e| e.into_inner());
        for sink in &sinks.logs {
            sink.publish(record.clone());
        }
    }

    pub fn emitter(&self) -> EventEmitter {
        EventEmitter {
            router: self.clone(),
        }
    }
}

/// What an event collector holds to emit records into the logs pipeline.
#[derive(Clone)]
pub struct EventEmitter {
    router: Router,
}

impl EventEmitter {
    pub fn emit(&self, record: EventRecord) {
        self.router.emit(record);
    }
}
