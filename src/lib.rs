//! The `tidewatch` binary's library half: CLI, configuration, wiring (`app`), and the load generator with
//! its microservice model. The member crates hold the real work: `tidewatch-collector` (OTLP in),
//! `tidewatch-analyzer` (the domain), `tidewatch-dashboards` (web), `tidewatch-scaler` (Kubernetes).

pub mod app;
pub mod cli;
pub mod config;
pub mod forecast_eval;
pub mod loadgen;
pub mod nab;
pub mod operator;
pub mod roles;
pub mod simulate;
pub mod topology;

use std::time::Duration;

use config::Config;

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends before it kills a pod).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// `tidewatch demo`: Tidewatch plus the shop's traffic, sent to its own OTLP/gRPC port.
pub async fn demo(cfg: Config, args: cli::DemoArgs) -> anyhow::Result<()> {
    let listeners = app::Listeners::bind(&cfg).await?;
    println!("tidewatch listening {}", listeners.describe());
    let grpc = listeners.grpc.as_ref().map(|l| l.local_addr()).transpose()?;
    let Some(grpc) = grpc else {
        anyhow::bail!("the demo sends over OTLP/gRPC: enable collector.grpc")
    };
    let web = listeners.web.local_addr()?;
    let load = loadgen::LoadArgs {
        endpoint: Some(format!("http://127.0.0.1:{}", grpc.port())),
        protocol: loadgen::Protocol::Grpc,
        encoding: loadgen::Encoding::Protobuf,
        rate: args.rate,
        duration: Duration::ZERO,
        batch: 200,
        concurrency: 2,
        day: args.day,
        incidents: args.incidents,
        metrics_and_logs: true,
        token: cfg.collector.auth.as_ref().and_then(|a| a.resolve().ok()),
        seed: 1,
        json: false,
    };
    println!(
        "demo traffic: {} spans/s from the shop; metrics at http://127.0.0.1:{}/metrics",
        args.rate,
        web.port()
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(async move {
        // Give the receivers a moment to start accepting.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut stop = stop_rx;
        loadgen::run(load, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
    });
    let result = app::run(cfg, listeners, async {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    })
    .await;
    if let Ok(Ok(report)) = traffic.await {
        loadgen::print(&report, false);
    }
    result
}
