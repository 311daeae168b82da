//! A real Prometheus (Debian's package) scrapes Tidewatch: the exposition passes `promtool check metrics`,
//! and a PromQL rate over the scraped RED metrics matches the rate Tidewatch's own counters show.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Metrics, Prometheus, Tidewatch};

fn bin(name: &str) -> String {
    let path = format!("/usr/bin/{name}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} missing: run `bench/peers/install.sh prometheus` (CI does)"
    );
    path
}

#[test]
fn promtool_accepts_the_exposition() {
    let tw = Tidewatch::start(&[]);
    let out = crate::common::tidewatch()
        .args([
            "loadgen",
            "--endpoint",
            &format!("http://{}", tw.grpc),
            "--rate",
            "2000",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = tw.metrics().text;
    assert!(text.contains("traces_service_graph_request_total{"), "{text}");
    let mut check = Command::new(bin("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promql_rate_over_scraped_red_metrics() {
    let tw = Tidewatch::start(&[]);
    let prom = Prometheus::scraping(&tw);
    let port = prom.port;

    // Steady traffic (a flat daily cycle) for 12 s while Prometheus scrapes every second.
    let load = crate::common::loadgen(&tw, 4000, 200)
        .args([
            "--duration",
            "14s",
            "--day",
            "100000h",
            "--metrics-and-logs",
            "false",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let series = [("service_name", "frontend"), ("span_kind", "SPAN_KIND_SERVER")];
    let count = |m: &Metrics| m.sum("traces_span_metrics_calls_total", &series);
    let (c0, t0) = (count(&tw.metrics()), Instant::now());
    std::thread::sleep(Duration::from_secs(8));
    let (c1, t1) = (count(&tw.metrics()), Instant::now());
    let truth = (c1 - c0) / (t1 - t0).as_secs_f64();
    assert!(truth > 50.0, "too little traffic: {truth}/s");

    let query = "sum(rate(traces_span_metrics_calls_total{service_name=\"frontend\",span_kind=\"SPAN_KIND_SERVER\"}[6s]))";
    let url = format!("http://127.0.0.1:{port}/api/v1/query");
    let got: f64 = reqwest::blocking::Client::new()
        .get(&url)
        .query(&[("query", query)])
        .send()
        .unwrap()
        .json::<serde_json::Value>()
        .unwrap()["data"]["result"][0]["value"][1]
        .as_str()
        .expect("Prometheus returned a value")
        .parse()
        .unwrap();
    let mut load = load;
    let _ = load.wait();
    drop(prom);
    let err = (got - truth).abs() / truth;
    assert!(
        err < 0.2,
        "PromQL rate {got:.1}/s vs Tidewatch's counters {truth:.1}/s"
    );

    // The service-graph series were scraped too, with the connector's labels.
    assert!(
        tw.metrics()
            .get(
                "traces_service_graph_request_total",
                &[
                    ("client", "inventory"),
                    ("server", "postgres"),
                    ("connection_type", "database")
                ]
            )
            .unwrap()
            > 0.0
    );
}
