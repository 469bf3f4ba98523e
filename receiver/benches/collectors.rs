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

criterion_group!(benches, collectors);
criterion_main!(benches);
