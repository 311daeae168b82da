//! The history and its JSON API, end to end: traffic from the load generator (the shop) and the Python
//! SDK, short windows so history forms within seconds, every endpoint and its errors, and a restart that
//! must bring the history back from the data directory.

use std::time::{Duration, Instant};

use crate::common::Tidewatch;
use serde_json::Value;

/// Short windows so a test sees history after a second or two.
fn fast(data_dir: &str) -> Vec<String> {
    vec![
        "analyzer.window=200ms".into(),
        "analyzer.store.rollup_step=1s".into(),
        "analyzer.store.raw_retention=1h".into(),
        "analyzer.store.rollup_retention=2h".into(),
        "analyzer.store.snapshot_interval=1s".into(),
        format!("analyzer.store.data_dir={data_dir}"),
    ]
}

fn start(data_dir: &str) -> Tidewatch {
    let sets = fast(data_dir);
    let refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    Tidewatch::start(&refs)
}

fn loadgen(tw: &Tidewatch, seconds: u32, extra: &[&str]) {
    let out = crate::common::loadgen(tw, 3000, 300)
        .args(["--duration", &format!("{seconds}s"), "--day", "1000h"])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn get(tw: &Tidewatch, path: &str) -> (u16, Value) {
    tw.get_json(path)
}

/// Polls `path` until `ok` holds, for up to 60 s (generous: a busy machine closes windows late).
fn wait_for(tw: &Tidewatch, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    tw.wait_json(path, Duration::from_secs(60), ok)
}

#[test]
fn api_serves_services_red_graph_and_series() {
    let dir = tempfile::tempdir().unwrap();
    let tw = start(&dir.path().display().to_string());
    loadgen(&tw, 3, &[]);

    // The traffic has stopped; once its last window has closed, the summary and the sum of the RED
    // steps agree (read together: a window closing between the two reads would count in one only).
    let (v, total) =
        crate::common::wait_for("the summary and the RED steps", Duration::from_secs(60), || {
            let (_, v) = get(&tw, "/api/services?window=1m");
            let (s, red) = get(&tw, "/api/services/frontend/red?from=-1m&to=now&step=1s");
            let steps = red["points"].as_array().map_or(0, Vec::len);
            let total: f64 = red["points"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["requests"].as_f64())
                .sum();
            let summary = v["services"][1]["requests"].as_f64().unwrap_or(-1.0);
            let five = v["services"].as_array().is_some_and(|s| s.len() == 5);
            (s == 200 && five && steps >= 2 && (total - summary).abs() < 1.0)
                .then(|| (v.clone(), total))
                .ok_or(format!(
                    "{s}: {steps} steps, total {total} vs summary {summary}: {v}"
                ))
        });
    let names: Vec<&str> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["checkout", "frontend", "inventory", "payment", "shipping"]
    );
    let frontend = &v["services"][1];
    assert!(frontend["requests"].as_f64().unwrap() > 100.0, "{frontend}");
    assert!(frontend["rate"].as_f64().unwrap() > 10.0);
    assert!(frontend["p95_ms"].as_f64().unwrap() > 1.0);
    assert!(total > 100.0, "{total}");

    // The map: services and virtual nodes, edges with RED on both.
    let g = wait_for(&tw, "/api/graph?window=1m", |g| {
        g["edges"].as_array().is_some_and(|e| e.len() >= 6)
    });
    let edge = |src: &str, dst: &str| {
        g["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["source"] == src && e["target"] == dst)
            .cloned()
    };
    let db = edge("inventory", "postgres").expect("inventory → postgres");
    assert_eq!(db["connection_type"], "database");
    assert!(db["rate"].as_f64().unwrap() > 0.0 && db["p95_ms"].as_f64().is_some());
    assert_eq!(
        edge("checkout", "shipping").unwrap()["connection_type"],
        "messaging_system"
    );
    assert!(edge("frontend", "checkout").is_some() && edge("checkout", "payment").is_some());
    let nodes = g["nodes"].as_array().unwrap();
    let postgres = nodes.iter().find(|n| n["id"] == "postgres").unwrap();
    assert_eq!(postgres["virtual"], true);
    assert!(
        nodes
            .iter()
            .any(|n| n["id"] == "checkout" && n["virtual"] == false)
    );

    // Breakdowns.
    let (_, ops) = get(&tw, "/api/services/checkout/operations?window=1m");
    assert!(
        ops["operations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["span_name"] == "POST /api/checkout")
    );
    let (_, pods) = get(&tw, "/api/services/inventory/pods?window=1m");
    assert_eq!(pods["pods"].as_array().unwrap().len(), 3, "{pods}");

    // Metric series: CPU gauge, and the cumulative request counter as a rate.
    let cpu = wait_for(
        &tw,
        "/api/series?service=payment&name=container.cpu.utilization&from=-1m&step=1s",
        |v| v["points"].as_array().is_some_and(|p| !p.is_empty()),
    );
    assert!(cpu["points"][0]["value"].as_f64().unwrap() > 0.0);
    let counter = wait_for(
        &tw,
        "/api/series?service=payment&name=http.server.request.count&from=-1m&step=1s",
        |v| {
            v["points"]
                .as_array()
                .is_some_and(|p| p.iter().any(|x| x["value"].as_f64().unwrap() > 0.0))
        },
    );
    assert!(
        counter["points"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["value"].as_f64().unwrap() >= 0.0)
    );

    // Errors: unknown names are 404, bad parameters 400, each with a message.
    for (path, want) in [
        ("/api/services/nope/red", 404),
        ("/api/services/frontend/red?from=now&to=-1h", 400),
        ("/api/services/frontend/red?from=yesterday", 400),
        ("/api/services/frontend/red?from=-30d&step=1s", 400),
        ("/api/services?window=forever", 400),
        ("/api/series?service=payment", 400),
        ("/api/series?service=payment&name=nope", 404),
        ("/api/graph?window=0s", 400),
    ] {
        let (s, v) = get(&tw, path);
        assert_eq!(s, want, "{path}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{path}: {v}");
    }
}

#[test]
fn history_comes_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let mut tw = start(&data);
    loadgen(&tw, 2, &["--metrics-and-logs", "false"]);
    let before = wait_for(&tw, "/api/services?window=1h", |v| {
        v["services"].as_array().is_some_and(|s| s.len() == 5)
    });
    let status = tw.stop();
    assert!(status.success(), "{}", tw.logs());
    assert!(std::path::Path::new(&data).join("service_red.parquet").exists());
    let requests = |v: &Value| -> f64 {
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["requests"].as_f64().unwrap())
            .sum()
    };
    // The last window closes at shutdown, so what the final scrape saw is at most what was saved.
    let saved = requests(&before);
    assert!(saved > 0.0);

    let again = start(&data);
    let (s, after) = get(&again, "/api/services?window=1h");
    assert_eq!(s, 200);
    assert!(
        requests(&after) >= saved,
        "history lost across restart: {after} vs {before}"
    );
    let (s, red) = get(&again, "/api/services/frontend/red?from=-1h&step=1s");
    assert_eq!(s, 200, "{red}");
    assert!(!red["points"].as_array().unwrap().is_empty());
}

