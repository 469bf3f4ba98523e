//! The config file: types, loading with precise errors, and validation.

mod env;
mod locate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kotel_pipelines::config::ExportersConfig;
use kotel_receiver::CollectorsConfig;
use serde::{Deserialize, Serialize};

pub use env::{apply_otel_env, parse_key_values as env_key_values};

/// The embedded default, used when `kotel run` gets no `-c`.
pub const DEFAULT_YAML: &str = include_str!("default.yaml");

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Extra resource attributes.
    pub resource: BTreeMap<String, Scalar>,
    pub collectors: CollectorsConfig,
    pub exporters: ExportersConfig,
    pub pipelines: PipelinesConfig,
    pub server: ServerConfig,
    pub agent: AgentConfig,
}

/// A resource attribute value.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExporterName {
    Otlp,
    Prometheus,
    File,
}

impl ExporterName {
    pub fn as_str(self) -> &'static str {
        match self {
            ExporterName::Otlp => "otlp",
            ExporterName::Prometheus => "prometheus",
            ExporterName::File => "file",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelinesConfig {
    pub metrics: Vec<ExporterName>,
    pub logs: Vec<ExporterName>,
}

impl Default for PipelinesConfig {
    fn default() -> Self {
        Self {
            metrics: vec![ExporterName::Prometheus],
            logs: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address of `/metrics`, `/healthz`, `/readyz`, `/status`;
    /// empty disables the HTTP server.
    pub endpoint: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            endpoint: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub capture_dir: PathBuf,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            capture_dir: PathBuf::from("/var/lib/kotel/captures"),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// A config file that cannot be used: names the file, position and key path.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {path}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `collectors.metrics.cpu.per_cpu`.
    pub path: String,
    pub message: String,
}

/// Where the config text came from, for error messages.
#[derive(Debug, Clone)]
pub enum Source {
    Embedded,
    File(PathBuf),
}

impl Source {
    pub fn name(&self) -> String {
        match self {
            Source::Embedded => "<embedded default>".into(),
            Source::File(p) => p.display().to_string(),
        }
    }

    pub fn read(&self) -> Result<String, ConfigError> {
        match self {
            Source::Embedded => Ok(DEFAULT_YAML.to_owned()),
            Source::File(p) => std::fs::read_to_string(p).map_err(|e| ConfigError {
                file: p.display().to_string(),
                line: 0,
                column: 0,
                path: "(file)".into(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
}

/// Parse and validate config text (no environment applied).
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = inner
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        // serde_yaml prefixes the message with the path it knows; keep ours.
        let message = inner.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if !prefix.contains(' ') => rest.to_owned(),
            _ => message,
        };
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            path: if path == "." { "(root)".into() } else { path },
            message,
        }
    })?;
    validate(&config, text, file)?;
    Ok(config)
}

/// Checks serde cannot express: pipelines name configured exporters of the
/// right signal; collector settings are consistent.
fn validate(config: &Config, text: &str, file: &str) -> Result<(), ConfigError> {
    let err = |path: &[&str], message: String| {
        let (line, column) = locate::find(text, path).unwrap_or((0, 0));
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            path: path.join("."),
            message,
        }
    };
    let configured = |name: ExporterName| match name {
        ExporterName::Otlp => config.exporters.otlp.is_some(),
        ExporterName::Prometheus => config.exporters.prometheus.is_some(),
        ExporterName::File => config.exporters.file.is_some(),
    };
    for (signal, list) in [
        ("metrics", &config.pipelines.metrics),
        ("logs", &config.pipelines.logs),
    ] {
        for (i, name) in list.iter().enumerate() {
            if !configured(*name) {
                return Err(err(
                    &["pipelines", signal],
                    format!(
                        "exporter `{}` (item {i}) is not configured under `exporters`",
                        name.as_str()
                    ),
                ));
            }
            if signal == "logs" && *name == ExporterName::Prometheus {
                return Err(err(
                    &["pipelines", signal],
                    "the prometheus exporter only takes metrics".into(),
                ));
            }
        }
    }
    if config.pipelines.metrics.contains(&ExporterName::Prometheus)
        && config.server.endpoint.is_empty()
    {
        return Err(err(
            &["server", "endpoint"],
            "the prometheus exporter needs the HTTP server; set server.endpoint".into(),
        ));
    }
    Ok(())
}

/// Read, parse, validate and apply the `OTEL_*` environment.
pub fn load(source: &Source) -> Result<Config, ConfigError> {
    let text = source.read()?;
    let mut config = parse(&text, &source.name())?;
    apply_otel_env(&mut config, &text, &|k| std::env::var(k).ok()).map_err(|message| {
        ConfigError {
            file: "(environment)".into(),
            line: 0,
            column: 0,
            path: "OTEL_*".into(),
            message,
        }
    })?;
    Ok(config)
}

pub fn source_for(path: Option<&Path>) -> Source {
    match path {
        Some(p) => Source::File(p.to_owned()),
        None => Source::Embedded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = parse(DEFAULT_YAML, "default").unwrap();
        assert_eq!(c.pipelines.metrics, vec![ExporterName::Prometheus]);
        assert_eq!(c.collectors.metrics.interval, Duration::from_secs(15));
    }

    #[test]
    fn embedded_default_names_every_collector() {
        let c = parse(DEFAULT_YAML, "default").unwrap();
        for entry in kotel_receiver::catalog(&c.collectors) {
            let key = format!("\n    {}:", entry.name);
            assert!(
                DEFAULT_YAML.contains(&key),
                "default.yaml has no section for {}",
                entry.name
            );
        }
    }

    #[test]
    fn unknown_key_names_line_column_and_path() {
        let text = "collectors:\n  metrics:\n    cpu:\n      per_cpu: true\n      bogus: 1\n";
        let e = parse(text, "k.yaml").unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.line, e.path.as_str()),
            ("k.yaml", 5, "collectors.metrics.cpu.bogus"),
            "{e}"
        );
        assert!(e.message.contains("unknown field `bogus`"), "{e}");
        assert!(e.column > 0);
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = "collectors:\n  metrics:\n    interval: 15s\n    cpu:\n      per_cpu: maybe\n";
        let e = parse(text, "t.yaml").unwrap_err();
        assert_eq!(
            (e.line, e.path.as_str()),
            (5, "collectors.metrics.cpu.per_cpu"),
            "{e}"
        );
    }

    #[test]
    fn bad_duration_and_bad_yaml_are_located() {
        let e = parse("collectors:\n  metrics:\n    interval: soon\n", "d.yaml").unwrap_err();
        assert_eq!(
            (e.line, e.path.as_str()),
            (3, "collectors.metrics.interval"),
            "{e}"
        );
        let e = parse("exporters:\n  file: [unclosed\n", "y.yaml").unwrap_err();
        assert!(e.line >= 2, "{e}");
    }

    #[test]
    fn pipeline_must_name_a_configured_exporter() {
        let e = parse("pipelines:\n  metrics: [otlp]\n", "p.yaml").unwrap_err();
        assert_eq!((e.line, e.path.as_str()), (2, "pipelines.metrics"), "{e}");
        let e = parse(
            "exporters:\n  prometheus: {}\npipelines:\n  logs: [prometheus]\n  metrics: []\n",
            "p.yaml",
        )
        .unwrap_err();
        assert!(e.message.contains("only takes metrics"), "{e}");
    }
}
