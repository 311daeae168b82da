//! `tidewatch simulate`: replays a request-rate trace against a simulated Deployment, driven by the same
//! [`decide()`](crate::decide::decide) the operator runs, and scores the outcome.
//!
//! The simulated Deployment:
//! - The load at time `t` is the trace linearly interpolated between its rows, scaled so that its maximum
//!   is `peak` requests per second. The simulation advances in ticks of `step`.
//! - A new pod serves `cold_start` after it is created; a scale-down deletes the pods that are not ready
//!   yet first, then the youngest (the ReplicaSet's order). Pods that exist, ready or not, are paid for.
//! - Load is spread evenly over the ready pods. Each pod is a queue whose latency (read as the p95) is
//!   `base_latency / (1 - λ/μ)` at `λ` requests per second per pod; the saturation rate `μ` is chosen so
//!   that the latency is exactly the SLO threshold at `capacity` requests per second per pod:
//!   `μ = capacity / (1 - base_latency / slo_latency)`. Beyond `μ` the excess requests fail and the
//!   latency sits at its cap (ten times the threshold); with no ready pod every request fails.
//! - A minute violates the SLO when the highest latency of its ticks is above the threshold or its error
//!   ratio is above `max_error_ratio`.
//! - The controller sees the load late, as per-pod rates averaged over a window: the HPA through its metrics
//!   pipeline (`metric_lag`, `metric_window`), Tidewatch through its own telemetry
//!   (`tidewatch_metric_lag`, `tidewatch_metric_window`); a pod that was not ready for that whole window
//!   reports nothing (the HPA's missing-metric rules apply). It syncs every `interval`.
//! - An [`Incident`] may be replayed on top: a downstream latency incident (latency added to every request)
//!   or a bad pod (it fails every request it gets until it is restarted).
//!
//! The policies:
//! - `hpa`: `decide()` with prediction disabled: the HPA's algorithm and behaviour alone.
//! - `tidewatch`: `decide()` with a forecast. The analyzer's forecasters are trained on the observed history
//!   only (bucket means of the rate up to `now - metric_lag`, at `forecast_step`, over `lookback`), chosen
//!   by the same rolling-origin backtest as the scheduled trainer
//!   ([`select_and_forecast`](tidewatch_analyzer::forecast::select_and_forecast)) every
//!   `select_interval`, and the chosen model refitted on the latest history every `refit_interval` (the
//!   real trainer does both every 5 minutes: too slow to replay months of traffic); each decision gets
//!   [`forecast_input`] at the policy's horizon with the [`Calibration`](crate::calibrate::Calibration) a
//!   [`Calibrator`] learns from the service's observed rate (unless `calibration_level` is `None`). On a
//!   bad-pod incident, `heal()` is asked each sync once the analyzer would single the pod out.
//! - `oracle`: not a controller: it knows the true future load and sets, at each sync, the fewest replicas
//!   that serve the highest load of the next `cold_start + interval` at full capacity (what pods started now
//!   must cover before the next sync's pods are ready), scaling down at once. A lower bound on violations,
//!   close to the lowest replica-hours that achieve it.
//!
//! [`frontier`] runs both policies over a range of target utilisations and places Tidewatch's point
//! against the HPA's curve.
//!
//! Scoring: SLO-violation minutes; replica-hours (the integral of pods that exist, starting ones included);
//! scaling actions (changes of `spec.replicas`); reversals (a scaling action in the opposite direction of the
//! previous one, within `reversal_window` of it).

use serde::Serialize;
use tidewatch_analyzer::forecast::{Forecast, ServiceForecast, detect_periods, models_for, select};

use crate::behavior::ScaleHistory;
use crate::calibrate::{Calibrator, CalibratorConfig};
use crate::crd::ServicePolicySpec;
use crate::decide::{Basis, Inputs, PodLoad, decide};
use crate::heal::{CauseInput, HealDecision, HealInputs, heal};
use crate::telemetry::forecast_input;
use crate::{Error, Result};

/// Which controller drives the simulated Deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Hpa,
    Tidewatch,
    Oracle,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Policy, String> {
        match s {
            "hpa" => Ok(Policy::Hpa),
            "tidewatch" => Ok(Policy::Tidewatch),
            "oracle" => Ok(Policy::Oracle),
            other => Err(format!(
                "unknown policy `{other}`: expected hpa, tidewatch or oracle"
            )),
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Hpa => "hpa",
            Policy::Tidewatch => "tidewatch",
            Policy::Oracle => "oracle",
        })
    }
}

/// An incident replayed on top of the trace. Times are counted from the trace's first row.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Incident {
    /// A dependency adds `added_latency_ms` to every request from `at_ms` for `for_ms`: more replicas of
    /// the caller change nothing.
    Downstream {
        at_ms: i64,
        for_ms: i64,
        added_latency_ms: f64,
    },
    /// From `at_ms` the oldest ready pod fails every request it gets (while it stays ready), until it is
    /// restarted or `for_ms` has passed (someone was paged and replaced it). Tidewatch's analyzer singles
    /// it out `detected_after_ms` after it turns bad and `heal()` decides on a restart.
    BadPod {
        at_ms: i64,
        for_ms: i64,
        detected_after_ms: i64,
    },
}

/// What the HPA scales on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HpaMetric {
    /// Requests per second per pod against `capacity × target utilisation`.
    #[default]
    Rate,
    /// Requests in flight per pod (rate × latency, Little's law; what Knative's autoscaler and latency-
    /// driven custom metrics follow) against the in-flight count at `capacity × target utilisation`.
    Concurrency,
}

impl std::str::FromStr for HpaMetric {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<HpaMetric, String> {
        match s {
            "rate" => Ok(HpaMetric::Rate),
            "concurrency" => Ok(HpaMetric::Concurrency),
            other => Err(format!(
                "unknown HPA metric `{other}`: expected rate or concurrency"
            )),
        }
    }
}

