//! The data model as OTLP protobuf messages (also serialised as OTLP-JSON).

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1 as common;
use opentelemetry_proto::tonic::logs::v1 as logs;
use opentelemetry_proto::tonic::metrics::v1 as metrics;
use opentelemetry_proto::tonic::resource::v1 as resource;

use crate::model::{
    EventRecord, HistogramPoint, Metric, MetricData, MetricsSnapshot, Number, NumberPoint,
    Resource, Value,
};

/// The version kotel reports as its instrumentation scope version.
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

fn any_value(v: &Value) -> common::AnyValue {
    use common::any_value::Value as V;
    let value = match v {
        Value::Str(s) => V::StringValue(s.to_string()),
        Value::Int(i) => V::IntValue(*i),
        Value::Double(d) => V::DoubleValue(*d),
        Value::Bool(b) => V::BoolValue(*b),
        Value::Array(items) => V::ArrayValue(common::ArrayValue {
            values: items.iter().map(any_value).collect(),
        }),
        Value::Map(kvs) => V::KvlistValue(common::KeyValueList {
            values: key_values(kvs),
        }),
    };
    common::AnyValue { value: Some(value) }
}

pub fn key_values(kvs: &[crate::model::KeyValue]) -> Vec<common::KeyValue> {
    kvs.iter()
        .map(|kv| common::KeyValue {
            key: kv.key.to_string(),
            value: Some(any_value(&kv.value)),
            ..Default::default()
        })
        .collect()
}

pub fn resource(r: &Resource) -> resource::Resource {
    resource::Resource {
        attributes: key_values(&r.attributes),
        ..Default::default()
    }
}

fn scope(name: &str) -> common::InstrumentationScope {
    common::InstrumentationScope {
        name: name.to_owned(),
        version: SCOPE_VERSION.to_owned(),
        ..Default::default()
    }
}

fn number_point(p: &NumberPoint, time: u64, with_start: bool) -> metrics::NumberDataPoint {
    use metrics::number_data_point::Value as V;
    metrics::NumberDataPoint {
        attributes: key_values(&p.attributes),
        start_time_unix_nano: if with_start { p.start_time } else { 0 },
        time_unix_nano: time,
        value: Some(match p.value {
            Number::Int(i) => V::AsInt(i),
            Number::Double(d) => V::AsDouble(d),
        }),
        ..Default::default()
    }
}

fn histogram_point(p: &HistogramPoint, time: u64) -> metrics::HistogramDataPoint {
    metrics::HistogramDataPoint {
        attributes: key_values(&p.attributes),
        start_time_unix_nano: p.start_time,
        time_unix_nano: time,
        count: p.count,
        sum: Some(p.sum),
        bucket_counts: p.bucket_counts.clone(),
        explicit_bounds: p.bounds.to_vec(),
        ..Default::default()
    }
}

const CUMULATIVE: i32 = metrics::AggregationTemporality::Cumulative as i32;

pub fn metric(m: &Metric, time: u64) -> metrics::Metric {
    use metrics::metric::Data;
    let data = match &m.data {
        MetricData::Gauge(points) => Data::Gauge(metrics::Gauge {
            data_points: points
                .iter()
                .map(|p| number_point(p, time, false))
                .collect(),
        }),
        MetricData::Sum { monotonic, points } => Data::Sum(metrics::Sum {
            data_points: points.iter().map(|p| number_point(p, time, true)).collect(),
            aggregation_temporality: CUMULATIVE,
            is_monotonic: *monotonic,
        }),
        MetricData::Histogram(points) => Data::Histogram(metrics::Histogram {
            data_points: points.iter().map(|p| histogram_point(p, time)).collect(),
            aggregation_temporality: CUMULATIVE,
        }),
    };
    metrics::Metric {
        name: m.name.to_string(),
        description: m.description.to_string(),
        unit: m.unit.to_string(),
        data: Some(data),
        ..Default::default()
    }
}

