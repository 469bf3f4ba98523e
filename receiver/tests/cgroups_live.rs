//! Real cgroups with container-style names, made by the test under cgroup v1
//! and v2: the registry follows them within a second, attributes them to
//! the right container, and the `containers` collector reports the memory
//! and CPU of real processes moved into them, checked against the cgroups'
//! own files read by the test.
//!
//! Needs root and the hybrid layout of these machines (v1 controllers under
//! /sys/fs/cgroup/<controller>, v2 at /sys/fs/cgroup/unified); skips with a
//! message otherwise.

use std::io::Write;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kotel_pipelines::{Metric, MetricData, NumberPoint, attr};
use kotel_receiver::cgroups::{self, Hierarchy};
use kotel_receiver::framework::{CollectorSpec, HostContext, Instance, MetricsCollector};
use kotel_receiver::metrics::container::{Config, Containers};

const V2: &str = "/sys/fs/cgroup/unified";
const V1: &str = "/sys/fs/cgroup";

fn usable() -> bool {
    let ok = unsafe { libc::geteuid() } == 0
        && Path::new(V2).join("cgroup.procs").exists()
        && Path::new(V1).join("memory/cgroup.procs").exists()
        && Path::new(V1).join("cpu/cgroup.procs").exists();
    if !ok {
        eprintln!("skipping: needs root and v1 memory/cpu plus v2 at {V2}");
    }
    ok
}

/// A container id unique to this test run.
fn id(tag: u8) -> String {
    format!("{:02x}{:062x}", tag, std::process::id())
}

