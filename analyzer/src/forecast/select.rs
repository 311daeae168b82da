//! The model choice: rolling-origin backtests score every model (MASE, sMAPE, interval coverage), and
//! the lowest MASE on the earlier origins is chosen.

use super::{Forecast, Forecaster, detect_periods, models_for};

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
