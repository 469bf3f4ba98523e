//! kotel → OTLP/gRPC → the real OpenTelemetry Collector running
//! `examples/otel-configs/prometheus-remote-write.yaml` → remote write → the
//! real Prometheus (Debian package, `--web.enable-remote-write-receiver`), all
//! on loopback; then Prometheus' HTTP API is asked what arrived.
//!
//! This test also exercises the example config itself: the collector's
//! `validate` command does not reject unknown keys inside the
//! `prometheusremotewrite` exporter block (v0.161), so running it is the only
//! real check that the block means what its comments say.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kotel_integration::{
    FakeContainer, Kotel, Otelcol, Prometheus, kotel_instance_id, prometheus_binary, repo_root,
    sample_value, wait_for,
};
use serde_json::Value;

const KOTEL: &str = env!("CARGO_BIN_EXE_kotel");

/// `service.namespace` set through `OTEL_RESOURCE_ATTRIBUTES`, so that the
/// exporter's `job = service.namespace/service.name` rule is visible.
const NAMESPACE: &str = "kotel-ci";
const JOB: &str = "kotel-ci/kotel";

fn kotel_config(otlp_endpoint: &str) -> String {
    format!(
        "collectors:\n  metrics:\n    interval: 1s\nexporters:\n  prometheus: {{}}\n  otlp:\n    endpoint: {otlp_endpoint}\n    protocol: grpc\n    timeout: 2s\npipelines:\n  metrics: [otlp, prometheus]\nserver:\n  endpoint: \"{{HTTP}}\"\nagent:\n  shutdown_timeout: 5s\n"
    )
}

fn label<'a>(sample: &'a Value, name: &str) -> Option<&'a str> {
    sample["metric"][name].as_str()
}

