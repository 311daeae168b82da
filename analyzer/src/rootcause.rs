//! Root-cause localisation along the dependency graph.
//!
//! When a service misbehaves, its callers usually misbehave too: their latency includes its latency, its
//! errors become theirs. So among the anomalous services, the likely cause is one whose own downstream
//! dependencies are healthy; an anomalous service that calls an anomalous dependency is more likely a
//! symptom. Within a cause, per-pod RED singles out a pod that is far off its healthy siblings.
//!
//! Everything here is pure: it takes what the detectors said about each service and pod, and the edges,
//! and returns ranked causes with a plain-language explanation.

use std::collections::{BTreeMap, BTreeSet};

/// What the detectors said about one service in the current window.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ServiceState {
    pub service: String,
    /// The strongest anomaly score over its signals (0 = normal, 1 = certainly anomalous).
    pub score: f64,
    pub anomalous: bool,
    /// The signal behind the score, for people: "p95 latency 4.1x its usual 12 ms".
    pub reason: String,
    /// While the detectors are still learning the service (they score nothing yet): how far along.
    pub learning: Option<Learning>,
}

/// A detector's warm-up: windows seen of those needed before it scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Learning {
    pub seen: usize,
    pub needed: usize,
}

/// One pod's RED in the current window.
#[derive(Clone, Debug, PartialEq)]
pub struct PodState {
    pub service: String,
    pub pod: String,
    pub requests: f64,
    pub error_ratio: f64,
    pub p95_ms: Option<f64>,
}

/// A likely cause, with why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Cause {
    pub service: String,
    /// The pod singled out among its siblings, if one is.
    pub pod: Option<String>,
    pub score: f64,
    /// Anomalous services whose trouble this cause explains (its anomalous callers, transitively).
    pub symptoms: Vec<String>,
    pub explanation: String,
}

/// A pod far off its siblings in one window, and why (see [`outliers`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Outlier {
    pub pod: String,
    pub why: String,
}

/// Ranks the anomalous services of `states` into causes. `edges` are (client, server) pairs.
///
/// A cause names a pod only when the same pod stood out among its siblings in this window (`outliers`)
/// and in the one before (`before`): one window can single out a healthy pod by the luck of which
/// requests it served (an incident that starts near the end of a window slows the 5 % of requests that
/// make one pod's p95 and not its siblings'), two running cannot.
pub fn localise(
    states: &[ServiceState],
    edges: &[(String, String)],
    outliers: &BTreeMap<String, Outlier>,
    before: &BTreeMap<String, Outlier>,
) -> Vec<Cause> {
    let anomalous: BTreeMap<&str, &ServiceState> = states
        .iter()
        .filter(|s| s.anomalous)
        .map(|s| (s.service.as_str(), s))
        .collect();
    let mut downstream: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut upstream: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (c, s) in edges {
        if c != s {
            downstream.entry(c.as_str()).or_default().insert(s.as_str());
            upstream.entry(s.as_str()).or_default().insert(c.as_str());
        }
    }
    let mut causes: Vec<Cause> = anomalous
        .values()
        .filter(|s| {
            downstream
                .get(s.service.as_str())
                .is_none_or(|d| d.iter().all(|x| !anomalous.contains_key(x)))
        })
        .map(|s| {
            let symptoms = symptoms_of(&s.service, &upstream, &anomalous);
            let outlier = outliers.get(&s.service);
            let again = outlier.filter(|o| before.get(&s.service).is_some_and(|b| b.pod == o.pod));
            let pod_note = outlier.map(|o| {
                if again.is_some() {
                    format!("{}, as in the window before", o.why)
                } else {
                    format!(
                        "{} (this window only: a pod is named once it stands out two windows running)",
                        o.why
                    )
                }
            });
            Cause {
                service: s.service.clone(),
                pod: again.map(|o| o.pod.clone()),
                score: s.score,
                explanation: explain(s, &symptoms, &anomalous, &downstream, pod_note.as_deref()),
                symptoms,
            }
        })
        .collect();
    // Causes that explain more symptoms first, then by score.
    causes.sort_by(|a, b| {
        b.symptoms
            .len()
            .cmp(&a.symptoms.len())
            .then(b.score.total_cmp(&a.score))
    });
    causes
}

