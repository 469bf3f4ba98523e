//! `hungtask`: tasks blocked in D state too long (`tp_btf/sched_process_hang`,
//! fired by khungtaskd after `kernel.hung_task_timeout_secs`).
//!
//! Event `linux.hung_task` per report: the hung task and its kernel stack,
//! plus every task in D state at that moment (BPF task iterator with
//! `bpf_get_task_stack`), grouped by identical stack. Counter
//! `linux.hung_task.reports`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kotel_ebpf::event::{Record, c_str};
use kotel_ebpf::{EventHeader, Hook, LoadOptions, objects, read_record};
use kotel_pipelines::{EventEmitter, EventRecord, KeyValue, Severity, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::bpf::{self, Shared};
use crate::framework::{
    Availability, CollectorSpec, EventCollector, HostContext, Instance, Mode, spec::default_true,
};

pub struct Hungtask;

const NAME: &str = "hungtask";
const SCOPE: &str = "kotel/hungtask";
const MAX_FRAMES: usize = 48;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Attach the stacks of every D-state task, grouped by stack.
    pub dstate_stacks: bool,
    /// At most this many stack groups per record (largest first).
    pub max_stack_groups: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            dstate_stacks: true,
            max_stack_groups: 32,
        }
    }
}

crate::common_settings!(Config);

fn hooks() -> [Hook; 2] {
    [
        Hook::BtfTracePoint {
            program: "kotel_process_hang",
            name: "sched_process_hang",
        },
        Hook::Iter {
            program: "kotel_dstate",
            target: "task",
        },
    ]
}

impl CollectorSpec for Hungtask {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Events;
    const ABOUT: &'static str = "hung tasks (sched:sched_process_hang) with the stacks of all D-state tasks (BPF task iterator)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        bpf::probe_hooks(&hooks())
    }

    fn build(
        config: &Config,
        _host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let mut loaded =
            kotel_ebpf::loader::load(NAME, objects::HUNGTASK, &LoadOptions::new(), &hooks())?;
        loaded.require_all()?;
        let ring = bpf::take_ring(&mut loaded, "events")?;
        let shared: Shared = Arc::new(Mutex::new(loaded));
        Ok(Instance::Events {
            collector: Box::new(Events {
                shared: shared.clone(),
                ring: Some(ring),
                config: config.clone(),
            }),
            metrics: Some((
                config.interval.unwrap_or(default_interval),
                Box::new(bpf::SingleCounter {
                    shared,
                    collector: NAME,
                    map: "hangs",
                    name: "linux.hung_task.reports",
                    description: "Hung-task reports by khungtaskd since kotel loaded its probe",
                    unit: "{report}",
                }),
            )),
        })
    }
}

/// Mirror of `struct hang_event` in hungtask.bpf.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct HangEvent {
    hdr: EventHeader,
    pid: u32,
    tgid: u32,
    state: u32,
    stack_bytes: i32,
    comm: [u8; 16],
    frames: [u64; MAX_FRAMES],
}

/// Mirror of `struct dstate_task` in hungtask.bpf.c.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DstateTask {
    pub pid: u32,
    pub tgid: u32,
    pub state: u32,
    pub stack_bytes: i32,
    pub comm: [u8; 16],
    pub frames: [u64; MAX_FRAMES],
}

// SAFETY: plain integers and byte arrays.
unsafe impl Record for HangEvent {}
unsafe impl Record for DstateTask {}

fn symbolize(frames: &[u64], bytes: i32) -> Vec<String> {
    let n = (bytes.max(0) as usize / 8).min(frames.len());
    let ks = kotel_ebpf::ksyms::get();
    frames[..n].iter().map(|&a| ks.format(a)).collect()
}

/// Every task in D state now (BPF task iterator).
pub fn scan_dstate(loaded: &mut kotel_ebpf::Loaded) -> anyhow::Result<Vec<DstateTask>> {
    let bytes = kotel_ebpf::loader::run_iter(&mut loaded.bpf, "kotel_dstate")?;
    Ok(bytes
        .chunks_exact(std::mem::size_of::<DstateTask>())
        .filter_map(read_record::<DstateTask>)
        .collect())
}

