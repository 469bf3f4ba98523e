//! Which cgroups the per-container detectors watch, and how a cgroup path
//! maps to a scope.
//!
//! A scope is a container (every cgroup the cgroup model in
//! [`crate::cgroups`] recognises as a container's own cgroup) or a cgroup
//! whose path matches one of the detector's `cgroups` regexes (for systemd
//! services, batch jobs and tests). Cgroup paths are the same in every
//! hierarchy (v1 controllers and v2), so a scope is identified by its path
//! and its files are looked up in whichever hierarchy has them.

use std::path::PathBuf;
use std::sync::Arc;

use kotel_pipelines::KeyValue;
use regex::Regex;

use crate::cgroups::{self, CgroupInfo, Hierarchy};

/// One watched cgroup.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Cooldown key and `linux.autotrace.scope`: the container id, or the
    /// cgroup path.
    pub key: String,
    /// Cgroup path as `/proc/<pid>/cgroup` prints it.
    pub path: String,
    /// `container.id`, `container.runtime.name`, `k8s.pod.*`,
    /// `linux.cgroup.path`.
    pub attributes: Vec<KeyValue>,
}

impl Scope {
    fn from_info(info: &CgroupInfo) -> Self {
        let key = info
            .container_id()
            .map(str::to_string)
            .unwrap_or_else(|| info.path.to_string());
        Self {
            key,
            path: info.path.to_string(),
            attributes: info.attributes(),
        }
    }

    fn from_path(path: &str) -> Self {
        Self {
            key: path.to_string(),
            path: path.to_string(),
            attributes: vec![KeyValue::new("linux.cgroup.path", path.to_string())],
        }
    }

    /// True when `path` is this scope's cgroup or one below it.
    pub fn contains(&self, path: &str) -> bool {
        path == self.path
            || (path.starts_with(self.path.as_str())
                && path.as_bytes().get(self.path.len()) == Some(&b'/'))
    }

    /// The directory of this cgroup in the v2 hierarchy, if it exists there.
    pub fn v2_dir(&self) -> Option<PathBuf> {
        let m = cgroups::global().mounts();
        let h = m.v2()?;
        h.dir_of(&self.path).filter(|d| d.is_dir())
    }

    /// The directory of this cgroup in the v1 hierarchy of `controller`.
    pub fn v1_dir(&self, controller: &str) -> Option<PathBuf> {
        let m = cgroups::global().mounts();
        let h = m.v1(controller)?;
        h.dir_of(&self.path).filter(|d| d.is_dir())
    }
}

/// The set of watched cgroups: containers plus cgroups matching `extra`.
#[derive(Debug, Clone)]
pub struct Scopes {
    extra: Vec<Regex>,
    containers: bool,
}

impl Scopes {
    /// `extra`: regexes over cgroup paths; `containers`: watch containers.
    pub fn new(extra: &[String], containers: bool) -> anyhow::Result<Self> {
        let extra = extra
            .iter()
            .map(|r| Regex::new(r).map_err(|e| anyhow::anyhow!("bad cgroups regex {r:?}: {e}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { extra, containers })
    }

    fn wanted(&self, info: &CgroupInfo) -> bool {
        (self.containers && info.is_container_root())
            || self.extra.iter().any(|r| r.is_match(&info.path))
    }

    /// Every watched cgroup now, one per path (deduplicated across
    /// hierarchies), sorted by path. Cgroups matching `extra` are also found
    /// in v1 hierarchies the cgroup model does not index, by a shallow walk.
    pub fn list(&self) -> Vec<Scope> {
        let reg = cgroups::global();
        let infos: Vec<Arc<CgroupInfo>> = reg.filter(|c| self.wanted(c));
        let mut out: Vec<Scope> = Vec::new();
        for info in infos {
            if !out.iter().any(|s| s.path == *info.path) {
                out.push(Scope::from_info(&info));
            }
        }
        if !self.extra.is_empty() {
            for h in &reg.mounts().hierarchies {
                self.walk_extra(h, &mut out);
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// Top two levels of a hierarchy, for cgroups matching `extra` that the
    /// cgroup model does not index (v1 blkio, cpuacct).
    fn walk_extra(&self, h: &Hierarchy, out: &mut Vec<Scope>) {
        let mut dirs = vec![h.mount_point.clone()];
        for _depth in 0..2 {
            let mut next = Vec::new();
            for d in &dirs {
                let Ok(rd) = std::fs::read_dir(d) else {
                    continue;
                };
                for e in rd.flatten() {
                    if !e.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    let p = e.path();
                    if let Some(path) = h.path_of(&p)
                        && self.extra.iter().any(|r| r.is_match(&path))
                        && !out.iter().any(|s| s.path == path)
                    {
                        out.push(Scope::from_path(&path));
                    }
                    next.push(p);
                }
            }
            dirs = next;
        }
    }

    /// The watched scope containing cgroup `path` (deepest match), if any.
    pub fn find<'a>(scopes: &'a [Scope], path: &str) -> Option<&'a Scope> {
        scopes
            .iter()
            .filter(|s| s.contains(path))
            .max_by_key(|s| s.path.len())
    }
}

/// Number of CPUs this host has online.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Bytes per page.
pub fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// Parse a cpuset list (`0-3,8,10-11`) into a CPU count.
pub fn cpuset_count(list: &str) -> usize {
    list.trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(part.trim().parse::<usize>().is_ok()),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_is_path_component_wise() {
        let s = Scope::from_path("/a/b");
        assert!(s.contains("/a/b"));
        assert!(s.contains("/a/b/c"));
        assert!(!s.contains("/a/bc"));
        assert!(!s.contains("/a"));
    }

    #[test]
    fn cpuset_lists() {
        assert_eq!(cpuset_count("0-3,8,10-11\n"), 7);
        assert_eq!(cpuset_count(""), 0);
        assert_eq!(cpuset_count("1"), 1);
    }
}
