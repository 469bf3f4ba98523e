//! cgroup filesystems mounted on this host, from `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted (`/sys/fs/cgroup/memory`).
    pub mount_point: PathBuf,
    /// The cgroup path of the mount's root (`/` unless a sub-tree is bind
    /// mounted, as inside a container without a cgroup namespace).
    pub root: String,
    /// v1 controllers (`cpu`, `cpuacct`, `name=systemd`); empty for v2.
    pub controllers: Vec<String>,
    /// The hierarchy number of `/proc/<pid>/cgroup` (0 for v2).
    pub number: u32,
}

impl Hierarchy {
    pub fn is_v2(&self) -> bool {
        self.controllers.is_empty()
    }

    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// The controllers as `/proc/<pid>/cgroup` prints them (`cpu,cpuacct`).
    pub fn controller_list(&self) -> String {
        self.controllers.join(",")
    }

    /// The directory of cgroup `path` (as `/proc/<pid>/cgroup` prints it).
    pub fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let rel = if self.root == "/" {
            path
        } else {
            path.strip_prefix(self.root.as_str())?
        };
        let rel = rel.trim_start_matches('/');
        Some(if rel.is_empty() {
            self.mount_point.clone()
        } else {
            self.mount_point.join(rel)
        })
    }

    /// The cgroup path of directory `dir` inside this mount.
    pub fn path_of(&self, dir: &Path) -> Option<String> {
        let rel = dir.strip_prefix(&self.mount_point).ok()?;
        let rel = rel.to_str()?;
        let base = self.root.trim_end_matches('/');
        Some(if rel.is_empty() {
            if base.is_empty() {
                "/".into()
            } else {
                base.into()
            }
        } else {
            format!("{base}/{rel}")
        })
    }
}

