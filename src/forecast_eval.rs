//! `tidewatch forecast-eval`: backtests the forecasters on traffic-like series (CSV `timestamp,value`,
//! e.g. the NAB series named in `../shared/data/README.md`) and prints MASE and sMAPE per model next to
//! seasonal naive.
//!
//! Per series: the step is the median gap between timestamps, periods come from
//! [`detect_periods`], and rolling origins are spread over the last 40 % of the series; the second half
//! of them are the judged ones. The model is chosen on as many origins spread between 30 % of the series
//! and the first judged origin (their forecasts end before it), so the choice never sees the data it is
//! scored on.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use tidewatch_analyzer::forecast::{Backtest, backtest, detect_periods, models_for};

#[derive(Args, Debug)]
pub struct ForecastEvalArgs {
    /// The NAB directory (its `data/` holds the series), or a directory of CSV files.
    #[arg(long)]
    pub data: PathBuf,
    /// Steps ahead to forecast at each origin.
    #[arg(long, default_value_t = 12)]
    pub horizon: usize,
    /// Rolling origins per series (half to choose the model, half to score it).
    #[arg(long, default_value_t = 24)]
    pub origins: usize,
    /// Print the results as JSON on the last line.
    #[arg(long)]
    pub json: bool,
}

/// The traffic-like series of the NAB corpus.
const NAB_TRAFFIC: &[&str] = &[
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

#[derive(Serialize)]
struct SeriesResult {
    series: String,
    rows: usize,
    step_secs: f64,
    periods: Vec<usize>,
    chosen: &'static str,
    /// Test-origin figures of every model.
    models: Vec<Backtest>,
}

/// Reads `timestamp,value` rows; returns the values and the median step in seconds.
fn read_series(path: &Path) -> anyhow::Result<(Vec<f64>, f64)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut times = Vec::new();
    let mut values = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let (ts, v) = line
            .split_once(',')
            .with_context(|| format!("{}:{}: expected timestamp,value", path.display(), i + 1))?;
        let t = humantime::parse_rfc3339_weak(ts.trim())
            .with_context(|| format!("{}:{}: bad timestamp `{ts}`", path.display(), i + 1))?;
        values.push(
            v.trim()
                .parse::<f64>()
                .with_context(|| format!("{}:{}: bad value `{v}`", path.display(), i + 1))?,
        );
        times.push(t);
    }
    if values.len() < 100 {
        bail!("{}: only {} rows", path.display(), values.len());
    }
    let mut gaps: Vec<f64> = times
        .windows(2)
        .filter_map(|w| w[1].duration_since(w[0]).ok())
        .map(|d| d.as_secs_f64())
        .collect();
    gaps.sort_by(f64::total_cmp);
    Ok((values, gaps[gaps.len() / 2].max(1.0)))
}

fn evaluate(name: &str, y: &[f64], step: f64, args: &ForecastEvalArgs) -> SeriesResult {
    let periods = detect_periods(y, step);
    let m = periods.first().copied().unwrap_or(1);
    let n = y.len();
    let first = (n as f64 * 0.6) as usize;
    let last = n - args.horizon;
    let k = args.origins.max(2);
    let origins: Vec<usize> = (0..k).map(|i| first + (last - first) * i / (k - 1)).collect();
    let judge = &origins[k / 2..];
    // The model is chosen on origins before the judged ones, spread from 30 % of the series to the
    // last origin whose forecasts end before the first judged origin: more of them than judged ones,
    // so one unusual day does not decide the choice, and none of them sees a judged value.
    let choose_from = (n as f64 * 0.3) as usize;
    let choose_to = judge[0].saturating_sub(args.horizon).max(choose_from);
    let choose: Vec<usize> = (0..k)
        .map(|i| choose_from + (choose_to - choose_from) * i / (k - 1))
        .collect();
    let mut chosen = ("seasonal_naive", f64::INFINITY);
    for mut model in models_for(&periods, args.horizon) {
        let b = backtest(model.as_mut(), y, &choose, args.horizon, m);
        if b.mase < chosen.1 {
            chosen = (model.name(), b.mase);
        }
    }
    let results = models_for(&periods, args.horizon)
        .into_iter()
        .map(|mut model| backtest(model.as_mut(), y, judge, args.horizon, m))
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

pub fn run(args: ForecastEvalArgs) -> anyhow::Result<()> {
    let nab = args.data.join("data");
    let files: Vec<(String, PathBuf)> = if nab.is_dir() {
        NAB_TRAFFIC
            .iter()
            .map(|f| ((*f).to_owned(), nab.join(f)))
            .collect()
    } else {
        let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(&args.data)
            .with_context(|| format!("reading {}", args.data.display()))?
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
        v
    };
    let mut results = Vec::new();
    let progress = crate::progress::Progress::new("forecast-eval: series", files.len());
    for (name, path) in &files {
        let (y, step) = read_series(path)?;
        results.push(evaluate(name, &y, step, &args));
        progress.inc(name);
    }
    progress.finish();
    let get = |r: &SeriesResult, m: &str| {
        r.models
            .iter()
            .find(|b| b.model == m)
            .cloned()
            .unwrap_or_default()
    };
    println!("MASE / sMAPE on the scoring origins (MASE scaled by the in-sample seasonal naive error);");
    println!(
        "`vs SN` is the chosen model's mean absolute error over seasonal naive's on the same forecasts."
    );
    println!(
        "{:<46} {:>6} {:>9} | {:>14} | {:>14} | {:>14} | {:>14} | {:>14} | chosen: MASE, sMAPE, 95% cover, vs SN",
        "series",
        "rows",
        "periods",
        "seasonal naive",
        "holt-winters",
        "smoothed SN",
        "fourier+linfa",
        "ensemble"
    );
    let (mut beats, mut below_one) = (0, 0);
    for r in &results {
        let cell = |m: &str| {
            let b = get(r, m);
            if b.forecasts == 0 {
                "-".to_owned()
            } else {
                format!("{:.2} / {:.1}%", b.mase, b.smape)
            }
        };
        let c = get(r, r.chosen);
        let sn = get(r, "seasonal_naive");
        let rel = if sn.mae > 0.0 { c.mae / sn.mae } else { 1.0 };
        beats += usize::from(rel < 1.0);
        below_one += usize::from(c.mase < 1.0);
        println!(
            "{:<46} {:>6} {:>9} | {:>14} | {:>14} | {:>14} | {:>14} | {:>14} | {}: {:.2}, {:.1}%, {:.0}%, {:.2}",
            r.series,
            r.rows,
            format!("{:?}", r.periods),
            cell("seasonal_naive"),
            cell("holt_winters"),
            cell("smoothed_seasonal"),
            cell("fourier_regression"),
            cell("ensemble"),
            r.chosen,
            c.mase,
            c.smape,
            c.coverage * 100.0,
            rel
        );
    }
    let n = results.len();
    println!("chosen model: beats seasonal naive on {beats} of {n} series; MASE < 1 on {below_one} of {n}");
    if args.json {
        let summary =
            serde_json::json!({"series": n, "beats_seasonal_naive": beats, "mase_below_1": below_one});
        println!(
            "{}",
            serde_json::json!({ "summary": summary, "results": results })
        );
    }
    Ok(())
}
