//! Runs each procfs collector against the live kernel and checks its values
//! against an independent reading of the same file taken by the test.

use std::collections::HashMap;
use std::time::Duration;

use kotel_pipelines::{Metric, MetricData, Number, NumberPoint, Value, attr};
use kotel_receiver::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector,
};
use kotel_receiver::metrics::{cpu, load, memory, vmstat};

fn host() -> HostContext {
    HostContext::detect(std::env::temp_dir()).expect("host context")
}

fn build<S: CollectorSpec>(config: &S::Config, host: &HostContext) -> Box<dyn MetricsCollector> {
    assert_eq!(
        S::probe(config),
        Availability::Available,
        "{} unavailable",
        S::NAME
    );
    match S::build(config, host, Duration::from_secs(15)).expect("build") {
        Instance::Metrics {
            interval,
            collector,
        } => {
            assert_eq!(interval, Duration::from_secs(15));
            collector
        }
        _ => panic!("{} is not a metrics collector", S::NAME),
    }
}

fn collect(c: &mut Box<dyn MetricsCollector>) -> Vec<Metric> {
    let mut out = Vec::new();
    c.collect(&mut out).expect("collect");
    for m in &out {
        assert!(!m.data.is_empty(), "{} has no points", m.name);
        assert!(!m.unit.is_empty(), "{} has no unit", m.name);
        assert!(!m.description.is_empty(), "{} has no description", m.name);
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

fn int(p: &NumberPoint) -> i64 {
    match p.value {
        Number::Int(v) => v,
        Number::Double(v) => panic!("expected an int, got {v}"),
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// The first 8 columns of `/proc/stat` line `label`, in seconds.
fn stat_seconds(label: &str, tick: f64) -> f64 {
    let text = read("/proc/stat");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label))
        .unwrap();
    line.split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse::<u64>().unwrap())
        .sum::<u64>() as f64
        * tick
}

#[test]
fn cpu_matches_proc_stat() {
    let host = host();
    let mut c = build::<cpu::Cpu>(&cpu::Config::default(), &host);
    let cpu0 = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("cpu0 "));
    let before = if cpu0 {
        stat_seconds("cpu0", host.clock_tick)
    } else {
        0.0
    };
    let out = collect(&mut c);
    let after = if cpu0 {
        stat_seconds("cpu0", host.clock_tick)
    } else {
        0.0
    };

    let time = find(&out, "system.cpu.time");
    assert_eq!(time.unit, "s");
    assert!(matches!(
        time.data,
        MetricData::Sum {
            monotonic: true,
            ..
        }
    ));
    let mut per_cpu: HashMap<i64, f64> = HashMap::new();
    for p in points(time) {
        assert_eq!(p.start_time, host.boot_time);
        let Some(Value::Int(id)) = attr(&p.attributes, "cpu.logical_number") else {
            panic!("no cpu.logical_number")
        };
        let mode = attr(&p.attributes, "cpu.mode")
            .and_then(Value::as_str)
            .unwrap();
        assert!(
            [
                "user",
                "nice",
                "system",
                "idle",
                "iowait",
                "interrupt",
                "softirq",
                "steal"
            ]
            .contains(&mode),
            "{mode}"
        );
        *per_cpu.entry(*id).or_default() += p.value.as_f64();
    }
    let cpu_lines = read("/proc/stat")
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    assert_eq!(per_cpu.len(), cpu_lines);
    assert_eq!(
        int(&points(find(&out, "system.cpu.logical.count"))[0]) as usize,
        cpu_lines
    );
    if cpu0 {
        let total = per_cpu[&0];
        // idle and iowait are computed at read time and may shift by a tick.
        let tolerance = 2.0 * host.clock_tick;
        assert!(
            before - tolerance <= total && total <= after + tolerance,
            "cpu0 {total}s not in [{before}, {after}]"
        );
    }

    for name in [
        "linux.cpu.context_switches",
        "system.process.created",
        "linux.cpu.interrupts",
        "linux.cpu.softirqs",
    ] {
        let m = find(&out, name);
        assert!(
            matches!(
                m.data,
                MetricData::Sum {
                    monotonic: true,
                    ..
                }
            ),
            "{name}"
        );
        assert!(int(&points(m)[0]) > 0, "{name}");
    }
    let ctxt_after: i64 = read("/proc/stat")
        .lines()
        .find_map(|l| l.strip_prefix("ctxt "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(int(&points(find(&out, "linux.cpu.context_switches"))[0]) <= ctxt_after);
    assert!(
        int(&points(find(&out, "linux.process.running"))[0]) >= 1,
        "this test is running"
    );
    find(&out, "linux.process.blocked");

    // Burn some CPU so the second collection sees a non-zero delta.
    let deadline = std::time::Instant::now() + Duration::from_millis(50);
    let mut x = 0u64;
    while std::time::Instant::now() < deadline {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    let out = collect(&mut c);
    let util = find(&out, "system.cpu.utilization");
    assert_eq!(util.unit, "1");
    let sum: f64 = points(util).iter().map(|p| p.value.as_f64()).sum();
    assert!((sum - 1.0).abs() < 1e-6, "utilization sums to {sum}");
    assert!(
        points(util)
            .iter()
            .all(|p| (0.0..=1.0).contains(&p.value.as_f64()))
    );
}

#[test]
fn cpu_aggregate_only() {
    let host = host();
    let config = cpu::Config {
        per_cpu: false,
        ..Default::default()
    };
    let mut c = build::<cpu::Cpu>(&config, &host);
    let before = stat_seconds("cpu", host.clock_tick);
    let out = collect(&mut c);
    let after = stat_seconds("cpu", host.clock_tick);
    let pts = points(find(&out, "system.cpu.time"));
    assert!(
        pts.iter()
            .all(|p| attr(&p.attributes, "cpu.logical_number").is_none())
    );
    let total: f64 = pts.iter().map(|p| p.value.as_f64()).sum();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let tolerance = 2.0 * host.clock_tick * cpus;
    assert!(
        before - tolerance <= total && total <= after + tolerance,
        "{total} not in [{before}, {after}]"
    );
}

#[test]
fn load_matches_proc_loadavg() {
    let host = host();
    let mut c = build::<load::Load>(&load::Config::default(), &host);
    let parse = || -> (Vec<f64>, i64) {
        let text = read("/proc/loadavg");
        let f: Vec<&str> = text.split_whitespace().collect();
        (
            f[..3].iter().map(|v| v.parse().unwrap()).collect(),
            f[3].split('/').nth(1).unwrap().parse().unwrap(),
        )
    };
    let (before, threads_before) = parse();
    let out = collect(&mut c);
    let (after, threads_after) = parse();
    for (i, name) in [
        "system.cpu.load_average.1m",
        "system.cpu.load_average.5m",
        "system.cpu.load_average.15m",
    ]
    .iter()
    .enumerate()
    {
        let m = find(&out, name);
        assert_eq!(m.unit, "{thread}");
        let v = points(m)[0].value.as_f64();
        // The kernel updates load averages every 5 s: the value is one of the two readings.
        assert!(
            v == before[i] || v == after[i],
            "{name} {v} vs {} / {}",
            before[i],
            after[i]
        );
    }
    let threads = int(&points(find(&out, "linux.process.count"))[0]);
    let (lo, hi) = (
        threads_before.min(threads_after),
        threads_before.max(threads_after),
    );
    assert!(
        lo - 50 <= threads && threads <= hi + 50,
        "{threads} threads vs [{lo}, {hi}]"
    );
}

fn meminfo_bytes(key: &str) -> i64 {
    let text = read("/proc/meminfo");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<i64>()
        .unwrap()
        * 1024
}

#[test]
fn memory_matches_proc_meminfo() {
    let host = host();
    let mut c = build::<memory::Memory>(&memory::Config::default(), &host);
    let out = collect(&mut c);
    let total = meminfo_bytes("MemTotal");
    assert_eq!(int(&points(find(&out, "system.memory.limit"))[0]), total);
    assert_eq!(int(&points(find(&out, "linux.memory.mem_total"))[0]), total);
    let usage = find(&out, "system.memory.usage");
    assert_eq!(usage.unit, "By");
    let sum: i64 = points(usage).iter().map(int).sum();
    let reclaimable = int(points(find(&out, "system.memory.linux.slab.usage"))
        .iter()
        .find(|p| {
            attr(&p.attributes, "system.memory.linux.slab.state").and_then(Value::as_str)
                == Some("reclaimable")
        })
        .unwrap());
    assert_eq!(
        sum,
        total - reclaimable,
        "used + free + buffers + cached = MemTotal - SReclaimable"
    );
    let available = int(&points(find(&out, "system.memory.linux.available"))[0]);
    assert!(available > 0 && available <= total);
    let lines = read("/proc/meminfo").lines().count();
    assert_eq!(
        out.iter()
            .filter(|m| m.name.starts_with("linux.memory."))
            .count(),
        lines
    );
    assert!(out.iter().all(|m| m.unit == "By" || m.unit == "{page}"));
}

fn vmstat_value(key: &str) -> Option<i64> {
    read("/proc/vmstat").lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().unwrap())
    })
}

