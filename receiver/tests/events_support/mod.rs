//! Shared helpers for the event-collector tests: a real `Router` whose sink
//! keeps records in memory (the capture point, not a kernel mock), and a
//! driver that builds and runs a collector through its `CollectorSpec`.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kotel_pipelines::{EventRecord, EventSink, Metric, Router, Value, attr};
use kotel_receiver::framework::{CollectorSpec, HostContext, Instance, MetricsCollector};
use tokio::sync::watch;

#[derive(Default)]
pub struct Capture {
    pub records: Mutex<Vec<Arc<EventRecord>>>,
}

impl EventSink for Capture {
    fn name(&self) -> &str {
        "test-capture"
    }
    fn publish(&self, record: Arc<EventRecord>) {
        self.records.lock().unwrap().push(record);
    }
}

impl Capture {
    pub fn matching(&self, f: impl Fn(&EventRecord) -> bool) -> Vec<Arc<EventRecord>> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| f(r))
            .cloned()
            .collect()
    }

    /// Wait until `f` holds for `n` records or `timeout` passes.
    pub async fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
        f: impl Fn(&EventRecord) -> bool,
    ) -> Vec<Arc<EventRecord>> {
        let start = Instant::now();
        loop {
            let got = self.matching(&f);
            if got.len() >= n || start.elapsed() > timeout {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub struct Running {
    pub capture: Arc<Capture>,
    pub metrics: Option<Box<dyn MetricsCollector>>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn host() -> HostContext {
    HostContext::detect(std::env::temp_dir()).unwrap()
}

/// Build a collector; the BPF programs are loaded and attached (the test
/// fails here if they cannot load).
pub fn build<S: CollectorSpec>(
    config: &S::Config,
) -> (
    Box<dyn kotel_receiver::framework::EventCollector>,
    Option<Box<dyn MetricsCollector>>,
) {
    let avail = S::probe(config);
    assert_eq!(
        avail,
        kotel_receiver::framework::Availability::Available,
        "probe of {}",
        S::NAME
    );
    match S::build(config, &host(), Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("building {}: {e:#}", S::NAME))
    {
        Instance::Events { collector, metrics } => (collector, metrics.map(|m| m.1)),
        _ => panic!("{} is not an event collector", S::NAME),
    }
}

/// Start an already-built collector with a capturing router.
pub fn start(
    collector: Box<dyn kotel_receiver::framework::EventCollector>,
    metrics: Option<Box<dyn MetricsCollector>>,
) -> Running {
    let capture = Arc::new(Capture::default());
    let router = Router::new();
    router.set(Vec::new(), vec![capture.clone() as Arc<dyn EventSink>]);
    let (shutdown, rx) = watch::channel(false);
    let task = tokio::spawn(collector.run(router.emitter(), rx));
    Running {
        capture,
        metrics,
        shutdown,
        task,
    }
}

pub fn run<S: CollectorSpec>(config: &S::Config) -> Running {
    let (c, m) = build::<S>(config);
    start(c, m)
}

impl Running {
    pub fn collect(&mut self) -> Vec<Metric> {
        let mut out = Vec::new();
        self.metrics
            .as_mut()
            .expect("collector has metrics")
            .collect(&mut out)
            .unwrap();
        out
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("collector stops")
            .unwrap()
            .unwrap();
    }
}

pub fn int(r: &EventRecord, key: &str) -> Option<i64> {
    match attr(&r.attributes, key)? {
        Value::Int(v) => Some(*v),
        _ => None,
    }
}

pub fn str_attr<'a>(r: &'a EventRecord, key: &str) -> Option<&'a str> {
    attr(&r.attributes, key)?.as_str()
}

/// Sum of the points of metric `name` whose attributes contain all `want`.
pub fn sum_value(metrics: &[Metric], name: &str, want: &[(&str, &str)]) -> i64 {
    let mut total = 0;
    for m in metrics.iter().filter(|m| m.name == name) {
        if let kotel_pipelines::MetricData::Sum { points, .. } = &m.data {
            for p in points {
                if want
                    .iter()
                    .all(|(k, v)| attr(&p.attributes, k).and_then(|x| x.as_str()) == Some(*v))
                    && let kotel_pipelines::Number::Int(v) = p.value
                {
                    total += v;
                }
            }
        }
    }
    total
}

/// (count, bucket-count sum) of every histogram point of metric `name`.
pub fn hist_counts(metrics: &[Metric], name: &str) -> (u64, u64) {
    let mut c = (0, 0);
    for m in metrics.iter().filter(|m| m.name == name) {
        if let kotel_pipelines::MetricData::Histogram(points) = &m.data {
            for p in points {
                assert_eq!(p.bucket_counts.len(), p.bounds.len() + 1);
                c.0 += p.count;
                c.1 += p.bucket_counts.iter().sum::<u64>();
            }
        }
    }
    c
}

/// A cgroup directory removed (best effort) when dropped, also on panic.
pub struct CgroupDir(pub std::path::PathBuf);

impl CgroupDir {
    pub fn create(path: std::path::PathBuf) -> Self {
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        CgroupDir(path)
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        // The member processes have exited; give the kernel a moment to let go.
        for _ in 0..20 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
