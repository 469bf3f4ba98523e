//! One `collect()` of each procfs metrics collector against the live kernel.
//!
//! `cargo bench -p kotel-receiver --bench collectors`

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kotel_receiver::framework::{CollectorSpec, HostContext, Instance, MetricsCollector};
use kotel_receiver::metrics::{cpu::Cpu, load::Load, memory::Memory, vmstat::Vmstat};

fn collector<S: CollectorSpec>(
    config: &S::Config,
    host: &HostContext,
) -> Box<dyn MetricsCollector> {
    match S::build(config, host, Duration::from_secs(15)).expect("build") {
        Instance::Metrics { collector, .. } => collector,
        _ => panic!("{} is not a metrics collector", S::NAME),
    }
}

fn bench_one(c: &mut Criterion, name: &str, mut collector: Box<dyn MetricsCollector>) {
    let mut out = Vec::with_capacity(512);
    // Warm the name caches and the read buffer, as in steady state.
    collector.collect(&mut out).expect("collect");
    c.bench_function(name, |b| {
        b.iter(|| {
            out.clear();
            collector.collect(&mut out).expect("collect");
            std::hint::black_box(out.len())
        })
    });
}

fn collectors(c: &mut Criterion) {
    let host = HostContext::detect(std::env::temp_dir()).expect("host context");
    bench_one(c, "cpu", collector::<Cpu>(&Default::default(), &host));
    let aggregate = kotel_receiver::metrics::cpu::Config {
        per_cpu: false,
        ..Default::default()
    };
    bench_one(c, "cpu/aggregate_only", collector::<Cpu>(&aggregate, &host));
    bench_one(c, "load", collector::<Load>(&Default::default(), &host));
    bench_one(c, "memory", collector::<Memory>(&Default::default(), &host));
    bench_one(
        c,
        "vmstat/default_keys",
        collector::<Vmstat>(&Default::default(), &host),
    );
    let all = kotel_receiver::metrics::vmstat::Config {
        include: Vec::new(),
        ..Default::default()
    };
    bench_one(c, "vmstat/all_keys", collector::<Vmstat>(&all, &host));
}

/// The host collectors of issue 4 (disk, pressure, buddyinfo, interrupts,
/// filesystem). schedstat is left out: /proc/schedstat is absent here.
fn host_collectors(c: &mut Criterion) {
    use kotel_receiver::metrics::{buddyinfo, disk, filesystem, interrupts, pressure};
    let host = HostContext::detect(std::env::temp_dir()).expect("host context");
    bench_one(
        c,
        "disk",
        collector::<disk::Disk>(&Default::default(), &host),
    );
    bench_one(
        c,
        "pressure",
        collector::<pressure::Pressure>(&Default::default(), &host),
    );
    bench_one(
        c,
        "buddyinfo",
        collector::<buddyinfo::Buddyinfo>(&Default::default(), &host),
    );
    bench_one(
        c,
        "interrupts",
        collector::<interrupts::Interrupts>(&Default::default(), &host),
    );
    bench_one(
        c,
        "filesystem",
        collector::<filesystem::Filesystem>(&Default::default(), &host),
    );
}

/// The network collectors of issue 4 (conntrack only where nf_conntrack is loaded).
fn net_collectors(c: &mut Criterion) {
    use kotel_receiver::metrics::net::{
        conntrack, neighbor, netdev, netstat, qdisc, sockstat, softnet,
    };
    let host = HostContext::detect(std::env::temp_dir()).expect("host context");
    bench_one(
        c,
        "net/netdev",
        collector::<netdev::Netdev>(&Default::default(), &host),
    );
    bench_one(
        c,
        "net/netstat",
        collector::<netstat::Netstat>(&Default::default(), &host),
    );
    bench_one(
        c,
        "net/sockstat",
        collector::<sockstat::Sockstat>(&Default::default(), &host),
    );
    bench_one(
        c,
        "net/softnet",
        collector::<softnet::Softnet>(&Default::default(), &host),
    );
    bench_one(
        c,
        "net/qdisc",
        collector::<qdisc::Qdisc>(&Default::default(), &host),
    );
    bench_one(
        c,
        "net/neighbor",
        collector::<neighbor::Neighbor>(&Default::default(), &host),
    );
    let ct = conntrack::Config::default();
    if conntrack::Conntrack::probe(&ct) == kotel_receiver::framework::Availability::Available {
        bench_one(
            c,
            "net/conntrack",
            collector::<conntrack::Conntrack>(&ct, &host),
        );
    }
}

/// `containers` over 50 real, empty container cgroups made here in v2 and the
/// v1 memory, cpu, cpuacct and blkio hierarchies (docker cgroupfs shape, as
/// on a hybrid docker host); divide by 50 for the per-container cost.
fn container_collectors(c: &mut Criterion) {
    use kotel_receiver::metrics::container::Containers;
    let host = HostContext::detect(std::env::temp_dir()).expect("host context");
    let parent = format!("kotel-bench-{}", std::process::id());
    let roots: Vec<std::path::PathBuf> = ["unified", "memory", "cpu", "cpuacct", "blkio"]
        .iter()
        .map(|h| std::path::Path::new("/sys/fs/cgroup").join(h))
        .filter(|r| r.join("cgroup.procs").exists())
        .collect();
    let mut made = Vec::new();
    for r in &roots {
        for d in [r.join(&parent), r.join(&parent).join("docker")] {
            if std::fs::create_dir(&d).is_ok() {
                made.push(d);
            }
        }
        for i in 0..50 {
            let d = r.join(&parent).join(format!("docker/{i:064x}"));
            if std::fs::create_dir(&d).is_ok() {
                made.push(d);
            }
        }
    }
    if made.is_empty() {
        eprintln!("containers bench skipped: cannot make cgroups (needs root)");
        return;
    }
    let reg = kotel_receiver::cgroups::global();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while reg.containers().len() < 50 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    bench_one(
        c,
        "containers/50_hybrid",
        collector::<Containers>(&Default::default(), &host),
    );
    for d in made.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

/// The BPF metrics collectors (root): one read of their kernel maps. Skipped
/// when the programs cannot load.
fn bpf_collectors(c: &mut Criterion) {
    use kotel_receiver::metrics::{blocklat::Blocklat, reclaimlat::Reclaimlat, runqlat::Runqlat};
    let host = HostContext::detect(std::env::temp_dir()).expect("host context");
    let build = |name: &str, r: anyhow::Result<Instance>| match r {
        Ok(Instance::Metrics { collector, .. }) => Some(collector),
        Ok(_) => None,
        Err(e) => {
            eprintln!("{name} bench skipped: {e:#}");
            None
        }
    };
    let iv = Duration::from_secs(15);
    if let Some(col) = build("runqlat", Runqlat::build(&Default::default(), &host, iv)) {
        bench_one(c, "runqlat/host_and_cgroups", col);
    }
    if let Some(col) = build("blocklat", Blocklat::build(&Default::default(), &host, iv)) {
        bench_one(c, "blocklat", col);
    }
    if let Some(col) = build(
        "reclaimlat",
        Reclaimlat::build(&Default::default(), &host, iv),
    ) {
        bench_one(c, "reclaimlat", col);
    }
}

criterion_group!(
    benches,
    collectors,
    host_collectors,
    net_collectors,
    container_collectors,
    bpf_collectors
);
criterion_main!(benches);
