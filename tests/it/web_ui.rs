//! The web UI, end to end: headless Chromium (Debian's `chromium`, driven by playwright-core from
//! `tests/browser/`) opens the pages of a Tidewatch that the load generator is feeding, and the tests check
//! what it draws; the UI routes' errors are checked without a browser; and an ignored test measures the
//! map with a generated topology of 200 services (BENCHMARKS.md, "Web UI at 200 services").
//!
//! Screenshots go to `target/ui-artifacts/` (the test artefacts): look at them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Guard, Tidewatch};
use serde_json::{Value, json};

/// Short windows so history forms in a second; a short pairing wait so `user` and peer edges show soon.
const FAST: &[&str] = &[
    "analyzer.window=200ms",
    "analyzer.store.rollup_step=1s",
    "analyzer.service_graph.wait=1s",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn artifacts(sub: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("ui-artifacts")
        .join(sub);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The browser driver's prerequisites, with what installs them when missing.
pub(crate) fn browser_ready() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} missing: run tests/run.sh (it installs Debian's chromium)"
    );
    assert!(
        root().join("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core missing: run tests/run.sh (it runs `npm ci` in tests/browser)"
    );
}

/// Runs `node tests/browser/ui.mjs MODE --base … --out … ARGS` and returns the JSON it prints.
pub(crate) fn drive(mode: &str, tw: &Tidewatch, out: &Path, args: &[&str]) -> Value {
    let run = Command::new("node")
        .current_dir(root().join("tests/browser"))
        .args(["ui.mjs", mode, "--base", &format!("http://{}", tw.web), "--out"])
        .arg(out)
        .args(args)
        .output()
        .expect("run node (tests/run.sh installs what it needs)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!(
            "ui.mjs printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        )
    });
    assert!(
        run.status.success() && v["error"].is_null(),
        "ui.mjs {mode} failed: {}\nscreenshot: {}/failure.png\n{}",
        v["error"].as_str().unwrap_or_default(),
        out.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    v
}

/// The shop's traffic, for up to `seconds`, with errors in payment so the map has a failing node.
fn shop_traffic(tw: &Tidewatch, seconds: u32) -> Command {
    let mut cmd = crate::common::loadgen(tw, 1500, 150);
    cmd.args(["--day", "1000h", "--duration", &format!("{seconds}s")])
        .args(["--incident", "errors:payment"])
        .stderr(Stdio::null());
    cmd
}

fn get(tw: &Tidewatch, path: &str) -> (u16, String, String) {
    let r = tw.get_web(path);
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, ctype, r.text().unwrap_or_default())
}

/// Polls the JSON API until `ok` holds, for up to 60 s.
fn wait_for(tw: &Tidewatch, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    tw.wait_json(path, Duration::from_secs(60), ok)
}

/// The browser saw no script error and no failed HTTP request.
pub(crate) fn assert_no_browser_errors(v: &Value) {
    assert!(
        v["problems"].as_array().unwrap().is_empty(),
        "browser errors: {}",
        v["problems"]
    );
    assert!(
        v["failed"].as_array().unwrap().is_empty(),
        "HTTP errors: {}",
        v["failed"]
    );
}

