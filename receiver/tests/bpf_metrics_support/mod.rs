//! Helpers shared by the BPF metrics tests (`bpf_metrics_*.rs`): build a
//! collector on the running kernel (root), collect, and pick points.
#![allow(dead_code)]

use std::time::Duration;

use kotel_pipelines::{HistogramPoint, Metric, MetricData, Number, NumberPoint, Value};
use kotel_receiver::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector,
};

pub fn host() -> HostContext {
    HostContext::detect(std::env::temp_dir()).unwrap()
}

/// Build a metrics collector; fails the test when the BPF programs cannot load.
pub fn build<S: CollectorSpec>(config: &S::Config) -> Box<dyn MetricsCollector> {
    assert_eq!(
        S::probe(config),
        Availability::Available,
        "probe of {}",
        S::NAME
    );
    match S::build(config, &host(), Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("building {}: {e:#}", S::NAME))
    {
        Instance::Metrics { collector, .. } => collector,
        _ => panic!("{} is not a metrics collector", S::NAME),
    }
}

pub fn collect(c: &mut Box<dyn MetricsCollector>) -> Vec<Metric> {
    let mut out = Vec::new();
    c.collect(&mut out).unwrap();
    out
}

fn attr<'a>(attrs: &'a [kotel_pipelines::KeyValue], key: &str) -> Option<&'a Value> {
    attrs.iter().find(|kv| kv.key == key).map(|kv| &kv.value)
}

fn matches(attrs: &[kotel_pipelines::KeyValue], want: &[(&str, &str)]) -> bool {
    want.iter()
        .all(|(k, v)| attr(attrs, k).and_then(|x| x.as_str()) == Some(*v))
}

/// Histogram points of `name` whose attributes contain all of `want`.
pub fn hists<'a>(m: &'a [Metric], name: &str, want: &[(&str, &str)]) -> Vec<&'a HistogramPoint> {
    let mut out = Vec::new();
    for metric in m.iter().filter(|x| x.name == name) {
        if let MetricData::Histogram(points) = &metric.data {
            for p in points.iter().filter(|p| matches(&p.attributes, want)) {
                assert_eq!(p.bucket_counts.len(), p.bounds.len() + 1, "{name}");
                assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count, "{name}");
                out.push(p);
            }
        }
    }
    out
}

/// Count of the single histogram point of `name` matching `want` (0 if none).
pub fn hist_count(m: &[Metric], name: &str, want: &[(&str, &str)]) -> u64 {
    hists(m, name, want).iter().map(|p| p.count).sum()
}

fn sums<'a>(m: &'a [Metric], name: &str, want: &[(&str, &str)]) -> Vec<&'a NumberPoint> {
    let mut out = Vec::new();
    for metric in m.iter().filter(|x| x.name == name) {
        if let MetricData::Sum { points, monotonic } = &metric.data {
            assert!(*monotonic, "{name} is a monotonic counter");
            out.extend(points.iter().filter(|p| matches(&p.attributes, want)));
        }
    }
    out
}

/// Sum of the counter points of `name` matching `want`, as f64.
pub fn sum(m: &[Metric], name: &str, want: &[(&str, &str)]) -> f64 {
    sums(m, name, want)
        .iter()
        .map(|p| match p.value {
            Number::Int(v) => v as f64,
            Number::Double(v) => v,
        })
        .sum()
}

/// A v1 or v2 cgroup directory removed on drop (its tasks must be gone).
pub struct TestCgroup(pub std::path::PathBuf);

impl TestCgroup {
    pub fn new(dir: impl Into<std::path::PathBuf>) -> Self {
        let d = dir.into();
        let _ = std::fs::remove_dir(&d);
        std::fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        Self(d)
    }

    pub fn write(&self, file: &str, value: &str) {
        std::fs::write(self.0.join(file), value)
            .unwrap_or_else(|e| panic!("write {file}={value}: {e}"));
    }

    pub fn add(&self, pid: u32) {
        self.write("cgroup.procs", &pid.to_string());
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A child process killed (and reaped) on drop.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CPU burner pinned to `cpu` (a shell busy loop under taskset).
pub fn burner(cpu: u32) -> Child {
    Child(
        std::process::Command::new("taskset")
            .args(["-c", &cpu.to_string(), "sh", "-c", "while :; do :; done"])
            .spawn()
            .expect("spawn taskset"),
    )
}

/// (on-CPU ns, run-queue wait ns) of a task from /proc/<pid>/schedstat.
pub fn schedstat(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    let mut f = s.split_whitespace().map(|x| x.parse::<u64>().unwrap());
    (f.next().unwrap(), f.next().unwrap())
}
