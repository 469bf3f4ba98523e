//! OTLP exporter: a bounded queue per signal, a worker that batches, encodes
//! and sends, retrying retryable failures with exponential back-off.

pub mod encode;
pub mod retry;
pub mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::OtlpConfig;
use crate::model::{EventRecord, MetricsSnapshot, Resource};
use crate::queue::{BoundedQueue, Overflow};
use crate::router::{EventSink, MetricsSink};
use crate::stats::{ExporterStats, stats_for};
use retry::Backoff;
use transport::Transport;

/// One signal's queue and stats; what collectors publish into.
pub struct SignalQueue<T> {
    queue: BoundedQueue<Arc<T>>,
}

impl MetricsSink for SignalQueue<MetricsSnapshot> {
    fn name(&self) -> &str {
        "otlp"
    }
    fn publish(&self, snapshot: Arc<MetricsSnapshot>) {
        self.queue.push(snapshot);
    }
}

impl EventSink for SignalQueue<EventRecord> {
    fn name(&self) -> &str {
        "otlp"
    }
    fn publish(&self, record: Arc<EventRecord>) {
        self.queue.push(record);
    }
}

/// The running exporter. Dropping it does not flush; call [`OtlpExporter::shutdown`].
pub struct OtlpExporter {
    pub metrics: Arc<SignalQueue<MetricsSnapshot>>,
    pub logs: Arc<SignalQueue<EventRecord>>,
    stop: watch::Sender<bool>,
    workers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl OtlpExporter {
    /// Start the workers; must run inside a tokio runtime.
    pub fn start(cfg: &OtlpConfig, resource: Resource) -> anyhow::Result<Self> {
        let transport = Arc::new(Transport::new(cfg)?);
        let resource = Arc::new(resource);
        let (stop, stop_rx) = watch::channel(false);
        let metrics_stats = stats_for("otlp", "metrics");
        let logs_stats = stats_for("otlp", "logs");
        let metrics = Arc::new(SignalQueue {
            queue: BoundedQueue::new(
                cfg.queue.metrics_capacity,
                Overflow::DropOldest,
                metrics_stats.clone(),
                |s: &Arc<MetricsSnapshot>| s.point_count() as u64,
            ),
        });
        let logs = Arc::new(SignalQueue {
            queue: BoundedQueue::new(
                cfg.queue.logs_capacity,
                Overflow::DropNewest,
                logs_stats.clone(),
                |_| 1,
            ),
        });
        let endpoint = Arc::<str>::from(cfg.endpoint.as_str());
        let m = Worker {
            cfg: cfg.clone(),
            transport: transport.clone(),
            stats: metrics_stats,
            endpoint: endpoint.clone(),
            failing: AtomicBool::new(false),
        };
        let l = Worker {
            cfg: cfg.clone(),
            transport,
            stats: logs_stats,
            endpoint,
            failing: AtomicBool::new(false),
        };
        let (mq, lq) = (metrics.clone(), logs.clone());
        let (res_m, res_l) = (resource.clone(), resource);
        let (stop_m, stop_l) = (stop_rx.clone(), stop_rx);
        let workers = vec![
            tokio::spawn(async move {
                m.run(
                    &mq.queue,
                    stop_m,
                    |batch: &[Arc<MetricsSnapshot>]| encode::metrics_request(&res_m, batch),
                    Kind::Metrics,
                )
                .await
            }),
            tokio::spawn(async move {
                l.run(
                    &lq.queue,
                    stop_l,
                    |batch: &[Arc<EventRecord>]| encode::logs_request(&res_l, batch),
                    Kind::Logs,
                )
                .await
            }),
        ];
        Ok(Self {
            metrics,
            logs,
            stop,
            workers: std::sync::Mutex::new(workers),
        })
    }

    /// Send what is queued (without retrying) and stop, within `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        let _ = self.stop.send(true);
        let workers: Vec<_> =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in workers {
            let abort = w.abort_handle();
            if tokio::time::timeout(deadline, w).await.is_err() {
                warn!("OTLP exporter did not flush within {deadline:?}");
                abort.abort();
            }
        }
        // Whatever is still queued now is lost: count it.
        for (q, stats) in [
            (self.metrics.queue.len(), "metrics"),
            (self.logs.queue.len(), "logs"),
        ] {
            if q > 0 {
                warn!("OTLP exporter stopped with {q} {stats} batches unsent");
            }
        }
        let m = self.metrics.queue.take(usize::MAX);
        ExporterStats::add(
            &stats_for("otlp", "metrics").dropped,
            m.iter().map(|s| s.point_count() as u64).sum(),
        );
        let l = self.logs.queue.take(usize::MAX);
        ExporterStats::add(&stats_for("otlp", "logs").dropped, l.len() as u64);
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Metrics,
    Logs,
}

struct Worker {
    cfg: OtlpConfig,
    transport: Arc<Transport>,
    stats: Arc<ExporterStats>,
    endpoint: Arc<str>,
    failing: AtomicBool,
}

trait Weighed {
    fn weight(&self) -> u64;
}
impl Weighed for Arc<MetricsSnapshot> {
    fn weight(&self) -> u64 {
        self.point_count() as u64
    }
}
impl Weighed for Arc<EventRecord> {
    fn weight(&self) -> u64 {
        1
    }
}

enum Request {
    Metrics(opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest),
    Logs(opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest),
}

impl From<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest>
    for Request
{
    fn from(
        r: opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
    ) -> Self {
        Request::Metrics(r)
    }
}
impl From<opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest> for Request {
    fn from(r: opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest) -> Self {
        Request::Logs(r)
    }
}

impl Worker {
    async fn run<T, R>(
        &self,
        queue: &BoundedQueue<T>,
        mut stop: watch::Receiver<bool>,
        encode: impl Fn(&[T]) -> R,
        kind: Kind,
    ) where
        T: Weighed,
        R: Into<Request> + Clone,
    {
        let max_batch = match kind {
            Kind::Metrics => usize::MAX,
            Kind::Logs => self.cfg.queue.max_batch.max(1),
        };
        loop {
            let stopping = *stop.borrow();
            if !stopping && queue.is_empty() {
                tokio::select! {
                    _ = queue.wait() => {}
                    _ = stop.changed() => {}
                }
                // Let a burst fill the batch rather than sending one by one.
                if !*stop.borrow() && queue.len() < max_batch {
                    tokio::select! {
                        _ = tokio::time::sleep(self.cfg.queue.batch_delay) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
            let batch = queue.take(max_batch);
            if batch.is_empty() {
                if *stop.borrow() {
                    return;
                }
                continue;
            }
            let items: u64 = batch.iter().map(Weighed::weight).sum();
            let request = encode(&batch);
            drop(batch);
            self.send_with_retry(request, items, &mut stop).await;
        }
    }

    async fn send_with_retry<R: Into<Request> + Clone>(
        &self,
        request: R,
        items: u64,
        stop: &mut watch::Receiver<bool>,
    ) {
        let started = Instant::now();
        let mut backoff =
            Backoff::new(self.cfg.retry.initial_interval, self.cfg.retry.max_interval);
        loop {
            let result = match request.clone().into() {
                Request::Metrics(r) => self.transport.send_metrics(r).await,
                Request::Logs(r) => self.transport.send_logs(r).await,
            };
            let err = match result {
                Ok(rejected) => {
                    ExporterStats::add(&self.stats.sent, items.saturating_sub(rejected));
                    ExporterStats::add(&self.stats.failed, rejected);
                    if self.failing.swap(false, Ordering::Relaxed) {
                        info!(signal = self.stats.signal, endpoint = %self.endpoint, "OTLP export recovered");
                    }
                    return;
                }
                Err(e) => e,
            };
            let give_up = !err.retryable
                || !self.cfg.retry.enabled
                || *stop.borrow()
                || started.elapsed() >= self.cfg.retry.max_elapsed_time;
            if !self.failing.swap(true, Ordering::Relaxed) || give_up {
                warn!(signal = self.stats.signal, endpoint = %self.endpoint, retrying = !give_up, "OTLP export failed: {}", err.message);
            }
            if give_up {
                ExporterStats::add(&self.stats.failed, items);
                return;
            }
            ExporterStats::add(&self.stats.retries, 1);
            let delay = backoff.next_delay(err.retry_after);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => {}
            }
        }
    }
}
