//! Metrics collectors (see docs/metrics.md).

pub mod blocklat;
pub mod buddyinfo;
pub mod container;
pub mod cpu;
pub mod disk;
pub mod filesystem;
pub(crate) mod filter;
pub mod interrupts;
pub mod load;
pub mod memory;
pub mod net;
pub mod pressure;
pub mod reclaimlat;
pub mod runqlat;
pub mod schedstat;
pub mod vmstat;