/// The simulated Deployment and the controller's view of it. Durations in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimConfig {
    /// Requests per second the trace's maximum is scaled to.
    pub peak: f64,
    /// Requests per second one pod serves with its latency at the SLO threshold.
    pub capacity: f64,
    /// Latency (p95) of an idle pod.
    pub base_latency_ms: f64,
    /// The SLO's latency threshold.
    pub slo_latency_ms: f64,
    /// The SLO's highest error ratio per minute.
    pub max_error_ratio: f64,
    /// From creation to serving.
    pub cold_start_ms: i64,
    /// How old the load the HPA sees is: its metrics pipeline scrapes every minute (Prometheus'
    /// `scrape_interval` and metrics-server's `--metric-resolution` both default to 60 s).
    pub metric_lag_ms: i64,
    /// The window the HPA's per-pod rates are averaged over (a `rate(...[1m])`).
    pub metric_window_ms: i64,
    /// How old the load Tidewatch sees is: its own telemetry, a closed analyzer window (10 s by default)
    /// plus the OpenTelemetry SDK's batch export delay (`OTEL_BSP_SCHEDULE_DELAY`, 5 s by default).
    pub tidewatch_metric_lag_ms: i64,
    /// The window Tidewatch's per-pod rates are averaged over.
    pub tidewatch_metric_window_ms: i64,
    /// Tidewatch: coverage its calibrated forecast peak aims at (see [`crate::calibrate`]); `None`: not
    /// calibrated (the forecast's 95 % band raises the HPA's answer).
    pub calibration_level: Option<f64>,
    /// Controller sync period.
    pub interval_ms: i64,
    /// Simulation tick.
    pub step_ms: i64,
    /// Tidewatch: how often the chosen forecaster is refitted on the latest history.
    pub refit_interval_ms: i64,
    /// Tidewatch: how often the forecaster is chosen again by a rolling-origin backtest (the costly part).
    pub select_interval_ms: i64,
    /// Tidewatch: history the forecasters are fitted on.
    pub lookback_ms: i64,
    /// Tidewatch: spacing of the history the forecasters see; `None`: the trace's median spacing (at least
    /// one minute).
    pub forecast_step_ms: Option<i64>,
    /// Two opposite scaling actions closer than this count as a reversal.
    pub reversal_window_ms: i64,
    /// What the HPA scales on.
    pub hpa_metric: HpaMetric,
    /// An incident to replay on top of the trace.
    pub incident: Option<Incident>,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            peak: 2000.0,
            capacity: 100.0,
            base_latency_ms: 50.0,
            slo_latency_ms: 500.0,
            max_error_ratio: 0.01,
            cold_start_ms: 120_000,
            metric_lag_ms: 60_000,
            metric_window_ms: 60_000,
            tidewatch_metric_lag_ms: 15_000,
            tidewatch_metric_window_ms: 15_000,
            calibration_level: Some(CalibratorConfig::for_capacity(1.0).level),
            interval_ms: 15_000,
            step_ms: 15_000,
            refit_interval_ms: 3_600_000,
            select_interval_ms: 7 * 86_400_000,
            lookback_ms: 7 * 86_400_000,
            forecast_step_ms: None,
            reversal_window_ms: 600_000,
            hpa_metric: HpaMetric::Rate,
            incident: None,
        }
    }
}

impl SimConfig {
    fn validate(&self) -> Result<()> {
        let mut errors = Vec::new();
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.peak) {
            errors.push("peak must be a positive number of requests per second".to_owned());
        }
        if !positive(self.capacity) {
            errors.push("capacity must be a positive number of requests per second".to_owned());
        }
        if !positive(self.slo_latency_ms) {
            errors.push("the SLO latency must be positive".to_owned());
        }
        if !(self.base_latency_ms.is_finite()
            && self.base_latency_ms > 0.0
            && self.base_latency_ms < self.slo_latency_ms)
        {
            errors.push("the base latency must be positive and below the SLO latency".to_owned());
        }
        if !(0.0..=1.0).contains(&self.max_error_ratio) {
            errors.push("the highest error ratio must be between 0 and 1".to_owned());
        }
        for (name, v, least) in [
            ("cold start", self.cold_start_ms, 0),
            ("metric lag", self.metric_lag_ms, 0),
            ("metric window", self.metric_window_ms, 1000),
            ("Tidewatch's metric lag", self.tidewatch_metric_lag_ms, 0),
            ("Tidewatch's metric window", self.tidewatch_metric_window_ms, 1000),
            ("interval", self.interval_ms, 1000),
            ("step", self.step_ms, 1000),
            ("refit interval", self.refit_interval_ms, 1000),
            ("select interval", self.select_interval_ms, 1000),
            ("lookback", self.lookback_ms, 60_000),
            ("reversal window", self.reversal_window_ms, 0),
        ] {
            if v < least {
                errors.push(format!("{name} must be at least {} s", least / 1000));
            }
        }
        if self.calibration_level.is_some_and(|l| !(l > 0.0 && l < 1.0)) {
            errors.push("the calibration level must be between 0 and 1".to_owned());
        }
        match self.incident {
            Some(Incident::Downstream {
                at_ms,
                for_ms,
                added_latency_ms,
            }) if at_ms < 0 || for_ms <= 0 || !(added_latency_ms.is_finite() && added_latency_ms >= 0.0) => {
                errors.push(
                    "the downstream incident needs a start ≥ 0, a positive duration and an added latency ≥ 0"
                        .to_owned(),
                )
            }
            Some(Incident::BadPod {
                at_ms,
                for_ms,
                detected_after_ms,
            }) if at_ms < 0 || for_ms <= 0 || detected_after_ms < 0 => errors.push(
                "the bad-pod incident needs a start ≥ 0, a positive duration and a detection time ≥ 0"
                    .to_owned(),
            ),
            _ => {}
        }
        if self.forecast_step_ms.is_some_and(|s| s < 1000) {
            errors.push("forecast step must be at least 1 s".to_owned());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(errors.join("; ")))
        }
    }

    /// Saturation rate of one pod: where its queue grows without bound.
    fn saturation(&self) -> f64 {
        self.capacity / (1.0 - self.base_latency_ms / self.slo_latency_ms)
    }

    /// Latency cap: requests time out here.
    fn latency_cap_ms(&self) -> f64 {
        10.0 * self.slo_latency_ms
    }

    /// The queueing model: `load` requests per second spread evenly over `ready` pods. Returns the
    /// latency (the p95) and the requests per second that fail.
    pub fn serve(&self, load: f64, ready: usize) -> (f64, f64) {
        let mu = self.saturation();
        if load <= 0.0 {
            (self.base_latency_ms, 0.0)
        } else if ready == 0 {
            (self.latency_cap_ms(), load)
        } else {
            let per_pod = load / ready as f64;
            if per_pod < mu {
                let lat = self.base_latency_ms / (1.0 - per_pod / mu);
                (lat.min(self.latency_cap_ms()), 0.0)
            } else {
                (self.latency_cap_ms(), load - mu * ready as f64)
            }
        }
    }

    /// A policy spec for these settings: the HPA's defaults, `capacity` as the per-replica capacity, the
    /// given replica bounds, and a prediction horizon of cold start plus Tidewatch's metric lag plus one
    /// sync interval.
    pub fn spec(&self, min_replicas: i32, max_replicas: i32) -> ServicePolicySpec {
        let mut spec: ServicePolicySpec = serde_yaml::from_str(&format!(
            "targetRef: {{name: simulated}}\nservice: simulated\nminReplicas: {min_replicas}\nmaxReplicas: {max_replicas}\n"
        ))
        .unwrap_or_else(|_| unreachable_spec());
        spec.capacity.requests_per_replica = Some(self.capacity);
        spec.slo.latency_threshold_ms = self.slo_latency_ms;
        spec.slo.max_error_ratio = self.max_error_ratio;
        spec.prediction.horizon_seconds = self.horizon_seconds();
        spec.healing.enabled = true;
        spec
    }

    /// Cold start plus Tidewatch's metric lag plus one sync interval, in seconds.
    pub fn horizon_seconds(&self) -> i32 {
        let ms = self.cold_start_ms + self.tidewatch_metric_lag_ms + self.interval_ms;
        i32::try_from(ms / 1000).unwrap_or(i32::MAX)
    }
}

