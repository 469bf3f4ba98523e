//! Metrics collectors (see docs/metrics.md).

pub mod cpu;
pub mod load;
pub mod memory;
pub mod vmstat;
