//! `tidewatch simulate`: replays a request-rate trace against a simulated Deployment under the HPA, under
//! Tidewatch, or under an oracle that knows the future, through the scaler's own `decide()`. The engine is
//! `tidewatch_scaler::simulate`; this is the command line and the CSV reader.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tidewatch_scaler::crd::ServicePolicySpec;
use tidewatch_scaler::simulate::{Policy, Report, SimConfig, simulate};

#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Request-rate trace: CSV rows `timestamp,value` (a header line is skipped). Timestamps are RFC 3339
    /// (`2014-07-01 00:00:00` or `2014-07-01T00:00:00Z`) or Unix seconds; they must increase. The load
    /// between rows is interpolated linearly.
    #[arg(long)]
    pub trace: PathBuf,
    /// Controller: `hpa` (decide() without prediction: the HPA alone), `tidewatch` (decide() with
    /// forecasts trained on the observed history only) or `oracle` (knows the future: the fewest replicas
    /// that meet the SLO, a lower bound on violations).
    #[arg(long, default_value = "tidewatch")]
    pub policy: Policy,
    /// Requests per second the trace's maximum is scaled to.
    #[arg(long, default_value_t = 2000.0)]
    pub peak: f64,
    /// Requests per second one pod serves with its p95 latency at the SLO threshold (also the policy's
    /// capacity.requestsPerReplica unless --policy-file sets one).
    #[arg(long, default_value_t = 100.0)]
    pub capacity: f64,
    /// p95 latency of an idle pod, in ms; a pod at λ req/s answers in base / (1 - λ/μ), μ chosen so that
    /// the latency is the SLO threshold at --capacity.
    #[arg(long, default_value_t = 50.0)]
    pub base_latency_ms: f64,
    /// The SLO: a minute violates it when its p95 latency is above this many ms...
    #[arg(long, default_value_t = 500.0)]
    pub slo_latency_ms: f64,
    /// ...or when more than this share of its requests fail (beyond a pod's saturation rate, requests fail).
    #[arg(long, default_value_t = 0.01)]
    pub max_error_ratio: f64,
    /// Time from a pod's creation to its first request served.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub cold_start: Duration,
    /// How old the load the controller sees is.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub metric_lag: Duration,
    /// Window the per-pod rates the controller sees are averaged over.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub metric_window: Duration,
    /// Controller sync period.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Simulation tick: the trace is interpolated at this spacing.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub step: Duration,
    /// Fewest replicas (ignored with --policy-file, whose minReplicas counts).
    #[arg(long, default_value_t = 1)]
    pub min: i32,
    /// Most replicas (ignored with --policy-file, whose maxReplicas counts).
    #[arg(long, default_value_t = 100)]
    pub max: i32,
    /// Share of capacity the policy runs at (capacity.targetUtilization; ignored with --policy-file).
    #[arg(long, default_value_t = 0.7)]
    pub target_utilization: f64,
    /// A ServicePolicy (the whole object or its spec, YAML) to run instead of the defaults: its behaviour,
    /// prediction (horizonSeconds included), capacity and replica bounds are used as they are. Without it
    /// the spec is the HPA's defaults with a prediction horizon of cold start + metric lag + interval.
    #[arg(long)]
    pub policy_file: Option<PathBuf>,
    /// Tidewatch: how often the chosen forecaster is refitted on the latest observed history.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub refit_interval: Duration,
    /// Tidewatch: how often the forecaster is chosen again by a rolling-origin backtest (also whenever
    /// the detected periods change).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub select_interval: Duration,
    /// Tidewatch: history the forecasters are fitted on (the analyzer's trainer reads 7 days).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub lookback: Duration,
    /// Tidewatch: spacing of the history the forecasters see (default: the trace's median spacing, at
    /// least 1m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub forecast_step: Option<Duration>,
    /// Two scaling actions in opposite directions this close count as a reversal.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub reversal_window: Duration,
    /// End with `{"slo_violation_minutes":…,"replica_hours":…,"scaling_actions":…,"reversals":…}` on
    /// the last line.
    #[arg(long)]
    pub json: bool,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl SimulateArgs {
    pub fn config(&self) -> SimConfig {
        SimConfig {
            peak: self.peak,
            capacity: self.capacity,
            base_latency_ms: self.base_latency_ms,
            slo_latency_ms: self.slo_latency_ms,
            max_error_ratio: self.max_error_ratio,
            cold_start_ms: ms(self.cold_start),
            metric_lag_ms: ms(self.metric_lag),
            metric_window_ms: ms(self.metric_window),
            interval_ms: ms(self.interval),
            step_ms: ms(self.step),
            refit_interval_ms: ms(self.refit_interval),
            select_interval_ms: ms(self.select_interval),
            lookback_ms: ms(self.lookback),
            forecast_step_ms: self.forecast_step.map(ms),
            reversal_window_ms: ms(self.reversal_window),
        }
    }

    /// The policy the controller runs: from --policy-file, or the defaults for these settings.
    pub fn spec(&self, cfg: &SimConfig) -> anyhow::Result<ServicePolicySpec> {
        let Some(path) = &self.policy_file else {
            if !(0.05..=1.0).contains(&self.target_utilization) {
                bail!("--target-utilization must be between 0.05 and 1");
            }
            if self.min < 1 || self.max < self.min {
                bail!("--min must be at least 1 and --max at least --min");
            }
            let mut spec = cfg.spec(self.min, self.max);
            spec.capacity.target_utilization = self.target_utilization;
            return Ok(spec);
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&text).with_context(|| format!("{}: not YAML", path.display()))?;
        let spec_doc = match doc.get("spec") {
            Some(s) => s.clone(),
            None => doc,
        };
        let mut spec: ServicePolicySpec = serde_yaml::from_value(spec_doc)
            .with_context(|| format!("{}: not a ServicePolicy spec", path.display()))?;
        if spec.capacity.requests_per_replica.is_none() {
            spec.capacity.requests_per_replica = Some(self.capacity);
        }
        if spec.min_replicas < 1 || spec.max_replicas < spec.min_replicas {
            bail!(
                "{}: minReplicas must be at least 1 and maxReplicas at least minReplicas",
                path.display()
            );
        }
        Ok(spec)
    }
}

