//! The cgroup and container model: which cgroup a BPF cgroup id, a task or
//! a path is, and which container, pod or systemd unit owns it.
//!
//! - [`mounts`] finds every cgroup hierarchy (v1 per controller, v2 unified,
//!   hybrid or pure v2) in `/proc/self/mountinfo`.
//! - [`path`] turns a cgroup path into a container id and runtime (docker,
//!   containerd, CRI-O, podman, LXC; systemd and cgroupfs drivers), a pod uid
//!   and QoS class, or a systemd unit.
//! - [`Registry`] indexes the cgroup directories of the v2 hierarchy and the
//!   v1 `memory` and `cpu` hierarchies by kernfs id (the directory's inode,
//!   which is what `bpf_get_current_cgroup_id()` and `memcg->css.cgroup->kn->id`
//!   return) and by path, in a bounded LRU cache kept current by
//!   [`watch`] (inotify on every cgroup directory).
//!
//! Event collectors call [`resolve_cgroup_id`], [`resolve_memcg_id`] and
//! [`resolve_pid`] (cheap after the first call: a read-locked map lookup) and
//! attach [`CgroupInfo::attributes`]. The `containers` metrics collector
//! reads per-cgroup files of every container the registry knows.

pub mod mounts;
pub mod path;
pub mod watch;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use kotel_pipelines::KeyValue;

pub use mounts::{Hierarchy, Mounts};
pub use path::{ContainerRef, PathInfo, parse_path};

/// Entries the host-wide registry keeps before evicting the least recently
/// used (container cgroups last).
pub const DEFAULT_CAPACITY: usize = 16_384;

/// How deep a walk of a hierarchy goes (kubepods systemd paths are ~5 deep).
const MAX_DEPTH: usize = 32;

/// A miss on an unknown id walks its hierarchy at most this often.
const MISS_WALK_INTERVAL: Duration = Duration::from_millis(500);

/// One cgroup directory of one hierarchy.
#[derive(Debug)]
pub struct CgroupInfo {
    /// kernfs id (inode number) in its hierarchy.
    pub id: u64,
    /// Index into [`Registry::mounts`]`.hierarchies`.
    pub hierarchy: usize,
    /// Path as `/proc/<pid>/cgroup` prints it (`/docker/<id>`).
    pub path: Arc<str>,
    /// What the path says (container, pod, unit).
    pub parsed: PathInfo,
    /// When the directory was made (its ctime), Unix nanoseconds: the start
    /// time of the cgroup's counters.
    pub created: u64,
    /// `<hierarchy number>:<controllers>:` prefix of `process.linux.cgroup`.
    proc_prefix: Box<str>,
    last_used: AtomicU64,
}

impl CgroupInfo {
    /// The container's id, if a container owns this cgroup.
    pub fn container_id(&self) -> Option<&str> {
        self.parsed.container.as_ref().map(|c| c.id.as_str())
    }

    /// True for the container's own cgroup (not a child cgroup inside it).
    pub fn is_container_root(&self) -> bool {
        self.parsed.container_root
    }

    /// OTel attributes: `container.id`, `container.runtime.name`,
    /// `k8s.pod.uid`, `k8s.pod.qos_class`, the kubelet's `k8s.*` when the
    /// [`crate::kube`] client runs (`k8s.pod.name`, `k8s.namespace.name`,
    /// `k8s.container.name`, `k8s.node.name`, `k8s.pod.label.<key>`),
    /// `systemd.unit` (each when known) and `linux.cgroup.path`.
    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut out = Vec::with_capacity(5);
        self.append_attributes(&mut out);
        out
    }

    /// [`Self::attributes`] appended to `out`.
    pub fn append_attributes(&self, out: &mut Vec<KeyValue>) {
        let p = &self.parsed;
        if let Some(c) = &p.container {
            out.push(KeyValue::new("container.id", c.id.clone()));
            if let Some(rt) = c.runtime {
                out.push(KeyValue::new("container.runtime.name", rt));
            }
        }
        if let Some(uid) = &p.pod_uid {
            out.push(KeyValue::new("k8s.pod.uid", uid.clone()));
        }
        if let Some(qos) = p.qos {
            out.push(KeyValue::new("k8s.pod.qos_class", qos));
        }
        if p.container.is_some() || p.pod_uid.is_some() {
            crate::kube::global_cache().annotate(self.container_id(), p.pod_uid.as_deref(), out);
        }
        if let Some(unit) = &p.systemd_unit {
            out.push(KeyValue::new("systemd.unit", unit.clone()));
        }
        out.push(KeyValue::new("linux.cgroup.path", self.path.to_string()));
    }

    /// The `/proc/<pid>/cgroup` line of this cgroup (`0::/docker/<id>`,
    /// `4:memory:/docker/<id>`): the value of `process.linux.cgroup`.
    pub fn proc_cgroup_line(&self) -> String {
        format!("{}{}", self.proc_prefix, self.path)
    }

    /// [`Self::attributes`] plus `process.linux.cgroup`, for records about a task.
    pub fn process_attributes(&self) -> Vec<KeyValue> {
        let mut out = self.attributes();
        out.push(KeyValue::new(
            "process.linux.cgroup",
            self.proc_cgroup_line(),
        ));
        out
    }
}

