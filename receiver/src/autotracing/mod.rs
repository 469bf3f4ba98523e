//! Autotracing detectors (see docs/autotracing.md): cheap checks every
//! interval, and on an anomaly one heavy capture (CPU flame graph, D-state
//! stacks, memory or IO culprits) emitted as one log record.
//!
//! | detector | watches | capture |
//! |---|---|---|
//! | [`cpusys`] | host system CPU % (`/proc/stat`) | host CPU profile |
//! | [`cpuidle`] | per-container user/sys/total CPU % of capacity | container CPU profile |
//! | [`dload`] | per-cgroup and host D-state task EMA (BPF task iterator) | D-state stacks |
//! | [`memburst`] | host and per-container anonymous memory | top RSS growth |
//! | [`iotracer`] | per-disk util/await/throughput (`/proc/diskstats`) | top IO processes (block tracepoints) |

pub mod artifacts;
pub mod cpuidle;
pub mod cpusys;
pub mod dload;
pub mod dstacks;
pub mod iotracer;
pub mod memburst;
pub mod profile;
pub mod scope;
pub mod waitrate;

use std::path::Path;
use std::time::Duration;

use kotel_pipelines::{EventRecord, KeyValue, Severity, Value};

use crate::framework::{Availability, Trigger};

/// Default cooldown per (detector, scope): HUATUO's `IntervalTracing`.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(1800);

/// Default capture CPU budget: captures are skipped while kotel used more
/// than half a CPU on average over the last minute.
pub const DEFAULT_CPU_BUDGET: f64 = 0.5;

/// The record every capture starts from: `linux.autotrace.<detector>`,
/// WARN, the trigger's attributes.
pub fn base_record(detector: &'static str, trigger: &Trigger) -> EventRecord {
    let mut r = EventRecord::new(
        format!("kotel/{detector}"),
        format!("linux.autotrace.{detector}"),
        Severity::Warn,
        kotel_pipelines::now_nanos(),
    );
    r.attributes.extend(trigger.attributes.iter().cloned());
    r
}

/// `linux.autotrace.artifacts`: the file names of heavy artifacts.
pub fn artifacts_attribute(paths: &[std::path::PathBuf]) -> KeyValue {
    KeyValue::new(
        "linux.autotrace.artifacts",
        Value::Array(
            paths
                .iter()
                .map(|p| Value::from(p.display().to_string()))
                .collect(),
        ),
    )
}

/// Availability of CPU profiling: BTF, BPF capabilities, perf events.
pub fn probe_profiling() -> Availability {
    if !Path::new("/proc/sys/kernel/perf_event_paranoid").exists() {
        return Availability::Unavailable(
            "the kernel has no perf events (CONFIG_PERF_EVENTS)".into(),
        );
    }
    crate::events::bpf::probe(&kotel_ebpf::preflight::Requirements::default())
}

/// Settings of a CPU profile capture, shared by `cpusys` and `cpuidle`.
#[derive(Debug, Clone, Copy)]
pub struct ProfileSettings {
    pub duration: Duration,
    pub frequency: u64,
    pub top: usize,
}

/// Capture a CPU profile of `scope` and turn it into the detector's record:
/// trigger attributes, profile counts, top functions and processes in the
/// body, folded stacks and SVG in the capture folder.
pub fn profile_record(
    detector: &'static str,
    trigger: &Trigger,
    scope: profile::ProfileScope,
    settings: ProfileSettings,
    capture_dir: &Path,
) -> anyhow::Result<EventRecord> {
    let req = profile::ProfileRequest {
        duration: settings.duration,
        frequency: settings.frequency,
        scope,
    };
    let p = profile::capture(&req)?;
    let mut r = base_record(detector, trigger);
    p.attributes(&req, &mut r.attributes);
    let base = artifacts::base_name(r.time, &trigger.scope);
    let title = format!("kotel {detector}: {}", trigger.scope);
    match p.write_artifacts(capture_dir, detector, &base, &title) {
        Ok(files) => r.attributes.push(artifacts_attribute(&files)),
        Err(e) => r.attributes.push(KeyValue::new(
            "linux.autotrace.artifacts.error",
            format!("{e:#}"),
        )),
    }
    r.body = Some(Value::Map(p.summary(settings.top)));
    Ok(r)
}

/// Integer-free percentage of `part` in `whole`, 0 when `whole` is 0.
pub fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part * 100.0 / whole
    } else {
        0.0
    }
}
