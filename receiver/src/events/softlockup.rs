//! `softlockup`: soft and hard lockup reports from the kernel log
//! (`/dev/kmsg`; no tracepoint exists for them).
//!
//! Event `linux.soft_lockup` per report: CPU, stuck duration, the task, RIP
//! and the call-trace lines that follow, plus whether the kernel is tainted
//! with `L` (soft lockup). Hard lockups (`Watchdog detected hard LOCKUP on
//! cpu N`) become `linux.hard_lockup`. Counter `linux.lockup.reports`.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use kotel_pipelines::{
    EventEmitter, EventRecord, KeyValue, Metric, Number, NumberPoint, Severity, Value,
};
use regex::Regex;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::framework::{
    Availability, CollectorSpec, EventCollector, HostContext, Instance, MetricsCollector, Mode,
};

pub struct Softlockup;

const NAME: &str = "softlockup";
const SCOPE: &str = "kotel/softlockup";
const KMSG: &str = "/dev/kmsg";
/// A report is complete at `</TASK>`, at the next report, or this long after its last line.
const QUIET: Duration = Duration::from_millis(500);
const MAX_LINES: usize = 200;

/// No settings beyond `enabled` and `interval`.
pub type Config = crate::framework::spec::BasicConfig;

impl CollectorSpec for Softlockup {
    const NAME: &'static str = NAME;
    const MODE: Mode = Mode::Events;
    const ABOUT: &'static str =
        "soft/hard lockup reports with CPU, task and call trace (kernel log, /dev/kmsg)";
    type Config = Config;

    fn probe(_config: &Config) -> Availability {
        match std::fs::File::open(KMSG) {
            Ok(_) => Availability::Available,
            Err(e) => Availability::Unavailable(format!(
                "cannot read {KMSG}: {e} (needs root or CAP_SYSLOG)"
            )),
        }
    }

    fn build(
        config: &Config,
        host: &HostContext,
        default_interval: Duration,
    ) -> anyhow::Result<Instance> {
        let reports = Arc::new(AtomicU64::new(0));
        Ok(Instance::Events {
            collector: Box::new(Events {
                reports: reports.clone(),
            }),
            metrics: Some((
                config.interval.unwrap_or(default_interval),
                Box::new(Counters {
                    reports,
                    start: host.agent_start,
                }),
            )),
        })
    }
}

static SOFT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"BUG: soft lockup - CPU#(\d+) stuck for (\d+)s! \[(.*):(\d+)\]").unwrap()
});
static HARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"Watchdog detected hard LOCKUP on cpu (\d+)").unwrap());
static FRAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*(\? )?([A-Za-z_.$][\w.$]*\+0x[0-9a-f]+/0x[0-9a-f]+( \[[\w-]+\])?)").unwrap()
});

/// One `/dev/kmsg` record: `prio,seq,usec,flags;message`.
#[derive(Debug, Clone, PartialEq)]
pub struct KmsgLine {
    pub facility: u32,
    pub usec: u64,
    pub text: String,
}

pub fn parse_kmsg(rec: &str) -> Option<KmsgLine> {
    let (head, msg) = rec.split_once(';')?;
    let mut f = head.split(',');
    let prio: u32 = f.next()?.parse().ok()?;
    let _seq = f.next()?;
    let usec: u64 = f.next()?.parse().ok()?;
    // Continuation lines (" KEY=value" dictionary) are not part of the message.
    let text = msg.lines().next().unwrap_or("").to_string();
    Some(KmsgLine {
        facility: prio >> 3,
        usec,
        text,
    })
}

/// A lockup report being assembled from kernel-log lines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub hard: bool,
    pub cpu: u32,
    pub stuck_secs: Option<u64>,
    pub comm: Option<String>,
    pub pid: Option<u32>,
    pub usec: u64,
    pub from_kernel: bool,
    pub rip: Option<String>,
    pub modules: Option<String>,
    pub stack: Vec<String>,
    pub lines: usize,
}