#[derive(Default)]
struct Index {
    by_id: HashMap<u64, Arc<CgroupInfo>>,
    by_path: HashMap<Arc<str>, u64>,
}

/// Counters of the cache, for `/containers` and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub entries: usize,
    pub capacity: usize,
    pub inserted: u64,
    pub removed: u64,
    pub evicted: u64,
    pub miss_walks: u64,
}

/// A bounded index of cgroup directories for some hierarchies.
pub struct Registry {
    mounts: Mounts,
    /// Hierarchies indexed (and watched), as indices into `mounts`.
    indexed: Vec<usize>,
    capacity: usize,
    tick: AtomicU64,
    index: RwLock<Vec<Index>>,
    last_miss_walk: Mutex<Vec<Option<Instant>>>,
    inserted: AtomicU64,
    removed: AtomicU64,
    evicted: AtomicU64,
    miss_walks: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("indexed", &self.indexed)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Registry {
    /// A registry over `indexed` hierarchies of `mounts`, empty until
    /// [`Self::scan`] or a watcher fills it.
    pub fn new(mounts: Mounts, indexed: Vec<usize>, capacity: usize) -> Self {
        let n = mounts.hierarchies.len();
        Self {
            mounts,
            indexed,
            capacity: capacity.max(1),
            tick: AtomicU64::new(0),
            index: RwLock::new((0..n).map(|_| Index::default()).collect()),
            last_miss_walk: Mutex::new(vec![None; n]),
            inserted: AtomicU64::new(0),
            removed: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            miss_walks: AtomicU64::new(0),
        }
    }

    /// The host's registry: v2 plus the v1 `memory` and `cpu` hierarchies.
    pub fn for_host(mounts: Mounts, capacity: usize) -> Self {
        let mut indexed = Vec::new();
        for (i, h) in mounts.hierarchies.iter().enumerate() {
            if h.is_v2() || h.has("memory") || h.has("cpu") {
                indexed.push(i);
            }
        }
        Self::new(mounts, indexed, capacity)
    }

    pub fn mounts(&self) -> &Mounts {
        &self.mounts
    }

    /// Indices of the indexed hierarchies.
    pub fn indexed(&self) -> &[usize] {
        &self.indexed
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Index>> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Index>> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self, info: &CgroupInfo) {
        info.last_used
            .store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Walk every indexed hierarchy and index each directory.
    pub fn scan(&self) {
        for &h in &self.indexed {
            let root = self.mounts.hierarchies[h].mount_point.clone();
            walk(&root, 0, &mut |dir| {
                self.insert_dir(h, dir);
                true
            });
        }
    }

    /// Index directory `dir` of hierarchy `h` (idempotent); `None` when it
    /// is not a directory of that mount.
    pub fn insert_dir(&self, h: usize, dir: &Path) -> Option<Arc<CgroupInfo>> {
        let hier = self.mounts.hierarchies.get(h)?;
        let md = std::fs::metadata(dir).ok()?;
        if !md.is_dir() {
            return None;
        }
        let path = hier.path_of(dir)?;
        Some(self.insert(h, md.ino(), &path, ctime_nanos(&md)))
    }

    /// Index a cgroup by id and path (what [`Self::insert_dir`] reads from
    /// the filesystem; tests and benches use it directly).
    pub fn insert(&self, h: usize, id: u64, path: &str, created: u64) -> Arc<CgroupInfo> {
        let hier = &self.mounts.hierarchies[h];
        let mut index = self.write();
        if let Some(existing) = index[h].by_id.get(&id)
            && *existing.path == *path
        {
            return existing.clone();
        }
        let path: Arc<str> = Arc::from(path);
        let info = Arc::new(CgroupInfo {
            id,
            hierarchy: h,
            parsed: parse_path(&path),
            path: path.clone(),
            created,
            proc_prefix: format!("{}:{}:", hier.number, hier.controller_list()).into(),
            last_used: AtomicU64::new(self.tick.fetch_add(1, Ordering::Relaxed)),
        });
        let idx = &mut index[h];
        if let Some(old_id) = idx.by_path.insert(path, id)
            && old_id != id
        {
            // Removed and re-created under the same name between two looks.
            idx.by_id.remove(&old_id);
        }
        if let Some(old) = idx.by_id.insert(id, info.clone())
            && old.path != info.path
        {
            idx.by_path.remove(&old.path);
        }
        self.inserted.fetch_add(1, Ordering::Relaxed);
        let total: usize = index.iter().map(|i| i.by_id.len()).sum();
        if total > self.capacity {
            self.evict(&mut index, total - self.capacity + self.capacity / 8);
        }
        info
    }

    /// Drop the `n` least recently used entries, plain cgroups before containers.
    fn evict(&self, index: &mut [Index], n: usize) {
        let mut all: Vec<(bool, u64, usize, u64)> = index
            .iter()
            .enumerate()
            .flat_map(|(h, i)| {
                i.by_id.values().map(move |c| {
                    (
                        c.is_container_root(),
                        c.last_used.load(Ordering::Relaxed),
                        h,
                        c.id,
                    )
                })
            })
            .collect();
        all.sort_unstable();
        for &(_, _, h, id) in all.iter().take(n) {
            if let Some(c) = index[h].by_id.remove(&id) {
                index[h].by_path.remove(&c.path);
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Forget the cgroup at `dir` of hierarchy `h` and everything below it.
    pub fn remove_dir(&self, h: usize, dir: &Path) {
        let Some(path) = self.mounts.hierarchies.get(h).and_then(|x| x.path_of(dir)) else {
            return;
        };
        self.remove_path(h, &path);
    }

    /// Forget cgroup `path` of hierarchy `h` and its descendants.
    pub fn remove_path(&self, h: usize, path: &str) {
        let mut index = self.write();
        let Some(idx) = index.get_mut(h) else { return };
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let gone: Vec<Arc<str>> = idx
            .by_path
            .keys()
            .filter(|p| ***p == *path || p.starts_with(&prefix))
            .cloned()
            .collect();
        for p in gone {
            if let Some(id) = idx.by_path.remove(&p) {
                idx.by_id.remove(&id);
                self.removed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Drop entries whose directory no longer exists (after an inotify
    /// queue overflow).
    pub fn prune(&self) {
        let stale: Vec<(usize, Arc<str>)> = {
            let index = self.read();
            index
                .iter()
                .enumerate()
                .flat_map(|(h, i)| i.by_path.keys().map(move |p| (h, p.clone())))
                .filter(|(h, p)| {
                    self.mounts.hierarchies[*h]
                        .dir_of(p)
                        .is_none_or(|d| !d.is_dir())
                })
                .collect()
        };
        for (h, p) in stale {
            self.remove_path(h, &p);
        }
    }

    /// The cgroup with kernfs id `id` in hierarchy `h`, from the cache.
    pub fn get(&self, h: usize, id: u64) -> Option<Arc<CgroupInfo>> {
        let found = self.read().get(h)?.by_id.get(&id).cloned()?;
        self.touch(&found);
        Some(found)
    }

    /// The cgroup at `path` in hierarchy `h`, from the cache.
    pub fn get_path(&self, h: usize, path: &str) -> Option<Arc<CgroupInfo>> {
        let index = self.read();
        let idx = index.get(h)?;
        let found = idx.by_id.get(idx.by_path.get(path)?)?.clone();
        drop(index);
        self.touch(&found);
        Some(found)
    }

    /// The cgroup with id `id` in hierarchy `h`; on a miss, walks the
    /// hierarchy for it (at most every 500 ms per hierarchy).
    pub fn resolve(&self, h: usize, id: u64) -> Option<Arc<CgroupInfo>> {
        if let Some(found) = self.get(h, id) {
            return Some(found);
        }
        {
            let mut last = self
                .last_miss_walk
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let slot = last.get_mut(h)?;
            if slot.is_some_and(|t| t.elapsed() < MISS_WALK_INTERVAL) {
                return None;
            }
            *slot = Some(Instant::now());
        }
        self.miss_walks.fetch_add(1, Ordering::Relaxed);
        let root = self.mounts.hierarchies[h].mount_point.clone();
        let mut found = None;
        walk(&root, 0, &mut |dir| {
            if std::fs::metadata(dir).is_ok_and(|m| m.ino() == id) {
                found = self.insert_dir(h, dir);
                return false;
            }
            true
        });
        found
    }

    /// The cgroup at `path` of hierarchy `h`, indexing it on a miss.
    pub fn resolve_path(&self, h: usize, path: &str) -> Option<Arc<CgroupInfo>> {
        if let Some(found) = self.get_path(h, path) {
            return Some(found);
        }
        let dir = self.mounts.hierarchies.get(h)?.dir_of(path)?;
        self.insert_dir(h, &dir)
    }

    /// The cgroup of a task, from `/proc/<pid>/cgroup`: the first line whose
    /// path names a container, else the v2 path when it is not `/`, else the
    /// v1 memory path, else the v2 one.
    pub fn resolve_pid(&self, pid: u32) -> Option<Arc<CgroupInfo>> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        self.resolve_proc_cgroup(&text)
    }

    /// [`Self::resolve_pid`] on the text of a `/proc/<pid>/cgroup` file.
    pub fn resolve_proc_cgroup(&self, text: &str) -> Option<Arc<CgroupInfo>> {
        let mut lines: Vec<(usize, &str)> = Vec::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(list), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if let Some(h) = self.mounts.index_of_list(list) {
                lines.push((h, path));
            }
        }
        let rank = |(h, path): &(usize, &str)| {
            let hier = &self.mounts.hierarchies[*h];
            if parse_path(path).container.is_some() {
                0
            } else if hier.is_v2() && *path != "/" {
                1
            } else if hier.has("memory") {
                2
            } else if hier.is_v2() {
                3
            } else {
                4
            }
        };
        lines.sort_by_key(rank);
        lines
            .iter()
            .find_map(|(h, path)| self.resolve_path(*h, path))
    }

    /// Every cached cgroup that is a container's own cgroup.
    pub fn containers(&self) -> Vec<Arc<CgroupInfo>> {
        self.filter(|c| c.is_container_root())
    }

    /// Every cached cgroup that `keep` accepts.
    pub fn filter(&self, mut keep: impl FnMut(&CgroupInfo) -> bool) -> Vec<Arc<CgroupInfo>> {
        let index = self.read();
        let mut out: Vec<Arc<CgroupInfo>> = index
            .iter()
            .flat_map(|i| i.by_id.values())
            .filter(|c| keep(c))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path).then(a.hierarchy.cmp(&b.hierarchy)));
        out
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.read().iter().map(|i| i.by_id.len()).sum(),
            capacity: self.capacity,
            inserted: self.inserted.load(Ordering::Relaxed),
            removed: self.removed.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            miss_walks: self.miss_walks.load(Ordering::Relaxed),
        }
    }

    /// What the registry knows, as JSON: hierarchies, cache counters and one
    /// object per container (its cgroup in every indexed hierarchy).
    pub fn snapshot_json(&self) -> serde_json::Value {
        use serde_json::json;
        let hierarchies: Vec<_> = self
            .mounts
            .hierarchies
            .iter()
            .enumerate()
            .map(|(i, h)| {
                json!({
                    "mount_point": h.mount_point,
                    "version": if h.is_v2() { 2 } else { 1 },
                    "controllers": h.controllers,
                    "indexed": self.indexed.contains(&i),
                })
            })
            .collect();
        let mut containers: Vec<serde_json::Value> = Vec::new();
        let mut by_id: HashMap<String, usize> = HashMap::new();
        for c in self.containers() {
            let Some(container) = &c.parsed.container else {
                continue;
            };
            let hier = &self.mounts.hierarchies[c.hierarchy];
            let key = if hier.is_v2() {
                "v2".to_string()
            } else {
                hier.controller_list()
            };
            let slot = *by_id.entry(container.id.clone()).or_insert_with(|| {
                containers.push(json!({
                    "container.id": container.id,
                    "container.runtime.name": container.runtime,
                    "k8s.pod.uid": c.parsed.pod_uid,
                    "k8s.pod.qos_class": c.parsed.qos,
                    "created_unix_nanos": c.created,
                    "cgroups": {},
                }));
                containers.len() - 1
            });
            containers[slot]["cgroups"][key] = json!({ "path": &*c.path, "id": c.id });
        }
        for c in &mut containers {
            let id = c["container.id"].as_str().unwrap_or_default().to_owned();
            if let Some(m) = crate::kube::global_cache().container(&id) {
                c["k8s.pod.name"] = json!(m.pod_name);
                c["k8s.pod.uid"] = json!(m.pod_uid);
                c["k8s.namespace.name"] = json!(m.namespace);
                c["k8s.container.name"] = json!(m.container_name);
                c["k8s.node.name"] = json!(m.node_name);
            }
        }
        json!({
            "hierarchies": hierarchies,
            "cache": self.stats(),
            "containers": containers,
            "kubelet": crate::kube::global_cache().snapshot_json(),
        })
    }
}

/// Depth-first walk of the directories under `root` (including it); stops
/// when `visit` returns false.
fn walk(root: &Path, depth: usize, visit: &mut dyn FnMut(&Path) -> bool) -> bool {
    if !visit(root) {
        return false;
    }
    if depth >= MAX_DEPTH {
        return true;
    }
    let Ok(rd) = std::fs::read_dir(root) else {
        return true;
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) && !walk(&e.path(), depth + 1, visit) {
            return false;
        }
    }
    true
}

fn ctime_nanos(md: &std::fs::Metadata) -> u64 {
    let s = u64::try_from(md.ctime()).unwrap_or(0);
    let ns = u64::try_from(md.ctime_nsec()).unwrap_or(0);
    s * 1_000_000_000 + ns
}

/// The host registry, scanned and watched on first use.
pub fn global() -> &'static Arc<Registry> {
    static GLOBAL: OnceLock<Arc<Registry>> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let reg = Arc::new(Registry::for_host(Mounts::detect(), DEFAULT_CAPACITY));
        match watch::Watcher::start(reg.clone()) {
            // The host registry lives as long as the process.
            Ok(w) => std::mem::forget(w),
            Err(e) => {
                tracing::warn!(error = %e, "cgroups: cannot watch cgroup directories; unknown ids fall back to walks");
                reg.scan();
            }
        }
        reg
    })
}

