//! Event collectors (see docs/events.md).
