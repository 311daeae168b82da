//! `tidewatch simulate` end to end: a small synthetic trace written to a temporary directory, replayed under
//! every policy through the binary; the JSON last line parses, the oracle does no worse than the HPA, and a
//! bad CSV is a clear error, not a panic.

use std::io::Write;

/// Two days at 5-minute rows: a quiet base and a sudden surge every afternoon.
fn surge_trace(path: &std::path::Path) {
    let mut f = std::fs::File::create(path).unwrap();
    writeln!(f, "timestamp,value").unwrap();
    for i in 0..576 {
        let secs = 1_700_006_400 + i * 300;
        let hour = (i % 288) / 12;
        let v = if (14..17).contains(&hour) {
            1000
        } else {
            100 + i % 7
        };
        writeln!(f, "{secs},{v}").unwrap();
    }
}

fn run(args: &[&str]) -> std::process::Output {
    crate::common::tidewatch()
        .arg("simulate")
        .args(args)
        .output()
        .expect("tidewatch runs")
}

fn simulate(trace: &std::path::Path, policy: &str) -> std::process::Output {
    crate::common::tidewatch()
        .args(["simulate", "--trace"])
        .arg(trace)
        .args(["--policy", policy, "--json"])
        .output()
        .expect("tidewatch runs")
}

fn last_line(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("some output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn simulate_prints_a_json_score_and_the_oracle_beats_the_hpa() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.csv");
    surge_trace(&path);
    let mut scores = std::collections::BTreeMap::new();
    for policy in ["hpa", "tidewatch", "oracle"] {
        let v = last_line(&simulate(&path, policy));
        for key in ["slo_violation_minutes", "scaling_actions", "reversals"] {
            assert!(v[key].is_u64(), "{policy}: {key} in {v}");
        }
        assert!(v["replica_hours"].as_f64().is_some_and(|h| h > 0.0), "{v}");
        scores.insert(policy, v["slo_violation_minutes"].as_u64().unwrap_or(u64::MAX));
    }
    assert!(scores["hpa"] > 0, "the surge outruns a cold start: {scores:?}");
    assert!(
        scores["oracle"] == 0 || scores["oracle"] < scores["hpa"],
        "{scores:?}"
    );

    // A bad row is named, with its line.
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "timestamp,value\n2024-01-01 00:00:00,5\n2024-01-01 00:05:00,five\n",
    )
    .unwrap();
    let out = simulate(&bad, "hpa");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.csv:3") && err.contains("not a number"), "{err}");
    let out = simulate(&dir.path().join("missing.csv"), "hpa");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.csv"));
}

#[test]
fn the_sweep_prints_both_curves_and_where_tidewatch_lies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.csv");
    surge_trace(&path);
    let trace = path.to_str().unwrap();
    let out = run(&["--trace", trace, "--sweep", "--json"]);
    let f = last_line(&out);
    for policy in ["hpa", "tidewatch"] {
        let curve = f[policy].as_array().expect("a curve");
        let utils: Vec<f64> = curve
            .iter()
            .filter_map(|p| p["target_utilization"].as_f64())
            .collect();
        assert_eq!(utils, [0.5, 0.6, 0.7, 0.8, 0.9], "{f}");
    }
    assert_eq!(f["point"]["target_utilization"], 0.7, "{f}");
    assert!(
        f["on_or_below"].is_boolean() && f["hpa_violations_at_same_cost"].is_number(),
        "{f}"
    );
    assert_eq!(f["oracle"]["slo_violation_minutes"], 0, "{f}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("the HPA at the same replica-hours"), "{text}");
    // A plot draws one replay.
    let bad = run(&["--trace", trace, "--sweep", "--plot", "x.svg"]);
    assert!(!bad.status.success());
}

#[test]
fn plot_draws_the_replay_and_a_bad_pod_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.csv");
    surge_trace(&path);
    let svg = dir.path().join("replay.svg");
    let out = run(&[
        "--trace",
        path.to_str().unwrap(),
        "--policy",
        "tidewatch",
        "--incident",
        "bad-pod",
        "--incident-at",
        "12h",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("pods restarted         1"), "{text}");
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(
        drawn.starts_with("<svg") && drawn.contains("<polyline"),
        "{}",
        &drawn[..200.min(drawn.len())]
    );
    // The bad pod's minute before detection is drawn as a violation band.
    assert!(
        drawn.contains("SLO violated") && drawn.contains("<rect"),
        "no violation drawn"
    );
}
