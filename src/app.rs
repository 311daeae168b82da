//! Wiring: start the analyzer engine, put the receivers and the web side in front of it, serve until told
//! to stop, then stop in the order that loses nothing: readiness off, receivers stop accepting and finish
//! their requests, the engine drains its queues, the web side goes last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tidewatch_collector::limit::ConnLimit;
use tidewatch_collector::{Receiver, Stats, server};
use tidewatch_dashboards::{Chunked, WebState};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, Role};

/// The sockets Tidewatch serves on, bound before [`run`] so tests can bind port 0 and read the ports back.
pub struct Listeners {
    pub grpc: Option<TcpListener>,
    pub http: Option<TcpListener>,
    pub web: TcpListener,
}

impl Listeners {
    pub async fn bind(cfg: &Config) -> anyhow::Result<Listeners> {
        async fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the {what} listener to {addr}"))
        }
        let c = &cfg.collector;
        // The analyze role reads Kafka, not OTLP.
        let otlp = cfg.role != Role::Analyze;
        Ok(Listeners {
            grpc: if otlp && c.grpc.enabled {
                Some(bind("OTLP/gRPC", c.grpc.endpoint).await?)
            } else {
                None
            },
            http: if otlp && c.http.enabled {
                Some(bind("OTLP/HTTP", c.http.endpoint).await?)
            } else {
                None
            },
            web: bind("web", cfg.web.endpoint).await?,
        })
    }

    /// `grpc=… http=… web=…`, the line printed at start.
    pub fn describe(&self) -> String {
        let addr = |l: &Option<TcpListener>| {
            l.as_ref()
                .and_then(|l| l.local_addr().ok())
                .map_or_else(|| "off".to_owned(), |a| a.to_string())
        };
        let web = self
            .web
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        format!("grpc={} http={} web={}", addr(&self.grpc), addr(&self.http), web)
    }
}

/// Runs Tidewatch on `listeners` until `shutdown` resolves, then stops gracefully.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    match cfg.role {
        Role::All => {}
        Role::Ingest => return crate::roles::ingest(cfg, listeners, shutdown).await,
        Role::Analyze => return crate::roles::analyze(cfg, listeners, shutdown).await,
    }
    run_with(cfg, listeners, None, shutdown).await
}

/// [`run`], with `tidewatch demo`'s backfill, traffic and simulated cluster when `demo` is given (then
/// the operator runs on the simulated cluster, never on a real one).
pub async fn run_with(
    cfg: Config,
    listeners: Listeners,
    demo: Option<crate::demo::Demo>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (ingest, engine) = tidewatch_analyzer::start(&cfg.analyzer);
    let engine = Arc::new(engine);
    let stats = Arc::new(Stats::default());
    // The decision log opens before anything listens: a log that cannot be written is a start-up error.
    let reports = crate::operator::Reports::open(&cfg)?;
    let rx = Receiver::new(&cfg.collector, ingest.clone(), stats.clone()).context("collector.auth")?;
    let demo_rx = rx.clone();
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut otlp = serve_otlp(
        &cfg.collector,
        listeners.grpc,
        listeners.http,
        rx,
        &stats,
        &stop_rx,
    )?;

    let collector_stats = stats.clone();
    let web_state = WebState {
        engine: engine.clone(),
        ingest,
        extra_metrics: {
            let om = reports.metrics.clone();
            vec![
                Arc::new(move |out: &mut Chunked| collector_stats.render(out)),
                Arc::new(move |out: &mut Chunked| om.render(out)),
                // Last, after the snapshot is dropped.
                Arc::new(|out: &mut Chunked| crate::alloc::end_scrape(out)),
            ]
        },
        ready: ready.clone(),
        decisions: reports.log.clone(),
    };
    let web_router = tidewatch_dashboards::router(web_state).merge(operator_router(&reports));
    let (web_stop_tx, web) = serve_web(&cfg, listeners.web, web_router)?;

    // The demo writes its history before it is ready (the web side answers meanwhile).
    let demo = match demo {
        Some(mut d) => {
            d.backfill(&engine, &demo_rx).await?;
            Some(d)
        }
        None => None,
    };
    drop(demo_rx);

    // The operator acts on a cluster only when configured to, or on the demo's simulated one.
    let (op_stop_tx, op_stop_rx) = watch::channel(false);
    let operator = match demo {
        Some(d) => Some(tokio::spawn(d.run(engine.clone(), reports.clone(), op_stop_rx))),
        None => crate::operator::spawn(&cfg, &engine, &reports, op_stop_rx),
    };

    ready.store(true, Ordering::Relaxed);
    tracing::info!("tidewatch is ready");
    tokio::select! {
        () = shutdown => tracing::info!("shutting down"),
        Some(res) = otlp.join_next() => {
            // A server that returns before shutdown has failed; stop everything and report it.
            res.context("OTLP server task")??;
        }
    }
    ready.store(false, Ordering::Relaxed);
    // The operator stops first: no action is taken on data that is about to stop flowing.
    crate::operator::stop(&op_stop_tx, operator).await;
    let _ = stop_tx.send(true);
    while let Some(res) = otlp.join_next().await {
        res.context("OTLP server task")??;
    }
    engine.shutdown().await;
    tracing::info!(
        spans = engine.stats().spans.load(Ordering::Relaxed),
        "engine drained"
    );
    let _ = web_stop_tx.send(true);
    web.await.context("web server task")??;
    Ok(())
}

