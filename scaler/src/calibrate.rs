//! Calibrating the forecast from its realised errors (split conformal prediction over a sliding window).
//!
//! Two point predictions of the peak load over the coming horizon are scored against what then happens:
//! the forecast's highest point, and the trend of the service's own observed rate (its latest rate plus
//! its rise over the last [`TREND_WINDOW_MS`], carried over the metric lag and the horizon: two 15 s
//! windows, so a ramp that starts or steepens is followed within the metric lag, where a slope over a
//! cold start would still read the trough before it). Once a
//! horizon has been observed, the realised peak (the highest observed rate in it) gives each prediction
//! one score: the relative excess `(realised - predicted) / max(predicted, floor)`, `floor` keeping
//! near-idle moments from dominating. Each prediction's calibrated peak is `predicted + q × max(predicted,
//! floor)`, `q` the conformal quantile of its latest scores at coverage `1 - (1 - level) / 2`: the
//! `⌈(n + 1) × coverage⌉`-th smallest of `n`. The calibrated peak used is the lower of the two, which
//! covers the realised peak at `level` or better (a union bound), whatever the shape of the errors, as
//! long as the recent past is like the near future; the fallback in [`decide()`](crate::decide::decide)
//! handles the moments it is not. The scores kept span a week, the longest cycle of most services' load,
//! so that Monday morning's ramp is scored against the Monday mornings before it and not only against the
//! weekend's.
//!
//! The calibrator keeps the state; what a decision uses of it is a [`Calibration`], logged with the
//! decision's inputs, so every decision replays from its log line.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::decide::ForecastInput;

/// The trend is the observed rate's rise over this long (two of Tidewatch's 15 s windows).
pub const TREND_WINDOW_MS: i64 = 30_000;

/// The learned margins a decision uses.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Coverage aimed at: the share of horizons whose realised peak stays within the calibrated peak.
    pub level: f64,
    /// Scores each quantile was taken over.
    pub samples: u32,
    /// Requests per second below which excesses are measured against this floor instead.
    pub floor: f64,
    /// The quantile of the realised peak's relative excess over the forecast's highest point.
    pub forecast_excess: f64,
    /// The observed rate's trend over the horizon (requests per second).
    pub trend: f64,
    /// The quantile of the realised peak's relative excess over the trend.
    pub trend_excess: f64,
}

impl Calibration {
    /// The calibrated peak for the forecast's highest point `forecast` (never negative).
    pub fn peak(&self, forecast: f64) -> f64 {
        let up = |p: f64, q: f64| p + q * p.max(self.floor);
        up(forecast, self.forecast_excess)
            .min(up(self.trend, self.trend_excess))
            .max(0.0)
    }
}

/// Settings of a [`Calibrator`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CalibratorConfig {
    /// Coverage aimed at (0–1).
    pub level: f64,
    /// Scores kept: the newest this many.
    pub window: usize,
    /// Scores needed before a calibration is given.
    pub min_samples: usize,
    /// See [`Calibration::floor`].
    pub floor: f64,
}

impl CalibratorConfig {
    /// The defaults, for a service whose replica serves `capacity` requests per second: coverage 0.999
    /// (a decision is made every 15 s: at 0.99 some 58 horizons a day may escape the band, and one that
    /// does while the load crosses a replica's worth is a violated minute) over the latest 7 days of 15 s
    /// decisions (a weekly cycle), at least half a day of them; floor one replica.
    pub fn for_capacity(capacity: f64) -> CalibratorConfig {
        CalibratorConfig {
            level: 0.999,
            window: 40_320,
            min_samples: 2_880,
            floor: capacity,
        }
    }
}

/// Predictions waiting for their horizon to be observed.
#[derive(Clone, Debug)]
struct Pending {
    from_ms: i64,
    to_ms: i64,
    forecast: f64,
    trend: f64,
}

/// A sliding window of scores, kept sorted too.
#[derive(Clone, Debug, Default)]
struct Scores {
    newest_last: VecDeque<f64>,
    sorted: Vec<f64>,
}

impl Scores {
    fn push(&mut self, score: f64, window: usize) {
        self.newest_last.push_back(score);
        let at = self.sorted.partition_point(|s| *s < score);
        self.sorted.insert(at, score);
        while self.newest_last.len() > window.max(1) {
            if let Some(old) = self.newest_last.pop_front() {
                let at = self.sorted.partition_point(|s| *s < old);
                self.sorted.remove(at);
            }
        }
    }

