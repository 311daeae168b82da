//! Forecasting per series: seasonal naive (the baseline to beat), additive Holt-Winters with a damped
//! trend, and a linfa linear regression on trend + Fourier seasonal terms. Periods (daily, weekly) are
//! detected from the autocorrelation. Rolling-origin backtests score every model (MASE, sMAPE, interval
//! coverage) and pick one per series: chosen on the earlier origins, reported on the later ones, so the
//! choice never sees the data it is judged on.
//!
//! Every forecast carries a 95 % prediction interval built from the model's own one-step residuals.

use linfa::prelude::*;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2};

/// A point forecast with its 95 % interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Forecast {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

/// One service's request-rate forecast as the scheduled trainer last fitted it: what the scaler reads.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ServiceForecast {
    pub service: String,
    /// The model the backtest picked.
    pub model: String,
    /// Rolling-origin MASE of that model against seasonal naive on this series (< 1 beats it). `None` when the
    /// history was too short to backtest: then the forecast is not to be trusted for decisions.
    pub mase: Option<f64>,
    /// Spacing of the points, in milliseconds.
    pub step_ms: i64,
    /// When the model was fitted (Unix ms).
    pub fitted_at_ms: i64,
    /// Forecast request rate (per second) after the end of the fitted history: `(ts_ms, forecast)`, oldest first.
    pub points: Vec<(i64, Forecast)>,
}

/// Every service's latest forecast, by service name.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Forecasts {
    pub services: std::collections::BTreeMap<String, ServiceForecast>,
}

/// Settings of the scheduled forecast trainer (`analyzer.forecast`).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForecastConfig {
    /// How often every service's request-rate model is refitted.
    #[serde(with = "humantime_serde")]
    pub interval: std::time::Duration,
    /// Spacing of the history points the models are fitted on.
    #[serde(with = "humantime_serde")]
    pub step: std::time::Duration,
    /// How much history is read (at most: the store keeps what its retention allows).
    #[serde(with = "humantime_serde")]
    pub lookback: std::time::Duration,
    /// How far ahead each forecast reaches.
    #[serde(with = "humantime_serde")]
    pub horizon: std::time::Duration,
    /// Fewest complete points before a service gets a forecast at all.
    pub min_points: usize,
}

impl Default for ForecastConfig {
    fn default() -> ForecastConfig {
        ForecastConfig {
            interval: std::time::Duration::from_secs(300),
            step: std::time::Duration::from_secs(60),
            lookback: std::time::Duration::from_secs(7 * 86_400),
            horizon: std::time::Duration::from_secs(30 * 60),
            min_points: 10,
        }
    }
}

impl ForecastConfig {
    pub(crate) fn validate(&self, errors: &mut Vec<String>) {
        if self.interval < std::time::Duration::from_secs(1) {
            errors.push("analyzer.forecast.interval: must be at least 1s".into());
        }
        if self.step < std::time::Duration::from_secs(1) {
            errors.push("analyzer.forecast.step: must be at least 1s".into());
        }
        if self.lookback < self.step * 4 {
            errors.push("analyzer.forecast.lookback: must be at least 4 steps".into());
        }
        if self.horizon < self.step {
            errors.push("analyzer.forecast.horizon: must be at least one step".into());
        }
        if self.min_points < 3 {
            errors.push("analyzer.forecast.min_points: must be at least 3".into());
        }
    }

    fn step_ms(&self) -> i64 {
        i64::try_from(self.step.as_millis()).unwrap_or(i64::MAX).max(1)
    }

    /// Forecast steps in the horizon.
    pub fn horizon_steps(&self) -> usize {
        usize::try_from(self.horizon.as_millis() / self.step.as_millis().max(1))
            .unwrap_or(usize::MAX)
            .max(1)
    }
}

/// Rolling origins every model choice backtests on (see [`select`]).
pub const TRAIN_ORIGINS: usize = 12;

/// A model chosen by backtest: the periods it was built for, its index in [`models_for`] and its
/// backtest MASE (against the in-sample seasonal naive error).
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub periods: Vec<usize>,
    pub index: usize,
    pub mase: f64,
}

