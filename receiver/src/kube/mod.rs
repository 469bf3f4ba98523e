//! Kubernetes metadata from the node's kubelet (`GET /pods`).
//!
//! A background thread polls the kubelet (read-only port, or the
//! authenticated port with the service-account token and/or a client
//! certificate) every `refresh`, and earlier (at most every 2 s) when an
//! attribution asks about a container it does not know yet. Failures back
//! off exponentially up to `max_backoff`, keep the last good pod list, and
//! never stop the thread: a kubelet that goes away and comes back is picked
//! up again. Without Kubernetes nothing starts (`enabled: auto` looks for
//! a service-account token or `KUBERNETES_SERVICE_HOST`).
//!
//! The [`PodCache`] maps container ids (without the `containerd://` scheme)
//! and pod uids to pod metadata; [`crate::cgroups::CgroupInfo::attributes`]
//! appends it as `k8s.*` attributes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kotel_pipelines::KeyValue;
use serde::{Deserialize, Serialize};

const SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const SA_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// `collectors.metrics.containers.kubelet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeletConfig {
    /// `true`, `false`, or absent = auto (on when running in a pod or a
    /// service-account token exists).
    pub enabled: Option<bool>,
    /// Base URL: `https://127.0.0.1:10250` (authenticated) or
    /// `http://127.0.0.1:10255` (read-only port, deprecated).
    pub endpoint: String,
    /// Bearer token file, read before every request (tokens rotate); absent
    /// or missing file = no token.
    pub token_file: Option<PathBuf>,
    /// CA bundle for the kubelet's serving certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for the authenticated port.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Skip verification of the kubelet's certificate (self-signed serving
    /// certificates are common).
    pub insecure_skip_verify: bool,
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Pod labels copied as `k8s.pod.label.<key>`.
    pub labels: Vec<String>,
}

impl Default for KubeletConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            endpoint: "https://127.0.0.1:10250".into(),
            token_file: Some(SA_TOKEN.into()),
            ca_file: None,
            cert_file: None,
            key_file: None,
            insecure_skip_verify: true,
            refresh: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
            labels: vec!["app".into(), "app.kubernetes.io/name".into()],
        }
    }
}

impl KubeletConfig {
    /// Whether the client should run on this host.
    pub fn active(&self) -> bool {
        self.enabled.unwrap_or_else(|| {
            std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() || Path::new(SA_TOKEN).exists()
        })
    }
}

/// What the kubelet says about one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerMeta {
    pub pod_name: String,
    pub pod_uid: String,
    pub namespace: String,
    pub container_name: String,
    pub node_name: Option<String>,
    /// `guaranteed`, `burstable`, `besteffort` (lower-cased `qosClass`).
    pub qos: Option<String>,
    /// Selected labels, as `k8s.pod.label.<key>` attributes.
    pub labels: Vec<(String, String)>,
}

impl ContainerMeta {
    fn append(&self, out: &mut Vec<KeyValue>, with_container: bool) {
        let has = |out: &Vec<KeyValue>, k: &str| out.iter().any(|kv| kv.key == k);
        out.push(KeyValue::new("k8s.pod.name", self.pod_name.clone()));
        if !has(out, "k8s.pod.uid") {
            out.push(KeyValue::new("k8s.pod.uid", self.pod_uid.clone()));
        }
        out.push(KeyValue::new("k8s.namespace.name", self.namespace.clone()));
        if with_container {
            out.push(KeyValue::new(
                "k8s.container.name",
                self.container_name.clone(),
            ));
        }
        if let Some(n) = &self.node_name {
            out.push(KeyValue::new("k8s.node.name", n.clone()));
        }
        if let Some(q) = &self.qos
            && !has(out, "k8s.pod.qos_class")
        {
            out.push(KeyValue::new("k8s.pod.qos_class", q.clone()));
        }
        for (k, v) in &self.labels {
            out.push(KeyValue::new(format!("k8s.pod.label.{k}"), v.clone()));
        }
    }
}

/// Pod metadata by container id and by pod uid.
#[derive(Default)]
pub struct PodCache {
    by_container: RwLock<HashMap<String, Arc<ContainerMeta>>>,
    /// One container of each pod, for pod-level cgroups.
    by_pod: RwLock<HashMap<String, Arc<ContainerMeta>>>,
    want_refresh: AtomicBool,
    /// Bumped on every successful refresh, so holders of attributes know
    /// when to rebuild them.
    pub version: AtomicU64,
    pub fetches: AtomicU64,
    pub failures: AtomicU64,
}

impl std::fmt::Debug for PodCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCache")
            .field("containers", &self.len())
            .finish()
    }
}

