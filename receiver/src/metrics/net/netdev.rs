//! `netdev`: per-interface traffic counters from `/proc/net/dev`.

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use kotel_pipelines::{KeyValue, Metric, NumberPoint, Value, now_nanos};

use super::{Cap, Filter, Starts, net_config, point, probe_path, sum};
use crate::framework::{
    Availability, CollectorSpec, HostContext, Instance, MetricsCollector, Mode,
};
use crate::procfs::{self, ProcFile};

pub struct Netdev;

net_config!(filtered("interface name", 4000));

impl CollectorSpec for Netdev {
    const NAME: &'static str = "netdev";
    const MODE: Mode = Mode::Metrics;
    const ABOUT: &'static str = "Per-interface bytes, packets, errors and drops (/proc/net/dev)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        probe_path(Path::new("/proc/net/dev"))
    }

    fn build(config: &Config, host: &HostContext, default: Duration) -> anyhow::Result<Instance> {
        let c = NetdevCollector::new(Path::new("/proc"), config, host)?;
        Ok(crate::framework::Instance::metrics(
            config.interval,
            default,
            c,
        ))
    }
}

/// Columns of a `/proc/net/dev` line.
const RX_BYTES: usize = 0;
const RX_PACKETS: usize = 1;
const RX_ERRS: usize = 2;
const RX_DROP: usize = 3;
const RX_FIFO: usize = 4;
const RX_FRAME: usize = 5;
const RX_COMPRESSED: usize = 6;
const RX_MULTICAST: usize = 7;
const TX: usize = 8; // transmit columns start here, same order up to drop/fifo
const TX_COLLS: usize = 13;
const TX_CARRIER: usize = 14;
const TX_COMPRESSED: usize = 15;

/// (metric, description, unit, [(column, direction, error.type)]).
type Spec = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(usize, &'static str, &'static str)],
);
const METRICS: &[Spec] = &[
    (
        "system.network.io",
        "Bytes received and transmitted",
        "By",
        &[(RX_BYTES, "receive", ""), (TX + RX_BYTES, "transmit", "")],
    ),
    (
        "system.network.packet.count",
        "Packets received and transmitted",
        "{packet}",
        &[
            (RX_PACKETS, "receive", ""),
            (TX + RX_PACKETS, "transmit", ""),
        ],
    ),
    (
        "system.network.errors",
        "Receive and transmit errors, all causes",
        "{error}",
        &[(RX_ERRS, "receive", ""), (TX + RX_ERRS, "transmit", "")],
    ),
    (
        "system.network.packet.dropped",
        "Packets dropped by the interface or its driver",
        "{packet}",
        &[(RX_DROP, "receive", ""), (TX + RX_DROP, "transmit", "")],
    ),
    (
        "linux.network.errors",
        "Errors by cause: FIFO overruns, frame (alignment/CRC), carrier losses",
        "{error}",
        &[
            (RX_FIFO, "receive", "fifo"),
            (RX_FRAME, "receive", "frame"),
            (TX + RX_FIFO, "transmit", "fifo"),
            (TX_CARRIER, "transmit", "carrier"),
        ],
    ),
    (
        "linux.network.collisions",
        "Collisions detected while transmitting",
        "{collision}",
        &[(TX_COLLS, "", "")],
    ),
    (
        "linux.network.multicast",
        "Multicast packets received",
        "{packet}",
        &[(RX_MULTICAST, "receive", "")],
    ),
    (
        "linux.network.packet.compressed",
        "Compressed packets (CSLIP, PPP) received and transmitted",
        "{packet}",
        &[
            (RX_COMPRESSED, "receive", ""),
            (TX_COMPRESSED, "transmit", ""),
        ],
    ),
];
const SERIES_PER_DEVICE: usize = 16;

struct Device {
    name: Box<[u8]>,
    attr: Cow<'static, str>,
    selected: bool,
}

pub(crate) struct NetdevCollector {
    file: ProcFile,
    filter: Filter,
    max_series: usize,
    devices: Vec<Device>,
    starts: Starts<String>,
    values: Vec<(usize, u64, [u64; 16])>,
}

impl NetdevCollector {
    pub(crate) fn new(root: &Path, config: &Config, host: &HostContext) -> anyhow::Result<Self> {
        Ok(Self {
            file: ProcFile::open(root.join("net/dev"))?,
            filter: Filter::new(Netdev::NAME, &config.include, &config.exclude)?,
            max_series: config.max_series,
            devices: Vec::new(),
            starts: Starts::new(host.boot_time),
            values: Vec::new(),
        })
    }
}

