//! Online health: at every window close, each service's RED signals are scored by the streaming
//! detector `tidewatch nab` measures ([`Tidewatch`] with [`Params::default`]), anomalous services are
//! localised along the dependency graph ([`crate::rootcause`]), and the result is published as a
//! [`HealthReport`].
//!
//! Per service, four series go through their own detector, one row per window:
//! - request rate, error ratio and p95 latency, each in units of a noticeable change
//!   ([`red_features`]: 25 % in rate or p95, two points of error ratio) with a resolution of one unit
//!   ([`Tidewatch::with_resolution`], which also rounds the values to 1/1024 of a unit so its windows
//!   hold them in two bytes each), so noise smaller than that on a quiet series is never news (the
//!   error ratio counts errors less two Poisson standard deviations: one failure in 20 is chance);
//! - the joint detector's surprise (a Gaussian mixture over the three, `models::multivariate`) in units
//!   of its own robust z-score.
//!
//! A signal is anomalous when its detector's score reaches `threshold` (by default the threshold NAB's
//! sweep picks for the detector on the tuning half of the corpus, see BENCHMARKS.md), and, for latency
//! and errors, the value is above its baseline (getting better is not an incident). Request rate is
//! scored and shown but never an alarm on its own: it moves with the daily cycle by design, and the
//! scaler, not an alert, answers it. What the server adds around the detector is input gating only: a
//! window with fewer than `min_requests` requests is not fed to the detectors (too few to measure).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::AnalyzerConfig;
use crate::models::detect::{AnomalyDetector, Params, Tidewatch};
use crate::models::multivariate::{GmmConfig, GmmDetector, VectorDetector, red_features};
use crate::rootcause::{Cause, Learning, Outlier, PodState, ServiceState, localise, outliers};
use crate::store::{HistoryView, RedSummary, ServiceKey};

/// Settings of the online monitor.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Detector score (in [0, 1]) from which a signal is anomalous.
    pub threshold: f64,
    /// Windows with fewer requests than this are not scored (too few to say anything).
    pub min_requests: f64,
    /// Whether the joint RED detector (a Gaussian mixture over rate, error ratio and p95) is scored.
    pub joint: bool,
    /// A service not seen for this many windows is forgotten (its detectors' memory is freed).
    pub forget_after_windows: usize,
}

/// The detector's corpus-optimal NAB threshold on the tuning half of NAB under the profile that rewards
/// few false alarms (`reward_low_FP_rate`: an alarm pages someone), rounded down (so the score it was
/// swept at still alarms): `tidewatch nab --split bench/nab/split.tsv --part tuning` prints it
/// (0.643368 on 2026-12-02, since the median novelty: a detector z of 9.02, so every ranked novelty
/// pages and a residual likelihood from z 9).
pub const NAB_THRESHOLD: f64 = 0.6433;

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig {
            threshold: NAB_THRESHOLD,
            min_requests: 20.0,
            joint: true,
            forget_after_windows: 8640,
        }
    }
}

impl HealthConfig {
    pub(crate) fn validate(&self, errors: &mut Vec<String>) {
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            errors.push("analyzer.health.threshold: must be in (0, 1]".into());
        }
        if self.min_requests < 0.0 || !self.min_requests.is_finite() {
            errors.push("analyzer.health.min_requests: must be 0 or above".into());
        }
        if self.forget_after_windows == 0 {
            errors.push("analyzer.health.forget_after_windows: must be at least 1".into());
        }
    }
}

/// The scored signals of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Rate,
    Errors,
    Latency,
    Joint,
}

/// Resolution of the joint detector's series, in units of its robust z-score: the mixture's surprise
/// wanders by a few units on normal traffic (a new regime before its first refit), an incident moves it
/// by tens.
const JOINT_RESOLUTION: f64 = 3.0;

/// A signal's verdict on one window.
#[derive(Clone, Copy)]
struct Verdict {
    kind: Kind,
    score: f64,
    /// The series' level before this window (in the signal's units), when it has one.
    level: Option<f64>,
    value: f64,
}

impl Kind {
    /// The detector of a service's series of this kind (which the service's models know it by).
    fn detector(self, params: &Arc<Params>) -> Tidewatch {
        let res = if self == Kind::Joint {
            JOINT_RESOLUTION
        } else {
            1.0
        };
        Tidewatch::with_resolution(params.clone(), res)
    }

    /// Scores the window's `value` with this kind's `detector`.
    fn score(self, detector: &mut Tidewatch, t_ms: i64, value: f64) -> Verdict {
        let score = detector.score(t_ms, value);
        Verdict {
            kind: self,
            score,
            level: detector.last_level(),
            value,
        }
    }
}

