//! `kotel run`: wire collectors to exporters, serve HTTP, reload on SIGHUP,
//! stop cleanly on SIGTERM/SIGINT.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use kotel_pipelines::file::FileExporter;
use kotel_pipelines::otlp::OtlpExporter;
use kotel_pipelines::prometheus::PrometheusExporter;
use kotel_pipelines::prometheus::server::{HttpServer, StatusSource};
use kotel_pipelines::stats::{ExporterStats, all_stats};
use kotel_pipelines::{EventSink, MetricsSink, Resource, Router};
use kotel_receiver::framework::runner::{self, Running};
use kotel_receiver::framework::{HealthBoard, HostContext};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config::{self, Config, ExporterName, Source};

/// The exporters built from one config.
struct Exporters {
    otlp: Option<Arc<OtlpExporter>>,
    file: Option<Arc<FileExporter>>,
    prometheus: Option<Arc<PrometheusExporter>>,
}

impl Exporters {
    fn build(config: &Config, resource: &Resource, router: &Router) -> anyhow::Result<Self> {
        let uses = |name| {
            config.pipelines.metrics.contains(&name) || config.pipelines.logs.contains(&name)
        };
        let otlp = match (&config.exporters.otlp, uses(ExporterName::Otlp)) {
            (Some(cfg), true) => Some(Arc::new(
                OtlpExporter::start(cfg, resource.clone()).context("starting the otlp exporter")?,
            )),
            _ => None,
        };
        let file = match (&config.exporters.file, uses(ExporterName::File)) {
            (Some(cfg), true) => Some(Arc::new(
                FileExporter::start(cfg, resource.clone()).context("starting the file exporter")?,
            )),
            _ => None,
        };
        let prometheus = match (&config.exporters.prometheus, uses(ExporterName::Prometheus)) {
            (Some(cfg), true) => Some(Arc::new(PrometheusExporter::new(cfg, resource.clone()))),
            _ => None,
        };
        let mut metrics: Vec<Arc<dyn MetricsSink>> = Vec::new();
        for name in &config.pipelines.metrics {
            match name {
                ExporterName::Otlp => metrics.extend(
                    otlp.as_ref()
                        .map(|o| o.metrics.clone() as Arc<dyn MetricsSink>),
                ),
                ExporterName::Prometheus => {
                    metrics.extend(prometheus.clone().map(|p| p as Arc<dyn MetricsSink>))
                }
                ExporterName::File => {
                    metrics.extend(file.clone().map(|f| f as Arc<dyn MetricsSink>))
                }
            }
        }
        let mut logs: Vec<Arc<dyn EventSink>> = Vec::new();
        for name in &config.pipelines.logs {
            match name {
                ExporterName::Otlp => {
                    logs.extend(otlp.as_ref().map(|o| o.logs.clone() as Arc<dyn EventSink>))
                }
                ExporterName::File => logs.extend(file.clone().map(|f| f as Arc<dyn EventSink>)),
                ExporterName::Prometheus => {}
            }
        }
        router.set(metrics, logs);
        Ok(Self {
            otlp,
            file,
            prometheus,
        })
    }

    async fn shutdown(self, deadline: Duration) {
        if let Some(o) = self.otlp {
            o.shutdown(deadline).await;
        }
        if let Some(f) = self.file {
            let _ = tokio::task::spawn_blocking(move || f.shutdown(deadline)).await;
        }
    }
}

/// Everything running for one config generation.
struct Generation {
    config: Config,
    exporters: Exporters,
    collectors: Running,
}

struct Status {
    health: HealthBoard,
    ready: AtomicBool,
    source: String,
}

impl StatusSource for Status {
    fn status(&self) -> serde_json::Value {
        let exporters: Vec<_> = all_stats()
            .iter()
            .map(|s| {
                serde_json::json!({
                    "exporter": s.exporter, "signal": s.signal,
                    "sent": ExporterStats::get(&s.sent), "failed": ExporterStats::get(&s.failed),
                    "dropped": ExporterStats::get(&s.dropped), "retries": ExporterStats::get(&s.retries),
                    "queued": ExporterStats::get(&s.queued),
                })
            })
            .collect();
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "config": self.source,
            "ready": self.ready.load(Ordering::Relaxed),
            "collectors": self.health.snapshot(),
            "exporters": exporters,
        })
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn containers(&self) -> Option<serde_json::Value> {
        Some(kotel_receiver::cgroups::snapshot_json())
    }
}

