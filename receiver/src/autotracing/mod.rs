//! Autotracing detectors (see docs/autotracing.md).