/// The YAML above always parses; this keeps `spec()` free of panics even so.
fn unreachable_spec() -> ServicePolicySpec {
    ServicePolicySpec {
        target_ref: crate::crd::TargetRef {
            kind: crate::crd::TargetKind::Deployment,
            name: "simulated".into(),
        },
        service: "simulated".into(),
        min_replicas: 1,
        max_replicas: 1,
        slo: Default::default(),
        capacity: Default::default(),
        behavior: Default::default(),
        prediction: Default::default(),
        healing: Default::default(),
        dry_run: false,
    }
}

/// The outcome of one replay.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub policy: Policy,
    /// Minutes whose latency or error ratio broke the SLO.
    pub slo_violation_minutes: u64,
    /// Pod-hours paid for (starting pods included).
    pub replica_hours: f64,
    /// Changes of `spec.replicas`.
    pub scaling_actions: u64,
    /// Scaling actions opposite to the previous one within the reversal window.
    pub reversals: u64,
    /// Pods restarted by `heal()` (tidewatch).
    pub restarts: u64,
    /// Simulated minutes.
    pub minutes: u64,
    /// Share of all requests that failed.
    pub error_ratio: f64,
    pub peak_replicas: u32,
    /// Decisions where a trusted forecast was available (tidewatch).
    pub trusted_decisions: u64,
    /// Decisions whose answer rests on the forecast: its band above the HPA's answer, or its calibrated
    /// peak (tidewatch).
    pub predictive_decisions: u64,
    /// Decisions where the observed load was above the calibrated peak, answered by the HPA (tidewatch).
    pub fallback_decisions: u64,
    pub decisions: u64,
    /// Forecaster refits (tidewatch).
    pub refits: u64,
}

struct Pod {
    name: String,
    ready_at: i64,
}

/// The trace interpolated at every tick and scaled to the peak.
fn loads(trace: &[(i64, f64)], cfg: &SimConfig) -> Result<(i64, Vec<f64>)> {
    if trace.len() < 2 {
        return Err(Error::Config(format!(
            "the trace needs at least 2 rows, got {}",
            trace.len()
        )));
    }
    for (i, w) in trace.windows(2).enumerate() {
        if w[1].0 <= w[0].0 {
            return Err(Error::Config(format!(
                "trace row {}: timestamps must increase",
                i + 2
            )));
        }
    }
    if let Some((i, _)) = trace
        .iter()
        .enumerate()
        .find(|(_, (_, v))| !v.is_finite() || *v < 0.0)
    {
        return Err(Error::Config(format!(
            "trace row {}: the value must be a finite number, not negative",
            i + 1
        )));
    }
    let max = trace.iter().map(|(_, v)| *v).fold(0.0, f64::max);
    if max <= 0.0 {
        return Err(Error::Config("the trace is zero throughout".into()));
    }
    let scale = cfg.peak / max;
    let start = trace[0].0;
    let end = trace[trace.len() - 1].0;
    let ticks = end.saturating_sub(start) / cfg.step_ms + 1;
    if ticks > 20_000_000 {
        return Err(Error::Config(format!(
            "{ticks} ticks: the trace is too long for a step of {} s",
            cfg.step_ms / 1000
        )));
    }
    let mut out = Vec::with_capacity(ticks as usize);
    let mut j = 0;
    for k in 0..ticks {
        let t = start + k * cfg.step_ms;
        while j + 2 < trace.len() && trace[j + 1].0 <= t {
            j += 1;
        }
        let ((t0, v0), (t1, v1)) = (trace[j], trace[j + 1]);
        let f = ((t - t0) as f64 / (t1 - t0) as f64).clamp(0.0, 1.0);
        out.push((v0 + f * (v1 - v0)) * scale);
    }
    Ok((start, out))
}

/// Median spacing of the trace's rows.
fn median_step_ms(trace: &[(i64, f64)]) -> i64 {
    let mut gaps: Vec<i64> = trace.windows(2).map(|w| w[1].0 - w[0].0).collect();
    gaps.sort_unstable();
    gaps.get(gaps.len() / 2).copied().unwrap_or(60_000)
}

/// Per-minute SLO accounting.
#[derive(Default)]
struct Minute {
    index: i64,
    requests: f64,
    errors: f64,
    worst_latency_ms: f64,
}

/// What happened at every tick of a replay, for plotting.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timeline {
    /// Unix ms of the first tick.
    pub start_ms: i64,
    pub step_ms: i64,
    /// Offered load (requests per second), per tick.
    pub load: Vec<f64>,
    /// Pods that exist (paid for), per tick.
    pub replicas: Vec<u32>,
    /// Pods that serve, per tick.
    pub ready: Vec<u32>,
    /// Minutes (counted from the first tick) that violated the SLO.
    pub violated_minutes: Vec<i64>,
}

/// Replays `trace` (`(unix_ms, value)` rows, oldest first) under `policy`. `spec` is the policy the
/// controller runs (for `hpa` its prediction is switched off; `oracle` uses only its replica bounds).
pub fn simulate(
    trace: &[(i64, f64)],
    cfg: &SimConfig,
    spec: &ServicePolicySpec,
    policy: Policy,
) -> Result<Report> {
    simulate_timeline(trace, cfg, spec, policy).map(|(r, _)| r)
}