impl PodCache {
    pub fn len(&self) -> usize {
        self.by_container
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn container(&self, id: &str) -> Option<Arc<ContainerMeta>> {
        self.by_container
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    pub fn pod(&self, uid: &str) -> Option<Arc<ContainerMeta>> {
        self.by_pod
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
    }

    /// Append the `k8s.*` attributes of a container (or, without one, of
    /// its pod). A miss asks the client for an early refresh.
    pub fn annotate(
        &self,
        container_id: Option<&str>,
        pod_uid: Option<&str>,
        out: &mut Vec<KeyValue>,
    ) {
        if let Some(id) = container_id {
            if let Some(m) = self.container(id) {
                m.append(out, true);
                return;
            }
            self.want_refresh.store(true, Ordering::Relaxed);
        }
        if let Some(m) = pod_uid.and_then(|u| self.pod(u)) {
            m.append(out, false);
        }
    }

    /// Replace the contents with a parsed pod list.
    pub fn replace(&self, containers: HashMap<String, Arc<ContainerMeta>>) {
        let mut pods = HashMap::new();
        for m in containers.values() {
            pods.entry(m.pod_uid.clone()).or_insert_with(|| m.clone());
        }
        *self.by_container.write().unwrap_or_else(|e| e.into_inner()) = containers;
        *self.by_pod.write().unwrap_or_else(|e| e.into_inner()) = pods;
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot_json(&self) -> serde_json::Value {
        let map = self.by_container.read().unwrap_or_else(|e| e.into_inner());
        let mut items: Vec<_> = map
            .iter()
            .map(|(id, m)| {
                serde_json::json!({
                    "container.id": id,
                    "k8s.pod.name": m.pod_name,
                    "k8s.pod.uid": m.pod_uid,
                    "k8s.namespace.name": m.namespace,
                    "k8s.container.name": m.container_name,
                    "k8s.node.name": m.node_name,
                    "k8s.pod.qos_class": m.qos,
                })
            })
            .collect();
        items.sort_by(|a, b| a["container.id"].as_str().cmp(&b["container.id"].as_str()));
        serde_json::json!({
            "fetches": self.fetches.load(Ordering::Relaxed),
            "failures": self.failures.load(Ordering::Relaxed),
            "containers": items,
        })
    }
}

/// The process-wide pod cache (empty unless a client runs).
pub fn global_cache() -> &'static Arc<PodCache> {
    static CACHE: OnceLock<Arc<PodCache>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Start the process-wide client once (later calls are no-ops); does
/// nothing when the config is not active.
pub fn start_global(config: &KubeletConfig) -> anyhow::Result<()> {
    static STARTED: OnceLock<()> = OnceLock::new();
    if !config.active() || STARTED.get().is_some() {
        return Ok(());
    }
    let client = Kubelet::start(config.clone(), global_cache().clone())?;
    // Lives as long as the process.
    std::mem::forget(client);
    let _ = STARTED.set(());
    Ok(())
}

/// Strip the runtime scheme of a `containerID` (`containerd://<id>`).
fn bare_id(s: &str) -> &str {
    s.split_once("://").map_or(s, |(_, id)| id)
}

/// Parse a kubelet `/pods` response (a `PodList`).
pub fn parse_pods(
    body: &[u8],
    labels: &[String],
) -> anyhow::Result<HashMap<String, Arc<ContainerMeta>>> {
    let v: serde_json::Value = serde_json::from_slice(body).context("kubelet /pods: not JSON")?;
    let items = v["items"]
        .as_array()
        .context("kubelet /pods: no items array")?;
    let mut out = HashMap::new();
    let s = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    for pod in items {
        let md = &pod["metadata"];
        let (Some(name), Some(uid), Some(ns)) =
            (s(&md["name"]), s(&md["uid"]), s(&md["namespace"]))
        else {
            continue;
        };
        let node = s(&pod["spec"]["nodeName"]);
        let qos = s(&pod["status"]["qosClass"]).map(|q| q.to_ascii_lowercase());
        let pod_labels: Vec<(String, String)> = labels
            .iter()
            .filter_map(|k| Some((k.clone(), s(&md["labels"][k.as_str()])?)))
            .collect();
        for key in [
            "containerStatuses",
            "initContainerStatuses",
            "ephemeralContainerStatuses",
        ] {
            let Some(statuses) = pod["status"][key].as_array() else {
                continue;
            };
            for st in statuses {
                let (Some(cname), Some(cid)) = (s(&st["name"]), s(&st["containerID"])) else {
                    continue;
                };
                out.insert(
                    bare_id(&cid).to_owned(),
                    Arc::new(ContainerMeta {
                        pod_name: name.clone(),
                        pod_uid: uid.clone(),
                        namespace: ns.clone(),
                        container_name: cname,
                        node_name: node.clone(),
                        qos: qos.clone(),
                        labels: pod_labels.clone(),
                    }),
                );
            }
        }
    }
    Ok(out)
}

/// A running kubelet poller; stops when dropped.
pub struct Kubelet {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn http_client(c: &KubeletConfig) -> anyhow::Result<reqwest::Client> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut b = reqwest::Client::builder()
        .timeout(c.timeout)
        .danger_accept_invalid_certs(c.insecure_skip_verify);
    let ca = c
        .ca_file
        .clone()
        .or_else(|| Path::new(SA_CA).exists().then(|| SA_CA.into()));
    if let Some(ca) = ca.filter(|_| !c.insecure_skip_verify) {
        b = b.add_root_certificate(
            reqwest::Certificate::from_pem(&read(&ca)?).context("parsing kubelet CA")?,
        );
    }
    if let (Some(cert), Some(key)) = (&c.cert_file, &c.key_file) {
        let mut pem = read(cert)?;
        pem.extend_from_slice(&read(key)?);
        b = b.identity(reqwest::Identity::from_pem(&pem).context("parsing client cert/key")?);
    }
    Ok(b.build()?)
}

impl Kubelet {
    /// Start polling into `cache`. Errors only on a bad config (unreadable
    /// certificate); an unreachable kubelet is retried, never an error.
    pub fn start(config: KubeletConfig, cache: Arc<PodCache>) -> anyhow::Result<Self> {
        let client = http_client(&config)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("kotel-kubelet".into())
            .spawn(move || rt.block_on(poll(config, client, cache, flag)))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

async fn fetch(c: &KubeletConfig, client: &reqwest::Client) -> anyhow::Result<Vec<u8>> {
    let url = format!("{}/pods", c.endpoint.trim_end_matches('/'));
    let mut req = client.get(&url);
    if let Some(token) = c
        .token_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
    {
        req = req.bearer_auth(token.trim());
    }
    let resp = req.send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        anyhow::bail!("GET {url}: HTTP {status}");
    }
    Ok(resp.bytes().await?.to_vec())
}

async fn poll(
    c: KubeletConfig,
    client: reqwest::Client,
    cache: Arc<PodCache>,
    stop: Arc<AtomicBool>,
) {
    const TICK: Duration = Duration::from_millis(100);
    const EARLY: Duration = Duration::from_secs(2);
    let mut backoff = Duration::ZERO;
    let mut failing = false;
    let mut last: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let due = match last {
            None => true,
            Some(t) if !backoff.is_zero() => t.elapsed() >= backoff,
            Some(t) => {
                t.elapsed() >= c.refresh
                    || (cache.want_refresh.load(Ordering::Relaxed) && t.elapsed() >= EARLY)
            }
        };
        if !due {
            tokio::time::sleep(TICK).await;
            continue;
        }
        cache.want_refresh.store(false, Ordering::Relaxed);
        last = Some(Instant::now());
        let result = async { parse_pods(&fetch(&c, &client).await?, &c.labels) }.await;
        match result {
            Ok(pods) => {
                cache.fetches.fetch_add(1, Ordering::Relaxed);
                if failing {
                    tracing::info!(containers = pods.len(), "kubelet reachable again");
                }
                cache.replace(pods);
                failing = false;
                backoff = Duration::ZERO;
            }
            Err(e) => {
                cache.failures.fetch_add(1, Ordering::Relaxed);
                backoff = if backoff.is_zero() {
                    Duration::from_millis(500)
                } else {
                    (backoff * 2).min(c.max_backoff)
                };
                if !failing {
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "kubelet: cannot list pods; keeping the last pod list and retrying");
                } else {
                    tracing::debug!(error = %format!("{e:#}"), retry_in = ?backoff, "kubelet still unreachable");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_recorded_pod_list() {
        let body = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroups/kubelet-pods.json"),
        )
        .unwrap();
        let pods = parse_pods(&body, &["app".into()]).unwrap();
        let m = pods
            .get("8d3b0e6a4f2c1d9e7b5a3c1e0f9d8c7b6a5e4d3c2b1a0f9e8d7c6b5a4e3d2c1b")
            .unwrap();
        assert_eq!(m.pod_name, "web-7c9d8b6f5-x2k4p");
        assert_eq!(m.namespace, "shop");
        assert_eq!(m.container_name, "nginx");
        assert_eq!(m.qos.as_deref(), Some("burstable"));
        assert_eq!(m.node_name.as_deref(), Some("node-1"));
        assert_eq!(m.labels, vec![("app".to_string(), "web".to_string())]);
        // Init containers and a pod without container ids yet.
        assert!(pods.values().any(|m| m.container_name == "init-db"));
        assert!(pods.values().all(|m| m.pod_name != "pending-0"));
        let cache = PodCache::default();
        cache.replace(pods);
        let mut out = Vec::new();
        cache.annotate(
            Some("8d3b0e6a4f2c1d9e7b5a3c1e0f9d8c7b6a5e4d3c2b1a0f9e8d7c6b5a4e3d2c1b"),
            None,
            &mut out,
        );
        let get = |k: &str| {
            kotel_pipelines::attr(&out, k)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        assert_eq!(get("k8s.pod.name").as_deref(), Some("web-7c9d8b6f5-x2k4p"));
        assert_eq!(get("k8s.container.name").as_deref(), Some("nginx"));
        assert_eq!(get("k8s.pod.label.app").as_deref(), Some("web"));
        assert!(parse_pods(b"{}", &[]).is_err());
        assert!(parse_pods(b"not json", &[]).is_err());
    }

    #[test]
    fn config_defaults() {
        let c: KubeletConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, KubeletConfig::default());
        let c: KubeletConfig =
            serde_json::from_str(r#"{"enabled": false, "endpoint": "http://127.0.0.1:10255"}"#)
                .unwrap();
        assert!(!c.active());
        assert!(serde_json::from_str::<KubeletConfig>(r#"{"url": "x"}"#).is_err());
    }
}
