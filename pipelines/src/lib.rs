//! kotel pipelines: the shared data model and the exporters that turn it into
//! OTLP (gRPC and HTTP/protobuf), the Prometheus exposition format and
//! OTLP-JSON files. Pipelines know nothing about collectors.

pub mod config;
pub mod file;
pub mod model;
pub mod otlp;
pub mod prometheus;
pub mod queue;
pub mod router;
pub mod stats;

pub use model::*;
pub use router::{EventEmitter, EventSink, MetricsSink, Router};
