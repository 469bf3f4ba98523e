//! `filesystem`: space, inodes and the read-only flag of mounted
//! filesystems, from `/proc/self/mountinfo` and `statvfs(2)`.
//!
//! The mount table is parsed only when it changes: the collector keeps a
//! descriptor on `/proc/self/mountinfo` and polls it for `POLLPRI`, which
//! the kernel raises after any mount or unmount in the namespace. Each
//! cycle then costs one `poll` plus one `statvfs` per selected mount.
//!
//! A mount point with several mounts stacked on it reports the top one (the
//! one `statvfs` sees). `statvfs` on a hung network filesystem blocks: keep
//! such mounts out with `exclude_types` or `exclude` if that can happen.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use kotel_pipelines::{KeyValue, Metric, MetricData, Number, NumberPoint};
use serde::{Deserialize, Serialize};

use super::disk::{Filter, dropped_metric, metric, point, to_i64};
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode, spec::default_true,
};
use crate::procfs::{self, ProcFile};

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Filesystem types with no space of their own to report.
const PSEUDO_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup2?",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fuse\\.lxcfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
];

/// Mount points of kernel interfaces and of container runtimes' per-container
/// mounts (those repeat the host filesystem once per container).
const DEFAULT_EXCLUDE: &[&str] = &[
    "/(proc|sys)(/.*)?",
    "/var/lib/(docker|containers|kubelet)/.+",
    "/run/(containerd|docker|netns|k3s)(/.*)?",
    "/snap/.+",
];

/// Series one mount produces: usage ×3, limit, inodes ×2, readonly.
const SERIES_PER_MOUNT: u64 = 7;

pub struct Filesystem;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Mount points to report (whole-path regexes); empty = every mount.
    pub include: Vec<String>,
    /// Mount points never reported; wins over `include`.
    pub exclude: Vec<String>,
    /// Filesystem types to report (whole-name regexes); empty = every type.
    pub include_types: Vec<String>,
    /// Filesystem types never reported; default: pseudo filesystems.
    pub exclude_types: Vec<String>,
    /// Most mounts reported per collection (0 = no limit); the series of the
    /// rest are counted in `linux.collector.series.dropped`.
    pub max_mounts: usize,
}

impl Default for Config {
    fn default() -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Self {
            enabled: true,
            interval: None,
            include: Vec::new(),
            exclude: owned(DEFAULT_EXCLUDE),
            include_types: Vec::new(),
            exclude_types: owned(PSEUDO_TYPES),
            max_mounts: 256,
        }
    }
}

crate::common_settings!(Config);

impl CollectorSpec for Filesystem {
    const NAME: &'static str = "filesystem";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str =
        "Filesystem space, inodes and read-only flag per mount (/proc/self/mountinfo, statvfs)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        crate::framework::spec::probe_path(MOUNTINFO)
    }

    fn build(
        config: &Config,
        _host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let collector = FilesystemCollector::new(Path::new(MOUNTINFO), config)?;
        Ok(Instance::metrics(
            config.interval,
            default_interval,
            collector,
        ))
    }
}

/// One mount as listed in mountinfo.
#[derive(Debug, Clone, PartialEq)]
struct Mount {
    mountpoint: String,
    device: String,
    fstype: String,
}