impl Verdict {
    fn rose(&self) -> bool {
        self.level.is_some_and(|l| self.value > l)
    }

    /// Whether the verdict raises an alarm at `threshold`; `worse`: latency or errors rose this window
    /// (an unusual combination that is all good news, say latency falling with load, is no incident).
    fn alarms(&self, threshold: f64, worse: bool) -> bool {
        self.score >= threshold
            && match self.kind {
                Kind::Rate => false,
                Kind::Errors | Kind::Latency => self.rose(),
                Kind::Joint => worse,
            }
    }
}

/// An incident that is still going on: the detectors flag its onset (on any signal, the joint one
/// included) and then learn the new level, but the incident lasts while the service's latency or its
/// errors stay above the levels they were at before the alarm. Both are followed, whichever alarmed: a
/// bad pod among six raises p95 steadily while its share of failures, counted over a short window, can
/// dip under one unit by chance.
#[derive(Clone, Copy, Debug)]
struct Ongoing {
    /// The error ratio's and the p95's levels before the alarm (in their units), where the detectors
    /// had one.
    errors: Option<f64>,
    latency: Option<f64>,
}

impl Ongoing {
    fn from(verdicts: &[Verdict]) -> Ongoing {
        let level = |k: Kind| verdicts.iter().find(|v| v.kind == k).and_then(|v| v.level);
        Ongoing {
            errors: level(Kind::Errors),
            latency: level(Kind::Latency),
        }
    }

    /// The signal of `verdicts` that holds the incident (the one furthest above its level before the
    /// alarm, at least [`ONGOING_UNITS`] above it), shown against that level.
    fn holding(&self, verdicts: &[Verdict]) -> Option<Verdict> {
        let (_, held) = verdicts
            .iter()
            .filter_map(|v| {
                let baseline = match v.kind {
                    Kind::Errors => self.errors?,
                    Kind::Latency => self.latency?,
                    Kind::Rate | Kind::Joint => return None,
                };
                let above = v.value - baseline;
                (above >= ONGOING_UNITS).then_some((
                    above,
                    Verdict {
                        level: Some(baseline),
                        ..*v
                    },
                ))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0))?;
        Some(held)
    }
}

/// An ongoing incident holds while its latency or errors stay at least this many units (25 % of p95, 2
/// points of errors: the resolution the signals are fed in) above their levels before the alarm.
const ONGOING_UNITS: f64 = 1.0;

struct ServiceModels {
    /// A detector per series: [`Kind::detector`].
    rate: Tidewatch,
    errors: Tidewatch,
    latency: Tidewatch,
    joint: Option<(GmmDetector, Tidewatch)>,
    ongoing: Option<Ongoing>,
    /// Windows since the service was last scored.
    idle: usize,
}

impl ServiceModels {
    fn new(joint: bool, params: &Arc<Params>) -> ServiceModels {
        ServiceModels {
            rate: Kind::Rate.detector(params),
            errors: Kind::Errors.detector(params),
            latency: Kind::Latency.detector(params),
            joint: joint.then(|| {
                (
                    GmmDetector::new(GmmConfig::default()),
                    Kind::Joint.detector(params),
                )
            }),
            ongoing: None,
            idle: 0,
        }
    }

    /// Where the slowest detector stands in its warm-up.
    fn learning(&self) -> Option<Learning> {
        let (seen, needed) = self.latency.warmup();
        (seen <= needed).then_some(Learning { seen, needed })
    }
}

/// The health of everything at one window close.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct HealthReport {
    pub ts: i64,
    /// Every scored service, anomalous or not.
    pub services: Vec<ServiceState>,
    /// Likely causes, most explanatory first.
    pub causes: Vec<Cause>,
}

/// The monitor: one owner (the engine's window task, or whoever replays a history into it).
pub struct Monitor {
    cfg: HealthConfig,
    /// Upper bounds (ms) of the latency histogram the pods' p95 comes from, for root-cause localisation.
    latency_bounds_ms: Vec<f64>,
    /// Boxed: a service's models are 1.8 KB, and a map's nodes hold eleven values inline whether used or
    /// not.
    services: BTreeMap<String, Box<ServiceModels>>,
    /// The detectors' parameters ([`Params::default`]), one copy shared by every detector.
    params: Arc<Params>,
    /// The pod that stood out among its siblings, per service, at the window before (a cause names a pod
    /// only when it stands out two windows running).
    outliers: BTreeMap<String, Outlier>,
}

