//! `tidewatch simulate`: replays a request-rate trace against a simulated Deployment under the HPA, under
//! Tidewatch, or under an oracle that knows the future, through the scaler's own `decide()`. The engine is
//! `tidewatch_scaler::simulate`; this is the command line and the CSV reader.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tidewatch_scaler::crd::ServicePolicySpec;
use tidewatch_scaler::simulate::{
    Frontier, HpaMetric, Incident, Policy, Report, SWEEP_UTILIZATIONS, SimConfig, Timeline, frontier,
    simulate_timeline,
};

/// The incidents `--incident` replays.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncidentKind {
    Downstream,
    BadPod,
}

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
    /// How old the load the HPA sees is (Prometheus' scrape interval and metrics-server's resolution both
    /// default to 1m).
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub metric_lag: Duration,
    /// Window the per-pod rates the HPA sees are averaged over.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub metric_window: Duration,
    /// How old the load Tidewatch sees is: its own telemetry (a closed 10 s analyzer window plus the
    /// OpenTelemetry SDK's 5 s batch export delay).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub tidewatch_metric_lag: Duration,
    /// Window the per-pod rates Tidewatch sees are averaged over.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub tidewatch_metric_window: Duration,
    /// Tidewatch: coverage of the calibrated forecast peak (conformal, from realised errors); 0 turns
    /// calibration off (the forecast's 95 % band then raises the HPA's answer).
    #[arg(long, default_value_t = 0.999)]
    pub calibration_level: f64,
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
    /// What the HPA scales on: `rate` (requests per second per pod) or `concurrency` (requests in flight
    /// per pod, rate × latency: what a latency-driven metric follows).
    #[arg(long, default_value = "rate")]
    pub hpa_metric: HpaMetric,
    /// An incident on top of the trace: `downstream` (a dependency adds --incident-latency to every
    /// request) or `bad-pod` (the oldest ready pod fails every request it gets until it is restarted;
    /// Tidewatch's analyzer singles it out after --detection and heal() restarts it).
    #[arg(long)]
    pub incident: Option<IncidentKind>,
    /// When the incident starts, after the trace's first row.
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    pub incident_at: Duration,
    /// How long it lasts (the bad pod: until someone paged replaces it, unless restarted earlier).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub incident_for: Duration,
    /// The downstream incident's added latency.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    pub incident_latency: Duration,
    /// The bad-pod incident: how long after the pod turns bad the analyzer singles it out.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub detection: Duration,
    /// Run the HPA and Tidewatch at target utilisations 0.5 to 0.9 (and --target-utilization) and the
    /// oracle, print both curves (replica-hours against SLO-violation minutes) and where Tidewatch's
    /// point at --target-utilization lies against the HPA's curve; --policy is ignored.
    #[arg(long)]
    pub sweep: bool,
    /// With --sweep: run Tidewatch at --target-utilization only, not over the whole range (its replays
    /// are the costly ones; the HPA's curve and the position against it are the same).
    #[arg(long)]
    pub sweep_point_only: bool,
    /// Also draw the replay (load, serving capacity, replicas and SLO-violation minutes over time) as an
    /// SVG to this file (not with --sweep).
    #[arg(long)]
    pub plot: Option<PathBuf>,
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
            tidewatch_metric_lag_ms: ms(self.tidewatch_metric_lag),
            tidewatch_metric_window_ms: ms(self.tidewatch_metric_window),
            calibration_level: (self.calibration_level != 0.0).then_some(self.calibration_level),
            interval_ms: ms(self.interval),
            step_ms: ms(self.step),
            refit_interval_ms: ms(self.refit_interval),
            select_interval_ms: ms(self.select_interval),
            lookback_ms: ms(self.lookback),
            forecast_step_ms: self.forecast_step.map(ms),
            reversal_window_ms: ms(self.reversal_window),
            hpa_metric: self.hpa_metric,
            incident: self.incident.map(|kind| match kind {
                IncidentKind::Downstream => Incident::Downstream {
                    at_ms: ms(self.incident_at),
                    for_ms: ms(self.incident_for),
                    added_latency_ms: self.incident_latency.as_secs_f64() * 1000.0,
                },
                IncidentKind::BadPod => Incident::BadPod {
                    at_ms: ms(self.incident_at),
                    for_ms: ms(self.incident_for),
                    detected_after_ms: ms(self.detection),
                },
            }),
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

