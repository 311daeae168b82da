//! The forecasting models: seasonal naive (the baseline to beat), additive Holt-Winters with a damped
//! trend, the smoothed seasonal naive, a linfa linear regression on trend + Fourier seasonal terms, and
//! the ensemble of them all.

use linfa::prelude::*;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2};

use super::{Forecast, Forecaster, Z95, std_dev};

/// y[t] = y[t - m]: repeats the last season (m = 1: the last value).
pub struct SeasonalNaive {
    period: usize,
    tail: Vec<f64>,
    sigma: f64,
}

impl SeasonalNaive {
    pub fn new(period: usize) -> SeasonalNaive {
        SeasonalNaive {
            period: period.max(1),
            tail: Vec::new(),
            sigma: 0.0,
        }
    }
}

impl Forecaster for SeasonalNaive {
    fn name(&self) -> &'static str {
        "seasonal_naive"
    }

    fn fit(&mut self, y: &[f64]) -> Result<(), String> {
        let m = self.period;
        if y.len() <= m {
            return Err(format!(
                "seasonal naive needs more than {m} points, got {}",
                y.len()
            ));
        }
        let errors: Vec<f64> = y.iter().zip(&y[m..]).map(|(a, b)| b - a).collect();
        self.sigma = std_dev(&errors);
        self.tail = y[y.len() - m..].to_vec();
        Ok(())
    }

    fn forecast(&self, h: usize) -> Vec<Forecast> {
        let m = self.period;
        (1..=h)
            .map(|i| {
                let mean = self.tail[(i - 1) % m];
                // Each further season back adds one more seasonal step of error.
                let w = Z95 * self.sigma * (((i - 1) / m + 1) as f64).sqrt();
                Forecast {
                    mean,
                    lo: mean - w,
                    hi: mean + w,
                }
            })
            .collect()
    }
}

/// Additive Holt-Winters with a damped trend; smoothing parameters chosen on a grid by one-step SSE.
pub struct HoltWinters {
    period: usize,
    level: f64,
    trend: f64,
    season: Vec<f64>,
    /// Index into `season` of the step after the history.
    next: usize,
    alpha: f64,
    sigma: f64,
}

const PHI: f64 = 0.98;

impl HoltWinters {
    pub fn new(period: usize) -> HoltWinters {
        HoltWinters {
            period: period.max(1),
            level: 0.0,
            trend: 0.0,
            season: Vec::new(),
            next: 0,
            alpha: 0.0,
            sigma: 0.0,
        }
    }

    /// Runs the filter; returns the state and the sum of squared one-step errors after the warm-up.
    fn run(y: &[f64], m: usize, (a, b, g): (f64, f64, f64)) -> (f64, f64, Vec<f64>, f64, Vec<f64>) {
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let mut level = mean(&y[..m]);
        let mut trend = if y.len() >= 2 * m {
            (mean(&y[m..2 * m]) - level) / m as f64
        } else {
            0.0
        };
        let mut season: Vec<f64> = y[..m].iter().map(|v| v - level).collect();
        let mut sse = 0.0;
        let mut errors = Vec::with_capacity(y.len());
        for (t, &v) in y.iter().enumerate().skip(m) {
            let s = season[t % m];
            let e = v - (level + PHI * trend + s);
            if t >= 2 * m {
                sse += e * e;
                errors.push(e);
            }
            let prev = level;
            level = a * (v - s) + (1.0 - a) * (level + PHI * trend);
            trend = b * (level - prev) + (1.0 - b) * PHI * trend;
            season[t % m] = g * (v - level) + (1.0 - g) * s;
        }
        (level, trend, season, sse, errors)
    }
}

