//! The `kotel` command line: config errors (exit 2 with file:line:column and
//! key path), `collectors`, config reload on SIGHUP, and the file exporter.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kotel_integration::{Kotel, read_json_lines, wait_for};

const KOTEL: &str = env!("CARGO_BIN_EXE_kotel");

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(KOTEL)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

#[test]
fn bad_configs_exit_2_naming_file_line_column_and_key() {
    let (code, _, err) =
        check("collectors:\n  metrics:\n    cpu:\n      per_cpu: true\n      percpu: false\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("FILE:5:7: collectors.metrics.cpu.percpu: unknown field `percpu`"),
        "{err}"
    );

    let (code, _, err) = check("collectors:\n  metrics:\n    interval: often\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("FILE:3:15: collectors.metrics.interval:"),
        "{err}"
    );

    let (code, _, err) = check("exporters:\n  otlp:\n    timeout: [1\n");
    assert_eq!(code, 2);
    assert!(err.contains("FILE:"), "{err}");

    let (code, _, err) = check("pipelines:\n  logs: [otlp]\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("FILE:2:3: pipelines.logs: exporter `otlp`"),
        "{err}"
    );

    let (code, out, _) = check("collectors:\n  metrics:\n    interval: 5s\n");
    assert_eq!(code, 0, "{out}");
}

#[test]
fn run_with_a_bad_config_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.yaml");
    std::fs::write(&path, "bogus: 1\n").unwrap();
    let out = Command::new(KOTEL)
        .arg("run")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":1:1: bogus: unknown field `bogus`"));
}

#[test]
fn embedded_default_prints_and_validates() {
    let out = Command::new(KOTEL)
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("# kotel configuration"));
    let (code, _, err) = check(&text);
    assert_eq!(code, 0, "{err}");
    let full = Command::new(KOTEL)
        .args(["config", "default", "--full"])
        .output()
        .unwrap();
    let full = String::from_utf8(full.stdout).unwrap();
    assert!(
        full.contains("max_events_per_second: 100"),
        "every setting is listed"
    );
    let (code, _, err) = check(&full);
    assert_eq!(code, 0, "the full listing is itself a valid config: {err}");
}

#[test]
fn collectors_lists_mode_and_availability() {
    let out = Command::new(KOTEL).arg("collectors").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for name in ["cpu", "load", "memory", "vmstat"] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        assert!(
            line.contains("metrics") && line.ends_with("available"),
            "{line}"
        );
    }
}

const RUNNING: &str = "collectors:\n  metrics:\n    interval: 1s\nexporters:\n  prometheus: {}\npipelines:\n  metrics: [prometheus]\n  logs: []\nserver:\n  endpoint: \"{HTTP}\"\n";

#[test]
fn sighup_rejects_a_bad_config_and_applies_a_good_one() {
    let kotel = Kotel::start(Path::new(KOTEL), RUNNING, &[]).unwrap();
    wait_for(Duration::from_secs(10), || {
        kotel
            .metrics_text()
            .ok()
            .filter(|t| t.contains("system_cpu_time_seconds_total"))
    })
    .expect("cpu metrics served");

    let good = std::fs::read_to_string(&kotel.config_path).unwrap();
    std::fs::write(
        &kotel.config_path,
        good.replace(
            "interval: 1s",
            "interval: 1s\n    cpu: {per_cpu: sometimes}",
        ),
    )
    .unwrap();
    kotel.signal(libc::SIGHUP);
    wait_for(Duration::from_secs(10), || {
        kotel.log().contains("config reload rejected").then_some(())
    })
    .unwrap_or_else(|| panic!("bad reload not logged:\n{}", kotel.log()));
    assert!(
        kotel.log().contains("collectors.metrics.cpu.per_cpu"),
        "the rejection names the key"
    );
    let status = kotel.status().unwrap();
    assert_eq!(
        status["collectors"]["cpu"]["status"]["state"], "running",
        "old config keeps running"
    );
    let runs = status["collectors"]["cpu"]["runs"].as_u64().unwrap();
    wait_for(Duration::from_secs(10), || {
        kotel
            .status()
            .ok()
            .filter(|s| s["collectors"]["cpu"]["runs"].as_u64() > Some(runs))
    })
    .expect("still collecting after the rejected reload");

    std::fs::write(
        &kotel.config_path,
        good.replace("interval: 1s", "interval: 1s\n    cpu: {enabled: false}"),
    )
    .unwrap();
    kotel.signal(libc::SIGHUP);
    wait_for(Duration::from_secs(15), || {
        kotel
            .status()
            .ok()
            .filter(|s| s["collectors"]["cpu"]["status"]["state"] == "disabled")
    })
    .unwrap_or_else(|| panic!("good reload not applied:\n{}", kotel.log()));
    wait_for(Duration::from_secs(10), || {
        kotel.metrics_text().ok().filter(|t| {
            !t.contains("system_cpu_time_seconds_total") && t.contains("system_memory_usage_bytes")
        })
    })
    .expect("cpu series gone after reload, memory still served");
    assert!(kotel.stop().is_some_and(|s| s.success()));
}

#[test]
fn file_exporter_writes_otlp_json_lines_0600() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events/out.jsonl");
    let cfg = dir.path().join("k.yaml");
    std::fs::write(
        &cfg,
        format!(
            "exporters:\n  file:\n    path: {}\npipelines:\n  metrics: []\n  logs: [file]\n",
            file.display()
        ),
    )
    .unwrap();
    let out = Command::new(KOTEL)
        .args(["test-event", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("file         delivered"));
    let lines = read_json_lines(&file);
    assert_eq!(lines.len(), 1);
    let record = &lines[0]["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
    assert_eq!(record["eventName"], "kotel.test");
    assert_eq!(
        lines[0]["resourceLogs"][0]["scopeLogs"][0]["scope"]["name"],
        "kotel/test"
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn containers_endpoint_lists_a_new_container_cgroup() {
    let kotel = Kotel::start(Path::new(KOTEL), RUNNING, &[]).unwrap();
    let id = format!("{:0>64x}", 0xc0ffee_u64 * u64::from(std::process::id()));
    let dir = std::path::PathBuf::from(format!(
        "/sys/fs/cgroup/unified/kotel-test-http-{}/docker-{id}.scope",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("creating a cgroup v2 directory (needs root)");
    let seen = wait_for(Duration::from_secs(5), || {
        kotel_integration::http_get(kotel.http_port, "/containers")
            .ok()
            .filter(|(code, body)| *code == 200 && body.contains(&id))
    });
    std::fs::remove_dir(&dir).ok();
    std::fs::remove_dir(dir.parent().unwrap()).ok();
    assert!(seen.is_some(), "GET /containers never listed {id}");
    assert!(kotel.stop().is_some_and(|s| s.success()));
}
