//! The one data model every collector produces and every exporter consumes.
//!
//! Collectors build [`Metric`]s and [`EventRecord`]s; exporters translate them
//! into OTLP protobuf, OTLP-JSON or the Prometheus exposition format. Nothing
//! here knows about any wire format.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Attribute key: almost always a static semantic-convention name.
pub type Key = Cow<'static, str>;

/// An attribute value; maps and arrays nest like OTLP `AnyValue`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    Int(i64),
    Double(f64),
    Bool(bool),
    Array(Vec<Value>),
    Map(Vec<KeyValue>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyValue {
    pub key: Key,
    pub value: Value,
}

pub type Attributes = Vec<KeyValue>;

impl KeyValue {
    pub fn new(key: impl Into<Key>, value: impl Into<Value>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::Str(Cow::Borrowed(s))
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(Cow::Owned(s))
    }
}
impl From<Cow<'static, str>> for Value {
    fn from(s: Cow<'static, str>) -> Self {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}
/// u64 values above i64::MAX (kernel addresses, wrapped counters) cannot be
/// OTLP ints; they saturate here, so callers with such data send hex strings.
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Double(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::Array(v)
    }
}
impl From<Vec<KeyValue>> for Value {
    fn from(v: Vec<KeyValue>) -> Self {
        Value::Map(v)
    }
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Find an attribute by key.
pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs.iter().find(|kv| kv.key == key).map(|kv| &kv.value)
}

/// Nanoseconds since the Unix epoch.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub fn now_nanos() -> u64 {
    unix_nanos(SystemTime::now())
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i64),
    Double(f64),
}

impl Number {
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(v) => v as f64,
            Number::Double(v) => v,
        }
    }
}

/// One value of a gauge or sum. `start_time` is ignored for gauges; for
/// cumulative sums it is when the counter last started from zero (boot time,
/// cgroup creation, agent start).
#[derive(Debug, Clone, PartialEq)]
pub struct NumberPoint {
    pub attributes: Attributes,
    pub start_time: u64,
    pub value: Number,
}

/// Explicit-bucket histogram point. `bucket_counts.len() == bounds.len() + 1`;
/// bucket i counts values in `(bounds[i-1], bounds[i]]`, the last one `> last bound`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramPoint {
    pub attributes: Attributes,
    pub start_time: u64,
    pub count: u64,
    pub sum: f64,
    pub bounds: Arc<[f64]>,
    pub bucket_counts: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetricData {
    Gauge(Vec<NumberPoint>),
    /// Always cumulative: kotel reads counters the kernel already accumulates.
    Sum {
        monotonic: bool,
        points: Vec<NumberPoint>,
    },
    Histogram(Vec<HistogramPoint>),
}

impl MetricData {
    pub fn len(&self) -> usize {
        match self {
            MetricData::Gauge(p) | MetricData::Sum { points: p, .. } => p.len(),
            MetricData::Histogram(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: Cow<'static, str>,
    pub description: Cow<'static, str>,
    /// UCUM unit: `s`, `By`, `{packet}`, `1`.
    pub unit: Cow<'static, str>,
    pub data: MetricData,
}

/// Everything one collector produced in one collection cycle. The same
/// snapshot feeds every metrics pipeline.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    /// Instrumentation scope: `kotel/<collector>`.
    pub scope: Cow<'static, str>,
    /// When the collection ran (Unix nanoseconds), the time of every point.
    pub time: u64,
    pub metrics: Vec<Metric>,
}

impl MetricsSnapshot {
    pub fn point_count(&self) -> usize {
        self.metrics.iter().map(|m| m.data.len()).sum()
    }
}

/// OTLP severity numbers kotel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Debug = 5,
    Info = 9,
    Warn = 13,
    Error = 17,
    Fatal = 21,
}

impl Severity {
    pub fn text(self) -> &'static str {
        match self {
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Warn => "WARN",
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// One captured kernel event or autotracing capture: one OTLP log record.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Instrumentation scope: `kotel/<collector>`.
    pub scope: Cow<'static, str>,
    /// Documented, low-cardinality event name, e.g. `linux.packet_drop`.
    pub event_name: Cow<'static, str>,
    pub severity: Severity,
    /// When the kernel event happened (Unix nanoseconds).
    pub time: u64,
    /// When kotel read it (Unix nanoseconds).
    pub observed_time: u64,
    pub attributes: Attributes,
    pub body: Option<Value>,
}

impl EventRecord {
    pub fn new(
        scope: impl Into<Cow<'static, str>>,
        event_name: impl Into<Cow<'static, str>>,
        severity: Severity,
        time: u64,
    ) -> Self {
        Self {
            scope: scope.into(),
            event_name: event_name.into(),
            severity,
            time,
            observed_time: now_nanos(),
            attributes: Vec::new(),
            body: None,
        }
    }