impl Forecaster for HoltWinters {
    fn name(&self) -> &'static str {
        "holt_winters"
    }

    fn fit(&mut self, y: &[f64]) -> Result<(), String> {
        let m = self.period;
        if y.len() < 3 * m || y.len() < 6 {
            return Err(format!(
                "holt-winters needs three periods ({}), got {}",
                3 * m,
                y.len()
            ));
        }
        let mut best: Option<((f64, f64, f64), f64)> = None;
        for a in [0.05, 0.1, 0.2, 0.4, 0.7] {
            for b in [0.0, 0.01, 0.05] {
                for g in [0.05, 0.1, 0.3] {
                    let sse = Self::run(y, m, (a, b, g)).3;
                    if best.is_none_or(|(_, s)| sse < s) {
                        best = Some(((a, b, g), sse));
                    }
                }
            }
        }
        let (params, _) = best.expect("grid is not empty");
        let (level, trend, season, _, errors) = Self::run(y, m, params);
        *self = HoltWinters {
            period: m,
            level,
            trend,
            season,
            next: y.len() % m,
            alpha: params.0,
            sigma: std_dev(&errors),
        };
        Ok(())
    }

    fn forecast(&self, h: usize) -> Vec<Forecast> {
        let mut damp = 0.0;
        (1..=h)
            .map(|i| {
                damp += PHI.powi(i as i32);
                let mean = self.level + damp * self.trend + self.season[(self.next + i - 1) % self.period];
                // Simple exponential smoothing's variance growth: one more alpha² per step ahead.
                let w = Z95 * self.sigma * (1.0 + (i - 1) as f64 * self.alpha * self.alpha).sqrt();
                Forecast {
                    mean,
                    lo: mean - w,
                    hi: mean + w,
                }
            })
            .collect()
    }
}

/// Least squares (linfa) on a linear trend plus sine/cosine pairs for each detected period, fitted on the
/// recent history so the level can move.
pub struct FourierRegression {
    periods: Vec<usize>,
    model: Option<linfa_linear::FittedLinearRegression<f64>>,
    /// Index of the step after the history (features are built on absolute step numbers).
    n: usize,
    sigma: f64,
}

/// Sine/cosine pairs for a period: more for the shortest (usually daily) cycle, whose shape is sharpest.
fn harmonics(period: usize, shortest: usize) -> usize {
    if period == shortest { 8 } else { 4 }
}

impl FourierRegression {
    pub fn new(periods: Vec<usize>) -> FourierRegression {
        FourierRegression {
            periods,
            model: None,
            n: 0,
            sigma: 0.0,
        }
    }

    fn features(&self, t: usize) -> Vec<f64> {
        let mut f = vec![t as f64 / 1e4];
        let shortest = self.periods.iter().copied().min().unwrap_or(1);
        for &p in &self.periods {
            for k in 1..=harmonics(p, shortest) {
                let x = std::f64::consts::TAU * k as f64 * (t % p) as f64 / p as f64;
                f.push(x.sin());
                f.push(x.cos());
            }
        }
        f
    }
}

impl Forecaster for FourierRegression {
    fn name(&self) -> &'static str {
        "fourier_regression"
    }

    fn fit(&mut self, y: &[f64]) -> Result<(), String> {
        let longest = self.periods.iter().copied().max().unwrap_or(24);
        // Two of the longest periods: long enough for the shape, short enough to follow the level.
        let start = y.len().saturating_sub(2 * longest);
        let rows: Vec<Vec<f64>> = (start..y.len()).map(|t| self.features(t)).collect();
        let width = rows.first().map_or(0, Vec::len);
        if rows.len() < 2 * width + 2 {
            return Err(format!(
                "fourier regression needs {} points, got {}",
                2 * width + 2,
                rows.len()
            ));
        }
        let x = Array2::from_shape_vec((rows.len(), width), rows.concat()).map_err(|e| e.to_string())?;
        let target = Array1::from_vec(y[start..].to_vec());
        let data = Dataset::new(x.clone(), target.clone());
        let model = LinearRegression::default()
            .fit(&data)
            .map_err(|e| e.to_string())?;
        let residuals: Vec<f64> = (&target - &model.predict(&x)).to_vec();
        self.sigma = std_dev(&residuals);
        self.model = Some(model);
        self.n = y.len();
        Ok(())
    }

    fn forecast(&self, h: usize) -> Vec<Forecast> {
        let Some(model) = &self.model else {
            return Vec::new();
        };
        let rows: Vec<Vec<f64>> = (self.n..self.n + h).map(|t| self.features(t)).collect();
        let width = rows.first().map_or(0, Vec::len);
        let Ok(x) = Array2::from_shape_vec((h, width), rows.concat()) else {
            return Vec::new();
        };
        let w = Z95 * self.sigma;
        model
            .predict(&x)
            .iter()
            .map(|&mean| Forecast {
                mean,
                lo: mean - w,
                hi: mean + w,
            })
            .collect()
    }
}