/// One request for a batch of snapshots; one scope per collector.
pub fn metrics_request(
    res: &Resource,
    snapshots: &[std::sync::Arc<MetricsSnapshot>],
) -> ExportMetricsServiceRequest {
    let mut by_scope: BTreeMap<&str, Vec<metrics::Metric>> = BTreeMap::new();
    for snap in snapshots {
        let out = by_scope.entry(&snap.scope).or_default();
        out.extend(
            snap.metrics
                .iter()
                .filter(|m| !m.data.is_empty())
                .map(|m| metric(m, snap.time)),
        );
    }
    let scope_metrics = by_scope
        .into_iter()
        .map(|(name, metrics)| metrics::ScopeMetrics {
            scope: Some(scope(name)),
            metrics,
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![metrics::ResourceMetrics {
            resource: Some(resource(res)),
            scope_metrics,
            ..Default::default()
        }],
    }
}

pub fn log_record(r: &EventRecord) -> logs::LogRecord {
    logs::LogRecord {
        time_unix_nano: r.time,
        observed_time_unix_nano: r.observed_time,
        severity_number: r.severity as i32,
        severity_text: r.severity.text().to_owned(),
        body: r.body.as_ref().map(any_value),
        attributes: key_values(&r.attributes),
        event_name: r.event_name.to_string(),
        ..Default::default()
    }
}

/// One request for a batch of records, grouped by scope.
pub fn logs_request(
    res: &Resource,
    records: &[std::sync::Arc<EventRecord>],
) -> ExportLogsServiceRequest {
    let mut by_scope: BTreeMap<&str, Vec<logs::LogRecord>> = BTreeMap::new();
    for r in records {
        by_scope.entry(&r.scope).or_default().push(log_record(r));
    }
    let scope_logs = by_scope
        .into_iter()
        .map(|(name, log_records)| logs::ScopeLogs {
            scope: Some(scope(name)),
            log_records,
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![logs::ResourceLogs {
            resource: Some(resource(res)),
            scope_logs,
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{KeyValue, Severity};

    #[test]
    fn cumulative_sum_keeps_start_time_and_gauge_drops_it() {
        let point = NumberPoint {
            attributes: vec![KeyValue::new("cpu.mode", "user")],
            start_time: 7,
            value: Number::Double(1.5),
        };
        let sum = Metric {
            name: "system.cpu.time".into(),
            description: "".into(),
            unit: "s".into(),
            data: MetricData::Sum {
                monotonic: true,
                points: vec![point.clone()],
            },
        };
        let gauge = Metric {
            data: MetricData::Gauge(vec![point]),
            ..sum.clone()
        };
        let snap = Arc::new(MetricsSnapshot {
            scope: "kotel/cpu".into(),
            time: 99,
            metrics: vec![sum, gauge],
        });
        let req = metrics_request(&Resource::default(), &[snap]);
        let scope = &req.resource_metrics[0].scope_metrics[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "kotel/cpu");
        match scope.metrics[0].data.as_ref().unwrap() {
            metrics::metric::Data::Sum(s) => {
                assert_eq!(s.aggregation_temporality, CUMULATIVE);
                assert!(s.is_monotonic);
                assert_eq!(s.data_points[0].start_time_unix_nano, 7);
                assert_eq!(s.data_points[0].time_unix_nano, 99);
            }
            other => panic!("expected a sum, got {other:?}"),
        }
        match scope.metrics[1].data.as_ref().unwrap() {
            metrics::metric::Data::Gauge(g) => assert_eq!(g.data_points[0].start_time_unix_nano, 0),
            other => panic!("expected a gauge, got {other:?}"),
        }
    }

    #[test]
    fn log_record_nests_maps_and_arrays_and_sets_event_name() {
        let rec = EventRecord::new("kotel/test", "linux.test", Severity::Warn, 5)
            .with("process.pid", 42i64)
            .with(
                "linux.stack",
                Value::Array(vec!["a+0x1".into(), "b+0x2".into()]),
            )
            .with(
                "linux.detail",
                Value::Map(vec![KeyValue::new("inner", true)]),
            );
        let req = logs_request(&Resource::default(), &[Arc::new(rec)]);
        let json = serde_json::to_value(&req).unwrap();
        let lr = &json["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(lr["eventName"], "linux.test");
        assert_eq!(lr["severityNumber"], 13);
        assert_eq!(
            lr["attributes"][1]["value"]["arrayValue"]["values"][1]["stringValue"],
            "b+0x2"
        );
        assert_eq!(
            lr["attributes"][2]["value"]["kvlistValue"]["values"][0]["value"]["boolValue"],
            true
        );
    }
}