/// The ids of the map's nodes marked "likely cause".
fn likely_causes(map: &Value) -> Vec<String> {
    map["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| strs(&n["text"]).iter().any(|t| t == "likely cause"))
        .filter_map(|n| n["id"].as_str().map(str::to_owned))
        .collect()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn browser_draws_the_map_and_the_service_pages() {
    browser_ready();
    let tw = Tidewatch::start(FAST);
    let _load = Guard::spawn(&mut shop_traffic(&tw, 120));
    // Wait until the graph has its edges, the virtual ones included, before opening the browser.
    wait_for(&tw, "/api/graph?window=1m", |g| {
        g["edges"].as_array().is_some_and(|e| {
            e.iter().any(|x| x["source"] == "user") && e.iter().any(|x| x["target"] == "stripe")
        })
    });

    let out = artifacts("shop");
    let nodes = "user,frontend,checkout,payment,inventory,shipping,postgres,stripe";
    let edges = "user>frontend,frontend>checkout,frontend>inventory,checkout>payment,checkout>inventory,\
                 checkout>shipping,inventory>postgres,payment>stripe";
    let v = drive(
        "check",
        &tw,
        &out,
        &["--service", "checkout", "--nodes", nodes, "--edges", edges],
    );
    assert_no_browser_errors(&v);
    assert!(
        v["external"].as_array().unwrap().is_empty(),
        "the UI loaded something from elsewhere: {}",
        v["external"]
    );

    // The overview's map: every node with its kind, every edge with rate, errors and p95.
    for page in ["overview", "map"] {
        let m = &v[page];
        let drawn: BTreeMap<String, (String, String)> = m["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["id"].as_str().unwrap().to_owned(),
                    (
                        n["kind"].as_str().unwrap().to_owned(),
                        n["health"].as_str().unwrap().to_owned(),
                    ),
                )
            })
            .collect();
        for id in nodes.split(',') {
            assert!(drawn.contains_key(id), "{page}: {id} not drawn: {drawn:?}");
        }
        assert_eq!(drawn["postgres"].0, "database", "{page}");
        assert_eq!(drawn["stripe"].0, "external", "{page}");
        assert_eq!(drawn["user"].0, "user", "{page}");
        assert_eq!(drawn["checkout"].0, "service", "{page}");
        // errors:payment fails 30 % of payment's requests.
        assert_eq!(drawn["payment"].1, "critical", "{page}: {drawn:?}");
        assert_eq!(drawn["inventory"].1, "ok", "{page}: {drawn:?}");
        let drawn_edges: BTreeMap<String, &Value> = m["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    format!(
                        "{}>{}",
                        e["source"].as_str().unwrap(),
                        e["target"].as_str().unwrap()
                    ),
                    e,
                )
            })
            .collect();
        for want in edges.split(',') {
            let e = drawn_edges
                .get(want)
                .unwrap_or_else(|| panic!("{page}: edge {want} not drawn: {:?}", drawn_edges.keys()));
            let label = e["label"].as_str().unwrap();
            assert!(
                label.contains("/s · ") && label.contains("% · p95 ") && label.ends_with("ms"),
                "{page}: {want}: label {label:?}"
            );
            assert!(e["path"].as_str().unwrap().starts_with('M'), "{page}: {want}");
        }
        assert_eq!(drawn_edges["inventory>postgres"]["type"], "database");
        assert_eq!(drawn_edges["checkout>shipping"]["type"], "messaging_system");
        assert_eq!(drawn_edges["checkout>payment"]["health"], "critical");
        // Callers are left of their callees: the layout is layered by call depth.
        let x: BTreeMap<&str, f64> = m["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let t = n["pos"].as_str().unwrap();
                let x = t.trim_start_matches("translate(").split(',').next().unwrap();
                (n["id"].as_str().unwrap(), x.parse::<f64>().unwrap())
            })
            .collect();
        for chain in [
            ["user", "frontend", "checkout", "payment", "stripe"],
            ["user", "frontend", "checkout", "inventory", "postgres"],
        ] {
            for w in chain.windows(2) {
                assert!(x[w[0]] < x[w[1]], "{page}: {} not left of {}: {x:?}", w[0], w[1]);
            }
        }
        // At the default zoom every edge label shows, and none overlaps another.
        let labels = &m["labelOverlaps"];
        assert_eq!(labels["shown"], edges.split(',').count(), "{page}: {labels}");
        assert!(
            labels["overlaps"].as_array().unwrap().is_empty(),
            "{page}: edge labels overlap: {labels}"
        );
    }

    // The overview's side panels: payment first among the erroring, the collector's counters.
    // Anomalous services come first (the detector may flag some as the traffic starts); among the rest,
    // the failing payment leads.
    let rows = v["attention"].as_array().unwrap();
    let calm: Vec<&str> = rows
        .iter()
        .filter(|r| r["anomalous"] == false)
        .filter_map(|r| r["service"].as_str())
        .collect();
    let flagged = rows
        .iter()
        .any(|r| r["service"] == "payment" && r["anomalous"] == true);
    assert!(flagged || calm.first() == Some(&"payment"), "{rows:?}");
    assert_eq!(rows.len(), 5, "{rows:?}");
    let collector = v["collector"].as_str().unwrap();
    assert!(
        collector.contains("spans") && collector.contains("queued batches"),
        "{collector}"
    );

    // A live refresh kept the zoom and the selection; edge labels are shown once zoomed in.
    assert_eq!(v["beforeRefresh"]["transform"], v["afterRefresh"]["transform"]);
    assert_eq!(strs(&v["afterRefresh"]["selected"]), ["checkout"]);
    assert!(
        v["afterRefresh"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/map?select=checkout")
    );
    assert!(v["afterRefresh"]["labelsShown"].as_u64().unwrap() >= 8);
    let details = v["details"].as_str().unwrap();
    for s in [
        "checkout",
        "Open service page",
        "CALLED BY (1)",
        "frontend",
        "CALLS (3)",
        "payment",
    ] {
        assert!(
            details.to_uppercase().contains(&s.to_uppercase()),
            "details lack {s}: {details}"
        );
    }
    // Search highlights; focus keeps the neighbourhood only.
    assert_eq!(strs(&v["searchMatches"]), ["payment"]);
    let focused: BTreeSet<String> = strs(&v["focused"]).into_iter().collect();
    let want: BTreeSet<String> = ["checkout", "frontend", "inventory", "payment", "shipping"]
        .map(String::from)
        .into();
    assert_eq!(focused, want);

    // The service page, reached by clicking through: charts drawn, tables filled.
    let svc = &v["service"];
    assert_eq!(svc["url"], "/services/checkout");
    assert_eq!(svc["title"], "checkout");
    let charts = svc["charts"].as_array().unwrap();
    assert_eq!(charts.len(), 3);
    for c in charts {
        assert_eq!(c["state"], "ready", "{c}");
        assert!(c["svg"].as_bool().unwrap(), "{c}");
        assert!(c["lines"].as_u64().unwrap() >= 1, "no line drawn: {c}");
        assert!(c["points"].as_u64().unwrap() >= 2, "{c}");
        assert!(c["width"].as_u64().unwrap() >= 300, "{c}");
        let text = strs(&c["text"]);
        assert!(text.iter().any(|t| t.contains(':')), "no time labels: {c}");
    }
    let latency = strs(&charts[2]["text"]);
    assert!(
        ["p50", "p95", "p99"]
            .iter()
            .all(|l| latency.iter().any(|t| t == l)),
        "{latency:?}"
    );
    let rows = &svc["rows"];
    assert!(
        strs(&rows["operations"])
            .iter()
            .any(|o| o == "POST /api/checkout"),
        "{rows}"
    );
    assert_eq!(strs(&rows["pods"]).len(), 2, "{rows}");
    assert_eq!(strs(&rows["upstream"]), ["frontend"]);
    let down: BTreeSet<String> = strs(&rows["downstream"]).into_iter().collect();
    assert_eq!(
        down,
        ["inventory", "payment", "shipping"].map(String::from).into()
    );

    for shot in ["overview.png", "map-selected.png", "map-focus.png", "service.png"] {
        let len = std::fs::metadata(out.join(shot)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 20_000, "{shot}: {len} bytes");
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Writes a decision log as the operator does (its own `DecisionLog`, its own `decide()` and `heal()`),
/// over the last five minutes: `shop/checkout` scaling up under rising load with a forecast, and
/// `shop/inventory` restarting a bad pod and then holding back a second restart.
fn write_decision_log(path: &Path) {
    use tidewatch_scaler::behavior::ScaleHistory;
    use tidewatch_scaler::crd::{Healing, ServicePolicySpec};
    use tidewatch_scaler::decide::{ForecastInput, Inputs, PodLoad, decide};
    use tidewatch_scaler::decisions::{DecisionLog, Entry, Record};
    use tidewatch_scaler::heal::{CauseInput, HealDecision, HealInputs, heal};

    let log = DecisionLog::open(path, 1 << 20).unwrap();
    let now = now_ms();
    let spec: ServicePolicySpec = serde_yaml::from_str(
        "targetRef: {name: checkout}\nservice: checkout\nminReplicas: 2\nmaxReplicas: 10\n\
         capacity: {requestsPerReplica: 50}\n",
    )
    .unwrap();
    let (mut replicas, mut history, mut last_scale) = (2, ScaleHistory::default(), None);
    for i in 0..20 {
        let ts = now - (20 - i) * 15_000;
        let load = 60.0 + i as f64 * 12.0;
        let inputs = Inputs {
            now_ms: ts,
            current_replicas: replicas,
            pods: (0..replicas)
                .map(|p| PodLoad {
                    name: format!("checkout-{p}"),
                    rate: Some(load / f64::from(replicas)),
                    ready: true,
                })
                .collect(),
            capacity: Some(50.0),
            forecast: Some(ForecastInput {
                model: "holt_winters".into(),
                mase: Some(0.6),
                peak_upper: Some(load * 1.3),
                peak_mean: None,
                calibration: None,
            }),
            last_scale_ms: last_scale,
            history: history.clone(),
        };
        let (decision, next) = decide(&spec, &inputs);
        history = next;
        let action = if decision.changes() {
            last_scale = Some(ts);
            format!("scale {}→{}", decision.current, decision.replicas)
        } else {
            "none".to_owned()
        };
        replicas = decision.replicas;
        log.append(Record {
            seq: 0,
            ts_ms: ts,
            policy: "shop/checkout".into(),
            service: "checkout".into(),
            entry: Entry::Scale {
                spec: Box::new(spec.clone()),
                inputs: Box::new(inputs),
                decision,
            },
            action,
            outcome: "ok".into(),
        })
        .unwrap();
    }
    let healing = Healing {
        enabled: true,
        ..Healing::default()
    };
    let pods = vec!["inventory-a1b2c".to_owned(), "inventory-d3e4f".to_owned()];
    let mut restarts = Vec::new();
    for ts in [now - 120_000, now - 60_000] {
        let inputs = HealInputs {
            now_ms: ts,
            service: "inventory".into(),
            causes: vec![CauseInput {
                service: "inventory".into(),
                pod: Some(pods[0].clone()),
                explanation: "inventory-a1b2c fails 40 % of its requests, its sibling none".into(),
            }],
            pods: pods.clone(),
            ready_pods: 2,
            restarts: restarts.clone(),
        };
        let decision = heal(&healing, &inputs);
        let action = match &decision {
            HealDecision::Restart { pod, .. } => {
                restarts.push((ts, pod.clone()));
                format!("evict {pod}")
            }
            HealDecision::HeldBack { .. } => "held back".to_owned(),
            HealDecision::None { .. } => "none".to_owned(),
        };
        log.append(Record {
            seq: 0,
            ts_ms: ts,
            policy: "shop/inventory".into(),
            service: "inventory".into(),
            entry: Entry::Heal {
                healing: healing.clone(),
                inputs: Box::new(inputs),
                decision,
            },
            action,
            outcome: "ok".into(),
        })
        .unwrap();
    }
}

#[test]
fn browser_draws_the_scaling_page_and_the_incident() {
    browser_ready();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    write_decision_log(&log);
    let log_set = format!("scaler.decision_log={}", log.display());
    let mut sets: Vec<&str> = crate::common::FAST_WINDOWS.to_vec();
    // The incident stays listed among the recent ones (the monitor keeps the last 50 window closes with a
    // cause) after its onset is flagged.
    sets.extend(["analyzer.service_graph.wait=1s", log_set.as_str()]);
    let tw = Tidewatch::start(&sets);
    // A latency incident in payment after 45 s of normal traffic: it stays anomalous about as long as the
    // baseline it is judged against (180 windows), long enough for the browser to see it.
    let _load = Guard::spawn(
        crate::common::loadgen(&tw, 3000, 200)
            .args(["--duration", "300s", "--incident", "latency:payment@45s"])
            .stderr(Stdio::null()),
    );
    // The decisions written before the start are served back.
    let d = wait_for(&tw, "/api/decisions", |d| {
        d["decisions"].as_array().is_some_and(|a| a.len() == 22)
    });
    assert!(
        d["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"].as_str().is_some_and(|a| a.starts_with("scale 2→"))),
        "{d}"
    );

    let out = artifacts("scaling");
    let v = drive(
        "scaling",
        &tw,
        &out,
        &["--cause", "payment", "--policies", "shop/checkout,shop/inventory"],
    );
    assert_no_browser_errors(&v);
    assert!(v["external"].as_array().unwrap().is_empty(), "{}", v["external"]);
    let s = &v["scaling"];
    let policies = s["policies"].as_array().unwrap();
    let ids: Vec<&str> = policies.iter().filter_map(|p| p["id"].as_str()).collect();
    assert_eq!(ids, ["shop/checkout", "shop/inventory"]);
    // checkout: the latest recommendation with its reason, and the chart of its decisions.
    let checkout = &policies[0];
    let now = checkout["now"].as_str().unwrap();
    assert!(now.contains("replicas") && now.contains("→"), "{now}");
    let chart = strs(&checkout["chart"]);
    for label in [
        "load (req/s)",
        "capacity (req/s)",
        "forecast peak (req/s)",
        "replicas (right axis)",
    ] {
        assert!(chart.iter().any(|t| t == label), "{label}: {chart:?}");
    }
    assert!(checkout["chartLines"].as_u64().unwrap() >= 4, "{checkout}");
    // inventory: the held-back restart is its latest healing, shown with its reason.
    let inventory = policies[1]["now"].as_str().unwrap();
    assert!(
        inventory.contains("held back") && inventory.contains("already restarted"),
        "{inventory}"
    );
    assert!(
        strs(&policies[1]["chart"])
            .iter()
            .any(|t| t == "restart held back"),
        "{}",
        policies[1]
    );
    // The log: actions only by default, newest first, the held-back restart marked.
    let rows = s["rows"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["action"] != "none"), "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r["kind"] == "scale" && r["action"].as_str().unwrap().starts_with("scale ")),
        "{rows:?}"
    );
    let held: Vec<&Value> = rows.iter().filter(|r| r["heldBack"] == true).collect();
    assert_eq!(held.len(), 1, "{rows:?}");
    assert_eq!(held[0]["policy"], "shop/inventory");
    assert!(
        rows.iter().any(|r| r["action"] == "evict inventory-a1b2c"),
        "{rows:?}"
    );
    assert_eq!(v["allRows"], 22);
    // The incident: listed, and its cause marked on the map and on its page.
    let incidents = s["incidents"].as_array().unwrap();
    assert!(incidents.iter().any(|i| i["cause"] == "payment"), "{incidents:?}");
    assert!(
        likely_causes(&v["map"]).contains(&"payment".to_owned()),
        "{}",
        v["map"]
    );
    assert!(strs(&v["overviewIncidents"]).contains(&"payment".to_owned()));
    let note = v["serviceNote"].as_str().unwrap();
    assert!(
        note.contains("Likely cause") && note.contains("payment"),
        "{note}"
    );
    for shot in ["scaling.png", "overview-incident.png", "service-incident.png"] {
        let len = std::fs::metadata(out.join(shot)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 20_000, "{shot}: {len} bytes");
    }
}

