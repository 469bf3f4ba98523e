//! Event collectors (see docs/events.md).

pub mod bpf;
pub mod cgroup;
pub mod dropwatch;
pub mod hungtask;
pub mod memreclaim;
pub mod net_rx_latency;
pub mod oom;
pub mod softirq;
pub mod softlockup;
