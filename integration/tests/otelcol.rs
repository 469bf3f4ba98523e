//! kotel against a real OpenTelemetry Collector (built from Go modules by
//! `integration/otelcol/build.sh`), over OTLP/gRPC and OTLP/HTTP, asserting on
//! what the collector's file exporter wrote.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kotel_integration::{Collector, Kotel, attr, free_port, logs_in, metrics_in, wait_for};
use serde_json::Value;

const KOTEL: &str = env!("CARGO_BIN_EXE_kotel");

fn config(protocol: &str, endpoint: &str, extra_otlp: &str) -> String {
    format!(
        "collectors:\n  metrics:\n    interval: 1s\nexporters:\n  prometheus: {{}}\n  otlp:\n    endpoint: {endpoint}\n    protocol: {protocol}\n    timeout: 2s\n{extra_otlp}\npipelines:\n  metrics: [otlp, prometheus]\n  logs: [otlp]\nserver:\n  endpoint: \"{{HTTP}}\"\nagent:\n  shutdown_timeout: 5s\n"
    )
}

fn boot_time_nanos() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    btime * 1_000_000_000
}

fn string_attr(attrs: &Value, key: &str) -> Option<String> {
    attr(attrs, key)
        .and_then(|v| v["stringValue"].as_str())
        .map(str::to_owned)
}

fn find_metric(c: &Collector, name: &str) -> Option<(Value, Value)> {
    metrics_in(&c.lines())
        .into_iter()
        .rev()
        .find(|(_, m)| m["name"] == name)
}