/// [`simulate`], with what happened at every tick.
pub fn simulate_timeline(
    trace: &[(i64, f64)],
    cfg: &SimConfig,
    spec: &ServicePolicySpec,
    policy: Policy,
) -> Result<(Report, Timeline)> {
    cfg.validate()?;
    let (start, load) = loads(trace, cfg)?;
    let mut spec = spec.clone();
    if policy == Policy::Hpa {
        spec.prediction.enabled = false;
    }
    let min = spec.min_replicas.max(1) as u32;
    let max = (spec.max_replicas.max(1) as u32).max(min);
    let step = cfg.step_ms;
    let util = spec.capacity.target_utilization.clamp(0.05, 1.0);
    let policy_capacity = spec.capacity.requests_per_replica.unwrap_or(cfg.capacity);
    let n = load.len();

    // Oracle: the highest load over the ticks a decision at tick k must cover.
    let oracle_need: Vec<u32> = if policy == Policy::Oracle {
        let w = ((cfg.cold_start_ms + cfg.interval_ms) / step + 1) as usize;
        sliding_max(&load, w)
            .into_iter()
            .map(|l| need(l, cfg.capacity))
            .collect()
    } else {
        Vec::new()
    };

    // Start settled: as many ready pods as the policy would want for the first load.
    let initial = match policy {
        Policy::Oracle => oracle_need[0],
        _ => need(load[0], policy_capacity * util),
    }
    .clamp(min, max);
    let mut next_id = 0u64;
    let mut new_pod = |ready_at: i64| {
        next_id += 1;
        Pod {
            name: format!("pod-{next_id}"),
            ready_at,
        }
    };
    let mut pods: Vec<Pod> = (0..initial).map(|_| new_pod(i64::MIN)).collect();

    // Per tick: the per-pod metric the controller scales on (requests per second, or in flight), as prefix
    // sums; load prefix sums for the forecast history and Tidewatch's own view of the service's rate.
    let concurrency = policy == Policy::Hpa && cfg.hpa_metric == HpaMetric::Concurrency;
    let in_flight = |per_pod: f64| per_pod * cfg.serve(per_pod, 1).0 / 1000.0;
    // In flight, the target is the count at the target utilisation's load.
    let metric_capacity = if concurrency {
        in_flight(util * policy_capacity) / util
    } else {
        policy_capacity
    };
    let mut cum_per_pod = vec![0.0; n + 1];
    let mut cum_load = vec![0.0; n + 1];
    for k in 0..n {
        cum_load[k + 1] = cum_load[k] + load[k];
    }

    let forecast_step = cfg
        .forecast_step_ms
        .unwrap_or_else(|| median_step_ms(trace).max(60_000))
        .max(step);
    let horizon_ms = i64::from(spec.prediction.horizon_seconds.max(0)) * 1000;
    // Forecast far enough to cover every decision until the next refit.
    // What the controller sees: the HPA its metrics pipeline, Tidewatch its own telemetry.
    let (lag, window) = match policy {
        Policy::Tidewatch => (cfg.tidewatch_metric_lag_ms, cfg.tidewatch_metric_window_ms),
        Policy::Hpa | Policy::Oracle => (cfg.metric_lag_ms, cfg.metric_window_ms),
    };
    let mut calibrator = cfg.calibration_level.map(|level| {
        Calibrator::new(CalibratorConfig {
            level,
            ..CalibratorConfig::for_capacity(policy_capacity)
        })
    });
    let forecast_points =
        ((cfg.refit_interval_ms + lag + horizon_ms) / forecast_step + 2).clamp(1, 100_000) as usize;

    let mut trainer = Trainer {
        bucket_ms: forecast_step,
        lookback_ms: cfg.lookback_ms,
        points: forecast_points,
        choice: None,
        next_select: start,
        select_interval_ms: cfg.select_interval_ms,
    };
    let mut report = Report {
        policy,
        slo_violation_minutes: 0,
        replica_hours: 0.0,
        scaling_actions: 0,
        reversals: 0,
        restarts: 0,
        minutes: 0,
        error_ratio: 0.0,
        peak_replicas: initial,
        trusted_decisions: 0,
        predictive_decisions: 0,
        fallback_decisions: 0,
        decisions: 0,
        refits: 0,
    };
    let mut history = ScaleHistory::default();
    let mut last_scale: Option<(i64, bool)> = None;
    let mut next_sync = start;
    let mut next_refit = start;
    let mut forecast: Option<ServiceForecast> = None;
    let mut minute = Minute::default();
    let (mut all_requests, mut all_errors) = (0.0, 0.0);
    let mut pod_ms: f64 = 0.0;
    // The bad pod's name once the incident has started (empty once it is over); restarts made.
    let mut bad_pod: Option<String> = None;
    let mut restarts: Vec<(i64, String)> = Vec::new();
    let mut timeline = Timeline {
        start_ms: start,
        step_ms: step,
        load: Vec::with_capacity(n),
        replicas: Vec::with_capacity(n),
        ready: Vec::with_capacity(n),
        violated_minutes: Vec::new(),
    };

    for k in 0..n {
        let t = start + k as i64 * step;

        if policy == Policy::Tidewatch && spec.prediction.enabled && t >= next_refit {
            next_refit = t + cfg.refit_interval_ms;
            forecast = trainer.refit(&cum_load, start, step, t - lag, t);
            report.refits += 1;
        }

        // The bad pod of a bad-pod incident: the oldest ready pod when it starts.
        if let Some(Incident::BadPod { at_ms, for_ms, .. }) = cfg.incident {
            if t >= start + at_ms && bad_pod.is_none() {
                bad_pod = pods
                    .iter()
                    .filter(|p| p.ready_at <= t)
                    .min_by_key(|p| p.ready_at)
                    .map(|p| p.name.clone())
                    .or_else(|| Some(String::new()));
            }
            if t >= start + at_ms + for_ms {
                bad_pod = Some(String::new());
            }
        }

        if t >= next_sync {
            next_sync += cfg.interval_ms;
            if policy == Policy::Tidewatch
                && let Some(pod) = heal_now(cfg, &spec, start, t, bad_pod.as_deref(), &pods, &restarts)
            {
                pods.retain(|p| p.name != pod);
                pods.push(new_pod(t + cfg.cold_start_ms));
                restarts.push((t, pod));
                report.restarts += 1;
            }
            let current = pods.len() as u32;
            let want = match policy {
                Policy::Oracle => oracle_need[k].clamp(min, max),
                Policy::Hpa | Policy::Tidewatch => {
                    // The metric window the controller sees: [t - lag - window, t - lag).
                    let to = t - lag;
                    let from = to - window;
                    let ka = tick_at_or_after(from, start, step).min(k);
                    let kb = tick_at_or_after(to, start, step).min(k);
                    let seen = kb > ka && from >= start;
                    let rate = seen.then(|| (cum_per_pod[kb] - cum_per_pod[ka]) / (kb - ka) as f64);
                    let pods_in: Vec<PodLoad> = pods
                        .iter()
                        .map(|p| PodLoad {
                            name: p.name.clone(),
                            rate: rate.filter(|_| p.ready_at <= from),
                            ready: p.ready_at <= t,
                        })
                        .collect();
                    let mut forecast_in = forecast
                        .as_ref()
                        .map(|f| forecast_input(f, t, spec.prediction.horizon_seconds));
                    if let Some(c) = calibrator.as_mut() {
                        if seen {
                            c.observe(to, (cum_load[kb] - cum_load[ka]) / (kb - ka) as f64);
                        }
                        if let Some(f) = forecast_in.as_mut() {
                            c.calibrate(t, horizon_ms, f);
                        }
                    }
                    let inputs = Inputs {
                        now_ms: t,
                        current_replicas: current,
                        pods: pods_in,
                        capacity: Some(metric_capacity),
                        forecast: forecast_in,
                        last_scale_ms: last_scale.map(|(t, _)| t),
                        history: std::mem::take(&mut history),
                    };
                    if let Some(f) = &inputs.forecast
                        && f.mase.is_some_and(|m| m <= spec.prediction.max_mase)
                        && f.peak_upper.is_some()
                    {
                        report.trusted_decisions += 1;
                    }
                    let (d, h) = decide(&spec, &inputs);
                    history = h;
                    match d.basis {
                        Basis::ForecastBand | Basis::Calibrated => report.predictive_decisions += 1,
                        Basis::Fallback => report.fallback_decisions += 1,
                        Basis::Reactive => {}
                    }
                    d.replicas
                }
            };
            report.decisions += 1;
            if want != current {
                if policy != Policy::Oracle {
                    history.record_scale(t, current, want);
                }
                let up = want > current;
                report.scaling_actions += 1;
                if let Some((last_t, last_up)) = last_scale
                    && last_up != up
                    && t - last_t <= cfg.reversal_window_ms
                {
                    report.reversals += 1;
                }
                last_scale = Some((t, up));
                if up {
                    for _ in current..want {
                        pods.push(new_pod(t + cfg.cold_start_ms));
                    }
                } else {
                    scale_down(&mut pods, (current - want) as usize, |p| p.ready_at);
                }
                report.peak_replicas = report.peak_replicas.max(want);
            }
        }

        // Serve this tick.
        let ready = pods.iter().filter(|p| p.ready_at <= t).count();
        let bad_serving = bad_pod
            .as_deref()
            .is_some_and(|b| pods.iter().any(|p| p.name == b && p.ready_at <= t));
        let added_ms = match cfg.incident {
            Some(Incident::Downstream {
                at_ms,
                for_ms,
                added_latency_ms,
            }) if (start + at_ms..start + at_ms + for_ms).contains(&t) => added_latency_ms,
            _ => 0.0,
        };
        let l = load[k];
        let (lat, failed) = cfg.serve(l, ready);
        let per_pod = l / ready.max(1) as f64;
        // The bad pod fails what it would have served; a downstream incident delays whatever is served.
        let bad = if bad_serving {
            per_pod - failed / ready.max(1) as f64
        } else {
            0.0
        };
        let latency = if ready == 0 && l > 0.0 {
            lat
        } else {
            lat + added_ms
        };
        let errors = failed + bad;
        let metric = if concurrency {
            per_pod * latency / 1000.0
        } else {
            per_pod
        };
        cum_per_pod[k + 1] = cum_per_pod[k] + metric;
        pod_ms += pods.len() as f64 * step as f64;

        timeline.load.push(l);
        timeline.replicas.push(pods.len() as u32);
        timeline.ready.push(ready as u32);
        let m = (t - start) / 60_000;
        if m != minute.index {
            if close_minute(&minute, cfg, &mut report) {
                timeline.violated_minutes.push(minute.index);
            }
            minute = Minute {
                index: m,
                ..Minute::default()
            };
        }
        let secs = step as f64 / 1000.0;
        minute.requests += l * secs;
        minute.errors += errors * secs;
        all_requests += l * secs;
        all_errors += errors * secs;
        if l > 0.0 {
            minute.worst_latency_ms = minute.worst_latency_ms.max(latency);
        }
    }
    if close_minute(&minute, cfg, &mut report) {
        timeline.violated_minutes.push(minute.index);
    }
    report.replica_hours = pod_ms / 3_600_000.0;
    report.error_ratio = if all_requests > 0.0 {
        all_errors / all_requests
    } else {
        0.0
    };
    Ok((report, timeline))
}

