//! Include/exclude filters over whole names (devices, interfaces, mount
//! points, keys), shared by the metrics collectors.

use anyhow::Context as _;
use regex::RegexSet;

/// An include/exclude pair of whole-string regular expressions.
#[derive(Debug)]
pub(crate) struct Filter {
    include: Option<RegexSet>,
    exclude: RegexSet,
}

impl Filter {
    /// `include` empty = everything. Errors name the collector and pattern.
    pub(crate) fn new(
        collector: &str,
        include: &[String],
        exclude: &[String],
    ) -> anyhow::Result<Self> {
        let set = |what: &str, patterns: &[String]| -> anyhow::Result<RegexSet> {
            for p in patterns {
                regex::Regex::new(&format!("^(?:{p})$"))
                    .with_context(|| format!("{collector}: invalid {what} regex {p:?}"))?;
            }
            Ok(RegexSet::new(
                patterns.iter().map(|p| format!("^(?:{p})$")),
            )?)
        };
        Ok(Self {
            include: if include.is_empty() {
                None
            } else {
                Some(set("include", include)?)
            },
            exclude: set("exclude", exclude)?,
        })
    }

    pub(crate) fn matches(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(name)) && !self.exclude.is_match(name)
    }

    /// Selected when any of `names` is included and none is excluded.
    pub(crate) fn matches_any(&self, names: &[&str]) -> bool {
        self.include
            .as_ref()
            .is_none_or(|s| names.iter().any(|n| s.is_match(n)))
            && !names.iter().any(|n| self.exclude.is_match(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_is_anchored() {
        let f = Filter::new("t", &["eth.*".into(), "lo".into()], &["eth1".into()]).unwrap();
        assert!(f.matches("eth0") && f.matches("lo"));
        assert!(!f.matches("eth1") && !f.matches("xlo") && !f.matches("lo0"));
        let err = Filter::new("netdev", &[], &["(".into()]).err().unwrap();
        assert!(format!("{err:#}").contains("netdev: invalid exclude regex"));
    }
}
