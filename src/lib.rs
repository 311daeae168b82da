//! The `tidewatch` binary's library half: CLI, configuration, wiring (`app`), and the load generator with
//! its microservice model. The member crates hold the real work: `tidewatch-collector` (OTLP in),
//! `tidewatch-analyzer` (the domain), `tidewatch-dashboards` (web), `tidewatch-scaler` (Kubernetes),
//! `tidewatch-stream` (Kafka), `tidewatch-eval` (NAB and forecast backtests).

pub mod alloc;
pub mod app;
#[cfg(test)]
mod architecture;
pub mod cli;
pub mod config;
pub mod demo;
pub mod forecast_eval;
pub mod loadgen;
pub mod nab;
pub mod operator;
pub mod progress;
pub mod roles;
pub mod simulate;
pub mod topology;

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

/// `tidewatch demo`: Tidewatch with the shop's backfilled history, its live traffic (sent to its own
/// OTLP/gRPC port) and the operator on a simulated cluster ([`demo`]). The demo keeps its history and
/// decision log in memory (`analyzer.store.data_dir` is ignored): every run starts from the same past.
pub async fn demo(mut cfg: Config, args: cli::DemoArgs) -> anyhow::Result<()> {
    demo::configure(&mut cfg);
    let listeners = app::Listeners::bind(&cfg).await?;
    println!("tidewatch listening {}", listeners.describe());
    let grpc = listeners.grpc.as_ref().map(|l| l.local_addr()).transpose()?;
    let Some(grpc) = grpc else {
        anyhow::bail!("the demo sends over OTLP/gRPC: enable collector.grpc")
    };
    let web = listeners.web.local_addr()?;
    println!(
        "demo: the shop sends {} spans/s at its daily mean; open http://127.0.0.1:{}/",
        args.rate,
        web.port()
    );
    let demo = demo::Demo::new(&cfg, args, grpc)?;
    app::run_with(cfg, listeners, Some(demo), shutdown_signal()).await
}
