//! `oom`: OOM kills (`tp_btf/mark_victim`).
//!
//! Event `linux.oom_kill` per kill: the victim (process attributes), the
//! trigger task (current when the OOM killer ran) and its kernel stack, the
//! victim's memory cgroup (path, limit and usage at kill time from the
//! kernel, then `memory.*` files read right after), the victim's RSS, and a
//! host `/proc/meminfo` snapshot. Counter `linux.oom.kills`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use kotel_ebpf::event::{Record, c_str};
use kotel_ebpf::{EventHeader, Hook, LoadOptions, objects, read_record};
use kotel_pipelines::{EventEmitter, EventRecord, KeyValue, Severity, Value};
use tokio::sync::watch;

use super::bpf::{self, Shared};
use super::cgroup;
use crate::framework::{Availability, CollectorSpec, EventCollector, HostContext, Instance, Mode};

pub struct Oom;

const NAME: &str = "oom";
const SCOPE: &str = "kotel/oom";

/// No settings beyond `enabled` and `interval`.
pub type Config = crate::framework::spec::BasicConfig;

fn hooks() -> [Hook; 1] {
    [Hook::BtfTracePoint {
        program: "kotel_mark_victim",
        name: "mark_victim",
    }]
}

impl CollectorSpec for Oom {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Events;
    const ABOUT: &'static str =
        "OOM kills with victim, trigger, memory cgroup state and meminfo (oom:mark_victim)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        bpf::probe_hooks(&hooks())
    }

    fn build(
        config: &Config,
        host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let mut loaded =
            kotel_ebpf::loader::load(NAME, objects::OOM, &LoadOptions::new(), &hooks())?;
        loaded.require_all()?;
        let ring = bpf::take_ring(&mut loaded, "events")?;
        let shared: Shared = Arc::new(Mutex::new(loaded));
        Ok(Instance::Events {
            collector: Box::new(Events {
                shared: shared.clone(),
                ring: Some(ring),
                page_size: host.page_size,
            }),
            metrics: Some((
                config.interval.unwrap_or(default_interval),
                Box::new(bpf::SingleCounter {
                    shared,
                    collector: NAME,
                    map: "kills",
                    name: "linux.oom.kills",
                    description: "OOM kills seen since kotel loaded its probe",
                    unit: "{kill}",
                }),
            )),
        })
    }
}

/// Mirror of `struct oom_event` in oom.bpf.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct OomEvent {
    hdr: EventHeader,
    victim_memcg_id: u64,
    trigger_memcg_id: u64,
    memcg_limit_pages: u64,
    memcg_usage_pages: u64,
    total_vm_pages: u64,
    anon_rss_pages: i64,
    file_rss_pages: i64,
    shmem_rss_pages: i64,
    victim_pid: u32,
    victim_tgid: u32,
    uid: u32,
    oom_score_adj: i32,
    stack_id: i32,
    _pad: u32,
    victim_comm: [u8; 16],
}

// SAFETY: plain integers and byte arrays.
unsafe impl Record for OomEvent {}

const MEMINFO_KEYS: [&str; 17] = [
    "MemTotal",
    "MemFree",
    "MemAvailable",
    "Buffers",
    "Cached",
    "SwapCached",
    "Active(anon)",
    "Inactive(anon)",
    "Active(file)",
    "Inactive(file)",
    "Unevictable",
    "Slab",
    "SReclaimable",
    "SUnreclaim",
    "SwapTotal",
    "SwapFree",
    "Committed_AS",
];

/// Selected `/proc/meminfo` fields in bytes.
pub fn meminfo_snapshot() -> Vec<KeyValue> {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, rest) = l.split_once(':')?;
            if !MEMINFO_KEYS.contains(&k) {
                return None;
            }
            let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(KeyValue::new(k.to_string(), kb * 1024))
        })
        .collect()
}

fn pages(n: i64, page: u64) -> i64 {
    n.max(0).saturating_mul(page as i64)
}

