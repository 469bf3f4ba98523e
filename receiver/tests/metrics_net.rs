//! Runs each network collector against the live kernel and checks it
//! against an independent reading taken by the test (procfs files, `tc`,
//! `ip`), around traffic, sockets, qdiscs and neighbours the test creates.
//! Needs root for the veth/netns/tc parts.

use std::net::{TcpListener, UdpSocket};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use kotel_pipelines::{Metric, MetricData, Number, NumberPoint, Value, attr};
use kotel_receiver::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector,
};
use kotel_receiver::metrics::net::{
    conntrack, neighbor, netdev, netstat, qdisc, sockstat, softnet,
};

/// The tests read host-wide counters: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn host() -> HostContext {
    HostContext::detect(std::env::temp_dir()).expect("host context")
}

fn build<S: CollectorSpec>(config: &S::Config) -> Box<dyn MetricsCollector> {
    assert_eq!(
        S::probe(config),
        Availability::Available,
        "{} unavailable",
        S::NAME
    );
    match S::build(config, &host(), Duration::from_secs(15)).expect("build") {
        Instance::Metrics { collector, .. } => collector,
        _ => panic!("{} is not a metrics collector", S::NAME),
    }
}

fn collect(c: &mut Box<dyn MetricsCollector>) -> Vec<Metric> {
    let mut out = Vec::new();
    c.collect(&mut out).expect("collect");
    for m in &out {
        assert!(!m.data.is_empty(), "{} has no points", m.name);
        assert!(
            !m.unit.is_empty() && !m.description.is_empty(),
            "{}",
            m.name
        );
    }
    out
}

fn find<'a>(out: &'a [Metric], name: &str) -> &'a Metric {
    out.iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

fn points(m: &Metric) -> &[NumberPoint] {
    match &m.data {
        MetricData::Gauge(p) | MetricData::Sum { points: p, .. } => p,
        MetricData::Histogram(_) => panic!("{} is a histogram", m.name),
    }
}

/// The value of the point of `m` carrying all of the `want` attributes.
fn value(m: &Metric, want: &[(&str, &str)]) -> Option<i64> {
    points(m).iter().find_map(|p| {
        let ok = want
            .iter()
            .all(|(k, v)| attr(&p.attributes, k).and_then(Value::as_str) == Some(*v));
        match (ok, p.value) {
            (true, Number::Int(v)) => Some(v),
            _ => None,
        }
    })
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn run(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Retry a check that reads host-wide counters other processes may move.
fn eventually(mut check: impl FnMut() -> Result<(), String>) {
    let mut last = String::new();
    for _ in 0..5 {
        match check() {
            Ok(()) => return,
            Err(e) => last = e,
        }
    }
    panic!("{last}");
}

fn within(what: &str, v: i64, lo: i64, hi: i64) -> Result<(), String> {
    if lo <= v && v <= hi {
        Ok(())
    } else {
        Err(format!("{what}: {v} not in [{lo}, {hi}]"))
    }
}

/// A veth pair: `<name>` here, its peer in a fresh network namespace, with
/// 198.18.<net>.1/30 and .2 (addresses that exist only inside this test).
struct Veth {
    name: String,
    netns: String,
    peer_ip: String,
}

impl Veth {
    fn new(tag: &str, net: u8) -> Self {
        let id = std::process::id() % 100_000;
        let v = Veth {
            name: format!("kt{tag}{id}"),
            netns: format!("kotel-{tag}-{id}"),
            peer_ip: format!("198.18.{net}.2"),
        };
        let (n, ns) = (&v.name, &v.netns);
        run(&format!(
            "ip netns add {ns} && ip link add {n} type veth peer name {n}p && ip link set {n}p netns {ns} && \
             ip addr add 198.18.{net}.1/30 dev {n} && ip link set {n} up && \
             ip -n {ns} addr add 198.18.{net}.2/30 dev {n}p && ip -n {ns} link set {n}p up && ip -n {ns} link set lo up"
        ));
        v
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// `/proc/net/dev` columns of `dev`.
fn dev_columns(dev: &str) -> Vec<i64> {
    read("/proc/net/dev")
        .lines()
        .find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name.trim() == dev).then(|| {
                rest.split_whitespace()
                    .map(|v| v.parse().unwrap())
                    .collect()
            })
        })
        .unwrap()
}

#[test]
fn netdev_counts_loopback_traffic() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = build::<netdev::Netdev>(&netdev::Config::default());
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = dev_columns("lo");
    for _ in 0..200 {
        tx.send_to(&[7u8; 1000], rx.local_addr().unwrap()).unwrap();
    }
    let out = collect(&mut c);
    let after = dev_columns("lo");
    let lo = |m: &str, d| {
        value(
            find(&out, m),
            &[
                ("network.interface.name", "lo"),
                ("network.io.direction", d),
            ],
        )
        .unwrap()
    };
    // 200 datagrams of 1000 bytes + 28 bytes of IP/UDP header each.
    within(
        "lo rx bytes",
        lo("system.network.io", "receive"),
        before[0] + 200 * 1028,
        after[0],
    )
    .unwrap();
    within(
        "lo tx packets",
        lo("system.network.packet.count", "transmit"),
        before[9] + 200,
        after[9],
    )
    .unwrap();
    within(
        "lo rx drops",
        lo("system.network.packet.dropped", "receive"),
        before[3],
        after[3],
    )
    .unwrap();
    let io = find(&out, "system.network.io");
    assert!(matches!(
        io.data,
        MetricData::Sum {
            monotonic: true,
            ..
        }
    ));
    let devices = read("/proc/net/dev").lines().skip(2).count();
    assert_eq!(points(io).len(), devices * 2);
    assert_eq!(points(io)[0].start_time, host().boot_time);
}

