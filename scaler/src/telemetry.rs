//! What the operator needs to know about a service, behind a trait: the analyzer's engine provides it in
//! the running program, scripted values in tests, and the simulator its simulated Deployment.

use std::collections::BTreeMap;

use tidewatch_analyzer::forecast::ServiceForecast;

use crate::crd::Quantile;
use crate::decide::ForecastInput;
use crate::heal::CauseInput;

/// A service's latest closed telemetry window, its forecast and the analyzer's likely causes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// End of the latest closed window (Unix ms); `None` when the service has reported nothing yet.
    pub window_end_ms: Option<i64>,
    /// Requests per second of the whole service.
    pub rate: Option<f64>,
    /// Latency at the policy's quantile, in milliseconds.
    pub latency_ms: Option<f64>,
    pub error_ratio: Option<f64>,
    /// Requests per second per pod, by pod name (`k8s.pod.name`).
    pub pod_rates: BTreeMap<String, f64>,
    pub forecast: Option<ServiceForecast>,
    /// Likely causes at the latest window close, best first.
    pub causes: Vec<CauseInput>,
}

/// A source of observations.
pub trait Telemetry: Send + Sync {
    fn observe(&self, service: &str, quantile: Quantile, now_ms: i64) -> Observation;
}

/// The forecast as a decision at `now_ms` sees it: the highest upper bound and the highest point forecast
/// over `(now, now + horizon]`, or `None` when the forecast does not reach `now + horizon` (stale, or too
/// short). Not calibrated: the caller adds its [`Calibration`](crate::calibrate::Calibration) if it keeps one.
pub fn forecast_input(f: &ServiceForecast, now_ms: i64, horizon_s: i32) -> ForecastInput {
    let end = now_ms.saturating_add(i64::from(horizon_s.max(0)) * 1000);
    let reaches = f.points.last().is_some_and(|(t, _)| *t >= end);
    // A horizon shorter than the step still looks at the first point past now.
    let first_after = f.points.iter().find(|(t, _)| *t > now_ms).map(|(t, _)| *t);
    let peak = |of: fn(&tidewatch_analyzer::forecast::Forecast) -> f64| {
        f.points
            .iter()
            .filter(|(t, _)| *t > now_ms && (*t <= end || Some(*t) == first_after))
            .map(|(_, p)| of(p))
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
            .filter(|_| reaches)
    };
    ForecastInput {
        model: f.model.clone(),
        mase: f.mase,
        peak_upper: peak(|p| p.hi),
        peak_mean: peak(|p| p.mean),
        calibration: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewatch_analyzer::forecast::Forecast;

    #[test]
    fn peak_over_the_horizon_only_when_covered() {
        let pt = |t: i64, hi: f64| {
            (
                t,
                Forecast {
                    mean: hi / 2.0,
                    lo: 0.0,
                    hi,
                },
            )
        };
        let f = ServiceForecast {
            service: "s".into(),
            model: "m".into(),
            mase: Some(0.5),
            step_ms: 60_000,
            fitted_at_ms: 0,
            points: vec![
                pt(60_000, 10.0),
                pt(120_000, 30.0),
                pt(180_000, 20.0),
                pt(240_000, 99.0),
            ],
        };
        assert_eq!(forecast_input(&f, 0, 180).peak_upper, Some(30.0));
        assert_eq!(forecast_input(&f, 0, 180).peak_mean, Some(15.0));
        assert_eq!(forecast_input(&f, 0, 10).peak_upper, Some(10.0));
        assert_eq!(forecast_input(&f, 100_000, 60).peak_upper, Some(30.0));
        assert_eq!(forecast_input(&f, 200_000, 600).peak_upper, None);
    }
}
