//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::loadgen::LoadArgs;
use crate::topology::Incident;

/// Tidewatch: OTLP in; RED metrics, a live service map, forecasts and anomalies out; scaling and healing
/// on Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "tidewatch", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run Tidewatch: OTLP receivers, analyzer and web side (the default).
    Run(ConfigArgs),
    /// Run Tidewatch with the load generator's shop sending it live traffic.
    Demo(DemoArgs),
    /// Send synthetic OTLP traffic from a small microservice shop.
    Loadgen(LoadArgs),
    /// Check a configuration and print it resolved, with every default filled in.
    CheckConfig(ConfigArgs),
    /// Backtest the forecasters on traffic-like series and compare them with seasonal naive.
    ForecastEval(crate::forecast_eval::ForecastEvalArgs),
    /// Score an anomaly detector on the Numenta Anomaly Benchmark, with NAB's own rules.
    Nab(NabArgs),
    /// Print the ServicePolicy CustomResourceDefinition (YAML), as deploy/crds/ holds it.
    Crdgen,
    /// Replay a request-rate trace against a simulated Deployment under the HPA, Tidewatch or an oracle,
    /// and score SLO-violation minutes, replica-hours, scaling actions and reversals.
    Simulate(Box<crate::simulate::SimulateArgs>),
}

#[derive(Args, Debug)]
pub struct NabArgs {
    /// The NAB corpus: data/, labels/combined_windows.json, config/profiles.json (results/ optional).
    #[arg(long, default_value = "../shared/data/nab")]
    pub data: PathBuf,
    /// Detector to run: tidewatch (ours) or windowed-gaussian (NAB's baseline, re-implemented).
    #[arg(long, default_value = "tidewatch")]
    pub detector: String,
    /// Override one of our detector's parameters, e.g. `--param short=8`. Repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// A split of the corpus (`part<TAB>file` lines; NAB's is bench/nab/split.tsv): score only `--part`.
    #[arg(long, requires = "part")]
    pub split: Option<PathBuf>,
    /// The part of `--split` to score, e.g. `tuning` or `held-out`.
    #[arg(long, requires = "split")]
    pub part: Option<String>,
    /// Also write NAB-format result CSVs (timestamp,value,anomaly_score,label) under this directory, as
    /// `<DIR>/<detector>/<category>/<detector>_<file>.csv`, for NAB's own scorer to cross-check.
    #[arg(long, value_name = "DIR")]
    pub write_results: Option<PathBuf>,
    /// Print each file's score (standard profile) too.
    #[arg(long)]
    pub files: bool,
    /// End with the three normalised scores as one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Default, Clone)]
pub struct ConfigArgs {
    /// YAML configuration file.
    #[arg(long, short, env = "TIDEWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override one setting by path, e.g. `--set analyzer.shards=2`. Repeatable; wins over the file and
    /// over `TIDEWATCH_*` environment variables.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub sets: Vec<String>,
    /// What this process does (`role` in the file): all, or ingest / analyze on Kafka (README).
    #[arg(long, value_enum)]
    pub role: Option<crate::config::Role>,
}

impl ConfigArgs {
    /// The `--set` overrides, with `--role` last so it wins.
    pub fn all_sets(&self) -> Vec<String> {
        let mut sets = self.sets.clone();
        if let Some(r) = self.role {
            sets.push(format!(
                "role={}",
                serde_yaml::to_string(&r).unwrap_or_default().trim()
            ));
        }
        sets
    }
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Spans per second the shop sends at its daily mean.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Length of the shop's simulated day, so the daily cycle shows within minutes.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub day: Duration,
    /// Incidents to inject (see `tidewatch loadgen --help`; `surge@START+DURATION` multiplies the whole
    /// shop's traffic), counted from the start of the live traffic. Without any: a surge, a bad
    /// inventory pod, then a slow payment service, within the first four minutes.
    #[arg(long = "incident")]
    pub incidents: Vec<Incident>,
    /// No incidents at all.
    #[arg(long, conflicts_with = "incidents")]
    pub calm: bool,
    /// Simulated days of history written before the live traffic starts (0: none).
    #[arg(long, default_value_t = 3.0)]
    pub backfill: f64,
    /// How long a new pod of the simulated cluster takes to serve.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub cold_start: Duration,
    /// Seed of the shop's traffic.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}