/// `Group:Field` of `/proc/net/snmp`.
fn snmp(group: &str, field: &str) -> i64 {
    let text = read("/proc/net/snmp");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{group}:")))
        .collect();
    let i = lines[0]
        .split_whitespace()
        .position(|f| f == field)
        .unwrap();
    lines[1].split_whitespace().nth(i).unwrap().parse().unwrap()
}

#[test]
fn netstat_counts_udp_to_closed_port() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = build::<netstat::Netstat>(&netstat::Config::default());
    // A port nobody listens on: bind, note it, close.
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = snmp("Udp", "NoPorts");
    for _ in 0..50 {
        let _ = tx.send_to(b"x", ("127.0.0.1", port));
    }
    let out = collect(&mut c);
    let after = snmp("Udp", "NoPorts");
    let v = value(
        find(&out, "linux.net.snmp.udp"),
        &[("linux.snmp.field", "NoPorts")],
    )
    .unwrap();
    within("Udp NoPorts", v, before + 50, after).unwrap();
    // Every field of every group is there.
    let fields = |path: &str| -> usize {
        let t = read(path);
        t.lines()
            .step_by(2)
            .map(|l| l.split_whitespace().count() - 1)
            .sum()
    };
    let snmp6 = read("/proc/net/snmp6").lines().count();
    let series: usize = out
        .iter()
        .filter(|m| m.name.starts_with("linux.net.snmp."))
        .map(|m| points(m).len())
        .sum();
    assert_eq!(
        series,
        fields("/proc/net/snmp") + fields("/proc/net/netstat") + snmp6
    );
    assert_eq!(
        value(find(&out, "linux.net.snmp.ip.default_ttl"), &[]),
        Some(snmp("Ip", "DefaultTTL"))
    );
    assert!(find(&out, "linux.net.snmp.ip6.octets").unit == "By");
}

/// `field` of protocol `label` in a sockstat file.
fn sockstat_field(path: &str, label: &str, field: &str) -> i64 {
    let text = read(path);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{label}:")))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    let i = f.iter().position(|x| *x == field).unwrap();
    f[i + 1].parse().unwrap()
}

