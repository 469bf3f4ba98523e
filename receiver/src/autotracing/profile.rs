//! CPU profile capture: a BPF `perf_event` program on the software
//! cpu-clock event of every CPU (default 99 Hz for 10 s), kernel and user
//! stacks, counts aggregated in the kernel by (tgid, kernel stack id, user
//! stack id, comm); optionally only the tasks of one cgroup (v2, or the v1
//! `cpu` hierarchy) and its descendants.
//!
//! Kernel frames are symbolised with `/proc/kallsyms`, user frames with
//! blazesym per process (ELF symbols and DWARF through `/proc/<pid>/maps`
//! and `map_files`). Output: folded stacks (`comm;user frames;kernel
//! frames_[k] count`, root first), an SVG flame graph rendered with inferno,
//! and the top functions by self samples.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kotel_ebpf::aya::maps::{HashMap as BpfHashMap, PerCpuArray, StackTraceMap};
use kotel_ebpf::{LoadOptions, objects};
use kotel_pipelines::{KeyValue, Value};

/// Which tasks a profile samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileScope {
    /// Every task on the host (idle excluded).
    Host,
    /// Tasks in cgroup `path` or below it, in the v2 hierarchy (`v2`) or the
    /// v1 `cpu` hierarchy; `id` is the cgroup directory's kernfs id (its
    /// inode), `level` its depth (the root is 0).
    Cgroup {
        path: String,
        v2: bool,
        id: u64,
        level: u32,
    },
}

impl ProfileScope {
    /// The scope of cgroup `path`: the v1 `cpu` hierarchy when the cgroup
    /// exists there (that is where CPU limits of hybrid hosts live), else
    /// the v2 hierarchy.
    pub fn for_cgroup(path: &str) -> anyhow::Result<Self> {
        let mounts = crate::cgroups::global().mounts();
        let level = path.split('/').filter(|s| !s.is_empty()).count() as u32;
        let candidates = [(false, mounts.v1("cpu")), (true, mounts.v2())];
        for (v2, h) in candidates {
            let Some(h) = h else { continue };
            let Some(dir) = h.dir_of(path) else { continue };
            if let Ok(md) = std::fs::metadata(&dir) {
                return Ok(ProfileScope::Cgroup {
                    path: path.to_string(),
                    v2,
                    id: md.ino(),
                    level,
                });
            }
        }
        anyhow::bail!("cgroup {path} exists in neither the v1 cpu nor the v2 hierarchy")
    }
}

/// What to capture.
#[derive(Debug, Clone)]
pub struct ProfileRequest {
    pub duration: Duration,
    /// Samples per second per CPU.
    pub frequency: u64,
    pub scope: ProfileScope,
}

/// One function and its self samples.
#[derive(Debug, Clone, PartialEq)]
pub struct TopFunction {
    pub name: String,
    pub samples: u64,
}

/// A finished, symbolised profile.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// Samples counted (in scope).
    pub samples: u64,
    /// Samples lost because the counts map was full.
    pub lost: u64,
    /// CPUs sampled.
    pub cpus: usize,
    /// Folded stacks (`frame;frame;... `) with their sample counts, most
    /// samples first.
    pub folded: Vec<(String, u64)>,
    /// Functions by self samples (leaf frame), most first.
    pub top: Vec<TopFunction>,
    /// Processes by samples: (tgid, comm, samples), most first.
    pub processes: Vec<(u32, String, u64)>,
    /// Kernel CPU time spent in the BPF program (ns), when stats were on.
    pub bpf_run_ns: Option<u64>,
    pub elapsed: Duration,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    tgid: u32,
    kstack: i32,
    ustack: i32,
    _pad: u32,
    comm: [u8; 16],
}
// SAFETY: plain-old-data mirror of `struct profile_key` (no padding holes).
unsafe impl kotel_ebpf::aya::Pod for Key {}

const ST_SAMPLES: u32 = 0;
const ST_FULL: u32 = 2;

