//! Overhead figures on the real kernel (root). Prints, for the record:
//! - sendto() throughput of a UDP drop storm (closed loopback port) without
//!   and with dropwatch attached (default config: counters always, events
//!   rate-limited to 100/s), and the ratio;
//! - per-program BPF cost (kernel BPF stats: run_time_ns / run_cnt) of every
//!   kotel program while all event collectors are loaded;
//! - how many events/s the collector drains from the ring buffer (events
//!   unlimited, 16 MiB ring) and that every event is delivered or counted lost.
//!
//! Assertions are loose (shared CI machines are noisy); the numbers are the point.

mod events_support;

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use events_support::*;
use kotel_receiver::events::{dropwatch, hungtask, memreclaim, net_rx_latency, oom, softirq};

fn storm(port: u16, dur: Duration) -> u64 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        for _ in 0..256 {
            s.send_to(b"kotel", ("127.0.0.1", port)).unwrap();
        }
        n += 256;
    }
    n
}

fn closed_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tcp_pingpong(rounds: usize) {
    use std::io::{Read as _, Write as _};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut s, _) = l.accept().unwrap();
    let mut b = [0u8; 8];
    for _ in 0..rounds {
        c.write_all(b"ping").unwrap();
        s.read_exact(&mut b[..4]).unwrap();
        s.write_all(b"pong").unwrap();
        c.read_exact(&mut b[..4]).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overhead_figures() {
    let dur = Duration::from_secs(1);
    let port = closed_port();
    let _ = storm(port, Duration::from_millis(200)); // warm up
    let base = storm(port, dur);

    let stats = kotel_ebpf::loader::enable_stats().expect("BPF stats");
    let dw = run::<dropwatch::Dropwatch>(&dropwatch::Config::default());
    let with_dropwatch = storm(port, dur);
    println!(
        "UDP drop storm: {base} sends/s without, {with_dropwatch} sends/s with dropwatch (default config) attached (ratio {:.2})",
        with_dropwatch as f64 / base as f64
    );
    let mut all = vec![
        dw,
        run::<softirq::Softirq>(&softirq::Config::default()),
        run::<net_rx_latency::NetRxLatency>(&net_rx_latency::Config::default()),
        run::<memreclaim::Memreclaim>(&memreclaim::Config::default()),
        run::<oom::Oom>(&oom::Config::default()),
        run::<hungtask::Hungtask>(&hungtask::Config::default()),
    ];
    let with = storm(port, dur);
    tcp_pingpong(5000);
    let ratio = with as f64 / base as f64;
    println!("UDP drop storm: {with} sends/s with all BPF collectors loaded (ratio {ratio:.2})");
    // Every kotel program on the host (names are cut to 15 characters);
    // another kotel running at the same time would show up too.
    let mut progs: Vec<(String, u32, u64, u64)> = kotel_ebpf::aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let name = p.name_as_str()?.to_string();
            name.starts_with("kotel_")
                .then(|| (name, p.id(), p.run_time().as_nanos() as u64, p.run_count()))
        })
        .collect();
    progs.sort();
    for (name, id, ns, cnt) in &progs {
        println!(
            "  {name:<16} id {id:<6} {cnt:>9} runs {:>6} ns/run",
            if *cnt > 0 { ns / cnt } else { 0 }
        );
    }
    drop(stats);
    for r in all.drain(..) {
        r.stop().await;
    }
    assert!(
        ratio > 0.3,
        "the collectors must not collapse throughput: {ratio:.2}"
    );
    assert!(
        with_dropwatch as f64 / base as f64 > 0.5,
        "dropwatch alone costs little"
    );
    assert!(
        progs
            .iter()
            .any(|(n, _, _, c)| n == "kotel_kfree_skb" && *c > 0)
    );

    // Drain rate: every drop on our port becomes an event.
    let port = closed_port();
    let config = dropwatch::Config {
        port,
        max_events_per_second: 0,
        ring_buffer_bytes: 16 << 20,
        ..Default::default()
    };
    let mut run = run::<dropwatch::Dropwatch>(&config);
    let start = Instant::now();
    let sent = storm(port, dur);
    let recs = run
        .capture
        .wait_for(sent as usize, Duration::from_secs(5), |r| {
            int(r, "destination.port") == Some(port as i64)
        })
        .await;
    let secs = start.elapsed().as_secs_f64();
    let m = run.collect();
    let lost = sum_value(&m, "kotel.ebpf.events.lost", &[("collector", "dropwatch")]);
    println!(
        "dropwatch unlimited: {sent} drops in {:.2}s, {} events drained ({:.0}/s), {lost} counted lost",
        dur.as_secs_f64(),
        recs.len(),
        recs.len() as f64 / secs
    );
    assert_eq!(recs.len() as i64 + lost, sent as i64, "no silent loss");
    run.stop().await;
}