    /// The `⌈(n + 1) × coverage⌉`-th smallest (the largest when that is past the end).
    fn quantile(&self, coverage: f64) -> Option<f64> {
        let n = self.sorted.len();
        let rank = ((n as f64 + 1.0) * coverage).ceil() as usize;
        (n > 0).then(|| self.sorted[rank.clamp(1, n) - 1])
    }
}

/// Learns the calibration of one service's forecast from what it then observes.
#[derive(Clone, Debug)]
pub struct Calibrator {
    cfg: CalibratorConfig,
    pending: VecDeque<Pending>,
    /// Observed rates `(window_end_ms, rate)`, oldest first, as far back as the oldest pending horizon
    /// and the trend window.
    observed: VecDeque<(i64, f64)>,
    forecast_scores: Scores,
    trend_scores: Scores,
}

impl Calibrator {
    pub fn new(cfg: CalibratorConfig) -> Calibrator {
        Calibrator {
            cfg,
            pending: VecDeque::new(),
            observed: VecDeque::new(),
            forecast_scores: Scores::default(),
            trend_scores: Scores::default(),
        }
    }

    /// The observed rate's trend over `(now_ms, now_ms + horizon_ms]`: the latest rate plus its rise
    /// over the trend window, carried from the latest window's end to the horizon's. `None` before any
    /// observation.
    pub fn trend(&self, now_ms: i64, horizon_ms: i64) -> Option<f64> {
        let &(t1, r1) = self.observed.back()?;
        let earlier = self
            .observed
            .iter()
            .find(|(t, _)| *t >= t1 - TREND_WINDOW_MS)
            .filter(|(t, _)| *t < t1);
        let slope = earlier.map_or(0.0, |&(t0, r0)| ((r1 - r0) / (t1 - t0) as f64).max(0.0));
        Some(r1 + slope * (now_ms + horizon_ms - t1).max(0) as f64)
    }

    /// Records the predictions of the peak over `(now_ms, now_ms + horizon_ms]`: the forecast's highest
    /// point, and the trend.
    pub fn predict(&mut self, now_ms: i64, horizon_ms: i64, forecast: f64) {
        let Some(trend) = self.trend(now_ms, horizon_ms) else {
            return;
        };
        if forecast.is_finite() && forecast >= 0.0 && horizon_ms > 0 {
            self.pending.push_back(Pending {
                from_ms: now_ms,
                to_ms: now_ms.saturating_add(horizon_ms),
                forecast,
                trend,
            });
        }
    }

    /// Takes in the service's rate over the window ending at `window_end_ms` (windows in order), and
    /// scores every prediction whose horizon it completes.
    pub fn observe(&mut self, window_end_ms: i64, rate: f64) {
        if !rate.is_finite() || rate < 0.0 || self.observed.back().is_some_and(|(t, _)| *t >= window_end_ms) {
            return;
        }
        self.observed.push_back((window_end_ms, rate));
        while let Some(p) = self.pending.front() {
            if p.to_ms > window_end_ms {
                break;
            }
            let realised = self
                .observed
                .iter()
                .filter(|(t, _)| *t > p.from_ms && *t <= p.to_ms)
                .map(|(_, r)| *r)
                .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
            if let Some(realised) = realised {
                let score = |predicted: f64| (realised - predicted) / predicted.max(self.cfg.floor);
                let (f, t) = (score(p.forecast), score(p.trend));
                self.forecast_scores.push(f, self.cfg.window);
                self.trend_scores.push(t, self.cfg.window);
            }
            self.pending.pop_front();
        }
        let oldest = self
            .pending
            .front()
            .map_or(window_end_ms, |p| p.from_ms)
            .min(window_end_ms - TREND_WINDOW_MS);
        while self.observed.front().is_some_and(|(t, _)| *t < oldest) && self.observed.len() > 1 {
            self.observed.pop_front();
        }
    }

    /// Records `f`'s peak as a prediction at `now_ms` over `horizon_ms` and gives `f` the calibration
    /// learned so far: what the operator and `simulate` both do before each decision.
    pub fn calibrate(&mut self, now_ms: i64, horizon_ms: i64, f: &mut ForecastInput) {
        if let Some(mean) = f.peak_mean {
            self.predict(now_ms, horizon_ms, mean);
            f.calibration = self.calibration(now_ms, horizon_ms);
        }
    }

