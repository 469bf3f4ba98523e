//! Runs built collectors: metrics on their intervals, event collectors as
//! long-running tasks (restarted with back-off when they fail), detectors with
//! cooldowns. A failing or panicking collector never stops the others.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kotel_pipelines::{Metric, MetricsSnapshot, Router};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::{Detector, HealthBoard, HostContext, Instance, MetricsCollector, Status};
use crate::registry::Entry;

/// Handle on every running collector task.
pub struct Running {
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Signal every collector to stop and wait up to `deadline` for them.
    pub async fn stop(mut self, deadline: Duration) {
        let _ = self.shutdown.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(deadline, all).await.is_err() {
            warn!("collectors did not stop within {deadline:?}; aborting them");
            self.tasks.abort_all();
        }
    }
}

/// The metrics half of an event collector. When the event half fails and is
/// rebuilt, the new metrics half (reading the new BPF object) replaces the old.
#[derive(Clone)]
struct MetricsSlot(Arc<std::sync::Mutex<Box<dyn MetricsCollector>>>);

impl MetricsCollector for MetricsSlot {
    fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .collect(out)
    }
}

/// Collectors scheduled in one group share one interval and one timer.
struct Scheduled {
    name: &'static str,
    collector: Box<dyn MetricsCollector>,
}

/// Build every enabled, available collector and start it.
/// `extra` are metrics collectors outside the registry (kotel's own telemetry).
pub fn start(
    entries: &[Entry],
    extra: Vec<(&'static str, Duration, Box<dyn MetricsCollector>)>,
    host: &HostContext,
    router: &Router,
    health: &HealthBoard,
) -> Running {
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut groups: BTreeMap<Duration, Vec<Scheduled>> = BTreeMap::new();
    let capture_slot = Arc::new(Semaphore::new(1));

    for entry in entries {
        if !entry.enabled {
            health.set(entry.name, entry.mode, Status::Disabled);
            continue;
        }
        if let super::Availability::Unavailable(why) = &entry.availability {
            info!(collector = entry.name, "unavailable: {why}");
            health.set(entry.name, entry.mode, Status::Unavailable(why.clone()));
            continue;
        }
        health.set(entry.name, entry.mode, Status::Starting);
        match entry.build(host) {
            Ok(Instance::Metrics {
                interval,
                collector,
            }) => {
                groups.entry(interval).or_default().push(Scheduled {
                    name: entry.name,
                    collector,
                });
            }
            Ok(Instance::Events { collector, metrics }) => {
                let slot = metrics.map(|(interval, metrics)| {
                    let slot = MetricsSlot(Arc::new(std::sync::Mutex::new(metrics)));
                    groups.entry(interval).or_default().push(Scheduled {
                        name: entry.name,
                        collector: Box::new(slot.clone()),
                    });
                    slot
                });
                tasks.spawn(run_events(
                    entry.clone(),
                    Some(collector),
                    slot,
                    host.clone(),
                    router.clone(),
                    health.clone(),
                    shutdown_rx.clone(),
                ));
            }
            Ok(Instance::Autotracing {
                interval,
                cooldown,
                detector,
            }) => {
                tasks.spawn(run_detector(
                    entry.name,
                    interval,
                    cooldown,
                    detector,
                    capture_slot.clone(),
                    router.clone(),
                    health.clone(),
                    shutdown_rx.clone(),
                ));
            }
            Err(e) => {
                warn!(collector = entry.name, "cannot start: {e:#}");
                health.set(
                    entry.name,
                    entry.mode,
                    Status::Unavailable(format!("{e:#}")),
                );
            }
        }
    }
    // Every BPF object is loaded by now; let the parsed kernel BTF go.
    kotel_ebpf::btf::release_kernel_btf();
    for (name, interval, collector) in extra {
        health.set(name, super::Mode::Metrics, Status::Starting);
        groups
            .entry(interval)
            .or_default()
            .push(Scheduled { name, collector });
    }
    for (interval, group) in groups {
        tasks.spawn(run_metrics_group(
            interval,
            group,
            router.clone(),
            health.clone(),
            shutdown_rx.clone(),
        ));
    }
    Running { shutdown, tasks }
}

/// Collect one group on its interval; the snapshot goes to every metrics
/// pipeline at once, so exporters never trigger collection themselves.
async fn run_metrics_group(
    interval: Duration,
    mut group: Vec<Scheduled>,
    router: Router,
    health: HealthBoard,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        // procfs and BPF map reads take microseconds; running them here is
        // cheaper than handing each to a blocking thread.
        tokio::task::block_in_place(|| {
            for item in &mut group {
                collect_one(item, &router, &health);
            }
        });
    }
    for item in &group {
        health.set(item.name, super::Mode::Metrics, Status::Stopped);
    }
}