fn to_record(e: &OomEvent, page: u64, stack: Option<Value>) -> EventRecord {
    let mut r = EventRecord::new(SCOPE, "linux.oom_kill", Severity::Error, e.hdr.unix_ns())
        .with("process.pid", e.victim_tgid)
        .with("thread.id", e.victim_pid)
        .with("process.executable.name", c_str(&e.victim_comm))
        .with("user.id", e.uid)
        .with("cpu.logical_number", e.hdr.cpu)
        .with("linux.oom.victim.oom_score_adj", e.oom_score_adj)
        .with(
            "linux.oom.victim.total_vm_bytes",
            pages(e.total_vm_pages as i64, page),
        )
        .with(
            "linux.oom.victim.anon_rss_bytes",
            pages(e.anon_rss_pages, page),
        )
        .with(
            "linux.oom.victim.file_rss_bytes",
            pages(e.file_rss_pages, page),
        )
        .with(
            "linux.oom.victim.shmem_rss_bytes",
            pages(e.shmem_rss_pages, page),
        )
        .with("linux.oom.trigger.pid", e.hdr.pid)
        .with("linux.oom.trigger.thread_id", e.hdr.tid)
        .with("linux.oom.trigger.executable_name", e.hdr.comm());
    let victim_path = cgroup::memcg_path_of_id(e.victim_memcg_id)
        .or_else(|| cgroup::memory_cgroup_of(e.victim_tgid));
    if let Some(p) = &victim_path {
        r = r.with("linux.oom.memcg.path", p.clone());
    }
    // The victim's container (the memory cgroup is the one that ran out).
    if let Some(info) = crate::cgroups::resolve_memcg_id(e.victim_memcg_id)
        .or_else(|| crate::cgroups::resolve_pid(e.victim_tgid))
    {
        r.attributes.extend(info.process_attributes());
    }
    if let Some(p) = cgroup::memcg_path_of_id(e.trigger_memcg_id) {
        r = r.with("linux.oom.trigger.memcg_path", p);
    }
    // At kill time, from the kernel. The root memcg has no limit (PAGE_COUNTER_MAX).
    if e.memcg_limit_pages < (1u64 << 50) {
        r = r.with(
            "linux.oom.memcg.limit_bytes",
            pages(e.memcg_limit_pages as i64, page),
        );
    }
    r = r.with(
        "linux.oom.memcg.usage_bytes",
        pages(e.memcg_usage_pages as i64, page),
    );
    // Right after the kill, from cgroupfs.
    if let Some(f) = victim_path.as_deref().and_then(cgroup::memcg_files) {
        if let Some(v) = f.max_usage_bytes {
            r = r.with("linux.oom.memcg.max_usage_bytes", v);
        }
        if let Some(v) = f.failcnt {
            r = r.with("linux.oom.memcg.failcnt", v);
        }
        if !f.events.is_empty() {
            let m: Vec<KeyValue> = f
                .events
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v))
                .collect();
            r = r.with("linux.oom.memcg.events", m);
        }
    }
    r = r.with("linux.meminfo", meminfo_snapshot());
    if let Some(s) = stack {
        r = r.with("linux.kernel.stack", s);
    }
    r
}

struct Events {
    shared: Shared,
    ring: Option<kotel_ebpf::aya::maps::Map>,
    page_size: u64,
}

impl EventCollector for Events {
    fn run(
        mut self: Box<Self>,
        emitter: EventEmitter,
        shutdown: watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>> {
        let ring = self.ring.take();
        let shared = self.shared.clone();
        let page = self.page_size;
        Box::pin(async move {
            let ring = ring.context("oom ring buffer already consumed")?;
            bpf::run_ring(ring, shutdown, |bytes| {
                let Some(e) = read_record::<OomEvent>(bytes) else {
                    return;
                };
                let stack = bpf::kernel_stack(&bpf::lock(&shared), "stacks", e.stack_id);
                emitter.emit(to_record(&e, page, stack));
            })
            .await
        })
    }
}
