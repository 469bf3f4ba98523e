//! `conntrack`: netfilter connection-tracking table fill vs its limit
//! (`/proc/sys/net/netfilter/nf_conntrack_{count,max}`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use kotel_pipelines::Metric;

use super::{gauge, net_config, point};
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode,
};
use crate::procfs::{self, ProcFile};

pub struct Conntrack;

net_config!();

const COUNT: &str = "sys/net/netfilter/nf_conntrack_count";
const MAX: &str = "sys/net/netfilter/nf_conntrack_max";

impl CollectorSpec for Conntrack {
    const NAME: &'static str = "conntrack";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str = "Connection-tracking entries vs nf_conntrack_max";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        if Path::new("/proc").join(COUNT).exists() {
            Availability::Available
        } else {
            Availability::Unavailable(
                "nf_conntrack is not loaded (no /proc/sys/net/netfilter/nf_conntrack_count)".into(),
            )
        }
    }

    fn build(config: &Config, _host: &HostContext, default: Duration) -> anyhow::Result<Instance> {
        let c = ConntrackCollector::new(Path::new("/proc"))?;
        Ok(crate::framework::Instance::metrics(
            config.interval,
            default,
            c,
        ))
    }
}

pub(crate) struct ConntrackCollector {
    count: ProcFile,
    max: ProcFile,
}

impl ConntrackCollector {
    pub(crate) fn new(root: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            count: ProcFile::open(root.join(COUNT))?,
            max: ProcFile::open(root.join(MAX))?,
        })
    }
}

fn number(file: &mut ProcFile) -> anyhow::Result<u64> {
    let buf = file.read()?;
    procfs::parse_u64(buf.trim_ascii())
        .with_context(|| format!("{}: not a number", file.path().display()))
}

impl MetricsCollector for ConntrackCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let (count, max) = (number(&mut self.count)?, number(&mut self.max)?);
        out.push(gauge(
            "linux.net.conntrack.count",
            "Connections tracked by netfilter now",
            "{connection}",
            vec![point(Vec::new(), 0, count)],
        ));
        out.push(gauge(
            "linux.net.conntrack.limit",
            "Size limit of the connection-tracking table (nf_conntrack_max)",
            "{connection}",
            vec![point(Vec::new(), 0, max)],
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::net::testutil::*;

    #[test]
    fn fixture_and_garbage() {
        let mut c = ConntrackCollector::new(&root()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        let want = |f: &str| {
            std::fs::read_to_string(root().join(f))
                .unwrap()
                .trim()
                .parse::<i64>()
                .unwrap()
        };
        assert_eq!(
            value(find(&out, "linux.net.conntrack.count"), &[]),
            Some(want(COUNT))
        );
        assert_eq!(
            value(find(&out, "linux.net.conntrack.limit"), &[]),
            Some(want(MAX))
        );
        assert!(want(MAX) > 0);

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/net/netfilter")).unwrap();
        assert!(
            ConntrackCollector::new(dir.path()).is_err(),
            "module not loaded"
        );
        std::fs::write(dir.path().join(COUNT), "x\n").unwrap();
        std::fs::write(dir.path().join(MAX), "5\n").unwrap();
        let mut c = ConntrackCollector::new(dir.path()).unwrap();
        let err = c.collect(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("nf_conntrack_count"), "{err}");
    }
}