/// Run one capture: load, attach, sleep `duration`, read, symbolise.
pub fn capture(req: &ProfileRequest) -> anyhow::Result<Profile> {
    let started = Instant::now();
    let (mode, level, id) = match &req.scope {
        ProfileScope::Host => (0u32, 0u32, 0u64),
        ProfileScope::Cgroup { v2, id, level, .. } => (if *v2 { 1 } else { 2 }, *level, *id),
    };
    let opts = LoadOptions::new()
        .global("filter_mode", mode)
        .global("filter_level", level)
        .global("filter_id", id);
    let mut loaded = kotel_ebpf::loader::load("profile", objects::PROFILE, &opts, &[])?;
    let cpus = kotel_ebpf::perf::attach_cpu_clock(&mut loaded.bpf, "kotel_profile", req.frequency)?;
    std::thread::sleep(req.duration);
    // Detach before reading, so the maps stop changing.
    let prog = loaded
        .bpf
        .program("kotel_profile")
        .context("profile program missing")?;
    let bpf_run_ns = prog.info().ok().map(|i| i.run_time().as_nanos() as u64);
    if let Some(p) = loaded.bpf.program_mut("kotel_profile") {
        let p: Result<&mut kotel_ebpf::aya::programs::PerfEvent, _> = p.try_into();
        if let Ok(p) = p {
            let _ = p.unload();
        }
    }

    let stats: PerCpuArray<_, u64> =
        PerCpuArray::try_from(loaded.bpf.map("stats").context("stats map missing")?)?;
    let stat = |i: u32| -> u64 { stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
    let samples = stat(ST_SAMPLES);
    let lost = stat(ST_FULL);

    let counts: BpfHashMap<_, Key, u64> =
        BpfHashMap::try_from(loaded.bpf.map("counts").context("counts map missing")?)?;
    let mut entries: Vec<(Key, u64)> = counts.iter().filter_map(Result::ok).collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.1));
    let stack_map: StackTraceMap<_> =
        StackTraceMap::try_from(loaded.bpf.map("stacks").context("stacks map missing")?)?;
    let frames_of = |id: i32| -> Vec<u64> {
        if id < 0 {
            return Vec::new();
        }
        stack_map
            .get(&(id as u32), 0)
            .map(|st| st.frames().iter().map(|f| f.ip).collect())
            .unwrap_or_default()
    };

    let ksyms = kotel_ebpf::ksyms::get();
    let mut usyms = UserSymbols::new();
    let mut folded: HashMap<String, u64> = HashMap::new();
    let mut selfs: HashMap<String, u64> = HashMap::new();
    let mut procs: HashMap<u32, (String, u64)> = HashMap::new();
    // Collect raw stacks first, so each process is symbolised in one call.
    let mut raw: Vec<(Key, u64, Vec<u64>, Vec<u64>)> = Vec::with_capacity(entries.len());
    for (k, n) in entries {
        let kf = frames_of(k.kstack);
        let uf = frames_of(k.ustack);
        usyms.want(k.tgid, &uf);
        raw.push((k, n, kf, uf));
    }
    usyms.resolve();
    for (k, n, kf, uf) in raw {
        let comm = comm_str(&k.comm);
        let mut line = comm.replace(';', "_");
        // Stacks come innermost first; folded lines go root first.
        for ip in uf.iter().rev() {
            line.push(';');
            line.push_str(&usyms.name(k.tgid, *ip).replace(';', "_"));
        }
        for ip in kf.iter().rev() {
            line.push(';');
            match ksyms.lookup(*ip) {
                Some((name, _, _)) => line.push_str(name),
                None => line.push_str("[unknown]"),
            }
            line.push_str("_[k]");
        }
        let leaf = line.rsplit(';').next().unwrap_or_default().to_string();
        *selfs.entry(leaf).or_default() += n;
        *folded.entry(line).or_default() += n;
        let p = procs.entry(k.tgid).or_insert_with(|| (comm.clone(), 0));
        p.1 += n;
    }
    let mut folded: Vec<(String, u64)> = folded.into_iter().collect();
    folded.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut top: Vec<TopFunction> = selfs
        .into_iter()
        .map(|(name, samples)| TopFunction { name, samples })
        .collect();
    top.sort_by(|a, b| b.samples.cmp(&a.samples).then_with(|| a.name.cmp(&b.name)));
    let mut processes: Vec<(u32, String, u64)> =
        procs.into_iter().map(|(p, (c, n))| (p, c, n)).collect();
    processes.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    Ok(Profile {
        samples,
        lost,
        cpus,
        folded,
        top,
        processes,
        bpf_run_ns,
        elapsed: started.elapsed(),
    })
}

