//! `tidewatch demo` end to end, the real binary on free ports with fast settings (2 s windows, 2 s
//! reconciles, a 2-minute simulated day): the backfilled history is there when it is ready, and each
//! incident is flagged with its likely cause and answered as it should be: a scale-up for the surge, a
//! restart of the bad pod and of no other, no restart when payment slows down (its callers are symptoms,
//! and no pod of payment's stands out). Every wait is on a
//! condition with a generous deadline; the "within a minute" checks use the decisions' own timestamps.

use std::time::Duration;

use crate::common::Tidewatch;
use serde_json::Value;

const SURGE_AT_S: i64 = 5;
const BAD_POD_AT_S: i64 = 45;
const LATENCY_AT_S: i64 = 95;

fn get(tw: &Tidewatch, path: &str) -> Value {
    let r = tw.get_web(path);
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().expect("JSON")
}

fn decisions(tw: &Tidewatch) -> Vec<Value> {
    get(tw, "/api/decisions?limit=1000")["decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls `f` until it returns `Some`, for at most `within`; a timeout shows what the operator decided
/// (one line per decision: every heal decision with its reason, the latest scale decisions) and the
/// causes the analyzer names now.
fn wait_for<T>(tw: &Tidewatch, what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    crate::common::wait_for(what, within, || f().ok_or_else(|| seen(tw)))
}

fn seen(tw: &Tidewatch) -> String {
    let all = decisions(tw);
    let t0 = all.iter().filter_map(|d| d["ts_ms"].as_i64()).min().unwrap_or(0);
    let line = |d: &Value| {
        let x = &d["decision"];
        format!(
            "  +{:>6} ms {} {} {} {}",
            d["ts_ms"].as_i64().unwrap_or(0) - t0,
            d["policy"].as_str().unwrap_or("?"),
            d["kind"].as_str().unwrap_or("?"),
            d["outcome"].as_str().unwrap_or("?"),
            if d["kind"] == "heal" {
                format!("{} {} {}", x["action"], x["pod"], x["reason"])
            } else {
                format!("{} -> {} {}", x["current"], x["replicas"], x["reason"])
            }
        )
    };
    let heals: Vec<String> = all
        .iter()
        .filter(|d| d["kind"] == "heal" && d["decision"]["reason"].as_str().is_some_and(|r| !r.is_empty()))
        .map(line)
        .collect();
    let scales: Vec<String> = all.iter().filter(|d| d["kind"] == "scale").map(line).collect();
    let scales = &scales[scales.len().saturating_sub(15)..];
    let anomalies = get(tw, "/api/anomalies");
    format!(
        "{} decisions; heal decisions with a reason:\n{}\nthe latest scale decisions:\n{}\nanomalies now: {anomalies}",
        all.len(),
        heals.join("\n"),
        scales.join("\n")
    )
}

/// The restarts the operator made: (ts_ms, pod, policy).
fn restarts(all: &[Value]) -> Vec<(i64, String, String)> {
    all.iter()
        .filter(|d| d["kind"] == "heal" && d["decision"]["action"] == "restart")
        .map(|d| {
            (
                d["ts_ms"].as_i64().unwrap_or(0),
                d["decision"]["pod"].as_str().unwrap_or("").to_owned(),
                d["policy"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_demo_flags_each_incident_and_answers_it() {
    let surge = format!("surge@{SURGE_AT_S}s+30s");
    let bad_pod = format!("bad-pod:inventory@{BAD_POD_AT_S}s+40s");
    let latency = format!("latency:payment@{LATENCY_AT_S}s+40s");
    let tw = Tidewatch::start_fast_demo(&[&surge, &bad_pod, &latency]);

    // The history is there from the start: the shop's services over the backfilled minutes, and a
    // forecast per service from the trainer's first fit.
    let services = get(&tw, "/api/services?window=6m");
    let names: Vec<&str> = services["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for s in ["frontend", "checkout", "payment", "inventory", "shipping"] {
        assert!(names.contains(&s), "{s} missing from {services}");
    }
    let red = get(&tw, "/api/services/frontend/red?from=-6m&step=1m");
    let points = red["points"].as_array().map_or(0, Vec::len);
    assert!(points >= 5, "backfilled minutes: {red}");

    // The operator reconciles the simulated Deployments: every policy reports its state.
    let policies = wait_for(&tw, "the policies' state", Duration::from_secs(120), || {
        let p = get(&tw, "/api/policies")["policies"].as_array().cloned()?;
        (p.len() == 5).then_some(p)
    });
    let frontend = policies
        .iter()
        .find(|p| p["policy"] == "shop/frontend")
        .expect("frontend policy");
    assert_eq!(frontend["capacity"]["source"], "given", "{frontend}");
    assert_eq!(frontend["current_replicas"], 3, "{frontend}");
    let t0 = decisions(&tw)
        .iter()
        .filter_map(|d| d["ts_ms"].as_i64())
        .min()
        .expect("a first decision");

    // 1. The surge: flagged, and answered by a scale-up within a minute.
    let scale_up = wait_for(&tw, "a scale-up", Duration::from_secs(240), || {
        decisions(&tw).into_iter().find(|d| {
            d["kind"] == "scale"
                && d["outcome"] == "ok"
                && d["decision"]["replicas"].as_u64() > d["decision"]["current"].as_u64()
        })
    });
    let at = scale_up["ts_ms"].as_i64().unwrap_or(0) - t0;
    assert!(
        at <= (SURGE_AT_S + 60) * 1000,
        "scale-up {at} ms after the start: {scale_up}"
    );
    wait_for(
        &tw,
        "a flagged anomaly with a cause",
        Duration::from_secs(120),
        || {
            let a = get(&tw, "/api/anomalies");
            let recent = a["recent"].as_array()?;
            recent
                .iter()
                .any(|r| r["causes"].as_array().is_some_and(|c| !c.is_empty()))
                .then_some(())
        },
    );
    wait_for(&tw, "the new pods serving", Duration::from_secs(120), || {
        let p = get(&tw, "/api/policies")["policies"].as_array().cloned()?;
        p.iter()
            .any(|p| p["ready_replicas"].as_u64() > Some(3))
            .then_some(())
    });

    // 2. The bad pod: singled out among its siblings, restarted, and nothing else.
    let (restart_at, restarted, policy) =
        wait_for(&tw, "the bad pod's restart", Duration::from_secs(300), || {
            restarts(&decisions(&tw)).into_iter().next()
        });
    assert_eq!(policy, "shop/inventory", "{:#?}", decisions(&tw));
    assert!(
        restart_at - t0 <= (BAD_POD_AT_S + 60) * 1000,
        "restart {} ms after the start",
        restart_at - t0
    );
    let anomalies = get(&tw, "/api/anomalies");
    let singled_out: Vec<&str> = anomalies["recent"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["causes"].as_array().into_iter().flatten())
        .filter(|c| c["service"] == "inventory")
        .filter_map(|c| c["pod"].as_str())
        .collect();
    assert!(
        singled_out.contains(&restarted.as_str()),
        "restarted {restarted}, singled out {singled_out:?}"
    );

    // 3. Payment slows down: payment is the cause, its callers are symptoms, and no pod of theirs or of
    // payment's is restarted (none stands out among its siblings). Payment may have been named during
    // the surge too: only what comes after this incident's start counts.
    let downstream = wait_for(
        &tw,
        "payment named the cause, not restarted",
        Duration::from_secs(300),
        || {
            decisions(&tw).into_iter().find(|d| {
                d["kind"] == "heal"
                    && d["policy"] == "shop/payment"
                    && d["ts_ms"].as_i64() >= Some(t0 + LATENCY_AT_S * 1000)
                    && d["decision"]["action"] == "none"
                    && d["decision"]["reason"].as_str().is_some_and(|r| {
                        r.starts_with("payment is the likely cause") && r.contains("no restart")
                    })
            })
        },
    );
    let at = downstream["ts_ms"].as_i64().unwrap_or(0) - t0;
    assert!(
        (LATENCY_AT_S * 1000..=(LATENCY_AT_S + 60) * 1000).contains(&at),
        "payment flagged {at} ms after the start: {downstream}"
    );
    let anomalies = get(&tw, "/api/anomalies");
    let checkout_a_symptom = anomalies["recent"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["ts"].as_i64() >= Some(t0 + LATENCY_AT_S * 1000))
        .flat_map(|r| r["causes"].as_array().into_iter().flatten())
        .any(|c| {
            c["service"] == "payment"
                && c["symptoms"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|x| x == "checkout"))
        });
    assert!(
        checkout_a_symptom,
        "checkout is a symptom of payment: {anomalies}"
    );
    // Let a few more reconciles pass during the incident: still no other restart.
    let last = downstream["ts_ms"].as_i64().unwrap_or(0);
    wait_for(&tw, "more reconciles", Duration::from_secs(120), || {
        decisions(&tw)
            .iter()
            .any(|d| d["ts_ms"].as_i64() > Some(last + 6000))
            .then_some(())
    });
    let all = restarts(&decisions(&tw));
    assert_eq!(
        all.iter().map(|(_, pod, _)| pod.as_str()).collect::<Vec<_>>(),
        vec![restarted.as_str()],
        "only the bad pod is restarted: {all:?}"
    );
    // The restart was an Event of the simulated cluster, shown with the policy.
    let policies = get(&tw, "/api/policies");
    let inventory = policies["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["policy"] == "shop/inventory")
        .cloned()
        .expect("inventory policy");
    assert!(
        inventory["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["reason"] == "PodRestarted"),
        "{inventory}"
    );
}
