//! `tidewatch forecast-eval`: backtests the forecasters on traffic-like series (CSV `timestamp,value`,
//! e.g. the NAB series named in `../shared/data/README.md`) and prints MASE and sMAPE per model next to
//! seasonal naive.
//!
//! The backtests themselves are `tidewatch_eval::forecast`'s; this command lists the series, runs them and
//! prints the table.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tidewatch_eval::forecast::{SeriesResult, evaluate, read_series, series_files};

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

pub fn run(args: ForecastEvalArgs) -> anyhow::Result<()> {
    let files = series_files(&args.data).context("forecast-eval --data")?;
    let mut results = Vec::new();
    let progress = crate::progress::Progress::new("forecast-eval: series", files.len());
    for (name, path) in &files {
        let (y, step) = read_series(path)?;
        results.push(evaluate(name, &y, step, args.horizon, args.origins));
        progress.inc(name);
    }
    progress.finish();
    let get = |r: &SeriesResult, m: &str| r.model(m);
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
