//! cgroup helpers for event collectors: cgroup v2 id → path, a task's
//! cgroups from /proc, and memory-controller files.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Mount points of cgroup filesystems: (cgroup2 root, v1 memory root),
/// read once.
pub fn mounts() -> (Option<PathBuf>, Option<PathBuf>) {
    static M: std::sync::OnceLock<(Option<PathBuf>, Option<PathBuf>)> = std::sync::OnceLock::new();
    M.get_or_init(read_mounts).clone()
}

fn read_mounts() -> (Option<PathBuf>, Option<PathBuf>) {
    let mut v2 = None;
    let mut mem = None;
    if let Ok(s) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in s.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mut pf = pre.split_whitespace();
            let mount_point = pf.nth(4).unwrap_or("");
            let mut qf = post.split_whitespace();
            let fstype = qf.next().unwrap_or("");
            let opts = qf.nth(1).unwrap_or("");
            if fstype == "cgroup2" && v2.is_none() {
                v2 = Some(PathBuf::from(mount_point));
            } else if fstype == "cgroup" && opts.split(',').any(|o| o == "memory") && mem.is_none()
            {
                mem = Some(PathBuf::from(mount_point));
            }
        }
    }
    (v2, mem)
}

/// The path (relative to `root`, starting with `/`) of the cgroup directory
/// with inode `id` in the hierarchy mounted at `root` (v1 or v2; a cgroup's
/// kernfs id is its inode number). Cached; walks on a miss.
pub fn path_in(root: &Path, id: u64) -> Option<String> {
    /// Per hierarchy: id → path, and when it was last walked.
    type Cache = HashMap<PathBuf, (HashMap<u64, String>, Option<Instant>)>;
    static CACHE: Mutex<Option<Cache>> = Mutex::new(None);
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let (map, walked) = c
        .get_or_insert_with(HashMap::new)
        .entry(root.to_path_buf())
        .or_default();
    if let Some(p) = map.get(&id) {
        return Some(p.clone());
    }
    // Unknown ids (new cgroups) re-walk the tree, at most once a second.
    if walked.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        return None;
    }
    map.clear();
    walk(root, root, map, 0);
    *walked = Some(Instant::now());
    map.get(&id).cloned()
}

/// The memory cgroup path of kernfs id `id` (v1 memory hierarchy if mounted,
/// else cgroup v2).
pub fn memcg_path_of_id(id: u64) -> Option<String> {
    let (v2, mem) = mounts();
    path_in(&mem.or(v2)?, id)
}

/// Files of a memory cgroup, read now: v1 (`memory.limit_in_bytes`, ...)
/// or v2 (`memory.max`, `memory.current`, `memory.events`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MemcgFiles {
    pub limit_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
    pub max_usage_bytes: Option<u64>,
    pub failcnt: Option<u64>,
    /// `memory.events` (v2) or `memory.oom_control` (v1) key/values.
    pub events: Vec<(String, u64)>,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn read_kv(p: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(p)
        .map(|s| {
            s.lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    Some((k.to_string(), v.trim().parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Read the memory cgroup at `path` (as in [`memcg_path_of_id`]).
pub fn memcg_files(path: &str) -> Option<MemcgFiles> {
    let (v2, mem) = mounts();
    if let Some(root) = mem {
        let d = root.join(path.trim_start_matches('/'));
        if !d.is_dir() {
            return None;
        }
        return Some(MemcgFiles {
            limit_bytes: read_u64(&d.join("memory.limit_in_bytes")),
            usage_bytes: read_u64(&d.join("memory.usage_in_bytes")),
            max_usage_bytes: read_u64(&d.join("memory.max_usage_in_bytes")),
            failcnt: read_u64(&d.join("memory.failcnt")),
            events: read_kv(&d.join("memory.oom_control")),
        });
    }
    let d = v2?.join(path.trim_start_matches('/'));
    if !d.is_dir() {
        return None;
    }
    Some(MemcgFiles {
        limit_bytes: read_u64(&d.join("memory.max")),
        usage_bytes: read_u64(&d.join("memory.current")),
        max_usage_bytes: read_u64(&d.join("memory.peak")),
        failcnt: None,
        events: read_kv(&d.join("memory.events")),
    })
}

fn walk(root: &Path, dir: &Path, out: &mut HashMap<u64, String>, depth: usize) {
    if depth > 16 {
        return;
    }
    if let Ok(md) = std::fs::metadata(dir) {
        let rel = dir
            .strip_prefix(root)
            .map(|p| format!("/{}", p.display()))
            .unwrap_or_else(|_| "/".into());
        out.insert(md.ino(), rel);
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(root, &e.path(), out, depth + 1);
            }
        }
    }
}

/// `/proc/<pid>/cgroup` lines; `None` when the task is gone.
pub fn proc_cgroups(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    Some(s.lines().map(str::to_string).collect())
}

/// The memory cgroup path of a task (`/kotel-test` style), v1 or v2.
pub fn memory_cgroup_of(pid: u32) -> Option<String> {
    let lines = proc_cgroups(pid)?;
    let mut v2 = None;
    for l in &lines {
        let mut parts = l.splitn(3, ':');
        let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
        if ctrl.split(',').any(|c| c == "memory") {
            return Some(path.to_string());
        }
        if ctrl.is_empty() {
            v2 = Some(path.to_string());
        }
    }
    v2
}
