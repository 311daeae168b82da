//! The two roles of a deployment on Kafka (`--role ingest`, `--role analyze`); `app::run` starts them.
//! Both serve probes and `/metrics` with their own figures (an analyzer: its partitions' series, each
//! labelled with its partition, so Prometheus sums instances). An analyzer also serves the global view:
//! an engine following every partition's counts from the shared store (`tidewatch_stream::global`), read
//! by the same API, web UI and operator as `--role all`'s engine.

use std::collections::BTreeMap;
use std::fmt::Write;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tidewatch_analyzer::exposition::{self, Kind};
use tidewatch_collector::{Receiver, Stats};
use tidewatch_dashboards::prom::SignalRows;
use tidewatch_dashboards::{Chunked, MetricsHook, WebState, stream_metrics};
use tidewatch_stream::checkpoint::Checkpoints;
use tidewatch_stream::consumer::{self, ConsumerStats};
use tidewatch_stream::global::GlobalView;
use tidewatch_stream::producer::KafkaForward;
use tokio::sync::watch;

use crate::app::Listeners;
use crate::config::Config;

/// `/healthz`, `/readyz` and `/metrics` (what `metrics` writes, then what the scrape freed is given back
/// and the allocator's bytes are written).
fn web(ready: Arc<AtomicBool>, metrics: MetricsHook) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                stream_metrics(move |out| {
                    metrics(out);
                    crate::alloc::end_scrape(out);
                })
            }),
        )
}

fn counter(out: &mut impl Write, name: &str, help: &str, v: &AtomicU64) {
    exposition::single(out, name, Kind::Counter, help, v.load(Ordering::Relaxed));
}

