//! Follow cgroup creation and removal with inotify: every directory of the
//! indexed hierarchies carries an `IN_CREATE | IN_DELETE` watch, so a new
//! container cgroup is in the [`Registry`] a few milliseconds after its
//! `mkdir`, and a removed one leaves it on `rmdir`.
//!
//! The watcher is one thread blocked in `poll(2)` on the inotify descriptor
//! (250 ms timeout, to notice a stop request). An event-queue overflow
//! rescans and prunes. If the watch limit (`fs.inotify.max_user_watches`)
//! is reached, deeper directories are still found by the registry's
//! miss walks.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use super::{MAX_DEPTH, Registry};

const MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_ONLYDIR
    | libc::IN_DONT_FOLLOW;

/// A running watcher; stops (and joins its thread) when dropped.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Watch every indexed hierarchy of `registry`, indexing what exists now
    /// (the initial scan happens here, before this returns).
    pub fn start(registry: Arc<Registry>) -> io::Result<Self> {
        // SAFETY: inotify_init1 has no memory arguments.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut state = State {
            fd,
            registry,
            wds: HashMap::new(),
            limit_logged: false,
        };
        state.add_all();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kotel-cgroups".into())
            .spawn(move || state.run(&flag))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct State {
    fd: OwnedFd,
    registry: Arc<Registry>,
    /// Watch descriptor → (hierarchy, directory).
    wds: HashMap<i32, (usize, PathBuf)>,
    limit_logged: bool,
}

impl State {
    fn add_all(&mut self) {
        let indexed = self.registry.indexed().to_vec();
        for h in indexed {
            let root = self.registry.mounts().hierarchies[h].mount_point.clone();
            self.add_tree(h, &root, 0);
        }
    }

    /// Watch `dir` and everything below it, indexing each directory. The
    /// watch goes on before the listing, so a child made in between is seen
    /// twice (harmless) rather than never.
    fn add_tree(&mut self, h: usize, dir: &Path, depth: usize) {
        let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: valid fd and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), MASK) };
        if wd >= 0 {
            self.wds.insert(wd, (h, dir.to_path_buf()));
        } else {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) || e.raw_os_error() == Some(libc::ENOTDIR) {
                return;
            }
            if !self.limit_logged {
                self.limit_logged = true;
                tracing::warn!(dir = %dir.display(), error = %e, "cgroups: cannot add inotify watch; raise fs.inotify.max_user_watches");
            }
        }
        if self.registry.insert_dir(h, dir).is_none() {
            return;
        }
        if depth >= MAX_DEPTH {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                self.add_tree(h, &e.path(), depth + 1);
            }
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        // u64 alignment for inotify_event.
        let mut buf = vec![0u64; 8192];
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, 250) };
            if r <= 0 {
                continue;
            }
            let bytes = buf.len() * 8;
            // SAFETY: buf is valid for `bytes` bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), bytes) };
            if n <= 0 {
                continue;
            }
            // SAFETY: reinterpret the u64 buffer as bytes, within what read filled.
            let data = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
            let events = parse_events(data);
            for ev in events {
                self.handle(ev);
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        if ev.mask & libc::IN_Q_OVERFLOW != 0 {
            tracing::debug!("cgroups: inotify queue overflow; rescanning");
            self.add_all();
            self.registry.prune();
            return;
        }
        if ev.mask & libc::IN_IGNORED != 0 {
            self.wds.remove(&ev.wd);
            return;
        }
        if ev.mask & libc::IN_ISDIR == 0 || ev.name.is_empty() {
            return;
        }
        let Some((h, parent)) = self.wds.get(&ev.wd).cloned() else {
            return;
        };
        let dir = parent.join(OsStr::from_bytes(&ev.name));
        if ev.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
            self.add_tree(h, &dir, 0);
        } else if ev.mask & (libc::IN_DELETE | libc::IN_MOVED_FROM) != 0 {
            self.registry.remove_dir(h, &dir);
        }
    }
}

#[derive(Debug, PartialEq)]
struct Event {
    wd: i32,
    mask: u32,
    name: Vec<u8>,
}

/// Split a buffer of `struct inotify_event`s.
fn parse_events(data: &[u8]) -> Vec<Event> {
    const HEADER: usize = 16;
    let mut out = Vec::new();
    let mut off = 0;
    while off + HEADER <= data.len() {
        let word = |i: usize| {
            let b: [u8; 4] = data[off + i..off + i + 4].try_into().unwrap_or_default();
            u32::from_ne_bytes(b)
        };
        let (wd, mask, len) = (word(0) as i32, word(4), word(12) as usize);
        let end = (off + HEADER + len).min(data.len());
        let raw = &data[off + HEADER..end];
        let name = raw.split(|&b| b == 0).next().unwrap_or(&[]).to_vec();
        out.push(Event { wd, mask, name });
        off = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::{Hierarchy, Mounts};
    use std::time::{Duration, Instant};

    fn wait_for(mut f: impl FnMut() -> bool) -> Option<Duration> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            if f() {
                return Some(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }

    #[test]
    fn parses_event_buffer() {
        let mut b = Vec::new();
        for (wd, mask, name) in [
            (1i32, libc::IN_CREATE | libc::IN_ISDIR, &b"abc"[..]),
            (2, libc::IN_IGNORED, b""),
        ] {
            let len = if name.is_empty() { 0 } else { 16 };
            b.extend_from_slice(&wd.to_ne_bytes());
            b.extend_from_slice(&mask.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            b.extend_from_slice(&(len as u32).to_ne_bytes());
            let mut n = name.to_vec();
            n.resize(len, 0);
            b.extend_from_slice(&n);
        }
        let ev = parse_events(&b);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].name, b"abc");
        assert_eq!(
            ev[1],
            Event {
                wd: 2,
                mask: libc::IN_IGNORED,
                name: vec![]
            }
        );
    }

    #[test]
    fn follows_a_plain_directory_tree() {
        // Same code path as cgroupfs: mkdir/rmdir raise IN_CREATE/IN_DELETE.
        let dir = tempfile::tempdir().unwrap();
        let mounts = Mounts {
            hierarchies: vec![Hierarchy {
                mount_point: dir.path().to_path_buf(),
                root: "/".into(),
                controllers: vec![],
                number: 0,
            }],
        };
        let reg = Arc::new(Registry::new(mounts, vec![0], 1000));
        std::fs::create_dir(dir.path().join("before")).unwrap();
        let w = Watcher::start(reg.clone()).unwrap();
        assert!(reg.get_path(0, "/before").is_some());
        let id = "ab".repeat(32);
        let nested = dir.path().join(format!("a/b/docker-{id}.scope"));
        std::fs::create_dir_all(&nested).unwrap();
        let path = format!("/a/b/docker-{id}.scope");
        assert!(wait_for(|| reg.get_path(0, &path).is_some()).is_some());
        assert_eq!(reg.containers().len(), 1);
        std::fs::remove_dir(&nested).unwrap();
        assert!(wait_for(|| reg.get_path(0, &path).is_none()).is_some());
        std::fs::remove_dir_all(dir.path().join("a")).unwrap();
        assert!(wait_for(|| reg.get_path(0, "/a").is_none()).is_some());
        drop(w);
    }
}