    /// The calibration for a decision at `now_ms` over `horizon_ms`, once there are enough scores.
    pub fn calibration(&self, now_ms: i64, horizon_ms: i64) -> Option<Calibration> {
        let n = self.forecast_scores.sorted.len();
        if n == 0 || n < self.cfg.min_samples {
            return None;
        }
        let coverage = 1.0 - (1.0 - self.cfg.level) / 2.0;
        Some(Calibration {
            level: self.cfg.level,
            samples: n as u32,
            floor: self.cfg.floor,
            forecast_excess: self.forecast_scores.quantile(coverage)?,
            trend: self.trend(now_ms, horizon_ms)?,
            trend_excess: self.trend_scores.quantile(coverage)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CalibratorConfig {
        CalibratorConfig {
            level: 0.8,
            window: 100,
            min_samples: 10,
            floor: 1.0,
        }
    }

    #[test]
    fn learns_the_quantile_of_the_realised_excess() {
        let mut c = Calibrator::new(cfg());
        // The forecast says 100 each time; the observed rate is 100 + 0..19 in turn, one window per 10 ms.
        for i in 0..400i64 {
            let t = i * 10;
            c.observe(t, 100.0 + (i % 20) as f64);
            c.predict(t, 30, 100.0);
        }
        let cal = c.calibration(4000, 30).unwrap();
        assert_eq!(cal.samples, 100);
        // Coverage 0.9 for each: the realised peak of 3 windows is mostly near the top of 0..0.19.
        assert!((0.17..=0.19).contains(&cal.forecast_excess), "{cal:?}");
        // The trend misses the drop back to 100 every 20 windows, and overshoots after each rise.
        assert!(cal.trend_excess.is_finite(), "{cal:?}");
        let forecast_peak = 100.0 * (1.0 + cal.forecast_excess);
        let trend_peak = cal.trend + cal.trend_excess * cal.trend.max(1.0);
        assert!(
            (cal.peak(100.0) - forecast_peak.min(trend_peak)).abs() < 1e-9,
            "{cal:?}"
        );
    }

    #[test]
    fn the_trend_carries_the_rise_over_the_lag_and_the_horizon() {
        let mut c = Calibrator::new(cfg());
        assert_eq!(c.trend(0, 10), None);
        // +1 req/s every second, observed up to t = 200 s: at 200 s plus a 50 s horizon, 250.
        for s in 0..=200i64 {
            c.observe(s * 1000, s as f64);
        }
        assert!((c.trend(200_000, 50_000).unwrap() - 250.0).abs() < 1e-9);
        // Falling loads are not extrapolated down.
        let mut c = Calibrator::new(cfg());
        for s in 0..=200i64 {
            c.observe(s * 1000, 500.0 - s as f64);
        }
        assert_eq!(c.trend(200_000, 50_000), Some(300.0));
    }

    #[test]
    fn a_ramp_that_starts_is_followed_within_the_trend_window() {
        // Flat at 100 req/s for 200 s, then +1 req/s every second: 30 s into the ramp the trend carries
        // the new slope (a slope over a cold start would still read mostly the flat part: 142.5).
        let mut c = Calibrator::new(cfg());
        for s in 0..=230i64 {
            c.observe(s * 1000, 100.0 + (s - 200).max(0) as f64);
        }
        assert!((c.trend(230_000, 50_000).unwrap() - 180.0).abs() < 1e-9);
    }

    #[test]
    fn nothing_before_enough_scores_and_bad_values_ignored() {
        let mut c = Calibrator::new(cfg());
        for i in 0..5i64 {
            c.observe(i * 10, 60.0);
            c.predict(i * 10, 10, 50.0);
        }
        c.observe(100, f64::NAN);
        c.predict(100, 10, f64::INFINITY);
        assert_eq!(c.calibration(100, 10), None);
    }

    #[test]
    fn a_forecast_that_overshoots_gets_a_negative_excess() {
        let mut c = Calibrator::new(cfg());
        for i in 0..50i64 {
            c.observe(i * 10, 100.0);
            c.predict(i * 10, 10, 200.0);
        }
        let cal = c.calibration(500, 10).unwrap();
        assert!((cal.forecast_excess + 0.5).abs() < 1e-9, "{cal:?}");
        assert_eq!((cal.trend, cal.trend_excess), (100.0, 0.0));
        assert!((cal.peak(200.0) - 100.0).abs() < 1e-9);
    }
}