/// Undo mountinfo's octal escapes (`\040` space, `\011` tab, `\012`, `\134`).
fn unescape(field: &[u8]) -> String {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && i + 3 < field.len()
            && field[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = field[i + 1..i + 4]
                .iter()
                .fold(0u32, |a, b| a * 8 + u32::from(b - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
fn parse_line(line: &[u8]) -> Option<Mount> {
    let mut f = procfs::fields(line);
    let mountpoint = f.nth(4)?;
    // Skip mount options and the optional fields up to the "-" separator.
    f.by_ref().find(|x| *x == b"-")?;
    let fstype = f.next()?;
    let device = f.next()?;
    Some(Mount {
        mountpoint: unescape(mountpoint),
        device: unescape(device),
        fstype: String::from_utf8_lossy(fstype).into_owned(),
    })
}

/// A selected mount, ready to `statvfs`.
#[derive(Debug)]
struct Target {
    path: CString,
    attrs: Vec<KeyValue>,
}

struct Selector {
    mounts: Filter,
    types: Filter,
    max_mounts: usize,
}

impl Selector {
    /// Selected mounts in mount-table order, top mount per mount point;
    /// and the number of mounts left out by the cap.
    fn select(&self, buf: &[u8]) -> (Vec<Target>, u64) {
        let mut all: Vec<Mount> = procfs::lines(buf).filter_map(parse_line).collect();
        // Later entries are mounted on top of earlier ones at the same point.
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(all.len());
        for (i, m) in all.iter().enumerate() {
            last.insert(m.mountpoint.as_str(), i);
        }
        let keep: Vec<bool> = (0..all.len())
            .map(|i| last.get(all[i].mountpoint.as_str()) == Some(&i))
            .collect();
        let mut keep = keep.into_iter();
        all.retain(|_| keep.next().unwrap_or(false));

        let mut targets = Vec::new();
        let mut capped = 0u64;
        for m in all {
            if !self.types.matches(&m.fstype) || !self.mounts.matches(&m.mountpoint) {
                continue;
            }
            if self.max_mounts > 0 && targets.len() >= self.max_mounts {
                capped += 1;
                continue;
            }
            let Ok(path) = CString::new(m.mountpoint.as_bytes()) else {
                continue;
            };
            targets.push(Target {
                path,
                attrs: vec![
                    KeyValue::new("system.device", m.device),
                    KeyValue::new("system.filesystem.mountpoint", m.mountpoint),
                    KeyValue::new("system.filesystem.type", m.fstype),
                ],
            });
        }
        (targets, capped)
    }
}

/// Byte and inode figures of one filesystem.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Usage {
    total: u64,
    free_root: u64,
    available: u64,
    inodes: u64,
    inodes_free: u64,
    readonly: bool,
}

fn statvfs(path: &CString) -> std::io::Result<Usage> {
    // SAFETY: `path` is NUL-terminated; `st` is plain data filled by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    let frsize = if st.f_frsize > 0 {
        st.f_frsize
    } else {
        st.f_bsize
    } as u64;
    #[allow(clippy::unnecessary_cast)]
    Ok(Usage {
        total: (st.f_blocks as u64).saturating_mul(frsize),
        free_root: (st.f_bfree as u64).saturating_mul(frsize),
        available: (st.f_bavail as u64).saturating_mul(frsize),
        inodes: st.f_files as u64,
        inodes_free: st.f_ffree as u64,
        readonly: st.f_flag & libc::ST_RDONLY != 0,
    })
}

struct FilesystemCollector {
    file: ProcFile,
    /// A second descriptor on the mount table, only for `poll`.
    watch: File,
    selector: Selector,
    targets: Vec<Target>,
    capped: u64,
    fresh: bool,
}

impl FilesystemCollector {
    fn new(path: &Path, config: &Config) -> anyhow::Result<Self> {
        let mounts = Filter::new(Filesystem::NAME, &config.include, &config.exclude)?;
        let types = Filter::new(
            Filesystem::NAME,
            &config.include_types,
            &config.exclude_types,
        )?;
        Ok(Self {
            file: ProcFile::open(path)?,
            watch: File::open(path)?,
            selector: Selector {
                mounts,
                types,
                max_mounts: config.max_mounts,
            },
            targets: Vec::new(),
            capped: 0,
            fresh: true,
        })
    }

    /// Whether the mount table changed since the last poll.
    fn changed(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.watch.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        // On error, re-read rather than miss a change.
        n < 0 || pfd.revents & (libc::POLLPRI | libc::POLLERR) != 0
    }
}

impl MetricsCollector for FilesystemCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        if self.changed() || self.fresh {
            let buf = self.file.read()?;
            (self.targets, self.capped) = self.selector.select(buf);
            self.fresh = false;
        }
        let n = self.targets.len();
        let mut usage = Vec::with_capacity(3 * n);
        let mut limit = Vec::with_capacity(n);
        let mut inodes = Vec::with_capacity(2 * n);
        let mut readonly = Vec::with_capacity(n);
        for t in &self.targets {
            // Unmounted since the last table read, or not accessible to us.
            let Ok(u) = statvfs(&t.path) else {
                continue;
            };
            let with = |key: &'static str, value: &'static str| {
                let mut a = t.attrs.clone();
                a.push(KeyValue::new(key, value));
                a
            };
            let int = |v: u64| Number::Int(to_i64(v));
            let state = "system.filesystem.state";
            usage.push(point(
                with(state, "used"),
                0,
                int(u.total.saturating_sub(u.free_root)),
            ));
            usage.push(point(with(state, "free"), 0, int(u.available)));
            usage.push(point(
                with(state, "reserved"),
                0,
                int(u.free_root.saturating_sub(u.available)),
            ));
            limit.push(point(t.attrs.clone(), 0, int(u.total)));
            inodes.push(point(
                with("linux.filesystem.inode.state", "used"),
                0,
                int(u.inodes.saturating_sub(u.inodes_free)),
            ));
            inodes.push(point(
                with("linux.filesystem.inode.state", "free"),
                0,
                int(u.inodes_free),
            ));
            readonly.push(point(
                t.attrs.clone(),
                0,
                Number::Int(i64::from(u.readonly)),
            ));
        }
        let gauge = |name, description, unit, points: Vec<NumberPoint>| {
            metric(name, description, unit, MetricData::Gauge(points))
        };
        out.push(gauge(
            "system.filesystem.usage",
            "Filesystem space: used, free (available to unprivileged users) and reserved (for root)",
            "By",
            usage,
        ));
        out.push(gauge(
            "system.filesystem.limit",
            "Filesystem size",
            "By",
            limit,
        ));
        out.push(gauge(
            "linux.filesystem.inodes",
            "Inodes in use and free",
            "{inode}",
            inodes,
        ));
        out.push(gauge(
            "linux.filesystem.readonly",
            "1 when the mount is read-only (mount or superblock flag), else 0",
            "{mount}",
            readonly,
        ));
        out.push(dropped_metric(
            Filesystem::NAME,
            self.capped * SERIES_PER_MOUNT,
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kotel_pipelines::attr;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/host")
            .join(name)
    }

    fn selector(config: &Config) -> Selector {
        Selector {
            mounts: Filter::new("t", &config.include, &config.exclude).unwrap(),
            types: Filter::new("t", &config.include_types, &config.exclude_types).unwrap(),
            max_mounts: config.max_mounts,
        }
    }

    fn s<'a>(t: &'a Target, key: &str) -> &'a str {
        attr(&t.attrs, key).and_then(|v| v.as_str()).unwrap()
    }

    #[test]
    fn parses_lines_and_escapes() {
        let m = parse_line(
            b"36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!(m.mountpoint, "/mnt two");
        assert_eq!(
            (m.fstype.as_str(), m.device.as_str()),
            ("ext3", "/dev/root")
        );
        assert_eq!(unescape(b"a\\011b\\134c\\0"), "a\tb\\c\\0");
        assert!(parse_line(b"36 35 98:0 / /x rw no-separator ext4").is_none());
        assert!(parse_line(b"short").is_none());
    }

    #[test]
    fn default_selection_on_machine_capture() {
        let buf = std::fs::read(fixture("mountinfo")).unwrap();
        let (targets, capped) = selector(&Config::default()).select(&buf);
        let points: Vec<&str> = targets
            .iter()
            .map(|t| s(t, "system.filesystem.mountpoint"))
            .collect();
        // proc, sysfs, devtmpfs, devpts, cgroup, tracefs and /sys/* are out;
        // /dev/shm is mounted twice and reported once.
        assert_eq!(
            points,
            vec!["/", "/mnt/sandboxing/model_tools_env/v1/python", "/dev/shm"]
        );
        assert_eq!(capped, 0);
        let root = &targets[0];
        assert_eq!(s(root, "system.device"), "/dev/vda");
        assert_eq!(s(root, "system.filesystem.type"), "ext4");
        assert_eq!(root.path.as_bytes(), b"/");
    }

    #[test]
    fn default_excludes_runtime_and_netns_mounts() {
        let table = b"27 1 254:0 / / rw - ext4 /dev/vda rw\n\
            50 27 254:0 /run/netns /run/netns rw shared:5 - ext4 /dev/vda rw\n\
            51 50 0:4 net:[4026532] /run/netns/t1 rw shared:6 - nsfs nsfs rw\n\
            52 27 0:60 / /var/lib/docker/overlay2/abc/merged rw - overlay overlay rw\n\
            53 27 0:61 / /run/user/0 rw - tmpfs tmpfs rw\n";
        let (targets, _) = selector(&Config::default()).select(table);
        let points: Vec<&str> = targets
            .iter()
            .map(|t| s(t, "system.filesystem.mountpoint"))
            .collect();
        assert_eq!(points, vec!["/", "/run/user/0"]);
    }

    #[test]
    fn filters_and_cap() {
        let buf = std::fs::read(fixture("mountinfo")).unwrap();
        let only_cgroups = Config {
            include_types: vec!["cgroup.*".into()],
            exclude_types: vec![],
            exclude: vec![".*/systemd".into()],
            ..Config::default()
        };
        let (targets, _) = selector(&only_cgroups).select(&buf);
        assert_eq!(targets.len(), 9);
        let capped = Config {
            include: vec!["/".into(), "/dev/.*".into()],
            exclude: vec![],
            exclude_types: vec![],
            max_mounts: 2,
            ..Config::default()
        };
        let (targets, capped) = selector(&capped).select(&buf);
        // "/", /dev/pts and /dev/shm (the top mount of each) → 3 selected;
        // /dev itself does not match "/dev/.*".
        assert_eq!(targets.len(), 2);
        assert_eq!(capped, 1);
    }

    #[test]
    fn collects_statvfs_of_real_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("mountinfo");
        std::fs::write(
            &table,
            "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
             99 27 0:99 / /does/not/exist rw - ext4 /dev/gone rw\n",
        )
        .unwrap();
        let mut c = FilesystemCollector::new(&table, &Config::default()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        let names: Vec<&str> = out.iter().map(|m| m.name.as_ref()).collect();
        assert_eq!(
            names,
            vec![
                "system.filesystem.usage",
                "system.filesystem.limit",
                "linux.filesystem.inodes",
                "linux.filesystem.readonly",
                "linux.collector.series.dropped"
            ]
        );
        let MetricData::Gauge(usage) = &out[0].data else {
            panic!()
        };
        // Only "/" could be stat'ed.
        assert_eq!(usage.len(), 3);
        let MetricData::Gauge(limit) = &out[1].data else {
            panic!()
        };
        let total: i64 = usage
            .iter()
            .map(|p| match p.value {
                Number::Int(v) => v,
                Number::Double(_) => panic!(),
            })
            .sum();
        assert_eq!(Number::Int(total), limit[0].value);
        // A regular file never signals POLLPRI: the table is not re-read.
        assert!(!c.changed());
    }

    #[test]
    fn invalid_regex() {
        let bad = Config {
            exclude_types: vec!["[".into()],
            ..Config::default()
        };
        let err = FilesystemCollector::new(&fixture("mountinfo"), &bad)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("filesystem: invalid exclude regex"));
    }
}
