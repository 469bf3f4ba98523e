//! Helpers for the end-to-end tests: the real OpenTelemetry Collector (built
//! from Go modules by `integration/otelcol/build.sh`), kotel processes on free
//! loopback ports, and the collector's OTLP-JSON file output.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ is inside the repo")
        .to_owned()
}

/// Path of the collector binary, building it on first use (cached by the
/// manifest hash outside the repo).
pub fn otelcol_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("integration/otelcol/build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running integration/otelcol/build.sh");
        assert!(
            out.status.success(),
            "building the OpenTelemetry Collector failed (see stderr above)"
        );
        let text = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            text.lines()
                .last()
                .expect("build.sh prints the binary path")
                .trim(),
        )
    })
    .clone()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Poll `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A running collector with the `examples/otel-configs/file.yaml` config.
pub struct Collector {
    child: Child,
    pub grpc_port: u16,
    pub http_port: u16,
    pub out: PathBuf,
}

impl Collector {
    /// Start on fixed ports (for restarts) writing to `out`.
    pub fn start_on(grpc_port: u16, http_port: u16, out: &Path) -> anyhow::Result<Self> {
        let child = Command::new(otelcol_binary())
            .arg("--config")
            .arg(repo_root().join("examples/otel-configs/file.yaml"))
            .env("KOTEL_OTELCOL_FILE_OUT", out)
            .env("KOTEL_OTLP_GRPC_ENDPOINT", format!("127.0.0.1:{grpc_port}"))
            .env("KOTEL_OTLP_HTTP_ENDPOINT", format!("127.0.0.1:{http_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting otelcol")?;
        let c = Self {
            child,
            grpc_port,
            http_port,
            out: out.to_owned(),
        };
        if wait_for(Duration::from_secs(30), || {
            (port_open(grpc_port) && port_open(http_port)).then_some(())
        })
        .is_none()
        {
            bail!("otelcol did not open ports {grpc_port}/{http_port}");
        }
        Ok(c)
    }

    pub fn start(out: &Path) -> anyhow::Result<Self> {
        Self::start_on(free_port(), free_port(), out)
    }

    /// Every JSON line written so far.
    pub fn lines(&self) -> Vec<Value> {
        read_json_lines(&self.out)
    }

    pub fn stop(mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

fn terminate(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        if wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten()).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn read_json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A running `kotel run`.
pub struct Kotel {
    child: Child,
    pub http_port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Kotel {
    /// Start `bin` with `config` (`{HTTP}` in it is replaced by the server
    /// address) and wait until `/readyz` answers.
    pub fn start(bin: &Path, config: &str, envs: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let http_port = free_port();
        let config_path = dir.path().join("kotel.yaml");
        std::fs::write(
            &config_path,
            config.replace("{HTTP}", &format!("127.0.0.1:{http_port}")),
        )?;
        let log_path = dir.path().join("kotel.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .env("KOTEL_LOG", "info");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("starting kotel")?;
        let k = Self {
            child,
            http_port,
            config_path,
            log_path,
            _dir: dir,
        };
        if wait_for(Duration::from_secs(20), || {
            http_get(http_port, "/readyz")
                .ok()
                .filter(|(s, _)| *s == 200)
        })
        .is_none()
        {
            bail!("kotel did not become ready; log:\n{}", k.log());
        }
        Ok(k)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn status(&self) -> anyhow::Result<Value> {
        let (code, body) = http_get(self.http_port, "/status")?;
        anyhow::ensure!(code == 200, "GET /status: {code}");
        Ok(serde_json::from_str(&body)?)
    }

    pub fn metrics_text(&self) -> anyhow::Result<String> {
        Ok(http_get(self.http_port, "/metrics")?.1)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(mut self) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        wait_for(Duration::from_secs(20), || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Kotel {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// A minimal HTTP/1.1 GET against 127.0.0.1 (status, body).
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Iterate over every metric object in collector output lines.
pub fn metrics_in(lines: &[Value]) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for line in lines {
        for rm in line["resourceMetrics"].as_array().into_iter().flatten() {
            for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                for m in sm["metrics"].as_array().into_iter().flatten() {
                    out.push((rm["resource"].clone(), m.clone()));
                }
            }
        }
    }
    out
}

/// Every log record with its resource.
pub fn logs_in(lines: &[Value]) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for line in lines {
        for rl in line["resourceLogs"].as_array().into_iter().flatten() {
            for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                for r in sl["logRecords"].as_array().into_iter().flatten() {
                    out.push((rl["resource"].clone(), r.clone()));
                }
            }
        }
    }
    out
}

/// Value of a string attribute in an OTLP-JSON attribute list.
pub fn attr<'a>(attrs: &'a Value, key: &str) -> Option<&'a Value> {
    attrs
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
}

// ---------------------------------------------------------------------------
// Prometheus and collector helpers for the remote-write, dashboard and
// example-config tests.

/// The Prometheus server binary (`KOTEL_PROMETHEUS` or the Debian package's
/// `/usr/bin/prometheus`), if installed.
pub fn prometheus_binary() -> Option<PathBuf> {
    let p = std::env::var_os("KOTEL_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    p.is_file().then_some(p)
}

/// Percent-encode a query-string value (RFC 3986 unreserved characters kept).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A Prometheus server on a free loopback port with a temporary TSDB, no
/// scrape jobs, and the remote-write receiver enabled.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start() -> anyhow::Result<Self> {
        let bin = prometheus_binary()
            .context("prometheus is not installed (apt-get install prometheus)")?;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("prometheus.yml");
        // No scrape_configs: everything arrives by remote write.
        std::fs::write(&config, "global:\n  scrape_interval: 15s\n")?;
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let p = Self { child, port, dir };
        if wait_for(Duration::from_secs(30), || {
            http_get(port, "/-/ready").ok().filter(|(s, _)| *s == 200)
        })
        .is_none()
        {
            bail!("prometheus did not become ready; log:\n{}", p.log());
        }
        Ok(p)
    }

    pub fn remote_write_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/query`: the `data` object of a successful answer
    /// (`resultType` + `result`), or the error Prometheus gave.
    pub fn query_data(&self, expr: &str) -> anyhow::Result<Value> {
        let (code, body) = http_get(
            self.port,
            &format!("/api/v1/query?query={}", url_encode(expr)),
        )?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("query {expr:?}: HTTP {code}: {body}"))?;
        if v["status"] != "success" {
            bail!("query {expr:?}: HTTP {code}: {}", v["error"]);
        }
        Ok(v["data"].clone())
    }

    /// The samples of an instant query: each vector element (`{metric,
    /// value}`), or one element holding a scalar/string result.
    pub fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.query_data(expr)?;
        Ok(match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => {
                data["result"].as_array().cloned().unwrap_or_default()
            }
            _ => vec![serde_json::json!({ "metric": {}, "value": data["result"] })],
        })
    }

    /// Every metric name Prometheus has.
    pub fn metric_names(&self) -> anyhow::Result<Vec<String>> {
        let (_, body) = http_get(self.port, "/api/v1/label/__name__/values")?;
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// The numeric value of one instant-query sample (`value: [ts, "v"]`).
pub fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A collector running any config file, with `KOTEL_OTLP_GRPC_ENDPOINT` and
/// `KOTEL_OTLP_HTTP_ENDPOINT` set to free ports plus the given variables.
pub struct Otelcol {
    child: Child,
    pub grpc_port: u16,
    pub http_port: u16,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Otelcol {
    pub fn start(config: &Path, envs: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (grpc_port, http_port) = (free_port(), free_port());
        let log_path = dir.path().join("otelcol.log");
        let mut cmd = Command::new(otelcol_binary());
        cmd.arg("--config")
            .arg(config)
            .env("KOTEL_OTLP_GRPC_ENDPOINT", format!("127.0.0.1:{grpc_port}"))
            .env("KOTEL_OTLP_HTTP_ENDPOINT", format!("127.0.0.1:{http_port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("starting otelcol")?;
        let c = Self {
            child,
            grpc_port,
            http_port,
            log_path,
            _dir: dir,
        };
        if wait_for(Duration::from_secs(30), || {
            (port_open(grpc_port) && port_open(http_port)).then_some(())
        })
        .is_none()
        {
            bail!(
                "otelcol ({}) did not open ports {grpc_port}/{http_port}; log:\n{}",
                config.display(),
                c.log()
            );
        }
        Ok(c)
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn stop(mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for Otelcol {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// `otelcol-kotel validate --config FILE` with the given environment:
/// `Ok(())` or the collector's complaint.
pub fn otelcol_validate(config: &Path, envs: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut cmd = Command::new(otelcol_binary());
    cmd.arg("validate").arg("--config").arg(config);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().context("running otelcol validate")?;
    if !out.status.success() {
        bail!(
            "{} does not validate:\n{}{}",
            config.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The exporter type names compiled into the collector binary.
pub fn otelcol_exporters() -> Vec<String> {
    let out = Command::new(otelcol_binary())
        .arg("components")
        .output()
        .expect("otelcol components");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut section = "";
    let mut names = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line.trim_end_matches(':');
        } else if section == "exporters"
            && let Some(name) = line.trim().strip_prefix("- name:")
        {
            names.push(name.trim().to_owned());
        }
    }
    names
}

/// A cgroup shaped like a Docker container (cgroupfs driver:
/// `/<parent>/docker/<64-hex id>` in the v1 `memory`, `cpu` and `cpuacct`
/// hierarchies) holding a small shell loop that uses some CPU and memory, so
/// kotel's `containers` collector reports it. Everything is removed on drop.
/// Needs root and the v1 controllers (this project's machines have them).
pub struct FakeContainer {
    pub id: String,
    /// The cgroup path as kotel reports it in `linux.cgroup.path`.
    pub cgroup_path: String,
    child: Child,
    dirs: Vec<PathBuf>,
}

impl FakeContainer {
    pub fn start(tag: u8) -> anyhow::Result<Self> {
        const V1: &str = "/sys/fs/cgroup";
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("needs root to make cgroups");
        }
        for ctrl in ["memory", "cpu", "cpuacct"] {
            let procs = Path::new(V1).join(ctrl).join("cgroup.procs");
            if !procs.exists() {
                bail!("no cgroup v1 {ctrl} hierarchy ({})", procs.display());
            }
        }
        let id = format!("{tag:02x}{:062x}", std::process::id());
        let parent = format!("kotel-e2e-{}-{tag:02x}", std::process::id());
        let child = Command::new("sh")
            .arg("-c")
            // About a tenth of a CPU: a counting loop, then a short sleep.
            .arg("while :; do i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 0.1; done")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the container's workload")?;
        let mut c = Self {
            cgroup_path: format!("/{parent}/docker/{id}"),
            id,
            child,
            dirs: Vec::new(),
        };
        for ctrl in ["memory", "cpu", "cpuacct"] {
            let root = Path::new(V1).join(ctrl);
            for d in [
                root.join(&parent),
                root.join(&parent).join("docker"),
                root.join(&parent).join("docker").join(&c.id),
            ] {
                std::fs::create_dir(&d).with_context(|| format!("mkdir {}", d.display()))?;
                c.dirs.push(d);
            }
            let leaf = c.dirs.last().unwrap().join("cgroup.procs");
            std::fs::write(&leaf, c.child.id().to_string())
                .with_context(|| format!("moving the workload into {}", leaf.display()))?;
        }
        Ok(c)
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for d in self.dirs.iter().rev() {
            for _ in 0..50 {
                if !d.exists() || std::fs::remove_dir(d).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `service.instance.id` of a running kotel, read from the `target_info` on
/// its own `/metrics` (the collector maps it to the `instance` label).
pub fn kotel_instance_id(kotel: &Kotel) -> anyhow::Result<String> {
    let text = kotel.metrics_text()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("target_info{"))
        .context("no target_info on kotel's /metrics")?;
    let (_, rest) = line
        .split_once("service_instance_id=\"")
        .context("target_info without service_instance_id")?;
    Ok(rest.split('"').next().unwrap_or_default().to_owned())
}
