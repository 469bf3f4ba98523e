//! The agent's resource: detected host facts, then `OTEL_RESOURCE_ATTRIBUTES`,
//! then `OTEL_SERVICE_NAME`, then the config's `resource:` section.

use kotel_pipelines::{Resource, Value};

use crate::config::{Config, Scalar};

/// Namespace for `service.instance.id` as the OTel resource conventions
/// recommend (UUID v5 of an inherent host id).
const INSTANCE_NAMESPACE: uuid::Uuid = uuid::uuid!("4d63009a-8d0f-11ee-aad7-4c796ed8e320");

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn os_description() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn build(config: &Config, get_env: &dyn Fn(&str) -> Option<String>) -> Resource {
    let mut r = Resource::default();
    let hostname = read_trimmed("/proc/sys/kernel/hostname").unwrap_or_else(|| "localhost".into());
    let machine_id =
        read_trimmed("/etc/machine-id").or_else(|| read_trimmed("/var/lib/dbus/machine-id"));
    r.set("service.name", "kotel");
    r.set("service.version", env!("CARGO_PKG_VERSION"));
    // Stable per host: derived from the machine id (or the hostname without one).
    let inherent = machine_id.clone().unwrap_or_else(|| hostname.clone());
    r.set(
        "service.instance.id",
        uuid::Uuid::new_v5(&INSTANCE_NAMESPACE, inherent.as_bytes()).to_string(),
    );
    r.set("host.name", hostname);
    if let Some(id) = machine_id {
        r.set("host.id", id);
    }
    r.set("host.arch", arch());
    r.set("os.type", "linux");
    if let Some(release) = read_trimmed("/proc/sys/kernel/osrelease") {
        r.set("os.version", release);
    }
    if let Some(d) = os_description() {
        r.set("os.description", d);
    }
    if let Some(attrs) = get_env("OTEL_RESOURCE_ATTRIBUTES") {
        match crate::config::env_key_values(&attrs) {
            Ok(kvs) => kvs.into_iter().for_each(|(k, v)| r.set(k, v)),
            Err(e) => tracing::warn!("ignoring OTEL_RESOURCE_ATTRIBUTES: {e}"),
        }
    }
    if let Some(name) = get_env("OTEL_SERVICE_NAME").filter(|s| !s.is_empty()) {
        r.set("service.name", name);
    }
    for (k, v) in &config.resource {
        let value = match v {
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Int(i) => Value::Int(*i),
            Scalar::Double(d) => Value::Double(*d),
            Scalar::Str(s) => Value::from(s.clone()),
        };
        r.set(k.clone(), value);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_detected_env_service_name_config() {
        let mut config = Config::default();
        config
            .resource
            .insert("team".into(), Scalar::Str("kernel".into()));
        let env = |k: &str| match k {
            "OTEL_RESOURCE_ATTRIBUTES" => {
                Some("service.name=fromattrs,team=env,region=eu%2Dwest".to_owned())
            }
            "OTEL_SERVICE_NAME" => Some("node-agent".to_owned()),
            _ => None,
        };
        let r = build(&config, &env);
        assert_eq!(
            r.get("service.name").and_then(Value::as_str),
            Some("node-agent")
        );
        assert_eq!(r.get("team").and_then(Value::as_str), Some("kernel"));
        assert_eq!(r.get("region").and_then(Value::as_str), Some("eu-west"));
        assert_eq!(r.get("os.type").and_then(Value::as_str), Some("linux"));
        let a = build(&Config::default(), &|_| None);
        assert_eq!(
            a.get("service.instance.id"),
            r.get("service.instance.id"),
            "stable per host"
        );
    }
}