fn assert_metrics_and_event(protocol: &str, endpoint_of: impl Fn(&Collector) -> String) {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(&dir.path().join("out.jsonl")).unwrap();
    let cfg = config(protocol, &endpoint_of(&collector), "");
    let kotel = Kotel::start(
        Path::new(KOTEL),
        &cfg,
        &[("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=ci")],
    )
    .unwrap();

    let (resource, cpu) = wait_for(Duration::from_secs(30), || {
        find_metric(&collector, "system.cpu.time")
    })
    .unwrap_or_else(|| {
        panic!(
            "no system.cpu.time reached the collector over {protocol}; kotel log:\n{}",
            kotel.log()
        )
    });
    // Resource attributes identify the agent and host.
    let rattrs = &resource["attributes"];
    assert_eq!(
        string_attr(rattrs, "service.name").as_deref(),
        Some("kotel")
    );
    assert_eq!(string_attr(rattrs, "os.type").as_deref(), Some("linux"));
    assert_eq!(
        string_attr(rattrs, "deployment.environment.name").as_deref(),
        Some("ci")
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        string_attr(rattrs, "host.name").as_deref(),
        Some(hostname.trim())
    );
    assert_eq!(
        string_attr(rattrs, "service.instance.id").map(|s| s.len()),
        Some(36),
        "a UUID"
    );
    if let Ok(mid) = std::fs::read_to_string("/etc/machine-id") {
        assert_eq!(string_attr(rattrs, "host.id").as_deref(), Some(mid.trim()));
    }
    // system.cpu.time: a cumulative monotonic sum in seconds, started at boot.
    assert_eq!(cpu["unit"], "s");
    let sum = &cpu["sum"];
    assert_eq!(sum["aggregationTemporality"], 2, "CUMULATIVE");
    assert_eq!(sum["isMonotonic"], true);
    let boot = boot_time_nanos();
    let points = sum["dataPoints"].as_array().unwrap();
    assert!(points.len() >= 8, "per-mode points: {}", points.len());
    for p in points {
        let start: u64 = p["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let time: u64 = p["timeUnixNano"].as_str().unwrap().parse().unwrap();
        assert_eq!(start, boot, "start time is boot time");
        assert!(time > start);
        assert!(p["asDouble"].as_f64().unwrap() >= 0.0);
        assert!(attr(&p["attributes"], "cpu.mode").is_some());
    }
    // A gauge in bytes and kotel's own counters arrive too.
    let (_, mem) = find_metric(&collector, "system.memory.usage").expect("system.memory.usage");
    assert_eq!(mem["unit"], "By");
    assert!(mem["gauge"]["dataPoints"].as_array().unwrap().len() >= 3);
    let (_, sent) = wait_for(Duration::from_secs(10), || {
        find_metric(&collector, "kotel.exporter.sent")
    })
    .expect("kotel.exporter.sent");
    assert_eq!(sent["sum"]["isMonotonic"], true);

    // One test event with nested attributes through the logs pipeline.
    let cfg_path = kotel.config_path.clone();
    let out = Command::new(KOTEL)
        .args(["test-event", "-c"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "test-event: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (resource, record) = wait_for(Duration::from_secs(15), || {
        logs_in(&collector.lines())
            .into_iter()
            .find(|(_, r)| r["eventName"] == "kotel.test")
    })
    .expect("the test event reached the collector");
    assert_eq!(
        string_attr(&resource["attributes"], "service.name").as_deref(),
        Some("kotel")
    );
    assert_eq!(record["severityNumber"], 9);
    let detail = attr(&record["attributes"], "kotel.test.detail").expect("nested map attribute");
    let nested = &detail["kvlistValue"]["values"][0];
    assert_eq!(nested["key"], "nested");
    assert_eq!(
        nested["value"]["kvlistValue"]["values"][0]["value"]["intValue"],
        "2"
    );
    let tags = attr(&record["attributes"], "kotel.test.tags").expect("array attribute");
    assert_eq!(tags["arrayValue"]["values"][1]["stringValue"], "check");
    assert!(
        record["timeUnixNano"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > boot_time_nanos()
    );

    assert!(
        kotel.stop().is_some_and(|s| s.success()),
        "clean exit on SIGTERM"
    );
    collector.stop();
}

#[test]
fn otlp_grpc_delivers_metrics_and_events() {
    assert_metrics_and_event("grpc", |c| format!("http://127.0.0.1:{}", c.grpc_port));
}

#[test]
fn otlp_http_delivers_metrics_and_events() {
    assert_metrics_and_event("http/protobuf", |c| {
        format!("http://127.0.0.1:{}", c.http_port)
    });
}

fn otlp_stat(status: &Value, signal: &str, field: &str) -> u64 {
    status["exporters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["exporter"] == "otlp" && e["signal"] == signal)
        .and_then(|e| e[field].as_u64())
        .unwrap_or(0)
}

#[test]
fn collector_outage_is_retried_counted_and_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port(), free_port());
    // Short retry budget so that given-up batches are counted within the test.
    let retry = "    retry:\n      initial_interval: 200ms\n      max_interval: 1s\n      max_elapsed_time: 2s";
    let cfg = config("grpc", &format!("http://127.0.0.1:{grpc}"), retry);
    let kotel = Kotel::start(Path::new(KOTEL), &cfg, &[]).unwrap();

    // Nothing listens yet: kotel keeps collecting, retries and counts failures.
    let status = wait_for(Duration::from_secs(20), || {
        kotel.status().ok().filter(|s| {
            otlp_stat(s, "metrics", "failed") > 0 && otlp_stat(s, "metrics", "retries") > 0
        })
    })
    .unwrap_or_else(|| panic!("no retries/failures counted; log:\n{}", kotel.log()));
    assert_eq!(otlp_stat(&status, "metrics", "sent"), 0);
    let runs_before = status["collectors"]["cpu"]["runs"].as_u64().unwrap();
    assert!(
        kotel.log().contains("OTLP export failed"),
        "the outage is logged"
    );

    // The collector comes up: data flows without restarting kotel.
    let out1 = dir.path().join("first.jsonl");
    let collector = Collector::start_on(grpc, http, &out1).unwrap();
    wait_for(Duration::from_secs(30), || {
        find_metric(&collector, "system.cpu.time")
    })
    .expect("metrics after the collector came up");
    let status = kotel.status().unwrap();
    assert!(otlp_stat(&status, "metrics", "sent") > 0);
    // Collection goes on at its 1 s interval whatever the exporter does.
    wait_for(Duration::from_secs(5), || {
        kotel
            .status()
            .ok()
            .filter(|s| s["collectors"]["cpu"]["runs"].as_u64() > Some(runs_before))
    })
    .expect("collection never stopped");

    // It goes away mid-run and comes back: kotel recovers again.
    collector.stop();
    let sent_before = otlp_stat(&kotel.status().unwrap(), "metrics", "sent");
    wait_for(Duration::from_secs(20), || {
        kotel.status().ok().filter(|s| {
            otlp_stat(s, "metrics", "retries") > otlp_stat(&status, "metrics", "retries")
        })
    })
    .expect("retries while the collector is away");
    let out2 = dir.path().join("second.jsonl");
    let collector = Collector::start_on(grpc, http, &out2).unwrap();
    wait_for(Duration::from_secs(30), || {
        find_metric(&collector, "system.cpu.time")
    })
    .expect("metrics after the collector returned");
    assert!(otlp_stat(&kotel.status().unwrap(), "metrics", "sent") > sent_before);
    assert!(kotel.log().contains("OTLP export recovered"));
    assert!(kotel.stop().is_some_and(|s| s.success()));
    collector.stop();
}