impl Monitor {
    pub fn new(cfg: &HealthConfig) -> Monitor {
        Monitor {
            cfg: cfg.clone(),
            latency_bounds_ms: Vec::new(),
            services: BTreeMap::new(),
            params: Arc::new(Params::default()),
            outliers: BTreeMap::new(),
        }
    }

    /// The monitor the engine runs for `cfg`: its health settings, and the span-metrics latency buckets
    /// the pods' p95 is read from (a pod is singled out only beyond their resolution).
    pub fn for_analyzer(cfg: &AnalyzerConfig) -> Monitor {
        Monitor {
            latency_bounds_ms: cfg
                .span_metrics
                .buckets
                .iter()
                .map(|b| b.as_secs_f64() * 1e3)
                .collect(),
            ..Monitor::new(&cfg.health)
        }
    }

    /// Scores the window that ended at `ts_ms` (of length `window_ms`) from the history. Times are the
    /// caller's: the engine passes the wall clock, a replay passes the history's own timestamps.
    pub fn observe(&mut self, view: &HistoryView, ts_ms: i64, window_ms: i64) -> crate::Result<HealthReport> {
        let from = ts_ms - window_ms;
        let services = view.services(from, ts_ms)?;
        let edges: Vec<(String, String)> = view
            .edges(from - 60 * window_ms, ts_ms)?
            .iter()
            .map(|e| (e.key.client.clone(), e.key.server.clone()))
            .collect();
        for m in self.services.values_mut() {
            m.idle += 1;
        }
        let mut states = Vec::new();
        let mut pods = Vec::new();
        for s in &services {
            let name = &s.key.service;
            if let Some(state) = self.score(name, ts_ms, s) {
                if state.anomalous {
                    for p in view.pods(name, from, ts_ms)? {
                        pods.push(PodState {
                            service: name.clone(),
                            pod: p.key.pod,
                            requests: p.requests,
                            error_ratio: p.error_ratio,
                            p95_ms: p.p95_ms,
                        });
                    }
                }
                states.push(state);
            }
        }
        let forget = self.cfg.forget_after_windows;
        self.services.retain(|_, m| m.idle < forget);
        let now = outliers(&pods, &self.latency_bounds_ms);
        let causes = localise(&states, &edges, &now, &self.outliers);
        self.outliers = now;
        Ok(HealthReport {
            ts: ts_ms,
            services: states,
            causes,
        })
    }

    /// Scores one service's window; `None` when it had too few requests to be scored.
    fn score(&mut self, name: &str, ts_ms: i64, s: &RedSummary<ServiceKey>) -> Option<ServiceState> {
        if s.requests < self.cfg.min_requests {
            return None;
        }
        let (joint, params) = (self.cfg.joint, &self.params);
        let m = self
            .services
            .entry(name.to_owned())
            .or_insert_with(|| Box::new(ServiceModels::new(joint, params)));
        m.idle = 0;
        let p95 = s.p95_ms.unwrap_or(0.0);
        let [rate, errors, latency] = red_features(s.rate, error_ratio_floor(s), p95);
        let mut verdicts = vec![
            Kind::Rate.score(&mut m.rate, ts_ms, rate),
            Kind::Errors.score(&mut m.errors, ts_ms, errors),
        ];
        if s.p95_ms.is_some() {
            verdicts.push(Kind::Latency.score(&mut m.latency, ts_ms, latency));
            if let Some((gmm, detector)) = &mut m.joint
                && let Some(z) = gmm.score(&[rate, errors, latency])
            {
                verdicts.push(Kind::Joint.score(detector, ts_ms, z));
            }
        }
        let threshold = self.cfg.threshold;
        let worse = verdicts
            .iter()
            .any(|v| matches!(v.kind, Kind::Errors | Kind::Latency) && v.rose());
        // The verdict shown: an alarm before none, a single signal (which says what is wrong) before the
        // joint one, then the higher score.
        let rank = |v: &Verdict| (v.alarms(threshold, worse), v.kind != Kind::Joint);
        let worst = verdicts
            .iter()
            .filter(|v| v.kind != Kind::Rate)
            .max_by(|a, b| rank(a).cmp(&rank(b)).then(a.score.total_cmp(&b.score)));
        let (mut score, mut anomalous, mut reason) = match worst {
            Some(v) => (v.score, v.alarms(threshold, worse), describe(v, s)),
            None => (0.0, false, String::new()),
        };
        if anomalous && m.ongoing.is_none() {
            m.ongoing = Some(Ongoing::from(&verdicts));
        }
        if !anomalous && let Some(o) = m.ongoing {
            match o.holding(&verdicts) {
                Some(held) => {
                    (score, anomalous, reason) = (held.score.max(threshold), true, describe(&held, s))
                }
                None => m.ongoing = None,
            }
        }
        Some(ServiceState {
            service: name.to_owned(),
            score,
            anomalous,
            reason,
            learning: m.learning(),
        })
    }
}