/// `tidewatch demo` in the browser: its simulated cluster's policies on the Scaling page with their charts,
/// a scaling decision in the log, and the latency incident flagged with its root cause on the map, in the
/// recent incidents and on the cause's page. The demo runs fast (2 s windows and reconciles, 2-minute
/// simulated days), as tests/it/demo.rs runs it.
#[test]
fn browser_follows_the_demo_on_the_scaling_page() {
    browser_ready();
    let tw = Tidewatch::start_fast_demo(&["surge@5s+30s", "latency:payment@50s+150s"]);
    let policies = [
        "shop/checkout",
        "shop/frontend",
        "shop/inventory",
        "shop/payment",
        "shop/shipping",
    ];
    let out = artifacts("demo");
    let v = drive(
        "scaling",
        &tw,
        &out,
        &["--cause", "payment", "--policies", &policies.join(",")],
    );
    assert_no_browser_errors(&v);
    let s = &v["scaling"];
    let ids: Vec<&str> = s["policies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(ids, policies);
    for p in s["policies"].as_array().unwrap() {
        // The state the operator reported: replicas, bounds, and the latest recommendation with its reason.
        let tiles = strs(&p["tiles"]).join(" | ");
        assert!(tiles.contains("replicas") && tiles.contains("bounds"), "{p}");
        let now = p["now"].as_str().unwrap();
        assert!(now.contains(" replicas"), "{p}");
        assert!(
            strs(&p["chart"]).iter().any(|t| t == "replicas (right axis)"),
            "{p}"
        );
    }
    // The surge was answered: a scale-up in the log.
    let rows = s["rows"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["kind"] == "scale" && r["action"].as_str().is_some_and(|a| a.starts_with("scale "))),
        "{rows:?}"
    );
    // The incident: flagged, its cause marked on the map, listed, and said on the cause's page.
    assert!(
        likely_causes(&v["map"]).contains(&"payment".to_owned()),
        "{}",
        v["map"]
    );
    assert!(strs(&v["overviewIncidents"]).contains(&"payment".to_owned()));
    assert!(
        s["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["cause"] == "payment"),
        "{}",
        s["incidents"]
    );
    let note = v["serviceNote"].as_str().unwrap();
    assert!(note.contains("Likely cause"), "{note}");
    for shot in ["scaling.png", "overview-incident.png", "service-incident.png"] {
        let len = std::fs::metadata(out.join(shot)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 20_000, "{shot}: {len} bytes");
    }
}

/// Posts OTLP/JSON to the HTTP receiver.
fn post_json(tw: &Tidewatch, body: &Value) {
    let r = tw.post(
        "/v1/traces",
        "application/json",
        serde_json::to_vec(body).unwrap(),
        &[],
    );
    assert!(r.status().is_success(), "{}", r.status());
}

/// A resource's spans, as OTLP/JSON.
fn resource_spans(service: &str, spans: Vec<Value>) -> Value {
    json!({
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"spans": spans}],
    })
}

