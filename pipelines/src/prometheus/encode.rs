//! The Prometheus text format (0.0.4) and OpenMetrics 1.0 text, written
//! straight from snapshots into one reused buffer.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::names::{family_name, label_name, sanitize};
use crate::model::{KeyValue, Metric, MetricData, MetricsSnapshot, Number, Resource, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// OpenMetrics only when the scraper asks for it.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }
}

fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn write_labels(out: &mut String, attrs: &[KeyValue], extra: &[KeyValue], le: Option<&str>) {
    if attrs.is_empty() && extra.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for kv in attrs.iter().chain(extra) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&label_name(&kv.key));
        out.push_str("=\"");
        escape_label(&value_text(&kv.value), out);
        out.push('"');
    }
    if let Some(le) = le {
        if !first {
            out.push(',');
        }
        out.push_str("le=\"");
        out.push_str(le);
        out.push('"');
    }
    out.push('}');
}

fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

fn write_number(out: &mut String, v: Number) {
    match v {
        Number::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Number::Double(d) => write_float(out, d),
    }
}

struct Family<'a> {
    help: &'a str,
    unit: &'a str,
    kind: &'static str,
    entries: Vec<&'a Metric>,
}

/// Encode every snapshot into `out` (cleared first).
pub fn encode(
    out: &mut String,
    snapshots: &[std::sync::Arc<MetricsSnapshot>],
    resource: &Resource,
    opts: &super::Options,
    format: Format,
) {
    out.clear();
    let extra: Vec<KeyValue> = if opts.resource_to_telemetry_conversion {
        resource.attributes.clone()
    } else {
        Vec::new()
    };
    // Group by family so that series of one metric from several collectors
    // (or several snapshots) come out under one TYPE line.
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for snap in snapshots {
        for m in &snap.metrics {
            if m.data.is_empty() {
                continue;
            }
            let (is_gauge, kind) = match &m.data {
                MetricData::Gauge(_) => (true, "gauge"),
                MetricData::Sum {
                    monotonic: true, ..
                } => (false, "counter"),
                MetricData::Sum {
                    monotonic: false, ..
                } => (true, "gauge"),
                MetricData::Histogram(_) => (false, "histogram"),
            };
            let name = family_name(&m.name, &m.unit, is_gauge);
            families
                .entry(name)
                .or_insert_with(|| Family {
                    help: &m.description,
                    unit: &m.unit,
                    kind,
                    entries: Vec::new(),
                })
                .entries
                .push(m);
        }
    }
    if opts.target_info {
        write_target_info(out, resource, format);
    }
    for (name, fam) in &families {
        let meta_name = name.as_str();
        let _ = writeln!(
            out,
            "# HELP {meta_name} {}",
            fam.help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(out, "# TYPE {meta_name} {}", fam.kind);
        if format == Format::OpenMetrics
            && let Some(u) = super::names::unit_suffix(fam.unit, fam.kind == "gauge")
            && name.ends_with(&u)
        {
            let _ = writeln!(out, "# UNIT {meta_name} {u}");
        }
        for m in &fam.entries {
            match &m.data {
                MetricData::Gauge(points) | MetricData::Sum { points, .. } => {
                    let suffix = if fam.kind == "counter" { "_total" } else { "" };
                    for p in points {
                        out.push_str(name);
                        out.push_str(suffix);
                        write_labels(out, &p.attributes, &extra, None);
                        out.push(' ');
                        write_number(out, p.value);
                        out.push('\n');
                    }
                    if format == Format::OpenMetrics && fam.kind == "counter" {
                        for p in points {
                            out.push_str(name);
                            out.push_str("_created");
                            write_labels(out, &p.attributes, &extra, None);
                            out.push(' ');
                            write_float(out, p.start_time as f64 / 1e9);
                            out.push('\n');
                        }
                    }
                }
                MetricData::Histogram(points) => {
                    for p in points {
                        let mut cumulative = 0u64;
                        for (i, count) in p.bucket_counts.iter().enumerate() {
                            cumulative += count;
                            let le = match p.bounds.get(i) {
                                Some(b) => {
                                    let mut s = String::new();
                                    write_float(&mut s, *b);
                                    s
                                }
                                None => "+Inf".to_owned(),
                            };
                            out.push_str(name);
                            out.push_str("_bucket");
                            write_labels(out, &p.attributes, &extra, Some(&le));
                            let _ = writeln!(out, " {cumulative}");
                        }
                        out.push_str(name);
                        out.push_str("_sum");
                        write_labels(out, &p.attributes, &extra, None);
                        out.push(' ');
                        write_float(out, p.sum);
                        out.push('\n');
                        out.push_str(name);
                        out.push_str("_count");
                        write_labels(out, &p.attributes, &extra, None);
                        let _ = writeln!(out, " {}", p.count);
                    }
                }
            }
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
}

fn write_target_info(out: &mut String, resource: &Resource, format: Format) {
    let name = if format == Format::OpenMetrics {
        "target"
    } else {
        "target_info"
    };
    let _ = writeln!(out, "# HELP {name} Target metadata");
    let _ = writeln!(
        out,
        "# TYPE {name} {}",
        if format == Format::OpenMetrics {
            "info"
        } else {
            "gauge"
        }
    );
    out.push_str("target_info");
    let attrs: Vec<KeyValue> = resource
        .attributes
        .iter()
        .filter(|kv| !matches!(kv.value, Value::Array(_) | Value::Map(_)))
        .map(|kv| KeyValue {
            key: sanitize(&kv.key, false).into(),
            value: kv.value.clone(),
        })
        .collect();
    write_labels(out, &attrs, &[], None);
    out.push_str(" 1\n");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{HistogramPoint, NumberPoint};
    use crate::prometheus::Options;

    fn snapshot() -> Arc<MetricsSnapshot> {
        let counter = Metric {
            name: "system.cpu.time".into(),
            description: "CPU time".into(),
            unit: "s".into(),
            data: MetricData::Sum {
                monotonic: true,
                points: vec![NumberPoint {
                    attributes: vec![
                        KeyValue::new("cpu.mode", "user"),
                        KeyValue::new("cpu.logical_number", 0i64),
                    ],
                    start_time: 1_000_000_000,
                    value: Number::Double(12.5),
                }],
            },
        };
        let hist = Metric {
            name: "linux.block.latency".into(),
            description: "IO latency".into(),
            unit: "s".into(),
            data: MetricData::Histogram(vec![HistogramPoint {
                attributes: vec![KeyValue::new("disk", "vda \"x\"")],
                start_time: 0,
                count: 6,
                sum: 0.5,
                bounds: Arc::from(vec![0.001, 0.01]),
                bucket_counts: vec![1, 2, 3],
            }]),
        };
        Arc::new(MetricsSnapshot {
            scope: "kotel/test".into(),
            time: 0,
            metrics: vec![counter, hist],
        })
    }

    #[test]
    fn text_format_names_counters_and_histograms() {
        let mut out = String::new();
        let res = Resource {
            attributes: vec![KeyValue::new("service.name", "kotel")],
        };
        encode(
            &mut out,
            &[snapshot()],
            &res,
            &Options {
                target_info: true,
                resource_to_telemetry_conversion: false,
            },
            Format::Text,
        );
        assert!(
            out.contains("# TYPE system_cpu_time_seconds counter\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "system_cpu_time_seconds_total{cpu_mode=\"user\",cpu_logical_number=\"0\"} 12.5\n"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "linux_block_latency_seconds_bucket{disk=\"vda \\\"x\\\"\",le=\"0.01\"} 3\n"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "linux_block_latency_seconds_bucket{disk=\"vda \\\"x\\\"\",le=\"+Inf\"} 6\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("linux_block_latency_seconds_count{disk=\"vda \\\"x\\\"\"} 6\n"),
            "{out}"
        );
        assert!(
            out.contains("target_info{service_name=\"kotel\"} 1\n"),
            "{out}"
        );
        assert!(!out.contains("# EOF"));
    }

    #[test]
    fn openmetrics_adds_unit_created_and_eof() {
        let mut out = String::new();
        encode(
            &mut out,
            &[snapshot()],
            &Resource::default(),
            &Options {
                target_info: false,
                resource_to_telemetry_conversion: false,
            },
            Format::OpenMetrics,
        );
        assert!(
            out.contains("# UNIT system_cpu_time_seconds seconds\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "system_cpu_time_seconds_created{cpu_mode=\"user\",cpu_logical_number=\"0\"} 1\n"
            ),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"));
    }
}
