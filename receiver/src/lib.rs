//! kotel collectors and the framework that runs them.
//!
//! Layout: [`framework`] (traits, health, runner), [`registry`] (the one list
//! of collectors), [`procfs`] (allocation-free readers of kernel text files),
//! and one module per collector under [`metrics`], [`events`] and
//! [`autotracing`].

pub mod autotracing;
pub mod cgroups;
pub mod events;
pub mod framework;
pub mod kube;
pub mod metrics;
pub mod procfs;
pub mod registry;

pub use registry::{CollectorsConfig, Entry, catalog};
