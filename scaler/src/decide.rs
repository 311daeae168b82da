//! `decide()`: the pure heart of the operator. The same function drives a real Deployment (the
//! reconciler), a simulated one (`tidewatch simulate`) and the replay of the decision log.
//!
//! - The reactive answer is the HPA: per-pod utilisation (requests per second over per-replica capacity)
//!   against the target utilisation, with the HPA's tolerance and missing/not-ready pod rules.
//! - A forecast counts only when it has earned trust: its backtest beats seasonal naive by the policy's
//!   margin and it covers the horizon (cold start plus metric lag plus a sync). Then:
//!   - **calibrated** (the forecast carries a [`Calibration`] learned from its realised errors): when
//!     the replicas that serve the calibrated peak over the horizon at full per-replica capacity (the
//!     load at which a replica meets the SLO) are fewer than the HPA's answer, they are the answer, and
//!     scale-downs wait [`TRUSTED_SCALE_DOWN_WINDOW_S`] instead of the policy's window; otherwise the
//!     answer is the HPA's. A calibrated peak only ever lowers the HPA's answer: on spiky load its high
//!     quantile would buy insurance against bursts more dearly than a lower target utilisation does
//!     (BENCHMARKS.md, the frontier). The fallback is immediate: when
//!     the observed load (the pods' rates summed) is above the calibrated peak, the forecast has left its
//!     band and the answer is the HPA's, with the policy's behaviour.
//!   - **band** (not calibrated yet): the larger of the HPA's answer and the replicas for the forecast's
//!     95 % upper bound at full capacity.
//! - Without a trusted forecast the answer is exactly the HPA's. Then the HPA's behaviour rules
//!   (stabilisation, rate limits, min/max) and the policy's cooldown apply.

use serde::{Deserialize, Serialize};

pub use crate::behavior::Limit;
use crate::behavior::{ScaleHistory, normalize};
pub use crate::calibrate::Calibration;
use crate::crd::{Behavior, ServicePolicySpec};
use crate::hpa::{self, PodMetric};

/// Scale-down stabilisation window, in seconds, while a calibrated forecast sizes the target (the
/// policy's window applies otherwise): the calibrated peak already covers the horizon ahead, so the
/// window only has to ride out a sync or two of noise.
pub const TRUSTED_SCALE_DOWN_WINDOW_S: i32 = 60;

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
    /// Highest point forecast over the same horizon; `None` when the forecast does not reach that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_mean: Option<f64>,
    /// The margin over `peak_mean` learned from the forecast's realised errors; `None` until learned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
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

/// What the desired replica count rests on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Basis {
    /// The HPA's answer.
    #[default]
    Reactive,
    /// A trusted forecast's 95 % upper bound, above the HPA's answer.
    ForecastBand,
    /// A trusted forecast's calibrated peak, below the HPA's answer.
    Calibrated,
    /// The HPA's answer because the observed load left the calibrated forecast's band.
    Fallback,
}

/// A decision and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub current: u32,
    /// The HPA's answer alone.
    pub reactive: u32,
    /// Replicas for the forecast peak, when the forecast is trusted.
    pub predictive: Option<u32>,
    /// What the desired count rests on.
    #[serde(default)]
    pub basis: Basis,
    /// What to set `spec.replicas` to.
    pub replicas: u32,
    /// The behaviour rule that shaped the result (`DesiredWithinRange` when none did).
    pub limit: Limit,
    /// In words, for Events, status and the decision log.
    pub reason: String,
}

impl Decision {
    pub fn changes(&self) -> bool {
        self.replicas != self.current
    }
}

/// Replicas that serve `load` at `per_replica` each (at least one).
fn replicas_for(load: f64, per_replica: f64) -> u32 {
    // 700 / 70 is 10.000000000000002 in floating point: that is 10 replicas, not 11.
    (load / per_replica - 1e-9).ceil().clamp(1.0, f64::from(u32::MAX)) as u32
}

/// What a trusted forecast proposes.
enum Forecasted {
    /// Replicas for the 95 % upper bound: raises the HPA's answer only.
    Band { n: u32, peak: f64 },
    /// Replicas for the calibrated peak: the answer, whatever the HPA's.
    Calibrated { n: u32, peak: f64, cal: Calibration },
    /// The observed load is above the calibrated peak: the HPA's answer.
    Outside { n: u32, peak: f64, observed: f64 },
}