/// The cgroup of a BPF cgroup id (`bpf_get_current_cgroup_id()`,
/// `bpf_skb_cgroup_id()`): a kernfs id of the v2 hierarchy.
pub fn resolve_cgroup_id(id: u64) -> Option<Arc<CgroupInfo>> {
    let reg = global();
    let h = reg.mounts.hierarchies.iter().position(Hierarchy::is_v2)?;
    reg.resolve(h, id)
}

/// The cgroup of a memory cgroup kernfs id (`memcg->css.cgroup->kn->id`):
/// the v1 memory hierarchy when mounted, else v2.
pub fn resolve_memcg_id(id: u64) -> Option<Arc<CgroupInfo>> {
    resolve_controller_id("memory", id)
}

/// The cgroup of kernfs id `id` in the hierarchy of v1 `controller` (v2
/// when that controller has no v1 hierarchy).
pub fn resolve_controller_id(controller: &str, id: u64) -> Option<Arc<CgroupInfo>> {
    let reg = global();
    let h = reg
        .mounts
        .hierarchies
        .iter()
        .position(|h| h.has(controller))
        .or_else(|| reg.mounts.hierarchies.iter().position(Hierarchy::is_v2))?;
    reg.resolve(h, id)
}

/// The cgroup of a task (see [`Registry::resolve_pid`]); `None` when the
/// task is gone.
pub fn resolve_pid(pid: u32) -> Option<Arc<CgroupInfo>> {
    global().resolve_pid(pid)
}

