//! Crashes: Tidewatch killed with SIGKILL (no shutdown, no final save) while it ingests, restarted on the
//! same data directory. The history saved before the kill must come back whole, and what is lost must be
//! bounded by the snapshot interval: a span accepted more than `snapshot_interval + window` (plus the time
//! a save takes) before the kill is in the history after the restart. A torn or corrupt history file is
//! reported, moved aside, and does not keep Tidewatch from starting and serving the other tables.

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use crate::common::{Tidewatch, wait_for};
use serde_json::Value;

const WINDOW_MS: u64 = 500;
const SNAPSHOT_MS: u64 = 2000;
/// What a save may take on a loaded CI machine (a debug build writing twelve Parquet files).
const SAVE_SLACK_MS: u64 = 1500;

fn start(data: &Path) -> Tidewatch {
    let sets = [
        format!("analyzer.window={WINDOW_MS}ms"),
        "analyzer.store.rollup_step=1s".into(),
        "analyzer.store.raw_retention=1h".into(),
        "analyzer.store.rollup_retention=2h".into(),
        format!("analyzer.store.snapshot_interval={SNAPSHOT_MS}ms"),
        format!("analyzer.store.data_dir={}", data.display()),
    ];
    let refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    Tidewatch::start(&refs)
}

/// An OTLP/JSON traces request of `n` server spans for `service`.
fn json_traces(service: &str, n: u32, seed: u32) -> Vec<u8> {
    crate::common::numbered_json_traces(service, "GET /", seed * 1000 + 1, n)
}

