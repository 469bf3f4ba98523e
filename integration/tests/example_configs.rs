//! The collector configs in `examples/otel-configs/`: each one passes the real
//! collector's `validate` command (with the environment variables it reads),
//! and the gateway config is run end to end.
//!
//! Honest limits of this check:
//! - The collector built for the tests (`integration/otelcol/manifest.yaml`)
//!   has no `elasticsearch` exporter: its Go module was refused by the module
//!   proxy here. For configs that use it, the test validates a copy in which
//!   that exporter is replaced by an `otlp_http` stand-in carrying the same
//!   generic blocks (`sending_queue`, `tls`): receivers, processors, the
//!   pipelines and the collector-wide queue/batch settings are validated for
//!   real; the Elasticsearch-specific keys (`endpoints`, `user`, `mapping`,
//!   `retry`) are only checked for shape by parsing the YAML
//!   (`elasticsearch_exporter_section_has_the_documented_shape`). Once the
//!   manifest lists the exporter, the original files are validated unmodified.
//! - `validate` does not reject unknown keys inside the
//!   `prometheusremotewrite` block (v0.161); `remote_write.rs` runs that
//!   config against a real Prometheus, and the gateway test below runs
//!   `gateway.yaml`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kotel_integration::{
    Kotel, Otelcol, Prometheus, free_port, logs_in, otelcol_exporters, otelcol_validate,
    read_json_lines, repo_root, sample_value, wait_for,
};
use serde_yaml::{Mapping, Value};

const KOTEL: &str = env!("CARGO_BIN_EXE_kotel");

