//! kotel's own telemetry, collected and exported like any other collector:
//! per-collector duration and health, per-exporter items, process CPU and RSS.

use kotel_pipelines::stats::{ExporterStats, all_stats};
use kotel_pipelines::{KeyValue, Metric, MetricData, Number, NumberPoint};
use kotel_receiver::framework::{HealthBoard, HostContext, MetricsCollector, Status};

/// The self-telemetry collector, scheduled with the metrics collectors.
pub fn collector(board: HealthBoard, host: &HostContext) -> Box<dyn MetricsCollector> {
    Box::new(SelfCollector {
        board,
        start: host.agent_start,
        tick: host.clock_tick,
        page: host.page_size,
    })
}

struct SelfCollector {
    board: HealthBoard,
    start: u64,
    tick: f64,
    page: u64,
}

fn point(attrs: Vec<KeyValue>, start: u64, v: Number) -> NumberPoint {
    NumberPoint {
        attributes: attrs,
        start_time: start,
        value: v,
    }
}

fn metric(
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    data: MetricData,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data,
    }
}

impl MetricsCollector for SelfCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let (mut duration, mut runs, mut errors, mut up) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (name, h) in self.board.snapshot() {
            let attrs = vec![
                KeyValue::new("collector", name.clone()),
                KeyValue::new("mode", h.mode.as_str()),
            ];
            if let Some(d) = h.last_duration_seconds {
                duration.push(point(attrs.clone(), 0, Number::Double(d)));
            }
            runs.push(point(attrs.clone(), self.start, Number::Int(h.runs as i64)));
            errors.push(point(
                attrs.clone(),
                self.start,
                Number::Int(h.errors as i64),
            ));
            let state = match &h.status {
                Status::Unavailable(_) => "unavailable",
                Status::Failing(_) => "failing",
                Status::Disabled => "disabled",
                Status::Running => "running",
                Status::Starting => "starting",
                Status::Stopped => "stopped",
            };
            let mut a = attrs;
            a.push(KeyValue::new("state", state));
            up.push(point(
                a,
                0,
                Number::Int(i64::from(h.status == Status::Running)),
            ));
        }
        out.push(metric(
            "kotel.collector.duration",
            "Duration of the last collection",
            "s",
            MetricData::Gauge(duration),
        ));
        out.push(metric(
            "kotel.collector.runs",
            "Successful collections or captures",
            "{run}",
            MetricData::Sum {
                monotonic: true,
                points: runs,
            },
        ));
        out.push(metric(
            "kotel.collector.errors",
            "Failed collections or captures",
            "{error}",
            MetricData::Sum {
                monotonic: true,
                points: errors,
            },
        ));
        out.push(metric(
            "kotel.collector.status",
            "1 when the collector is running; `state` names its state",
            "1",
            MetricData::Gauge(up),
        ));

        let (mut sent, mut failed, mut dropped, mut retries, mut queued) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for s in all_stats() {
            let attrs = vec![
                KeyValue::new("exporter", s.exporter.clone()),
                KeyValue::new("signal", s.signal),
            ];
            let c = |v: &std::sync::atomic::AtomicU64| {
                point(
                    attrs.clone(),
                    self.start,
                    Number::Int(ExporterStats::get(v) as i64),
                )
            };
            sent.push(c(&s.sent));
            failed.push(c(&s.failed));
            dropped.push(c(&s.dropped));
            retries.push(c(&s.retries));
            queued.push(point(
                attrs.clone(),
                0,
                Number::Int(ExporterStats::get(&s.queued) as i64),
            ));
        }
        let sum = |points| MetricData::Sum {
            monotonic: true,
            points,
        };
        out.push(metric(
            "kotel.exporter.sent",
            "Items (points or records) the exporter delivered",
            "{item}",
            sum(sent),
        ));
        out.push(metric(
            "kotel.exporter.failed",
            "Items given up on after retries or rejected",
            "{item}",
            sum(failed),
        ));
        out.push(metric(
            "kotel.exporter.dropped",
            "Items dropped because a queue was full",
            "{item}",
            sum(dropped),
        ));
        out.push(metric(
            "kotel.exporter.retries",
            "Export attempts that were retried",
            "{attempt}",
            sum(retries),
        ));
        out.push(metric(
            "kotel.exporter.queue.size",
            "Items waiting in the exporter queue",
            "{item}",
            MetricData::Gauge(queued),
        ));

        let stat = std::fs::read_to_string("/proc/self/stat")?;
        // Fields after the `)` of comm: state is field 3; utime 14, stime 15, rss 24.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let cpu = vec![
            point(
                vec![KeyValue::new("cpu.mode", "user")],
                self.start,
                Number::Double(num(14) as f64 * self.tick),
            ),
            point(
                vec![KeyValue::new("cpu.mode", "system")],
                self.start,
                Number::Double(num(15) as f64 * self.tick),
            ),
        ];
        out.push(metric(
            "process.cpu.time",
            "CPU time used by kotel",
            "s",
            sum(cpu),
        ));
        let rss = num(24) * self.page;
        out.push(metric(
            "process.memory.usage",
            "kotel's resident set size",
            "By",
            MetricData::Gauge(vec![point(vec![], 0, Number::Int(rss as i64))]),
        ));
        Ok(())
    }
}
