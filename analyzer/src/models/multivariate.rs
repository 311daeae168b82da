//! A multivariate detector over a service's RED vector: a Gaussian mixture (linfa-clustering) fitted on a
//! rolling window of the service's own recent windows, scoring each new window by how unlikely it is
//! under that joint distribution.
//!
//! Univariate thresholds see each signal alone; the daily cycle moves rate and latency together, so a
//! window whose latency is ordinary *for the hour* but not for its load (or whose rate is in range but
//! whose error ratio is not, for that rate) hides from them. The mixture learns the usual combinations
//! (a component per regime, e.g. day and night) and a window off all of them scores high.
//!
//! Features are put in units of "a change worth noticing" (25 % in rate or p95, two points of error
//! ratio), and the covariance is regularised by one such unit, so a signal that never moves (an error
//! ratio stuck at 0) cannot make the smallest change look infinitely unlikely. The score is a robust
//! z-score of the window's negative log-likelihood against those of the training windows, so one
//! threshold works whatever the dimension or the fit.

use linfa::DatasetBase;
use linfa::traits::Fit;
use linfa_clustering::GaussianMixtureModel;
use ndarray::Array2;

use super::ring::Ring;

/// A streaming detector over vectors: one observation in, one anomaly score out, no look-ahead.
pub trait VectorDetector: Send {
    /// Scores `x` against what came before, then learns from it. `None` while still warming up.
    fn score(&mut self, x: &[f64]) -> Option<f64>;
}

/// Settings of the mixture detector.
#[derive(Clone, Debug, PartialEq)]
pub struct GmmConfig {
    /// Mixture components (regimes).
    pub components: usize,
    /// Windows kept for training.
    pub train_windows: usize,
    /// Windows needed before the first fit.
    pub min_windows: usize,
    /// Refit after this many new windows.
    pub refit_every: usize,
}

impl Default for GmmConfig {
    fn default() -> Self {
        GmmConfig {
            components: 2,
            train_windows: 360,
            min_windows: 60,
            refit_every: 30,
        }
    }
}

/// One fitted mixture, kept as what scoring needs: log weights, means, precisions and log determinants.
struct Fitted {
    comps: Vec<(f64, Vec<f64>, Vec<f64>, f64)>,
    dim: usize,
    /// Median and scaled MAD of the training windows' negative log-likelihoods.
    nll_median: f64,
    nll_spread: f64,
}

impl Fitted {
    fn nll(&self, x: &[f64]) -> f64 {
        let d = self.dim;
        let mut terms = Vec::with_capacity(self.comps.len());
        for (log_w, mean, prec, log_det_prec) in &self.comps {
            let diff: Vec<f64> = x.iter().zip(mean).map(|(a, b)| a - b).collect();
            let mut q = 0.0;
            for i in 0..d {
                for j in 0..d {
                    q += diff[i] * prec[i * d + j] * diff[j];
                }
            }
            let log_pdf = -0.5 * (d as f64 * (2.0 * std::f64::consts::PI).ln() - log_det_prec + q);
            terms.push(log_w + log_pdf);
        }
        let m = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !m.is_finite() {
            return f64::INFINITY;
        }
        -(m + terms.iter().map(|t| (t - m).exp()).sum::<f64>().ln())
    }
}

/// Determinant of a small square matrix by Gaussian elimination with partial pivoting.
fn det(m: &[f64], d: usize) -> f64 {
    let mut a = m.to_vec();
    let mut det = 1.0;
    for c in 0..d {
        let p = (c..d)
            .max_by(|&i, &j| a[i * d + c].abs().total_cmp(&a[j * d + c].abs()))
            .unwrap_or(c);
        if a[p * d + c] == 0.0 {
            return 0.0;
        }
        if p != c {
            for k in 0..d {
                a.swap(p * d + k, c * d + k);
            }
            det = -det;
        }
        det *= a[c * d + c];
        for r in c + 1..d {
            let f = a[r * d + c] / a[c * d + c];
            for k in c..d {
                a[r * d + k] -= f * a[c * d + k];
            }
        }
    }
    det
}

fn median_mad(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let med = v[v.len() / 2];
    let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
    dev.sort_by(f64::total_cmp);
    (med, dev[dev.len() / 2])
}

