//! Wiring of the Kubernetes operator: the analyzer's engine as the operator's telemetry, the decision
//! log, the cluster client, leader election, and the controller's lifetime.

use std::sync::Arc;

use anyhow::Context as _;
use tidewatch_analyzer::Engine;
use tidewatch_scaler::board::Board;
use tidewatch_scaler::controller::{self, Context, Metrics};
use tidewatch_scaler::crd::Quantile;
use tidewatch_scaler::decisions::DecisionLog;
use tidewatch_scaler::heal::CauseInput;
use tidewatch_scaler::leader::LeaderElector;
use tidewatch_scaler::telemetry::{Observation, Telemetry};
use tokio::sync::watch;

use crate::config::Config;

/// The engine's history, health and forecasts, as the operator reads them.
pub struct EngineTelemetry {
    pub engine: Arc<Engine>,
    pub window_ms: i64,
}

impl EngineTelemetry {
    pub fn new(engine: Arc<Engine>, cfg: &Config) -> EngineTelemetry {
        EngineTelemetry {
            engine,
            window_ms: i64::try_from(cfg.analyzer.window.as_millis()).unwrap_or(i64::MAX),
        }
    }
}

impl Telemetry for EngineTelemetry {
    fn observe(&self, service: &str, quantile: Quantile, _now_ms: i64) -> Observation {
        let h = self.engine.history();
        let mut obs = Observation {
            forecast: self.engine.forecasts().services.get(service).cloned(),
            causes: self
                .engine
                .health()
                .current
                .causes
                .iter()
                .map(|c| CauseInput {
                    service: c.service.clone(),
                    pod: c.pod.clone(),
                    explanation: c.explanation.clone(),
                })
                .collect(),
            ..Observation::default()
        };
        let Some(to) = h.latest_ts() else { return obs };
        let from = to - self.window_ms;
        match h.service_red(service, from, to, self.window_ms) {
            Ok(points) => {
                if let Some(p) = points.last().filter(|p| p.requests > 0.0) {
                    obs.window_end_ms = Some(to);
                    obs.rate = Some(p.rate);
                    obs.error_ratio = Some(p.error_ratio);
                    obs.latency_ms = match quantile {
                        Quantile::P50 => p.p50_ms,
                        Quantile::P95 => p.p95_ms,
                        Quantile::P99 => p.p99_ms,
                    };
                }
            }
            Err(e) => tracing::warn!(error = %e, service, "operator: history read failed"),
        }
        match h.pods(service, from, to) {
            Ok(pods) => {
                for p in pods {
                    if !p.key.pod.is_empty() {
                        obs.pod_rates.insert(p.key.pod, p.rate);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, service, "operator: pod history read failed"),
        }
        obs
    }
}

/// The decision log the configuration asks for.
pub fn decision_log(cfg: &Config) -> anyhow::Result<Arc<DecisionLog>> {
    let path = cfg.scaler.decision_log.clone().or_else(|| {
        cfg.analyzer
            .store
            .data_dir
            .as_ref()
            .map(|d| d.join("decisions.jsonl"))
    });
    Ok(Arc::new(match path {
        Some(p) => DecisionLog::open(&p, cfg.scaler.decision_log_max_bytes).context("scaler.decision_log")?,
        None => DecisionLog::in_memory(),
    }))
}

/// What the operator reports into, shared with the web side: the decision log, the reconcile metrics
/// and the policies' state.
#[derive(Clone)]
pub struct Reports {
    pub log: Arc<DecisionLog>,
    pub metrics: Arc<Metrics>,
    pub board: Arc<Board>,
}

impl Reports {
    /// Empty reports, and the decision log the configuration asks for.
    pub fn open(cfg: &Config) -> anyhow::Result<Reports> {
        Ok(Reports {
            log: decision_log(cfg)?,
            metrics: Arc::new(Metrics::default()),
            board: Arc::new(Board::default()),
        })
    }
}

/// The operator's task on a real cluster, started when `scaler.enabled` (by every role that has an
/// engine: `--role all` and `--role analyze`). A failure is logged when it happens: the other sides keep
/// serving without the operator.
pub fn spawn(
    cfg: &Config,
    engine: &Arc<Engine>,
    reports: &Reports,
    stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<anyhow::Result<()>>> {
    if !cfg.scaler.enabled {
        return None;
    }
    let (cfg, engine, reports) = (cfg.clone(), engine.clone(), reports.clone());
    Some(tokio::spawn(async move {
        let res = run(cfg, engine, reports, stop).await;
        if let Err(e) = &res {
            tracing::error!(error = %format!("{e:#}"), "operator stopped");
        }
        res
    }))
}

/// Tells the operator's task to stop and waits for it.
pub async fn stop(tx: &watch::Sender<bool>, task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>) {
    let _ = tx.send(true);
    if let Some(t) = task
        && let Err(e) = t.await
    {
        tracing::error!(error = %e, "operator task failed");
    }
}

/// Connects to the cluster and runs the operator until `stop` turns true. Returns once it has stopped.
pub async fn run(
    cfg: Config,
    engine: Arc<Engine>,
    reports: Reports,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let sc = &cfg.scaler;
    let kube_cfg = match &sc.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("scaler.kubeconfig: reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("scaler.kubeconfig: {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "scaler: no cluster configuration found (set scaler.kubeconfig, KUBECONFIG, or run in a pod)",
        )?,
    };
    let client = kube::Client::try_from(kube_cfg).context("scaler: building the Kubernetes client")?;
    let telemetry = Arc::new(EngineTelemetry::new(engine, &cfg));
    let ctx = Arc::new(
        Context::new(client.clone(), sc, telemetry, reports.log, reports.metrics).with_board(reports.board),
    );
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tracing::info!(namespace = ?sc.namespace, interval = ?sc.interval, "operator starting");
    if !sc.leader_election.enabled {
        controller::run(ctx, client, sc.namespace.clone(), stopped(stop)).await;
        return Ok(());
    }
    let le = &sc.leader_election;
    let lease_ns = le
        .namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let identity = std::env::var("HOSTNAME").unwrap_or_else(|_| format!("tidewatch-{}", std::process::id()));
    let elector = LeaderElector::new(
        client.clone(),
        &lease_ns,
        &le.lease_name,
        &identity,
        le.lease_duration,
    );
    let namespace = sc.namespace.clone();
    elector
        .run(
            move |lost| controller::run(ctx.clone(), client.clone(), namespace.clone(), lost),
            stopped(stop),
        )
        .await;
    Ok(())
}

/// Renders `/api/decisions` answers from the log.
pub fn decisions_json(log: &DecisionLog, limit: usize, policy: Option<&str>) -> serde_json::Value {
    serde_json::json!({ "decisions": log.recent(limit.min(1000), policy) })
}

/// Renders `/api/policies` answers from the board.
pub fn policies_json(board: &Board) -> serde_json::Value {
    serde_json::json!({ "policies": board.policies() })
}
