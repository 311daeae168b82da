//! Anomaly detection and root-cause localisation.
//!
//! The model tests run on event time: the load generator's shop makes the traces of each simulated
//! half-hour window, they go through the real receiver and engine (decode, shards, RED, service graph),
//! the test closes the window (a snapshot appended to the history with the window's simulated timestamp)
//! and the health monitor scores it. Nothing waits on the wall clock, so a busy machine cannot change a
//! verdict. One end-to-end test then shows an incident flagged with its cause through the real binary,
//! waiting on conditions with generous deadlines.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use prost::Message;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde_json::Value;
use tidewatch::topology::{Incident, Shop};

use crate::common::{Guard, loadgen};
use tidewatch_analyzer::config::AnalyzerConfig;
use tidewatch_analyzer::engine::Engine;
use tidewatch_analyzer::health::{HealthReport, Monitor};
use tidewatch_analyzer::store::History;
use tidewatch_collector::decode::{Format, Signal};
use tidewatch_collector::{CollectorConfig, Receiver, Stats};

/// Simulated window length and day.
const WINDOW: Duration = Duration::from_secs(1800);
const DAY: Duration = Duration::from_secs(86_400);
/// 2026-01-01 00:00 UTC: the simulated clock starts at midnight.
const EPOCH_MS: i64 = 1_767_225_600_000;
/// Spans per window at the daily mean load (about 300 traces: payment serves ~70 requests at night).
const SPANS: f64 = 3300.0;

/// The shop's traffic replayed window by window through the receiver, the engine, the history and the
/// monitor, on a simulated clock.
struct Replay {
    shop: Shop,
    rng: SmallRng,
    receiver: Receiver,
    engine: Engine,
    history: History,
    monitor: Monitor,
    elapsed: Duration,
}

impl Replay {
    fn new(incidents: &[&str]) -> Replay {
        // The engine's own window task and trainer never fire during a test: the test closes windows.
        let mut cfg = AnalyzerConfig {
            window: Duration::from_secs(30 * 86_400),
            ..AnalyzerConfig::default()
        };
        cfg.forecast.interval = Duration::from_secs(30 * 86_400);
        cfg.store.data_dir = None;
        cfg.store.raw_retention = 2 * DAY;
        cfg.store.rollup_step = Duration::from_secs(3600);
        cfg.store.rollup_retention = 4 * DAY;
        let (ingest, engine) = tidewatch_analyzer::start(&cfg);
        let receiver =
            Receiver::new(&CollectorConfig::default(), ingest, Arc::new(Stats::default())).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let incidents: Vec<Incident> = incidents.iter().map(|i| i.parse().unwrap()).collect();
        Replay {
            shop: Shop::new(incidents, DAY, &mut rng),
            rng,
            receiver,
            engine,
            history: History::open(&cfg.store, WINDOW),
            monitor: Monitor::for_analyzer(&cfg),
            elapsed: Duration::ZERO,
        }
    }

    /// Sends the next window's traffic (in five requests spread over the window), closes the window and
    /// scores it.
    async fn window(&mut self) -> HealthReport {
        const PARTS: u32 = 5;
        for k in 0..PARTS {
            let at = self.elapsed + WINDOW * k / PARTS;
            let spans = (SPANS * self.shop.load_factor(at) / f64::from(PARTS)) as usize;
            let now_ns = u64::try_from(EPOCH_MS).unwrap() * 1_000_000 + at.as_nanos() as u64;
            let req = self.shop.traces(&mut self.rng, spans, now_ns, at);
            self.receiver
                .export(Signal::Traces, Format::Protobuf, Bytes::from(req.encode_to_vec()))
                .await
                .unwrap();
        }
        self.elapsed += WINDOW;
        let ts_ms = EPOCH_MS + self.elapsed.as_millis() as i64;
        let mut snap = self.engine.snapshot().await.unwrap();
        snap.taken_at = SystemTime::UNIX_EPOCH + Duration::from_millis(ts_ms as u64);
        self.history.append(Arc::new(snap), ts_ms).unwrap();
        self.monitor
            .observe(&self.history.view(), ts_ms, WINDOW.as_millis() as i64)
            .unwrap()
    }

    /// Replays `windows` windows; every report must be calm.
    async fn calm(&mut self, windows: usize) -> Vec<HealthReport> {
        let mut reports = Vec::with_capacity(windows);
        for _ in 0..windows {
            let r = self.window().await;
            let flagged: Vec<_> = r.services.iter().filter(|s| s.anomalous).collect();
            assert!(
                flagged.is_empty() && r.causes.is_empty(),
                "false alarm at {} of simulated time: {flagged:?} {:?}",
                humantime::format_duration(self.elapsed),
                r.causes
            );
            reports.push(r);
        }
        reports
    }

    /// Replays until a window has a cause, at most `windows` windows.
    async fn first_cause(&mut self, windows: usize) -> HealthReport {
        for _ in 0..windows {
            let r = self.window().await;
            if !r.causes.is_empty() {
                return r;
            }
        }
        panic!("no cause within {windows} windows")
    }
}