/// Seasonal naive made robust: the mean of the last `k` seasons at the same phase (for `m = 1`, the mean
/// of the last `k` values: a moving average), plus an exponentially smoothed correction for how far the
/// series has lately run above or below that base (a holiday week, a level shift). `k` and the smoothing
/// factor are chosen on the history itself by the error of forecasts 1 and `horizon` steps ahead, so
/// the fit aims at the horizon it will be judged on, not at the next step.
pub struct SmoothedSeasonal {
    period: usize,
    horizon: usize,
    k: usize,
    /// The history (the forecasts index back into it).
    y: Vec<f64>,
    correction: f64,
    /// 1-step and `horizon`-step in-sample error spreads, for the intervals.
    sigma: (f64, f64),
}

impl SmoothedSeasonal {
    pub fn new(period: usize, horizon: usize) -> SmoothedSeasonal {
        SmoothedSeasonal {
            period: period.max(1),
            horizon: horizon.max(1),
            k: 1,
            y: Vec::new(),
            correction: 0.0,
            sigma: (0.0, 0.0),
        }
    }

    /// The base forecast of index `t` from an origin `i` steps before it: the mean of `y` at `t - j m`
    /// for the `k` smallest `j` that reach back before the origin. `None` when the history is too short.
    fn base(y: &[f64], m: usize, k: usize, t: usize, i: usize) -> Option<f64> {
        let j0 = i.div_ceil(m);
        let mut sum = 0.0;
        for j in j0..j0 + k {
            sum += y.get(t.checked_sub(j * m)?)?;
        }
        Some(sum / k as f64)
    }

    /// Corrections (EWMA of `y - base` at one step) for every index, and the in-sample errors of the
    /// forecasts 1 and `h` steps ahead over the scored range.
    fn run(
        y: &[f64],
        m: usize,
        k: usize,
        alpha: f64,
        h: usize,
        from: usize,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut c = vec![0.0; y.len()];
        let mut level = 0.0;
        for t in 0..y.len() {
            if let Some(b) = Self::base(y, m, k, t, 1) {
                level += alpha * (y[t] - b - level);
            }
            c[t] = level;
        }
        let mut e1 = Vec::new();
        let mut eh = Vec::new();
        for t in from..y.len() {
            for (i, out) in [(1, &mut e1), (h, &mut eh)] {
                if t >= i
                    && let Some(b) = Self::base(y, m, k, t, i)
                {
                    out.push(y[t] - (b + c[t - i]));
                }
            }
        }
        (c, e1, eh)
    }
}

impl Forecaster for SmoothedSeasonal {
    fn name(&self) -> &'static str {
        "smoothed_seasonal"
    }

    fn fit(&mut self, y: &[f64]) -> Result<(), String> {
        let (m, h) = (self.period, self.horizon);
        let ks: &[usize] = if m == 1 { &[1, 2, 4, 8, 16, 32] } else { &[1, 2, 3] };
        // Scored over the most recent part of the history that every candidate can forecast.
        let warm = (3 + h.div_ceil(m)) * m + 32;
        if y.len() < warm + 16 {
            return Err(format!(
                "smoothed seasonal needs {} points, got {}",
                warm + 16,
                y.len()
            ));
        }
        let from = warm.max(y.len().saturating_sub(20 * m.max(100)));
        let mut best: Option<(f64, usize, f64)> = None;
        for &k in ks {
            for alpha in [0.0, 0.02, 0.05, 0.1, 0.3] {
                let (_, e1, eh) = Self::run(y, m, k, alpha, h, from);
                let n = (e1.len() + eh.len()).max(1) as f64;
                let loss = e1.iter().chain(&eh).map(|e| e.abs()).sum::<f64>() / n;
                if best.is_none_or(|(l, _, _)| loss < l) {
                    best = Some((loss, k, alpha));
                }
            }
        }
        let (_, k, alpha) = best.ok_or("no candidate fitted")?;
        let (c, e1, eh) = Self::run(y, m, k, alpha, h, from);
        self.k = k;
        self.correction = c.last().copied().unwrap_or(0.0);
        self.sigma = (std_dev(&e1), std_dev(&eh));
        self.y = y[y.len().saturating_sub((k + h.div_ceil(m) + 1) * m)..].to_vec();
        Ok(())
    }

    fn forecast(&self, h: usize) -> Vec<Forecast> {
        let n = self.y.len();
        (1..=h)
            .filter_map(|i| {
                let mean = Self::base(&self.y, self.period, self.k, n - 1 + i, i)? + self.correction;
                // Between the 1-step and the horizon's spread, then growing like a random walk past it.
                let f = (i - 1) as f64 / (self.horizon.max(2) - 1) as f64;
                let sigma = if i <= self.horizon {
                    self.sigma.0 + f * (self.sigma.1 - self.sigma.0)
                } else {
                    self.sigma.1 * (i as f64 / self.horizon as f64).sqrt()
                };
                let w = Z95 * sigma;
                Some(Forecast {
                    mean,
                    lo: mean - w,
                    hi: mean + w,
                })
            })
            .collect()
    }
}

