//! Forecast backtests on recorded traffic-like series (CSV `timestamp,value`, read as NAB's files are
//! read, e.g. the NAB series named in `../shared/data/README.md`): MASE and sMAPE per model next to
//! seasonal naive.
//!
//! Per series: the step is the median gap between timestamps, periods come from
//! [`detect_periods`], and rolling origins are spread over the last 40 % of the series; the second half
//! of them are the judged ones. The model is chosen on as many origins spread between 30 % of the series
//! and the first judged origin (their forecasts end before it), so the choice never sees the data it is
//! scored on.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tidewatch_analyzer::forecast::{Backtest, backtest, detect_periods, models_for};

use crate::{Error, Result};

/// The traffic-like series of the NAB corpus.
pub const NAB_TRAFFIC: &[&str] = &[
    "realKnownCause/nyc_taxi.csv",
    "realAWSCloudwatch/elb_request_count_8c0756.csv",
    "realTweets/Twitter_volume_AAPL.csv",
    "realTweets/Twitter_volume_AMZN.csv",
    "realTweets/Twitter_volume_CRM.csv",
    "realTweets/Twitter_volume_CVS.csv",
    "realTweets/Twitter_volume_FB.csv",
    "realTweets/Twitter_volume_GOOG.csv",
    "realTweets/Twitter_volume_IBM.csv",
    "realTweets/Twitter_volume_KO.csv",
    "realTweets/Twitter_volume_PFE.csv",
    "realTweets/Twitter_volume_UPS.csv",
    "realTraffic/occupancy_6005.csv",
    "realTraffic/occupancy_t4013.csv",
    "realTraffic/speed_6005.csv",
    "realTraffic/speed_7578.csv",
    "realTraffic/speed_t4013.csv",
    "realTraffic/TravelTime_387.csv",
    "realTraffic/TravelTime_451.csv",
];

/// Fewest rows a series needs to be backtested.
pub const MIN_ROWS: usize = 100;

/// One series' backtest.
#[derive(Clone, Debug, Serialize)]
pub struct SeriesResult {
    pub series: String,
    pub rows: usize,
    pub step_secs: f64,
    pub periods: Vec<usize>,
    /// The model chosen on the earlier origins.
    pub chosen: &'static str,
    /// Test-origin figures of every model.
    pub models: Vec<Backtest>,
}

impl SeriesResult {
    /// The judged figures of model `name` (all zero when it made no forecast).
    pub fn model(&self, name: &str) -> Backtest {
        self.models
            .iter()
            .find(|b| b.model == name)
            .cloned()
            .unwrap_or_default()
    }
}

/// The series to backtest under `data`: NAB's traffic-like series when `data` is a NAB checkout (it has
/// `data/`), else every `.csv` file in `data`, by name.
pub fn series_files(data: &Path) -> Result<Vec<(String, PathBuf)>> {
    let nab = data.join("data");
    if nab.is_dir() {
        return Ok(NAB_TRAFFIC
            .iter()
            .map(|f| ((*f).to_owned(), nab.join(f)))
            .collect());
    }
    let read_err = |source| Error::Read {
        path: data.to_owned(),
        source,
    };
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(data)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .map(|p| {
            (
                p.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                p,
            )
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Reads a series (NAB's `timestamp,value` format); returns the values and the median step in seconds.
pub fn read_series(path: &Path) -> Result<(Vec<f64>, f64)> {
    let (times, values) = crate::nab::read_series(path)?;
    if values.len() < MIN_ROWS {
        return Err(Error::TooShort {
            path: path.to_owned(),
            rows: values.len(),
        });
    }
    let mut gaps: Vec<f64> = times
        .windows(2)
        .filter(|w| w[1] >= w[0])
        .map(|w| (w[1] - w[0]) as f64 / 1000.0)
        .collect();
    gaps.sort_by(f64::total_cmp);
    Ok((values, gaps[gaps.len() / 2].max(1.0)))
}

/// Backtests every model on `y` (spaced `step` seconds) at `origins` rolling origins (half to choose,
/// half to judge), `horizon` steps ahead.
pub fn evaluate(name: &str, y: &[f64], step: f64, horizon: usize, origins: usize) -> SeriesResult {
    let periods = detect_periods(y, step);
    let m = periods.first().copied().unwrap_or(1);
    let n = y.len();
    let first = (n as f64 * 0.6) as usize;
    let last = n - horizon;
    let k = origins.max(2);
    let origins: Vec<usize> = (0..k).map(|i| first + (last - first) * i / (k - 1)).collect();
    let judge = &origins[k / 2..];
    // The model is chosen on origins before the judged ones, spread from 30 % of the series to the
    // last origin whose forecasts end before the first judged origin: more of them than judged ones,
    // so one unusual day does not decide the choice, and none of them sees a judged value.
    let choose_from = (n as f64 * 0.3) as usize;
    let choose_to = judge[0].saturating_sub(horizon).max(choose_from);
    let choose: Vec<usize> = (0..k)
        .map(|i| choose_from + (choose_to - choose_from) * i / (k - 1))
        .collect();
    let mut chosen = ("seasonal_naive", f64::INFINITY);
    for mut model in models_for(&periods, horizon) {
        let b = backtest(model.as_mut(), y, &choose, horizon, m);
        if b.mase < chosen.1 {
            chosen = (model.name(), b.mase);
        }
    }
    let results = models_for(&periods, horizon)
        .into_iter()
        .map(|mut model| backtest(model.as_mut(), y, judge, horizon, m))
        .collect();
    SeriesResult {
        series: name.to_owned(),
        rows: n,
        step_secs: step,
        periods,
        chosen: chosen.0,
        models: results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daily_cycle_is_found_and_every_model_is_judged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cycle.csv");
        let mut csv = String::from("timestamp,value\n");
        // 13 days of hourly points with a daily cycle (period 24; too short for a weekly one).
        for i in 0..24 * 13 {
            let day_part = (i % 24) as f64 / 24.0 * std::f64::consts::TAU;
            let (d, h) = (1 + i / 24, i % 24);
            csv.push_str(&format!(
                "2024-01-{d:02} {h:02}:00:00,{}\n",
                100.0 + 50.0 * day_part.sin()
            ));
        }
        std::fs::write(&path, csv).unwrap();
        let (y, step) = read_series(&path).unwrap();
        assert_eq!((y.len(), step), (24 * 13, 3600.0));
        let r = evaluate("cycle", &y, step, 12, 8);
        assert_eq!(r.periods, vec![24]);
        assert!(r.models.iter().any(|b| b.model == r.chosen), "{r:?}");
        assert!(r.model(r.chosen).forecasts > 0, "{r:?}");
        assert_eq!(
            series_files(dir.path()).unwrap(),
            vec![("cycle.csv".to_owned(), path)]
        );
    }

    #[test]
    fn a_short_series_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.csv");
        std::fs::write(&path, "timestamp,value\n2024-01-01 00:00:00,1\n").unwrap();
        let e = read_series(&path).unwrap_err().to_string();
        assert!(e.contains("short.csv") && e.contains("only 1 rows"), "{e}");
    }
}