fn collect_one(item: &mut Scheduled, router: &Router, health: &HealthBoard) {
    let started = Instant::now();
    let time = kotel_pipelines::now_nanos();
    let mut metrics: Vec<Metric> = Vec::new();
    let result =
        std::panic::catch_unwind(AssertUnwindSafe(|| item.collector.collect(&mut metrics)));
    let elapsed = started.elapsed().as_secs_f64();
    match result {
        Ok(Ok(())) => {
            health.record_success(item.name, Some(elapsed));
            router.publish_metrics(MetricsSnapshot {
                scope: format!("kotel/{}", item.name).into(),
                time,
                metrics,
            });
        }
        Ok(Err(e)) => {
            debug!(collector = item.name, "collection failed: {e:#}");
            health.record_failure(item.name, &e);
        }
        Err(_) => health.record_failure(item.name, &anyhow::anyhow!("collector panicked")),
    }
}

/// Run an event collector; when it fails, rebuild it and retry with back-off.
async fn run_events(
    entry: Entry,
    mut first: Option<Box<dyn super::EventCollector>>,
    metrics_slot: Option<MetricsSlot>,
    host: HostContext,
    router: Router,
    health: HealthBoard,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let collector = match first.take() {
            Some(c) => c,
            None => match entry.build(&host) {
                Ok(Instance::Events { collector, metrics }) => {
                    if let (Some(slot), Some((_, fresh))) = (&metrics_slot, metrics) {
                        *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
                    }
                    collector
                }
                Ok(_) => return,
                Err(e) => {
                    health.record_failure(entry.name, &e);
                    if sleep_or_stop(&mut shutdown, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    continue;
                }
            },
        };
        health.set(entry.name, entry.mode, Status::Running);
        let run = collector.run(router.emitter(), shutdown.clone());
        match tokio::spawn(run).await {
            Ok(Ok(())) => {
                health.set(entry.name, entry.mode, Status::Stopped);
                return;
            }
            Ok(Err(e)) => {
                warn!(
                    collector = entry.name,
                    "failed: {e:#}; restarting in {backoff:?}"
                );
                health.record_failure(entry.name, &e);
            }
            Err(join) => {
                warn!(
                    collector = entry.name,
                    "panicked: {join}; restarting in {backoff:?}"
                );
                health.record_failure(entry.name, &anyhow::anyhow!("collector panicked"));
            }
        }
        if *shutdown.borrow() || sleep_or_stop(&mut shutdown, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// Returns true when shutdown fired during the sleep.
async fn sleep_or_stop(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

/// Cooldown bookkeeping per scope of one detector.
#[derive(Default)]
pub struct Cooldowns {
    last: HashMap<String, Instant>,
}

impl Cooldowns {
    pub fn ready(&self, scope: &str, cooldown: Duration, now: Instant) -> bool {
        self.last
            .get(scope)
            .is_none_or(|t| now.duration_since(*t) >= cooldown)
    }

    pub fn mark(&mut self, scope: &str, now: Instant) {
        self.last.insert(scope.to_owned(), now);
    }
}

/// kotel's own CPU use (all threads, from `getrusage`) over about the last
/// minute, sampled at each detector check: the capture CPU budget.
#[derive(Default)]
pub struct CpuMeter {
    samples: std::collections::VecDeque<(Instant, f64)>,
}

impl CpuMeter {
    pub fn sample(&mut self, now: Instant) {
        self.push(now, process_cpu_seconds());
    }

    pub fn push(&mut self, now: Instant, cpu: f64) {
        self.samples.push_back((now, cpu));
        // Keep one sample at least a minute old as the baseline.
        while self.samples.len() > 2
            && now.duration_since(self.samples[1].0) >= Duration::from_secs(60)
        {
            self.samples.pop_front();
        }
    }

    /// Average CPUs used between the oldest kept sample and the newest.
    pub fn cores(&self) -> Option<f64> {
        let (t0, c0) = *self.samples.front()?;
        let (t1, c1) = *self.samples.back()?;
        let wall = t1.duration_since(t0).as_secs_f64();
        (wall > 0.0).then(|| (c1 - c0) / wall)
    }
}

fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage only fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

#[allow(clippy::too_many_arguments)]
async fn run_detector(
    name: &'static str,
    interval: Duration,
    cooldown: Duration,
    detector: Box<dyn Detector>,
    capture_slot: Arc<Semaphore>,
    router: Router,
    health: HealthBoard,
    mut shutdown: watch::Receiver<bool>,
) {
    health.set(name, super::Mode::Autotracing, Status::Running);
    let budget = detector.capture_cpu_budget();
    let mut cpu_meter = CpuMeter::default();
    let detector = Arc::new(std::sync::Mutex::new(detector));
    let mut cooldowns = Cooldowns::default();
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        let d = detector.clone();
        let checked = tokio::task::spawn_blocking(move || {
            d.lock().unwrap_or_else(|e| e.into_inner()).check()
        })
        .await;
        let mut triggers = match checked {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                health.record_failure(name, &e);
                continue;
            }
            Err(_) => {
                health.record_failure(name, &anyhow::anyhow!("detector panicked"));
                continue;
            }
        };
        health.record_success(name, None);
        cpu_meter.sample(Instant::now());
        triggers.sort_by(|a, b| b.excess.total_cmp(&a.excess));
        for trigger in triggers {
            let now = Instant::now();
            if !cooldowns.ready(&trigger.scope, cooldown, now) {
                continue;
            }
            if let (Some(budget), Some(used)) = (budget, cpu_meter.cores())
                && used > budget
            {
                info!(
                    collector = name,
                    scope = trigger.scope,
                    "capture skipped: kotel used {used:.2} CPUs over the last minute (budget {budget})"
                );
                continue;
            }
            // One heavy capture at a time across all detectors.
            let Ok(_slot) = capture_slot.clone().acquire_owned().await else {
                return;
            };
            cooldowns.mark(&trigger.scope, now);
            let d = detector.clone();
            let captured = tokio::task::spawn_blocking(move || {
                d.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .capture(&trigger)
            })
            .await;
            match captured {
                Ok(Ok(record)) => router.emit(record),
                Ok(Err(e)) => health.record_failure(name, &e),
                Err(_) => health.record_failure(name, &anyhow::anyhow!("capture panicked")),
            }
        }
    }
    health.set(name, super::Mode::Autotracing, Status::Stopped);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_meter_averages_the_last_minute() {
        let mut m = CpuMeter::default();
        let t0 = Instant::now();
        assert_eq!(m.cores(), None);
        m.push(t0, 0.0);
        m.push(t0 + Duration::from_secs(10), 5.0);
        assert_eq!(m.cores(), Some(0.5));
        for i in 2..20 {
            m.push(t0 + Duration::from_secs(10 * i), 5.0);
        }
        // The burst is more than a minute old now.
        assert_eq!(m.cores(), Some(0.0));
    }

    #[test]
    fn cooldown_is_per_scope() {
        let mut c = Cooldowns::default();
        let t0 = Instant::now();
        assert!(c.ready("host", Duration::from_secs(60), t0));
        c.mark("host", t0);
        assert!(!c.ready(
            "host",
            Duration::from_secs(60),
            t0 + Duration::from_secs(59)
        ));
        assert!(c.ready("container-a", Duration::from_secs(60), t0));
        assert!(c.ready(
            "host",
            Duration::from_secs(60),
            t0 + Duration::from_secs(60)
        ));
    }
}

#[cfg(test)]
mod restart_tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use kotel_pipelines::{
        EventEmitter, Metric, MetricsSink, MetricsSnapshot, NumberPoint, Router,
    };
    use serde::{Deserialize, Serialize};

    use crate::framework::{
        Availability, CollectorSpec, EventCollector, HealthBoard, HostContext, Instance,
        MetricsCollector, Mode,
    };
    use crate::registry::Entry;

    /// Builds so far; each build is one "generation" of BPF object.
    static BUILDS: AtomicU64 = AtomicU64::new(0);

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct Cfg;
    impl crate::framework::CommonSettings for Cfg {
        fn enabled(&self) -> bool {
            true
        }
    }

    /// Fails on its first run, as a collector whose ring buffer broke would.
    struct Flaky(u64);
    impl EventCollector for Flaky {
        fn run(
            self: Box<Self>,
            _: EventEmitter,
            mut shutdown: tokio::sync::watch::Receiver<bool>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>
        {
            Box::pin(async move {
                if self.0 == 1 {
                    anyhow::bail!("first generation fails");
                }
                let _ = shutdown.changed().await;
                Ok(())
            })
        }
    }

    struct Generation(u64);
    impl MetricsCollector for Generation {
        fn collect(&mut self, out: &mut Vec<Metric>) -> anyhow::Result<()> {
            out.push(Metric::gauge(
                "test.generation",
                "",
                "1",
                vec![NumberPoint::new(vec![], 0, self.0)],
            ));
            Ok(())
        }
    }

    struct Spec;
    impl CollectorSpec for Spec {
        const NAME: &'static str = "flaky";
        const MODE: Mode = Mode::Events;
        const ABOUT: &'static str = "test";
        type Config = Cfg;
        fn probe(_: &Cfg) -> Availability {
            Availability::Available
        }
        fn build(_: &Cfg, _: &HostContext, interval: Duration) -> anyhow::Result<Instance> {
            let g = BUILDS.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Instance::Events {
                collector: Box::new(Flaky(g)),
                metrics: Some((interval, Box::new(Generation(g)))),
            })
        }
    }

    #[derive(Default)]
    struct Last(Mutex<Option<Arc<MetricsSnapshot>>>);
    impl MetricsSink for Last {
        fn name(&self) -> &str {
            "last"
        }
        fn publish(&self, s: Arc<MetricsSnapshot>) {
            *self.0.lock().unwrap() = Some(s);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_event_collector_gets_its_new_metrics_half() {
        let host = HostContext {
            boot_time: 0,
            agent_start: 0,
            clock_tick: 0.01,
            page_size: 4096,
            capture_dir: std::env::temp_dir(),
        };
        let router = Router::new();
        let last = Arc::new(Last::default());
        router.set(vec![last.clone()], vec![]);
        let health = HealthBoard::default();
        let entry = Entry::new::<Spec>(&Cfg, Duration::from_millis(100));
        let running = super::start(&[entry], vec![], &host, &router, &health);
        let generation = || {
            let snap = last.0.lock().unwrap().clone()?;
            match &snap.metrics[0].data {
                kotel_pipelines::MetricData::Gauge(p) => Some(p[0].value),
                _ => None,
            }
        };
        let mut seen = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen = generation();
            if seen == Some(kotel_pipelines::Number::Int(2)) {
                break;
            }
        }
        running.stop(Duration::from_secs(2)).await;
        assert_eq!(
            seen,
            Some(kotel_pipelines::Number::Int(2)),
            "metrics come from the rebuilt instance"
        );
        assert_eq!(
            health.snapshot()["flaky"].errors,
            1,
            "the failure was counted"
        );
    }
}