/// Requests per service over the last hour of history.
fn requests(tw: &Tidewatch) -> std::collections::BTreeMap<String, f64> {
    let r = tw.get_web("/api/services?window=1h");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["requests"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The shop's traffic, as background ingestion to kill Tidewatch in the middle of.
fn shop_load(tw: &Tidewatch) -> Child {
    crate::common::tidewatch()
        .args(["loadgen", "--endpoint", &format!("http://{}", tw.grpc)])
        .args([
            "--rate",
            "3000",
            "--batch",
            "300",
            "--duration",
            "60s",
            "--day",
            "1000h",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start loadgen")
}

#[test]
fn sigkill_during_ingestion_loses_at_most_the_snapshot_interval() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut tw = start(&data);

    // Phase A: 1,000 spans, seen in the history, then a save after that.
    for i in 0..20 {
        let r = tw.post(
            "/v1/traces",
            "application/json",
            json_traces("before", 50, i),
            &[],
        );
        assert_eq!(r.status(), 200);
    }
    wait_for("phase A in the history", Duration::from_secs(60), || {
        let r = requests(&tw);
        (r.get("before") == Some(&1000.0))
            .then_some(())
            .ok_or(format!("{r:?}"))
    });
    let seen = SystemTime::now();
    let service_red = data.join("service_red.parquet");
    wait_for("a save after phase A", Duration::from_secs(60), || {
        let m = modified(&service_red);
        m.is_some_and(|m| m > seen)
            .then_some(())
            .ok_or(format!("modified {m:?}"))
    });

    // Phase B: the shop's load plus a paced sender whose every accepted request is timed; SIGKILL in the
    // middle of it.
    let mut load = shop_load(&tw);
    let accepted_at: Mutex<Vec<Instant>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let url = format!("http://{}/v1/traces", tw.http);
    let kill_at = std::thread::scope(|s| {
        s.spawn(|| {
            let client = reqwest::blocking::Client::new();
            let mut i = 100;
            while !stop.load(Relaxed) {
                i += 1;
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(json_traces("during", 10, i))
                    .send();
                // After the kill the connection fails: only answered requests count.
                if r.is_ok_and(|r| r.status() == 200) {
                    accepted_at.lock().unwrap().push(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        // At least three snapshot intervals and 60 accepted requests, however slow the machine is.
        let started = Instant::now();
        wait_for("phase B's requests", Duration::from_secs(180), || {
            let n = accepted_at.lock().unwrap().len();
            (n >= 60 && started.elapsed() >= Duration::from_millis(SNAPSHOT_MS * 3))
                .then_some(())
                .ok_or(format!("{n} accepted"))
        });
        stop.store(true, Relaxed);
        // The sender may be inside a request: kill now, whatever it is doing.
        let at = Instant::now();
        tw.kill9();
        at
    });
    let _ = load.kill();
    let _ = load.wait();
    let accepted_at = accepted_at.into_inner().unwrap();
    assert!(
        accepted_at.len() > 50,
        "phase B sent too little: {}",
        accepted_at.len()
    );

    let again = start(&data);
    let logs = again.logs();
    assert!(
        !logs.contains("unreadable"),
        "a history file was torn by the kill: {logs}"
    );
    let after = requests(&again);
    // Everything saved before the kill is back, exactly.
    assert_eq!(after.get("before"), Some(&1000.0), "{after:?}");
    for svc in ["checkout", "frontend", "inventory", "payment", "shipping"] {
        assert!(after.get(svc).is_some_and(|&n| n > 0.0), "{svc} lost: {after:?}");
    }
    // The loss is bounded: spans accepted long enough before the kill are all there; nothing is invented.
    let bound = Duration::from_millis(SNAPSHOT_MS + WINDOW_MS + SAVE_SLACK_MS);
    let must_have = accepted_at.iter().filter(|&&t| t + bound <= kill_at).count() as f64 * 10.0;
    let sent = accepted_at.len() as f64 * 10.0;
    let got = after.get("during").copied().unwrap_or(0.0);
    // One sender, so what came back is the oldest requests: the loss window is the age of the next one.
    let lost_window = accepted_at
        .get((got / 10.0) as usize)
        .map_or(Duration::ZERO, |&t| kill_at.saturating_duration_since(t));
    eprintln!(
        "crash: accepted {sent} spans in phase B, {must_have} of them more than {bound:?} before the kill; \
         {got} came back; lost: the last {lost_window:?} before the kill (bound {bound:?})"
    );
    assert!(must_have > 0.0);
    assert!(
        got >= must_have && got <= sent,
        "lost more than the snapshot interval: {got} back, {must_have} required, {sent} sent"
    );
}

#[test]
fn repeated_kills_never_tear_the_store_and_a_corrupt_file_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut saved = 0.0;
    // Kills at different points of the save cycle, some of them while a save is being written.
    for (round, delay_ms) in [2300u64, 2700, 3100].into_iter().enumerate() {
        let mut tw = start(&data);
        let logs = tw.logs();
        assert!(!logs.contains("unreadable"), "round {round}: torn store: {logs}");
        let have = requests(&tw).get("kills").copied().unwrap_or(0.0);
        assert!(
            have >= saved,
            "round {round}: history went back from {saved} to {have}"
        );
        let mut load = shop_load(&tw);
        let t0 = Instant::now();
        let mut i = 0;
        while t0.elapsed() < Duration::from_millis(delay_ms) {
            i += 1;
            let r = tw.post("/v1/traces", "application/json", json_traces("kills", 20, i), &[]);
            assert_eq!(r.status(), 200);
            std::thread::sleep(Duration::from_millis(20));
        }
        saved = have;
        tw.kill9();
        let _ = load.kill();
        let _ = load.wait();
    }
    let tw = start(&data);
    let kills = requests(&tw).get("kills").copied().unwrap_or(0.0);
    assert!(
        kills >= saved && kills > 0.0,
        "{kills} after three rounds, {saved} before the last"
    );
    drop(tw);

    // A torn table (cut in half) and a stale temporary file from a save that never finished.
    let service_red = data.join("service_red.parquet");
    let bytes = std::fs::read(&service_red).unwrap();
    std::fs::write(&service_red, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(data.join("edges.parquet.tmp"), b"half a save").unwrap();
    let tw = start(&data);
    let logs = tw.logs();
    assert!(
        logs.contains("history file unreadable") && logs.contains("service_red.parquet"),
        "the corrupt file was not reported: {logs}"
    );
    assert!(data.join("service_red.parquet.corrupt").exists(), "not set aside");
    // It serves: the torn table starts empty, the others (the graph's edges) came back.
    assert!(requests(&tw).is_empty());
    let g: Value = tw.get_web("/api/graph?window=1h").json().unwrap();
    assert!(
        g["edges"].as_array().is_some_and(|e| !e.is_empty()),
        "edges lost beside the torn table: {g}"
    );
    // And it keeps working: new data lands and is saved over the bad file.
    let r = tw.post("/v1/traces", "application/json", json_traces("fresh", 5, 1), &[]);
    assert_eq!(r.status(), 200);
    wait_for("history after the corrupt file", Duration::from_secs(60), || {
        let r = requests(&tw);
        (r.get("fresh") == Some(&5.0))
            .then_some(())
            .ok_or(format!("{r:?}"))
    });
}
