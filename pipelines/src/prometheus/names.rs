//! OTel → Prometheus name translation (the rules of the OTel Prometheus
//! compatibility spec: sanitise, add the unit suffix, `_total` for counters).

/// Replace every character outside `[a-zA-Z0-9_:]` with `_` and collapse runs.
pub fn sanitize(name: &str, allow_colon: bool) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    let mut last_underscore = false;
    for (i, c) in name.chars().enumerate() {
        let ok = c.is_ascii_alphanumeric() || c == '_' || (allow_colon && c == ':');
        let c = if ok { c } else { '_' };
        if c == '_' && last_underscore {
            continue;
        }
        if i == 0 && c.is_ascii_digit() {
            out.push('_');
        }
        last_underscore = c == '_';
        out.push(c);
    }
    out
}

/// The Prometheus word for a UCUM unit; `None` drops the unit (annotations
/// such as `{packet}` carry no suffix).
pub fn unit_suffix(unit: &str, is_gauge: bool) -> Option<String> {
    let unit = unit.trim();
    if unit.is_empty() || unit.starts_with('{') {
        return None;
    }
    if unit == "1" {
        return is_gauge.then(|| "ratio".to_owned());
    }
    let word = |u: &str| -> Option<&'static str> {
        Some(match u {
            "s" => "seconds",
            "ms" => "milliseconds",
            "us" => "microseconds",
            "ns" => "nanoseconds",
            "min" => "minutes",
            "h" => "hours",
            "d" => "days",
            "By" => "bytes",
            "KiBy" => "kibibytes",
            "MiBy" => "mebibytes",
            "GiBy" => "gibibytes",
            "KBy" => "kilobytes",
            "MBy" => "megabytes",
            "GBy" => "gigabytes",
            "bit" => "bits",
            "%" => "percent",
            "Hz" => "hertz",
            "Cel" => "celsius",
            "V" => "volts",
            "W" => "watts",
            "J" => "joules",
            _ => return None,
        })
    };
    if let Some((num, den)) = unit.split_once('/') {
        let n = word(num)
            .map(str::to_owned)
            .unwrap_or_else(|| sanitize(num, false));
        let d = match den {
            "s" => "second",
            "m" => "minute",
            "h" => "hour",
            other => return Some(format!("{n}_per_{}", sanitize(other, false))),
        };
        return Some(format!("{n}_per_{d}"));
    }
    Some(
        word(unit)
            .map(str::to_owned)
            .unwrap_or_else(|| sanitize(unit, false)),
    )
}

/// Full Prometheus metric family name (without `_total`, which the encoder
/// adds to counter samples).
pub fn family_name(name: &str, unit: &str, is_gauge: bool) -> String {
    let mut base = sanitize(name, true);
    if let Some(suffix) = unit_suffix(unit, is_gauge)
        && !base.ends_with(&format!("_{suffix}"))
    {
        base.push('_');
        base.push_str(&suffix);
    }
    if let Some(stripped) = base.strip_suffix("_total") {
        base = stripped.to_owned();
    }
    base
}

pub fn label_name(key: &str) -> String {
    let s = sanitize(key, false);
    if s.starts_with("__") {
        format!("key{s}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        assert_eq!(
            family_name("system.cpu.time", "s", false),
            "system_cpu_time_seconds"
        );
        assert_eq!(
            family_name("system.memory.usage", "By", true),
            "system_memory_usage_bytes"
        );
        assert_eq!(
            family_name("system.cpu.utilization", "1", true),
            "system_cpu_utilization_ratio"
        );
        assert_eq!(
            family_name("linux.net.packet.drops", "{packet}", false),
            "linux_net_packet_drops"
        );
        assert_eq!(
            family_name("kotel.exporter.sent", "{item}", false),
            "kotel_exporter_sent"
        );
        assert_eq!(
            family_name("x.rate", "By/s", true),
            "x_rate_bytes_per_second"
        );
        assert_eq!(label_name("cpu.logical_number"), "cpu_logical_number");
        assert_eq!(sanitize("9lives..ok", false), "_9lives_ok");
    }
}