/// Directories made by a test, removed (children first) on drop, after the
/// processes in them are killed.
struct Cleanup {
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in self.dirs.iter().rev() {
            for _ in 0..50 {
                if !d.exists() || std::fs::remove_dir(d).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Cleanup {
    fn mkdir(&mut self, d: PathBuf) -> PathBuf {
        std::fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        self.dirs.push(d.clone());
        d
    }
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if f() {
            return Some(t.elapsed());
        }
        if t.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn index_of(pred: impl Fn(&Hierarchy) -> bool) -> usize {
    cgroups::global()
        .mounts()
        .hierarchies
        .iter()
        .position(pred)
        .expect("hierarchy")
}

#[test]
fn new_and_removed_container_cgroups_within_a_second() {
    if !usable() {
        return;
    }
    let reg = cgroups::global();
    let v2 = index_of(Hierarchy::is_v2);
    let mem = index_of(|h| h.has("memory"));
    let cpu = index_of(|h| h.has("cpu"));
    let parent = format!("kotel-test-{}", std::process::id());
    let docker = id(0xd0);
    let leaf = format!("docker-{docker}.scope");
    let path = format!("/{parent}/{leaf}");

    let mut cleanup = Cleanup {
        dirs: vec![],
        children: vec![],
    };
    let mut latencies = Vec::new();
    for (h, root) in [
        (v2, PathBuf::from(V2)),
        (mem, Path::new(V1).join("memory")),
        (cpu, Path::new(V1).join("cpu")),
    ] {
        cleanup.mkdir(root.join(&parent));
        let made = Instant::now();
        let dir = cleanup.mkdir(root.join(&parent).join(&leaf));
        wait_until(Duration::from_secs(1), || reg.get_path(h, &path).is_some())
            .unwrap_or_else(|| panic!("{} not attributed within 1 s", dir.display()));
        latencies.push(made.elapsed());
        let ino = std::fs::metadata(&dir).unwrap().ino();
        let info = reg.get(h, ino).expect("by kernfs id");
        assert_eq!(info.container_id(), Some(docker.as_str()));
        let attrs = info.attributes();
        assert_eq!(
            attr(&attrs, "container.runtime.name").and_then(|v| v.as_str()),
            Some("docker")
        );
        assert_eq!(
            attr(&attrs, "linux.cgroup.path").and_then(|v| v.as_str()),
            Some(path.as_str())
        );
    }
    // The public id resolvers: v2 ids and memcg ids (v1 memory here).
    let v2_ino = std::fs::metadata(Path::new(V2).join(&parent).join(&leaf))
        .unwrap()
        .ino();
    assert_eq!(
        cgroups::resolve_cgroup_id(v2_ino).and_then(|c| c.container_id().map(str::to_owned)),
        Some(docker.clone())
    );
    let mem_ino = std::fs::metadata(Path::new(V1).join("memory").join(&parent).join(&leaf))
        .unwrap()
        .ino();
    assert_eq!(
        cgroups::resolve_memcg_id(mem_ino).map(|c| c.path.to_string()),
        Some(path.clone())
    );
    let snapshot = cgroups::snapshot_json();
    let listed = snapshot["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["container.id"] == docker.as_str())
        .expect("container in /containers snapshot");
    assert_eq!(listed["cgroups"]["v2"]["path"], path.as_str());
    assert_eq!(listed["cgroups"]["memory"]["path"], path.as_str());

    // rmdir: gone from the registry within a second.
    let mut removal = Vec::new();
    for (h, root) in [
        (v2, PathBuf::from(V2)),
        (mem, Path::new(V1).join("memory")),
        (cpu, Path::new(V1).join("cpu")),
    ] {
        let removed = Instant::now();
        std::fs::remove_dir(root.join(&parent).join(&leaf)).unwrap();
        wait_until(Duration::from_secs(1), || reg.get_path(h, &path).is_none())
            .unwrap_or_else(|| panic!("{path} still known 1 s after rmdir"));
        removal.push(removed.elapsed());
    }
    assert!(
        reg.containers()
            .iter()
            .all(|c| c.container_id() != Some(&docker))
    );
    eprintln!("attribution latency (v2, v1 memory, v1 cpu): {latencies:?}; removal: {removal:?}");
}

fn host() -> HostContext {
    HostContext::detect(std::env::temp_dir()).expect("host context")
}

fn collector() -> Box<dyn MetricsCollector> {
    match Containers::build(&Config::default(), &host(), Duration::from_secs(15)).unwrap() {
        Instance::Metrics { collector, .. } => collector,
        _ => panic!("not a metrics collector"),
    }
}

fn points<'a>(out: &'a [Metric], name: &str, container: &str) -> Vec<&'a NumberPoint> {
    out.iter()
        .filter(|m| m.name == name)
        .flat_map(|m| match &m.data {
            MetricData::Gauge(p) | MetricData::Sum { points: p, .. } => p.iter(),
            MetricData::Histogram(_) => panic!("histogram"),
        })
        .filter(|p| attr(&p.attributes, "container.id").and_then(|v| v.as_str()) == Some(container))
        .collect()
}

fn cpu_seconds(out: &[Metric], container: &str) -> f64 {
    points(out, "container.cpu.time", container)
        .iter()
        .map(|p| p.value.as_f64())
        .sum()
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .unwrap()
}

/// A python3 child: on its first input line allocates and touches `mib`
/// MiB and prints "done"; on the second burns `burn` CPU seconds and prints
/// "done"; then sleeps.
fn worker(mib: u32, burn: f64) -> Child {
    let script = format!(
        "import sys,time\n\
         sys.stdin.readline()\n\
         b = bytearray(b'x' * ({mib} << 20))\n\
         print('done', flush=True)\n\
         sys.stdin.readline()\n\
         t = time.process_time()\n\
         while time.process_time() - t < {burn}:\n    pass\n\
         print('done', flush=True)\n\
         time.sleep(600)\n"
    );
    Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3")
}

fn go_and_wait(child: &mut Child) {
    let stdin = child.stdin.as_mut().unwrap();
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
    // One byte at a time: no read-ahead buffer outlives the call.
    let mut line = Vec::new();
    let out = child.stdout.as_mut().unwrap();
    let mut byte = [0u8; 1];
    while std::io::Read::read(out, &mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    assert_eq!(line, b"done");
}

fn v2_usage(dir: &Path) -> f64 {
    std::fs::read_to_string(dir.join("cpu.stat"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .unwrap()
        .parse::<f64>()
        .unwrap()
        / 1e6
}

#[test]
fn container_metrics_of_real_processes_v1_and_v2() {
    if !usable() {
        return;
    }
    let reg = cgroups::global();
    let parent = format!("kotel-test-{}-m", std::process::id());
    let v1_id = id(0xa1);
    let v2_id = id(0xb2);
    let v1_leaf = format!("docker/{v1_id}");
    let v2_leaf = format!("cri-containerd-{v2_id}.scope");
    let mut cleanup = Cleanup {
        dirs: vec![],
        children: vec![],
    };

    // v1: docker cgroupfs shape /<parent>/docker/<id> in memory, cpu, cpuacct.
    let mut v1_dirs = Vec::new();
    for ctrl in ["memory", "cpu", "cpuacct"] {
        let root = Path::new(V1).join(ctrl);
        cleanup.mkdir(root.join(&parent));
        cleanup.mkdir(root.join(&parent).join("docker"));
        v1_dirs.push(cleanup.mkdir(root.join(&parent).join(&v1_leaf)));
    }
    // v2: containerd systemd shape.
    cleanup.mkdir(Path::new(V2).join(&parent));
    let v2_dir = cleanup.mkdir(Path::new(V2).join(&parent).join(&v2_leaf));

    let mut a = worker(64, 1.0);
    let mut b = worker(1, 1.0);
    let (a_pid, b_pid) = (a.id(), b.id());
    for d in &v1_dirs {
        std::fs::write(d.join("cgroup.procs"), a_pid.to_string()).unwrap();
    }
    std::fs::write(v2_dir.join("cgroup.procs"), b_pid.to_string()).unwrap();
    go_and_wait(&mut a);
    go_and_wait(&mut b);

    // The tasks resolve to their containers.
    let ra = reg.resolve_pid(a_pid).unwrap();
    assert_eq!(ra.container_id(), Some(v1_id.as_str()));
    assert_eq!(
        ra.parsed.container.as_ref().unwrap().runtime,
        Some("docker")
    );
    let rb = reg.resolve_pid(b_pid).unwrap();
    assert_eq!(rb.container_id(), Some(v2_id.as_str()));
    assert_eq!(rb.proc_cgroup_line(), format!("0::/{parent}/{v2_leaf}"));

    let mut c = collector();
    let mut out = Vec::new();
    let seen = wait_until(Duration::from_secs(2), || {
        out.clear();
        c.collect(&mut out).unwrap();
        !points(&out, "container.cpu.time", &v1_id).is_empty()
            && !points(&out, "container.cpu.time", &v2_id).is_empty()
    });
    assert!(seen.is_some(), "both containers reported");
    let mem_file = v1_dirs[0].join("memory.usage_in_bytes");
    let cpuacct_file = v1_dirs[2].join("cpuacct.usage");

    // v1 memory: 64 MiB allocated and touched inside the cgroup.
    let mem = points(&out, "container.memory.usage", &v1_id);
    assert_eq!(mem.len(), 1);
    let exported = mem[0].value.as_f64();
    let independent = read_u64(&mem_file) as f64;
    let mib = 1024.0 * 1024.0;
    assert!(
        (exported - independent).abs() < 4.0 * mib,
        "exported {exported} vs memory.usage_in_bytes {independent}"
    );
    assert!(
        exported >= 64.0 * mib && exported < 96.0 * mib,
        "64 MiB allocated, {} MiB charged",
        exported / mib
    );
    let attrs = &mem[0].attributes;
    assert_eq!(
        attr(attrs, "container.runtime.name").and_then(|v| v.as_str()),
        Some("docker")
    );
    assert_eq!(
        attr(attrs, "linux.cgroup.path").and_then(|v| v.as_str()),
        Some(format!("/{parent}/{v1_leaf}").as_str())
    );
    let rss = points(&out, "linux.cgroup.memory.stat", &v1_id)
        .into_iter()
        .find(|p| {
            attr(&p.attributes, "linux.cgroup.memory.stat.key").and_then(|v| v.as_str())
                == Some("rss")
        })
        .expect("rss");
    assert!(rss.value.as_f64() >= 64.0 * mib);

    // The start time is the cgroup's creation, not boot.
    let start = points(&out, "container.cpu.time", &v1_id)[0].start_time;
    let ctime = std::fs::metadata(&v1_dirs[0]).unwrap().ctime() as u64 * 1_000_000_000;
    assert!(start.abs_diff(ctime) < 2_000_000_000, "{start} vs {ctime}");

    // CPU: burn 1 s in each; the exported growth matches the growth of the
    // cgroup's own counter (v1 cpuacct.usage, v2 cpu.stat usage_usec).
    let before = (
        cpu_seconds(&out, &v1_id),
        read_u64(&cpuacct_file) as f64 / 1e9,
        cpu_seconds(&out, &v2_id),
        v2_usage(&v2_dir),
    );
    go_and_wait(&mut a);
    go_and_wait(&mut b);
    out.clear();
    c.collect(&mut out).unwrap();
    let after = (
        cpu_seconds(&out, &v1_id),
        read_u64(&cpuacct_file) as f64 / 1e9,
        cpu_seconds(&out, &v2_id),
        v2_usage(&v2_dir),
    );
    for (what, exported, own) in [
        ("v1", after.0 - before.0, after.1 - before.1),
        ("v2", after.2 - before.2, after.3 - before.3),
    ] {
        assert!(exported >= 0.9, "{what}: burned 1 s, exported {exported}");
        assert!(
            (exported - own).abs() <= 0.05 * own + 0.02,
            "{what}: exported +{exported} s vs the cgroup's own +{own} s"
        );
    }
    let b_attrs = &points(&out, "container.cpu.time", &v2_id)[0].attributes;
    assert_eq!(
        attr(b_attrs, "container.runtime.name").and_then(|v| v.as_str()),
        Some("containerd")
    );
    // v2 pressure per cgroup.
    let psi = points(&out, "linux.pressure.stall.time", &v2_id);
    assert!(psi.len() >= 4, "cpu/memory/io some+full: {}", psi.len());

    for ch in [&mut a, &mut b] {
        let _ = ch.kill();
        let _ = ch.wait();
    }
    // Removal: once the cgroups are gone, their series stop.
    drop(cleanup);
    let gone = wait_until(Duration::from_secs(2), || {
        out.clear();
        c.collect(&mut out).unwrap();
        points(&out, "container.cpu.time", &v1_id).is_empty()
            && points(&out, "container.cpu.time", &v2_id).is_empty()
    });
    assert!(gone.is_some(), "series of removed cgroups still exported");
}
