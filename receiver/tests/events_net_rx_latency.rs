//! net_rx_latency against the real kernel (root): a TCP receiver that does
//! not read for 300 ms makes the user-copy stage exceed its 115 ms threshold;
//! the other stages stay below theirs and fill the histograms.

mod events_support;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use events_support::*;
use kotel_receiver::events::net_rx_latency::{Config, NetRxLatency};

async fn stalled_reader(addr: &str) -> Vec<std::sync::Arc<kotel_pipelines::EventRecord>> {
    let mut run = run::<NetRxLatency>(&Config::default());
    // Receive timestamps are switched on through a deferred static key.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The kernel turns receive timestamps on from a work item; under load
    // that can take longer than the sleep above, and a segment received
    // before it carries no timestamp. A fresh connection per try.
    let mut recs = Vec::new();
    for _ in 0..3 {
        let listener = TcpListener::bind((addr, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect((addr, port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"kotel says hello").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"kotel says hello");
        recs = run
            .capture
            .wait_for(1, Duration::from_secs(3), |r| {
                int(r, "destination.port") == Some(port as i64)
                    && str_attr(r, "linux.net.rx.stage") == Some("usercopy")
            })
            .await;
        if !recs.is_empty() {
            break;
        }
    }
    let m = run.collect();
    let (count, buckets) = hist_counts(&m, "linux.net.rx.latency");
    assert!(count >= 3 && count == buckets, "{count}");
    run.stop().await;
    recs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_ipv6() {
    let recs = stalled_reader("::1").await;
    assert_eq!(recs.len(), 1, "one stalled segment");
    let r = &recs[0];
    assert_eq!(str_attr(r, "network.type"), Some("ipv6"));
    assert_eq!(str_attr(r, "source.address"), Some("::1"));
    assert!(int(r, "linux.net.rx.latency_ns").unwrap() >= 250_000_000);
    assert_eq!(int(r, "process.pid"), Some(std::process::id() as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_gives_usercopy_latency_event() {
    let mut run = run::<NetRxLatency>(&Config::default());
    // Receive timestamps are switched on through a deferred static key.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"kotel says hello").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut buf = [0u8; 64];
    let n = server.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"kotel says hello");

    let recs = run
        .capture
        .wait_for(1, Duration::from_secs(3), |r| {
            int(r, "destination.port") == Some(port as i64)
        })
        .await;
    assert_eq!(recs.len(), 1, "one stalled segment");
    let r = &recs[0];
    assert_eq!(r.event_name, "linux.net.rx_latency");
    assert_eq!(str_attr(r, "linux.net.rx.stage"), Some("usercopy"));
    let lat = int(r, "linux.net.rx.latency_ns").unwrap();
    assert!(
        (250_000_000..5_000_000_000).contains(&lat),
        "latency {lat} ns"
    );
    assert_eq!(int(r, "process.pid"), Some(std::process::id() as i64));
    assert_eq!(str_attr(r, "source.address"), Some("127.0.0.1"));
    assert_eq!(str_attr(r, "linux.tcp.state"), Some("ESTABLISHED"));
    assert_eq!(int(r, "linux.skb.len"), Some(16));

    let m = run.collect();
    let (count, buckets) = hist_counts(&m, "linux.net.rx.latency");
    assert!(count >= 3 && count == buckets, "{count}");
    run.stop().await;
}
