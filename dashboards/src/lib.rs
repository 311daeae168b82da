//! Tidewatch's web side, served on the web port (default 8080): health and readiness probes, the
//! Prometheus `/metrics` endpoint (`prom.rs`, from analyzer snapshots), the JSON API (`api.rs`, from the
//! analyzer's history) and the web UI built on it (`ui.rs`: the dependency map, service pages, charts;
//! `scaling.rs`: the Scaling page's charts from the operator's decision log).
//!
//! Handlers only read: every request takes a fresh [`tidewatch_analyzer::Snapshot`] from the engine, which
//! includes everything accepted before the request arrived.

pub mod api;
pub mod auth;
pub mod prom;
pub mod scaling;
pub mod ui;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tidewatch_analyzer::Engine;
use tidewatch_analyzer::ingest::Ingest;

/// Extra text for `/metrics` from other parts of the program (the collector's counters, say).
pub type MetricsHook = Arc<dyn Fn(&mut String) + Send + Sync>;

/// What the web handlers read.
#[derive(Clone)]
pub struct WebState {
    pub engine: Arc<Engine>,
    pub ingest: Ingest,
    pub extra_metrics: Vec<MetricsHook>,
    /// Cleared when shutdown begins, so load balancers stop sending before the listeners close.
    pub ready: Arc<AtomicBool>,
    /// The operator's decisions (empty when it does not run), for the Scaling page's charts.
    pub decisions: Arc<tidewatch_scaler::decisions::DecisionLog>,
}

/// The web routes: probes, `/metrics` and [`views`].
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state.clone())
        .merge(views(state))
}

/// What is read from the engine's history, health and forecasts: the JSON API and the web UI (no probes,
/// no `/metrics`, for a role that exposes its own).
pub fn views(state: WebState) -> Router {
    Router::new()
        .route("/api/services", get(api::services))
        .route("/api/services/{name}/red", get(api::service_red))
        .route("/api/services/{name}/operations", get(api::operations))
        .route("/api/services/{name}/pods", get(api::pods))
        .route("/api/graph", get(api::graph))
        .route("/api/anomalies", get(api::anomalies))
        .route("/api/services/{name}/forecast", get(api::forecast))
        .route("/api/series", get(api::series))
        .route("/", get(ui::overview))
        .route("/map", get(ui::map))
        .route("/services/{name}", get(ui::service))
        .route("/scaling", get(ui::scaling))
        .route("/charts/policies/{namespace}/{name}/{file}", get(scaling::chart))
        .route("/charts/services/{name}/{file}", get(ui::chart))
        .route("/ui/{file}", get(ui::asset))
        .with_state(state)
}

async fn readyz(State(s): State<WebState>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(s): State<WebState>) -> Response {
    let snap = match s.engine.snapshot().await {
        Ok(snap) => snap,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    let mut out = String::with_capacity(64 * 1024);
    prom::render_snapshot(&mut out, &snap);
    prom::render_engine(&mut out, &s.ingest, s.engine.stats());
    prom::render_budget(&mut out, &s.engine.series_budget());
    prom::render_health(&mut out, &s.engine.health());
    for hook in &s.extra_metrics {
        hook(&mut out);
    }
    (
        [(header::CONTENT_TYPE, tidewatch_analyzer::exposition::CONTENT_TYPE)],
        out,
    )
        .into_response()
}