/// Anomalous services upstream of `service`, following anomalous callers only.
fn symptoms_of(
    service: &str,
    upstream: &BTreeMap<&str, BTreeSet<&str>>,
    anomalous: &BTreeMap<&str, &ServiceState>,
) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![service];
    while let Some(s) = todo.pop() {
        for &caller in upstream.get(s).into_iter().flatten() {
            if anomalous.contains_key(caller) && caller != service && seen.insert(caller) {
                todo.push(caller);
            }
        }
    }
    seen.into_iter().map(str::to_owned).collect()
}

/// A p95 of fewer requests than this is little more than the slowest of them.
const P95_MIN_REQUESTS: f64 = 20.0;

/// How unlikely by chance a pod's share of failures must be to single it out.
const CHANCE: f64 = 1e-4;

/// Per service, the pod of `pods` farthest off its siblings in this window, if one is far off:
/// - its error ratio at least 3x their median and 10 points above it, and more failures than chance
///   allows at the siblings' rate ([`beyond_chance`]: one failure in three requests is not a bad pod);
/// - or, with at least [`P95_MIN_REQUESTS`] requests, its p95 latency at least 3x theirs beyond the
///   histogram's resolution: the bottom of its bucket at least 3x the top of the siblings' median's.
///
/// `bounds` are the upper bounds of the latency histogram the pods' p95 was read from (empty: take the
/// p95 values as exact). A p95 read from a histogram is only known to lie within its bucket: with the
/// connector's default buckets a healthy pod at 10.5 ms next to siblings at 9 ms interpolates to about
/// 31 ms. A service needs at least three pods with traffic (two to compare each with).
pub fn outliers(pods: &[PodState], bounds: &[f64]) -> BTreeMap<String, Outlier> {
    let services: BTreeSet<&str> = pods.iter().map(|p| p.service.as_str()).collect();
    services
        .into_iter()
        .filter_map(|s| Some((s.to_owned(), bad_pod(s, pods, bounds)?)))
        .collect()
}

fn bad_pod(service: &str, pods: &[PodState], bounds: &[f64]) -> Option<Outlier> {
    let mine: Vec<&PodState> = pods
        .iter()
        .filter(|p| p.service == service && p.requests > 0.0)
        .collect();
    if mine.len() < 3 {
        return None;
    }
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut worst: Option<(f64, Outlier)> = None;
    for p in &mine {
        let others: Vec<&&PodState> = mine.iter().filter(|o| o.pod != p.pod).collect();
        let err_med = median(others.iter().map(|o| o.error_ratio).collect());
        let (failed, served) = others.iter().fold((0.0, 0.0), |(e, n), o| {
            (e + o.error_ratio * o.requests, n + o.requests)
        });
        // The siblings' rate with one failure and one success added: none failing is not a rate of 0.
        let siblings_rate = (failed + 1.0) / (served + 2.0);
        let lat: Vec<f64> = others.iter().filter_map(|o| o.p95_ms).collect();
        let mut found = None;
        if p.error_ratio >= 3.0 * err_med
            && p.error_ratio - err_med >= 0.10
            && beyond_chance(p.error_ratio * p.requests, p.requests, siblings_rate)
        {
            found = Some((
                p.error_ratio / err_med.max(0.001),
                format!(
                    "pod {} fails {:.0}% of requests, its siblings {:.0}%",
                    p.pod,
                    p.error_ratio * 100.0,
                    err_med * 100.0
                ),
            ));
        } else if let (Some(mine_p95), false) = (p.p95_ms, lat.is_empty())
            && p.requests >= P95_MIN_REQUESTS
        {
            let lat_med = median(lat);
            let (floor, ceiling) = (bucket_floor(bounds, mine_p95), bucket_ceiling(bounds, lat_med));
            if lat_med > 0.0 && floor >= 3.0 * ceiling {
                found = Some((
                    mine_p95 / lat_med,
                    format!("pod {} p95 {mine_p95:.0} ms, its siblings {lat_med:.0} ms", p.pod),
                ));
            }
        }
        if let Some((how_far, why)) = found
            && worst.as_ref().is_none_or(|w| how_far > w.0)
        {
            worst = Some((
                how_far,
                Outlier {
                    pod: p.pod.clone(),
                    why,
                },
            ));
        }
    }
    worst.map(|(_, o)| o)
}

