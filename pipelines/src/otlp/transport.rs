//! Sending one OTLP request over gRPC (tonic) or HTTP/protobuf (reqwest).

use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_client::LogsServiceClient,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    metrics_service_client::MetricsServiceClient,
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt;

use super::retry::{SendError, grpc_code_retryable, http_status_retryable, parse_retry_after};
use crate::config::{Compression, OtlpConfig, Protocol};

/// Accepted, with the count the receiver said it rejected (partial success).
pub type SendResult = Result<u64, SendError>;

pub enum Transport {
    Grpc(GrpcTransport),
    Http(HttpTransport),
}

impl Transport {
    /// Build the client. Never connects eagerly: a collector that is down at
    /// start-up is just a retryable failure of the first export.
    pub fn new(cfg: &OtlpConfig) -> anyhow::Result<Self> {
        Ok(match cfg.protocol {
            Protocol::Grpc => Transport::Grpc(GrpcTransport::new(cfg)?),
            Protocol::HttpProtobuf => Transport::Http(HttpTransport::new(cfg)?),
        })
    }

    pub async fn send_metrics(&self, req: ExportMetricsServiceRequest) -> SendResult {
        match self {
            Transport::Grpc(g) => g.send_metrics(req).await,
            Transport::Http(h) => {
                let resp: ExportMetricsServiceResponse =
                    h.post(&h.metrics_url, req.encode_to_vec()).await?;
                Ok(resp
                    .partial_success
                    .map(|p| p.rejected_data_points.max(0) as u64)
                    .unwrap_or(0))
            }
        }
    }

    pub async fn send_logs(&self, req: ExportLogsServiceRequest) -> SendResult {
        match self {
            Transport::Grpc(g) => g.send_logs(req).await,
            Transport::Http(h) => {
                let resp: ExportLogsServiceResponse =
                    h.post(&h.logs_url, req.encode_to_vec()).await?;
                Ok(resp
                    .partial_success
                    .map(|p| p.rejected_log_records.max(0) as u64)
                    .unwrap_or(0))
            }
        }
    }
}

pub struct GrpcTransport {
    channel: Channel,
    headers: MetadataMap,
    gzip: bool,
    timeout: Duration,
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

impl GrpcTransport {
    fn new(cfg: &OtlpConfig) -> anyhow::Result<Self> {
        let url = if cfg.endpoint.contains("://") {
            cfg.endpoint.clone()
        } else if cfg.tls.insecure {
            format!("http://{}", cfg.endpoint)
        } else {
            format!("https://{}", cfg.endpoint)
        };
        let mut endpoint = Endpoint::from_str(&url)
            .with_context(|| format!("invalid OTLP gRPC endpoint {url:?}"))?
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &cfg.tls.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&cfg.tls.cert_file, &cfg.tls.key_file) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint.tls_config(tls).context("configuring TLS")?;
        }
        let mut headers = MetadataMap::new();
        for (k, v) in &cfg.headers {
            let key = MetadataKey::from_str(&k.to_ascii_lowercase())
                .with_context(|| format!("invalid header name {k:?}"))?;
            let value = MetadataValue::from_str(v)
                .with_context(|| format!("invalid value for header {k:?}"))?;
            headers.insert(key, value);
        }
        Ok(Self {
            channel: endpoint.connect_lazy(),
            headers,
            gzip: cfg.compression == Compression::Gzip,
            timeout: cfg.timeout,
        })
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        *req.metadata_mut() = self.headers.clone();
        req.set_timeout(self.timeout);
        req
    }

    async fn send_metrics(&self, msg: ExportMetricsServiceRequest) -> SendResult {
        let mut client = MetricsServiceClient::new(self.channel.clone());
        if self.gzip {
            client = client
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        let resp = client.export(self.request(msg)).await.map_err(grpc_error)?;
        Ok(resp
            .into_inner()
            .partial_success
            .map(|p| p.rejected_data_points.max(0) as u64)
            .unwrap_or(0))
    }

    async fn send_logs(&self, msg: ExportLogsServiceRequest) -> SendResult {
        let mut client = LogsServiceClient::new(self.channel.clone());
        if self.gzip {
            client = client
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        let resp = client.export(self.request(msg)).await.map_err(grpc_error)?;
        Ok(resp
            .into_inner()
            .partial_success
            .map(|p| p.rejected_log_records.max(0) as u64)
            .unwrap_or(0))
    }
}

/// An error with its causes, `a: b: c` (reqwest hides the useful part in sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn grpc_error(status: tonic::Status) -> SendError {
    let retry_after = status
        .get_details_retry_info()
        .and_then(|ri| ri.retry_delay);
    let retryable = grpc_code_retryable(status.code(), retry_after.is_some());
    SendError {
        message: format!("gRPC {:?}: {}", status.code(), status.message()),
        retryable,
        retry_after,
    }
}