fn comm_str(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// User-space symbols of the sampled processes, resolved in one blazesym
/// call per process.
struct UserSymbols {
    wanted: HashMap<u32, Vec<u64>>,
    names: HashMap<(u32, u64), String>,
}

impl UserSymbols {
    fn new() -> Self {
        Self {
            wanted: HashMap::new(),
            names: HashMap::new(),
        }
    }

    fn want(&mut self, tgid: u32, ips: &[u64]) {
        if !ips.is_empty() {
            self.wanted.entry(tgid).or_default().extend_from_slice(ips);
        }
    }

    fn resolve(&mut self) {
        use blazesym::symbolize::source::{Process, Source};
        use blazesym::symbolize::{Input, Symbolized, Symbolizer};
        let symbolizer = Symbolizer::new();
        for (tgid, mut ips) in std::mem::take(&mut self.wanted) {
            ips.sort_unstable();
            ips.dedup();
            let src = Source::Process(Process::new(blazesym::Pid::from(tgid)));
            let Ok(syms) = symbolizer.symbolize(&src, Input::AbsAddr(&ips)) else {
                continue;
            };
            for (ip, sym) in ips.iter().zip(syms) {
                if let Symbolized::Sym(s) = sym {
                    self.names.insert((tgid, *ip), s.name.into_owned());
                }
            }
        }
    }

    fn name(&self, tgid: u32, ip: u64) -> String {
        self.names
            .get(&(tgid, ip))
            .cloned()
            .unwrap_or_else(|| "[unknown]".to_string())
    }
}

impl Profile {
    /// The folded-stacks text (`stack count` per line).
    pub fn folded_text(&self) -> String {
        let mut s = String::new();
        for (line, n) in &self.folded {
            s.push_str(line);
            s.push(' ');
            s.push_str(&n.to_string());
            s.push('\n');
        }
        s
    }

    /// An SVG flame graph of the folded stacks.
    pub fn flamegraph_svg(&self, title: &str) -> anyhow::Result<Vec<u8>> {
        let mut opts = inferno::flamegraph::Options::default();
        opts.title = title.to_string();
        opts.count_name = "samples".to_string();
        let text = self.folded_text();
        let mut out = Vec::new();
        if text.is_empty() {
            // inferno refuses empty input; an explicit empty graph is clearer.
            opts.title = format!("{title} (no samples)");
            inferno::flamegraph::from_lines(&mut opts, ["idle 1"], &mut out)?;
        } else {
            inferno::flamegraph::from_lines(&mut opts, text.lines(), &mut out)?;
        }
        Ok(out)
    }

    /// Write the folded stacks and the SVG into the capture folder; returns
    /// the two paths.
    pub fn write_artifacts(
        &self,
        dir: &std::path::Path,
        detector: &str,
        base: &str,
        title: &str,
    ) -> anyhow::Result<Vec<PathBuf>> {
        let folded =
            super::artifacts::write(dir, detector, base, "folded", self.folded_text().as_bytes())?;
        let svg =
            super::artifacts::write(dir, detector, base, "svg", &self.flamegraph_svg(title)?)?;
        Ok(vec![folded, svg])
    }

    /// Record attributes: samples, lost, CPUs.
    pub fn attributes(&self, req: &ProfileRequest, out: &mut Vec<KeyValue>) {
        out.push(KeyValue::new(
            "linux.autotrace.profile.duration",
            req.duration.as_secs_f64(),
        ));
        out.push(KeyValue::new(
            "linux.autotrace.profile.frequency",
            req.frequency,
        ));
        out.push(KeyValue::new(
            "linux.autotrace.profile.samples",
            self.samples,
        ));
        out.push(KeyValue::new("linux.autotrace.profile.lost", self.lost));
        out.push(KeyValue::new(
            "linux.autotrace.profile.cpus",
            self.cpus as u64,
        ));
    }

    /// Body fields: the top `n` functions and processes, with sample shares.
    pub fn summary(&self, n: usize) -> Vec<KeyValue> {
        let total = self.samples.max(1) as f64;
        let top: Vec<Value> = self
            .top
            .iter()
            .take(n)
            .map(|f| {
                Value::Map(vec![
                    KeyValue::new("function", f.name.clone()),
                    KeyValue::new("samples", f.samples),
                    KeyValue::new("share", f.samples as f64 / total),
                ])
            })
            .collect();
        let procs: Vec<Value> = self
            .processes
            .iter()
            .take(n)
            .map(|(pid, comm, samples)| {
                Value::Map(vec![
                    KeyValue::new("process.pid", u64::from(*pid)),
                    KeyValue::new("process.command", comm.clone()),
                    KeyValue::new("samples", *samples),
                    KeyValue::new("share", *samples as f64 / total),
                ])
            })
            .collect();
        vec![
            KeyValue::new("top_functions", Value::Array(top)),
            KeyValue::new("top_processes", Value::Array(procs)),
        ]
    }
}
