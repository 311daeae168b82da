//! Online health: at every window close, each service's p95 latency and error ratio are scored against
//! their own recent past (a robust z-score: distance from the rolling median in units of the rolling MAD,
//! with floors so that noise on a quiet series is not an alarm), anomalous services are localised along
//! the dependency graph ([`crate::rootcause`]), and the result is published as a [`HealthReport`].
//!
//! Request rate is deliberately not an alarm here: it moves with the daily cycle by design, and the
//! scaler, not an alert, is what answers it.

use std::collections::{BTreeMap, VecDeque};

use crate::models::multivariate::{GmmConfig, GmmDetector, VectorDetector, red_features};
use crate::rootcause::{Cause, PodState, ServiceState, localise};
use crate::store::{HistoryView, RedSummary};

/// Settings of the online monitor.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Windows a series must have seen before it can be called anomalous.
    pub warmup_windows: usize,
    /// Windows the rolling baseline spans.
    pub baseline_windows: usize,
    /// Robust z-score from which a signal is anomalous.
    pub threshold: f64,
    /// Windows with fewer requests than this are not scored (too few to say anything).
    pub min_requests: f64,
    /// Score of the joint RED detector (a Gaussian mixture over rate, error ratio and p95, see
    /// `models::multivariate`) from which a window is anomalous; 0 turns the joint detector off.
    pub joint_threshold: f64,
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig {
            warmup_windows: 30,
            baseline_windows: 90,
            threshold: 6.0,
            min_requests: 20.0,
            joint_threshold: 8.0,
        }
    }
}

impl HealthConfig {
    pub(crate) fn validate(&self, errors: &mut Vec<String>) {
        if self.baseline_windows < 5 {
            errors.push("analyzer.health.baseline_windows: must be at least 5".into());
        }
        if self.threshold <= 0.0 {
            errors.push("analyzer.health.threshold: must be above 0".into());
        }
        if self.joint_threshold < 0.0 || !self.joint_threshold.is_finite() {
            errors.push("analyzer.health.joint_threshold: must be 0 (off) or above".into());
        }
    }
}

/// A rolling robust baseline of one signal.
struct Baseline {
    values: VecDeque<f64>,
    seen: usize,
}

impl Baseline {
    fn new() -> Baseline {
        Baseline {
            values: VecDeque::new(),
            seen: 0,
        }
    }

    /// Median and MAD of the baseline.
    fn stats(&self) -> Option<(f64, f64)> {
        if self.values.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = self.values.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let med = v[v.len() / 2];
        let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
        dev.sort_by(f64::total_cmp);
        Some((med, dev[dev.len() / 2]))
    }

    /// Scores `x` against the baseline (before adding it): |x - median| / spread, where the spread has
    /// floors of `rel` of the median and of `abs`, so small absolute moves on quiet series stay quiet.
    /// Only rises count: lower latency or fewer errors are good news.
    fn score_then_add(&mut self, x: f64, rel: f64, abs: f64, cfg: &HealthConfig) -> Option<(f64, f64)> {
        let scored = self
            .stats()
            .filter(|_| self.seen >= cfg.warmup_windows)
            .map(|(med, mad)| {
                let spread = (1.4826 * mad).max(rel * med).max(abs);
                (((x - med) / spread).max(0.0), med)
            });
        self.values.push_back(x);
        if self.values.len() > cfg.baseline_windows {
            self.values.pop_front();
        }
        self.seen += 1;
        scored
    }
}

#[derive(Default)]
struct ServiceBaselines {
    latency: Option<Baseline>,
    errors: Option<Baseline>,
    joint: Option<GmmDetector>,
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

/// The monitor: one owner (the engine's window task).
pub struct Monitor {
    cfg: HealthConfig,
    services: BTreeMap<String, ServiceBaselines>,
}

impl Monitor {
    pub fn new(cfg: &HealthConfig) -> Monitor {
        Monitor {
            cfg: cfg.clone(),
            services: BTreeMap::new(),
        }
    }

    /// Scores the window that ended at `ts_ms` (of length `window_ms`) from the history.
    pub fn observe(&mut self, view: &HistoryView, ts_ms: i64, window_ms: i64) -> crate::Result<HealthReport> {
        let from = ts_ms - window_ms;
        let services = view.services(from, ts_ms)?;
        let edges: Vec<(String, String)> = view
            .edges(from - 60 * window_ms, ts_ms)?
            .iter()
            .map(|e| (key(e, "client"), key(e, "server")))
            .collect();
        let mut states = Vec::new();
        let mut pods = Vec::new();
        for s in &services {
            let name = key(s, "service");
            if let Some(state) = self.score(&name, s) {
                if state.anomalous {
                    for p in view.pods(&name, from, ts_ms)? {
                        pods.push(PodState {
                            service: name.clone(),
                            pod: key(&p, "pod"),
                            requests: p.requests,
                            error_ratio: p.error_ratio,
                            p95_ms: p.p95_ms,
                        });
                    }
                }
                states.push(state);
            }
        }
        let causes = localise(&states, &edges, &pods);
        Ok(HealthReport {
            ts: ts_ms,
            services: states,
            causes,
        })
    }