const PER_DAY: usize = 86_400 / 1800;
const PER_HOUR: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_traffic_with_a_daily_cycle_raises_nothing() {
    let mut r = Replay::new(&[]);
    // Two simulated days: the first fills the baselines from a cold start, the second repeats the cycle.
    let reports = r.calm(2 * PER_DAY).await;
    let last = reports.last().unwrap();
    assert_eq!(last.services.len(), 5, "every service is scored: {last:?}");
    assert!(last.services.iter().all(|s| s.learning.is_none()), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_downstream_service_is_blamed_not_its_callers() {
    // The incident starts at the evening's falling load, one day and a half in.
    let mut r = Replay::new(&["latency:payment@36h"]);
    r.calm(36 * PER_HOUR).await;
    let report = r.first_cause(3).await;
    let cause = &report.causes[0];
    assert_eq!(cause.service, "payment", "{report:?}");
    assert!(
        cause.explanation.contains("payment is the likely cause")
            && cause.explanation.contains("p95 latency"),
        "{}",
        cause.explanation
    );
    // Every anomalous service is the cause or one of its callers.
    for s in report.services.iter().filter(|s| s.anomalous) {
        assert!(
            ["payment", "checkout", "frontend"].contains(&s.service.as_str()),
            "{report:?}"
        );
    }
    // The incident goes on, and so does the alarm: the detectors learn the new level, but payment stays
    // the cause for as long as it is slow (what the operator's healing and the UI rely on).
    for _ in 0..4 {
        let later = r.window().await;
        let cause = later.causes.first().map(|c| c.service.as_str());
        assert_eq!(cause, Some("payment"), "{later:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_burst_on_one_pod_is_localised_to_that_pod() {
    let mut r = Replay::new(&["bad-pod:inventory@30h"]);
    r.calm(30 * PER_HOUR).await;
    let first = r.first_cause(3).await;
    assert_eq!(first.causes[0].service, "inventory", "{first:?}");
    // A pod is named once it stands out two windows running: at the window after.
    let report = r.window().await;
    let cause = &report.causes[0];
    assert_eq!(cause.service, "inventory", "{report:?}");
    // The shop's first inventory pod is the bad one.
    let pod = cause.pod.as_deref().unwrap_or_default();
    assert!(
        pod.starts_with("inventory-") && pod.ends_with("-a1b2c"),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_burst_is_flagged_on_the_service_that_fails() {
    let mut r = Replay::new(&["errors:checkout@28h"]);
    r.calm(28 * PER_HOUR).await;
    let report = r.first_cause(3).await;
    let cause = &report.causes[0];
    assert_eq!(cause.service, "checkout", "{report:?}");
    assert!(cause.explanation.contains("errors"), "{}", cause.explanation);
}

// End to end: the real binary, its real window task (250 ms windows), the load generator over OTLP/gRPC.

fn load(tw: &crate::common::Tidewatch, extra: &[&str]) -> Guard {
    Guard::spawn(
        loadgen(tw, 4000, 200)
            .args(["--duration", "10m", "--metrics-and-logs", "false"])
            .args(extra),
    )
}

/// Polls `/api/anomalies` until `ok` holds, for at most `within`.
fn wait_for(
    tw: &crate::common::Tidewatch,
    within: Duration,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    crate::common::wait_for(what, within, || match tw.get_json("/api/anomalies") {
        (200, a) if ok(&a) => Ok(a),
        (status, a) => Err(format!("{status} {a}")),
    })
}

#[test]
fn the_binary_flags_a_slow_service_with_its_cause() {
    let tw = crate::common::Tidewatch::start(&crate::common::FAST_WINDOWS);
    let normal = load(&tw, &[]);
    // Warm-up is over once every service is scored and none is still learning, however long the
    // machine takes to get there.
    let warm = wait_for(&tw, Duration::from_secs(120), "warm-up", |a| {
        let s = a["services"].as_array().unwrap();
        s.len() == 5 && s.iter().all(|s| s["learning"].is_null())
    });
    let since = warm["ts"].as_i64().unwrap();
    // The same traffic, now with payment eight times slower.
    drop(normal);
    let _slow = load(&tw, &["--incident", "latency:payment"]);
    let after = |a: &Value| -> Option<Value> {
        let recent = a["recent"].as_array().unwrap();
        recent
            .iter()
            .rev()
            .find(|r| r["ts"].as_i64().unwrap() > since)
            .cloned()
    };
    let a = wait_for(&tw, Duration::from_secs(120), "a cause", |a| after(a).is_some());
    let report = after(&a).unwrap();
    let cause = &report["causes"][0];
    assert_eq!(cause["service"], "payment", "{a}");
    let explanation = cause["explanation"].as_str().unwrap();
    assert!(
        explanation.contains("payment is the likely cause"),
        "{explanation}"
    );
}