/// The forecast's proposal, or why there is none (empty when prediction is off).
fn forecasted<'a>(
    spec: &ServicePolicySpec,
    inp: &'a Inputs,
    cap: f64,
) -> Result<(Forecasted, &'a ForecastInput), String> {
    let f = match &inp.forecast {
        Some(f) => f,
        None => return Err("no forecast yet: reactive only".into()),
    };
    if !f
        .mase
        .is_some_and(|m| m.is_finite() && m <= spec.prediction.max_mase)
    {
        return Err(format!(
            "forecast ({}) not trusted: MASE {} above {}: reactive only",
            f.model,
            f.mase.map_or("unknown".into(), |m| format!("{m:.2}")),
            spec.prediction.max_mase
        ));
    }
    let usable = |v: Option<f64>| v.filter(|v| v.is_finite() && *v >= 0.0);
    let calibrated = usable(f.peak_mean).zip(f.calibration.filter(|c| c.peak(0.0).is_finite()));
    if let Some((mean, cal)) = calibrated {
        let peak = cal.peak(mean);
        let n = replicas_for(peak, cap);
        let observed: f64 = inp
            .pods
            .iter()
            .filter_map(|p| p.rate)
            .filter(|r| r.is_finite())
            .sum();
        return Ok((
            if observed > peak {
                Forecasted::Outside { n, peak, observed }
            } else {
                Forecasted::Calibrated { n, peak, cal }
            },
            f,
        ));
    }
    match usable(f.peak_upper) {
        Some(peak) => Ok((
            Forecasted::Band {
                n: replicas_for(peak, cap),
                peak,
            },
            f,
        )),
        None => Err(format!(
            "forecast ({}) does not cover the {} s horizon: reactive only",
            f.model, spec.prediction.horizon_seconds
        )),
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

    // The HPA leaves a target scaled to zero alone, and first brings one outside its bounds inside them.
    if current == 0 {
        return (
            Decision {
                current,
                reactive: current,
                predictive: None,
                basis: Basis::Reactive,
                replicas: current,
                limit: Limit::DesiredWithinRange,
                reason: "scaled to zero: scaling is disabled until it runs again".into(),
            },
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

    let proposal = match capacity {
        Some(cap) if spec.prediction.enabled => forecasted(spec, inp, cap),
        _ => Err(String::new()),
    };
    let horizon = spec.prediction.horizon_seconds;
    let cap = capacity.unwrap_or(0.0);
    let about = |f: &ForecastInput| format!("{}, MASE {:.2}", f.model, f.mase.unwrap_or(f64::NAN));
    let (desired, basis, predictive, mut why) = match &proposal {
        Ok((Forecasted::Calibrated { n, peak, .. }, f)) if *n >= reactive => (
            reactive,
            Basis::Reactive,
            Some(*n),
            format!(
                "{reactive_why} → {reactive} (calibrated peak {peak:.1} req/s within {horizon} s needs {n}, not below the HPA's; {})",
                about(f)
            ),
        ),
        Ok((Forecasted::Calibrated { n, peak, cal }, f)) => (
            *n,
            Basis::Calibrated,
            Some(*n),
            format!(
                "calibrated: forecast peak {peak:.1} req/s within {horizon} s ({}; {:.0} % coverage from {} realised peaks) needs {n} at {cap:.0} req/s per replica; {reactive_why} → {reactive}",
                about(f),
                cal.level * 100.0,
                cal.samples,
            ),
        ),
        Ok((Forecasted::Outside { n, peak, observed }, f)) => (
            reactive,
            Basis::Fallback,
            Some(*n),
            format!(
                "{reactive_why} → {reactive}: observed {observed:.1} req/s above the calibrated peak {peak:.1} ({})",
                about(f)
            ),
        ),
        Ok((Forecasted::Band { n, peak }, f)) if *n > reactive => (
            *n,
            Basis::ForecastBand,
            Some(*n),
            format!(
                "predictive: forecast upper bound {peak:.1} req/s within {horizon} s ({}) needs {n} at {cap:.0} req/s per replica; {reactive_why} → {reactive}",
                about(f)
            ),
        ),
        Ok((Forecasted::Band { n, .. }, _)) => (
            reactive,
            Basis::Reactive,
            Some(*n),
            format!("{reactive_why} → {reactive} (forecast needs {n})"),
        ),
        Err(e) if e.is_empty() => (
            reactive,
            Basis::Reactive,
            None,
            format!("{reactive_why} → {reactive}"),
        ),
        Err(e) => (
            reactive,
            Basis::Reactive,
            None,
            format!("{reactive_why} → {reactive}; {e}"),
        ),
    };

    // Outside the bounds, the HPA moves straight inside them, whatever the metrics, windows and policies
    // say (`reconcileAutoscaler` skips normalisation in that case): a bound is never waited on.
    let n = if current > max || current < min {
        let (bound, reason) = if current > max {
            (max, Limit::TooManyReplicas)
        } else {
            (min, Limit::TooFewReplicas)
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
            &behavior_for(&spec.behavior, basis),
            &mut history,
            inp.now_ms,
        )
    };
    let mut replicas = n.replicas;
    let mut limit = n.reason;
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
        limit = Limit::Cooldown;
    }
    if replicas != desired && limit != Limit::Cooldown {
        why = format!("{why}; {limit} → {replicas}");
    }
    (
        Decision {
            current,
            reactive,
            predictive,
            basis,
            replicas,
            limit,
            reason: why,
        },
        history,
    )
}

/// The behaviour rules for a decision on `basis`: a calibrated forecast scales down after
/// [`TRUSTED_SCALE_DOWN_WINDOW_S`] at most.
fn behavior_for(behavior: &Behavior, basis: Basis) -> Behavior {
    let mut b = behavior.clone();
    if basis == Basis::Calibrated {
        let w = &mut b.scale_down.stabilization_window_seconds;
        *w = (*w).min(TRUSTED_SCALE_DOWN_WINDOW_S);
    }
    b
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
            peak_mean: None,
            calibration: None,
        })
    }

    fn calibrated(mean: f64, excess: f64) -> Option<ForecastInput> {
        Some(ForecastInput {
            model: "holt-winters".into(),
            mase: Some(0.6),
            peak_upper: Some(mean * 3.0),
            peak_mean: Some(mean),
            // The trend is far above: the forecast's calibrated peak is the lower.
            calibration: Some(Calibration {
                level: 0.99,
                samples: 5000,
                floor: 100.0,
                forecast_excess: excess,
                trend: 1e6,
                trend_excess: 0.0,
            }),
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
            // Calibrated peak 250 × 1.2 = 300 req/s: 3 replicas at full capacity, below the HPA's 5
            // (0.6 / 0.5 = 1.2 → ceil(4.8)); a calibrated scale-down waits 60 s, not 300.
            (
                "calibrated forecast answers below the HPA",
                |_, i| {
                    *i = inputs(4, &[60.0; 4]);
                    i.forecast = calibrated(250.0, 0.2);
                    i.history.recommendations.push((i.now_ms - 90_000, 4));
                },
                3,
                5,
                Some(3),
                "DesiredWithinRange",
            ),
            (
                "calibrated scale-down within 60 s is stabilised",
                |_, i| {
                    *i = inputs(4, &[60.0; 4]);
                    i.forecast = calibrated(250.0, 0.2);
                    i.history.recommendations.push((i.now_ms - 30_000, 4));
                },
                4,
                5,
                Some(3),
                "ScaleDownStabilized",
            ),
            // Calibrated peak 600 × 1.2 = 720 req/s needs 8, more than the HPA's 5: the HPA's answer.
            (
                "a calibrated peak above the HPA's answer does not raise it",
                |_, i| {
                    *i = inputs(4, &[60.0; 4]);
                    i.forecast = calibrated(600.0, 0.2);
                },
                5,
                5,
                Some(8),
                "DesiredWithinRange",
            ),
            // Observed 4 × 80 = 320 req/s, above the calibrated 300: the HPA's answer, at once.
            (
                "observed load above the calibrated peak falls back to the HPA",
                |_, i| {
                    *i = inputs(4, &[80.0; 4]);
                    i.forecast = calibrated(250.0, 0.2);
                },
                7,
                7,
                Some(3),
                "DesiredWithinRange",
            ),
            (
                "an untrusted calibrated forecast is ignored",
                |_, i| {
                    *i = inputs(4, &[60.0; 4]);
                    i.forecast = calibrated(250.0, 0.2);
                    if let Some(f) = i.forecast.as_mut() {
                        f.mase = Some(1.5);
                    }
                },
                5,
                5,
                None,
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
                peak_mean: Some(rng.random_range(0.0..1e4)),
                calibration: rng.random_bool(0.5).then(|| Calibration {
                    level: 0.99,
                    samples: 100,
                    floor: 100.0,
                    forecast_excess: rng.random_range(-1.0..3.0),
                    trend: rng.random_range(0.0..1e4),
                    trend_excess: [rng.random_range(-1.0..3.0), f64::NAN][rng.random_range(0..2)],
                }),
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
        for f in [forecast(900.0, 0.6), calibrated(250.0, 0.2)] {
            let mut i = inputs(4, &[60.0; 4]);
            i.forecast = f;
            let (d, _) = decide(&s, &i);
            let logged = serde_json::to_string(&i).unwrap();
            let replayed: Inputs = serde_json::from_str(&logged).unwrap();
            assert_eq!(decide(&s, &replayed).0, d);
        }
    }

    #[test]
    fn the_limit_and_basis_read_as_words_and_old_logs_still_parse() {
        let (d, _) = decide(&spec(), &inputs(8, &[10.0; 8]));
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["limit"], "DesiredWithinRange");
        assert_eq!(json["basis"], "Reactive");
        assert_eq!(Limit::ScaleDownStabilized.to_string(), "ScaleDownStabilized");
        // A decision logged before `basis` existed, with a forecast without `peak_mean` or `calibration`.
        let old = r#"{"current":4,"reactive":7,"predictive":null,"replicas":7,"limit":"ScaleUpLimit","reason":"r"}"#;
        let d: Decision = serde_json::from_str(old).unwrap();
        assert_eq!((d.limit, d.basis), (Limit::ScaleUpLimit, Basis::Reactive));
        let f: ForecastInput = serde_json::from_str(r#"{"model":"m","mase":0.5,"peak_upper":10.0}"#).unwrap();
        assert_eq!((f.peak_mean, f.calibration), (None, None));
    }
}