/// Deterministic ids and choices: a 64-bit LCG, so the generated topology is the same every run.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn hex(&mut self, bytes: usize) -> String {
        (0..bytes)
            .map(|_| format!("{:02x}", self.next() & 0xff))
            .collect()
    }
}

fn span(
    rng: &mut Lcg,
    trace: &str,
    parent: Option<&str>,
    name: &str,
    kind: u8,
    attrs: &[(&str, &str)],
    fail: bool,
) -> (String, Value) {
    let id = rng.hex(8);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let dur = (5 + rng.below(80) as u64) * 1_000_000;
    let mut s = json!({
        "traceId": trace, "spanId": id, "name": name, "kind": kind,
        "startTimeUnixNano": (now - dur).to_string(), "endTimeUnixNano": now.to_string(),
        "attributes": attrs.iter().map(|(k, v)| json!({"key": k, "value": {"stringValue": v}})).collect::<Vec<_>>(),
    });
    if let Some(p) = parent {
        s["parentSpanId"] = json!(p);
    }
    if fail {
        s["status"] = json!({"code": 2});
    }
    (id, s)
}

/// A generated platform of `n` services in call tiers (gateways called by users, then APIs, domain
/// services and workers), with databases, queues and external peers, so the map has every kind of node.
/// Returns the calls as (client, server, kind) where kind is "http", "db", "queue" or "peer".
fn topology(n: usize, rng: &mut Lcg) -> (Vec<String>, Vec<(String, String, &'static str)>) {
    const DOMAINS: [&str; 25] = [
        "accounts",
        "billing",
        "cart",
        "catalog",
        "checkout",
        "coupons",
        "delivery",
        "fraud",
        "gift",
        "identity",
        "inventory",
        "invoices",
        "ledger",
        "loyalty",
        "media",
        "notify",
        "orders",
        "payments",
        "pricing",
        "profile",
        "ratings",
        "returns",
        "search",
        "shipping",
        "tax",
    ];
    const ROLES: [&str; 8] = [
        "gateway", "api", "svc", "reader", "writer", "worker", "cache", "sync",
    ];
    let names: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{}-{}",
                DOMAINS[i % DOMAINS.len()],
                ROLES[(i / DOMAINS.len()) % ROLES.len()]
            )
        })
        .collect();
    // Tiers: 5 % gateways, then four tiers of the rest.
    let gateways = (n / 20).max(1);
    let tier = |i: usize| {
        if i < gateways {
            0
        } else {
            1 + (i - gateways) * 4 / (n - gateways).max(1)
        }
    };
    let mut calls = Vec::new();
    for i in gateways..n {
        let t = tier(i);
        let callers: Vec<usize> = (0..i)
            .filter(|j| tier(*j) + 1 == t || (t >= 2 && tier(*j) + 2 == t))
            .collect();
        let k = 1 + rng.below(2) + usize::from(rng.below(4) == 0);
        let mut chosen = BTreeSet::new();
        for _ in 0..k {
            if !callers.is_empty() {
                chosen.insert(callers[rng.below(callers.len())]);
            }
        }
        for c in chosen {
            calls.push((names[c].clone(), names[i].clone(), "http"));
        }
    }
    for (i, name) in names.iter().enumerate() {
        if tier(i) >= 2 && rng.below(3) == 0 {
            calls.push((name.clone(), format!("{}-db", DOMAINS[i % DOMAINS.len()]), "db"));
        }
        if tier(i) >= 2 && rng.below(12) == 0 {
            let consumer = &names[gateways + rng.below(n - gateways)];
            if consumer != name {
                calls.push((name.clone(), consumer.clone(), "queue"));
            }
        }
        if tier(i) >= 1 && rng.below(25) == 0 {
            calls.push((
                name.clone(),
                format!("ext-{}", ["stripe", "twilio", "maps", "s3"][rng.below(4)]),
                "peer",
            ));
        }
    }
    (names, calls)
}