/// Line-by-line parser; returns finished reports.
#[derive(Default)]
pub struct Parser {
    cur: Option<Report>,
}

impl Parser {
    pub fn feed(&mut self, line: &KmsgLine) -> Option<Report> {
        let text = line.text.trim_end();
        let start = if let Some(c) = SOFT.captures(text) {
            Some(Report {
                cpu: c[1].parse().unwrap_or(0),
                stuck_secs: c[2].parse().ok(),
                comm: Some(c[3].to_string()),
                pid: c[4].parse().ok(),
                ..Default::default()
            })
        } else {
            HARD.captures(text).map(|c| Report {
                hard: true,
                cpu: c[1].parse().unwrap_or(0),
                ..Default::default()
            })
        };
        if let Some(mut r) = start {
            r.usec = line.usec;
            r.from_kernel = line.facility == 0;
            return self.cur.replace(r);
        }
        let cur = self.cur.as_mut()?;
        cur.lines += 1;
        if let Some(m) = text.strip_prefix("Modules linked in: ") {
            cur.modules = Some(m.to_string());
        } else if let Some(rip) = text.strip_prefix("RIP: ") {
            // `RIP: 0010:func+0x12/0x30`
            cur.rip = Some(
                rip.split_once(':')
                    .map(|(_, f)| f)
                    .unwrap_or(rip)
                    .trim()
                    .to_string(),
            );
        } else if let Some(c) = FRAME.captures(text) {
            let frame = c[2].to_string();
            cur.stack.push(if c.get(1).is_some() {
                format!("? {frame}")
            } else {
                frame
            });
        } else if cur.pid.is_none()
            && let Some(rest) = text.strip_prefix("CPU: ")
        {
            // `CPU: 3 PID: 1234 Comm: kworker/3:1 Tainted: ...` (hard lockups name the task here)
            let mut it = rest.split_whitespace();
            while let Some(w) = it.next() {
                match w {
                    "PID:" => cur.pid = it.next().and_then(|p| p.parse().ok()),
                    "Comm:" => cur.comm = it.next().map(str::to_string),
                    _ => {}
                }
            }
        }
        if text.trim() == "</TASK>" || cur.lines >= MAX_LINES {
            return self.cur.take();
        }
        None
    }

    /// The report in progress, if any (call when the log went quiet).
    pub fn flush(&mut self) -> Option<Report> {
        self.cur.take()
    }
}

fn tainted_softlockup() -> Option<bool> {
    let t: u64 = std::fs::read_to_string("/proc/sys/kernel/tainted")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(t & (1 << 14) != 0)
}

pub fn to_record(r: &Report) -> EventRecord {
    let name = if r.hard {
        "linux.hard_lockup"
    } else {
        "linux.soft_lockup"
    };
    let time = kotel_ebpf::clock::mono_to_unix_ns(r.usec * 1000);
    let mut rec = EventRecord::new(SCOPE, name, Severity::Error, time)
        .with("cpu.logical_number", r.cpu)
        .with(
            "linux.kmsg.source",
            if r.from_kernel { "kernel" } else { "user" },
        );
    if let Some(s) = r.stuck_secs {
        rec = rec.with("linux.lockup.duration_s", s as i64);
    }
    if let Some(p) = r.pid {
        rec = rec.with("process.pid", p);
    }
    if let Some(c) = &r.comm {
        rec = rec.with("process.executable.name", c.clone());
    }
    if let Some(rip) = &r.rip {
        rec = rec.with("linux.lockup.rip", rip.clone());
    }
    if let Some(m) = &r.modules {
        rec = rec.with("linux.kernel.modules", m.clone());
    }
    if !r.stack.is_empty() {
        rec = rec.with(
            "linux.kernel.stack",
            Value::Array(r.stack.iter().cloned().map(Value::from).collect()),
        );
    }
    if let Some(t) = tainted_softlockup() {
        rec = rec.with("linux.kernel.tainted_soft_lockup", t);
    }
    rec
}

struct Events {
    reports: Arc<AtomicU64>,
}

