//! dropwatch against the real kernel (root): UDP datagrams to a closed
//! loopback port are dropped with NO_SOCKET by `__udp4_lib_rcv`.

mod events_support;

use std::net::UdpSocket;
use std::time::Duration;

use events_support::*;
use kotel_receiver::events::dropwatch::{Config, Dropwatch};

/// A loopback UDP port nobody listens on.
fn closed_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn send(n: usize, port: u16) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..n {
        s.send_to(b"kotel", ("127.0.0.1", port)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_to_closed_port_gives_no_socket_records_and_counts() {
    let port = closed_port();
    let config = Config {
        port,
        max_events_per_second: 0,
        stacks_per_second: 1000,
        ..Config::default()
    };
    let mut run = run::<Dropwatch>(&config);
    let before = sum_value(
        &run.collect(),
        "linux.net.packet.drops",
        &[("reason", "NO_SOCKET")],
    );

    const N: usize = 200;
    send(N, port);

    let recs = run
        .capture
        .wait_for(N, Duration::from_secs(5), |r| {
            int(r, "destination.port") == Some(port as i64)
        })
        .await;
    assert_eq!(recs.len(), N, "one record per datagram");
    let me = std::process::id() as i64;
    for r in &recs {
        assert_eq!(r.event_name, "linux.packet_drop");
        assert_eq!(str_attr(r, "linux.skb.drop_reason"), Some("NO_SOCKET"));
        assert_eq!(str_attr(r, "network.transport"), Some("udp"));
        assert_eq!(str_attr(r, "network.type"), Some("ipv4"));
        assert_eq!(str_attr(r, "source.address"), Some("127.0.0.1"));
        assert_eq!(str_attr(r, "destination.address"), Some("127.0.0.1"));
        assert_eq!(str_attr(r, "network.interface.name"), Some("lo"));
        assert!(int(r, "linux.netns.inode").unwrap() > 0);
        let loc = str_attr(r, "linux.skb.drop_location").unwrap();
        assert!(
            loc.contains("udp") && loc.contains("+0x"),
            "drop location {loc}"
        );
        // The record's time is the kernel event's, converted to wall clock.
        assert!(r.time <= r.observed_time && r.observed_time - r.time < 5_000_000_000);
    }
    // Loopback delivery runs in the sender's context (softirq on local_bh_enable).
    assert!(
        recs.iter().any(|r| int(r, "process.pid") == Some(me)),
        "some drops carry the test's pid"
    );
    // Rate-limited stacks (1000/s here) name the UDP receive path.
    let stack = recs
        .iter()
        .find_map(|r| kotel_pipelines::attr(&r.attributes, "linux.kernel.stack").cloned());
    let Some(kotel_pipelines::Value::Array(frames)) = stack else {
        panic!("no stack captured")
    };
    assert!(
        frames
            .iter()
            .any(|f| f.as_str().is_some_and(|s| s.starts_with("__udp4_lib_rcv+"))),
        "{frames:?}"
    );

    let metrics = run.collect();
    let after = sum_value(
        &metrics,
        "linux.net.packet.drops",
        &[("reason", "NO_SOCKET")],
    );
    assert!(
        after - before >= N as i64,
        "NO_SOCKET counter {before} -> {after}"
    );
    assert_eq!(
        sum_value(
            &metrics,
            "kotel.ebpf.events.lost",
            &[("collector", "dropwatch")]
        ),
        0
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_events_are_counted_when_ring_buffer_floods() {
    // Smallest ring buffer (one page) and no reader while flooding: every
    // event past the first few dozen is lost with reason ringbuf_full.
    let port = closed_port();
    let config = Config {
        port,
        max_events_per_second: 0,
        ring_buffer_bytes: 4096,
        ..Config::default()
    };
    let (collector, metrics) = build::<Dropwatch>(&config);
    const N: usize = 1000;
    send(N, port);
    let mut run = start(collector, metrics);
    let recs = run
        .capture
        .wait_for(N, Duration::from_secs(2), |r| {
            int(r, "destination.port") == Some(port as i64)
        })
        .await;
    let m = run.collect();
    let full = sum_value(
        &m,
        "kotel.ebpf.events.lost",
        &[("collector", "dropwatch"), ("reason", "ringbuf_full")],
    );
    assert!(
        !recs.is_empty() && recs.len() < 100,
        "{} records fit",
        recs.len()
    );
    assert_eq!(
        recs.len() as i64 + full,
        N as i64,
        "every datagram is either delivered or counted lost"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_counts_lost_events() {
    let port = closed_port();
    let config = Config {
        port,
        max_events_per_second: 10,
        ..Config::default()
    };
    let mut run = run::<Dropwatch>(&config);
    const N: usize = 500;
    send(N, port);
    let recs = run
        .capture
        .wait_for(N, Duration::from_secs(1), |r| {
            int(r, "destination.port") == Some(port as i64)
        })
        .await;
    let m = run.collect();
    let limited = sum_value(
        &m,
        "kotel.ebpf.events.lost",
        &[("collector", "dropwatch"), ("reason", "rate_limited")],
    );
    // Burst of 10, refilled at 10/s while sending: well under 100 get through.
    assert!(
        recs.len() >= 10 && recs.len() < 100,
        "{} records",
        recs.len()
    );
    assert_eq!(recs.len() as i64 + limited, N as i64);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_drops_carry_ipv6_addresses() {
    let port = UdpSocket::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = Config {
        port,
        protocol: Some("udp".into()),
        max_events_per_second: 0,
        ..Config::default()
    };
    let run = run::<Dropwatch>(&config);
    let s = UdpSocket::bind("[::1]:0").unwrap();
    for _ in 0..10 {
        s.send_to(b"kotel", ("::1", port)).unwrap();
    }
    let recs = run
        .capture
        .wait_for(10, Duration::from_secs(5), |r| {
            int(r, "destination.port") == Some(port as i64)
        })
        .await;
    assert_eq!(recs.len(), 10);
    for r in &recs {
        assert_eq!(str_attr(r, "linux.skb.drop_reason"), Some("NO_SOCKET"));
        assert_eq!(str_attr(r, "network.type"), Some("ipv6"));
        assert_eq!(str_attr(r, "source.address"), Some("::1"));
        assert_eq!(str_attr(r, "destination.address"), Some("::1"));
        assert_eq!(str_attr(r, "linux.skb.protocol"), Some("0x86dd"));
    }
    run.stop().await;
}

/// An nftables table that drops UDP to one port; removed on drop.
struct NftDrop(String);

impl NftDrop {
    fn new(port: u16) -> Self {
        let table = format!("kotel_test_{}", std::process::id());
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} input {{ type filter hook input priority 0; policy accept; }}\n\
             add rule inet {table} input udp dport {port} drop\n"
        );
        let out = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(script.as_bytes())?;
                c.wait_with_output()
            })
            .expect("nft (apt-get install -y nftables)");
        assert!(out.status.success(), "nft failed");
        NftDrop(table)
    }
}

impl Drop for NftDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.0])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_drop_rule_gives_netfilter_reason() {
    // A port with a listener: without the rule these datagrams would be delivered.
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = rx.local_addr().unwrap().port();
    let config = Config {
        port,
        max_events_per_second: 0,
        stacks_per_second: 100,
        ..Config::default()
    };
    let mut run = run::<Dropwatch>(&config);
    let before = sum_value(
        &run.collect(),
        "linux.net.packet.drops",
        &[("reason", "NETFILTER_DROP")],
    );
    let rule = NftDrop::new(port);
    send(20, port);
    let recs = run
        .capture
        .wait_for(20, Duration::from_secs(5), |r| {
            int(r, "destination.port") == Some(port as i64)
        })
        .await;
    drop(rule);
    assert_eq!(recs.len(), 20);
    for r in &recs {
        assert_eq!(str_attr(r, "linux.skb.drop_reason"), Some("NETFILTER_DROP"));
        let loc = str_attr(r, "linux.skb.drop_location").unwrap();
        // nft_do_chain on 6.18 (nf_hook_slow on older kernels).
        assert!(loc.starts_with("nf"), "drop location {loc}");
    }
    let after = sum_value(
        &run.collect(),
        "linux.net.packet.drops",
        &[("reason", "NETFILTER_DROP")],
    );
    assert!(
        after - before >= 20,
        "NETFILTER_DROP counter {before} -> {after}"
    );
    run.stop().await;
}
