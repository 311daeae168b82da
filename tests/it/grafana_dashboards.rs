//! The Grafana dashboards in `dashboards/grafana/` query only what Tidewatch exports. Every PromQL
//! expression (panel targets and variable queries) is parsed for metric names, and each name must be a
//! series on a live Tidewatch's `/metrics` after the load generator's traffic. Then a real Prometheus
//! scrapes that Tidewatch and runs every expression, with Grafana's variables filled in: each must parse
//! and return data, so a typo in a label or a function shows here rather than as an empty panel.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Prometheus, Tidewatch};
use serde_json::Value;

/// PromQL words that look like identifiers but are not metric names.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Metric names in a PromQL expression: identifiers left once strings, label matchers (`{…}`), ranges
/// (`[…]`), grouping lists (`by (…)`) and Grafana variables are removed, that are not keywords and not
/// followed by `(` (functions).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let c: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let is_start = |ch: char| ch.is_ascii_alphabetic() || ch == '_' || ch == ':';
    let is_part = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    // Skips from an opening bracket to its match.
    let skip = |mut i: usize, open: char, close: char| {
        let mut depth = 0;
        while i < c.len() {
            if c[i] == '"' || c[i] == '\'' || c[i] == '`' {
                let q = c[i];
                i += 1;
                while i < c.len() && c[i] != q {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
            } else if c[i] == open {
                depth += 1;
            } else if c[i] == close {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            i += 1;
        }
        i
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i += 1;
            while i < c.len() && c[i] != ch {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if ch == '{' {
            i = skip(i, '{', '}');
        } else if ch == '[' {
            i = skip(i, '[', ']');
        } else if ch == '$' {
            i += 1;
            if c.get(i) == Some(&'{') {
                i = skip(i, '{', '}');
            }
            while i < c.len() && is_part(c[i]) {
                i += 1;
            }
        } else if ch.is_ascii_digit() || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number, including 1e3 and 0x1f: skip it whole so its letters are not read as a name.
            while i < c.len() && (is_part(c[i]) || c[i] == '.') {
                i += 1;
            }
        } else if is_start(ch) {
            let start = i;
            while i < c.len() && is_part(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let mut j = i;
            while j < c.len() && c[j].is_whitespace() {
                j += 1;
            }
            let lower = word.to_ascii_lowercase();
            if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&lower.as_str())
                && c.get(j) == Some(&'(')
            {
                i = skip(j, '(', ')');
            } else if c.get(j) != Some(&'(') && !KEYWORDS.contains(&lower.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// A variable query `label_values(metric{…}, label)` → the expression part (`metric{…}`).
fn variable_expr(q: &str) -> Option<String> {
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    // label_values(label) has no metric: None.
    inner
        .rsplit_once(',')
        .map(|(metric, _label)| metric.trim().to_owned())
}

struct Dashboard {
    file: PathBuf,
    json: Value,
    /// Panel title and expression.
    exprs: Vec<(String, String)>,
    /// Variable name and the expression of its query.
    variables: Vec<(String, String)>,
}

fn collect_exprs(v: &Value, panel: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(o) => {
            let title = o.get("title").and_then(Value::as_str).unwrap_or(panel).to_owned();
            if let Some(Value::String(e)) = o.get("expr") {
                out.push((title.clone(), e.clone()));
            }
            for (k, child) in o {
                if k != "templating" {
                    collect_exprs(child, &title, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, panel, out)),
        _ => {}
    }
}

fn dashboards() -> Vec<Dashboard> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/grafana");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).unwrap();
            let json: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", file.display()));
            let mut exprs = Vec::new();
            collect_exprs(&json["panels"], "", &mut exprs);
            let variables = json["templating"]["list"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| v["type"] == "query")
                .map(|v| {
                    let q = v["query"]["query"]
                        .as_str()
                        .or(v["query"].as_str())
                        .or(v["definition"].as_str())
                        .unwrap_or_default();
                    let name = v["name"].as_str().unwrap_or_default().to_owned();
                    let expr = variable_expr(q).unwrap_or_else(|| {
                        panic!("{}: variable {name}: unexpected query {q:?}", file.display())
                    });
                    (name, expr)
                })
                .collect();
            Dashboard {
                file,
                json,
                exprs,
                variables,
            }
        })
        .collect()
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (le, service_name) (rate(traces_span_metrics_duration_seconds_bucket{service_name=~"$service", span_kind="SPAN_KIND_SERVER"}[$__rate_interval])))"#
        ),
        ["traces_span_metrics_duration_seconds_bucket"]
    );
    assert_eq!(
        names(
            r#"sum by (id) (label_replace(sum by (server) (rate(a_total[$__range])), "id", "$1", "server", "(.*)")) or sum without (x) (b:rate5m) * 0 / on (id) group_left (y) c offset 5m > bool 1e3"#
        ),
        ["a_total", "b:rate5m", "c"]
    );
    assert_eq!(
        variable_expr("label_values(traces_span_metrics_calls_total, service_name)").as_deref(),
        Some("traces_span_metrics_calls_total")
    );
}

