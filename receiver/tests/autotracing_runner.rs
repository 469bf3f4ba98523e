//! The runner's rules for detectors: per-(detector, scope) cooldowns,
//! captures ordered by excess, and the capture CPU budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kotel_pipelines::{EventRecord, EventSink, KeyValue, Router, Severity};
use kotel_receiver::framework::{
    Availability, CollectorSpec, Detector, HealthBoard, HostContext, Instance, Mode, Trigger,
};
use kotel_receiver::registry::Entry;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct FakeConfig {
    enabled: bool,
    #[serde(with = "humantime_serde")]
    interval: Option<Duration>,
    /// None: no budget.
    budget: Option<f64>,
    /// Busy CPU per check, ms.
    burn_ms: u64,
}
kotel_receiver::common_settings!(FakeConfig);

struct Fake;

impl CollectorSpec for Fake {
    const NAME: &'static str = "fake";
    const MODE: Mode = Mode::Autotracing;
    const ABOUT: &'static str = "test detector";
    type Config = FakeConfig;

    fn probe(_: &FakeConfig) -> Availability {
        Availability::Available
    }

    fn build(c: &FakeConfig, _: &HostContext, _: Duration) -> anyhow::Result<Instance> {
        Ok(Instance::Autotracing {
            interval: c.interval.unwrap(),
            cooldown: Duration::from_secs(600),
            detector: Box::new(FakeDetector {
                budget: c.budget,
                burn: Duration::from_millis(c.burn_ms),
                checks: 0,
            }),
        })
    }
}

struct FakeDetector {
    budget: Option<f64>,
    burn: Duration,
    checks: u64,
}

impl Detector for FakeDetector {
    fn check(&mut self) -> anyhow::Result<Vec<Trigger>> {
        let t0 = Instant::now();
        while t0.elapsed() < self.burn {
            std::hint::black_box(0u64);
        }
        self.checks += 1;
        // From the third check on (the CPU meter has a history by then).
        if self.checks < 3 {
            return Ok(Vec::new());
        }
        Ok(["small", "big"]
            .iter()
            .map(|s| Trigger {
                scope: s.to_string(),
                excess: if *s == "big" { 10.0 } else { 1.0 },
                attributes: vec![KeyValue::new("scope", *s)],
            })
            .collect())
    }

    fn capture(&mut self, t: &Trigger) -> anyhow::Result<EventRecord> {
        Ok(
            EventRecord::new("kotel/fake", "linux.autotrace.fake", Severity::Warn, 0)
                .with("scope", t.scope.clone()),
        )
    }

    fn capture_cpu_budget(&self) -> Option<f64> {
        self.budget
    }
}

#[derive(Default)]
struct Sink {
    got: Mutex<Vec<String>>,
    n: AtomicU64,
}

impl EventSink for Sink {
    fn name(&self) -> &str {
        "test"
    }
    fn publish(&self, r: Arc<EventRecord>) {
        self.n.fetch_add(1, Ordering::Relaxed);
        self.got.lock().unwrap().push(format!(
            "{:?}",
            kotel_pipelines::attr(&r.attributes, "scope")
        ));
    }
}

fn run(config: FakeConfig) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sink = Arc::new(Sink::default());
    rt.block_on(async {
        let router = Router::new();
        router.set(Vec::new(), vec![sink.clone() as Arc<dyn EventSink>]);
        let host = HostContext::detect(std::env::temp_dir()).unwrap();
        let entry = Entry::new::<Fake>(&config, Duration::from_secs(10));
        let running = kotel_receiver::framework::runner::start(
            &[entry],
            Vec::new(),
            &host,
            &router,
            &HealthBoard::default(),
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        running.stop(Duration::from_secs(2)).await;
    });
    sink.got.lock().unwrap().clone()
}

#[test]
fn each_scope_is_captured_once_per_cooldown_largest_excess_first() {
    let got = run(FakeConfig {
        enabled: true,
        interval: Some(Duration::from_millis(100)),
        budget: None,
        burn_ms: 0,
    });
    assert_eq!(got, vec!["Some(Str(\"big\"))", "Some(Str(\"small\"))"]);
}

#[test]
fn captures_wait_while_kotel_is_over_its_cpu_budget() {
    // Each check burns 50 ms of CPU every 100 ms: about 0.5 CPU.
    let got = run(FakeConfig {
        enabled: true,
        interval: Some(Duration::from_millis(100)),
        budget: Some(0.1),
        burn_ms: 50,
    });
    assert!(got.is_empty(), "{got:?}");
    let got = run(FakeConfig {
        enabled: true,
        interval: Some(Duration::from_millis(100)),
        budget: Some(4.0),
        burn_ms: 50,
    });
    assert_eq!(got.len(), 2, "{got:?}");
}
