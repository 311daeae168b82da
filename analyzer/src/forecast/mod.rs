//! Forecasting per series: seasonal naive (the baseline to beat), additive Holt-Winters with a damped
//! trend, and a linfa linear regression on trend + Fourier seasonal terms. Periods (daily, weekly) are
//! detected from the autocorrelation. Rolling-origin backtests score every model (MASE, sMAPE, interval
//! coverage) and pick one per series: chosen on the earlier origins, reported on the later ones, so the
//! choice never sees the data it is judged on.
//!
//! Every forecast carries a 95 % prediction interval built from the model's own one-step residuals.
//!
//! `models` (the forecasters), `periods` (cycles from the autocorrelation), `select` (backtests and the
//! model choice), `trainer` (the scheduled refit of every service); this file: the point type and the trait.

mod models;
mod periods;
mod select;
mod trainer;

pub use models::{
    DEFAULT_HORIZON, Ensemble, FourierRegression, HoltWinters, SeasonalNaive, SmoothedSeasonal, models,
    models_for,
};
pub use periods::{acf, detect_periods};
pub use select::{Backtest, Selection, TRAIN_ORIGINS, backtest, select, select_and_forecast};
pub(crate) use trainer::run_trainer;
pub use trainer::{ForecastConfig, Forecasts, ServiceForecast, train};

/// A point forecast with its 95 % interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Forecast {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
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
        use crate::records::{SpanKind, StatusCode};
        use crate::red::{Histogram, RedRow};
        use crate::snapshot::Snapshot;
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
            let mut hist = Histogram::default();
            hist.observe_weighted(&s.red_bounds, 0.01, calls as f64);
            s.red = vec![RedRow {
                service: "checkout".into(),
                span_name: "POST /".into(),
                kind: SpanKind::Server,
                status: StatusCode::Unset,
                dims: Default::default(),
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
