//! Loading an object and attaching its programs one by one.

use anyhow::Context as _;
use aya::programs::{BtfTracePoint, Iter, RawTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};

/// One program of an object and where it attaches.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    /// `tracepoint/<category>/<name>`
    TracePoint {
        program: &'static str,
        category: &'static str,
        name: &'static str,
    },
    /// `tp_btf/<name>`
    BtfTracePoint {
        program: &'static str,
        name: &'static str,
    },
    /// `raw_tp/<name>`
    RawTracePoint {
        program: &'static str,
        name: &'static str,
    },
    /// `iter/<target>` (loaded, not attached: the caller attaches and reads).
    Iter {
        program: &'static str,
        target: &'static str,
    },
}

impl Hook {
    pub fn program(&self) -> &'static str {
        match *self {
            Hook::TracePoint { program, .. }
            | Hook::BtfTracePoint { program, .. }
            | Hook::RawTracePoint { program, .. }
            | Hook::Iter { program, .. } => program,
        }
    }

    pub fn describe(&self) -> String {
        match *self {
            Hook::TracePoint { category, name, .. } => format!("tracepoint {category}:{name}"),
            Hook::BtfTracePoint { name, .. } => format!("tp_btf/{name}"),
            Hook::RawTracePoint { name, .. } => format!("raw_tp/{name}"),
            Hook::Iter { target, .. } => format!("iter/{target}"),
        }
    }
}

/// Read-only globals and map sizes to set before loading.
#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    globals: Vec<(String, Vec<u8>)>,
    max_entries: Vec<(String, u32)>,
}

/// A value that can be written into a `const volatile` global.
pub trait GlobalValue {
    fn bytes(&self) -> Vec<u8>;
}

macro_rules! global_int {
    ($($t:ty),*) => {$(
        impl GlobalValue for $t {
            fn bytes(&self) -> Vec<u8> { self.to_ne_bytes().to_vec() }
        }
    )*};
}
global_int!(u8, u16, u32, u64, i32, i64);

impl<T: GlobalValue, const N: usize> GlobalValue for [T; N] {
    fn bytes(&self) -> Vec<u8> {
        self.iter().flat_map(|v| v.bytes()).collect()
    }
}

impl LoadOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the `const volatile` global `name` (must exist with that size).
    pub fn global(mut self, name: &str, value: impl GlobalValue) -> Self {
        self.globals.push((name.to_string(), value.bytes()));
        self
    }

    /// Override a map's `max_entries` (ring buffer bytes, hash capacity).
    pub fn max_entries(mut self, map: &str, n: u32) -> Self {
        self.max_entries.push((map.to_string(), n));
        self
    }
}

/// A loaded object with its attach status.
pub struct Loaded {
    pub bpf: Ebpf,
    /// Unix ns when the programs were loaded: the start time of their counters.
    pub loaded_at: u64,
    /// Programs that loaded and attached.
    pub attached: Vec<&'static str>,
    /// Programs that failed, with the reason.
    pub failed: Vec<(&'static str, String)>,
}

impl Loaded {
    /// Ok if every program attached, else the failures joined.
    pub fn require_all(&self) -> anyhow::Result<()> {
        if self.failed.is_empty() {
            Ok(())
        } else {
            let msgs: Vec<String> = self
                .failed
                .iter()
                .map(|(p, e)| format!("{p}: {e}"))
                .collect();
            anyhow::bail!("{}", msgs.join("; "))
        }
    }
}

/// Explain an aya error for a human, telling apart "no privileges" from "the
/// kernel refuses this program type" (both surface as EPERM).
pub fn explain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !chain.contains(&t) {
            chain.push_str(": ");
            chain.push_str(&t);
        }
        src = s.source();
    }
    if chain.contains("Operation not permitted") || chain.contains("os error 1)") {
        if crate::preflight::has_bpf_caps() {
            return format!(
                "{chain} — the kernel refused it although kotel has CAP_BPF/CAP_SYS_ADMIN \
                 (program type disabled, lockdown, an LSM, or a VM refusing BPF trampolines); \
                 running as root will not help"
            );
        }
        return format!("{chain} — eBPF needs root or CAP_BPF+CAP_PERFMON");
    }
    if chain.contains("No such file or directory") || chain.contains("os error 2)") {
        return format!("{chain} — the hook does not exist on this kernel");
    }
    chain
}