/// Whether `k` failures in `n` requests are more than chance allows at the rate `p`: the Chernoff bound
/// on the binomial tail, P(X ≥ k) ≤ exp(−n·KL(k/n ‖ p)), is below [`CHANCE`]. The bound is above the
/// exact tail, so what it calls beyond chance is.
fn beyond_chance(k: f64, n: f64, p: f64) -> bool {
    if n <= 0.0 || !(0.0..1.0).contains(&p) || k <= n * p {
        return false;
    }
    let q = (k / n).min(1.0);
    // x·ln(x/y), 0 at x = 0.
    let term = |x: f64, y: f64| if x > 0.0 { x * (x / y).ln() } else { 0.0 };
    let kl = term(q, p) + term(1.0 - q, 1.0 - p);
    n * kl > -CHANCE.ln()
}

/// The largest latency a p95 read as `v` from a histogram with upper bounds `bounds` is sure to exceed:
/// the bottom of its bucket (`v` itself without a histogram).
fn bucket_floor(bounds: &[f64], v: f64) -> f64 {
    if bounds.is_empty() {
        return v;
    }
    bounds.iter().copied().filter(|&b| b < v).fold(0.0, f64::max)
}

/// The smallest latency a p95 read as `v` is sure not to exceed: the top of its bucket (`v` itself without
/// a histogram; infinite past the last bound, where nothing can be said).
fn bucket_ceiling(bounds: &[f64], v: f64) -> f64 {
    if bounds.is_empty() {
        return v;
    }
    bounds.iter().copied().find(|&b| b >= v).unwrap_or(f64::INFINITY)
}

