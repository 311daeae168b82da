//! `decide()`: the pure heart of the operator. The same function drives a real Deployment (the
//! reconciler), a simulated one (`tidewatch simulate`) and the replay of the decision log.
//!
//! - The reactive floor is the HPA: per-pod utilisation (requests per second over per-replica capacity)
//!   against the target utilisation, with the HPA's tolerance and missing/not-ready pod rules.
//! - The predictive answer is the replicas needed to serve the forecast's 95 % upper bound over the next
//!   `horizon` (cold start plus metric lag) at full per-replica capacity: the interval is the margin, so
//!   the target utilisation's headroom is not paid a second time on top of it. It counts only when the model has
//!   earned trust: its backtest beats seasonal naive by the policy's margin and the forecast covers the
//!   horizon.
//! - The larger of the two wins, then the HPA's behaviour rules (stabilisation, rate limits, min/max) and
//!   the policy's cooldown apply.

use serde::{Deserialize, Serialize};

use crate::behavior::{ScaleHistory, normalize};
use crate::crd::ServicePolicySpec;
use crate::hpa::{self, PodMetric};

/// One pod of the target as the operator sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodLoad {
    pub name: String,
    /// Requests per second the pod served in the latest window; `None` when it reported nothing.
    pub rate: Option<f64>,
    pub ready: bool,
}

/// The part of a forecast a decision uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForecastInput {
    pub model: String,
    /// Backtest MASE against seasonal naive; `None` when never backtested.
    pub mase: Option<f64>,
    /// Highest upper bound of the 95 % interval over `(now, now + horizon]`; `None` when the forecast does
    /// not reach that far (stale or too short).
    pub peak_upper: Option<f64>,
}

/// Everything a decision depends on: logged with it, so it can be replayed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    pub now_ms: i64,
    /// `spec.replicas` of the target now.
    pub current_replicas: u32,
    pub pods: Vec<PodLoad>,
    /// Requests per second one replica serves within the SLO: the policy's, or learned.
    pub capacity: Option<f64>,
    pub forecast: Option<ForecastInput>,
    /// Time of the latest scaling action, for the cooldown.
    pub last_scale_ms: Option<i64>,
    /// The behaviour rules' memory before this decision.
    pub history: ScaleHistory,
}

/// A decision and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub current: u32,
    /// The HPA's answer alone.
    pub reactive: u32,
    /// Replicas for the forecast peak, when the forecast is trusted.
    pub predictive: Option<u32>,
    /// What to set `spec.replicas` to.
    pub replicas: u32,
    /// The behaviour rule that shaped the result (`DesiredWithinRange` when none did).
    pub limit: String,
    /// In words, for Events, status and the decision log.
    pub reason: String,
}

impl Decision {
    pub fn changes(&self) -> bool {
        self.replicas != self.current
    }
}

