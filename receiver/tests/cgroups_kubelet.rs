//! Kubernetes metadata: a recorded kubelet `/pods` response served on
//! loopback by the test (no kubelet runs here), a real v2 cgroup with the
//! kubelet's systemd-driver name for one of its containers, and the
//! kubelet going away and coming back.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kotel_pipelines::{KeyValue, MetricData, attr};
use kotel_receiver::cgroups;
use kotel_receiver::framework::{CollectorSpec, HostContext, Instance};
use kotel_receiver::kube::{self, KubeletConfig};
use kotel_receiver::metrics::container::{Config, Containers};

const NGINX: &str = "8d3b0e6a4f2c1d9e7b5a3c1e0f9d8c7b6a5e4d3c2b1a0f9e8d7c6b5a4e3d2c1b";
const POD_SLICE: &str = "kubepods-burstable-pod0e9d5b1a_7c2f_4f3e_9a1b_2c3d4e5f6a7b.slice";

/// A one-route HTTP/1.1 server answering every request with `body`.
struct FakeKubelet {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    auth: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeKubelet {
    fn start(listener: TcpListener, body: Vec<u8>) -> Self {
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let auth = Arc::new(Mutex::new(None));
        let (s, r, a) = (stop.clone(), requests.clone(), auth.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).to_string();
                if !text.starts_with("GET /pods ") {
                    let _ = conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                }
                r.fetch_add(1, Ordering::Relaxed);
                *a.lock().unwrap() = text
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: ").map(str::to_owned));
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
            }
        });
        Self {
            stop,
            requests,
            auth,
            thread: Some(thread),
        }
    }

    fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn s<'a>(attrs: &'a [KeyValue], k: &str) -> Option<&'a str> {
    attr(attrs, k).and_then(|v| v.as_str())
}

#[test]
fn pod_metadata_from_kubelet_survives_restart() {
    let body = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroups/kubelet-pods.json"),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = FakeKubelet::start(listener, body.clone());
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "kotel-test-token\n").unwrap();
    let config = KubeletConfig {
        enabled: Some(true),
        endpoint: format!("http://{addr}"),
        token_file: Some(token.path().to_path_buf()),
        refresh: Duration::from_millis(300),
        max_backoff: Duration::from_millis(400),
        labels: vec!["app".into()],
        ..Default::default()
    };
    kube::start_global(&config).unwrap();
    let cache = kube::global_cache();
    assert!(
        wait_until(Duration::from_secs(5), || cache.container(NGINX).is_some()),
        "pods listed"
    );
    assert_eq!(
        server.auth.lock().unwrap().as_deref(),
        Some("Bearer kotel-test-token")
    );

    // A real cgroup with the kubelet's name for the nginx container (v2).
    let live = unsafe { libc::geteuid() } == 0
        && Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists();
    let parent =
        Path::new("/sys/fs/cgroup/unified").join(format!("kotel-test-{}-k8s", std::process::id()));
    let pod_dir = parent.join(POD_SLICE);
    let leaf = pod_dir.join(format!("cri-containerd-{NGINX}.scope"));
    let _cleanup = RemoveOnDrop(vec![leaf.clone(), pod_dir.clone(), parent.clone()]);
    if live {
        std::fs::create_dir_all(&leaf).unwrap();
        let path = format!(
            "/kotel-test-{}-k8s/{POD_SLICE}/cri-containerd-{NGINX}.scope",
            std::process::id()
        );
        let reg = cgroups::global();
        let h = reg
            .mounts()
            .hierarchies
            .iter()
            .position(|h| h.is_v2())
            .unwrap();
        assert!(wait_until(Duration::from_secs(1), || reg
            .get_path(h, &path)
            .is_some()));
        let attrs = reg.get_path(h, &path).unwrap().attributes();
        assert_eq!(s(&attrs, "container.id"), Some(NGINX));
        assert_eq!(s(&attrs, "container.runtime.name"), Some("containerd"));
        assert_eq!(s(&attrs, "k8s.pod.name"), Some("web-7c9d8b6f5-x2k4p"));
        assert_eq!(
            s(&attrs, "k8s.pod.uid"),
            Some("0e9d5b1a-7c2f-4f3e-9a1b-2c3d4e5f6a7b")
        );
        assert_eq!(s(&attrs, "k8s.namespace.name"), Some("shop"));
        assert_eq!(s(&attrs, "k8s.container.name"), Some("nginx"));
        assert_eq!(s(&attrs, "k8s.node.name"), Some("node-1"));
        assert_eq!(s(&attrs, "k8s.pod.qos_class"), Some("burstable"));
        assert_eq!(s(&attrs, "k8s.pod.label.app"), Some("web"));
        assert_eq!(
            attrs.iter().filter(|kv| kv.key == "k8s.pod.uid").count(),
            1,
            "uid from the path and the kubelet is not repeated"
        );

        // The per-container metrics carry them.
        let host = HostContext::detect(std::env::temp_dir()).unwrap();
        let Instance::Metrics { mut collector, .. } =
            Containers::build(&Config::default(), &host, Duration::from_secs(15)).unwrap()
        else {
            panic!("not a metrics collector")
        };
        let mut out = Vec::new();
        collector.collect(&mut out).unwrap();
        let cpu = out.iter().find(|m| m.name == "container.cpu.time").unwrap();
        let MetricData::Sum { points, .. } = &cpu.data else {
            panic!("not a sum")
        };
        let p = points
            .iter()
            .find(|p| s(&p.attributes, "container.id") == Some(NGINX))
            .expect("nginx series");
        assert_eq!(
            s(&p.attributes, "k8s.pod.name"),
            Some("web-7c9d8b6f5-x2k4p")
        );
        assert_eq!(s(&p.attributes, "k8s.namespace.name"), Some("shop"));

        let snap = cgroups::snapshot_json();
        let c = snap["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["container.id"] == NGINX)
            .unwrap();
        assert_eq!(c["k8s.pod.name"], "web-7c9d8b6f5-x2k4p");
    } else {
        eprintln!("no root or no v2 mount: cgroup part skipped");
    }

    // The kubelet goes away: failures are counted, the last list is kept.
    let failures = cache.failures.load(Ordering::Relaxed);
    server.shutdown();
    assert!(
        wait_until(Duration::from_secs(5), || cache
            .failures
            .load(Ordering::Relaxed)
            >= failures + 2),
        "retries while the kubelet is down"
    );
    assert!(cache.container(NGINX).is_some(), "last pod list kept");

    // It comes back (same port) with a changed pod list.
    let changed = String::from_utf8(body)
        .unwrap()
        .replace("\"name\":\"nginx\"", "\"name\":\"nginx-v2\"");
    let listener = TcpListener::bind(addr).unwrap();
    let server = FakeKubelet::start(listener, changed.into_bytes());
    assert!(
        wait_until(Duration::from_secs(5), || cache
            .container(NGINX)
            .is_some_and(|m| m.container_name == "nginx-v2")),
        "kubelet picked up again after it came back"
    );
    assert!(server.requests.load(Ordering::Relaxed) >= 1);
    server.shutdown();
}

/// Cgroup directories removed in order when the test ends, even on failure.
struct RemoveOnDrop(Vec<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir(d);
        }
    }
}