fn start_generation(
    config: Config,
    host: &HostContext,
    router: &Router,
    health: &HealthBoard,
    server: Option<&HttpServer>,
) -> anyhow::Result<Generation> {
    let resource = crate::resource::build(&config, &|k| std::env::var(k).ok());
    let exporters = Exporters::build(&config, &resource, router)?;
    if let Some(s) = server {
        s.set_prometheus(exporters.prometheus.clone());
    }
    health.remove_all();
    let entries = kotel_receiver::catalog(&config.collectors);
    let own = vec![(
        "kotel",
        config.collectors.metrics.interval,
        crate::selfmetrics::collector(health.clone(), host),
    )];
    let collectors = runner::start(&entries, own, host, router, health);
    Ok(Generation {
        config,
        exporters,
        collectors,
    })
}

impl Generation {
    async fn stop(self, deadline: Duration) {
        self.collectors.stop(deadline).await;
        self.exporters.shutdown(deadline).await;
    }
}

pub async fn run(source: Source) -> anyhow::Result<()> {
    let config = config::load(&source)?;
    let host = HostContext::detect(config.agent.capture_dir.clone())?;
    let router = Router::new();
    let health = HealthBoard::default();
    let status = Arc::new(Status {
        health: health.clone(),
        ready: AtomicBool::new(false),
        source: source.name(),
    });
    let server = match config.server.endpoint.as_str() {
        "" => None,
        addr => Some(HttpServer::start(addr, status.clone()).await?),
    };
    if let Some(s) = &server {
        info!(
            "serving /metrics, /healthz, /readyz, /status, /containers on http://{}",
            s.local_addr
        );
    }
    let server_endpoint = config.server.endpoint.clone();
    let mut current = start_generation(config, &host, &router, &health, server.as_ref())?;
    status.ready.store(true, Ordering::Relaxed);
    info!(config = %source.name(), "kotel {} running", env!("CARGO_PKG_VERSION"));

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let new = match config::load(&source) {
                    Ok(c) => c,
                    Err(e) => {
                        error!("config reload rejected, keeping the running config: {e}");
                        continue;
                    }
                };
                if new.server.endpoint != server_endpoint {
                    warn!("server.endpoint changes need a restart; keeping {server_endpoint}");
                }
                if new == current.config {
                    info!("config unchanged");
                    continue;
                }
                info!("reloading config");
                let deadline = current.config.agent.shutdown_timeout;
                let old_config = current.config.clone();
                current.stop(deadline).await;
                current = match start_generation(new, &host, &router, &health, server.as_ref()) {
                    Ok(g) => g,
                    Err(e) => {
                        error!("new config failed to start ({e:#}); restoring the previous one");
                        start_generation(old_config, &host, &router, &health, server.as_ref())?
                    }
                };
                info!("config reloaded");
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping");
    status.ready.store(false, Ordering::Relaxed);
    let deadline = current.config.agent.shutdown_timeout;
    current.stop(deadline).await;
    if let Some(s) = server {
        s.stop().await;
    }
    info!("stopped");
    Ok(())
}

/// `kotel test-event`: send one `kotel.test` record through the logs
/// pipeline and report whether every exporter delivered it.
pub async fn send_test_event(source: Source) -> anyhow::Result<bool> {
    use kotel_pipelines::{EventRecord, KeyValue, Severity, Value};
    let config = config::load(&source)?;
    let resource = crate::resource::build(&config, &|k| std::env::var(k).ok());
    let router = Router::new();
    let exporters = Exporters::build(&config, &resource, &router)?;
    let before: Vec<(String, u64)> = all_stats()
        .iter()
        .filter(|s| s.signal == "logs")
        .map(|s| (s.exporter.clone(), ExporterStats::get(&s.sent)))
        .collect();
    let record = EventRecord::new(
        "kotel/test",
        "kotel.test",
        Severity::Info,
        kotel_pipelines::now_nanos(),
    )
    .with("process.pid", i64::from(std::process::id()))
    .with(
        "kotel.test.tags",
        Value::Array(vec!["pipeline".into(), "check".into()]),
    )
    .with(
        "kotel.test.detail",
        Value::Map(vec![
            KeyValue::new("nested", Value::Map(vec![KeyValue::new("depth", 2i64)])),
            KeyValue::new("ok", true),
        ]),
    );
    router.emit(record);
    exporters.shutdown(config.agent.shutdown_timeout).await;
    let mut all_ok = true;
    for name in &config.pipelines.logs {
        let stats = kotel_pipelines::stats::stats_for(name.as_str(), "logs");
        let was = before
            .iter()
            .find(|(e, _)| e == name.as_str())
            .map(|(_, v)| *v)
            .unwrap_or(0);
        let delivered = ExporterStats::get(&stats.sent) > was;
        println!(
            "{:<12} {}",
            name.as_str(),
            if delivered {
                "delivered"
            } else {
                "NOT delivered"
            }
        );
        all_ok &= delivered;
    }
    Ok(all_ok)
}