/// The one model choice every forecast uses (the trainer, the forecast API, `tidewatch simulate`): periods
/// from the autocorrelation of `y` (spaced `step_secs`), then the lowest MASE over [`TRAIN_ORIGINS`]
/// rolling origins spread over the last 40 % of the history, each leaving `h` points to score. `None`
/// when `y` is too short to backtest.
pub fn select(y: &[f64], step_secs: f64, h: usize) -> Option<Selection> {
    let periods = detect_periods(y, step_secs);
    let m = periods.first().copied().unwrap_or(1);
    let n = y.len();
    let first = (n as f64 * 0.6) as usize;
    if n < h + 20 || n - h <= first {
        return None;
    }
    let last = n - h;
    let origins: Vec<usize> = (0..TRAIN_ORIGINS)
        .map(|i| first + (last - first) * i / (TRAIN_ORIGINS - 1))
        .collect();
    let mut best: Option<(usize, f64)> = None;
    for (i, mut model) in models_for(&periods, h).into_iter().enumerate() {
        let b = backtest(model.as_mut(), y, &origins, h, m);
        if b.forecasts > 0 && b.mase.is_finite() && best.is_none_or(|(_, s)| b.mase < s) {
            best = Some((i, b.mase));
        }
    }
    best.map(|(index, mase)| Selection { periods, index, mase })
}

/// Picks a model for `y` (spaced `step_secs`) with [`select`], fits it on all of `y` and forecasts `h`
/// steps. Returns the model's name, its backtest MASE (`None` when `y` is too short to backtest) and the
/// forecasts.
pub fn select_and_forecast(
    y: &[f64],
    step_secs: f64,
    h: usize,
) -> (&'static str, Option<f64>, Vec<Forecast>) {
    let chosen = select(y, step_secs, h);
    let periods = chosen
        .as_ref()
        .map_or_else(|| detect_periods(y, step_secs), |c| c.periods.clone());
    let best = chosen.map(|c| (c.index, c.mase));
    let mut candidates = models_for(&periods, h);
    // Without a backtest, seasonal naive (the first model) is the honest default.
    let order: Vec<usize> = match best {
        Some((i, _)) => std::iter::once(i).chain(0..candidates.len()).collect(),
        None => (0..candidates.len()).collect(),
    };
    for i in order {
        let model = &mut candidates[i];
        if model.fit(y).is_ok() {
            let mase = best.filter(|(b, _)| *b == i).map(|(_, s)| s);
            return (model.name(), mase, model.forecast(h));
        }
    }
    // Too short for any model: carry the last value forward, untrusted.
    let last = y.last().copied().unwrap_or(0.0);
    let flat = Forecast {
        mean: last,
        lo: last,
        hi: last,
    };
    ("last_value", None, vec![flat; h])
}