/// The mean of several models' forecasts: their errors partly cancel, so it often beats each of them.
pub struct Ensemble {
    members: Vec<Box<dyn Forecaster>>,
    fitted: Vec<bool>,
}

impl Ensemble {
    pub fn new(members: Vec<Box<dyn Forecaster>>) -> Ensemble {
        Ensemble {
            members,
            fitted: Vec::new(),
        }
    }
}

impl Forecaster for Ensemble {
    fn name(&self) -> &'static str {
        "ensemble"
    }

    fn fit(&mut self, y: &[f64]) -> Result<(), String> {
        self.fitted = self.members.iter_mut().map(|m| m.fit(y).is_ok()).collect();
        if self.fitted.iter().any(|&f| f) {
            Ok(())
        } else {
            Err("no member of the ensemble could fit".into())
        }
    }

    fn forecast(&self, h: usize) -> Vec<Forecast> {
        let parts: Vec<Vec<Forecast>> = self
            .members
            .iter()
            .zip(&self.fitted)
            .filter(|(_, f)| **f)
            .map(|(m, _)| m.forecast(h))
            .collect();
        let k = parts.len().max(1) as f64;
        (0..h)
            .map(|i| {
                let sum =
                    |f: fn(&Forecast) -> f64| parts.iter().filter_map(|p| p.get(i)).map(f).sum::<f64>() / k;
                Forecast {
                    mean: sum(|f| f.mean),
                    lo: sum(|f| f.lo),
                    hi: sum(|f| f.hi),
                }
            })
            .collect()
    }
}

/// Steps ahead the scheduled trainer and `forecast-eval` aim at by default.
pub const DEFAULT_HORIZON: usize = 12;

/// The models for a series whose periods are `periods` (strongest first), fitted for forecasts up to
/// `horizon` steps: seasonal naive, Holt-Winters on the strongest period (Holt's damped trend when
/// there is none), the smoothed seasonal naive, the Fourier regression when there is a period, and the
/// ensemble of them all.
pub fn models_for(periods: &[usize], horizon: usize) -> Vec<Box<dyn Forecaster>> {
    let m = periods.first().copied().unwrap_or(1);
    let members = || -> Vec<Box<dyn Forecaster>> {
        let mut v: Vec<Box<dyn Forecaster>> = vec![
            Box::new(SeasonalNaive::new(m)),
            Box::new(HoltWinters::new(m)),
            Box::new(SmoothedSeasonal::new(m, horizon)),
        ];
        if !periods.is_empty() {
            v.push(Box::new(FourierRegression::new(periods.to_vec())));
        }
        v
    };
    let mut out = members();
    out.push(Box::new(Ensemble::new(members())));
    out
}

/// [`models_for`] at [`DEFAULT_HORIZON`].
pub fn models(periods: &[usize]) -> Vec<Box<dyn Forecaster>> {
    models_for(periods, DEFAULT_HORIZON)
}