fn instance_id(kotel: &Kotel) -> String {
    kotel_instance_id(kotel).unwrap()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Sum of an expression's values (panics on an empty result).
fn total(prom: &Prometheus, expr: &str) -> f64 {
    let r = prom.query(expr).unwrap();
    assert!(!r.is_empty(), "{expr}: empty result");
    r.iter().map(sample_value).sum()
}

#[test]
fn kotel_metrics_reach_prometheus_through_the_collector() {
    assert!(
        prometheus_binary().is_some(),
        "prometheus is not installed: run `make test` (it installs the Debian package)"
    );
    let prom = Prometheus::start().unwrap();
    let config = repo_root().join("examples/otel-configs/prometheus-remote-write.yaml");
    let collector =
        Otelcol::start(&config, &[("KOTEL_PRW_ENDPOINT", &prom.remote_write_url())]).unwrap();
    let cfg = kotel_config(&collector.grpc_endpoint());
    let resource = format!("service.namespace={NAMESPACE},deployment.environment.name=ci");
    let envs = [("OTEL_RESOURCE_ATTRIBUTES", resource.as_str())];
    // A Docker-shaped cgroup with a small workload, for container labels.
    let container = FakeContainer::start(0xc7)
        .map_err(|e| eprintln!("SKIP container checks: {e:#}"))
        .ok();
    let kotel = Kotel::start(Path::new(KOTEL), &cfg, &envs).unwrap();
    let instance = instance_id(&kotel);
    let sel = format!("job=\"{JOB}\",instance=\"{instance}\"");

    // --- host metrics arrive, with OTel attributes as labels -------------
    let cpu = wait_for(Duration::from_secs(45), || {
        prom.query(&format!("system_cpu_time_seconds_total{{{sel}}}"))
            .ok()
            .filter(|r| !r.is_empty())
    })
    .unwrap_or_else(|| {
        panic!(
            "no system_cpu_time_seconds_total in Prometheus\nkotel log:\n{}\ncollector log:\n{}\nprometheus log:\n{}",
            kotel.log(),
            collector.log(),
            prom.log()
        )
    });
    let modes: BTreeSet<&str> = cpu.iter().filter_map(|s| label(s, "cpu_mode")).collect();
    for m in ["user", "system", "idle", "iowait"] {
        assert!(modes.contains(m), "cpu_mode={m} missing: {modes:?}");
    }
    let ncpu = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    let cpus: BTreeSet<&str> = cpu
        .iter()
        .filter_map(|s| label(s, "cpu_logical_number"))
        .collect();
    assert_eq!(cpus.len(), ncpu, "one cpu_logical_number per CPU");
    assert!(cpu.iter().all(|s| sample_value(s) >= 0.0));
    assert!(
        cpu.iter()
            .all(|s| label(s, "otel_scope_name") == Some("kotel/cpu")),
        "instrumentation scope as otel_scope_name"
    );
    assert_eq!(
        total(&prom, &format!("system_cpu_logical_count{{{sel}}}")),
        ncpu as f64
    );

    let mem = prom
        .query(&format!("system_memory_usage_bytes{{{sel}}}"))
        .unwrap();
    let states: BTreeSet<&str> = mem
        .iter()
        .filter_map(|s| label(s, "system_memory_state"))
        .collect();
    assert!(
        states.contains("used") && states.contains("free"),
        "{states:?}"
    );
    let memtotal_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let used = total(
        &prom,
        &format!("system_memory_usage_bytes{{{sel},system_memory_state=\"used\"}}"),
    );
    assert!(
        used > 0.0 && used < memtotal_kib * 1024.0,
        "used {used} B vs MemTotal {memtotal_kib} KiB: bytes, not pages or KiB"
    );

    // --- container attributes on the containers collector's series ------
    if let Some(c) = &container {
        let q = format!(
            "container_cpu_time_seconds_total{{{sel},container_id=\"{}\"}}",
            c.id
        );
        let series = wait_for(Duration::from_secs(20), || {
            prom.query(&q).ok().filter(|r| !r.is_empty())
        })
        .unwrap_or_else(|| panic!("{q}: nothing; kotel log:\n{}", kotel.log()));
        for s in &series {
            assert_eq!(label(s, "container_runtime_name"), Some("docker"), "{s}");
            assert_eq!(
                label(s, "linux_cgroup_path"),
                Some(c.cgroup_path.as_str()),
                "{s}"
            );
            assert!(label(s, "cpu_mode").is_some(), "{s}");
        }
        let mem = total(
            &prom,
            &format!(
                "container_memory_usage_bytes{{{sel},container_id=\"{}\"}}",
                c.id
            ),
        );
        assert!(mem > 0.0, "container memory {mem}");
        // Host series carry no container labels.
        assert!(cpu.iter().all(|s| label(s, "container_id").is_none()));
    }

    // --- job / instance / target_info as the PRW exporter maps them ------
    let target = prom.query(&format!("target_info{{{sel}}}")).unwrap();
    assert_eq!(target.len(), 1, "one target_info per agent: {target:?}");
    let t = &target[0];
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(label(t, "host_name"), Some(hostname.trim()));
    assert_eq!(label(t, "os_type"), Some("linux"));
    assert_eq!(label(t, "deployment_environment_name"), Some("ci"));
    assert!(
        label(t, "service_name").is_none() && label(t, "service_instance_id").is_none(),
        "service.* is in job/instance, not repeated in target_info: {t}"
    );
    assert!(
        cpu.iter().all(|s| label(s, "host_name").is_none()),
        "resource attributes stay in target_info, not on every series"
    );
    // Nothing kotel sent carries another job or instance.
    let foreign = prom
        .query(&format!(
            "count({{__name__=~\"system_.*|kotel_.*|linux_.*\",job!=\"{JOB}\"}})"
        ))
        .unwrap();
    assert!(foreign.is_empty(), "series with another job: {foreign:?}");

    // --- kotel's own metrics ---------------------------------------------
    // The first export happens before anything was counted as sent.
    wait_for(Duration::from_secs(20), || {
        let q = format!("kotel_exporter_sent_total{{{sel},exporter=\"otlp\",signal=\"metrics\"}}");
        (total(&prom, &q) > 0.0).then_some(())
    })
    .expect("kotel_exporter_sent_total grows");
    assert!(
        total(
            &prom,
            &format!("kotel_collector_runs_total{{{sel},collector=\"cpu\"}}")
        ) >= 1.0
    );
    assert!(
        !prom
            .query(&format!("process_cpu_time_seconds_total{{{sel}}}"))
            .unwrap()
            .is_empty()
    );

    // --- counters increase between two queries ---------------------------
    let counters = [
        "system_cpu_time_seconds_total",
        "linux_cpu_context_switches_total",
        "linux_cpu_interrupts_total",
        "kotel_collector_runs_total",
    ];
    let before: Vec<f64> = counters
        .iter()
        .map(|c| total(&prom, &format!("sum({c}{{{sel}}})")))
        .collect();
    for (c, b) in counters.iter().zip(&before) {
        wait_for(Duration::from_secs(20), || {
            (total(&prom, &format!("sum({c}{{{sel}}})")) > *b).then_some(())
        })
        .unwrap_or_else(|| panic!("{c} did not increase from {b}"));
    }

    // --- histograms: _bucket with le, _sum, _count -----------------------
    let kotel_buckets: BTreeSet<String> = kotel
        .metrics_text()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split('{').next())
        .filter(|n| n.ends_with("_bucket"))
        .map(str::to_owned)
        .collect();
    if kotel_buckets.is_empty() {
        eprintln!("SKIP histogram checks: kotel exports no histogram on this machine");
    } else {
        for bucket in &kotel_buckets {
            check_histogram(&prom, bucket.trim_end_matches("_bucket"), &sel);
        }
    }

    // --- restart kotel: kernel counters never go backwards ---------------
    let runs_before = total(
        &prom,
        &format!("kotel_collector_runs_total{{{sel},collector=\"cpu\"}}"),
    );
    let t_restart = now_secs();
    let status = kotel.stop();
    assert!(status.is_some_and(|s| s.success()), "clean exit on SIGTERM");
    std::thread::sleep(Duration::from_secs(2));
    // The same config again (Kotel::start picks a new local HTTP port).
    let kotel = Kotel::start(Path::new(KOTEL), &cfg, &envs).unwrap();
    assert_eq!(instance_id(&kotel), instance, "stable service.instance.id");
    // Wait for data written after the restart: kotel's own run counter
    // started again from zero, so it drops below the value seen before.
    wait_for(Duration::from_secs(30), || {
        let r = prom
            .query(&format!(
                "kotel_collector_runs_total{{{sel},collector=\"cpu\"}}"
            ))
            .ok()?;
        (r.len() == 1 && sample_value(&r[0]) < runs_before).then_some(())
    })
    .unwrap_or_else(|| panic!("no samples from the restarted kotel; log:\n{}", kotel.log()));
    // A few more collections after the restart.
    std::thread::sleep(Duration::from_secs(4));
    let window = format!("{}s", (now_secs() - t_restart).ceil() as u64 + 60);
    // The restarted process' own counters do reset (their start time is the
    // process start): proof that the window covers the restart.
    assert!(
        total(
            &prom,
            &format!("resets(kotel_collector_runs_total{{{sel},collector=\"cpu\"}}[{window}])")
        ) >= 1.0,
        "the restart is inside the queried window"
    );
    // Kernel counters start at boot: no reset across the agent restart.
    for c in [
        "system_cpu_time_seconds_total",
        "linux_cpu_context_switches_total",
        "linux_cpu_interrupts_total",
        "system_process_created_total",
        "linux_vmstat_pgfault_total",
    ] {
        let r = prom
            .query(&format!("resets({c}{{{sel}}}[{window}])"))
            .unwrap();
        assert!(!r.is_empty(), "{c}: no samples in the window");
        for s in &r {
            assert_eq!(sample_value(s), 0.0, "{c} went backwards: {s}");
        }
        let rates = prom
            .query(&format!("rate({c}{{{sel}}}[{window}])"))
            .unwrap();
        assert!(
            rates.iter().all(|s| sample_value(s) >= 0.0),
            "{c}: {rates:?}"
        );
    }
    assert!(kotel.stop().is_some_and(|s| s.success()));
    collector.stop();
}

