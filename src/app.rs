//! Wiring: start the analyzer engine, put the receivers and the web side in front of it, serve until told
//! to stop, then stop in the order that loses nothing: readiness off, receivers stop accepting and finish
//! their requests, the engine drains its queues, the web side goes last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tidewatch_collector::{Receiver, Stats, server};
use tidewatch_dashboards::WebState;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;

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
        Ok(Listeners {
            grpc: if c.grpc.enabled {
                Some(bind("OTLP/gRPC", c.grpc.endpoint).await?)
            } else {
                None
            },
            http: if c.http.enabled {
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
    let (ingest, engine) = tidewatch_analyzer::start(&cfg.analyzer);
    let engine = Arc::new(engine);
    let stats = Arc::new(Stats::default());
    let rx = Receiver::new(&cfg.collector, ingest.clone(), stats.clone()).context("collector.auth")?;
    let tls = cfg
        .collector
        .tls
        .as_ref()
        .map(server::rustls_config)
        .transpose()
        .context("collector.tls")?;
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut r = stop_rx.clone();
        async move {
            let _ = r.wait_for(|s| *s).await;
        }
    };

    let mut otlp = tokio::task::JoinSet::new();
    if let Some(l) = listeners.grpc {
        let tls_cfg = cfg.collector.tls.clone();
        let (rx, stop) = (rx.clone(), stopped());
        otlp.spawn(async move {
            server::serve_grpc(l, rx, tls_cfg.as_ref(), stop)
                .await
                .context("OTLP/gRPC server")
        });
    }
    if let Some(l) = listeners.http {
        let router = tidewatch_collector::http::router(rx.clone());
        let (tls, stop) = (tls.clone(), stopped());
        otlp.spawn(async move {
            server::serve_http(l, router, tls, stop)
                .await
                .context("OTLP/HTTP server")
        });
    }
    drop(rx);

    let collector_stats = stats.clone();
    let web_state = WebState {
        engine: engine.clone(),
        ingest,
        extra_metrics: vec![Arc::new(move |out: &mut String| collector_stats.render(out))],
        ready: ready.clone(),
    };
    let mut web_router = tidewatch_dashboards::router(web_state);
    if let Some(auth) = &cfg.web.auth {
        let token = auth.resolve().context("web.auth")?;
        web_router = tidewatch_dashboards::auth::protect(web_router, token, auth.protect_metrics);
    }
    let (web_stop_tx, mut web_stop_rx) = watch::channel(false);
    let web = tokio::spawn(server::serve_http(listeners.web, web_router, None, async move {
        let _ = web_stop_rx.wait_for(|s| *s).await;
    }));

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