fn examples_dir() -> PathBuf {
    repo_root().join("examples/otel-configs")
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `a.b.c` lookup in a YAML mapping.
fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The variables the examples read, pointed at harmless places.
fn example_env(dir: &Path) -> Vec<(String, String)> {
    let out = dir.join("out.jsonl");
    [
        ("KOTEL_OTELCOL_FILE_OUT", out.display().to_string()),
        ("KOTEL_OTELCOL_FILE_DIR", dir.display().to_string()),
        (
            "KOTEL_PRW_ENDPOINT",
            "http://127.0.0.1:9/api/v1/write".to_owned(),
        ),
        ("KOTEL_ES_ENDPOINT", "http://127.0.0.1:9".to_owned()),
        ("KOTEL_ES_USER", "kotel".to_owned()),
        ("KOTEL_ES_PASSWORD", "secret".to_owned()),
        ("KOTEL_ES_NAMESPACE", "ci".to_owned()),
        (
            "KOTEL_OTLP_GRPC_ENDPOINT",
            format!("127.0.0.1:{}", free_port()),
        ),
        (
            "KOTEL_OTLP_HTTP_ENDPOINT",
            format!("127.0.0.1:{}", free_port()),
        ),
        (
            "KOTEL_HEALTH_ENDPOINT",
            format!("127.0.0.1:{}", free_port()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Replace every `elasticsearch` exporter by an `otlp_http` stand-in with the
/// same generic blocks, and rename it in the pipelines. Returns how many.
fn swap_out_elasticsearch(cfg: &mut Value) -> usize {
    let exporters = cfg["exporters"].as_mapping_mut().unwrap();
    let ids: Vec<String> = exporters
        .keys()
        .filter_map(Value::as_str)
        .filter(|k| *k == "elasticsearch" || k.starts_with("elasticsearch/"))
        .map(str::to_owned)
        .collect();
    let mut renames = Vec::new();
    for id in ids {
        let es = exporters.remove(id.as_str()).unwrap();
        let mut standin = Mapping::new();
        let endpoint = strs(&es["endpoints"])[0].to_owned();
        standin.insert("endpoint".into(), endpoint.into());
        for generic in ["sending_queue", "tls", "timeout", "headers"] {
            if let Some(v) = es.get(generic) {
                standin.insert(generic.into(), v.clone());
            }
        }
        let new_id = format!("otlp_http/{}_standin", id.replace('/', "_"));
        exporters.insert(new_id.clone().into(), Value::Mapping(standin));
        renames.push((id, new_id));
    }
    let pipelines = cfg["service"]["pipelines"].as_mapping_mut().unwrap();
    for (_, p) in pipelines.iter_mut() {
        for e in p["exporters"].as_sequence_mut().into_iter().flatten() {
            if let Some((_, new)) = renames.iter().find(|(old, _)| e.as_str() == Some(old)) {
                *e = new.clone().into();
            }
        }
    }
    renames.len()
}

#[test]
fn every_example_config_validates() {
    let files = example_files();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "file.yaml",
        "prometheus-remote-write.yaml",
        "elasticsearch.yaml",
        "fanout.yaml",
        "gateway.yaml",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let have_es = otelcol_exporters().iter().any(|e| e == "elasticsearch");
    let dir = tempfile::tempdir().unwrap();
    let env = example_env(dir.path());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut failures = Vec::new();
    for path in &files {
        let mut cfg = load(path);
        let uses_es = cfg["exporters"].as_mapping().is_some_and(|m| {
            m.keys()
                .filter_map(Value::as_str)
                .any(|k| k.starts_with("elasticsearch"))
        });
        let target = if uses_es && !have_es {
            assert!(swap_out_elasticsearch(&mut cfg) > 0);
            let copy = dir.path().join(format!(
                "es-swapped-{}",
                path.file_name().unwrap().to_string_lossy()
            ));
            std::fs::write(&copy, serde_yaml::to_string(&cfg).unwrap()).unwrap();
            eprintln!(
                "{}: the test collector has no elasticsearch exporter; validating a copy with an otlp_http stand-in",
                path.display()
            );
            copy
        } else {
            path.clone()
        };
        if let Err(e) = otelcol_validate(&target, &env) {
            failures.push(format!("{e:#}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A config that refers to something missing must fail, or the test above
/// proves nothing.
#[test]
fn validate_rejects_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = load(&examples_dir().join("prometheus-remote-write.yaml"));
    cfg["service"]["pipelines"]["metrics"]["processors"] =
        serde_yaml::from_str("[memory_limiter, nope]").unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    let env = example_env(dir.path());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let err = otelcol_validate(&bad, &env).unwrap_err();
    assert!(format!("{err:#}").contains("nope"), "{err:#}");
}

#[test]
fn elasticsearch_exporter_section_has_the_documented_shape() {
    for name in ["elasticsearch.yaml", "fanout.yaml"] {
        let cfg = load(&examples_dir().join(name));
        let es = get(&cfg, "exporters.elasticsearch");
        assert!(es.is_mapping(), "{name}: no elasticsearch exporter");
        let endpoints = strs(&es["endpoints"]);
        assert_eq!(endpoints.len(), 1, "{name}");
        assert!(
            endpoints[0].starts_with("${env:KOTEL_ES_ENDPOINT:-http"),
            "{name}: endpoint from KOTEL_ES_ENDPOINT: {endpoints:?}"
        );
        assert_eq!(get(es, "user").as_str(), Some("${env:KOTEL_ES_USER:-}"));
        assert_eq!(
            get(es, "password").as_str(),
            Some("${env:KOTEL_ES_PASSWORD:-}")
        );
        assert_eq!(get(es, "mapping.mode").as_str(), Some("otel"), "{name}");
        assert_eq!(get(es, "sending_queue.enabled").as_bool(), Some(true));
        let retry_on: Vec<i64> = get(es, "retry.retry_on_status")
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(Value::as_i64)
            .collect();
        assert!(retry_on.contains(&429), "{name}: {retry_on:?}");
        // No static index: documents route by data_stream.* attributes,
        // which the resource processor sets (dataset kotel -> kotel.otel).
        assert!(es.get("logs_index").is_none(), "{name}: logs_index");
        let attrs = get(&cfg, "processors.resource/es_routing.attributes")
            .as_sequence()
            .expect("resource/es_routing");
        let set = |key: &str| {
            attrs
                .iter()
                .find(|a| a["key"].as_str() == Some(key))
                .and_then(|a| a["value"].as_str())
                .map(str::to_owned)
        };
        assert_eq!(set("data_stream.dataset").as_deref(), Some("kotel"));
        assert_eq!(
            set("data_stream.namespace").as_deref(),
            Some("${env:KOTEL_ES_NAMESPACE:-default}")
        );
        // Events (logs) go to Elasticsearch; metrics never do.
        let logs = get(&cfg, "service.pipelines.logs");
        assert!(strs(&logs["exporters"]).contains(&"elasticsearch"));
        assert_eq!(
            strs(&logs["processors"]),
            ["memory_limiter", "resource/es_routing", "batch"],
            "{name}"
        );
        if let Some(m) = cfg["service"]["pipelines"].get("metrics") {
            assert!(!strs(&m["exporters"]).contains(&"elasticsearch"));
        }
    }
}

#[test]
fn pipelines_limit_memory_first_and_batch_last() {
    for path in example_files() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "file.yaml" {
            continue; // the minimal test config: batch only
        }
        let cfg = load(&path);
        let pipelines = cfg["service"]["pipelines"].as_mapping().unwrap();
        for (id, p) in pipelines {
            let procs = strs(&p["processors"]);
            assert_eq!(procs.first(), Some(&"memory_limiter"), "{name} {id:?}");
            assert_eq!(procs.last(), Some(&"batch"), "{name} {id:?}");
        }
    }
}

/// kotel → gateway.yaml → Prometheus (remote write) and the event archive
/// file: the central tier keeps each agent's job/instance, adds its own
/// resource attribute, and passes events through.
#[test]
fn gateway_forwards_agent_metrics_and_events() {
    let prom = Prometheus::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let health = free_port();
    let gw = Otelcol::start(
        &examples_dir().join("gateway.yaml"),
        &[
            ("KOTEL_PRW_ENDPOINT", &prom.remote_write_url()),
            ("KOTEL_OTELCOL_FILE_DIR", &dir.path().display().to_string()),
            ("KOTEL_HEALTH_ENDPOINT", &format!("127.0.0.1:{health}")),
            ("HOSTNAME", "gw-1"),
        ],
    )
    .unwrap();
    let (code, _) = kotel_integration::http_get(health, "/").unwrap();
    assert_eq!(code, 200, "health_check for the load balancer");
    let cfg = format!(
        "collectors:\n  metrics:\n    interval: 1s\nexporters:\n  otlp:\n    endpoint: {}\n    compression: gzip\npipelines:\n  metrics: [otlp]\n  logs: [otlp]\nserver:\n  endpoint: \"{{HTTP}}\"\n",
        gw.grpc_endpoint()
    );
    let kotel = Kotel::start(Path::new(KOTEL), &cfg, &[]).unwrap();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let q = format!(
        "target_info{{job=\"kotel\",kotel_gateway=\"gw-1\",host_name=\"{}\"}}",
        hostname.trim()
    );
    wait_for(Duration::from_secs(45), || {
        prom.query(&q).ok().filter(|r| r.len() == 1)
    })
    .unwrap_or_else(|| panic!("{q}: nothing; gateway log:\n{}", gw.log()));
    let cpu = prom
        .query("count(system_cpu_time_seconds_total{job=\"kotel\"})")
        .unwrap();
    assert!(cpu.first().is_some_and(|s| sample_value(s) >= 8.0));

    let out = Command::new(KOTEL)
        .args(["test-event", "-c"])
        .arg(&kotel.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = dir.path().join("events.jsonl");
    wait_for(Duration::from_secs(20), || {
        logs_in(&read_json_lines(&events))
            .into_iter()
            .find(|(_, r)| r["eventName"] == "kotel.test")
    })
    .unwrap_or_else(|| panic!("no kotel.test in {}; log:\n{}", events.display(), gw.log()));
    assert!(kotel.stop().is_some_and(|s| s.success()));
    gw.stop();
}