    fn score(&mut self, name: &str, s: &RedSummary) -> Option<ServiceState> {
        if s.requests < self.cfg.min_requests {
            return None;
        }
        let cfg = self.cfg.clone();
        let b = self.services.entry(name.to_owned()).or_default();
        let mut best = (0.0, String::new());
        if let Some(p95) = s.p95_ms {
            // Latency must move by a quarter of its usual value (and 1 ms) before the spread is small enough.
            let lat = b.latency.get_or_insert_with(Baseline::new);
            if let Some((z, med)) = lat.score_then_add(p95, 0.25, 1.0, &cfg)
                && z > best.0
            {
                best = (
                    z,
                    format!("p95 latency {:.1}x its usual {med:.0} ms", p95 / med.max(1e-9)),
                );
            }
        }
        // Error ratios must move by two percentage points.
        let err = b.errors.get_or_insert_with(Baseline::new);
        if let Some((z, med)) = err.score_then_add(s.error_ratio, 0.25, 0.02, &cfg)
            && z > best.0
        {
            best = (
                z,
                format!(
                    "errors {:.0}% of requests (usually {:.0}%)",
                    s.error_ratio * 100.0,
                    med * 100.0
                ),
            );
        }
        // The joint detector: rate, errors and latency together, on the univariate scale (its threshold
        // maps onto `threshold`), so one number ranks every signal.
        if cfg.joint_threshold > 0.0
            && let Some(p95) = s.p95_ms
        {
            let joint = b
                .joint
                .get_or_insert_with(|| GmmDetector::new(GmmConfig::default()));
            if let Some(jz) = joint.score(&red_features(s.rate, s.error_ratio, p95)) {
                let z = jz * cfg.threshold / cfg.joint_threshold;
                if z > best.0 {
                    best = (
                        z,
                        format!(
                            "unusual combination of {:.0} req/s, p95 {p95:.0} ms and {:.1}% errors for this service (joint score {jz:.1})",
                            s.rate,
                            s.error_ratio * 100.0
                        ),
                    );
                }
            }
        }
        let (z, reason) = best;
        Some(ServiceState {
            service: name.to_owned(),
            // A score in [0, 1): 0.5 at the threshold.
            score: z / (z + cfg.threshold),
            anomalous: z >= cfg.threshold,
            reason,
        })
    }
}

fn key(s: &RedSummary, name: &str) -> String {
    s.key
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(service: &str, p95: f64, err: f64) -> RedSummary {
        RedSummary {
            key: vec![("service".into(), service.into())],
            requests: 100.0,
            rate: 10.0,
            errors: err * 100.0,
            error_ratio: err,
            p95_ms: Some(p95),
        }
    }

    #[test]
    fn steady_noise_is_quiet_and_a_spike_is_not() {
        let cfg = HealthConfig {
            warmup_windows: 10,
            ..HealthConfig::default()
        };
        let mut m = Monitor::new(&cfg);
        for i in 0..50 {
            let noise = (i % 5) as f64 * 0.5;
            let s = m.score("api", &summary("api", 20.0 + noise, 0.01)).unwrap();
            assert!(!s.anomalous, "window {i}: {s:?}");
        }
        let s = m.score("api", &summary("api", 90.0, 0.01)).unwrap();
        assert!(s.anomalous && s.reason.starts_with("p95 latency 4."), "{s:?}");
        let s = m.score("api", &summary("api", 21.0, 0.30)).unwrap();
        assert!(s.anomalous && s.reason.starts_with("errors 30%"), "{s:?}");
        // Getting better is not an anomaly.
        assert!(!m.score("api", &summary("api", 5.0, 0.0)).unwrap().anomalous);
    }

    #[test]
    fn the_joint_detector_sees_a_combination_no_single_signal_flags() {
        let cfg = HealthConfig {
            warmup_windows: 10,
            ..HealthConfig::default()
        };
        let mut m = Monitor::new(&cfg);
        // Load and latency rise and fall together over a cycle.
        let window = |i: usize| {
            let phase = (i as f64 / 40.0 * std::f64::consts::TAU).sin();
            let rate = 200.0 + 150.0 * phase;
            RedSummary {
                rate,
                ..summary("api", 20.0 + 0.1 * rate + (i % 3) as f64 * 0.3, 0.0)
            }
        };
        for i in 0..200 {
            let s = m.score("api", &window(i)).unwrap();
            assert!(!s.anomalous, "window {i}: {s:?}");
        }
        // Peak-hour latency at the night-time rate: each value is within its usual range.
        let odd = RedSummary {
            rate: 60.0,
            ..summary("api", 55.0, 0.0)
        };
        let s = m.score("api", &odd).unwrap();
        assert!(
            s.anomalous && s.reason.starts_with("unusual combination"),
            "{s:?}"
        );
    }

    #[test]
    fn nothing_is_anomalous_during_warmup_or_at_low_traffic() {
        let mut m = Monitor::new(&HealthConfig::default());
        assert!(!m.score("api", &summary("api", 1000.0, 0.9)).unwrap().anomalous);
        let quiet = RedSummary {
            requests: 3.0,
            ..summary("api", 1000.0, 0.9)
        };
        assert!(m.score("api", &quiet).is_none());
    }
}
