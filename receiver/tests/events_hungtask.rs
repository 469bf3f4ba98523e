//! hungtask against the real kernel (root): an extending O_DIRECT write to a
//! file on an ext4 loop device, throttled to 4 KiB/s by the blkio controller,
//! holds the inode lock; a second writer (`sh -c 'echo x >> f'`) then waits
//! for that lock in D state (block-IO waits themselves wake every timeout/2
//! and are never reported). With `kernel.hung_task_timeout_secs` lowered to
//! 1 s khungtaskd reports the writer. Sysctls, throttle, cgroup, mount and
//! loop device are restored.

mod events_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use events_support::*;
use kotel_pipelines::{Value, attr};
use kotel_receiver::events::hungtask::{Config, Hungtask};

const TIMEOUT: &str = "/proc/sys/kernel/hung_task_timeout_secs";
const WARNINGS: &str = "/proc/sys/kernel/hung_task_warnings";

struct Cleanup {
    timeout: String,
    warnings: String,
    cgroup: PathBuf,
    mnt: PathBuf,
    mounted: bool,
    loopdev: Option<String>,
    devnum: Option<String>,
    backing: PathBuf,
    children: Vec<std::process::Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(d) = &self.devnum {
            // Lifting the limit lets the queued write complete.
            let _ = std::fs::write(
                self.cgroup.join("blkio.throttle.write_bps_device"),
                format!("{d} 0"),
            );
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::write(TIMEOUT, &self.timeout);
        let _ = std::fs::write(WARNINGS, &self.warnings);
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mnt).status();
        }
        let _ = std::fs::remove_dir(&self.mnt);
        let _ = std::fs::remove_dir(&self.cgroup);
        if let Some(l) = &self.loopdev {
            let _ = Command::new("losetup").arg("-d").arg(l).status();
        }
        let _ = std::fs::remove_file(&self.backing);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_direct_write_is_reported_with_dstate_stacks() {
    let mut run = run::<Hungtask>(&Config::default());
    let id = std::process::id();
    let mut c = Cleanup {
        timeout: std::fs::read_to_string(TIMEOUT).unwrap().trim().to_string(),
        warnings: std::fs::read_to_string(WARNINGS)
            .unwrap()
            .trim()
            .to_string(),
        cgroup: Path::new("/sys/fs/cgroup/blkio").join(format!("kotel-test-hung-{id}")),
        mnt: Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kotel-hung-{id}.mnt")),
        mounted: false,
        loopdev: None,
        devnum: None,
        backing: Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kotel-hung-{id}.img")),
        children: Vec::new(),
    };
    std::fs::write(&c.backing, vec![0u8; 32 << 20]).unwrap();
    assert!(
        Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&c.backing)
            .status()
            .unwrap()
            .success()
    );
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&c.backing)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    c.loopdev = Some(dev.clone());
    let name = Path::new(&dev)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let devnum = std::fs::read_to_string(format!("/sys/block/{name}/dev"))
        .unwrap()
        .trim()
        .to_string();
    c.devnum = Some(devnum.clone());
    std::fs::create_dir(&c.mnt).unwrap();
    assert!(
        Command::new("mount")
            .arg(&dev)
            .arg(&c.mnt)
            .status()
            .unwrap()
            .success()
    );
    c.mounted = true;
    std::fs::create_dir(&c.cgroup).unwrap();
    std::fs::write(
        c.cgroup.join("blkio.throttle.write_bps_device"),
        format!("{devnum} 4096"),
    )
    .unwrap();
    std::fs::write(TIMEOUT, "1").unwrap();
    std::fs::write(WARNINGS, "10").unwrap();

    let file = c.mnt.join("f");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec dd if=/dev/zero of={} bs=64k count=1 oflag=direct status=none",
        c.cgroup.display(),
        file.display()
    );
    c.children
        .push(Command::new("sh").arg("-c").arg(&script).spawn().unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writer = Command::new("sh")
        .arg("-c")
        .arg(format!("echo x >> {}", file.display()))
        .spawn()
        .unwrap();
    let pid = writer.id() as i64;
    c.children.push(writer);

    let recs = run
        .capture
        .wait_for(1, Duration::from_secs(15), |r| {
            int(r, "process.pid") == Some(pid)
        })
        .await;
    assert!(
        !recs.is_empty(),
        "hung task report for the blocked writer (pid {pid})"
    );
    let r = &recs[0];
    assert_eq!(r.event_name, "linux.hung_task");
    assert_eq!(str_attr(r, "process.executable.name"), Some("sh"));
    let Some(Value::Array(stack)) = attr(&r.attributes, "linux.kernel.stack") else {
        panic!("stack")
    };
    assert!(!stack.is_empty());
    // The kernel's own report line, from the kernel log.
    let Some(Value::Array(log)) = attr(&r.attributes, "linux.kernel.log") else {
        panic!("kernel log report: {:?}", r.attributes)
    };
    let first = log[0].as_str().unwrap_or_default();
    assert!(
        first.contains(&format!(":{pid} blocked for more than")),
        "{log:?}"
    );
    assert!(
        str_attr(r, "linux.cgroup.path").is_some(),
        "cgroup attribution from the cgroup model"
    );
    assert!(int(r, "linux.hung_task.dstate_task_count").unwrap() >= 1);
    let Some(Value::Array(groups)) = attr(&r.attributes, "linux.hung_task.dstate_stacks") else {
        panic!("groups")
    };
    let writer_group = groups.iter().any(|g| {
        let Value::Map(g) = g else { return false };
        matches!(attr(g, "pids"), Some(Value::Array(p)) if p.contains(&Value::Int(pid)))
    });
    assert!(
        writer_group,
        "the writer is among the grouped D-state tasks: {groups:?}"
    );

    let m = run.collect();
    assert!(sum_value(&m, "linux.hung_task.reports", &[]) >= 1);
    drop(c);
    run.stop().await;
}
