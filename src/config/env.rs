//! The standard `OTEL_EXPORTER_OTLP_*` variables. The config file wins where
//! it says something; the environment fills what it leaves out (the OTel
//! rule that explicit configuration beats the environment).

use kotel_pipelines::config::{Compression, OtlpConfig, Protocol};

use super::{Config, ExporterName};

fn explicitly_set(text: &str, key: &str) -> bool {
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return false;
    };
    doc.get("exporters")
        .and_then(|e| e.get("otlp"))
        .and_then(|o| o.get(key))
        .is_some()
}

/// `k1=v1,k2=v2` with percent-encoded values (the W3C baggage-like format
/// the OTel spec uses for headers and resource attributes).
pub fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not key=value"))?;
        let v = percent_encoding::percent_decode_str(v.trim())
            .decode_utf8()
            .map_err(|e| format!("`{part}`: {e}"))?;
        out.push((k.trim().to_owned(), v.into_owned()));
    }
    Ok(out)
}

pub fn apply_otel_env(
    config: &mut Config,
    text: &str,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
    let endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT");
    if config.exporters.otlp.is_none() {
        if endpoint.is_none()
            && get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").is_none()
            && get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT").is_none()
        {
            return Ok(());
        }
        // A standard endpoint variable on an agent without an otlp exporter
        // means "send there": add it to both pipelines.
        config.exporters.otlp = Some(OtlpConfig::default());
        for list in [&mut config.pipelines.metrics, &mut config.pipelines.logs] {
            if !list.contains(&ExporterName::Otlp) {
                list.push(ExporterName::Otlp);
            }
        }
    }
    let otlp = config.exporters.otlp.as_mut().expect("set above");
    if !explicitly_set(text, "protocol")
        && let Some(p) = get("OTEL_EXPORTER_OTLP_PROTOCOL")
    {
        otlp.protocol = match p.trim() {
            "grpc" => Protocol::Grpc,
            "http/protobuf" => Protocol::HttpProtobuf,
            other => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other}: kotel supports grpc and http/protobuf"
                ));
            }
        };
    }
    if otlp.endpoint.is_empty() {
        otlp.endpoint = endpoint.unwrap_or_else(|| match otlp.protocol {
            Protocol::Grpc => "http://localhost:4317".into(),
            Protocol::HttpProtobuf => "http://localhost:4318".into(),
        });
    }
    if otlp.metrics_endpoint.is_none() {
        otlp.metrics_endpoint = get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
    }
    if otlp.logs_endpoint.is_none() {
        otlp.logs_endpoint = get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT");
    }
    if let Some(h) = get("OTEL_EXPORTER_OTLP_HEADERS") {
        for (k, v) in
            parse_key_values(&h).map_err(|e| format!("OTEL_EXPORTER_OTLP_HEADERS: {e}"))?
        {
            otlp.headers.entry(k).or_insert(v);
        }
    }
    if !explicitly_set(text, "compression")
        && let Some(c) = get("OTEL_EXPORTER_OTLP_COMPRESSION")
    {
        otlp.compression = match c.trim() {
            "gzip" => Compression::Gzip,
            "none" => Compression::None,
            other => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_COMPRESSION={other}: use gzip or none"
                ));
            }
        };
    }
    if !explicitly_set(text, "timeout")
        && let Some(t) = get("OTEL_EXPORTER_OTLP_TIMEOUT")
    {
        let ms: u64 = t
            .trim()
            .parse()
            .map_err(|_| format!("OTEL_EXPORTER_OTLP_TIMEOUT={t}: expected milliseconds"))?;
        otlp.timeout = std::time::Duration::from_millis(ms);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{DEFAULT_YAML, parse};

    fn apply(text: &str, vars: &[(&str, &str)]) -> Result<Config, String> {
        let mut c = parse(text, "t").map_err(|e| e.to_string())?;
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        apply_otel_env(&mut c, text, &|k| vars.get(k).cloned())?;
        Ok(c)
    }

    #[test]
    fn endpoint_variable_adds_otlp_to_both_pipelines() {
        let c = apply(
            DEFAULT_YAML,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
        )
        .unwrap();
        let otlp = c.exporters.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://collector:4318");
        assert_eq!(otlp.protocol, Protocol::HttpProtobuf);
        assert!(
            c.pipelines.metrics.contains(&ExporterName::Otlp)
                && c.pipelines.logs.contains(&ExporterName::Otlp)
        );
    }

    #[test]
    fn config_file_wins_over_environment() {
        let text = "exporters:\n  otlp:\n    endpoint: http://a:4317\n    compression: none\n    headers: {x-team: ops}\npipelines:\n  metrics: [otlp]\n  logs: [otlp]\n";
        let c = apply(
            text,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://b:4317"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-team=env,api-key=a%20b"),
            ],
        )
        .unwrap();
        let otlp = c.exporters.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://a:4317");
        assert_eq!(otlp.compression, Compression::None);
        assert_eq!(otlp.headers["x-team"], "ops");
        assert_eq!(otlp.headers["api-key"], "a b");
    }

    #[test]
    fn nothing_set_changes_nothing_and_bad_values_are_errors() {
        let c = apply(DEFAULT_YAML, &[]).unwrap();
        assert!(c.exporters.otlp.is_none());
        let e = apply(
            DEFAULT_YAML,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ],
        )
        .unwrap_err();
        assert!(e.contains("http/json"));
    }
}
