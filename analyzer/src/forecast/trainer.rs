//! The scheduled trainer: every service's request-rate forecast, refitted every `analyzer.forecast.interval`
//! off the async workers, published for the scaler and the API.

use super::{Forecast, select_and_forecast};

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
        let service = &summary.key.service;
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