#[test]
fn sockstat_counts_listeners_the_test_opens() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = build::<sockstat::Sockstat>(&sockstat::Config::default());
    let page = host().page_size as i64;
    let base = sockstat_field("/proc/net/sockstat", "TCP", "inuse");
    let v4: Vec<TcpListener> = (0..20)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let v6: Vec<TcpListener> = (0..5)
        .filter_map(|_| TcpListener::bind("[::1]:0").ok())
        .collect();
    eventually(|| {
        let r1 = sockstat_field("/proc/net/sockstat", "TCP", "inuse");
        let out = collect(&mut c);
        let r2 = sockstat_field("/proc/net/sockstat", "TCP", "inuse");
        let s = find(&out, "linux.net.sockets");
        let tcp = value(
            s,
            &[
                ("linux.socket.protocol", "tcp"),
                ("linux.socket.state", "in_use"),
            ],
        )
        .unwrap();
        within("TCP inuse", tcp, r1.min(r2), r1.max(r2))?;
        within("TCP inuse vs baseline", tcp, base + 20 - 5, i64::MAX)?;
        let tcp6 = value(
            s,
            &[
                ("linux.socket.protocol", "tcp6"),
                ("linux.socket.state", "in_use"),
            ],
        )
        .unwrap();
        within("TCP6 inuse", tcp6, v6.len() as i64, i64::MAX)?;
        let mem_pages = sockstat_field("/proc/net/sockstat", "TCP", "mem");
        let usage = value(find(&out, "linux.net.tcp.memory.usage"), &[]).unwrap();
        if usage % page != 0 {
            return Err(format!("tcp memory {usage} is not whole pages"));
        }
        within(
            "TCP mem pages",
            usage / page,
            0,
            mem_pages.max(usage / page),
        )
    });
    let out = collect(&mut c);
    let tcp_mem: Vec<i64> = read("/proc/sys/net/ipv4/tcp_mem")
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(
        value(find(&out, "linux.net.tcp.memory.limit"), &[]),
        Some(tcp_mem[2] * page)
    );
    let used = value(find(&out, "linux.net.sockets.used"), &[]).unwrap();
    assert!(used >= 25, "{used}");
    drop((v4, v6));
}

#[test]
fn softnet_matches_proc() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = build::<softnet::Softnet>(&softnet::Config::default());
    let rows = || -> Vec<Vec<i64>> {
        read("/proc/net/softnet_stat")
            .lines()
            .map(|l| {
                l.split_whitespace()
                    .map(|f| i64::from_str_radix(f, 16).unwrap())
                    .collect()
            })
            .collect()
    };
    let before = rows();
    let out = collect(&mut c);
    let after = rows();
    let processed = find(&out, "linux.net.softnet.processed");
    assert_eq!(points(processed).len(), before.len());
    for (b, a) in before.iter().zip(&after) {
        let cpu = if b.len() > 12 { b[12] } else { continue };
        let p = points(processed)
            .iter()
            .find(|p| attr(&p.attributes, "cpu.logical_number") == Some(&Value::Int(cpu)))
            .unwrap();
        let Number::Int(v) = p.value else { panic!() };
        within("processed", v, b[0], a[0]).unwrap();
    }
}

/// `tc -s -j qdisc show dev <dev>`: the root qdisc's counters.
fn tc_stats(dev: &str) -> serde_json::Value {
    let out = run(&format!("tc -s -j qdisc show dev {dev}"));
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|q| q["root"] == true)
        .unwrap()
        .clone()
}

#[test]
fn qdisc_drops_match_tc_on_a_tbf_the_test_installs() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let veth = Veth::new("q", 61);
    run(&format!(
        "tc qdisc add dev {} root handle 10: tbf rate 1mbit burst 2kb latency 1ms",
        veth.name
    ));
    let config = qdisc::Config {
        include: vec![veth.name.clone()],
        ..Default::default()
    };
    let mut c = build::<qdisc::Qdisc>(&config);
    let first = collect(&mut c);
    assert_eq!(
        points(find(&first, "linux.net.qdisc.io")).len(),
        1,
        "only the test device"
    );
    // 1 Mbit/s with a 2 KiB bucket: most of 2000 datagrams of 1200 bytes are dropped.
    let tx = UdpSocket::bind("0.0.0.0:0").unwrap();
    for _ in 0..2000 {
        let _ = tx.send_to(&[1u8; 1200], (veth.peer_ip.as_str(), 9));
    }
    std::thread::sleep(Duration::from_millis(300));
    eventually(|| {
        let t1 = tc_stats(&veth.name);
        let out = collect(&mut c);
        let t2 = tc_stats(&veth.name);
        if t1 != t2 {
            return Err("tc counters still moving".into());
        }
        let attrs = [
            ("network.interface.name", veth.name.as_str()),
            ("linux.qdisc.kind", "tbf"),
            ("linux.qdisc.handle", "10:"),
            ("linux.qdisc.parent", "root"),
        ];
        for (metric, key) in [
            ("linux.net.qdisc.io", "bytes"),
            ("linux.net.qdisc.packet.count", "packets"),
            ("linux.net.qdisc.packet.dropped", "drops"),
            ("linux.net.qdisc.packet.requeued", "requeues"),
            ("linux.net.qdisc.overlimits", "overlimits"),
            ("linux.net.qdisc.backlog", "backlog"),
            ("linux.net.qdisc.queue.length", "qlen"),
        ] {
            let got = value(find(&out, metric), &attrs)
                .ok_or(format!("{metric} has no point for the tbf"))?;
            let want = t1[key].as_i64().unwrap();
            if got != want {
                return Err(format!("{metric}: {got}, tc says {key} = {want}"));
            }
        }
        let drops = value(find(&out, "linux.net.qdisc.packet.dropped"), &attrs).unwrap();
        let sent = value(find(&out, "linux.net.qdisc.packet.count"), &attrs).unwrap();
        if drops < 1000 || sent < 1 {
            return Err(format!(
                "expected drops from the tbf: sent {sent}, dropped {drops}"
            ));
        }
        Ok(())
    });
    let out = collect(&mut c);
    let p = &points(find(&out, "linux.net.qdisc.io"))[0];
    assert!(p.start_time >= host().boot_time);
}

