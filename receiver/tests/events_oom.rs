//! oom against the real kernel (root, cgroup v1 memory controller): a
//! process in a 64 MiB memory cgroup (`tail /dev/zero`, which buffers an
//! endless line) grows until the OOM killer kills it.

mod events_support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use events_support::*;
use kotel_pipelines::{Value, attr};
use kotel_receiver::events::oom::{Config, Oom};

fn memory_root() -> PathBuf {
    let (v2, mem) = kotel_receiver::events::cgroup::mounts();
    mem.or(v2).expect("a memory cgroup hierarchy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_in_memory_cgroup() {
    let mut run = run::<Oom>(&Config::default());
    let root = memory_root();
    let name = format!("kotel-test-oom-{}", std::process::id());
    let cg = CgroupDir::create(root.join(&name));
    let dir = cg.0.clone();
    let v1 = dir.join("memory.limit_in_bytes").exists();
    if v1 {
        std::fs::write(dir.join("memory.limit_in_bytes"), "67108864").unwrap();
        let _ = std::fs::write(dir.join("memory.swappiness"), "0");
    } else {
        std::fs::write(dir.join("memory.max"), "67108864").unwrap();
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
    }
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec tail /dev/zero",
        dir.display()
    );
    let child = Command::new("sh").arg("-c").arg(&script).spawn().unwrap();
    let pid = child.id() as i64;
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the allocation must be killed");

    let recs = run
        .capture
        .wait_for(1, Duration::from_secs(5), |r| {
            int(r, "process.pid") == Some(pid)
        })
        .await;
    drop(cg);
    assert_eq!(recs.len(), 1, "one OOM kill record for pid {pid}");
    let r = &recs[0];
    assert_eq!(r.event_name, "linux.oom_kill");
    assert_eq!(str_attr(r, "process.executable.name"), Some("tail"));
    assert_eq!(
        str_attr(r, "linux.oom.memcg.path"),
        Some(format!("/{name}").as_str())
    );
    assert_eq!(int(r, "linux.oom.memcg.limit_bytes"), Some(64 << 20));
    assert!(int(r, "linux.oom.memcg.usage_bytes").unwrap() > 60 << 20);
    assert!(int(r, "linux.oom.victim.anon_rss_bytes").unwrap() > 32 << 20);
    let Some(Value::Map(mi)) = attr(&r.attributes, "linux.meminfo") else {
        panic!("meminfo")
    };
    assert!(attr(mi, "MemTotal").is_some() && attr(mi, "MemAvailable").is_some());
    let Some(Value::Map(ev)) = attr(&r.attributes, "linux.oom.memcg.events") else {
        panic!("memcg events")
    };
    assert!(!ev.is_empty());
    let Some(Value::Array(stack)) = attr(&r.attributes, "linux.kernel.stack") else {
        panic!("stack")
    };
    assert!(
        stack
            .iter()
            .any(|f| f.as_str().is_some_and(|s| s.contains("oom"))),
        "{stack:?}"
    );

    let m = run.collect();
    assert!(sum_value(&m, "linux.oom.kills", &[]) >= 1);
    run.stop().await;
}
