//! Anomaly detection and root-cause localisation through the real ingest path: the load generator's shop
//! sends OTLP/gRPC, an incident is switched on after a quiet warm-up, and `/api/anomalies` must name the
//! right service (and pod), not its callers. Normal traffic, daily cycle included, must raise nothing.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::Tidewatch;
use serde_json::Value;

fn start() -> Tidewatch {
    Tidewatch::start(&common::FAST_WINDOWS)
}

struct Load(Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn load(tw: &Tidewatch, seconds: u32, extra: &[&str]) -> Load {
    Load(
        Command::new(env!("CARGO_BIN_EXE_tidewatch"))
            .args([
                "loadgen",
                "--endpoint",
                &format!("http://{}", tw.grpc),
                "--rate",
                "4000",
                "--batch",
                "200",
            ])
            .args([
                "--duration",
                &format!("{seconds}s"),
                "--metrics-and-logs",
                "false",
            ])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn anomalies(tw: &Tidewatch) -> Value {
    let r = tw.get_web("/api/anomalies");
    assert_eq!(r.status(), 200);
    r.json().unwrap()
}

/// Polls `/api/anomalies` until a cause shows up; returns it with the whole answer.
fn first_cause(tw: &Tidewatch, within: Duration) -> (Value, Value) {
    let deadline = Instant::now() + within;
    loop {
        let a = anomalies(tw);
        if let Some(c) = a["causes"].as_array().and_then(|c| c.first()) {
            return (c.clone(), a);
        }
        assert!(Instant::now() < deadline, "no cause found: {a}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_slow_downstream_service_is_blamed_not_its_callers() {
    let tw = start();
    let _load = load(&tw, 25, &["--incident", "latency:payment@8s"]);
    // Quiet before the incident.
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        anomalies(&tw)["recent"].as_array().unwrap().is_empty(),
        "{}",
        anomalies(&tw)
    );
    let (cause, all) = first_cause(&tw, Duration::from_secs(12));
    assert_eq!(cause["service"], "payment", "{all}");
    let explanation = cause["explanation"].as_str().unwrap();
    assert!(
        explanation.contains("payment is the likely cause"),
        "{explanation}"
    );
    // Every anomalous service is the cause or one of its callers.
    for a in all["anomalies"].as_array().unwrap() {
        assert!(
            ["payment", "checkout", "frontend"].contains(&a["service"].as_str().unwrap()),
            "{all}"
        );
    }
    let m = tw.metrics();
    assert!(
        m.get("tidewatch_anomaly_score", &[("service_name", "payment")])
            .unwrap()
            >= 0.5
    );
}

#[test]
fn an_error_burst_on_one_pod_is_localised_to_that_pod() {
    let tw = start();
    let _load = load(&tw, 25, &["--incident", "bad-pod:inventory@8s"]);
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        anomalies(&tw)["recent"].as_array().unwrap().is_empty(),
        "{}",
        anomalies(&tw)
    );
    let (cause, all) = first_cause(&tw, Duration::from_secs(12));
    assert_eq!(cause["service"], "inventory", "{all}");
    // The load generator's first inventory pod is the bad one.
    let pod = cause["pod"].as_str().unwrap_or_default();
    assert!(pod.starts_with("inventory-") && pod.ends_with("-a1b2c"), "{all}");
}

#[test]
fn normal_traffic_with_a_daily_cycle_raises_nothing() {
    let tw = start();
    // Simulated days (load from 0.4x to 1.6x of the mean) of 12 seconds, for 30 seconds: past the first
    // 60 windows (15 s) the joint RED detector (Gaussian mixture) scores every window too.
    // The load outlasts the checks: its abrupt end is not normal traffic.
    let _load = load(&tw, 36, &["--day", "12s"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut scored = 0;
    while Instant::now() < deadline {
        let a = anomalies(&tw);
        assert!(a["causes"].as_array().unwrap().is_empty(), "{a}");
        scored = scored.max(a["services"].as_array().unwrap().len());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(scored, 5, "every service was scored");
    assert!(anomalies(&tw)["recent"].as_array().unwrap().is_empty());
}
