//! D-state tasks from the `dstate` BPF task iterators: who is in
//! uninterruptible sleep, in which cgroups, and (for captures) their kernel
//! stacks grouped by identical stack.

use std::collections::HashMap;

use anyhow::Context as _;
use kotel_ebpf::{Hook, LoadOptions, Loaded, objects};
use kotel_pipelines::{KeyValue, Value};

const FRAMES: usize = 48;
/// Size of `struct kotel_dtask` without the frames.
const HEADER: usize = 48;
const FULL: usize = HEADER + FRAMES * 8;

/// One D-state task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DTask {
    pub pid: u32,
    pub tgid: u32,
    pub state: u32,
    /// cgroup v2 kernfs id.
    pub cg_v2: u64,
    /// v1 `cpu` hierarchy kernfs id (0 when not mounted).
    pub cg_cpu: u64,
    pub comm: String,
    /// Kernel stack, innermost first (empty for the counting iterator).
    pub frames: Vec<u64>,
}

/// Parse the iterator output: records of `HEADER` bytes, or `FULL` bytes
/// when `with_stacks`.
pub fn parse(buf: &[u8], with_stacks: bool) -> Vec<DTask> {
    let size = if with_stacks { FULL } else { HEADER };
    buf.chunks_exact(size)
        .map(|r| {
            let u32_at = |o: usize| u32::from_ne_bytes(r[o..o + 4].try_into().unwrap());
            let u64_at = |o: usize| u64::from_ne_bytes(r[o..o + 8].try_into().unwrap());
            let comm = &r[32..48];
            let end = comm.iter().position(|&b| b == 0).unwrap_or(16);
            let mut frames = Vec::new();
            if with_stacks {
                let bytes = i32::from_ne_bytes(r[12..16].try_into().unwrap());
                let n = (bytes.max(0) as usize / 8).min(FRAMES);
                frames = (0..n)
                    .map(|i| u64_at(HEADER + i * 8))
                    .filter(|&a| a != 0)
                    .collect();
            }
            DTask {
                pid: u32_at(0),
                tgid: u32_at(4),
                state: u32_at(8),
                cg_v2: u64_at(16),
                cg_cpu: u64_at(24),
                comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
                frames,
            }
        })
        .collect()
}

/// The loaded iterators.
pub struct DstateIter {
    loaded: Loaded,
}

impl DstateIter {
    pub fn load() -> anyhow::Result<Self> {
        let hooks = [
            Hook::Iter {
                program: "kotel_dcount",
                target: "task",
            },
            Hook::Iter {
                program: "kotel_dstacks",
                target: "task",
            },
        ];
        let loaded =
            kotel_ebpf::loader::load("dload", objects::DSTATE, &LoadOptions::new(), &hooks)?;
        loaded.require_all()?;
        Ok(Self { loaded })
    }

    /// Every D-state task now, without stacks (cheap).
    pub fn tasks(&mut self) -> anyhow::Result<Vec<DTask>> {
        let out = kotel_ebpf::loader::run_iter(&mut self.loaded.bpf, "kotel_dcount")
            .context("running the D-state task iterator")?;
        Ok(parse(&out, false))
    }

    /// Every D-state task now, with kernel stacks.
    pub fn tasks_with_stacks(&mut self) -> anyhow::Result<Vec<DTask>> {
        let out = kotel_ebpf::loader::run_iter(&mut self.loaded.bpf, "kotel_dstacks")
            .context("running the D-state stack iterator")?;
        Ok(parse(&out, true))
    }
}

/// Tasks sharing one kernel stack.
#[derive(Debug, Clone, PartialEq)]
pub struct StackGroup {
    /// Symbolised frames, innermost first (`io_schedule+0x42`).
    pub frames: Vec<String>,
    /// (pid, comm) of each task, in pid order.
    pub tasks: Vec<(u32, String)>,
}

