//! Checks before loading anything, each failure with a precise reason.

pub const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability set of this process (`CapEff` in /proc/self/status).
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// Whether this process may create maps and load tracing programs.
pub fn has_bpf_caps() -> bool {
    let c = effective_caps();
    has(c, CAP_SYS_ADMIN) || (has(c, CAP_BPF) && has(c, CAP_PERFMON))
}

/// Check capabilities; `Err` is the reason to report.
pub fn check_caps() -> Result<(), String> {
    if has_bpf_caps() {
        Ok(())
    } else {
        Err(
            "eBPF collectors need root or CAP_BPF+CAP_PERFMON (effective capabilities lack them)"
                .into(),
        )
    }
}

/// Mount tracefs at /sys/kernel/tracing when it is not mounted anywhere
/// (some hosts boot without it). Needs CAP_SYS_ADMIN; done at most once.
fn mount_tracefs_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let target = TRACEFS_ROOTS[0];
        if !std::path::Path::new(target).is_dir()
            || std::path::Path::new(&format!("{target}/events")).exists()
        {
            return;
        }
        let (src, fs, dst) = (c"tracefs", c"tracefs", c"/sys/kernel/tracing");
        // SAFETY: valid NUL-terminated strings, no data argument.
        let rc =
            unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
        if rc == 0 {
            tracing::info!("tracefs was not mounted; mounted it at {target}");
        } else {
            tracing::debug!(
                "mounting tracefs at {target}: {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

/// The tracefs mount with an `events` folder this process can read (mounts
/// tracefs first if it is not mounted and we may).
pub fn tracefs() -> Result<&'static str, String> {
    mount_tracefs_once();
    let mut why = String::new();
    for root in TRACEFS_ROOTS {
        match std::fs::read_dir(format!("{root}/events")) {
            Ok(_) => return Ok(root),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let c = effective_caps();
                why = if has(c, CAP_DAC_READ_SEARCH) || has(c, CAP_DAC_OVERRIDE) {
                    format!("tracefs {root} not readable: {e}")
                } else {
                    format!(
                        "tracefs {root} is not readable (classic tracepoints need root or CAP_DAC_READ_SEARCH): {e}"
                    )
                };
            }
            Err(e) if why.is_empty() => why = format!("tracefs not mounted at {root} ({e})"),
            Err(_) => {}
        }
    }
    Err(why)
}

/// Whether the classic tracepoint `category/name` exists.
pub fn check_tracepoint(category: &str, name: &str) -> Result<(), String> {
    let root = tracefs()?;
    let p = format!("{root}/events/{category}/{name}/id");
    match std::fs::metadata(&p) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "tracepoint {category}:{name} does not exist on this kernel"
        )),
        Err(e) => Err(format!("tracepoint {category}:{name}: {p}: {e}")),
    }
}

/// What one BPF collector needs.
#[derive(Debug, Default, Clone)]
pub struct Requirements {
    pub tracepoints: Vec<(&'static str, &'static str)>,
    pub btf_tracepoints: Vec<&'static str>,
    pub task_iter: bool,
}

impl Requirements {
    /// What attaching `hooks` needs: each tracepoint, each BTF tracepoint,
    /// and the task iterator. Derived, so a probe cannot drift from the
    /// programs a collector really attaches.
    pub fn for_hooks(hooks: &[crate::Hook]) -> Self {
        let mut req = Self::default();
        for hook in hooks {
            match *hook {
                crate::Hook::TracePoint { category, name, .. } => {
                    req.tracepoints.push((category, name))
                }
                crate::Hook::BtfTracePoint { name, .. }
                | crate::Hook::RawTracePoint { name, .. } => req.btf_tracepoints.push(name),
                crate::Hook::Iter { target, .. } => req.task_iter |= target == "task",
            }
        }
        req
    }
}

/// Full preflight: BTF, capabilities, tracefs and each hook's existence.
pub fn check(req: &Requirements) -> Result<(), String> {
    crate::btf::kernel_btf()?;
    check_caps()?;
    for (c, n) in &req.tracepoints {
        check_tracepoint(c, n)?;
    }
    for n in &req.btf_tracepoints {
        if !crate::btf::has_btf_tracepoint(n) {
            return Err(format!("tp_btf/{n}: the kernel BTF has no btf_trace_{n}"));
        }
    }
    if req.task_iter && !crate::btf::has_btf_tracepoint_like("bpf_iter_task") {
        return Err("iter/task: the kernel has no BPF task iterator (bpf_iter_task)".into());
    }
    Ok(())
}
