//! The Grafana dashboards in `examples/grafana/` run against real data: kotel
//! → OTLP → the collector (`prometheus-remote-write.yaml`) → remote write →
//! Prometheus. Every panel query and every template-variable query, with the
//! variables replaced by this test's values, must return a non-empty result.
//!
//! The containers dashboard needs a container: the test makes a
//! Docker-shaped cgroup with a small workload (`FakeContainer`). Without
//! root or cgroup v1 controllers that dashboard is skipped, and the test
//! says so; nothing else is ever skipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kotel_integration::{
    FakeContainer, Kotel, Otelcol, Prometheus, kotel_instance_id, repo_root, sample_value, wait_for,
};
use serde_json::Value;

const KOTEL: &str = env!("CARGO_BIN_EXE_kotel");
const DASHBOARDS: [&str; 3] = ["host.json", "containers.json", "kernel-events.json"];

fn dashboard(name: &str) -> Value {
    let path: PathBuf = repo_root().join("examples/grafana").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, including those nested in collapsed rows.
fn panels(list: &Value, out: &mut Vec<Value>) {
    for p in list.as_array().into_iter().flatten() {
        if let Some(nested) = p.get("panels") {
            panels(nested, out);
        }
        if p["type"] != "row" {
            out.push(p.clone());
        }
    }
}

/// Replace Grafana variables (`$x` and `${x}`) by concrete values.
fn substitute(expr: &str, vars: &[(&str, String)]) -> String {
    let mut e = expr.to_owned();
    // Longest names first, so `$__rate_interval` wins over `$__range`, etc.
    let mut vars: Vec<&(&str, String)> = vars.iter().collect();
    vars.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (k, v) in vars {
        e = e
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    e
}

/// Structural checks that Grafana would otherwise reject at import time.
fn check_model(name: &str, d: &Value) {
    assert!(
        d["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "{name}: uid"
    );
    assert!(d["title"].as_str().is_some(), "{name}: title");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let ds = vars
        .iter()
        .find(|v| v["name"] == "DS_PROMETHEUS")
        .unwrap_or_else(|| panic!("{name}: no DS_PROMETHEUS variable"));
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let mut all = Vec::new();
    panels(&d["panels"], &mut all);
    let mut ids = BTreeSet::new();
    for p in &all {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{name}: duplicate id {}",
            p["id"]
        );
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{name}: panel {:?} datasource",
            p["title"]
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{name}: panel {:?} wider than the grid",
            p["title"]
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(
            !targets.is_empty(),
            "{name}: panel {:?} has no query",
            p["title"]
        );
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}");
        }
    }
}

#[test]
fn every_dashboard_query_returns_data() {
    let prom = Prometheus::start().unwrap();
    let collector = Otelcol::start(
        &repo_root().join("examples/otel-configs/prometheus-remote-write.yaml"),
        &[("KOTEL_PRW_ENDPOINT", &prom.remote_write_url())],
    )
    .unwrap();
    let container = FakeContainer::start(0xda)
        .map_err(|e| eprintln!("SKIP containers.json: cannot make a container cgroup: {e:#}"))
        .ok();
    let cfg = format!(
        "collectors:\n  metrics:\n    interval: 1s\nexporters:\n  prometheus: {{}}\n  otlp:\n    endpoint: {}\npipelines:\n  metrics: [otlp, prometheus]\nserver:\n  endpoint: \"{{HTTP}}\"\n",
        collector.grpc_endpoint()
    );
    let kotel = Kotel::start(Path::new(KOTEL), &cfg, &[]).unwrap();
    let instance = kotel_instance_id(&kotel).unwrap();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();

    // Enough samples for rate() over 1m windows: a few collections in.
    let enough = format!(
        "count_over_time(system_cpu_time_seconds_total{{instance=\"{instance}\",cpu_mode=\"user\"}}[1m])"
    );
    wait_for(Duration::from_secs(60), || {
        prom.query(&enough)
            .ok()
            .filter(|r| r.first().is_some_and(|s| sample_value(s) >= 6.0))
    })
    .unwrap_or_else(|| {
        panic!(
            "no data in Prometheus; kotel log:\n{}\ncollector log:\n{}",
            kotel.log(),
            collector.log()
        )
    });
    if let Some(c) = &container {
        let q = format!(
            "count_over_time(container_cpu_time_seconds_total{{container_id=\"{}\"}}[1m])",
            c.id
        );
        wait_for(Duration::from_secs(30), || {
            prom.query(&q)
                .ok()
                .filter(|r| r.first().is_some_and(|s| sample_value(s) >= 4.0))
        })
        .unwrap_or_else(|| panic!("{q}: the container never showed up"));
    }

    let vars: Vec<(&str, String)> = vec![
        ("job", "kotel".to_owned()),
        ("host", hostname.clone()),
        ("instance", instance.clone()),
        (
            "container",
            container.as_ref().map_or(".*".to_owned(), |c| c.id.clone()),
        ),
        ("__rate_interval", "1m".to_owned()),
        ("__interval", "15s".to_owned()),
        ("__range", "5m".to_owned()),
    ];

    let mut failures = Vec::new();
    let mut ran = 0;
    for name in DASHBOARDS {
        if name == "containers.json" && container.is_none() {
            continue;
        }
        let d = dashboard(name);
        check_model(name, &d);

        // Template variables: label_values(<selector>, <label>).
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] != "query" {
                continue;
            }
            let def = v["definition"].as_str().unwrap();
            let inner = def
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{name}: variable {}: {def}", v["name"]));
            let (selector, label) = inner.rsplit_once(',').unwrap();
            let (selector, label) = (substitute(selector.trim(), &vars), label.trim());
            ran += 1;
            match prom.query(&selector) {
                Ok(r) => {
                    let values: BTreeSet<&str> = r
                        .iter()
                        .filter_map(|s| s["metric"][label].as_str())
                        .collect();
                    let want = vars
                        .iter()
                        .find(|(k, _)| *k == v["name"].as_str().unwrap())
                        .map(|(_, v)| v.as_str());
                    if values.is_empty() || want.is_some_and(|w| w != ".*" && !values.contains(w)) {
                        failures.push(format!(
                            "{name}: variable {} ({selector} -> {label}): {values:?}, want {want:?}",
                            v["name"]
                        ));
                    }
                }
                Err(e) => failures.push(format!("{name}: variable {}: {e:#}", v["name"])),
            }
        }

        let mut all = Vec::new();
        panels(&d["panels"], &mut all);
        for p in &all {
            for t in p["targets"].as_array().unwrap() {
                let raw = t["expr"].as_str().unwrap();
                let expr = substitute(raw, &vars);
                let title = p["title"].as_str().unwrap_or("?");
                if expr.contains('$') {
                    failures.push(format!("{name}: {title:?}: unknown variable in {raw}"));
                    continue;
                }
                ran += 1;
                match prom.query(&expr) {
                    Ok(r) if r.is_empty() => {
                        failures.push(format!("{name}: {title:?}: no data for {expr}"))
                    }
                    Ok(_) => {}
                    Err(e) => failures.push(format!("{name}: {title:?}: {e:#}")),
                }
            }
        }
    }
    if !failures.is_empty() {
        let states = kotel
            .status()
            .map(|s| s["collectors"].to_string())
            .unwrap_or_default();
        panic!(
            "{} of {ran} dashboard queries failed:\n{}\nkotel collectors: {states}",
            failures.len(),
            failures.join("\n")
        );
    }
    eprintln!("{ran} dashboard queries returned data");
    assert!(kotel.stop().is_some_and(|s| s.success()));
    collector.stop();
}
