//! What every collector declares about itself.

use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};

use super::{HostContext, Instance};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Metrics,
    Events,
    Autotracing,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Metrics => "metrics",
            Mode::Events => "events",
            Mode::Autotracing => "autotracing",
        }
    }
}

/// Whether a collector can run on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Available,
    Unavailable(String),
}

impl std::fmt::Display for Availability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Availability::Available => f.write_str("available"),
            Availability::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

/// Settings every collector config carries.
pub trait CommonSettings {
    fn enabled(&self) -> bool;
    /// Collection or check interval; `None` = the mode's default.
    fn interval(&self) -> Option<Duration> {
        None
    }
}

/// A collector type: its name, mode, config and how to build it.
pub trait CollectorSpec {
    const NAME: &'static str;
    const MODE: Mode;
    /// One line for `kotel collectors`.
    const ABOUT: &'static str;
    type Config: DeserializeOwned
        + Serialize
        + Default
        + CommonSettings
        + Clone
        + std::fmt::Debug
        + PartialEq
        + Send
        + Sync
        + 'static;

    /// Cheap check whether the sources exist here (files, tracepoints, BTF).
    fn probe(config: &Self::Config) -> Availability;

    fn build(
        config: &Self::Config,
        host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance>;
}

/// Implements [`CommonSettings`] for a config struct with `enabled` and
/// `interval: Option<Duration>` fields.
#[macro_export]
macro_rules! common_settings {
    ($ty:ty) => {
        impl $crate::framework::CommonSettings for $ty {
            fn enabled(&self) -> bool {
                self.enabled
            }
            fn interval(&self) -> Option<std::time::Duration> {
                self.interval
            }
        }
    };
}

pub fn default_true() -> bool {
    true
}

/// The config of a collector with no settings of its own.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BasicConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
}

impl Default for BasicConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
        }
    }
}

crate::common_settings!(BasicConfig);

/// Available when the kernel file `path` exists.
pub fn probe_path(path: impl AsRef<std::path::Path>) -> Availability {
    let path = path.as_ref();
    if path.exists() {
        Availability::Available
    } else {
        Availability::Unavailable(format!("{} not present", path.display()))
    }
}
