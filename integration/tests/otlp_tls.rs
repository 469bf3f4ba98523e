//! OTLP over TLS (rustls) to a real collector whose receiver presents a
//! certificate made by the test; kotel trusts it through `tls.ca_file`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kotel_integration::{Kotel, free_port, metrics_in, otelcol_binary, read_json_lines, wait_for};

const KOTEL: &str = env!("CARGO_BIN_EXE_kotel");

/// A throw-away CA and a server certificate for 127.0.0.1/localhost signed
/// by it (webpki refuses a self-signed CA certificate as the server's).
fn make_cert(dir: &Path) {
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?} failed");
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=kotel-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        "cert.pem",
        "-extfile",
        "leaf.ext",
    ]);
}

fn collector_config(dir: &Path, grpc: u16, http: u16, out: &Path) -> String {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let tls = format!(
        "tls:\n          cert_file: {}\n          key_file: {}",
        cert.display(),
        key.display()
    );
    format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 127.0.0.1:{grpc}\n        {tls}\n      http:\n        endpoint: 127.0.0.1:{http}\n        {tls}\nexporters:\n  file:\n    path: {}\n    flush_interval: 1s\nservice:\n  telemetry:\n    metrics:\n      level: none\n  pipelines:\n    metrics:\n      receivers: [otlp]\n      exporters: [file]\n",
        out.display()
    )
}

fn run(protocol: &str, port_of: impl Fn(u16, u16) -> u16) {
    let dir = tempfile::tempdir().unwrap();
    make_cert(dir.path());
    let (grpc, http) = (free_port(), free_port());
    let out = dir.path().join("out.jsonl");
    let cfg_path = dir.path().join("otelcol.yaml");
    std::fs::write(&cfg_path, collector_config(dir.path(), grpc, http, &out)).unwrap();
    let mut collector = Command::new(otelcol_binary())
        .arg("--config")
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let kotel_cfg = format!(
        "collectors:\n  metrics:\n    interval: 1s\nexporters:\n  otlp:\n    endpoint: https://localhost:{}\n    protocol: {protocol}\n    tls:\n      ca_file: {}\npipelines:\n  metrics: [otlp]\n  logs: []\nserver:\n  endpoint: \"{{HTTP}}\"\n",
        port_of(grpc, http),
        dir.path().join("ca.pem").display()
    );
    let kotel = Kotel::start(Path::new(KOTEL), &kotel_cfg, &[]).unwrap();
    let found = wait_for(Duration::from_secs(30), || {
        metrics_in(&read_json_lines(&out))
            .into_iter()
            .find(|(_, m)| m["name"] == "system.cpu.time")
    });
    let log = kotel.log();
    let _ = collector.kill();
    let _ = collector.wait();
    assert!(
        found.is_some(),
        "no metrics over TLS ({protocol}); kotel log:\n{log}"
    );
    assert!(kotel.stop().is_some_and(|s| s.success()));
}

#[test]
fn otlp_grpc_over_tls() {
    run("grpc", |grpc, _| grpc);
}

#[test]
fn otlp_http_over_tls() {
    run("http/protobuf", |_, http| http);
}
