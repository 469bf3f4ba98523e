//! Glue shared by the BPF-based event collectors: the loaded object shared
//! between the event half and the metrics half, the ring-buffer loop,
//! common attributes, stacks and metric builders.

use std::sync::{Arc, Mutex, MutexGuard};

use kotel_ebpf::aya::maps::{Map, StackTraceMap};
use kotel_ebpf::maps::{LOST_REASONS, Log2Hist};
use kotel_ebpf::{EventHeader, Loaded, RingReader};
use kotel_pipelines::{
    EventRecord, HistogramPoint, KeyValue, Metric, MetricData, Number, NumberPoint, Value,
};
use tokio::sync::watch;

use crate::framework::Availability;

/// The loaded object, shared by a collector's event and metrics halves.
pub type Shared = Arc<Mutex<Loaded>>;

pub fn lock(s: &Shared) -> MutexGuard<'_, Loaded> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Probe result from the eBPF preflight.
pub fn probe(req: &kotel_ebpf::preflight::Requirements) -> Availability {
    match kotel_ebpf::preflight::check(req) {
        Ok(()) => Availability::Available,
        Err(why) => Availability::Unavailable(why),
    }
}

/// Probe from the hooks a collector attaches.
pub fn probe_hooks(hooks: &[kotel_ebpf::Hook]) -> Availability {
    probe(&kotel_ebpf::preflight::Requirements::for_hooks(hooks))
}

/// The metrics half of a collector whose only kernel counter is element 0 of
/// a per-CPU array (`kills`, `hangs`), plus its lost-event counter.
pub struct SingleCounter {
    pub shared: Shared,
    pub collector: &'static str,
    pub map: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub unit: &'static str,
}

impl crate::framework::MetricsCollector for SingleCounter {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let loaded = lock(&self.shared);
        let n = kotel_ebpf::maps::percpu_array_sums(&loaded.bpf, self.map)?;
        let point = NumberPoint::new(Vec::new(), loaded.loaded_at, n[0]);
        out.push(counter(self.name, self.description, self.unit, vec![point]));
        out.push(lost_metric(self.collector, &loaded)?);
        Ok(())
    }
}

/// Take the ring buffer map `name` out of the object (before sharing it).
pub fn take_ring(loaded: &mut Loaded, name: &str) -> anyhow::Result<Map> {
    loaded
        .bpf
        .take_map(name)
        .ok_or_else(|| anyhow::anyhow!("ring buffer map {name} missing from the object"))
}

/// Read the ring buffer until `shutdown` fires, handing each record to `f`.
pub async fn run_ring(
    ring: Map,
    mut shutdown: watch::Receiver<bool>,
    mut f: impl FnMut(&[u8]) + Send,
) -> anyhow::Result<()> {
    let mut reader = RingReader::new(ring)?;
    loop {
        if *shutdown.borrow() {
            reader.drain(&mut f);
            return Ok(());
        }
        tokio::select! {
            r = reader.read(&mut f) => { r?; }
            _ = shutdown.changed() => {
                reader.drain(&mut f);
                return Ok(());
            }
        }
    }
}

/// Attributes every event record carries, from the common BPF header.
pub fn with_task(mut rec: EventRecord, h: &EventHeader) -> EventRecord {
    rec.attributes.push(KeyValue::new("process.pid", h.pid));
    rec.attributes.push(KeyValue::new("thread.id", h.tid));
    rec.attributes
        .push(KeyValue::new("process.executable.name", h.comm()));
    rec.attributes
        .push(KeyValue::new("cpu.logical_number", h.cpu));
    with_cgroup(rec, h.cgroup_id)
}

/// `linux.cgroup.id` and, when the cgroup model resolves it, the container
/// (`container.id`, `k8s.*`), `systemd.unit`, `linux.cgroup.path` and
/// `process.linux.cgroup`.
pub fn with_cgroup(mut rec: EventRecord, cgroup_id: u64) -> EventRecord {
    if cgroup_id != 0 {
        rec.attributes
            .push(KeyValue::new("linux.cgroup.id", cgroup_id));
        // The cgroup model walks the hierarchy itself on a miss.
        if let Some(info) = crate::cgroups::resolve_cgroup_id(cgroup_id) {
            rec.attributes.extend(info.process_attributes());
        }
    }
    rec
}

/// Hex string for a kernel address (OTLP ints are signed 64-bit).
pub fn hex(addr: u64) -> String {
    format!("{addr:#x}")
}

/// The symbolised kernel stack `id` of map `map` (`func+0xoff` strings).
pub fn kernel_stack(loaded: &Loaded, map: &str, id: i32) -> Option<Value> {
    if id < 0 {
        return None;
    }
    let m = loaded.bpf.map(map)?;
    let st = StackTraceMap::try_from(m).ok()?;
    let trace = st.get(&(id as u32), 0).ok()?;
    let ks = kotel_ebpf::ksyms::get();
    let frames: Vec<Value> = trace
        .frames()
        .iter()
        .map(|f| Value::from(ks.format(f.ip)))
        .collect();
    Some(Value::Array(frames))
}

/// `kotel.ebpf.events.lost` for one collector.
pub fn lost_metric(collector: &'static str, loaded: &Loaded) -> anyhow::Result<Metric> {
    let counts = kotel_ebpf::maps::lost_counts(&loaded.bpf)?;
    let points = LOST_REASONS
        .iter()
        .zip(counts)
        .map(|(reason, v)| NumberPoint {
            attributes: vec![
                KeyValue::new("collector", collector),
                KeyValue::new("reason", *reason),
            ],
            start_time: loaded.loaded_at,
            value: Number::Int(v as i64),
        })
        .collect();
    Ok(Metric {
        name: "kotel.ebpf.events.lost".into(),
        description:
            "Kernel events a BPF collector could not deliver (ring buffer full or rate limited)"
                .into(),
        unit: "{event}".into(),
        data: MetricData::Sum {
            monotonic: true,
            points,
        },
    })
}

/// Histogram point from a kernel log2 histogram of nanoseconds.
pub fn hist_point(
    h: &Log2Hist,
    min_slot: usize,
    bounds: &Arc<[f64]>,
    attributes: Vec<KeyValue>,
    start_time: u64,
) -> HistogramPoint {
    HistogramPoint {
        attributes,
        start_time,
        count: h.count(),
        sum: h.sum_seconds(),
        bounds: bounds.clone(),
        bucket_counts: h.bucket_counts(min_slot),
    }
}

pub fn counter(
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    points: Vec<NumberPoint>,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: MetricData::Sum {
            monotonic: true,
            points,
        },
    }
}

pub fn histogram(
    name: &'static str,
    description: &'static str,
    points: Vec<HistogramPoint>,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: "s".into(),
        data: MetricData::Histogram(points),
    }
}