/// A training feature in steps of 1/[`STEPS_PER_UNIT`] of its unit: features in units of a noticeable
/// change are at least 0 and, for any rate or latency a clock can measure, far below the 128 units a
/// `u16` of such steps reaches (a rate of 10^9 per second is 93 units); past either end they are clamped.
type Step = u16;
const STEPS_PER_UNIT: f64 = 512.0;

fn to_step(v: f64) -> Step {
    (v * STEPS_PER_UNIT).round().clamp(0.0, f64::from(Step::MAX)) as Step
}

fn from_step(s: Step) -> f64 {
    f64::from(s) / STEPS_PER_UNIT
}

/// The Gaussian-mixture detector.
pub struct GmmDetector {
    cfg: GmmConfig,
    /// The latest `train_windows` windows' features, one window after another (`dim` values each): one
    /// flat buffer, not an allocation per window, each feature in steps of 1/512 of its unit ([`Step`]).
    /// A feature's unit is a change worth noticing, so a step is far below anything the fit could tell
    /// apart (its covariance is regularised by a whole unit), and a service's 360 windows take 2.2 KB
    /// (4.3 in single precision, 8.6 in double).
    train: Ring<Step>,
    dim: usize,
    fitted: Option<Fitted>,
    since_fit: usize,
}

impl GmmDetector {
    pub fn new(cfg: GmmConfig) -> GmmDetector {
        GmmDetector {
            cfg,
            train: Ring::new(),
            dim: 0,
            fitted: None,
            since_fit: 0,
        }
    }

    /// Bytes the detector holds: its own size, its training windows and its fit (capacities).
    #[cfg(test)]
    pub(crate) fn footprint(&self) -> usize {
        let fitted = self.fitted.as_ref().map_or(0, |f| {
            f.comps.capacity() * size_of::<(f64, Vec<f64>, Vec<f64>, f64)>()
                + f.comps
                    .iter()
                    .map(|(_, mean, prec, _)| (mean.capacity() + prec.capacity()) * size_of::<f64>())
                    .sum::<usize>()
        });
        size_of::<GmmDetector>() + self.train.heap_bytes() + fitted
    }

    /// Windows in the training set.
    fn windows(&self) -> usize {
        self.train.len() / self.dim.max(1)
    }

    fn fit(&mut self) {
        let d = self.dim;
        let n = self.windows();
        let flat: Vec<f64> = self.train.iter().map(from_step).collect();
        let Ok(x) = Array2::from_shape_vec((n, d), flat.clone()) else {
            return;
        };
        let k = self.cfg.components.clamp(1, n / 10).max(1);
        // linfa seeds its generator with a fixed value: fits are reproducible.
        let fit = GaussianMixtureModel::params(k)
            // One unit of "a change worth noticing" of variance in every direction (see the module doc).
            .reg_covariance(1.0)
            .n_runs(1)
            .max_n_iterations(100)
            .fit(&DatasetBase::from(x));
        let Ok(gmm) = fit else {
            // A degenerate window (all identical, say): keep the previous fit.
            return;
        };
        let mut comps = Vec::new();
        for c in 0..gmm.weights().len() {
            let prec: Vec<f64> = gmm
                .precisions()
                .index_axis(ndarray::Axis(0), c)
                .iter()
                .copied()
                .collect();
            let dp = det(&prec, d);
            let w = gmm.weights()[c];
            if dp <= 0.0 || w <= 0.0 {
                continue;
            }
            comps.push((w.ln(), gmm.means().row(c).to_vec(), prec, dp.ln()));
        }
        if comps.is_empty() {
            return;
        }
        let mut f = Fitted {
            comps,
            dim: d,
            nll_median: 0.0,
            nll_spread: 1.0,
        };
        let mut nlls: Vec<f64> = flat.chunks(d).map(|x| f.nll(x)).collect();
        let (med, mad) = median_mad(&mut nlls);
        f.nll_median = med;
        // Never tighter than half a nat: a near-deterministic history must not turn noise into alarms.
        f.nll_spread = (1.4826 * mad).max(0.5);
        self.fitted = Some(f);
        self.since_fit = 0;
    }
}

