//! memreclaim against the real kernel (root, memory cgroup): reading a
//! 128 MiB uncached file inside a 32 MiB memory cgroup fills its page cache
//! and forces memcg reclaim in the reader (clean pages: no OOM risk, unlike
//! dirty ones); with a zero threshold every reclaim is an event.

mod events_support;

use std::process::Command;
use std::time::Duration;

use events_support::*;
use kotel_receiver::events::memreclaim::{Config, Memreclaim};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcg_reclaim_from_page_cache_reads() {
    let config = Config {
        threshold: Duration::ZERO,
        max_events_per_second: 0,
        ..Config::default()
    };
    let mut run = run::<Memreclaim>(&config);
    let (v2, mem) = kotel_receiver::events::cgroup::mounts();
    let root = mem.or(v2).expect("memory cgroup hierarchy");
    let name = format!("kotel-test-reclaim-{}", std::process::id());
    let cg = CgroupDir::create(root.join(&name));
    let dir = cg.0.clone();
    let limit = if dir.join("memory.limit_in_bytes").exists() {
        "memory.limit_in_bytes"
    } else {
        "memory.max"
    };
    std::fs::write(dir.join(limit), "33554432").unwrap();
    // A file on a disk filesystem (not tmpfs, which could not be reclaimed
    // without swap), written and then evicted from the page cache.
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(tmp).unwrap();
    let file = tmp.join(format!("kotel-reclaim-{}.tmp", std::process::id()));
    {
        use std::os::fd::AsRawFd as _;
        let f = std::fs::File::create(&file).unwrap();
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..128 {
            std::io::Write::write_all(&mut &f, &chunk).unwrap();
        }
        f.sync_all().unwrap();
        // SAFETY: fadvise on an open fd.
        assert_eq!(
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) },
            0
        );
    }
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec cat {} > /dev/null",
        dir.display(),
        file.display()
    );
    let child = Command::new("sh").arg("-c").arg(&script).spawn().unwrap();
    let pid = child.id() as i64;
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success());

    let recs = run
        .capture
        .wait_for(1, Duration::from_secs(3), |r| {
            int(r, "process.pid") == Some(pid)
        })
        .await;
    drop(cg);
    assert!(!recs.is_empty(), "reclaim stalls of the reader (pid {pid})");
    let r = &recs[0];
    assert_eq!(r.event_name, "linux.memory.reclaim_stall");
    assert_eq!(str_attr(r, "linux.memory.reclaim.kind"), Some("memcg"));
    assert_eq!(str_attr(r, "process.executable.name"), Some("cat"));
    assert_eq!(
        str_attr(r, "linux.memory.cgroup.path"),
        Some(format!("/{name}").as_str())
    );
    assert!(
        str_attr(r, "linux.memory.reclaim.gfp_flags")
            .unwrap()
            .starts_with("0x")
    );
    assert!(int(r, "linux.memory.reclaim.duration_ns").unwrap() > 0);

    let m = run.collect();
    let (count, buckets) = hist_counts(&m, "linux.memory.reclaim.duration");
    assert!(
        count >= recs.len() as u64 && count == buckets,
        "{count} {buckets}"
    );
    run.stop().await;
}