/// Decides the replicas of `spec`'s target. Returns the decision and the behaviour memory to keep.
pub fn decide(spec: &ServicePolicySpec, inp: &Inputs) -> (Decision, ScaleHistory) {
    let min = spec.min_replicas.max(1) as u32;
    let max = (spec.max_replicas.max(1) as u32).max(min);
    let current = inp.current_replicas;
    let mut history = inp.history.clone();
    history.prune(inp.now_ms, &spec.behavior);
    let util = spec.capacity.target_utilization.clamp(0.05, 1.0);
    let hold = |reason: String, history: ScaleHistory| {
        (
            Decision {
                current,
                reactive: current,
                predictive: None,
                replicas: current,
                limit: "DesiredWithinRange".into(),
                reason,
            },
            history,
        )
    };

    // The HPA leaves a target scaled to zero alone, and first brings one outside its bounds inside them.
    if current == 0 {
        return hold(
            "scaled to zero: scaling is disabled until it runs again".into(),
            history,
        );
    }

    let capacity = inp.capacity.filter(|c| c.is_finite() && *c > 0.0);
    let (reactive, reactive_why) = match capacity {
        Some(cap) => {
            let pods: Vec<PodMetric> = inp
                .pods
                .iter()
                .map(|p| PodMetric {
                    value: p.rate.map(|r| r / cap),
                    ready: p.ready,
                })
                .collect();
            if pods.is_empty() {
                (current, "no pods of the target found: reactive holds".to_owned())
            } else {
                let r = hpa::desired_replicas(&pods, util, spec.behavior.tolerance);
                (r.replicas, format!("reactive (HPA): {}", r.reason))
            }
        }
        None => (
            current,
            "no per-replica capacity known yet: reactive holds".to_owned(),
        ),
    };

    let predictive = match (&inp.forecast, capacity) {
        (Some(f), Some(cap)) if spec.prediction.enabled => {
            let trusted = f
                .mase
                .is_some_and(|m| m.is_finite() && m <= spec.prediction.max_mase);
            match (trusted, f.peak_upper) {
                (true, Some(peak)) if peak.is_finite() && peak >= 0.0 => {
                    // Full capacity: the upper bound already carries the safety margin.
                    let n = (peak / cap).ceil().max(1.0).min(f64::from(u32::MAX)) as u32;
                    Ok((n, peak, f))
                }
                (true, _) => Err(format!(
                    "forecast ({}) does not cover the {} s horizon: reactive only",
                    f.model, spec.prediction.horizon_seconds
                )),
                (false, _) => Err(format!(
                    "forecast ({}) not trusted: MASE {} above {}: reactive only",
                    f.model,
                    f.mase.map_or("unknown".into(), |m| format!("{m:.2}")),
                    spec.prediction.max_mase
                )),
            }
        }
        (None, Some(_)) if spec.prediction.enabled => Err("no forecast yet: reactive only".into()),
        _ => Err(String::new()),
    };

    let (desired, mut why) = match &predictive {
        Ok((n, peak, f)) if *n > reactive => (
            *n,
            format!(
                "predictive: forecast peak {peak:.1} req/s within {} s ({}, MASE {:.2}) needs {n} at {:.0} req/s per replica; {reactive_why} → {reactive}",
                spec.prediction.horizon_seconds,
                f.model,
                f.mase.unwrap_or(f64::NAN),
                capacity.unwrap_or(0.0),
            ),
        ),
        Ok((n, _, _)) => (
            reactive,
            format!("{reactive_why} → {reactive} (forecast needs {n})"),
        ),
        Err(e) if e.is_empty() => (reactive, format!("{reactive_why} → {reactive}")),
        Err(e) => (reactive, format!("{reactive_why} → {reactive}; {e}")),
    };

    // Outside the bounds, the HPA moves straight inside them, whatever the metrics, windows and policies
    // say (`reconcileAutoscaler` skips normalisation in that case): a bound is never waited on.
    let n = if current > max || current < min {
        let (bound, reason) = if current > max {
            (max, "TooManyReplicas")
        } else {
            (min, "TooFewReplicas")
        };
        why = format!("current {current} outside {min}..={max}: moved to {bound}; {why}");
        crate::behavior::Normalized {
            replicas: bound,
            reason,
        }
    } else {
        normalize(
            desired,
            current,
            min,
            max,
            &spec.behavior,
            &mut history,
            inp.now_ms,
        )
    };
    let mut replicas = n.replicas;
    let mut limit = n.reason.to_owned();
    let cooldown_ms = i64::from(spec.behavior.cooldown_seconds.max(0)) * 1000;
    if replicas != current
        && (min..=max).contains(&current)
        && let Some(last) = inp.last_scale_ms
        && inp.now_ms - last < cooldown_ms
    {
        why = format!(
            "{why}; held: cooldown of {} s since the last scaling",
            spec.behavior.cooldown_seconds
        );
        replicas = current;
        limit = "Cooldown".into();
    }
    if replicas != desired && limit != "Cooldown" {
        why = format!("{why}; {limit} → {replicas}");
    }
    (
        Decision {
            current,
            reactive,
            predictive: predictive.as_ref().ok().map(|(n, _, _)| *n),
            replicas,
            limit,
            reason: why,
        },
        history,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServicePolicySpec {
        serde_yaml::from_str(
            "targetRef: {name: web}\nservice: web\nminReplicas: 2\nmaxReplicas: 20\ncapacity: {requestsPerReplica: 100, targetUtilization: 0.5}\n",
        )
        .unwrap()
    }

    fn pods(rates: &[f64]) -> Vec<PodLoad> {
        rates
            .iter()
            .enumerate()
            .map(|(i, &r)| PodLoad {
                name: format!("web-{i}"),
                rate: Some(r),
                ready: true,
            })
            .collect()
    }

    fn inputs(current: u32, rates: &[f64]) -> Inputs {
        Inputs {
            now_ms: 1_000_000,
            current_replicas: current,
            pods: pods(rates),
            capacity: Some(100.0),
            forecast: None,
            last_scale_ms: None,
            history: ScaleHistory::default(),
        }
    }

    fn forecast(peak: f64, mase: f64) -> Option<ForecastInput> {
        Some(ForecastInput {
            model: "holt-winters".into(),
            mase: Some(mase),
            peak_upper: Some(peak),
        })
    }

    /// Table of decisions: name, spec tweak, inputs, expected (replicas, reactive, predictive, limit).
    #[test]
    fn table() {
        type Tweak = fn(&mut ServicePolicySpec, &mut Inputs);
        type Case = (&'static str, Tweak, u32, u32, Option<u32>, &'static str);
        let cases: Vec<Case> = vec![
            // Utilisation 0.54 / 0.5 = 1.08: within the 0.1 tolerance.
            (
                "within tolerance",
                |_, i| *i = inputs(4, &[54.0; 4]),
                4,
                4,
                None,
                "DesiredWithinRange",
            ),
            // 0.8 / 0.5 = 1.6 → ceil(6.4) = 7.
            (
                "scale up",
                |_, i| *i = inputs(4, &[80.0; 4]),
                7,
                7,
                None,
                "DesiredWithinRange",
            ),
            // Two ready pods at 80, two not ready: scaling up, unready count as 0 → ratio 0.8 → 4 → no change.
            (
                "not-ready pods damp a scale-up",
                |_, i| {
                    *i = inputs(4, &[80.0; 4]);
                    i.pods[2].ready = false;
                    i.pods[3].ready = false;
                },
                4,
                4,
                None,
                "DesiredWithinRange",
            ),
            // Scale-down proposals wait for the 5-minute stabilisation window.
            (
                "scale down stabilised",
                |_, i| {
                    *i = inputs(8, &[10.0; 8]);
                    i.history.recommendations.push((i.now_ms - 60_000, 8));
                },
                8,
                2,
                None,
                "ScaleDownStabilized",
            ),
            (
                "scale down after window",
                |_, i| {
                    *i = inputs(8, &[10.0; 8]);
                    i.history.recommendations.push((i.now_ms - 400_000, 8));
                },
                2,
                2,
                None,
                "DesiredWithinRange",
            ),
            // Trusted forecast upper bound of 900 req/s at 100 req/s per replica → 9, above the reactive 4.
            (
                "predictive wins",
                |_, i| {
                    *i = inputs(4, &[50.0; 4]);
                    i.forecast = forecast(900.0, 0.6);
                },
                8,
                4,
                Some(9),
                "ScaleUpLimit",
            ),
            (
                "untrusted forecast ignored",
                |_, i| {
                    *i = inputs(4, &[50.0; 4]);
                    i.forecast = forecast(900.0, 1.4);
                },
                4,
                4,
                None,
                "DesiredWithinRange",
            ),
            (
                "prediction disabled",
                |s, i| {
                    s.prediction.enabled = false;
                    *i = inputs(4, &[50.0; 4]);
                    i.forecast = forecast(900.0, 0.6);
                },
                4,
                4,
                None,
                "DesiredWithinRange",
            ),
            (
                "forecast never lowers the reactive answer",
                |_, i| {
                    *i = inputs(4, &[80.0; 4]);
                    i.forecast = forecast(10.0, 0.5);
                },
                7,
                7,
                Some(1),
                "DesiredWithinRange",
            ),
            (
                "max bound",
                |_, i| *i = inputs(16, &[200.0; 16]),
                20,
                64,
                None,
                "TooManyReplicas",
            ),
            (
                "outside bounds moves inside",
                |_, i| *i = inputs(25, &[50.0; 25]),
                20,
                25,
                None,
                "TooManyReplicas",
            ),
            // Even with a recent higher recommendation in the scale-down window: a bound is not waited on.
            (
                "above max despite stabilisation",
                |_, i| {
                    *i = inputs(25, &[50.0; 25]);
                    i.history.recommendations.push((i.now_ms - 10_000, 30));
                },
                20,
                25,
                None,
                "TooManyReplicas",
            ),
            (
                "below min",
                |_, i| *i = inputs(1, &[0.0]),
                2,
                0,
                None,
                "TooFewReplicas",
            ),
            (
                "no capacity holds",
                |_, i| {
                    *i = inputs(4, &[500.0; 4]);
                    i.capacity = None;
                },
                4,
                4,
                None,
                "DesiredWithinRange",
            ),
            (
                "cooldown holds",
                |s, i| {
                    s.behavior.cooldown_seconds = 120;
                    *i = inputs(4, &[80.0; 4]);
                    i.last_scale_ms = Some(i.now_ms - 60_000);
                },
                4,
                7,
                None,
                "Cooldown",
            ),
            (
                "scaled to zero left alone",
                |_, i| *i = inputs(0, &[]),
                0,
                0,
                None,
                "DesiredWithinRange",
            ),
            // A pod without telemetry counts as exactly at target when scaling down: three pods at 0.1 and
            // one at 0.5 make 0.2 on average, ratio 0.4 → ceil(1.6) = 2 instead of ceil(0.8) = 1 (then min 2).
            (
                "missing metric damps a scale-down",
                |_, i| {
                    *i = inputs(4, &[10.0; 4]);
                    i.pods[3].rate = None;
                    i.history.recommendations.push((i.now_ms - 400_000, 4));
                },
                2,
                2,
                None,
                "DesiredWithinRange",
            ),
            // With minReplicas 1 the damping shows: 2, not 1.
            (
                "missing metric damps a scale-down to 2",
                |s, i| {
                    s.min_replicas = 1;
                    *i = inputs(4, &[10.0; 4]);
                    i.pods[3].rate = None;
                },
                2,
                2,
                None,
                "DesiredWithinRange",
            ),
        ];
        for (name, tweak, replicas, reactive, predictive, limit) in cases {
            let mut s = spec();
            let mut i = inputs(1, &[0.0]);
            tweak(&mut s, &mut i);
            let (d, _) = decide(&s, &i);
            assert_eq!(
                (d.replicas, d.reactive, d.predictive, d.limit.as_str()),
                (replicas, reactive, predictive, limit),
                "{name}: {}",
                d.reason
            );
            assert!(!d.reason.is_empty(), "{name}");
        }
    }

    /// Whatever the load, forecast, history and behaviour, a target inside its bounds stays inside them,
    /// and a scale-up never outruns the policies.
    #[test]
    fn never_outside_min_max_whatever_the_inputs() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for _ in 0..5_000 {
            let mut s = spec();
            s.min_replicas = rng.random_range(1..5);
            s.max_replicas = s.min_replicas + rng.random_range(0..20);
            s.behavior.scale_down.stabilization_window_seconds = rng.random_range(0..600);
            s.behavior.cooldown_seconds = rng.random_range(0..120);
            let (min, max) = (s.min_replicas as u32, s.max_replicas as u32);
            let current = rng.random_range(1..=max + 5);
            let rates: Vec<f64> = (0..current)
                .map(|_| {
                    if rng.random_bool(0.1) {
                        f64::NAN
                    } else {
                        rng.random_range(0.0..1e4)
                    }
                })
                .collect();
            let mut i = inputs(current, &rates);
            for p in &mut i.pods {
                p.ready = rng.random_bool(0.8);
                if p.rate.is_some_and(f64::is_nan) {
                    p.rate = None;
                }
            }
            i.capacity =
                [None, Some(rng.random_range(0.0..500.0)), Some(f64::INFINITY)][rng.random_range(0..3)];
            i.forecast = rng.random_bool(0.5).then(|| ForecastInput {
                model: "m".into(),
                mase: Some(rng.random_range(0.0..2.0)),
                peak_upper: Some(
                    [rng.random_range(0.0..1e6), f64::NAN, f64::INFINITY][rng.random_range(0..3)],
                ),
            });
            for k in 0..rng.random_range(0..5) {
                i.history
                    .recommendations
                    .push((i.now_ms - k * 30_000, rng.random_range(0..50)));
            }
            let (d, _) = decide(&s, &i);
            assert!((min..=max).contains(&d.replicas), "{d:?} outside {min}..={max}");
            if d.replicas > current && current >= min {
                // The default policies allow at most double or +4 in a period.
                assert!(d.replicas <= (current * 2).max(current + 4), "{d:?}");
            }
        }
    }

    #[test]
    fn replaying_logged_inputs_gives_the_same_decision() {
        let s = spec();
        let mut i = inputs(4, &[80.0; 4]);
        i.forecast = forecast(900.0, 0.6);
        let (d, _) = decide(&s, &i);
        let logged = serde_json::to_string(&i).unwrap();
        let replayed: Inputs = serde_json::from_str(&logged).unwrap();
        assert_eq!(decide(&s, &replayed).0, d);
    }
}