fn explain(
    cause: &ServiceState,
    symptoms: &[String],
    anomalous: &BTreeMap<&str, &ServiceState>,
    downstream: &BTreeMap<&str, BTreeSet<&str>>,
    pod: Option<&str>,
) -> String {
    let mut parts = Vec::new();
    for s in symptoms {
        if let Some(st) = anomalous.get(s.as_str()) {
            parts.push(format!("{} {}", st.service, st.reason));
        }
    }
    let deps: Vec<&str> = downstream
        .get(cause.service.as_str())
        .map(|d| d.iter().copied().collect())
        .unwrap_or_default();
    let mut text = if parts.is_empty() {
        format!("{} {}", cause.service, cause.reason)
    } else {
        format!(
            "{}; they depend on {}, which is anomalous ({})",
            parts.join("; "),
            cause.service,
            cause.reason
        )
    };
    if deps.is_empty() {
        text.push_str(&format!(
            " and has no instrumented dependencies: {} is the likely cause",
            cause.service
        ));
    } else {
        text.push_str(&format!(
            " while its dependencies ({}) are healthy: {} is the likely cause",
            deps.join(", "),
            cause.service
        ));
    }
    if let Some(why) = pod {
        text.push_str(&format!("; {why}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(s: &str, score: f64, reason: &str) -> ServiceState {
        ServiceState {
            service: s.into(),
            score,
            anomalous: score >= 0.5,
            reason: reason.into(),
            learning: None,
        }
    }

    /// Causes at a window where `pods` stood as they do in the window before too.
    fn twice(states: &[ServiceState], pods: &[PodState], bounds: &[f64]) -> Vec<Cause> {
        let o = outliers(pods, bounds);
        localise(states, &shop(), &o, &o)
    }

    fn no_pods() -> BTreeMap<String, Outlier> {
        BTreeMap::new()
    }

    fn shop() -> Vec<(String, String)> {
        [
            ("frontend", "checkout"),
            ("checkout", "payment"),
            ("checkout", "inventory"),
            ("inventory", "postgres"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    #[test]
    fn the_deepest_anomalous_service_is_the_cause() {
        let states = [
            st("frontend", 0.8, "p95 latency 3.0x its usual"),
            st("checkout", 0.9, "p95 latency 4.1x its usual"),
            st("payment", 0.95, "p95 latency 8.0x its usual"),
            st("inventory", 0.1, ""),
        ];
        let causes = localise(&states, &shop(), &no_pods(), &no_pods());
        assert_eq!(causes.len(), 1);
        let c = &causes[0];
        assert_eq!(
            (c.service.as_str(), c.symptoms.clone()),
            ("payment", vec!["checkout".to_owned(), "frontend".to_owned()])
        );
        assert!(
            c.explanation.contains("checkout p95 latency 4.1x"),
            "{}",
            c.explanation
        );
        assert!(
            c.explanation.ends_with("payment is the likely cause"),
            "{}",
            c.explanation
        );
    }

    #[test]
    fn healthy_means_no_cause_and_callers_alone_are_their_own_cause() {
        assert!(localise(&[st("frontend", 0.1, "")], &shop(), &no_pods(), &no_pods()).is_empty());
        let causes = localise(
            &[st("checkout", 0.9, "errors 30%")],
            &shop(),
            &no_pods(),
            &no_pods(),
        );
        assert_eq!(causes[0].service, "checkout");
        assert!(causes[0].symptoms.is_empty());
    }

    #[test]
    fn a_bad_pod_is_singled_out() {
        let pod = |p: &str, e: f64| PodState {
            service: "inventory".into(),
            pod: p.into(),
            requests: 100.0,
            error_ratio: e,
            p95_ms: Some(5.0),
        };
        let pods = [
            pod("inventory-a", 0.5),
            pod("inventory-b", 0.01),
            pod("inventory-c", 0.0),
        ];
        let causes = twice(&[st("inventory", 0.9, "errors 17%")], &pods, &[]);
        assert_eq!(causes[0].pod.as_deref(), Some("inventory-a"));
        assert!(
            causes[0].explanation.contains("pod inventory-a fails 50%"),
            "{}",
            causes[0].explanation
        );
        // Siblings that all fail alike single out nobody.
        let even = [pod("a", 0.3), pod("b", 0.3), pod("c", 0.3)];
        assert_eq!(twice(&[st("inventory", 0.9, "")], &even, &[])[0].pod, None);
    }

    #[test]
    fn a_slow_pod_is_singled_out_only_beyond_the_histograms_resolution() {
        // The spanmetrics connector's default buckets, in ms.
        let bounds = [
            2.0, 4.0, 6.0, 8.0, 10.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1000.0, 1400.0, 2000.0, 5000.0,
            10000.0, 15000.0,
        ];
        let pod = |p: &str, p95: f64| PodState {
            service: "inventory".into(),
            pod: p.into(),
            requests: 100.0,
            error_ratio: 0.0,
            p95_ms: Some(p95),
        };
        let slow = [st("inventory", 0.9, "p95 latency 3.0x its usual")];
        // 10.5 ms interpolates to ~31 ms in the 10–50 ms bucket: 3.4x siblings at 9 ms, but not beyond
        // what the buckets can tell apart. No pod is singled out (so none is restarted).
        let healthy = [pod("a", 31.0), pod("b", 9.0), pod("c", 9.0)];
        assert_eq!(twice(&slow, &healthy, &bounds)[0].pod, None);
        // Without the histogram's bounds the same numbers would single it out.
        assert_eq!(twice(&slow, &healthy, &[])[0].pod.as_deref(), Some("a"));
        // A pod really far off (its bucket starts at 200 ms, the siblings' ends at 10 ms) is.
        let bad = [pod("a", 300.0), pod("b", 9.0), pod("c", 9.0)];
        assert_eq!(twice(&slow, &bad, &bounds)[0].pod.as_deref(), Some("a"));
    }

    fn pod(p: &str, requests: f64, error_ratio: f64, p95_ms: f64) -> PodState {
        PodState {
            service: "payment".into(),
            pod: p.into(),
            requests,
            error_ratio,
            p95_ms: Some(p95_ms),
        }
    }

    #[test]
    fn a_pod_that_stands_out_in_one_window_only_is_not_named() {
        let slow = [st("payment", 0.9, "p95 latency 3.0x its usual")];
        // Payment slows down near the end of a window: one pod served 3 of its 40 requests after that
        // (its p95 is among them), its siblings 1 each. Not a bad pod: the luck of the draw.
        let luck = [
            pod("payment-a", 40.0, 0.0, 3000.0),
            pod("payment-b", 40.0, 0.0, 20.0),
            pod("payment-c", 40.0, 0.0, 20.0),
        ];
        let first = outliers(&luck, &[]);
        assert_eq!(first["payment"].pod, "payment-a");
        let causes = localise(&slow, &shop(), &first, &no_pods());
        assert_eq!(causes[0].pod, None);
        assert!(
            causes[0].explanation.contains("this window only"),
            "{}",
            causes[0].explanation
        );
        // The window after, every pod is slow alike: nobody stands out, so nobody was named.
        let even = [
            pod("payment-a", 40.0, 0.0, 3000.0),
            pod("payment-b", 40.0, 0.0, 3000.0),
            pod("payment-c", 40.0, 0.0, 3000.0),
        ];
        let second = outliers(&even, &[]);
        assert!(second.is_empty());
        assert_eq!(localise(&slow, &shop(), &second, &first)[0].pod, None);
        // A pod that stands out two windows running is named.
        let causes = localise(&slow, &shop(), &first, &first);
        assert_eq!(causes[0].pod.as_deref(), Some("payment-a"));
        assert!(
            causes[0].explanation.contains("as in the window before"),
            "{}",
            causes[0].explanation
        );
        // Another pod standing out the window after is not the same finding.
        let other = outliers(
            &[
                pod("payment-a", 40.0, 0.0, 20.0),
                pod("payment-b", 40.0, 0.0, 3000.0),
                pod("payment-c", 40.0, 0.0, 20.0),
            ],
            &[],
        );
        assert_eq!(localise(&slow, &shop(), &other, &first)[0].pod, None);
    }

    #[test]
    fn a_few_failures_among_few_requests_are_chance() {
        // One failure in the 3 requests a pod served as it started: 33 %, but likely at any rate.
        let few = [
            pod("payment-a", 3.0, 1.0 / 3.0, 20.0),
            pod("payment-b", 60.0, 0.0, 20.0),
            pod("payment-c", 60.0, 0.0, 20.0),
        ];
        assert!(outliers(&few, &[]).is_empty());
        // Half of 20 is not.
        let bad = [
            pod("payment-a", 20.0, 0.5, 20.0),
            pod("payment-b", 60.0, 0.0, 20.0),
            pod("payment-c", 60.0, 0.0, 20.0),
        ];
        assert_eq!(outliers(&bad, &[])["payment"].pod, "payment-a");
        // The bound is conservative: 4 of 40 at siblings' 1 % is about 1 in 1,000 by chance, not named.
        assert!(!beyond_chance(4.0, 40.0, 0.01));
        assert!(beyond_chance(10.0, 40.0, 0.01));
        assert!(!beyond_chance(0.0, 40.0, 0.0));
        assert!(beyond_chance(5.0, 5.0, 0.01));
    }

    #[test]
    fn a_p95_of_few_requests_is_not_compared() {
        // Below 20 requests a p95 is about the slowest request: one slow request is not a slow pod.
        let few = [
            pod("payment-a", 5.0, 0.0, 300.0),
            pod("payment-b", 60.0, 0.0, 20.0),
            pod("payment-c", 60.0, 0.0, 20.0),
        ];
        assert!(outliers(&few, &[]).is_empty());
        let enough = [
            pod("payment-a", 20.0, 0.0, 300.0),
            pod("payment-b", 60.0, 0.0, 20.0),
            pod("payment-c", 60.0, 0.0, 20.0),
        ];
        assert_eq!(outliers(&enough, &[])["payment"].pod, "payment-a");
    }
}