/// `--role ingest`: the OTLP receivers, forwarding to Kafka.
pub async fn ingest(
    cfg: Config,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let forward = KafkaForward::connect(&cfg.kafka).await?;
    let stats = Arc::new(Stats::default());
    let ingest = tidewatch_analyzer::ingest::Ingest::detached(&cfg.analyzer);
    let rx = Receiver::new(&cfg.collector, ingest, stats.clone())
        .context("collector.auth")?
        .forwarding(forward.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut otlp = crate::app::serve_otlp(
        &cfg.collector,
        listeners.grpc,
        listeners.http,
        rx,
        &stats,
        &stop_rx,
    )?;
    let producer = forward.stats.clone();
    let collector_stats = stats.clone();
    let metrics: MetricsHook = Arc::new(move |out: &mut Chunked| {
        collector_stats.render(out);
        counter(
            out,
            "tidewatch_kafka_messages_acked_total",
            "Messages the Kafka cluster acknowledged.",
            &producer.messages_acked,
        );
        counter(
            out,
            "tidewatch_kafka_messages_failed_total",
            "Messages the Kafka cluster did not acknowledge in time.",
            &producer.messages_failed,
        );
        counter(
            out,
            "tidewatch_kafka_spans_acked_in_refused_total",
            "Spans of refused requests that Kafka acknowledged or may have written (handed to a broker, not acknowledged): a retry may count them twice.",
            &producer.spans_acked_in_refused,
        );
    });
    let (web_stop, web) = crate::app::serve_web(&cfg, listeners.web, web(ready.clone(), metrics))?;
    ready.store(true, Ordering::Relaxed);
    tracing::info!(brokers = %cfg.kafka.brokers.join(","), "tidewatch ingest is ready");
    tokio::select! {
        () = shutdown => tracing::info!("shutting down"),
        Some(res) = otlp.join_next() => res.context("OTLP server task")??,
    }
    ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    while let Some(res) = otlp.join_next().await {
        res.context("OTLP server task")??;
    }
    // Every request still running has been answered; this only waits for stragglers' reports.
    forward.flush(cfg.kafka.produce_timeout);
    let _ = web_stop.send(true);
    web.await.context("web server task")??;
    Ok(())
}

/// `--role analyze`: a member of the consumer group, serving its partitions' series on `/metrics` and the
/// global view (API, web UI, operator) of every partition.
pub async fn analyze(
    cfg: Config,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let published: consumer::Published = Arc::new(Mutex::new(BTreeMap::new()));
    let stats = Arc::new(ConsumerStats::default());
    let ready = Arc::new(AtomicBool::new(false));
    let reports = crate::operator::Reports::open(&cfg)?;
    let checkpoints = Checkpoints::open_all(&cfg.kafka)?;
    let global = Arc::new(GlobalView::new(checkpoints, cfg.analyzer.clone()));
    let engine = Arc::new(tidewatch_analyzer::follow(&cfg.analyzer, global.source()));
    let metrics: MetricsHook = {
        let (published, stats, acfg) = (published.clone(), stats.clone(), cfg.analyzer.clone());
        let operator = reports.metrics.clone();
        Arc::new(move |out: &mut Chunked| {
            let parts = published.lock().unwrap_or_else(|e| e.into_inner()).clone();
            tidewatch_dashboards::prom::render_snapshot(out, &consumer::snapshot(&acfg, &parts));
            // Metric and log rows, each with its partition's label (partition numbers are per topic, and
            // each family comes from one topic).
            let names: Vec<String> = parts.keys().map(|(_, p)| p.to_string()).collect();
            let labels: Vec<[(&str, &str); 1]> = names
                .iter()
                .map(|p| [(consumer::PARTITION_LABEL, p.as_str())])
                .collect();
            let signals: Vec<_> = parts
                .values()
                .zip(&labels)
                .map(|(t, l)| SignalRows {
                    labels: l,
                    metrics: &t.metrics,
                    logs: &t.logs,
                })
                .collect();
            tidewatch_dashboards::prom::render_signals(out, &signals);
            consumer_metrics(out, &stats);
            operator.render(out);
        })
    };
    let views = tidewatch_dashboards::views(WebState {
        engine: engine.clone(),
        ingest: tidewatch_analyzer::ingest::Ingest::detached(&cfg.analyzer),
        extra_metrics: Vec::new(),
        ready: ready.clone(),
        decisions: reports.log.clone(),
    });
    let router = web(ready.clone(), metrics)
        .merge(views)
        .merge(crate::app::operator_router(&reports));
    let (web_stop, web) = crate::app::serve_web(&cfg, listeners.web, router)?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let run = tokio::spawn(consumer::run(
        cfg.kafka.clone(),
        cfg.analyzer.clone(),
        published,
        stats,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    let (op_stop_tx, op_stop_rx) = watch::channel(false);
    let operator = crate::operator::spawn(&cfg, &engine, &reports, op_stop_rx);
    ready.store(true, Ordering::Relaxed);
    tracing::info!(group = %cfg.kafka.group, traces = %cfg.kafka.topics.traces, metrics = %cfg.kafka.topics.metrics,
        logs = %cfg.kafka.topics.logs, "tidewatch analyze is ready");
    tokio::pin!(run);
    let res = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            None
        }
        res = &mut run => Some(res),
    };
    ready.store(false, Ordering::Relaxed);
    // As in `--role all`: the operator first, then what feeds the engine, then the engine, the web side last.
    crate::operator::stop(&op_stop_tx, operator).await;
    let res = match res {
        Some(res) => Some(res),
        None => {
            let _ = stop_tx.send(true);
            tokio::time::timeout(Duration::from_secs(30), &mut run).await.ok()
        }
    };
    engine.shutdown().await;
    let _ = web_stop.send(true);
    web.await.context("web server task")??;
    match res {
        Some(r) => r.context("consumer task")?.map_err(Into::into),
        None => anyhow::bail!("the consumer did not stop within 30 s"),
    }
}

/// The consumer's own counters.
fn consumer_metrics(out: &mut impl Write, stats: &ConsumerStats) {
    counter(
        out,
        "tidewatch_kafka_records_total",
        "Records read from the traces, metrics and logs topics.",
        &stats.records,
    );
    counter(
        out,
        "tidewatch_kafka_records_replayed_total",
        "Records of the window a resumed partition's checkpoint left open (at most one window each).",
        &stats.records_replayed,
    );
    counter(
        out,
        "tidewatch_kafka_partitions_resumed_total",
        "Partitions taken over from a checkpoint.",
        &stats.partitions_resumed,
    );
    counter(
        out,
        "tidewatch_kafka_checkpoints_fenced_total",
        "Checkpoints not written because a later owner had claimed the partition.",
        &stats.checkpoints_fenced,
    );
    counter(
        out,
        "tidewatch_kafka_records_undecodable_total",
        "Records that were not OTLP requests of their topic's signal.",
        &stats.records_undecodable,
    );
    counter(
        out,
        "tidewatch_kafka_checkpoints_total",
        "Partition checkpoints written.",
        &stats.checkpoints,
    );
    counter(
        out,
        "tidewatch_kafka_checkpoint_failures_total",
        "Partition checkpoints that could not be written.",
        &stats.checkpoint_failures,
    );
    exposition::single(
        out,
        "tidewatch_kafka_partitions_owned",
        Kind::Gauge,
        "Partitions this instance owns.",
        stats.partitions_owned.load(Ordering::Relaxed),
    );
}
