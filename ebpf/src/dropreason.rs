//! Names of `enum skb_drop_reason` values, from the running kernel: its BTF
//! first, else the tracefs `skb/kfree_skb/format` `__print_symbolic` table.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// The reason-number → name table (names without the `SKB_DROP_REASON_`
/// prefix, as the kernel's trace output prints them: `NO_SOCKET`).
pub fn table() -> Arc<HashMap<u32, String>> {
    static T: OnceLock<Arc<HashMap<u32, String>>> = OnceLock::new();
    T.get_or_init(|| {
        let t = from_btf()
            .filter(|t| !t.is_empty())
            .or_else(from_tracefs)
            .unwrap_or_default();
        if t.is_empty() {
            tracing::warn!("no skb drop reason names (neither BTF nor tracefs); reporting numbers");
        }
        Arc::new(t)
    })
    .clone()
}

/// Name of one drop reason; unknown values become `UNKNOWN_<n>`, subsystem
/// reasons without a name `SUBSYS_<id>_<code>`.
pub fn name(reason: u32) -> String {
    if let Some(n) = table().get(&reason) {
        return n.clone();
    }
    if reason >> 16 != 0 {
        return format!("SUBSYS_{}_{}", reason >> 16, reason & 0xffff);
    }
    format!("UNKNOWN_{reason}")
}

fn from_btf() -> Option<HashMap<u32, String>> {
    let e = crate::btf::kernel_enum("skb_drop_reason")?;
    Some(
        e.into_iter()
            .filter(|(v, n)| {
                *v >= 0 && !n.ends_with("_MAX") && !n.ends_with("_MASK") && !n.ends_with("_SHIFT")
            })
            .map(|(v, n)| {
                let short = n
                    .strip_prefix("SKB_DROP_REASON_")
                    .or_else(|| n.strip_prefix("SKB_"))
                    .unwrap_or(&n)
                    .to_string();
                (v as u32, short)
            })
            .collect(),
    )
}

fn from_tracefs() -> Option<HashMap<u32, String>> {
    for root in crate::preflight::TRACEFS_ROOTS {
        if let Ok(fmt) = std::fs::read_to_string(format!("{root}/events/skb/kfree_skb/format")) {
            return Some(parse_print_symbolic(&fmt));
        }
    }
    None
}

/// Parse `{ 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }` pairs.
pub fn parse_print_symbolic(fmt: &str) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    let mut rest = fmt;
    while let Some(i) = rest.find('{') {
        rest = &rest[i + 1..];
        let Some(j) = rest.find('}') else { break };
        let pair = &rest[..j];
        if let Some((num, name)) = pair.split_once(',') {
            let num = num.trim();
            let name = name.trim().trim_matches('"');
            let v = num
                .strip_prefix("0x")
                .map(|h| u32::from_str_radix(h, 16).ok())
                .unwrap_or_else(|| num.parse().ok());
            if let Some(v) = v
                && !name.is_empty()
            {
                out.insert(v, name.to_string());
            }
        }
        rest = &rest[j..];
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_symbolic() {
        let t = super::parse_print_symbolic(
            r#"print fmt: "reason: %s", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" })"#,
        );
        assert_eq!(t[&3], "NO_SOCKET");
        assert_eq!(t[&2], "NOT_SPECIFIED");
    }
}
