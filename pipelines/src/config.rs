//! Exporter settings, the `exporters:` section of the config file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportersConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileConfig>,
}

/// Without an `exporters:` section the local Prometheus endpoint is on.
impl Default for ExportersConfig {
    fn default() -> Self {
        Self {
            otlp: None,
            prometheus: Some(PrometheusConfig::default()),
            file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum Protocol {
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Collector address. gRPC: `http://host:4317`; HTTP: the base URL
    /// (`http://host:4318`), to which `/v1/metrics` and `/v1/logs` are added.
    /// Empty = `OTEL_EXPORTER_OTLP_ENDPOINT` or the protocol's default.
    pub endpoint: String,
    /// Full URL for metrics over HTTP, overriding `endpoint` + `/v1/metrics`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_endpoint: Option<String>,
    /// Full URL for logs over HTTP, overriding `endpoint` + `/v1/logs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs_endpoint: Option<String>,
    pub protocol: Protocol,
    pub headers: BTreeMap<String, String>,
    pub compression: Compression,
    /// Deadline of one export request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub tls: TlsConfig,
    pub retry: RetryConfig,
    pub queue: QueueConfig,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            metrics_endpoint: None,
            logs_endpoint: None,
            protocol: Protocol::Grpc,
            headers: BTreeMap::new(),
            compression: Compression::Gzip,
            timeout: Duration::from_secs(10),
            tls: TlsConfig::default(),
            retry: RetryConfig::default(),
            queue: QueueConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Plain text even for an `https` endpoint is never done; this only
    /// matters for endpoints without a scheme.
    pub insecure: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// Give up on one batch after this long (it is then counted as failed).
    #[serde(with = "humantime_serde")]
    pub max_elapsed_time: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
            max_elapsed_time: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Log records held while the collector is slow or away.
    pub logs_capacity: usize,
    /// Metric snapshots held (one per collector per interval); the oldest
    /// go first since newer cumulative values supersede them.
    pub metrics_capacity: usize,
    /// Records per export request.
    pub max_batch: usize,
    /// How long records wait to fill a batch.
    #[serde(with = "humantime_serde")]
    pub batch_delay: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            logs_capacity: 20_000,
            metrics_capacity: 2_000,
            max_batch: 512,
            batch_delay: Duration::from_millis(200),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// Emit `target_info` with the resource attributes.
    pub target_info: bool,
    /// Copy every resource attribute onto every series as a label.
    pub resource_to_telemetry_conversion: bool,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            target_info: true,
            resource_to_telemetry_conversion: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// OTLP-JSON lines file; rotated files get `.1`, `.2`, … suffixes.
    pub path: PathBuf,
    /// Rotate when the file would exceed this many megabytes.
    pub max_megabytes: u64,
    /// Rotated files kept.
    pub max_files: usize,
    /// Records buffered before the writer; overflow is counted as dropped.
    pub queue_capacity: usize,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/kotel/events.jsonl"),
            max_megabytes: 100,
            max_files: 10,
            queue_capacity: 20_000,
        }
    }
}
