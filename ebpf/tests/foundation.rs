//! Loads the real dropwatch object into the running kernel (root needed; a
//! load failure fails the test) and checks the shared runtime against it.

use kotel_ebpf::{Hook, LoadOptions, loader, maps, objects};

#[test]
fn drop_reasons_from_btf() {
    assert_eq!(kotel_ebpf::dropreason::name(3), "NO_SOCKET");
    assert_eq!(kotel_ebpf::dropreason::name(2), "NOT_SPECIFIED");
}

#[test]
fn preflight_and_symbols() {
    kotel_ebpf::preflight::check(&kotel_ebpf::preflight::Requirements {
        tracepoints: vec![("skb", "kfree_skb")],
        btf_tracepoints: vec!["netif_receive_skb"],
        task_iter: true,
    })
    .expect("preflight");
    let err = kotel_ebpf::preflight::check_tracepoint("skb", "no_such_tp").unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
    let k = kotel_ebpf::ksyms::get();
    assert!(!k.is_empty());
}

#[test]
fn dropwatch_counts_udp_to_closed_port() {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // A port nobody listens on: bind, note, close.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = LoadOptions::new()
        .global("filter_port", port)
        .global("event_rate", 0u64);
    let hooks = [Hook::TracePoint {
        program: "kotel_kfree_skb",
        category: "skb",
        name: "kfree_skb",
    }];
    let loaded = loader::load("dropwatch", objects::DROPWATCH, &opts, &hooks).expect("load");
    loaded.require_all().expect("attach");
    let before: u64 = maps::percpu_array_sums(&loaded.bpf, "drop_counts").unwrap()[3];
    for _ in 0..50 {
        sock.send_to(b"x", ("127.0.0.1", port)).unwrap();
    }
    let after: u64 = maps::percpu_array_sums(&loaded.bpf, "drop_counts").unwrap()[3];
    assert!(after - before >= 50, "{before} -> {after}");
    assert_eq!(maps::lost_counts(&loaded.bpf).unwrap(), [0, 0]);
}