pub struct HttpTransport {
    client: reqwest::Client,
    metrics_url: String,
    logs_url: String,
    headers: reqwest::header::HeaderMap,
    gzip: bool,
}

impl HttpTransport {
    fn new(cfg: &OtlpConfig) -> anyhow::Result<Self> {
        let base = if cfg.endpoint.contains("://") {
            cfg.endpoint.clone()
        } else {
            format!("http://{}", cfg.endpoint)
        };
        let base = base.trim_end_matches('/');
        let metrics_url = cfg
            .metrics_endpoint
            .clone()
            .unwrap_or_else(|| format!("{base}/v1/metrics"));
        let logs_url = cfg
            .logs_endpoint
            .clone()
            .unwrap_or_else(|| format!("{base}/v1/logs"));
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)));
        if let Some(ca) = &cfg.tls.ca_file {
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(&read(ca)?).context("parsing CA file")?,
            );
        }
        if let (Some(cert), Some(key)) = (&cfg.tls.cert_file, &cfg.tls.key_file) {
            let mut pem = read(cert)?;
            pem.extend(read(key)?);
            builder = builder.identity(
                reqwest::Identity::from_pem(&pem).context("parsing client certificate/key")?,
            );
        }
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            headers.insert(
                reqwest::header::HeaderName::from_str(k)
                    .with_context(|| format!("invalid header name {k:?}"))?,
                reqwest::header::HeaderValue::from_str(v)
                    .with_context(|| format!("invalid value for header {k:?}"))?,
            );
        }
        Ok(Self {
            client: builder.build().context("building HTTP client")?,
            metrics_url,
            logs_url,
            headers,
            gzip: cfg.compression == Compression::Gzip,
        })
    }

    async fn post<R: Message + Default>(&self, url: &str, body: Vec<u8>) -> Result<R, SendError> {
        let mut req = self
            .client
            .post(url)
            .headers(self.headers.clone())
            .header("content-type", "application/x-protobuf");
        let body = if self.gzip {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            enc.write_all(&body)
                .map_err(|e| SendError::permanent(format!("gzip: {e}")))?;
            req = req.header("content-encoding", "gzip");
            enc.finish()
                .map_err(|e| SendError::permanent(format!("gzip: {e}")))?
        } else {
            body
        };
        let resp = req.body(body).send().await.map_err(|e| {
            SendError::transient(format!("HTTP POST {url}: {}", error_chain(&e)), None)
        })?;
        let status = resp.status();
        if status.is_success() {
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| SendError::transient(format!("reading response: {e}"), None))?;
            return Ok(R::decode(bytes).unwrap_or_default());
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = resp.text().await.unwrap_or_default();
        let message = format!(
            "HTTP {status} from {url}: {}",
            text.chars().take(200).collect::<String>()
        );
        Err(if http_status_retryable(status.as_u16()) {
            SendError::transient(message, retry_after)
        } else {
            SendError::permanent(message)
        })
    }
}