impl EventCollector for Events {
    fn run(
        self: Box<Self>,
        emitter: EventEmitter,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>> {
        let reports = self.reports.clone();
        Box::pin(async move {
            use anyhow::Context as _;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(KMSG)
                .with_context(|| format!("opening {KMSG}"))?;
            // Only new messages: start at the end of the log buffer.
            // SAFETY: lseek on an fd we own.
            unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&file), 0, libc::SEEK_END) };
            // SAFETY: the AsyncFd owns the file, so the fd outlives the registration.
            let fd = unsafe { AsyncFd::register(file) }.context("registering /dev/kmsg")?;
            let mut parser = Parser::default();
            let mut buf = vec![0u8; 8192];
            let emit = |r: Report| {
                reports.fetch_add(1, Ordering::Relaxed);
                emitter.emit(to_record(&r));
            };
            loop {
                if *shutdown.borrow() {
                    return Ok(());
                }
                let readable = tokio::select! {
                    r = tokio::time::timeout(QUIET, fd.readable()) => r,
                    _ = shutdown.changed() => return Ok(()),
                };
                let mut guard = match readable {
                    Ok(g) => g?,
                    Err(_) => {
                        if let Some(r) = parser.flush() {
                            emit(r);
                        }
                        continue;
                    }
                };
                // One read returns one record.
                loop {
                    match guard.try_io(|f| f.get_ref().read(&mut buf)) {
                        Ok(Ok(n)) => {
                            if let Some(line) = parse_kmsg(&String::from_utf8_lossy(&buf[..n]))
                                && let Some(r) = parser.feed(&line)
                            {
                                emit(r);
                            }
                        }
                        // EPIPE: records were overwritten before we read them; go on.
                        Ok(Err(e)) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                        Ok(Err(e)) => return Err(e).context("reading /dev/kmsg"),
                        Err(_would_block) => break,
                    }
                }
            }
        })
    }
}

struct Counters {
    reports: Arc<AtomicU64>,
    start: u64,
}

impl MetricsCollector for Counters {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        let point = NumberPoint {
            attributes: Vec::<KeyValue>::new(),
            start_time: self.start,
            value: Number::Int(self.reports.load(Ordering::Relaxed) as i64),
        };
        out.push(crate::events::bpf::counter(
            "linux.lockup.reports",
            "Soft and hard lockup reports seen in the kernel log since kotel started",
            "{report}",
            vec![point],
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t: &str) -> KmsgLine {
        KmsgLine {
            facility: 0,
            usec: 5,
            text: t.to_string(),
        }
    }

    #[test]
    fn parses_soft_lockup_report() {
        let mut p = Parser::default();
        assert!(
            p.feed(&line(
                "watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [stress:4242]"
            ))
            .is_none()
        );
        for l in [
            "Modules linked in: loop ext4",
            "CPU: 1 PID: 4242 Comm: stress Tainted: G             L     6.18.0 #1",
            "RIP: 0010:native_queued_spin_lock_slowpath+0x6e/0x2e0",
            "Call Trace:",
            " <TASK>",
            " _raw_spin_lock+0x29/0x30",
            " ? do_sys_openat2+0x7c/0xe0 [ext4]",
        ] {
            assert!(p.feed(&line(l)).is_none());
        }
        let r = p.feed(&line(" </TASK>")).unwrap();
        assert_eq!(
            (r.cpu, r.stuck_secs, r.pid, r.comm.as_deref()),
            (1, Some(22), Some(4242), Some("stress"))
        );
        assert_eq!(
            r.rip.as_deref(),
            Some("native_queued_spin_lock_slowpath+0x6e/0x2e0")
        );
        assert_eq!(
            r.stack,
            vec![
                "_raw_spin_lock+0x29/0x30",
                "? do_sys_openat2+0x7c/0xe0 [ext4]"
            ]
        );
        assert_eq!(
            parse_kmsg("4,1234,56789,-;hello\n SUBSYSTEM=x").unwrap(),
            KmsgLine {
                facility: 0,
                usec: 56789,
                text: "hello".into()
            }
        );
    }
}