/// Target utilisations a sweep runs both policies at.
pub const SWEEP_UTILIZATIONS: [f64; 5] = [0.5, 0.6, 0.7, 0.8, 0.9];

/// One policy's outcome at one target utilisation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CurvePoint {
    pub target_utilization: f64,
    pub replica_hours: f64,
    pub slo_violation_minutes: u64,
}

impl CurvePoint {
    fn of(r: &Report, target_utilization: f64) -> CurvePoint {
        CurvePoint {
            target_utilization,
            replica_hours: r.replica_hours,
            slo_violation_minutes: r.slo_violation_minutes,
        }
    }
}

/// Both policies over a range of target utilisations (each a curve of replica-hours against violation
/// minutes), the oracle, and where Tidewatch's point at the policy's own utilisation lies.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Frontier {
    pub hpa: Vec<CurvePoint>,
    pub tidewatch: Vec<CurvePoint>,
    pub oracle: CurvePoint,
    /// Tidewatch at the policy's target utilisation (the default point).
    pub point: CurvePoint,
    /// The HPA's violation minutes at the point's replica-hours: its curve interpolated linearly between
    /// its two neighbouring points, its end point's value beyond them.
    pub hpa_violations_at_same_cost: f64,
    /// The point is on or below the HPA's curve.
    pub on_or_below: bool,
    /// Share of the replica-hour gap between the HPA and the oracle (both at the policy's target
    /// utilisation) that the point closes; `None` when there is no gap.
    pub gap_closed: Option<f64>,
}

/// Linear interpolation of `curve` (sorted or not) at `replica_hours`; beyond its ends, the end's value.
pub fn violations_at(curve: &[CurvePoint], replica_hours: f64) -> f64 {
    let mut c: Vec<CurvePoint> = curve.to_vec();
    c.sort_by(|a, b| a.replica_hours.total_cmp(&b.replica_hours));
    let (Some(first), Some(last)) = (c.first(), c.last()) else {
        return f64::NAN;
    };
    if replica_hours <= first.replica_hours {
        return first.slo_violation_minutes as f64;
    }
    if replica_hours >= last.replica_hours {
        return last.slo_violation_minutes as f64;
    }
    c.windows(2)
        .find(|w| replica_hours <= w[1].replica_hours)
        .map_or(f64::NAN, |w| {
            let (a, b) = (w[0], w[1]);
            let f = (replica_hours - a.replica_hours) / (b.replica_hours - a.replica_hours).max(1e-12);
            a.slo_violation_minutes as f64
                + f * (b.slo_violation_minutes as f64 - a.slo_violation_minutes as f64)
        })
}

/// Runs the HPA at each of `utilizations` (and the policy's own), Tidewatch at the same (or, without
/// `tidewatch_curve`, at the policy's own only: its replays are the costly ones) and the oracle once, in
/// parallel, and places Tidewatch's point against the HPA's curve.
pub fn frontier(
    trace: &[(i64, f64)],
    cfg: &SimConfig,
    spec: &ServicePolicySpec,
    utilizations: &[f64],
    tidewatch_curve: bool,
) -> Result<Frontier> {
    let own = spec.capacity.target_utilization;
    let mut utils: Vec<f64> = utilizations.to_vec();
    if !utils.iter().any(|u| (u - own).abs() < 1e-9) {
        utils.push(own);
    }
    utils.sort_by(f64::total_cmp);
    let runs: Vec<(Policy, f64)> = [Policy::Hpa, Policy::Tidewatch]
        .into_iter()
        .flat_map(|p| utils.iter().map(move |u| (p, *u)))
        .filter(|(p, u)| tidewatch_curve || *p == Policy::Hpa || (u - own).abs() < 1e-9)
        .chain(std::iter::once((Policy::Oracle, own)))
        .collect();
    let results: Vec<Result<Report>> = std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .iter()
            .map(|&(policy, u)| {
                scope.spawn(move || {
                    let mut spec = spec.clone();
                    spec.capacity.target_utilization = u;
                    simulate(trace, cfg, &spec, policy)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Config("a simulation thread panicked".into())))
            })
            .collect()
    });
    let (mut hpa, mut tidewatch, mut oracle) = (Vec::new(), Vec::new(), None);
    for ((policy, u), r) in runs.iter().zip(results) {
        let point = CurvePoint::of(&r?, *u);
        match policy {
            Policy::Hpa => hpa.push(point),
            Policy::Tidewatch => tidewatch.push(point),
            Policy::Oracle => oracle = Some(point),
        }
    }
    let at_own = |c: &[CurvePoint]| {
        c.iter()
            .copied()
            .find(|p| (p.target_utilization - own).abs() < 1e-9)
    };
    let (Some(point), Some(hpa_own), Some(oracle)) = (at_own(&tidewatch), at_own(&hpa), oracle) else {
        return Err(Error::Config("the sweep lost a run".into()));
    };
    let same_cost = violations_at(&hpa, point.replica_hours);
    let gap = hpa_own.replica_hours - oracle.replica_hours;
    Ok(Frontier {
        on_or_below: point.slo_violation_minutes as f64 <= same_cost + 1e-9,
        hpa_violations_at_same_cost: same_cost,
        gap_closed: (gap > 0.0).then(|| (hpa_own.replica_hours - point.replica_hours) / gap),
        hpa,
        tidewatch,
        oracle,
        point,
    })
}

