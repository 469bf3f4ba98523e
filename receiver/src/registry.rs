//! The declarative collector registry.
//!
//! Each collector is one line in [`registry!`]; the macro generates the typed
//! config sections (unknown keys are errors) and the catalogue the agent
//! builds and runs from.

use std::sync::Arc;
use std::time::Duration;

use crate::framework::{Availability, CollectorSpec, CommonSettings, HostContext, Instance, Mode};

/// Everything the agent needs to know about one configured collector.
#[derive(Clone)]
pub struct Entry {
    pub name: &'static str,
    pub mode: Mode,
    pub about: &'static str,
    pub enabled: bool,
    pub availability: Availability,
    build: Arc<BuildFn>,
}

/// Builds a fresh instance from the collector's config.
type BuildFn = dyn Fn(&HostContext) -> anyhow::Result<Instance> + Send + Sync;

impl Entry {
    pub fn new<S: CollectorSpec + 'static>(config: &S::Config, default_interval: Duration) -> Self {
        let enabled = config.enabled();
        let availability = if enabled {
            S::probe(config)
        } else {
            Availability::Unavailable("disabled in config".into())
        };
        let config = config.clone();
        Self {
            name: S::NAME,
            mode: S::MODE,
            about: S::ABOUT,
            enabled,
            availability,
            build: Arc::new(move |host| S::build(&config, host, default_interval)),
        }
    }

    /// Build a fresh instance (also used to restart a failed event collector).
    pub fn build(&self, host: &HostContext) -> anyhow::Result<Instance> {
        (self.build)(host)
    }
}

/// Declares every collector. Generates `MetricsCollectors`, `EventCollectors`,
/// `AutotracingCollectors`, `CollectorsConfig` and `catalog()`.
macro_rules! registry {
    (
        metrics { $($m:ident => $mty:ty),* $(,)? }
        events { $($e:ident => $ety:ty),* $(,)? }
        autotracing { $($a:ident => $aty:ty),* $(,)? }
    ) => {
        /// `collectors.metrics`: shared interval plus one section per collector.
        #[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct MetricsCollectors {
            /// Default collection interval of every metrics collector.
            #[serde(with = "humantime_serde")]
            pub interval: std::time::Duration,
            $(pub $m: <$mty as $crate::framework::CollectorSpec>::Config,)*
        }

        impl Default for MetricsCollectors {
            fn default() -> Self {
                Self {
                    interval: std::time::Duration::from_secs(15),
                    $($m: Default::default(),)*
                }
            }
        }

        /// `collectors.events`: one section per event collector.
        #[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct EventCollectors {
            $(pub $e: <$ety as $crate::framework::CollectorSpec>::Config,)*
        }

        /// `collectors.autotracing`: shared check interval plus one section per detector.
        #[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct AutotracingCollectors {
            /// Default check interval of every detector.
            #[serde(with = "humantime_serde")]
            pub interval: std::time::Duration,
            $(pub $a: <$aty as $crate::framework::CollectorSpec>::Config,)*
        }

        impl Default for AutotracingCollectors {
            fn default() -> Self {
                Self {
                    interval: std::time::Duration::from_secs(10),
                    $($a: Default::default(),)*
                }
            }
        }

        /// The `collectors:` section of the config file.
        #[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct CollectorsConfig {
            pub metrics: MetricsCollectors,
            pub events: EventCollectors,
            pub autotracing: AutotracingCollectors,
        }

        /// Every collector with its config applied, in registry order.
        pub fn catalog(config: &CollectorsConfig) -> Vec<$crate::registry::Entry> {
            vec![
                $($crate::registry::Entry::new::<$mty>(&config.metrics.$m, config.metrics.interval),)*
                $($crate::registry::Entry::new::<$ety>(&config.events.$e, config.metrics.interval),)*
                $($crate::registry::Entry::new::<$aty>(&config.autotracing.$a, config.autotracing.interval),)*
            ]
        }
    };
}

registry! {
    metrics {
        containers => crate::metrics::container::Containers,
        cpu => crate::metrics::cpu::Cpu,
        load => crate::metrics::load::Load,
        memory => crate::metrics::memory::Memory,
        vmstat => crate::metrics::vmstat::Vmstat,
        disk => crate::metrics::disk::Disk,
        pressure => crate::metrics::pressure::Pressure,
        buddyinfo => crate::metrics::buddyinfo::Buddyinfo,
        interrupts => crate::metrics::interrupts::Interrupts,
        filesystem => crate::metrics::filesystem::Filesystem,
        schedstat => crate::metrics::schedstat::Schedstat,
        runqlat => crate::metrics::runqlat::Runqlat,
        blocklat => crate::metrics::blocklat::Blocklat,
        reclaimlat => crate::metrics::reclaimlat::Reclaimlat,
        netdev => crate::metrics::net::netdev::Netdev,
        netstat => crate::metrics::net::netstat::Netstat,
        sockstat => crate::metrics::net::sockstat::Sockstat,
        softnet => crate::metrics::net::softnet::Softnet,
        qdisc => crate::metrics::net::qdisc::Qdisc,
        neighbor => crate::metrics::net::neighbor::Neighbor,
        conntrack => crate::metrics::net::conntrack::Conntrack,
    }
    events {
        dropwatch => crate::events::dropwatch::Dropwatch,
        oom => crate::events::oom::Oom,
        softirq => crate::events::softirq::Softirq,
        memreclaim => crate::events::memreclaim::Memreclaim,
        hungtask => crate::events::hungtask::Hungtask,
        softlockup => crate::events::softlockup::Softlockup,
        net_rx_latency => crate::events::net_rx_latency::NetRxLatency,
    }
    autotracing {
        cpusys => crate::autotracing::cpusys::Cpusys,
        cpuidle => crate::autotracing::cpuidle::Cpuidle,
        dload => crate::autotracing::dload::Dload,
        memburst => crate::autotracing::memburst::Memburst,
        waitrate => crate::autotracing::waitrate::Waitrate,
        iotracer => crate::autotracing::iotracer::Iotracer,
    }
}