/// Sends one round of traffic over the topology: every call a few times, root spans at the gateways.
fn send_round(
    tw: &Tidewatch,
    names: &[String],
    calls: &[(String, String, &'static str)],
    failing: &BTreeSet<String>,
    rng: &mut Lcg,
) {
    let mut by_service: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let gateways = (names.len() / 20).max(1);
    for g in &names[..gateways] {
        for _ in 0..4 {
            let trace = rng.hex(16);
            let (_, s) = span(rng, &trace, None, "GET /", 2, &[], false);
            by_service.entry(g.clone()).or_default().push(s);
        }
    }
    for (client, server, kind) in calls {
        let fail = failing.contains(server) && rng.below(4) == 0;
        for _ in 0..3 {
            let trace = rng.hex(16);
            match *kind {
                "http" => {
                    let (cid, c) = span(rng, &trace, None, "POST /call", 3, &[], fail);
                    let (_, sv) = span(rng, &trace, Some(&cid), "POST /call", 2, &[], fail);
                    by_service.entry(client.clone()).or_default().push(c);
                    by_service.entry(server.clone()).or_default().push(sv);
                }
                "queue" => {
                    let (pid, p) = span(rng, &trace, None, "publish", 4, &[], false);
                    let (_, c) = span(rng, &trace, Some(&pid), "consume", 5, &[], fail);
                    by_service.entry(client.clone()).or_default().push(p);
                    by_service.entry(server.clone()).or_default().push(c);
                }
                "db" => {
                    let (_, c) = span(
                        rng,
                        &trace,
                        None,
                        "SELECT",
                        3,
                        &[("db.system", "postgresql"), ("db.name", server)],
                        false,
                    );
                    by_service.entry(client.clone()).or_default().push(c);
                }
                _ => {
                    let (_, c) = span(
                        rng,
                        &trace,
                        None,
                        "POST /v1",
                        3,
                        &[("peer.service", server)],
                        fail,
                    );
                    by_service.entry(client.clone()).or_default().push(c);
                }
            }
        }
    }
    let all: Vec<Value> = by_service
        .into_iter()
        .map(|(s, spans)| resource_spans(&s, spans))
        .collect();
    for chunk in all.chunks(40) {
        post_json(tw, &json!({ "resourceSpans": chunk }));
    }
}

#[test]
fn ui_routes_answer_errors_cleanly() {
    let tw = Tidewatch::start(FAST);
    // A service whose name is markup: the page must show it as text.
    let mut rng = Lcg(7);
    let trace = rng.hex(16);
    let (_, s) = span(&mut rng, &trace, None, "GET /", 2, &[], false);
    post_json(
        &tw,
        &json!({"resourceSpans": [resource_spans("<b>odd</b> \"svc\"", vec![s])]}),
    );
    let _ = shop_traffic(&tw, 2).status();
    wait_for(&tw, "/api/services?window=1m", |v| {
        v["services"].as_array().is_some_and(|s| s.len() == 6)
    });

    for (path, ctype, needle) in [
        ("/", "text/html", "/ui/map.js"),
        ("/map", "text/html", "TWMap.create"),
        ("/services/checkout", "text/html", "data-service=\"checkout\""),
        ("/ui/app.css", "text/css", ".map-canvas"),
        ("/ui/map.js", "text/javascript", "function layout"),
        ("/ui/favicon.svg", "image/svg+xml", "<svg"),
        ("/scaling", "text/html", "/ui/scaling.js"),
        ("/ui/scaling.js", "text/javascript", "/api/decisions"),
        // A policy the log has never seen: an empty chart that says so.
        (
            "/charts/policies/shop/nope/replicas.svg?from=-15m&w=400&h=200",
            "image/svg+xml",
            "no scaling decision in this range",
        ),
        (
            "/charts/services/checkout/rate.svg?from=-1m&step=1s",
            "image/svg+xml",
            "<polyline",
        ),
        // With a forecast, or the reason there is none (two seconds of history are not enough).
        (
            "/charts/services/checkout/rate.svg?from=-1m&step=1s&forecast=1",
            "image/svg+xml",
            "forecast",
        ),
        (
            "/charts/services/checkout/latency.svg?from=-5m&to=now&step=2s&tz=60&w=500&h=200",
            "image/svg+xml",
            "viewBox=\"0 0 500 200\"",
        ),
    ] {
        let (status, got, body) = get(&tw, path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(got.starts_with(ctype), "{path}: {got}");
        assert!(body.contains(needle), "{path}: no {needle:?}");
    }
    // The odd name is escaped in the page and reachable by its encoded path.
    let (status, _, body) = get(&tw, "/services/%3Cb%3Eodd%3C%2Fb%3E%20%22svc%22");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("&lt;b&gt;odd&lt;/b&gt; &quot;svc&quot;") && !body.contains("<b>odd"),
        "{body}"
    );

    for (path, want) in [
        // Unknown things: 404.
        ("/services/nope", 404),
        ("/services/postgres", 404), // a virtual node: on the map, no page
        ("/charts/services/nope/rate.svg", 404),
        ("/charts/services/checkout/cpu.svg", 404),
        ("/charts/services/checkout/rate", 404),
        ("/charts/policies/shop/checkout/cpu.svg", 404),
        ("/charts/policies/shop/checkout/replicas.svg?from=soon", 400),
        ("/ui/nope.js", 404),
        // Bad parameters: 400.
        ("/charts/services/checkout/rate.svg?from=yesterday", 400),
        ("/charts/services/checkout/rate.svg?from=now&to=-1h", 400),
        ("/charts/services/checkout/errors.svg?step=0s", 400),
        ("/charts/services/checkout/errors.svg?step=soon", 400),
        ("/charts/services/checkout/latency.svg?from=-30d&step=1s", 400),
        ("/charts/services/checkout/rate.svg?tz=Europe%2FParis", 400),
        ("/charts/services/checkout/rate.svg?w=99999", 400),
        ("/charts/services/checkout/rate.svg?h=tall", 400),
        ("/charts/services/checkout/rate.svg?from=-1e300", 400),
        ("/charts/services/checkout/rate.svg?from=-100000000000000y", 400),
        (
            "/charts/services/checkout/rate.svg?to=1e300&step=1000000000d",
            400,
        ),
    ] {
        let (status, _, body) = get(&tw, path);
        assert_eq!(status, want, "{path}: {body}");
        assert!(!body.trim().is_empty(), "{path}: empty error");
    }
    let (_, ctype, body) = get(&tw, "/services/nope");
    assert!(
        ctype.starts_with("text/html") && body.contains("no service named"),
        "{body}"
    );
    // Still serving after all that.
    assert_eq!(get(&tw, "/healthz").0, 200);
}

/// The map with 200 generated services: payload of /api/graph and time to render in Chromium.
/// `cargo test --release --test it web_ui_at_200_services -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: run by hand, results in BENCHMARKS.md"]
fn web_ui_at_200_services() {
    browser_ready();
    let tw = Tidewatch::start(&[
        "analyzer.window=1s",
        "analyzer.store.rollup_step=1s",
        "analyzer.service_graph.wait=1s",
    ]);
    let mut rng = Lcg(2024);
    let (names, calls) = topology(200, &mut rng);
    let failing: BTreeSet<String> = names.iter().step_by(23).cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        send_round(&tw, &names, &calls, &failing, &mut rng);
        std::thread::sleep(Duration::from_millis(500));
    }
    let g = wait_for(&tw, "/api/graph?window=15m", |g| {
        g["nodes"].as_array().is_some_and(|n| n.len() >= 200)
    });
    let (nodes, edges) = (
        g["nodes"].as_array().unwrap().len(),
        g["edges"].as_array().unwrap().len(),
    );
    let virtual_nodes = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["virtual"] == true)
        .count();
    // Server side: the API's time and payload.
    let mut api_ms = Vec::new();
    let mut bytes = 0;
    for _ in 0..10 {
        let t = Instant::now();
        let (status, _, body) = get(&tw, "/api/graph?window=15m");
        api_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(status, 200);
        bytes = body.len();
    }
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(get(&tw, "/api/graph?window=15m").2.as_bytes())
            .unwrap();
        e.finish().unwrap().len()
    };
    let out = artifacts("bench-200");
    let v = drive("bench", &tw, &out, &["--runs", "5"]);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{}", v["problems"]);
    let median = |xs: Vec<f64>| {
        let mut xs = xs;
        xs.sort_by(|a, b| a.total_cmp(b));
        xs[xs.len() / 2]
    };
    let field = |list: &str, f: &str| -> f64 {
        median(
            v[list]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x[f].as_f64().unwrap())
                .collect(),
        )
    };
    let drawn = v["loads"][0]["nodes"].as_u64().unwrap();
    assert!(drawn as usize >= 200, "drew {drawn} nodes");
    let report = json!({
        "nodes": nodes, "virtual_nodes": virtual_nodes, "edges": edges,
        "graph_bytes": bytes, "graph_gzip_bytes": gz, "api_ms_median": median(api_ms),
        "page_ready_ms": field("loads", "readyAt"), "first_render_ms": field("loads", "firstRenderMs"),
        "fetch_ms": field("loads", "fetchMs"), "layout_ms": field("loads", "layoutMs"),
        "render_ms": field("loads", "renderMs"), "label_ms": field("loads", "labelMs"),
        "refresh_ms": field("refreshes", "ms"), "refresh_render_ms": field("refreshes", "renderMs"),
        "relayout_ms": field("relayouts", "layoutMs"), "relayout_render_ms": field("relayouts", "renderMs"),
        "relayout_label_ms": field("relayouts", "labelMs"),
        "search_ms": v["search"]["ms"], "search_matches": v["search"]["matches"],
        "focus_ms": v["focus"]["ms"], "focus_nodes": v["focus"]["nodes"], "focus_edges": v["focus"]["edges"],
        "overview_ready_ms": v["overview"]["readyAt"],
    });
    std::fs::write(
        out.join("bench-200.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