/// The pod `heal()` restarts now, if any: the bad pod, once the analyzer has singled it out.
fn heal_now(
    cfg: &SimConfig,
    spec: &ServicePolicySpec,
    start: i64,
    t: i64,
    bad_pod: Option<&str>,
    pods: &[Pod],
    restarts: &[(i64, String)],
) -> Option<String> {
    let Some(Incident::BadPod {
        at_ms,
        detected_after_ms,
        ..
    }) = cfg.incident
    else {
        return None;
    };
    let bad = bad_pod.filter(|b| !b.is_empty() && pods.iter().any(|p| p.name == *b))?;
    if t < start + at_ms + detected_after_ms {
        return None;
    }
    let inputs = HealInputs {
        now_ms: t,
        service: spec.service.clone(),
        causes: vec![CauseInput {
            service: spec.service.clone(),
            pod: Some(bad.to_owned()),
            explanation: format!("{bad} fails its requests while its siblings do not"),
        }],
        pods: pods.iter().map(|p| p.name.clone()).collect(),
        ready_pods: pods.iter().filter(|p| p.ready_at <= t).count() as u32,
        restarts: restarts.to_vec(),
    };
    match heal(&spec.healing, &inputs) {
        HealDecision::Restart { pod, .. } => Some(pod),
        HealDecision::None { .. } | HealDecision::HeldBack { .. } => None,
    }
}

/// Counts minute `m`; true when it violated the SLO.
fn close_minute(m: &Minute, cfg: &SimConfig, report: &mut Report) -> bool {
    report.minutes += 1;
    let error_ratio = if m.requests > 0.0 {
        m.errors / m.requests
    } else {
        0.0
    };
    // A pod at exactly its capacity meets the SLO: rounding must not make it a violation.
    let violated =
        m.worst_latency_ms > cfg.slo_latency_ms * (1.0 + 1e-9) || error_ratio > cfg.max_error_ratio;
    if violated {
        report.slo_violation_minutes += 1;
    }
    violated
}

/// A ReplicaSet's scale-down: removes `n` pods, those not ready yet first, then the youngest (the latest
/// ready time goes first).
pub fn scale_down<P>(pods: &mut Vec<P>, n: usize, ready_at: impl Fn(&P) -> i64) {
    pods.sort_by_key(|p| std::cmp::Reverse(ready_at(p)));
    pods.drain(..n.min(pods.len()));
}