/// One histogram family: `_bucket` series with `le` up to `+Inf`, `_sum` and
/// `_count`, cumulative buckets (`+Inf` = `_count`), `histogram_quantile`.
fn check_histogram(prom: &Prometheus, family: &str, sel: &str) {
    let buckets = wait_for(Duration::from_secs(20), || {
        prom.query(&format!("{family}_bucket{{{sel}}}"))
            .ok()
            .filter(|r| !r.is_empty())
    })
    .unwrap_or_else(|| panic!("kotel exports {family}_bucket but Prometheus has none"));
    let les: BTreeSet<&str> = buckets.iter().filter_map(|s| label(s, "le")).collect();
    assert!(
        les.contains("+Inf") && les.len() > 2,
        "{family} le labels: {les:?}"
    );
    for suffix in ["_sum", "_count"] {
        let q = format!("{family}{suffix}{{{sel}}}");
        assert!(!prom.query(&q).unwrap().is_empty(), "{q}");
    }
    let inf = total(prom, &format!("sum({family}_bucket{{{sel},le=\"+Inf\"}})"));
    let count = total(prom, &format!("sum({family}_count{{{sel}}})"));
    assert!(
        (inf - count).abs() <= f64::max(1.0, count * 0.01),
        "{family}: +Inf bucket {inf} vs _count {count}"
    );
    // Over the cumulative buckets: a rate() window is empty whenever the
    // kernel saw no such event in the last minute (an idle disk).
    let q = format!("histogram_quantile(0.99, sum by (le) ({family}_bucket{{{sel}}}))");
    assert!(!prom.query(&q).unwrap().is_empty(), "{q}");
}