impl MetricsCollector for NetdevCollector {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let Self {
            file,
            filter,
            max_series,
            devices,
            starts,
            values,
        } = self;
        let buf = file.read()?;
        let mut cap = Cap::new(*max_series);
        starts.begin(now_nanos());
        values.clear();
        // Two header lines, then `name: 16 numbers`.
        let mut slot = 0;
        for line in procfs::lines(buf).skip(2) {
            let Some((name, rest)) = procfs::key_value(line) else {
                continue;
            };
            let name = name.trim_ascii();
            let i = slot;
            slot += 1;
            if devices.get(i).is_none_or(|d| *d.name != *name) {
                let text = String::from_utf8_lossy(name).into_owned();
                let d = Device {
                    name: name.into(),
                    selected: filter.matches(&text),
                    attr: text.into(),
                };
                if i < devices.len() {
                    devices[i] = d
                } else {
                    devices.push(d)
                }
            }
            if !devices[i].selected {
                continue;
            }
            let mut v = [0u64; 16];
            let mut n = 0;
            for (slot, f) in v.iter_mut().zip(procfs::fields(rest)) {
                let Some(x) = procfs::parse_u64(f) else { break };
                *slot = x;
                n += 1;
            }
            if n < 16 || !cap.admit(SERIES_PER_DEVICE) {
                continue;
            }
            let start = starts.start(
                &*devices[i].attr,
                v[RX_PACKETS].wrapping_add(v[TX + RX_PACKETS]),
            );
            values.push((i, start, v));
        }
        starts.end();
        devices.truncate(slot);
        for &(name, description, unit, columns) in METRICS {
            let mut points: Vec<NumberPoint> = Vec::with_capacity(values.len() * columns.len());
            for (i, start, v) in values.iter() {
                for &(col, direction, error) in columns {
                    let mut attributes = Vec::with_capacity(3);
                    attributes.push(KeyValue::new(
                        "network.interface.name",
                        Value::Str(devices[*i].attr.clone()),
                    ));
                    if !direction.is_empty() {
                        attributes.push(KeyValue::new("network.io.direction", direction));
                    }
                    if !error.is_empty() {
                        attributes.push(KeyValue::new("error.type", error));
                    }
                    points.push(point(attributes, *start, v[col]));
                }
            }
            if !points.is_empty() {
                out.push(sum(name, description, unit, points));
            }
        }
        cap.report(Netdev::NAME, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::net::testutil::*;

    fn collect(config: &Config) -> Vec<Metric> {
        let mut c = NetdevCollector::new(&root(), config, &host()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        let mut again = Vec::new();
        c.collect(&mut again).unwrap();
        assert_eq!(out, again);
        out
    }

    #[test]
    fn parses_every_interface() {
        let out = collect(&Config::default());
        let io = find(&out, "system.network.io");
        assert!(is_sum(io) && io.unit == "By");
        // eth0 from the capture: rx 1328968889 bytes, tx 6632126.
        let eth0 = |d| {
            value(
                io,
                &[
                    ("network.interface.name", "eth0"),
                    ("network.io.direction", d),
                ],
            )
        };
        assert_eq!(eth0("receive"), Some(1328968889));
        assert_eq!(eth0("transmit"), Some(6632126));
        assert_eq!(points(io)[0].start_time, host().boot_time);
        let packets = find(&out, "system.network.packet.count");
        assert_eq!(
            value(
                packets,
                &[
                    ("network.interface.name", "lo"),
                    ("network.io.direction", "receive")
                ]
            ),
            Some(11907)
        );
        let errors = find(&out, "linux.network.errors");
        assert_eq!(points(errors).len(), 4 * 4);
        assert_eq!(
            value(
                errors,
                &[
                    ("network.interface.name", "ifb0"),
                    ("error.type", "carrier")
                ]
            ),
            Some(0)
        );
        assert_eq!(points(find(&out, "linux.network.collisions")).len(), 4);
        let series: usize = out
            .iter()
            .filter(|m| m.name != "linux.collector.series.dropped")
            .map(|m| points(m).len())
            .sum();
        assert_eq!(series, 4 * SERIES_PER_DEVICE);
        assert_eq!(dropped(&out), 0);
    }

    #[test]
    fn filters_and_cap() {
        let out = collect(&Config {
            exclude: vec!["ifb.*".into()],
            ..Config::default()
        });
        assert_eq!(points(find(&out, "system.network.io")).len(), 4);
        let out = collect(&Config {
            include: vec!["eth0".into(), "lo".into()],
            max_series: 20,
            ..Config::default()
        });
        // Only the first selected interface (lo) fits in 20 series.
        let io = find(&out, "system.network.io");
        assert_eq!(points(io).len(), 2);
        assert!(value(io, &[("network.interface.name", "lo")]).is_some());
        assert_eq!(dropped(&out), SERIES_PER_DEVICE as i64);
    }

    #[test]
    fn short_and_odd_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        std::fs::write(
            dir.path().join("net/dev"),
            "h1\nh2\n  eth9:18446744073709551615 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\nbroken line\n  old: 1 2 3\n",
        )
        .unwrap();
        let mut c = NetdevCollector::new(dir.path(), &Config::default(), &host()).unwrap();
        let mut out = Vec::new();
        c.collect(&mut out).unwrap();
        let io = find(&out, "system.network.io");
        assert_eq!(points(io).len(), 2, "the truncated line is skipped");
        assert_eq!(
            value(io, &[("network.io.direction", "receive")]),
            Some(i64::MAX)
        );
    }
}