#[test]
fn forecasts_need_history_then_come_with_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let tw = start(&dir.path().display().to_string());
    loadgen(&tw, 1, &["--metrics-and-logs", "false"]);
    wait_for(&tw, "/api/services?window=1m", |v| {
        v["services"].as_array().is_some_and(|s| !s.is_empty())
    });
    let (s, v) = get(
        &tw,
        "/api/services/frontend/forecast?horizon=2s&step=200ms&history=1m",
    );
    assert_eq!(s, 422, "{v}");
    let why = v["error"].as_str().unwrap();
    assert!(
        why.contains("not enough history") && why.contains("learning: "),
        "{v}"
    );

    // Traffic until the history is long enough to forecast from: how many windows a few seconds make
    // depends on how busy the machine is, so keep sending until the answer comes (or a generous deadline).
    let deadline = Instant::now() + Duration::from_secs(120);
    let (s, v) = loop {
        loadgen(&tw, 2, &["--metrics-and-logs", "false"]);
        let (s, v) = get(
            &tw,
            "/api/services/frontend/forecast?horizon=2s&step=200ms&history=1m",
        );
        if s != 422 || Instant::now() > deadline {
            break (s, v);
        }
    };
    assert_eq!(s, 200, "{v}");
    let points = v["forecast"].as_array().unwrap();
    assert_eq!(points.len(), 10, "{v}");
    for p in points {
        let (lo, rate, hi) = (
            p["lo"].as_f64().unwrap(),
            p["rate"].as_f64().unwrap(),
            p["hi"].as_f64().unwrap(),
        );
        assert!(lo <= rate && rate <= hi, "{p}");
    }
    // The shop sends about 3,000 spans/s, of which about one in eight is a frontend request.
    let mean: f64 = points.iter().map(|p| p["rate"].as_f64().unwrap()).sum::<f64>() / points.len() as f64;
    assert!(mean > 100.0 && mean < 1000.0, "forecast rate {mean}: {v}");
    let (s, _) = get(&tw, "/api/services/frontend/forecast?horizon=0s");
    assert_eq!(s, 400);
    let (s, _) = get(&tw, "/api/services/nope/forecast");
    assert_eq!(s, 404);
}
