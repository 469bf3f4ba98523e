//! Prometheus pull exporter: keeps the latest snapshot of each collector and
//! encodes them on scrape. A scrape never triggers collection.

pub mod encode;
pub mod names;
pub mod server;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::config::PrometheusConfig;
use crate::model::{MetricsSnapshot, Resource};
use crate::router::MetricsSink;
use encode::Format;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub target_info: bool,
    pub resource_to_telemetry_conversion: bool,
}

pub struct PrometheusExporter {
    latest: RwLock<BTreeMap<String, Arc<MetricsSnapshot>>>,
    resource: Resource,
    options: Options,
    /// Reused between scrapes so a scrape allocates once at most.
    buffer: Mutex<String>,
}

impl PrometheusExporter {
    pub fn new(cfg: &PrometheusConfig, resource: Resource) -> Self {
        Self {
            latest: RwLock::new(BTreeMap::new()),
            resource,
            options: Options {
                target_info: cfg.target_info,
                resource_to_telemetry_conversion: cfg.resource_to_telemetry_conversion,
            },
            buffer: Mutex::new(String::new()),
        }
    }

    /// The exposition body for one scrape.
    pub fn render(&self, format: Format) -> String {
        let snapshots: Vec<Arc<MetricsSnapshot>> = self
            .latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut buf = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        encode::encode(&mut buf, &snapshots, &self.resource, &self.options, format);
        buf.clone()
    }

    pub fn series_count(&self) -> usize {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|s| s.point_count())
            .sum()
    }
}

impl MetricsSink for PrometheusExporter {
    fn name(&self) -> &str {
        "prometheus"
    }

    fn publish(&self, snapshot: Arc<MetricsSnapshot>) {
        let stats = crate::stats::stats_for("prometheus", "metrics");
        crate::stats::ExporterStats::add(&stats.sent, snapshot.point_count() as u64);
        self.latest
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(snapshot.scope.to_string(), snapshot);
    }
}