/// The error ratio the detectors see: errors less two standard deviations of a Poisson count, over the
/// requests. On a quiet service one or two failures are chance, not news; 30 of 100 still reads 19 %.
fn error_ratio_floor(s: &RedSummary<ServiceKey>) -> f64 {
    if s.requests <= 0.0 {
        return 0.0;
    }
    ((s.errors - 2.0 * s.errors.max(0.0).sqrt()) / s.requests).max(0.0)
}

/// The verdict in words, for people: "p95 latency 4.1x its usual 12 ms".
fn describe(v: &Verdict, s: &RedSummary<ServiceKey>) -> String {
    let step = 1.25f64.ln();
    let unlog = |f: f64| (f * step).exp() - 1.0;
    match v.kind {
        Kind::Latency => {
            let p95 = s.p95_ms.unwrap_or(0.0);
            let usual = v.level.map_or(p95, unlog);
            format!(
                "p95 latency {:.1}x its usual {usual:.0} ms",
                p95 / usual.max(1e-9)
            )
        }
        Kind::Errors => format!(
            "errors {:.0}% of requests (usually under {:.0}%)",
            s.error_ratio * 100.0,
            v.level.map_or(0.0, |l| l * 2.0).max(1.0)
        ),
        Kind::Joint => format!(
            "unusual combination of {:.1} req/s, p95 {:.0} ms and {:.1}% errors for this service (joint score {:.1})",
            s.rate,
            s.p95_ms.unwrap_or(0.0),
            s.error_ratio * 100.0,
            v.value
        ),
        Kind::Rate => format!("{:.0} req/s", s.rate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(service: &str, p95: f64, err: f64) -> RedSummary<ServiceKey> {
        RedSummary {
            key: ServiceKey {
                service: service.into(),
            },
            requests: 100.0,
            rate: 10.0,
            errors: err * 100.0,
            error_ratio: err,
            p95_ms: Some(p95),
        }
    }

    const MINUTE: i64 = 60_000;

    /// What a service's models cost once every window is full: a day of the server's 10 s windows (the
    /// likelihood's 5000 means fill in 14 hours, the mixture's 360 windows in one), with traffic that
    /// moves.
    #[test]
    fn a_services_models_after_a_day_stay_small() {
        let mut m = Monitor::new(&HealthConfig::default());
        let mut x = 7u64;
        for i in 0..8640 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let jitter = ((x >> 40) % 100) as f64 / 100.0;
            let rate = 50.0 + 30.0 * (i as f64 / 900.0).sin() + 5.0 * jitter;
            let s = RedSummary {
                rate,
                requests: rate * 10.0,
                p95_ms: Some(40.0 + 0.2 * rate + 8.0 * jitter),
                error_ratio: 0.002 * jitter,
                ..summary("api", 0.0, 0.0)
            };
            m.score("api", 1_700_000_000_000 + i * 10_000, &s);
        }
        let models = &m.services["api"];
        let (gmm, joint) = models
            .joint
            .as_ref()
            .expect("the joint detector is on by default");
        let detectors = [&models.rate, &models.errors, &models.latency, joint];
        // The struct holds the detectors and the mixture; what each adds is its heap.
        let heap = |footprint: usize, size: usize| footprint - size;
        let bytes = size_of::<ServiceModels>()
            + detectors
                .iter()
                .map(|d| heap(d.footprint(), size_of::<Tidewatch>()))
                .sum::<usize>()
            + heap(gmm.footprint(), size_of::<GmmDetector>());
        eprintln!(
            "a service's models after a day of 10 s windows: {bytes} bytes (detectors {:?} with their \
             structs, mixture {})",
            detectors.map(|d| d.footprint()),
            gmm.footprint()
        );
        assert!(bytes < 9500, "{bytes} bytes");
    }

    #[test]
    fn steady_noise_is_quiet_and_a_spike_is_not() {
        let mut m = Monitor::new(&HealthConfig::default());
        for i in 0..300 {
            let noise = (i % 5) as f64 * 0.5;
            let s = m
                .score("api", i * MINUTE, &summary("api", 20.0 + noise, 0.01))
                .unwrap();
            assert!(!s.anomalous, "window {i}: {s:?}");
        }
        let s = m.score("api", 300 * MINUTE, &summary("api", 90.0, 0.01)).unwrap();
        assert!(s.anomalous && s.reason.starts_with("p95 latency 4."), "{s:?}");
        let mut m = Monitor::new(&HealthConfig::default());
        for i in 0..300 {
            m.score(
                "api",
                i * MINUTE,
                &summary("api", 20.0 + (i % 5) as f64 * 0.5, 0.01),
            );
        }
        let s = m.score("api", 300 * MINUTE, &summary("api", 21.0, 0.30)).unwrap();
        assert!(s.anomalous && s.reason.starts_with("errors 30%"), "{s:?}");
    }

    #[test]
    fn an_incident_lasts_while_latency_or_errors_stay_up_whichever_alarmed() {
        let mut m = Monitor::new(&HealthConfig::default());
        for i in 0..300 {
            let noise = (i % 5) as f64 * 0.5;
            m.score("api", i * MINUTE, &summary("api", 20.0 + noise, 0.01));
        }
        // A bad pod: failures and a slow p95 at once.
        let s = m.score("api", 300 * MINUTE, &summary("api", 60.0, 0.20)).unwrap();
        assert!(s.anomalous, "{s:?}");
        // Its failures dip back by chance while its p95 stays up: still the same incident, shown by p95.
        for i in 301..320 {
            let s = m.score("api", i * MINUTE, &summary("api", 60.0, 0.01)).unwrap();
            assert!(
                s.anomalous && s.reason.starts_with("p95 latency"),
                "window {i}: {s:?}"
            );
        }
        // Both back where they were: over.
        let s = m.score("api", 320 * MINUTE, &summary("api", 21.0, 0.01)).unwrap();
        assert!(!s.anomalous, "{s:?}");
    }

    #[test]
    fn every_detector_shares_the_monitors_parameters() {
        let mut m = Monitor::new(&HealthConfig::default());
        for name in ["api", "db"] {
            m.score(name, 0, &summary(name, 20.0, 0.01)).unwrap();
        }
        // The monitor's copy and four detectors (rate, errors, latency, joint) per service.
        assert_eq!(Arc::strong_count(&m.params), 1 + 2 * 4);
        let size = std::mem::size_of::<ServiceModels>();
        assert!(
            size < 1950,
            "a service's models are {size} bytes before any window"
        );
    }

    #[test]
    fn getting_better_is_not_an_anomaly() {
        let mut m = Monitor::new(&HealthConfig::default());
        for i in 0..300 {
            m.score("api", i * MINUTE, &summary("api", 40.0 + (i % 5) as f64, 0.05));
        }
        let s = m.score("api", 300 * MINUTE, &summary("api", 5.0, 0.0)).unwrap();
        assert!(!s.anomalous, "{s:?}");
    }

    #[test]
    fn the_joint_detector_sees_a_combination_no_single_signal_flags() {
        let mut m = Monitor::new(&HealthConfig::default());
        // Load and latency rise and fall together over a cycle.
        let window = |i: usize| {
            let phase = (i as f64 / 40.0 * std::f64::consts::TAU).sin();
            let rate = 200.0 + 150.0 * phase;
            RedSummary {
                rate,
                ..summary("api", 20.0 + 0.1 * rate + (i % 3) as f64 * 0.3, 0.0)
            }
        };
        for i in 0..400 {
            let s = m.score("api", i as i64 * MINUTE, &window(i)).unwrap();
            assert!(!s.anomalous, "window {i}: {s:?}");
        }
        // Peak-hour latency at the night-time rate: each value is within its usual range.
        let odd = RedSummary {
            rate: 60.0,
            ..summary("api", 55.0, 0.0)
        };
        let s = m.score("api", 400 * MINUTE, &odd).unwrap();
        assert!(
            s.anomalous && s.reason.starts_with("unusual combination"),
            "{s:?}"
        );
    }

    #[test]
    fn nothing_is_anomalous_during_warmup_or_at_low_traffic() {
        let mut m = Monitor::new(&HealthConfig::default());
        let s = m.score("api", 0, &summary("api", 1000.0, 0.9)).unwrap();
        assert!(!s.anomalous);
        assert_eq!(
            s.learning,
            Some(Learning {
                seen: 1,
                needed: Params::default().warmup
            })
        );
        let quiet = RedSummary {
            requests: 3.0,
            ..summary("api", 1000.0, 0.9)
        };
        assert!(m.score("api", MINUTE, &quiet).is_none());
    }
}