/// What kotel knows about containers, for `GET /containers`.
pub fn snapshot_json() -> serde_json::Value {
    global().snapshot_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f0c6d1c59fdb0e0a9c3b0e1e5b2c3d4a5f6e7d8c9b0a1f2e3d4c5b6a7980123";

    fn fake_mounts(root: &Path) -> Mounts {
        Mounts {
            hierarchies: vec![
                Hierarchy {
                    mount_point: root.join("unified"),
                    root: "/".into(),
                    controllers: vec![],
                    number: 0,
                },
                Hierarchy {
                    mount_point: root.join("memory"),
                    root: "/".into(),
                    controllers: vec!["memory".into()],
                    number: 4,
                },
            ],
        }
    }

    #[test]
    fn insert_lookup_remove() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(fake_mounts(dir.path()), vec![0, 1], 100);
        let a = reg.insert(0, 10, &format!("/docker/{ID}"), 5);
        assert_eq!(reg.get(0, 10).unwrap().path, a.path);
        assert!(reg.get(1, 10).is_none(), "ids are per hierarchy");
        assert_eq!(reg.get_path(0, &format!("/docker/{ID}")).unwrap().id, 10);
        let attrs = a.attributes();
        assert_eq!(
            kotel_pipelines::attr(&attrs, "container.id").and_then(|v| v.as_str()),
            Some(ID)
        );
        assert_eq!(
            kotel_pipelines::attr(&attrs, "container.runtime.name").and_then(|v| v.as_str()),
            Some("docker")
        );
        assert_eq!(a.proc_cgroup_line(), format!("0::/docker/{ID}"));
        let m = reg.insert(1, 10, "/system.slice/sshd.service", 5);
        assert_eq!(m.proc_cgroup_line(), "4:memory:/system.slice/sshd.service");
        assert_eq!(
            kotel_pipelines::attr(&m.attributes(), "systemd.unit").and_then(|v| v.as_str()),
            Some("sshd.service")
        );
        reg.insert(0, 11, &format!("/docker/{ID}/child"), 5);
        assert_eq!(reg.containers().len(), 1);
        reg.remove_path(0, &format!("/docker/{ID}"));
        assert!(reg.get(0, 10).is_none() && reg.get(0, 11).is_none());
        assert!(reg.get(1, 10).is_some());
        assert_eq!(reg.stats().removed, 2);
        // Same name, new inode: the old id is forgotten.
        reg.insert(1, 12, "/system.slice/sshd.service", 6);
        assert!(reg.get(1, 10).is_none());
        assert_eq!(
            reg.get_path(1, "/system.slice/sshd.service").unwrap().id,
            12
        );
    }

    #[test]
    fn bounded_lru_keeps_containers() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(fake_mounts(dir.path()), vec![0], 64);
        let c = reg.insert(0, 1, &format!("/docker/{ID}"), 0);
        for i in 0..200u64 {
            reg.insert(0, 100 + i, &format!("/plain/{i}"), 0);
            // Keep one plain entry hot.
            reg.get(0, 100);
        }
        let s = reg.stats();
        assert!(s.entries <= 64, "{s:?}");
        assert!(s.evicted >= 200 - 64, "{s:?}");
        assert!(reg.get(0, c.id).is_some(), "container evicted first");
        assert!(reg.get(0, 100).is_some(), "hot entry evicted");
        assert!(reg.get(0, 101).is_none());
    }

    #[test]
    fn scan_resolve_and_prune_on_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let m = fake_mounts(dir.path());
        let docker = m.hierarchies[0]
            .mount_point
            .join(format!("system.slice/docker-{ID}.scope"));
        std::fs::create_dir_all(&docker).unwrap();
        std::fs::create_dir_all(m.hierarchies[1].mount_point.join("kotel")).unwrap();
        let reg = Registry::new(m, vec![0, 1], 100);
        reg.scan();
        let ino = std::fs::metadata(&docker).unwrap().ino();
        let c = reg.get(0, ino).unwrap();
        assert_eq!(&*c.path, format!("/system.slice/docker-{ID}.scope"));
        assert!(c.created > 0);
        assert_eq!(reg.get_path(0, "/").unwrap().path.as_ref(), "/");
        // A directory made after the scan is found by a miss walk.
        let late = dir.path().join("unified/late");
        std::fs::create_dir(&late).unwrap();
        let late_ino = std::fs::metadata(&late).unwrap().ino();
        assert_eq!(&*reg.resolve(0, late_ino).unwrap().path, "/late");
        // Removed directories go on prune.
        std::fs::remove_dir(&late).unwrap();
        reg.prune();
        assert!(reg.get(0, late_ino).is_none());
        assert!(reg.get(0, ino).is_some());
        // /proc/<pid>/cgroup text: the container line wins.
        let text = format!("4:memory:/kotel\n0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(reg.resolve_proc_cgroup(&text).unwrap().id, ino);
        let text = "4:memory:/kotel\n0::/\n";
        assert_eq!(&*reg.resolve_proc_cgroup(text).unwrap().path, "/kotel");
        let json = reg.snapshot_json();
        assert_eq!(json["containers"][0]["container.id"], ID);
        assert_eq!(json["containers"][0]["cgroups"]["v2"]["id"], ino);
    }

    #[test]
    fn resolves_own_process() {
        // Every task has a cgroup; this test process too.
        let reg = global();
        let me = reg.resolve_pid(std::process::id()).expect("own cgroup");
        assert!(me.path.starts_with('/'));
        assert!(resolve_pid(u32::MAX).is_none());
        let v = snapshot_json();
        assert!(v["hierarchies"].as_array().is_some_and(|a| !a.is_empty()));
    }
}