/// Pods needed to serve `load` at `per_pod` each.
fn need(load: f64, per_pod: f64) -> u32 {
    // 700 / 70 is 10.000000000000002 in floating point: that is 10 pods, not 11.
    (load / per_pod - 1e-9).ceil().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// The first tick at or after `t`.
fn tick_at_or_after(t: i64, start: i64, step: i64) -> usize {
    if t <= start {
        0
    } else {
        ((t - start + step - 1) / step) as usize
    }
}

/// `out[k] = max(v[k..k + w])`, in linear time.
fn sliding_max(v: &[f64], w: usize) -> Vec<f64> {
    let w = w.max(1);
    let mut out = vec![0.0; v.len()];
    let mut dq: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    for i in (0..v.len()).rev() {
        while dq.back().is_some_and(|&j| v[j] <= v[i]) {
            dq.pop_back();
        }
        dq.push_back(i);
        while dq.front().is_some_and(|&j| j >= i + w) {
            dq.pop_front();
        }
        out[i] = dq.front().map_or(v[i], |&j| v[j]);
    }
    out
}

/// Choice of model: the periods it was built for, its index in [`models_for`] and its backtest MASE.
struct Choice {
    periods: Vec<usize>,
    index: usize,
    mase: f64,
}

/// The tidewatch policy's forecaster: the scheduled trainer's work, on the simulated history.
struct Trainer {
    bucket_ms: i64,
    lookback_ms: i64,
    /// Buckets forecast at each refit.
    points: usize,
    choice: Option<Choice>,
    next_select: i64,
    select_interval_ms: i64,
}

impl Trainer {
    /// The bucket means of the load observed before `seen_to`, over the lookback, and the end of the last
    /// complete bucket.
    fn history(&self, cum_load: &[f64], start: i64, step: i64, seen_to: i64) -> (Vec<f64>, i64) {
        let complete = (seen_to - start).max(0) / self.bucket_ms;
        let keep = (self.lookback_ms / self.bucket_ms).max(1);
        let first = (complete - keep).max(0);
        let ticks = cum_load.len() - 1;
        let y = (first..complete)
            .filter_map(|b| {
                let a = tick_at_or_after(start + b * self.bucket_ms, start, step).min(ticks);
                let z = tick_at_or_after(start + (b + 1) * self.bucket_ms, start, step).min(ticks);
                (z > a).then(|| (cum_load[z] - cum_load[a]) / (z - a) as f64)
            })
            .collect();
        (y, start + complete * self.bucket_ms)
    }

    /// Chooses a model with the analyzer's one model choice ([`select`]). `None` when the history is too
    /// short to backtest.
    fn select(&self, y: &[f64]) -> Option<Choice> {
        select(y, self.bucket_ms as f64 / 1000.0, self.points).map(|s| Choice {
            periods: s.periods,
            index: s.index,
            mase: s.mase,
        })
    }

    /// Refits (choosing the model again when its time has come) on what was observed before `seen_to`,
    /// and forecasts. A point stamped `t` is the mean rate of the bucket starting at `t`, as the analyzer's
    /// history stamps its buckets. `None` while the
    /// history is too short to backtest or the chosen model cannot fit it.
    fn refit(
        &mut self,
        cum_load: &[f64],
        start: i64,
        step: i64,
        seen_to: i64,
        now: i64,
    ) -> Option<ServiceForecast> {
        let (y, last_end) = self.history(cum_load, start, step, seen_to);
        // Periods are cheap to detect: a new one (the second day of history shows the daily cycle) makes
        // the choice stale at once.
        let periods_changed = self
            .choice
            .as_ref()
            .is_some_and(|c| c.periods != detect_periods(&y, self.bucket_ms as f64 / 1000.0));
        if now >= self.next_select || self.choice.is_none() || periods_changed {
            self.choice = self.select(&y);
            if self.choice.is_some() {
                self.next_select = now + self.select_interval_ms;
            }
        }
        let choice = self.choice.as_ref()?;
        let mut models = models_for(&choice.periods, self.points);
        if choice.index >= models.len() {
            return None;
        }
        let mut model = models.swap_remove(choice.index);
        model.fit(&y).ok()?;
        Some(ServiceForecast {
            service: "simulated".into(),
            model: model.name().to_owned(),
            mase: Some(choice.mase),
            step_ms: self.bucket_ms,
            fitted_at_ms: now,
            points: model
                .forecast(self.points)
                .into_iter()
                .enumerate()
                .map(|(i, f)| {
                    (
                        last_end + self.bucket_ms * i as i64,
                        Forecast {
                            mean: f.mean.max(0.0),
                            lo: f.lo.max(0.0),
                            hi: f.hi.max(0.0),
                        },
                    )
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn trace(points: usize, every_ms: i64, f: impl Fn(i64) -> f64) -> Vec<(i64, f64)> {
        let t0 = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000;
        (0..points as i64)
            .map(|i| (t0 + i * every_ms, f(i * every_ms)))
            .collect()
    }

    fn run(trace: &[(i64, f64)], cfg: &SimConfig, policy: Policy) -> Report {
        simulate(trace, cfg, &cfg.spec(1, 50), policy).unwrap()
    }

    #[test]
    fn a_constant_load_costs_exactly_its_pods() {
        // 700 req/s at 100 per pod and 70 % utilisation: 10 pods, for 10 hours.
        let cfg = SimConfig {
            peak: 700.0,
            ..SimConfig::default()
        };
        let t = trace(601, MIN, |_| 5.0);
        for policy in [Policy::Hpa, Policy::Tidewatch] {
            let r = run(&t, &cfg, policy);
            assert_eq!(r.scaling_actions, 0, "{r:?}");
            assert_eq!(r.slo_violation_minutes, 0, "{r:?}");
            // 600 minutes plus the last tick's 15 s.
            let want = 10.0 * (600.0 / 60.0 + 15.0 / 3600.0);
            assert!((r.replica_hours - want).abs() < 1e-9, "{r:?}");
            assert_eq!(r.minutes, 601);
        }
        // The oracle runs at full capacity: 7 pods.
        let r = run(&t, &cfg, Policy::Oracle);
        assert!(
            (r.replica_hours - 7.0 * (10.0 + 15.0 / 3600.0)).abs() < 1e-9,
            "{r:?}"
        );
        assert_eq!(r.slo_violation_minutes, 0);
    }

    #[test]
    fn a_step_load_breaks_the_slo_while_hpa_pods_start() {
        // 200 req/s, then 1500 req/s from minute 60 (the trace jumps within one second).
        let t: Vec<(i64, f64)> = vec![
            (0, 200.0),
            (60 * MIN, 200.0),
            (60 * MIN + 1000, 1500.0),
            (180 * MIN, 1500.0),
        ];
        let cfg = SimConfig {
            peak: 1500.0,
            ..SimConfig::default()
        };
        let hpa = run(&t, &cfg, Policy::Hpa);
        // Metric lag (1 min) + window + sync + cold start (2 min): at least 3 minutes over capacity.
        assert!((3..=8).contains(&hpa.slo_violation_minutes), "{hpa:?}");
        assert!(hpa.scaling_actions >= 1 && hpa.reversals == 0, "{hpa:?}");
        let oracle = run(&t, &cfg, Policy::Oracle);
        assert_eq!(oracle.slo_violation_minutes, 0, "{oracle:?}");
        assert!(oracle.replica_hours < hpa.replica_hours, "{oracle:?} {hpa:?}");
        // Without history to learn from, tidewatch is the HPA.
        let tw = run(&t, &cfg, Policy::Tidewatch);
        assert_eq!(tw.slo_violation_minutes, hpa.slo_violation_minutes, "{tw:?}");
    }

    #[test]
    fn tidewatch_scales_ahead_of_a_daily_surge_the_hpa_meets_late() {
        // Six days at 5-minute rows: 150 req/s, and 1500 req/s from 08:00 to 12:00 every day, with a
        // little noise (a perfectly periodic series gives seasonal naive no error to scale MASE by).
        let t = trace(6 * 288, 5 * MIN, |ms| {
            let h = (ms % 86_400_000) as f64 / 3_600_000.0;
            let noise = ((ms / (5 * MIN)) * 7919 % 13) as f64;
            noise + if (8.0..12.0).contains(&h) { 1500.0 } else { 150.0 }
        });
        let cfg = SimConfig {
            peak: 1500.0,
            ..SimConfig::default()
        };
        let started = std::time::Instant::now();
        let hpa = run(&t, &cfg, Policy::Hpa);
        let tw = run(&t, &cfg, Policy::Tidewatch);
        let oracle = run(&t, &cfg, Policy::Oracle);
        // The HPA is late every morning.
        assert!(hpa.slo_violation_minutes >= 6 * 3, "{hpa:?}");
        // Tidewatch learns the cycle within two days and is ready the mornings after.
        assert!(tw.trusted_decisions > 0 && tw.predictive_decisions > 0, "{tw:?}");
        assert!(
            tw.slo_violation_minutes + 3 * 3 <= hpa.slo_violation_minutes,
            "{tw:?} {hpa:?}"
        );
        assert_eq!(oracle.slo_violation_minutes, 0, "{oracle:?}");
        assert!(started.elapsed().as_secs() < 60);
    }

    #[test]
    fn bad_traces_and_settings_are_errors() {
        let cfg = SimConfig::default();
        let spec = cfg.spec(1, 10);
        let bad: Vec<Vec<(i64, f64)>> = vec![
            vec![],
            vec![(0, 1.0)],
            vec![(0, 1.0), (0, 2.0)],
            vec![(10, 1.0), (0, 2.0)],
            vec![(0, 1.0), (1000, f64::NAN)],
            vec![(0, 1.0), (1000, -1.0)],
            vec![(0, 0.0), (1000, 0.0)],
            vec![(0, 1.0), (i64::MAX, 1.0)],
        ];
        for t in bad {
            assert!(simulate(&t, &cfg, &spec, Policy::Hpa).is_err(), "{t:?}");
        }
        let ok = vec![(0, 1.0), (MIN, 2.0)];
        for broken in [
            SimConfig {
                capacity: 0.0,
                ..cfg.clone()
            },
            SimConfig {
                base_latency_ms: 600.0,
                ..cfg.clone()
            },
            SimConfig {
                step_ms: 0,
                ..cfg.clone()
            },
            SimConfig {
                peak: f64::INFINITY,
                ..cfg.clone()
            },
        ] {
            assert!(
                simulate(&ok, &broken, &spec, Policy::Tidewatch).is_err(),
                "{broken:?}"
            );
        }
    }

    #[test]
    fn reversals_are_opposite_actions_within_the_window() {
        // A surge of 15 minutes: up at its start, down once the stabilisation window (5 min) has passed
        // its end: more than 10 minutes apart, so no reversal; with a 30-minute window it is one.
        let t: Vec<(i64, f64)> = vec![
            (0, 100.0),
            (30 * MIN, 100.0),
            (30 * MIN + 1000, 1000.0),
            (45 * MIN, 1000.0),
            (45 * MIN + 1000, 100.0),
            (90 * MIN, 100.0),
        ];
        let cfg = SimConfig {
            peak: 1000.0,
            ..SimConfig::default()
        };
        let r = run(&t, &cfg, Policy::Hpa);
        assert!(r.scaling_actions >= 2, "{r:?}");
        let long = SimConfig {
            reversal_window_ms: 30 * MIN,
            ..cfg
        };
        let r2 = run(&t, &long, Policy::Hpa);
        assert!(r2.reversals >= 1 && r2.reversals > r.reversals, "{r:?} {r2:?}");
    }

    #[test]
    fn the_hpa_curve_is_interpolated_and_held_at_its_ends() {
        let pt = |rh: f64, v: u64| CurvePoint {
            target_utilization: 0.0,
            replica_hours: rh,
            slo_violation_minutes: v,
        };
        let curve = [pt(100.0, 10), pt(200.0, 0), pt(150.0, 4)];
        assert_eq!(violations_at(&curve, 125.0), 7.0);
        assert_eq!(violations_at(&curve, 175.0), 2.0);
        assert_eq!(violations_at(&curve, 50.0), 10.0);
        assert_eq!(violations_at(&curve, 500.0), 0.0);
        assert!(violations_at(&[], 1.0).is_nan());
    }

    #[test]
    fn the_sweep_places_tidewatch_against_the_hpa_and_the_oracle() {
        let t = trace(6 * 288, 5 * MIN, |ms| {
            let h = (ms % 86_400_000) as f64 / 3_600_000.0;
            ((ms / (5 * MIN)) * 7919 % 13) as f64 + if (8.0..12.0).contains(&h) { 1500.0 } else { 150.0 }
        });
        let cfg = SimConfig {
            peak: 1500.0,
            ..SimConfig::default()
        };
        let f = frontier(&t, &cfg, &cfg.spec(1, 50), &[0.5, 0.9], true).unwrap();
        assert_eq!((f.hpa.len(), f.tidewatch.len()), (3, 3), "{f:?}");
        assert_eq!(f.point.target_utilization, 0.7);
        // More headroom costs more: the HPA's replica-hours fall as its target utilisation rises.
        assert!(
            f.hpa.windows(2).all(|w| w[0].replica_hours > w[1].replica_hours),
            "{f:?}"
        );
        assert_eq!(f.oracle.slo_violation_minutes, 0);
        assert!(f.oracle.replica_hours < f.hpa[0].replica_hours);
        assert_eq!(
            f.on_or_below,
            f.point.slo_violation_minutes as f64 <= f.hpa_violations_at_same_cost
        );
    }

    #[test]
    fn a_downstream_incident_scales_a_concurrency_hpa_up_for_nothing() {
        // 700 req/s for 8 hours; from hour 2 to hour 3 a dependency adds 300 ms to every request.
        let t = trace(481, MIN, |_| 5.0);
        let calm = SimConfig {
            peak: 700.0,
            ..SimConfig::default()
        };
        let incident = SimConfig {
            incident: Some(Incident::Downstream {
                at_ms: 120 * MIN,
                for_ms: 60 * MIN,
                added_latency_ms: 300.0,
            }),
            ..calm.clone()
        };
        let concurrency = |c: &SimConfig| SimConfig {
            hpa_metric: HpaMetric::Concurrency,
            ..c.clone()
        };
        let (hpa_calm, hpa_hit) = (
            run(&t, &concurrency(&calm), Policy::Hpa),
            run(&t, &concurrency(&incident), Policy::Hpa),
        );
        // In flight per pod triples: the HPA scales up, and the latency it cannot fix stays.
        assert!(
            hpa_hit.replica_hours > hpa_calm.replica_hours * 1.15,
            "{hpa_calm:?} {hpa_hit:?}"
        );
        assert!(hpa_hit.peak_replicas > hpa_calm.peak_replicas, "{hpa_hit:?}");
        // Tidewatch scales on the request rate, which the incident leaves alone.
        let (tw_calm, tw_hit) = (
            run(&t, &calm, Policy::Tidewatch),
            run(&t, &incident, Policy::Tidewatch),
        );
        assert_eq!(tw_hit.replica_hours, tw_calm.replica_hours, "{tw_hit:?}");
        assert_eq!(tw_hit.scaling_actions, 0, "{tw_hit:?}");
        // 50 ms / (1 - 70 / 111.1) + 300 ms is within the 500 ms SLO: nobody violates.
        assert_eq!(tw_hit.slo_violation_minutes, 0, "{tw_hit:?}");
    }

    #[test]
    fn a_bad_pod_is_restarted_by_tidewatch_and_left_to_the_hpa() {
        // 700 req/s on 10 pods; from hour 2 one pod fails its 10 % share for up to 2 hours.
        let t = trace(481, MIN, |_| 5.0);
        let cfg = SimConfig {
            peak: 700.0,
            incident: Some(Incident::BadPod {
                at_ms: 120 * MIN,
                for_ms: 120 * MIN,
                detected_after_ms: MIN,
            }),
            ..SimConfig::default()
        };
        let hpa = run(&t, &cfg, Policy::Hpa);
        assert!((119..=121).contains(&hpa.slo_violation_minutes), "{hpa:?}");
        assert_eq!(hpa.restarts, 0);
        let tw = run(&t, &cfg, Policy::Tidewatch);
        assert_eq!(tw.restarts, 1, "{tw:?}");
        // Detection (1 minute) and the sync after it.
        assert!((1..=3).contains(&tw.slo_violation_minutes), "{tw:?}");
        let (_, timeline) = simulate_timeline(&t, &cfg, &cfg.spec(1, 50), Policy::Tidewatch).unwrap();
        assert_eq!(timeline.violated_minutes.len() as u64, tw.slo_violation_minutes);
        assert_eq!(timeline.load.len(), timeline.replicas.len());
    }

    #[test]
    fn sliding_max_looks_ahead() {
        assert_eq!(
            sliding_max(&[1.0, 3.0, 2.0, 0.0, 5.0], 2),
            vec![3.0, 3.0, 2.0, 5.0, 5.0]
        );
        assert_eq!(sliding_max(&[1.0, 2.0], 10), vec![2.0, 2.0]);
    }
}