/// Fits every service's request-rate model on the history: the scheduled trainer's work, run off the
/// async threads. The last bucket (still filling) is left out; services with fewer than
/// `cfg.min_points` complete points get no forecast.
pub fn train(view: &crate::store::HistoryView, now_ms: i64, cfg: &ForecastConfig) -> Forecasts {
    let step_ms = cfg.step_ms();
    let lookback_ms = i64::try_from(cfg.lookback.as_millis()).unwrap_or(i64::MAX);
    let from = now_ms.saturating_sub(lookback_ms);
    let h = cfg.horizon_steps();
    let mut out = Forecasts::default();
    let services = match view.services(from, now_ms) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "forecast: services not listed");
            return out;
        }
    };
    for summary in services {
        let Some((_, service)) = summary.key.iter().find(|(k, _)| k == "service") else {
            continue;
        };
        let points = match view.service_red(service, from, now_ms, step_ms) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(service, error = %e, "forecast: history not read");
                continue;
            }
        };
        // The newest bucket is still filling: its rate would read as a drop.
        let complete = points.split_last().map_or(&[][..], |(_, rest)| rest);
        if complete.len() < cfg.min_points {
            continue;
        }
        let y: Vec<f64> = complete.iter().map(|p| p.rate).collect();
        let last_ts = complete.last().map_or(now_ms, |p| p.ts);
        let (model, mase, forecasts) = select_and_forecast(&y, step_ms as f64 / 1000.0, h);
        let points = forecasts
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                let f = Forecast {
                    mean: f.mean.max(0.0),
                    lo: f.lo.max(0.0),
                    hi: f.hi.max(0.0),
                };
                (last_ts.saturating_add(step_ms.saturating_mul(i as i64 + 1)), f)
            })
            .collect();
        out.services.insert(
            service.clone(),
            ServiceForecast {
                service: service.clone(),
                model: model.to_owned(),
                mase,
                step_ms,
                fitted_at_ms: now_ms,
                points,
            },
        );
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The scheduled trainer: refits every `cfg.interval`, and also at each new history view until a first
/// training has produced a forecast (so a fresh start does not wait a whole interval). Training runs in
/// `spawn_blocking`; results go out on `tx`. Stops when `stop` turns true or the history goes away.
pub(crate) async fn run_trainer(
    cfg: ForecastConfig,
    mut history: tokio::sync::watch::Receiver<crate::store::HistoryView>,
    tx: tokio::sync::watch::Sender<std::sync::Arc<Forecasts>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + cfg.interval, cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trained = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = history.changed(), if !trained => {
                if changed.is_err() {
                    break;
                }
            }
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let view = history.borrow_and_update().clone();
        let job = cfg.clone();
        // "Now" is the end of the newest window in the history (the wall clock when it is empty), so
        // the still-filling bucket is the last one read.
        let Ok(forecasts) = tokio::task::spawn_blocking(move || {
            let now = view.latest_ts().map_or_else(now_ms, |t| t.saturating_add(1));
            train(&view, now, &job)
        })
        .await
        else {
            tracing::error!("forecast: training task failed");
            continue;
        };
        if forecasts.services.is_empty() && !trained {
            continue;
        }
        trained = true;
        tracing::debug!(services = forecasts.services.len(), "forecast: models refitted");
        let _ = tx.send(std::sync::Arc::new(forecasts));
    }
}

/// A forecasting model. Fit on a history, then forecast `h` steps past its end.
pub trait Forecaster {
    fn name(&self) -> &'static str;
    /// Fits on `y` (evenly spaced, oldest first). Too short a history is an error.
    fn fit(&mut self, y: &[f64]) -> Result<(), String>;
    /// Forecasts steps 1..=h after the fitted history.
    fn forecast(&self, h: usize) -> Vec<Forecast>;
}

const Z95: f64 = 1.96;

fn std_dev(e: &[f64]) -> f64 {
    if e.len() < 2 {
        return 0.0;
    }
    let m = e.iter().sum::<f64>() / e.len() as f64;
    (e.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (e.len() - 1) as f64).sqrt()
}

/// Autocorrelation of `y` at `lag`.
pub fn acf(y: &[f64], lag: usize) -> f64 {
    if lag == 0 || lag >= y.len() {
        return 0.0;
    }
    let m = y.iter().sum::<f64>() / y.len() as f64;
    let var: f64 = y.iter().map(|v| (v - m).powi(2)).sum();
    if var == 0.0 {
        return 0.0;
    }
    y.iter()
        .zip(&y[lag..])
        .map(|(a, b)| (a - m) * (b - m))
        .sum::<f64>()
        / var
}

/// Daily and weekly periods (in steps of `step_secs`) that the series shows clearly: at least two full
/// periods of history and an autocorrelation above 0.3 at that lag (the best lag within ±2 % of it, since
/// real cycles drift a little). Strongest first.
pub fn detect_periods(y: &[f64], step_secs: f64) -> Vec<usize> {
    let mut found: Vec<(usize, f64)> = [86_400.0, 7.0 * 86_400.0]
        .iter()
        .map(|p| (p / step_secs).round() as usize)
        .filter(|&p| p >= 2 && y.len() >= 2 * p)
        .filter_map(|p| {
            let slack = (p / 50).max(1);
            let (best, r) = (p - slack.min(p - 1)..=p + slack)
                .map(|l| (l, acf(y, l)))
                .max_by(|a, b| a.1.total_cmp(&b.1))?;
            (r > 0.3).then_some((best, r))
        })
        .collect();
    found.sort_by(|a, b| b.1.total_cmp(&a.1));
    found.into_iter().map(|(p, _)| p).collect()
}

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