#[derive(serde::Deserialize)]
struct DecisionsQuery {
    limit: Option<usize>,
    policy: Option<String>,
}

/// Serves the web port (behind `web.auth`'s token and `web.tls` when set) until the returned sender flips;
/// every role's web port starts here.
pub(crate) fn serve_web(
    cfg: &Config,
    listener: TcpListener,
    router: axum::Router,
) -> anyhow::Result<(
    watch::Sender<bool>,
    tokio::task::JoinHandle<tidewatch_collector::Result<()>>,
)> {
    let mut router = router;
    if let Some(auth) = &cfg.web.auth {
        let token = auth.token.resolve().context("web.auth")?;
        router = tidewatch_dashboards::auth::protect(router, token, auth.protect_metrics);
    }
    let tls = cfg
        .web
        .tls
        .as_ref()
        .map(server::rustls_config)
        .transpose()
        .context("web.tls")?;
    let (tx, mut rx) = watch::channel(false);
    let task = tokio::spawn(server::serve_http(listener, router, tls, None, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    Ok((tx, task))
}

/// The operator's side of the API, the same for a real cluster and the demo's:
/// - `GET /api/decisions?limit=100&policy=ns/name`: the newest decisions of the operator, oldest first
///   (`{"decisions": [Record]}`, each line of the decision log).
/// - `GET /api/policies`: every ServicePolicy's state after its latest reconcile, by `namespace/name`:
///   `{"policies": [{"policy": "shop/checkout", "namespace", "name", "service", "target": {"kind", "name"},
///   "min_replicas", "max_replicas", "current_replicas", "ready_replicas",
///   "capacity": {"requests_per_replica", "source": "given"|"learned"} | null,
///   "load": {"window_end_ms", "rate", "latency_ms", "error_ratio"},
///   "recommendation": {"current", "reactive", "predictive", "replicas", "limit", "reason"},
///   "healing": {"action": "none"|"restart"|"held_back", "pod"?, "reason"}, "restarts_in_window",
///   "forecast": {"model", "mase", "trusted", "step_ms", "points": [{"ts_ms", "mean", "lo", "hi"}]} | null,
///   "dry_run", "updated_ms", "events": [{"ts_ms", "type": "Normal"|"Warning", "reason", "action",
///   "note"}]}]}` (see `tidewatch_scaler::board::PolicyView`). Empty until the operator has reconciled.
pub(crate) fn operator_router(reports: &crate::operator::Reports) -> axum::Router {
    use axum::extract::Query;
    let (log, board) = (reports.log.clone(), reports.board.clone());
    axum::Router::new()
        .route(
            "/api/decisions",
            axum::routing::get(move |Query(q): Query<DecisionsQuery>| async move {
                axum::Json(crate::operator::decisions_json(
                    &log,
                    q.limit.unwrap_or(100),
                    q.policy.as_deref(),
                ))
            }),
        )
        .route(
            "/api/policies",
            axum::routing::get(move || async move { axum::Json(crate::operator::policies_json(&board)) }),
        )
}

/// The OTLP servers, gRPC and HTTP on their bound listeners, until `stop` turns true: TLS per
/// `collector.tls`, one cap on connections for both endpoints (the web port has none), and one request
/// path, `rx`, for both transports. `run` and `--role ingest` both serve OTLP through it.
pub(crate) fn serve_otlp(
    cfg: &tidewatch_collector::config::CollectorConfig,
    grpc: Option<TcpListener>,
    http: Option<TcpListener>,
    rx: Receiver,
    stats: &Arc<Stats>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinSet<anyhow::Result<()>>> {
    let tls = cfg
        .tls
        .as_ref()
        .map(server::rustls_config)
        .transpose()
        .context("collector.tls")?;
    let stopped = || {
        let mut r = stop.clone();
        async move {
            let _ = r.wait_for(|s| *s).await;
        }
    };
    let limit = ConnLimit::new(cfg.max_connections, stats.clone());
    let mut otlp = tokio::task::JoinSet::new();
    if let Some(l) = grpc {
        let tls_cfg = cfg.tls.clone();
        let (rx, stop, limit) = (rx.clone(), stopped(), limit.clone());
        otlp.spawn(async move {
            server::serve_grpc(l, rx, tls_cfg.as_ref(), &limit, stop)
                .await
                .context("OTLP/gRPC server")
        });
    }
    if let Some(l) = http {
        let router = tidewatch_collector::http::router(rx);
        let (stop, limit) = (stopped(), limit);
        otlp.spawn(async move {
            server::serve_http(l, router, tls, Some(limit), stop)
                .await
                .context("OTLP/HTTP server")
        });
    }
    Ok(otlp)
}
