//! Per-collector health, shown by `kotel collectors` and `GET /status`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::Mode;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum Status {
    Disabled,
    Starting,
    Running,
    Unavailable(String),
    Failing(String),
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Disabled => f.write_str("disabled"),
            Status::Starting => f.write_str("starting"),
            Status::Running => f.write_str("running"),
            Status::Unavailable(r) => write!(f, "unavailable: {r}"),
            Status::Failing(e) => write!(f, "failing: {e}"),
            Status::Stopped => f.write_str("stopped"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub mode: Mode,
    pub status: Status,
    /// Successful collections / captures / events.
    pub runs: u64,
    pub errors: u64,
    /// Duration of the last metrics collection, seconds.
    pub last_duration_seconds: Option<f64>,
}

/// Shared board of every collector's health.
#[derive(Clone, Default)]
pub struct HealthBoard {
    inner: Arc<Mutex<BTreeMap<String, Health>>>,
}

impl HealthBoard {
    pub fn set(&self, name: &str, mode: Mode, status: Status) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(name.to_owned()).or_insert(Health {
            mode,
            status: Status::Starting,
            runs: 0,
            errors: 0,
            last_duration_seconds: None,
        });
        entry.mode = mode;
        entry.status = status;
    }

    pub fn record_success(&self, name: &str, duration: Option<f64>) {
        self.update(name, |h| {
            h.runs += 1;
            if duration.is_some() {
                h.last_duration_seconds = duration;
            }
            if matches!(h.status, Status::Failing(_) | Status::Starting) {
                h.status = Status::Running;
            }
        });
    }

    pub fn record_failure(&self, name: &str, error: &anyhow::Error) {
        self.update(name, |h| {
            h.errors += 1;
            h.status = Status::Failing(format!("{error:#}"));
        });
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut Health)) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = map.get_mut(name) {
            f(h);
        }
    }

    pub fn remove_all(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn snapshot(&self) -> BTreeMap<String, Health> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