impl VectorDetector for GmmDetector {
    fn score(&mut self, x: &[f64]) -> Option<f64> {
        if x.is_empty() || x.iter().any(|v| !v.is_finite()) {
            return None;
        }
        if self.dim != x.len() {
            // The first window, or the feature set changed: start over.
            self.train = Ring::new();
            self.dim = x.len();
            self.fitted = None;
        }
        let z = self
            .fitted
            .as_ref()
            .map(|f| ((f.nll(x) - f.nll_median) / f.nll_spread).max(0.0));
        for &v in x {
            self.train.push(to_step(v), self.cfg.train_windows * self.dim);
        }
        self.since_fit += 1;
        if self.windows() >= self.cfg.min_windows
            && (self.fitted.is_none() || self.since_fit >= self.cfg.refit_every)
        {
            self.fit();
        }
        z
    }
}

/// A service's RED window as features in units of a noticeable change: rate and p95 on a log scale in
/// steps of 25 %, the error ratio in steps of two percentage points.
pub fn red_features(rate: f64, error_ratio: f64, p95_ms: f64) -> [f64; 3] {
    let step = 1.25f64.ln();
    [
        (1.0 + rate.max(0.0)).ln() / step,
        error_ratio.clamp(0.0, 1.0) / 0.02,
        (1.0 + p95_ms.max(0.0)).ln() / step,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daily-like cycle where latency rises with load: what the service usually does.
    fn usual(i: usize) -> (f64, f64) {
        let phase = (i as f64 / 40.0 * std::f64::consts::TAU).sin();
        let rate = 200.0 + 150.0 * phase;
        let p95 = 20.0 + 0.1 * rate + ((i * 7919) % 13) as f64 * 0.2;
        (rate, p95)
    }

    #[test]
    fn the_usual_cycle_is_quiet_and_an_unusual_combination_is_not() {
        let mut d = GmmDetector::new(GmmConfig::default());
        let mut worst_normal: f64 = 0.0;
        for i in 0..400 {
            let (rate, p95) = usual(i);
            if let Some(z) = d.score(&red_features(rate, 0.0, p95)) {
                worst_normal = worst_normal.max(z);
            }
        }
        assert!(worst_normal < 6.0, "normal windows scored up to {worst_normal}");
        // Peak-hour latency at the night-time rate: each value alone is within its usual range (the rate
        // goes down to 50 at night, p95 up to 55 at peak), the combination never happens.
        let z = d.score(&red_features(60.0, 0.0, 55.0)).unwrap();
        assert!(z > 8.0, "unusual combination scored {z}");
        // The same pair the usual way round is fine.
        let z = d.score(&red_features(340.0, 0.0, 54.0)).unwrap();
        assert!(z < 6.0, "usual combination scored {z}");
        // Its training windows, full: two bytes per feature.
        assert_eq!(d.train.len(), 360 * 3);
        assert_eq!(d.train.heap_bytes(), 360 * 3 * 2);
    }

    #[test]
    fn training_features_are_kept_in_steps_of_a_512th_of_a_unit() {
        for v in [0.0, 1.0 / 1024.0, 0.3, 17.25, 93.0, 127.99] {
            assert!((from_step(to_step(v)) - v).abs() <= 0.5 / STEPS_PER_UNIT, "{v}");
        }
        assert_eq!(to_step(-1.0), 0);
        assert_eq!(from_step(to_step(1e9)), f64::from(u16::MAX) / STEPS_PER_UNIT);
    }

    #[test]
    fn a_flat_error_ratio_does_not_make_tiny_errors_alarming_and_warmup_is_silent() {
        let mut d = GmmDetector::new(GmmConfig::default());
        for i in 0..100 {
            let s = d.score(&red_features(100.0, 0.0, 30.0 + (i % 3) as f64));
            assert_eq!(s.is_some(), i >= 60, "window {i}");
        }
        assert!(d.score(&red_features(100.0, 0.005, 31.0)).unwrap() < 6.0);
        assert!(d.score(&red_features(100.0, 0.5, 31.0)).unwrap() > 8.0);
        assert!(d.score(&[f64::NAN, 0.0, 0.0]).is_none());
    }
}
