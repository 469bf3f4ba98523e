//! The agent's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/status`.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::PrometheusExporter;
use super::encode::Format;

/// Produces the `/status` document and readiness; supplied by the agent.
pub trait StatusSource: Send + Sync {
    fn status(&self) -> serde_json::Value;
    fn ready(&self) -> bool;
    /// The containers the agent knows (`GET /containers`); `None` = 404.
    fn containers(&self) -> Option<serde_json::Value> {
        None
    }
}

#[derive(Clone)]
struct AppState {
    /// Swapped on config reload.
    prometheus: Arc<RwLock<Option<Arc<PrometheusExporter>>>>,
    status: Arc<dyn StatusSource>,
}

/// A running server; the exporter behind `/metrics` can be replaced.
pub struct HttpServer {
    pub local_addr: SocketAddr,
    prometheus: Arc<RwLock<Option<Arc<PrometheusExporter>>>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub async fn start(addr: &str, status: Arc<dyn StatusSource>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding HTTP endpoint {addr}"))?;
        let local_addr = listener.local_addr()?;
        let prometheus = Arc::new(RwLock::new(None));
        let state = AppState {
            prometheus: prometheus.clone(),
            status,
        };
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/status", get(status_doc))
            .route("/containers", get(containers_doc))
            .with_state(state);
        let (shutdown, mut rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = rx.changed().await;
            });
            if let Err(e) = serve.await {
                tracing::error!("HTTP server failed: {e}");
            }
        });
        Ok(Self {
            local_addr,
            prometheus,
            shutdown,
            task,
        })
    }

    pub fn set_prometheus(&self, exporter: Option<Arc<PrometheusExporter>>) {
        *self.prometheus.write().unwrap_or_else(|e| e.into_inner()) = exporter;
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.task).await;
    }
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let exporter = state
        .prometheus
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let Some(exporter) = exporter else {
        return (
            StatusCode::NOT_FOUND,
            "the prometheus exporter is not in the metrics pipeline\n",
        )
            .into_response();
    };
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = tokio::task::spawn_blocking(move || exporter.render(format))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.status.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn status_doc(State(state): State<AppState>) -> Response {
    axum::Json(state.status.status()).into_response()
}

async fn containers_doc(State(state): State<AppState>) -> Response {
    match state.status.containers() {
        Some(doc) => axum::Json(doc).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "container attribution is not running\n",
        )
            .into_response(),
    }
}
