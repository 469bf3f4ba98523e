//! Helpers shared by the autotracing live tests: test cgroups, a CPU burner
//! with a known function name, root checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "autotracing live tests need root (BPF, cgroups)"
    );
}

/// A cgroup created in several hierarchies under the same path; removed on
/// drop (its processes are killed first).
pub struct TestCgroup {
    pub path: String,
    pub dirs: Vec<PathBuf>,
    pub children: Vec<Child>,
}

impl TestCgroup {
    /// `hierarchies`: mount points such as `/sys/fs/cgroup/unified`.
    pub fn new(name: &str, hierarchies: &[&str]) -> Self {
        let path = format!("/{name}-{}", std::process::id());
        let mut dirs = Vec::new();
        for h in hierarchies {
            let d = Path::new(h).join(path.trim_start_matches('/'));
            if !d.exists() {
                std::fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            }
            dirs.push(d);
        }
        Self {
            path,
            dirs,
            children: Vec::new(),
        }
    }

    /// Move `pid` into the cgroup in every hierarchy.
    pub fn add(&self, pid: u32) {
        for d in &self.dirs {
            std::fs::write(d.join("cgroup.procs"), pid.to_string())
                .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", d.display()));
        }
    }

    /// Spawn `cmd` and move it into the cgroup.
    pub fn spawn(&mut self, cmd: &mut Command) -> u32 {
        let child = cmd.spawn().expect("spawning test workload");
        let pid = child.id();
        self.add(pid);
        self.children.push(child);
        pid
    }

    pub fn dir(&self, hierarchy: &str) -> PathBuf {
        Path::new(hierarchy).join(self.path.trim_start_matches('/'))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in &self.dirs {
            // Processes take a moment to leave after exit.
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

pub const BURNER_C: &str = r#"
#include <stdint.h>
#include <stdlib.h>
volatile uint64_t sink;
__attribute__((noinline)) void kotel_test_burn_cpu(uint64_t n) {
    uint64_t x = 1;
    for (uint64_t i = 0; i < n; i++) { x = x * 6364136223846793005ULL + i; }
    sink = x;
}
int main(int argc, char **argv) {
    for (;;) kotel_test_burn_cpu(10000000);
    return 0;
}
"#;

/// Compile the burner (`kotel_test_burn_cpu`) with frame pointers.
pub fn build_burner(dir: &Path) -> PathBuf {
    let src = dir.join("burner.c");
    let bin = dir.join("kotel-burner");
    std::fs::write(&src, BURNER_C).unwrap();
    let st = Command::new("gcc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("gcc (apt-get install gcc)");
    assert!(st.success(), "gcc failed");
    bin
}

/// A scratch folder for captures.
pub fn capture_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A loop device over a sparse file; detached on drop.
pub struct LoopDev {
    pub dev: String,
    pub majmin: String,
    _file: tempfile::NamedTempFile,
}

impl LoopDev {
    pub fn new(size_mb: u64) -> Self {
        let file = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
        file.as_file().set_len(size_mb << 20).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file.path())
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let name = dev.trim_start_matches("/dev/");
        let majmin = std::fs::read_to_string(format!("/sys/block/{name}/dev"))
            .unwrap()
            .trim()
            .to_string();
        Self {
            dev,
            majmin,
            _file: file,
        }
    }

    pub fn name(&self) -> &str {
        self.dev.trim_start_matches("/dev/")
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// `sh -c` that joins the cgroup's `dirs` before exec'ing `cmd`, so the
/// workload never runs outside it.
pub fn in_cgroup(dirs: &[PathBuf], cmd: &str) -> Command {
    let mut script = String::new();
    for d in dirs {
        script.push_str(&format!("echo $$ > {}/cgroup.procs && ", d.display()));
    }
    script.push_str("exec ");
    script.push_str(cmd);
    let mut c = Command::new("sh");
    c.args(["-c", &script]);
    c
}