/// Reads `timestamp,value` rows into `(unix_ms, value)`.
pub fn read_trace(path: &Path) -> anyhow::Result<Vec<(i64, f64)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let Some((ts, v)) = line.split_once(',') else {
            bail!("{}: expected `timestamp,value`, got `{line}`", at());
        };
        let (ts, v) = (ts.trim(), v.trim());
        let value = match v.parse::<f64>() {
            Ok(v) => v,
            // A header line.
            Err(_) if rows.is_empty() && i == 0 => continue,
            Err(_) => bail!("{}: the value `{v}` is not a number", at()),
        };
        if !value.is_finite() || value < 0.0 {
            bail!("{}: the value must be a finite number, not negative", at());
        }
        let t_ms = match ts.parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs.abs() < 1e13 => (secs * 1000.0).round() as i64,
            Ok(_) => bail!("{}: the timestamp `{ts}` is out of range", at()),
            Err(_) => {
                let t = humantime::parse_rfc3339_weak(ts)
                    .with_context(|| format!("{}: bad timestamp `{ts}`", at()))?;
                match t.duration_since(std::time::UNIX_EPOCH) {
                    Ok(d) => ms(d),
                    Err(e) => -ms(e.duration()),
                }
            }
        };
        if let Some((prev, _)) = rows.last()
            && t_ms <= *prev
        {
            bail!("{}: timestamps must increase", at());
        }
        rows.push((t_ms, value));
    }
    if rows.len() < 2 {
        bail!("{}: needs at least 2 rows, got {}", path.display(), rows.len());
    }
    Ok(rows)
}

/// Runs one replay and returns its report.
pub fn replay(args: &SimulateArgs) -> anyhow::Result<Report> {
    let trace = read_trace(&args.trace)?;
    let cfg = args.config();
    let spec = args.spec(&cfg)?;
    let what = format!("simulating {} under {}", args.trace.display(), args.policy);
    crate::progress::while_running(&what, || simulate(&trace, &cfg, &spec, args.policy))
        .with_context(|| format!("simulating {}", args.trace.display()))
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let r = replay(args)?;
    println!(
        "{} on {} ({} minutes, peak {} req/s, {} req/s per pod, cold start {}, metric lag {}):",
        r.policy,
        args.trace.display(),
        r.minutes,
        args.peak,
        args.capacity,
        humantime::format_duration(args.cold_start),
        humantime::format_duration(args.metric_lag),
    );
    println!("  SLO-violation minutes  {}", r.slo_violation_minutes);
    println!("  replica-hours          {:.1}", r.replica_hours);
    println!("  scaling actions        {}", r.scaling_actions);
    println!("  reversals              {}", r.reversals);
    println!("  failed requests        {:.3} %", r.error_ratio * 100.0);
    println!("  most replicas          {}", r.peak_replicas);
    if r.policy == Policy::Tidewatch {
        println!(
            "  trusted forecast at {} of {} decisions; forecast above the HPA at {}; {} refits",
            r.trusted_decisions, r.decisions, r.predictive_decisions, r.refits
        );
    }
    println!("  simulated in {:.1} s", started.elapsed().as_secs_f64());
    if args.json {
        /// The last line, in this field order.
        #[derive(serde::Serialize)]
        struct Line {
            slo_violation_minutes: u64,
            replica_hours: f64,
            scaling_actions: u64,
            reversals: u64,
        }
        let line = Line {
            slo_violation_minutes: r.slo_violation_minutes,
            replica_hours: (r.replica_hours * 1000.0).round() / 1000.0,
            scaling_actions: r.scaling_actions,
            reversals: r.reversals,
        };
        println!("{}", serde_json::to_string(&line)?);
    }
    Ok(())
}
