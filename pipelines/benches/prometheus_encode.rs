//! Rendering one scrape: kotel's encoder (snapshot → text) against the
//! `prometheus` crate doing the same job (snapshot → MetricFamily protos →
//! TextEncoder), on a host-sized snapshot (2,000 series, 40 histograms).

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use kotel_pipelines::prometheus::Options;
use kotel_pipelines::prometheus::encode::{Format, encode};
use kotel_pipelines::prometheus::names::{family_name, label_name};
use kotel_pipelines::{
    HistogramPoint, KeyValue, Metric, MetricData, MetricsSnapshot, Number, NumberPoint, Resource,
    Value,
};
use prometheus::Encoder;
use prometheus::proto::{self, MetricFamily, MetricType};

fn snapshot() -> Arc<MetricsSnapshot> {
    let mut metrics = Vec::new();
    for m in 0..20 {
        let points = (0..100)
            .map(|i| {
                NumberPoint::new(
                    vec![
                        KeyValue::new("cpu.logical_number", i as i64),
                        KeyValue::new("cpu.mode", "user"),
                    ],
                    1,
                    i as f64 * 1.5,
                )
            })
            .collect();
        metrics.push(if m % 2 == 0 {
            Metric::counter(format!("linux.test.counter{m}"), "a counter", "s", points)
        } else {
            Metric::gauge(format!("linux.test.gauge{m}"), "a gauge", "By", points)
        });
    }
    let bounds: Arc<[f64]> = (0..20)
        .map(|i| 1e-6 * f64::powi(2.0, i))
        .collect::<Vec<_>>()
        .into();
    let points = (0..40)
        .map(|d| HistogramPoint {
            attributes: vec![KeyValue::new("system.device", format!("disk{d}"))],
            start_time: 1,
            count: 1000,
            sum: 0.5,
            bounds: bounds.clone(),
            bucket_counts: vec![50; 21],
        })
        .collect();
    metrics.push(Metric::histogram(
        "linux.disk.latency",
        "latency",
        "s",
        points,
    ));
    Arc::new(MetricsSnapshot {
        scope: "kotel/bench".into(),
        time: 2,
        metrics,
    })
}

fn label_pairs(attrs: &[KeyValue]) -> Vec<proto::LabelPair> {
    attrs
        .iter()
        .map(|kv| {
            let mut l = proto::LabelPair::default();
            l.set_name(label_name(&kv.key));
            l.set_value(match &kv.value {
                Value::Str(s) => s.to_string(),
                Value::Int(i) => i.to_string(),
                other => format!("{other:?}"),
            });
            l
        })
        .collect()
}

/// What a `prometheus::core::Collector` over kotel snapshots would do per scrape.
fn families(snap: &MetricsSnapshot) -> Vec<MetricFamily> {
    let mut out = BTreeMap::new();
    for m in &snap.metrics {
        let mut fam = MetricFamily::default();
        let mut metrics = Vec::new();
        let (kind, gauge) = match &m.data {
            MetricData::Gauge(_) => (MetricType::GAUGE, true),
            MetricData::Sum { .. } => (MetricType::COUNTER, false),
            MetricData::Histogram(_) => (MetricType::HISTOGRAM, false),
        };
        let mut name = family_name(&m.name, &m.unit, gauge);
        if kind == MetricType::COUNTER {
            name.push_str("_total");
        }
        match &m.data {
            MetricData::Gauge(points) | MetricData::Sum { points, .. } => {
                for p in points {
                    let mut pm = proto::Metric::default();
                    pm.set_label(label_pairs(&p.attributes));
                    let v = match p.value {
                        Number::Int(i) => i as f64,
                        Number::Double(d) => d,
                    };
                    if gauge {
                        let mut g = proto::Gauge::default();
                        g.set_value(v);
                        pm.set_gauge(g);
                    } else {
                        let mut c = proto::Counter::default();
                        c.set_value(v);
                        pm.set_counter(c);
                    }
                    metrics.push(pm);
                }
            }
            MetricData::Histogram(points) => {
                for p in points {
                    let mut pm = proto::Metric::default();
                    pm.set_label(label_pairs(&p.attributes));
                    let mut h = proto::Histogram::default();
                    h.set_sample_count(p.count);
                    h.set_sample_sum(p.sum);
                    let mut cum = 0;
                    let buckets = p
                        .bounds
                        .iter()
                        .zip(&p.bucket_counts)
                        .map(|(b, c)| {
                            cum += c;
                            let mut bucket = proto::Bucket::default();
                            bucket.set_upper_bound(*b);
                            bucket.set_cumulative_count(cum);
                            bucket
                        })
                        .collect();
                    h.set_bucket(buckets);
                    pm.set_histogram(h);
                    metrics.push(pm);
                }
            }
        }
        fam.set_name(name.clone());
        fam.set_help(m.description.to_string());
        fam.set_field_type(kind);
        fam.set_metric(metrics);
        out.insert(name, fam);
    }
    out.into_values().collect()
}

fn bench(c: &mut Criterion) {
    let snaps = vec![snapshot()];
    let resource = Resource::default();
    let opts = Options {
        target_info: false,
        resource_to_telemetry_conversion: false,
    };
    let mut buf = String::new();
    let mut group = c.benchmark_group("scrape_2000_series");
    group.bench_function("kotel_encoder", |b| {
        b.iter(|| {
            encode(&mut buf, &snaps, &resource, &opts, Format::Text);
            buf.len()
        })
    });
    let encoder = prometheus::TextEncoder::new();
    let mut out = Vec::new();
    group.bench_function("prometheus_crate", |b| {
        b.iter(|| {
            out.clear();
            encoder.encode(&families(&snaps[0]), &mut out).unwrap();
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