    pub fn with(mut self, key: impl Into<Key>, value: impl Into<Value>) -> Self {
        self.attributes.push(KeyValue::new(key, value));
        self
    }
}

/// The agent's resource: `service.*`, `host.*`, `os.*` and user attributes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resource {
    pub attributes: Attributes,
}

impl Resource {
    pub fn get(&self, key: &str) -> Option<&Value> {
        attr(&self.attributes, key)
    }

    /// Insert or replace an attribute.
    pub fn set(&mut self, key: impl Into<Key>, value: impl Into<Value>) {
        let key = key.into();
        let value = value.into();
        match self.attributes.iter_mut().find(|kv| kv.key == key) {
            Some(kv) => kv.value = value,
            None => self.attributes.push(KeyValue { key, value }),
        }
    }
}

impl From<i64> for Number {
    fn from(v: i64) -> Self {
        Number::Int(v)
    }
}
/// Saturates above i64::MAX (OTLP integers are signed).
impl From<u64> for Number {
    fn from(v: u64) -> Self {
        Number::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<f64> for Number {
    fn from(v: f64) -> Self {
        Number::Double(v)
    }
}

impl NumberPoint {
    pub fn new(attributes: Attributes, start_time: u64, value: impl Into<Number>) -> Self {
        Self {
            attributes,
            start_time,
            value: value.into(),
        }
    }
}

type Text = Cow<'static, str>;

impl Metric {
    fn with_data(
        name: impl Into<Text>,
        description: impl Into<Text>,
        unit: impl Into<Text>,
        data: MetricData,
    ) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            unit: unit.into(),
            data,
        }
    }

    /// A level (memory in use, queue length).
    pub fn gauge(
        name: impl Into<Text>,
        description: impl Into<Text>,
        unit: impl Into<Text>,
        points: Vec<NumberPoint>,
    ) -> Self {
        Self::with_data(name, description, unit, MetricData::Gauge(points))
    }

    /// A cumulative monotonic counter (points carry their start time).
    pub fn counter(
        name: impl Into<Text>,
        description: impl Into<Text>,
        unit: impl Into<Text>,
        points: Vec<NumberPoint>,
    ) -> Self {
        Self::with_data(
            name,
            description,
            unit,
            MetricData::Sum {
                monotonic: true,
                points,
            },
        )
    }

    /// A cumulative sum that may go down.
    pub fn up_down(
        name: impl Into<Text>,
        description: impl Into<Text>,
        unit: impl Into<Text>,
        points: Vec<NumberPoint>,
    ) -> Self {
        Self::with_data(
            name,
            description,
            unit,
            MetricData::Sum {
                monotonic: false,
                points,
            },
        )
    }

    pub fn histogram(
        name: impl Into<Text>,
        description: impl Into<Text>,
        unit: impl Into<Text>,
        points: Vec<HistogramPoint>,
    ) -> Self {
        Self::with_data(name, description, unit, MetricData::Histogram(points))
    }
}