#[test]
fn vmstat_matches_proc_vmstat() {
    let host = host();
    let page = host.page_size as i64;

    let mut c = build::<vmstat::Vmstat>(&vmstat::Config::default(), &host);
    let before = vmstat_value("pgfault").unwrap();
    let out = collect(&mut c);
    let after = vmstat_value("pgfault").unwrap();
    let pgfault = find(&out, "linux.vmstat.pgfault");
    assert!(matches!(
        pgfault.data,
        MetricData::Sum {
            monotonic: true,
            ..
        }
    ));
    assert_eq!(points(pgfault)[0].start_time, host.boot_time);
    let v = int(&points(pgfault)[0]);
    assert!(
        before <= v && v <= after,
        "pgfault {v} not in [{before}, {after}]"
    );
    let free = int(&points(find(&out, "linux.vmstat.nr_free_pages"))[0]);
    let free_now = vmstat_value("nr_free_pages").unwrap() * page;
    assert_eq!(free % page, 0);
    assert!(
        (free - free_now).abs() < 256 << 20,
        "nr_free_pages {free} vs {free_now} bytes"
    );

    let all = vmstat::Config {
        include: Vec::new(),
        ..Default::default()
    };
    let mut c = build::<vmstat::Vmstat>(&all, &host);
    let out = collect(&mut c);
    let keys = read("/proc/vmstat").lines().count();
    assert_eq!(out.len(), keys.min(all.max_series) + 1);
    let dropped = find(&out, "linux.collector.series.dropped");
    assert_eq!(
        int(&points(dropped)[0]) as usize,
        keys.saturating_sub(all.max_series)
    );
    for m in out.iter().filter(|m| {
        m.name.starts_with("linux.vmstat.nr_")
            && m.name != "linux.vmstat.nr_zspages"
            && matches!(m.data, MetricData::Gauge(_))
    }) {
        assert_eq!(m.unit, "By", "{}", m.name);
    }
}