/// Every cgroup hierarchy, v1 controllers and the v2 unified one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mounts {
    pub hierarchies: Vec<Hierarchy>,
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Mounts {
    /// The mounts of this process, with v1 hierarchy numbers from `/proc/cgroups`.
    pub fn detect() -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let cgroups = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
        Self::parse(&mountinfo, &cgroups)
    }

    /// Parse `/proc/self/mountinfo` and `/proc/cgroups`. The first mount of
    /// each hierarchy wins (bind mounts of the same hierarchy repeat it).
    pub fn parse(mountinfo: &str, proc_cgroups: &str) -> Self {
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split_whitespace().collect();
            let mut post = post.split_whitespace();
            let (Some(fstype), Some(_source), Some(opts)) = (post.next(), post.next(), post.next())
            else {
                continue;
            };
            if pre.len() < 5 {
                continue;
            }
            let controllers: Vec<String> = match fstype {
                "cgroup2" => Vec::new(),
                "cgroup" => opts
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro" | "nosuid" | "nodev" | "noexec" | "relatime")
                            && !o.starts_with("release_agent=")
                            && !matches!(
                                *o,
                                "xattr" | "clone_children" | "noprefix" | "cpuset_v2_mode"
                            )
                    })
                    .map(str::to_owned)
                    .collect(),
                _ => continue,
            };
            if fstype == "cgroup" && controllers.is_empty() {
                continue;
            }
            if hierarchies.iter().any(|h| h.controllers == controllers) {
                continue;
            }
            let number = if controllers.is_empty() {
                0
            } else {
                proc_cgroups
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .find_map(|l| {
                        let mut f = l.split_whitespace();
                        let (name, hier) = (f.next()?, f.next()?.parse().ok()?);
                        controllers.iter().any(|c| c == name).then_some(hier)
                    })
                    .unwrap_or(0)
            };
            hierarchies.push(Hierarchy {
                mount_point: PathBuf::from(unescape(pre[4])),
                root: unescape(pre[3]),
                controllers,
                number,
            });
        }
        Self { hierarchies }
    }

    /// The unified (v2) hierarchy.
    pub fn v2(&self) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.is_v2())
    }

    /// The v1 hierarchy holding `controller`.
    pub fn v1(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.has(controller))
    }

    /// Index of the hierarchy a `/proc/<pid>/cgroup` controller list names.
    pub fn index_of_list(&self, list: &str) -> Option<usize> {
        if list.is_empty() {
            return self.hierarchies.iter().position(Hierarchy::is_v2);
        }
        self.hierarchies.iter().position(|h| {
            h.controllers.len() == list.split(',').count() && list.split(',').all(|c| h.has(c))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/cgroups")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn hybrid_host() {
        let m = Mounts::parse(&fixture("mountinfo.hybrid"), &fixture("proc_cgroups"));
        let v2 = m.v2().unwrap();
        assert_eq!(v2.mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(v2.number, 0);
        let mem = m.v1("memory").unwrap();
        assert_eq!(mem.mount_point, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(mem.number, 4);
        assert!(m.v1("name=systemd").is_some());
        assert_eq!(
            m.index_of_list(""),
            m.hierarchies.iter().position(|h| h.is_v2())
        );
        assert_eq!(
            m.hierarchies[m.index_of_list("memory").unwrap()].mount_point,
            Path::new("/sys/fs/cgroup/memory")
        );
        assert_eq!(m.hierarchies.len(), 10);
    }

    #[test]
    fn pure_v2_and_co_mounted_v1() {
        let m = Mounts::parse(
            "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
            "",
        );
        assert_eq!(m.hierarchies.len(), 1);
        assert_eq!(m.v2().unwrap().mount_point, Path::new("/sys/fs/cgroup"));
        assert!(m.v1("memory").is_none());

        let m = Mounts::parse(
            "33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
             34 25 0:30 / /sys/fs/cgroup/systemd rw shared:9 - cgroup cgroup rw,xattr,name=systemd\n\
             35 25 0:29 / /mnt/again rw - cgroup cgroup rw,cpu,cpuacct\n",
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t3\t90\t1\ncpuacct\t3\t90\t1\n",
        );
        assert_eq!(m.hierarchies.len(), 2);
        let cpu = m.v1("cpuacct").unwrap();
        assert_eq!(cpu.controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(cpu.number, 3);
        assert_eq!(cpu.controller_list(), "cpu,cpuacct");
        assert!(m.index_of_list("cpu,cpuacct").is_some());
        assert!(m.index_of_list("cpu").is_none());
        assert_eq!(
            m.v1("name=systemd").unwrap().controllers,
            vec!["name=systemd"]
        );
    }

    #[test]
    fn sub_tree_mount_and_escapes() {
        let m = Mounts::parse(
            "40 30 0:26 /docker/abc /sys/fs/cgroup\\040x rw - cgroup2 cgroup2 rw\n",
            "",
        );
        let h = m.v2().unwrap();
        assert_eq!(h.mount_point, Path::new("/sys/fs/cgroup x"));
        assert_eq!(h.root, "/docker/abc");
        assert_eq!(
            h.dir_of("/docker/abc/child").unwrap(),
            Path::new("/sys/fs/cgroup x/child")
        );
        assert_eq!(
            h.dir_of("/docker/abc").unwrap(),
            Path::new("/sys/fs/cgroup x")
        );
        assert_eq!(h.dir_of("/elsewhere"), None);
        assert_eq!(
            h.path_of(Path::new("/sys/fs/cgroup x/child")).unwrap(),
            "/docker/abc/child"
        );
        assert_eq!(
            h.path_of(Path::new("/sys/fs/cgroup x")).unwrap(),
            "/docker/abc"
        );
        let root = Hierarchy {
            mount_point: "/sys/fs/cgroup".into(),
            root: "/".into(),
            controllers: vec![],
            number: 0,
        };
        assert_eq!(root.path_of(Path::new("/sys/fs/cgroup")).unwrap(), "/");
        assert_eq!(
            root.path_of(Path::new("/sys/fs/cgroup/a/b")).unwrap(),
            "/a/b"
        );
        assert_eq!(root.dir_of("/").unwrap(), Path::new("/sys/fs/cgroup"));
    }
}