/// Runs one replay and returns its report and timeline.
pub fn replay(args: &SimulateArgs) -> anyhow::Result<(Report, Timeline)> {
    let trace = read_trace(&args.trace)?;
    let cfg = args.config();
    let spec = args.spec(&cfg)?;
    let what = format!("simulating {} under {}", args.trace.display(), args.policy);
    crate::progress::while_running(&what, || simulate_timeline(&trace, &cfg, &spec, args.policy))
        .with_context(|| format!("simulating {}", args.trace.display()))
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    if args.sweep && args.plot.is_some() {
        bail!("--plot draws one replay: not with --sweep");
    }
    if args.sweep {
        return run_sweep(args);
    }
    let started = std::time::Instant::now();
    let (r, timeline) = replay(args)?;
    if let Some(path) = &args.plot {
        let svg = plot(
            &timeline,
            args.capacity,
            &format!("{} on {}", r.policy, args.trace.display()),
        )?;
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
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
    if r.restarts > 0 {
        println!("  pods restarted         {}", r.restarts);
    }
    if r.policy == Policy::Tidewatch {
        println!(
            "  trusted forecast at {} of {} decisions; answered from the forecast at {}; observed load above the calibrated peak at {}; {} refits",
            r.trusted_decisions, r.decisions, r.predictive_decisions, r.fallback_decisions, r.refits
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

/// Runs the sweep: both curves, the oracle, and Tidewatch's default point against the HPA's curve.
fn run_sweep(args: &SimulateArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let trace = read_trace(&args.trace)?;
    let cfg = args.config();
    let spec = args.spec(&cfg)?;
    let what = format!("sweeping {}", args.trace.display());
    let f: Frontier = crate::progress::while_running(&what, || {
        frontier(&trace, &cfg, &spec, &SWEEP_UTILIZATIONS, !args.sweep_point_only)
    })
    .with_context(|| format!("simulating {}", args.trace.display()))?;
    println!(
        "frontier on {} (replica-hours / SLO-violation minutes by target utilisation):",
        args.trace.display()
    );
    println!("  {:<12} {:>22} {:>22}", "utilisation", "hpa", "tidewatch");
    for h in &f.hpa {
        let tw = f
            .tidewatch
            .iter()
            .find(|t| t.target_utilization == h.target_utilization)
            .map_or("-".to_owned(), |t| {
                format!("{:.1} / {:>5}", t.replica_hours, t.slo_violation_minutes)
            });
        println!(
            "  {:<12} {:>14.1} / {:>5} {:>22}",
            h.target_utilization, h.replica_hours, h.slo_violation_minutes, tw
        );
    }
    println!(
        "  oracle       {:.1} replica-hours / {} violation minutes",
        f.oracle.replica_hours, f.oracle.slo_violation_minutes
    );
    println!(
        "  tidewatch at {}: {:.1} replica-hours, {} violation minutes; the HPA at the same replica-hours: {:.1} → {}",
        f.point.target_utilization,
        f.point.replica_hours,
        f.point.slo_violation_minutes,
        f.hpa_violations_at_same_cost,
        if f.on_or_below {
            "on or below the HPA's curve"
        } else {
            "above the HPA's curve"
        }
    );
    if let Some(g) = f.gap_closed {
        println!(
            "  replica-hour gap between the HPA and the oracle at {} closed: {:.1} %",
            f.point.target_utilization,
            g * 100.0
        );
    }
    println!("  simulated in {:.1} s", started.elapsed().as_secs_f64());
    if args.json {
        println!("{}", serde_json::to_string(&f)?);
    }
    Ok(())
}

/// Columns of the plot: the ticks are summarised into this many.
const PLOT_COLUMNS: usize = 1200;

/// The replay as an SVG: load and serving capacity (ready pods × capacity) above, replicas below, and
/// the minutes that violated the SLO as red bands across both. Ticks are summarised per column by their
/// maximum, so no spike is hidden.
pub fn plot(t: &Timeline, capacity: f64, title: &str) -> anyhow::Result<String> {
    use plotters::prelude::*;
    let n = t.load.len();
    let per = n.div_ceil(PLOT_COLUMNS).max(1);
    let hours = |k: usize| (k as f64 * t.step_ms as f64) / 3_600_000.0;
    let column = |v: &dyn Fn(usize) -> f64| -> Vec<(f64, f64)> {
        (0..n)
            .step_by(per)
            .map(|a| (hours(a), (a..(a + per).min(n)).map(v).fold(0.0, f64::max)))
            .collect()
    };
    let load = column(&|k| t.load[k]);
    let serving = column(&|k| f64::from(t.ready[k]) * capacity);
    let replicas = column(&|k| f64::from(t.replicas[k]));
    let end = hours(n.max(1));
    let y_load = load.iter().chain(&serving).map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let y_pods = replicas.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let violations: Vec<(f64, f64)> = t
        .violated_minutes
        .iter()
        .map(|m| (*m as f64 / 60.0, (*m + 1) as f64 / 60.0))
        .collect();
    let red = RGBColor(220, 38, 38).mix(0.35).filled();
    let mut svg = String::new();
    {
        let e = |e: DrawingAreaErrorKind<std::io::Error>| anyhow::anyhow!("drawing the plot: {e}");
        let root = SVGBackend::with_string(&mut svg, (1400, 700)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let root = root.titled(title, ("sans-serif", 18)).map_err(e)?;
        let (top, bottom) = root.split_vertically(430);
        let mut c = ChartBuilder::on(&top)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..end, 0.0..y_load)
            .map_err(e)?;
        c.configure_mesh()
            .x_desc("hours")
            .y_desc("requests per second")
            .draw()
            .map_err(e)?;
        c.draw_series(
            violations
                .iter()
                .map(|(a, b)| Rectangle::new([(*a, 0.0), (*b, y_load)], red)),
        )
        .map_err(e)?
        .label("SLO violated")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], red));
        c.draw_series(LineSeries::new(load, BLUE))
            .map_err(e)?
            .label("load")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        let green = RGBColor(22, 163, 74);
        c.draw_series(LineSeries::new(serving, green))
            .map_err(e)?
            .label("ready pods × capacity")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], green));
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
        let mut c = ChartBuilder::on(&bottom)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..end, 0.0..y_pods)
            .map_err(e)?;
        c.configure_mesh()
            .x_desc("hours")
            .y_desc("replicas")
            .draw()
            .map_err(e)?;
        c.draw_series(
            violations
                .iter()
                .map(|(a, b)| Rectangle::new([(*a, 0.0), (*b, y_pods)], red)),
        )
        .map_err(e)?;
        c.draw_series(LineSeries::new(replicas, BLACK)).map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(svg)
}