/// Group tasks by identical symbolised stack; largest groups first.
pub fn group(tasks: &[DTask]) -> Vec<StackGroup> {
    let ksyms = kotel_ebpf::ksyms::get();
    let mut by_stack: HashMap<Vec<String>, Vec<(u32, String)>> = HashMap::new();
    for t in tasks {
        let frames: Vec<String> = t.frames.iter().map(|a| ksyms.format(*a)).collect();
        by_stack
            .entry(frames)
            .or_default()
            .push((t.pid, t.comm.clone()));
    }
    let mut groups: Vec<StackGroup> = by_stack
        .into_iter()
        .map(|(frames, mut tasks)| {
            tasks.sort();
            StackGroup { frames, tasks }
        })
        .collect();
    groups.sort_by(|a, b| {
        b.tasks
            .len()
            .cmp(&a.tasks.len())
            .then(a.frames.cmp(&b.frames))
    });
    groups
}

/// The record body: at most `max_groups` groups, `max_tasks` tasks each.
pub fn groups_value(groups: &[StackGroup], max_groups: usize, max_tasks: usize) -> Value {
    Value::Array(
        groups
            .iter()
            .take(max_groups)
            .map(|g| {
                Value::Map(vec![
                    KeyValue::new("count", g.tasks.len() as u64),
                    KeyValue::new(
                        "stack",
                        Value::Array(g.frames.iter().map(|f| Value::from(f.clone())).collect()),
                    ),
                    KeyValue::new(
                        "tasks",
                        Value::Array(
                            g.tasks
                                .iter()
                                .take(max_tasks)
                                .map(|(pid, comm)| {
                                    Value::Map(vec![
                                        KeyValue::new("process.pid", u64::from(*pid)),
                                        KeyValue::new("process.command", comm.clone()),
                                    ])
                                })
                                .collect(),
                        ),
                    ),
                ])
            })
            .collect(),
    )
}

/// Every group as text (the full artifact).
pub fn groups_text(groups: &[StackGroup]) -> String {
    let mut s = String::new();
    for g in groups {
        s.push_str(&format!("{} task(s):", g.tasks.len()));
        for (pid, comm) in &g.tasks {
            s.push_str(&format!(" {comm}/{pid}"));
        }
        s.push('\n');
        for f in &g.frames {
            s.push_str("    ");
            s.push_str(f);
            s.push('\n');
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records() {
        let mut r = vec![0u8; FULL];
        r[0..4].copy_from_slice(&7u32.to_ne_bytes());
        r[4..8].copy_from_slice(&7u32.to_ne_bytes());
        r[8..12].copy_from_slice(&2u32.to_ne_bytes());
        r[12..16].copy_from_slice(&16i32.to_ne_bytes());
        r[16..24].copy_from_slice(&99u64.to_ne_bytes());
        r[32..36].copy_from_slice(b"dd\0\0");
        r[HEADER..HEADER + 8].copy_from_slice(&0xffff_ffff_8100_0000u64.to_ne_bytes());
        r[HEADER + 8..HEADER + 16].copy_from_slice(&0xffff_ffff_8100_0010u64.to_ne_bytes());
        let t = parse(&r, true);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].comm, "dd");
        assert_eq!(t[0].cg_v2, 99);
        assert_eq!(t[0].frames.len(), 2);
        let t = parse(&r[..HEADER], false);
        assert_eq!(t[0].pid, 7);
        assert!(t[0].frames.is_empty());
    }

    #[test]
    fn groups_identical_stacks() {
        let t = |pid, f: &[u64]| DTask {
            pid,
            tgid: pid,
            state: 2,
            cg_v2: 0,
            cg_cpu: 0,
            comm: "x".into(),
            frames: f.to_vec(),
        };
        let g = group(&[t(3, &[1, 2]), t(1, &[1, 2]), t(2, &[5])]);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].tasks, vec![(1, "x".into()), (3, "x".into())]);
        assert!(groups_text(&g).starts_with("2 task(s): x/1 x/3\n"));
    }
}