#[test]
fn dashboards_are_well_formed() {
    let all = dashboards();
    let files: BTreeSet<String> = all
        .iter()
        .map(|d| d.file.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["red-overview.json", "service-graph.json", "self-health.json"] {
        assert!(
            files.contains(want),
            "dashboards/grafana/{want} missing: {files:?}"
        );
    }
    let mut uids = BTreeSet::new();
    for d in &all {
        let f = d.file.display();
        assert!(
            uids.insert(d.json["uid"].as_str().unwrap().to_owned()),
            "{f}: duplicate uid"
        );
        assert!(
            d.json["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{f}: no title"
        );
        assert!(d.exprs.len() >= 5, "{f}: only {} queries", d.exprs.len());
        let mut ids = BTreeSet::new();
        for p in d.json["panels"].as_array().unwrap() {
            assert!(p["type"].is_string() && p["gridPos"]["w"].is_u64(), "{f}: {p}");
            assert!(ids.insert(p["id"].as_u64().unwrap()), "{f}: duplicate panel id");
            if p["type"] != "row" {
                // One data source, chosen by the dashboard's variable: imports anywhere without editing.
                assert_eq!(p["datasource"]["uid"], "${datasource}", "{f}: {}", p["title"]);
            }
        }
        for (panel, e) in &d.exprs {
            assert!(!metric_names(e).is_empty(), "{f}: {panel}: no metric in {e}");
        }
    }
    // The service graph dashboard has the node-graph panel, fed with nodes (id) and edges (source, target).
    let graph = all
        .iter()
        .find(|d| d.file.ends_with("service-graph.json"))
        .unwrap();
    let node_graph = graph.json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "nodeGraph")
        .expect("a nodeGraph panel");
    let text = node_graph.to_string();
    assert!(text.contains("traces_service_graph_request_total"));
    for field in ["\"source\"", "\"target\"", "\"mainstat\"", "\\\"id\\\""] {
        assert!(text.contains(field), "node graph lacks {field}: {text}");
    }
}

/// Starts Tidewatch and sends the shop's traffic, metrics and logs included, for `seconds`.
fn with_traffic(seconds: u32) -> (Tidewatch, Child) {
    let tw = Tidewatch::start(&["analyzer.service_graph.wait=1s"]);
    let load = crate::common::tidewatch()
        .args(["loadgen", "--endpoint", &format!("http://{}", tw.grpc)])
        .args(["--rate", "2000", "--batch", "200", "--day", "1000h"])
        .args([
            "--duration",
            &format!("{seconds}s"),
            "--incident",
            "errors:payment",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (tw, load)
}

/// Every family a live /metrics serves, waiting until the traffic has filled in the ones that need it.
fn live_names(tw: &Tidewatch, wanted: &BTreeSet<String>) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let names: BTreeSet<String> = tw.metrics().samples.into_iter().map(|s| s.name).collect();
        if wanted.is_subset(&names) || Instant::now() > deadline {
            return names;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn every_query_names_metrics_tidewatch_exports() {
    let all = dashboards();
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut used_by: Vec<(String, String)> = Vec::new();
    for d in &all {
        let f = d.file.file_name().unwrap().to_string_lossy().into_owned();
        for (panel, e) in d
            .exprs
            .iter()
            .chain(d.variables.iter())
            .map(|(p, e)| (p.clone(), e.clone()))
        {
            for m in metric_names(&e) {
                used_by.push((m.clone(), format!("{f}: {panel}")));
                wanted.insert(m);
            }
        }
    }
    let (tw, mut load) = with_traffic(8);
    let live = live_names(&tw, &wanted);
    let _ = load.wait();
    let missing: Vec<&(String, String)> = used_by.iter().filter(|(m, _)| !live.contains(m)).collect();
    assert!(
        missing.is_empty(),
        "metric names queried by the dashboards but not on /metrics: {missing:?}\nlive: {live:?}"
    );
    // The three areas are all covered.
    for m in [
        "traces_span_metrics_calls_total",
        "traces_span_metrics_duration_seconds_bucket",
        "traces_service_graph_request_total",
        "tidewatch_collector_items_total",
        "tidewatch_analyzer_queue_depth_batches",
    ] {
        assert!(wanted.contains(m), "no dashboard queries {m}");
    }
}

/// Grafana's variables as a dashboard would send them: every value of a multi-value variable, short
/// intervals because this Prometheus scrapes every second.
fn substitute(expr: &str) -> String {
    let mut e = expr
        .replace("$__rate_interval", "5s")
        .replace("$__range", "20s")
        .replace("$__interval", "2s");
    for var in ["service", "client", "server", "instance"] {
        e = e
            .replace(&format!("${{{var}}}"), ".*")
            .replace(&format!("${var}"), ".*");
    }
    e
}

#[test]
fn every_query_runs_on_a_real_prometheus() {
    let (tw, mut load) = with_traffic(16);
    let prom = Prometheus::scraping(&tw);
    let port = prom.port;
    let client = reqwest::blocking::Client::new();
    let query = |q: &str| -> Result<Value, String> {
        let r = client
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", q)])
            .send()
            .map_err(|e| e.to_string())?;
        let v: Value = r.json().map_err(|e| e.to_string())?;
        if v["status"] == "success" {
            Ok(v["data"]["result"].clone())
        } else {
            Err(v.to_string())
        }
    };
    // Let Prometheus take a dozen scrapes of the traffic (and the service graph pair its edges).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ok = query("count(rate(traces_service_graph_request_total[5s]) > 0)")
            .ok()
            .and_then(|r| r[0]["value"][1].as_str().map(str::to_owned))
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|n| n >= 6.0);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus never saw the traffic");
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(6));

    let mut failures = Vec::new();
    let mut ran = 0;
    for d in dashboards() {
        let f = d.file.file_name().unwrap().to_string_lossy().into_owned();
        for (panel, expr) in d.exprs.iter().chain(d.variables.iter()) {
            let q = substitute(expr);
            ran += 1;
            match query(&q) {
                Ok(r) if r.as_array().is_some_and(|a| !a.is_empty()) => {}
                Ok(r) => failures.push(format!("{f}: {panel}: no data: {q} → {r}")),
                Err(e) => failures.push(format!("{f}: {panel}: {q} → {e}")),
            }
        }
    }
    let _ = load.wait();
    assert!(ran >= 30, "only {ran} queries");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
