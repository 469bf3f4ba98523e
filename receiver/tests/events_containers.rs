//! Events carry the container of the task they are about (issue 6): a packet
//! drop caused by a process inside a containerd-shaped cgroup v2 scope, and an
//! OOM kill inside a docker-shaped cgroup v1 memory cgroup. Real cgroups,
//! real processes, real kernel events (root).

mod events_support;

use std::process::Command;
use std::time::Duration;

use events_support::*;
use kotel_receiver::events::dropwatch::{Config as DropConfig, Dropwatch};
use kotel_receiver::events::oom::{Config as OomConfig, Oom};

fn container_id(tag: u64) -> String {
    format!("{:016x}{:048x}", tag, u64::from(std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_from_a_container_process_names_the_container() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = run::<Dropwatch>(&DropConfig {
        port,
        max_events_per_second: 0,
        ..DropConfig::default()
    });
    let id = container_id(0xd0);
    let slice = CgroupDir::create(
        format!(
            "/sys/fs/cgroup/unified/kotel-test-ev-{}.slice",
            std::process::id()
        )
        .into(),
    );
    let scope = CgroupDir::create(slice.0.join(format!("cri-containerd-{id}.scope")));
    // The sender joins the scope first, then sends 20 datagrams to the closed port.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); [s.sendto(b'x', ('127.0.0.1', {port})) for _ in range(20)]\"",
        scope.0.display()
    );
    let status = Command::new("sh").arg("-c").arg(&script).status().unwrap();
    assert!(status.success());
    let recs = run
        .capture
        .wait_for(20, Duration::from_secs(5), |r| {
            int(r, "destination.port") == Some(port as i64)
        })
        .await;
    drop(scope);
    drop(slice);
    assert_eq!(recs.len(), 20);
    for r in &recs {
        assert_eq!(
            str_attr(r, "container.id"),
            Some(id.as_str()),
            "{:?}",
            r.attributes
        );
        assert_eq!(str_attr(r, "container.runtime.name"), Some("containerd"));
        assert!(
            str_attr(r, "process.linux.cgroup")
                .is_some_and(|c| c.starts_with("0::/") && c.ends_with(".scope"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_inside_a_container_names_the_container() {
    let run = run::<Oom>(&OomConfig::default());
    let id = container_id(0x00);
    let dir = CgroupDir::create(format!("/sys/fs/cgroup/memory/docker-{id}.scope").into());
    std::fs::write(dir.0.join("memory.limit_in_bytes"), "67108864").unwrap();
    let _ = std::fs::write(dir.0.join("memory.swappiness"), "0");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec tail /dev/zero",
        dir.0.display()
    );
    let child = Command::new("sh").arg("-c").arg(&script).spawn().unwrap();
    let pid = i64::from(child.id());
    assert!(
        !child.wait_with_output().unwrap().status.success(),
        "the allocation must be killed"
    );
    let recs = run
        .capture
        .wait_for(1, Duration::from_secs(5), |r| {
            int(r, "process.pid") == Some(pid)
        })
        .await;
    drop(dir);
    assert_eq!(recs.len(), 1);
    assert_eq!(
        str_attr(&recs[0], "container.id"),
        Some(id.as_str()),
        "{:?}",
        recs[0].attributes
    );
    assert_eq!(str_attr(&recs[0], "container.runtime.name"), Some("docker"));
}

/// A receive-path drop of a socket owned by a container process is the
/// container's, even though the kernel drops it in softirq context: here a
/// process in a containerd scope binds a UDP socket with a 1-byte receive
/// buffer, and datagrams from the (host) test process overflow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_buffer_drop_is_attributed_to_the_socket_owner() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = run::<Dropwatch>(&DropConfig {
        port,
        max_events_per_second: 0,
        ..DropConfig::default()
    });
    let id = container_id(0x50);
    let slice = CgroupDir::create(
        format!(
            "/sys/fs/cgroup/unified/kotel-test-sk-{}.slice",
            std::process::id()
        )
        .into(),
    );
    let scope = CgroupDir::create(slice.0.join(format!("cri-containerd-{id}.scope")));
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec python3 -c \"import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1); s.bind(('127.0.0.1', {port})); print('ready', flush=True); time.sleep(3)\"",
        scope.0.display()
    );
    let mut owner = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(owner.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..50 {
        sender.send_to(&[0u8; 1000], ("127.0.0.1", port)).unwrap();
    }
    let recs = run
        .capture
        .wait_for(10, Duration::from_secs(5), |r| {
            int(r, "destination.port") == Some(port as i64)
        })
        .await;
    let _ = owner.kill();
    let _ = owner.wait();
    drop(scope);
    drop(slice);
    assert!(
        recs.len() >= 10,
        "receive-buffer drops seen: {}",
        recs.len()
    );
    for r in &recs {
        assert_ne!(
            int(r, "process.pid"),
            Some(i64::from(owner.id())),
            "the dropping task is the sender, not the owner"
        );
        assert_eq!(
            str_attr(r, "container.id"),
            Some(id.as_str()),
            "{:?}",
            r.attributes
        );
    }
}
