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