/// Backtest figures of one model on one series.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Backtest {
    pub model: &'static str,
    /// Mean absolute error of the forecasts.
    pub mae: f64,
    /// Mean absolute error over the in-sample seasonal-naive error: below 1 beats the baseline.
    pub mase: f64,
    /// Symmetric mean absolute percentage error, in percent.
    pub smape: f64,
    /// Share of actual values inside the 95 % interval.
    pub coverage: f64,
    pub forecasts: usize,
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

/// Rolling-origin backtest: at each origin, fit on what came before and forecast `h` steps.
pub fn backtest(
    model: &mut dyn Forecaster,
    y: &[f64],
    origins: &[usize],
    h: usize,
    scale_lag: usize,
) -> Backtest {
    let (mut abs, mut scale, mut smape, mut inside, mut n) = (0.0, 0.0, 0.0, 0usize, 0usize);
    for &o in origins {
        let train = &y[..o];
        if model.fit(train).is_err() || o + h > y.len() {
            continue;
        }
        // MASE scale: the in-sample MAE of the seasonal naive forecast at this origin.
        let lag = scale_lag.min(train.len() - 1).max(1);
        let s = train
            .iter()
            .zip(&train[lag..])
            .map(|(a, b)| (b - a).abs())
            .sum::<f64>()
            / (train.len() - lag) as f64;
        for (f, &actual) in model.forecast(h).iter().zip(&y[o..o + h]) {
            abs += (actual - f.mean).abs();
            scale += s;
            let denom = actual.abs() + f.mean.abs();
            smape += if denom > 0.0 {
                2.0 * (actual - f.mean).abs() / denom
            } else {
                0.0
            };
            inside += usize::from(actual >= f.lo && actual <= f.hi);
            n += 1;
        }
    }
    let nf = n.max(1) as f64;
    Backtest {
        model: model.name(),
        mae: abs / nf,
        mase: if scale > 0.0 { abs / scale } else { f64::NAN },
        smape: 100.0 * smape / nf,
        coverage: inside as f64 / nf,
        forecasts: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daily cycle (period 48) with noise and a slow trend.
    fn series(n: usize) -> Vec<f64> {
        let mut state = 7u64;
        (0..n)
            .map(|t| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 4.0;
                100.0 + 0.01 * t as f64 + 30.0 * (std::f64::consts::TAU * t as f64 / 48.0).sin() + noise
            })
            .collect()
    }

    #[test]
    fn finds_the_daily_period() {
        let y = series(48 * 10);
        // 48 steps of 30 minutes make a day.
        assert_eq!(detect_periods(&y, 1800.0).first(), Some(&48));
        assert!(detect_periods(&vec![1.0; 500], 1800.0).is_empty());
    }

    #[test]
    fn models_beat_or_match_seasonal_naive_on_a_clean_cycle() {
        let y = series(48 * 12);
        let origins: Vec<usize> = (0..8).map(|i| 48 * 8 + i * 20).collect();
        for mut m in models(&[48]) {
            let b = backtest(m.as_mut(), &y, &origins, 12, 48);
            assert!(b.forecasts == 96, "{b:?}");
            assert!(b.mase < 1.2, "{b:?}");
            assert!(b.coverage > 0.7, "{b:?}");
        }
        let mut hw = HoltWinters::new(48);
        assert!(backtest(&mut hw, &y, &origins, 12, 48).mase < 1.0);
        assert_eq!(
            models(&[48]).iter().map(|m| m.name()).collect::<Vec<_>>(),
            [
                "seasonal_naive",
                "holt_winters",
                "smoothed_seasonal",
                "fourier_regression",
                "ensemble"
            ]
        );
    }

    #[test]
    fn short_histories_are_errors_not_panics() {
        for mut m in models(&[48]) {
            assert!(m.fit(&[1.0, 2.0, 3.0]).is_err(), "{}", m.name());
        }
    }

    /// A history of `windows` one-minute windows of checkout traffic whose rate follows a 60-minute cycle.
    fn history(windows: usize) -> (crate::store::History, i64) {
        use crate::config::{AnalyzerConfig, StoreConfig};
        use crate::engine::Snapshot;
        use crate::model::{SpanKind, StatusCode};
        use crate::red::{Histogram, RedRow};
        use std::time::{Duration, SystemTime};
        let cfg = AnalyzerConfig::default();
        let store = StoreConfig {
            data_dir: None,
            ..StoreConfig::default()
        };
        let mut h = crate::store::History::open(&store, Duration::from_secs(60));
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut calls = 0u64;
        let mut ts = 0;
        for w in 0..windows {
            let rate = 50.0 + 20.0 * (std::f64::consts::TAU * w as f64 / 60.0).sin();
            calls += (rate * 60.0) as u64;
            let mut s = Snapshot::empty(&cfg);
            s.taken_at = start + Duration::from_secs(60 * w as u64);
            let mut hist = Histogram::new(s.red_bounds.len());
            hist.observe_weighted(&s.red_bounds, 0.01, calls as f64);
            s.red = vec![RedRow {
                service: "checkout".into(),
                span_name: "POST /".into(),
                kind: SpanKind::Server,
                status: StatusCode::Unset,
                dims: vec![],
                overflow: false,
                calls,
                duration: hist,
            }];
            ts = 1_700_000_000_000 + 60_000 * w as i64;
            h.append(std::sync::Arc::new(s), ts).unwrap();
        }
        (h, ts)
    }

    fn trainer_config() -> ForecastConfig {
        ForecastConfig {
            interval: std::time::Duration::from_secs(3600),
            horizon: std::time::Duration::from_secs(600),
            ..ForecastConfig::default()
        }
    }

    #[test]
    fn training_forecasts_each_service_from_its_history() {
        let (h, now) = history(240);
        let cfg = trainer_config();
        let f = train(&h.view(), now + 1, &cfg);
        let sf = f.services.get("checkout").expect("checkout is forecast");
        assert_eq!(sf.service, "checkout");
        assert_eq!(sf.step_ms, 60_000);
        assert_eq!(sf.points.len(), 10);
        assert!(sf.points.windows(2).all(|w| w[1].0 - w[0].0 == 60_000));
        let mase = sf.mase.expect("240 points are enough to backtest");
        // MASE against the one-step naive error (no daily cycle in 4 hours), so only its sanity is checked.
        assert!(mase.is_finite() && mase > 0.0, "{sf:?}");
        for (_, p) in &sf.points {
            assert!(p.lo <= p.mean && p.mean <= p.hi, "{sf:?}");
            assert!((20.0..90.0).contains(&p.mean), "{sf:?}");
        }
        // Too little history: no forecast rather than a wild one.
        let (short, now) = history(5);
        assert!(train(&short.view(), now + 1, &cfg).services.is_empty());
    }

    #[test]
    fn select_and_forecast_handles_any_length() {
        for n in [0, 1, 2, 5, 30, 100] {
            let y: Vec<f64> = (0..n).map(|i| (i % 7) as f64).collect();
            let (model, mase, f) = select_and_forecast(&y, 60.0, 6);
            assert_eq!(f.len(), 6, "{model} at {n}");
            assert!(mase.is_none_or(f64::is_finite));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trainer_publishes_as_soon_as_history_suffices() {
        let (empty, _) = history(0);
        let (full, _) = history(240);
        let (htx, hrx) = tokio::sync::watch::channel(empty.view());
        let (ftx, mut frx) = tokio::sync::watch::channel(std::sync::Arc::new(Forecasts::default()));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run_trainer(trainer_config(), hrx, ftx, stop_rx));
        // A new view with enough history: trained at once, not after the hour-long interval.
        htx.send(full.view()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(60), frx.changed())
            .await
            .expect("trained within a minute")
            .unwrap();
        assert!(frx.borrow().services.contains_key("checkout"));
        stop_tx.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("stops")
            .unwrap();
    }

    #[test]
    fn config_is_checked() {
        let mut errors = Vec::new();
        ForecastConfig::default().validate(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let bad = ForecastConfig {
            interval: std::time::Duration::ZERO,
            horizon: std::time::Duration::ZERO,
            min_points: 0,
            ..ForecastConfig::default()
        };
        bad.validate(&mut errors);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.iter().all(|e| e.starts_with("analyzer.forecast.")));
    }
}