/// Load `obj` with the kernel BTF (CO-RE) and `opts`, then load and attach
/// each hook independently. Fails only if the object itself cannot load
/// (no BTF, no caps, map creation refused); per-program failures are listed
/// in [`Loaded::failed`].
pub fn load(
    collector: &str,
    obj: &[u8],
    opts: &LoadOptions,
    hooks: &[Hook],
) -> anyhow::Result<Loaded> {
    let btf = crate::btf::kernel_btf().map_err(anyhow::Error::msg)?;
    crate::preflight::check_caps().map_err(anyhow::Error::msg)?;
    let mut loader = EbpfLoader::new();
    loader.btf(Some(&btf));
    for (name, bytes) in &opts.globals {
        loader.override_global(name, bytes.as_slice(), true);
    }
    for (name, n) in &opts.max_entries {
        loader.map_max_entries(name, *n);
    }
    let mut bpf = loader
        .load(obj)
        .map_err(|e| anyhow::anyhow!("{}", explain(&e)))
        .with_context(|| format!("loading the {collector} BPF object"))?;
    let loaded_at = crate::clock::unix_now_ns();
    let mut attached = Vec::new();
    let mut failed = Vec::new();
    for hook in hooks {
        match attach_one(&mut bpf, hook, &btf) {
            Ok(()) => attached.push(hook.program()),
            Err(e) => {
                tracing::warn!(
                    collector,
                    program = hook.program(),
                    "{}: {e}",
                    hook.describe()
                );
                failed.push((hook.program(), format!("{}: {e}", hook.describe())));
            }
        }
    }
    Ok(Loaded {
        bpf,
        loaded_at,
        attached,
        failed,
    })
}

fn attach_one(bpf: &mut Ebpf, hook: &Hook, btf: &Btf) -> Result<(), String> {
    let name = hook.program();
    let prog = bpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} not in the object"))?;
    let r: Result<(), aya::programs::ProgramError> = match *hook {
        Hook::TracePoint { category, name, .. } => {
            crate::preflight::check_tracepoint(category, name)?;
            let p: &mut TracePoint = prog.try_into().map_err(|e| explain(&e))?;
            p.load().and_then(|_| p.attach(category, name).map(|_| ()))
        }
        Hook::BtfTracePoint { name, .. } => {
            let p: &mut BtfTracePoint = prog.try_into().map_err(|e| explain(&e))?;
            p.load(name, btf).and_then(|_| p.attach().map(|_| ()))
        }
        Hook::RawTracePoint { name, .. } => {
            let p: &mut RawTracePoint = prog.try_into().map_err(|e| explain(&e))?;
            p.load().and_then(|_| p.attach(name).map(|_| ()))
        }
        Hook::Iter { target, .. } => {
            let p: &mut Iter = prog.try_into().map_err(|e| explain(&e))?;
            p.load(target, btf)
        }
    };
    r.map_err(|e| explain(&e))
}

/// Kernel run statistics of one loaded program: (run_time_ns, run_count).
/// Counts only while BPF stats are enabled (`enable_stats`).
pub fn program_stats(bpf: &Ebpf, program: &str) -> Option<(u64, u64)> {
    let info = bpf.program(program)?.info().ok()?;
    Some((info.run_time().as_nanos() as u64, info.run_count()))
}

/// Turn on kernel BPF run-time statistics while the returned fd lives.
pub fn enable_stats() -> anyhow::Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")
}

/// Run a loaded `iter/*` program once and return everything it wrote.
pub fn run_iter(bpf: &mut Ebpf, program: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let prog: &mut Iter = bpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing"))?
        .try_into()
        .with_context(|| format!("{program} is not an iterator"))?;
    let id = prog
        .attach()
        .with_context(|| format!("attaching iterator {program}"))?;
    let link = prog.take_link(id)?;
    let mut file = link
        .into_file()
        .with_context(|| format!("creating iterator {program}"))?;
    let mut out = Vec::new();
    file.read_to_end(&mut out)
        .with_context(|| format!("reading iterator {program}"))?;
    Ok(out)
}