#[test]
fn neighbor_counts_static_entries_the_test_adds() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let veth = Veth::new("n", 62);
    let n = &veth.name;
    for i in 0..3 {
        run(&format!(
            "ip neigh add 198.18.62.{} lladdr 02:00:00:00:00:0{i} dev {n} nud permanent",
            10 + i
        ));
    }
    for i in 0..2 {
        run(&format!(
            "ip -6 neigh add fd00:6262::{} lladdr 02:00:00:00:01:0{i} dev {n} nud permanent",
            i + 1
        ));
    }
    let mut c = build::<neighbor::Neighbor>(&neighbor::Config {
        include: vec![n.clone()],
        ..Default::default()
    });
    let out = collect(&mut c);
    let e = find(&out, "linux.net.neighbor.entries");
    let arp = read("/proc/net/arp")
        .lines()
        .filter(|l| l.split_whitespace().last() == Some(n.as_str()))
        .count() as i64;
    assert_eq!(arp, 3);
    assert_eq!(
        value(
            e,
            &[("network.interface.name", n), ("network.type", "ipv4")]
        ),
        Some(arp)
    );
    let ndp = run(&format!("ip -6 neigh show dev {n}"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as i64;
    assert!(ndp >= 2, "{ndp}");
    assert_eq!(
        value(
            e,
            &[("network.interface.name", n), ("network.type", "ipv6")]
        ),
        Some(ndp)
    );
    assert!(
        points(e)
            .iter()
            .all(
                |p| attr(&p.attributes, "network.interface.name").and_then(Value::as_str)
                    == Some(n)
            )
    );
    let table = find(&out, "linux.net.neighbor.table.entries");
    assert!(value(table, &[("network.type", "ipv4")]).unwrap() >= 3);
    assert!(value(table, &[("network.type", "ipv6")]).unwrap() >= 2);
    let lookups = value(
        find(&out, "linux.net.neighbor.table.events"),
        &[
            ("network.type", "ipv4"),
            ("linux.neighbor.event", "lookups"),
        ],
    );
    assert!(lookups.is_some());
}

#[test]
fn conntrack_matches_sysctl() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = conntrack::Config::default();
    if conntrack::Conntrack::probe(&config) != Availability::Available {
        assert!(!std::path::Path::new("/proc/sys/net/netfilter/nf_conntrack_count").exists());
        eprintln!("nf_conntrack not loaded: collector reports unavailable");
        return;
    }
    let mut c = build::<conntrack::Conntrack>(&config);
    let num = |f: &str| {
        read(&format!("/proc/sys/net/netfilter/{f}"))
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    eventually(|| {
        let before = num("nf_conntrack_count");
        let out = collect(&mut c);
        let after = num("nf_conntrack_count");
        within(
            "conntrack count",
            value(find(&out, "linux.net.conntrack.count"), &[]).unwrap(),
            before.min(after),
            before.max(after),
        )?;
        within(
            "conntrack max",
            value(find(&out, "linux.net.conntrack.limit"), &[]).unwrap(),
            num("nf_conntrack_max"),
            num("nf_conntrack_max"),
        )
    });
}