/// D-state tasks grouped by identical symbolised stack, largest group first.
/// The kernel's own report of the hung task (`INFO: task <comm>:<pid>
/// blocked for more than N seconds.` and the lines after it) from the kernel
/// log, if it is there yet: khungtaskd prints it right after the tracepoint.
fn kernel_log_report(comm: &str, pid: u32) -> Option<Vec<Value>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    const MAX_LINES: usize = 40;
    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()?;
    let needle = format!("task {comm}:{pid} blocked for more than");
    let mut report: Vec<Value> = Vec::new();
    // False once the next report (another task's) starts after ours.
    let mut collecting = false;
    let mut buf = vec![0u8; 8192];
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let Some(line) = super::softlockup::parse_kmsg(&String::from_utf8_lossy(&buf[..n]))
                else {
                    continue;
                };
                if line.text.contains(&needle) {
                    report.clear();
                    report.push(line.text.into());
                    collecting = true;
                } else if line.text.starts_with("INFO: task ") {
                    collecting = false;
                } else if collecting && report.len() < MAX_LINES {
                    report.push(line.text.into());
                }
            }
            // Overwritten records: keep reading from the oldest still there.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    (!report.is_empty()).then_some(report)
}

pub fn group_by_stack(tasks: &[DstateTask], max_groups: usize) -> Vec<Value> {
    let mut groups: BTreeMap<Vec<String>, Vec<&DstateTask>> = BTreeMap::new();
    for t in tasks {
        groups
            .entry(symbolize(&t.frames, t.stack_bytes))
            .or_default()
            .push(t);
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.1.len()));
    groups
        .into_iter()
        .take(max_groups)
        .map(|(stack, ts)| {
            let mut comms: Vec<String> = ts.iter().map(|t| c_str(&t.comm)).collect();
            comms.sort();
            comms.dedup();
            Value::Map(vec![
                KeyValue::new("count", ts.len() as i64),
                KeyValue::new(
                    "pids",
                    Value::Array(ts.iter().take(64).map(|t| Value::from(t.pid)).collect()),
                ),
                KeyValue::new(
                    "comms",
                    Value::Array(comms.into_iter().map(Value::from).collect()),
                ),
                KeyValue::new(
                    "linux.kernel.stack",
                    Value::Array(stack.into_iter().map(Value::from).collect()),
                ),
            ])
        })
        .collect()
}

struct Events {
    shared: Shared,
    ring: Option<kotel_ebpf::aya::maps::Map>,
    config: Config,
}

impl EventCollector for Events {
    fn run(
        mut self: Box<Self>,
        emitter: EventEmitter,
        shutdown: watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>> {
        let ring = self.ring.take();
        let shared = self.shared.clone();
        let config = self.config.clone();
        Box::pin(async move {
            let ring = ring.context("hungtask ring buffer already consumed")?;
            // khungtaskd reports many tasks in one pass: scan once per pass.
            let mut last_scan: Option<(Instant, Vec<Value>, usize)> = None;
            bpf::run_ring(ring, shutdown, |bytes| {
                let Some(e) = read_record::<HangEvent>(bytes) else {
                    return;
                };
                let mut r =
                    EventRecord::new(SCOPE, "linux.hung_task", Severity::Error, e.hdr.unix_ns())
                        .with("process.pid", e.tgid)
                        .with("thread.id", e.pid)
                        .with("process.executable.name", c_str(&e.comm))
                        .with("linux.task.state", bpf::hex(e.state.into()))
                        .with(
                            "linux.kernel.stack",
                            Value::Array(
                                symbolize(&e.frames, e.stack_bytes)
                                    .into_iter()
                                    .map(Value::from)
                                    .collect(),
                            ),
                        );
                match crate::cgroups::resolve_pid(e.tgid) {
                    Some(info) => r.attributes.extend(info.process_attributes()),
                    None => {
                        if let Some(p) = super::cgroup::proc_cgroups(e.tgid)
                            .and_then(|l| l.into_iter().find(|l| l.starts_with("0::")))
                        {
                            r = r.with("process.linux.cgroup", p);
                        }
                    }
                }
                if let Some(lines) = kernel_log_report(&c_str(&e.comm), e.pid) {
                    r = r.with("linux.kernel.log", Value::Array(lines));
                }
                if config.dstate_stacks {
                    let fresh = last_scan
                        .as_ref()
                        .is_some_and(|(t, _, _)| t.elapsed() < Duration::from_secs(1));
                    if !fresh {
                        match scan_dstate(&mut bpf::lock(&shared)) {
                            Ok(tasks) => {
                                last_scan = Some((
                                    Instant::now(),
                                    group_by_stack(&tasks, config.max_stack_groups),
                                    tasks.len(),
                                ))
                            }
                            Err(err) => {
                                tracing::warn!(collector = NAME, "D-state scan failed: {err:#}")
                            }
                        }
                    }
                    if let Some((_, groups, n)) = &last_scan {
                        r = r.with("linux.hung_task.dstate_task_count", *n as i64).with(
                            "linux.hung_task.dstate_stacks",
                            Value::Array(groups.clone()),
                        );
                    }
                }
                emitter.emit(r);
            })
            .await
        })
    }
}
