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

use std::convert::Infallible;
use std::fmt::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tidewatch_analyzer::Engine;
use tidewatch_analyzer::ingest::Ingest;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Extra text for `/metrics` from other parts of the program (the collector's counters, say), written
/// into the streamed answer.
pub type MetricsHook = Arc<dyn Fn(&mut Chunked) + Send + Sync>;

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

/// `/metrics` goes to the client in chunks of about this many bytes as it is rendered, so its answer is
/// never held whole (tens of MB at 20,000 series). Up to four chunks are alive at once (the one being
/// written, two queued, one being sent), and what a scrape allocates stays in the allocator's pages: at
/// 64 KiB that was 280 KB of the heap's peak for any `/metrics` past a few hundred series.
const METRICS_CHUNK: usize = 16 * 1024;

/// Text written into a response body in chunks of about [`METRICS_CHUNK`] bytes, through a channel of
/// two: rendering waits for a slow client instead of piling text up, and stops when the client is gone.
pub struct Chunked {
    buf: String,
    tx: mpsc::Sender<Result<String, Infallible>>,
    gone: bool,
}

impl Chunked {
    /// The writer, and the body its chunks become.
    fn new() -> (Chunked, Body) {
        let (tx, rx) = mpsc::channel(2);
        let out = Chunked {
            buf: String::new(),
            tx,
            gone: false,
        };
        (out, Body::from_stream(ReceiverStream::new(rx)))
    }

    /// Hands the text written so far to the body (from a blocking thread).
    fn send(&mut self) {
        let chunk = std::mem::take(&mut self.buf);
        if !chunk.is_empty() && self.tx.blocking_send(Ok(chunk)).is_err() {
            self.gone = true;
        }
    }
}

/// A `/metrics` answer that `render` writes on a blocking thread, streamed to the client as it is written
/// (every role's `/metrics` goes through here).
pub fn stream_metrics(render: impl FnOnce(&mut Chunked) + Send + 'static) -> Response {
    let (mut out, body) = Chunked::new();
    tokio::task::spawn_blocking(move || {
        render(&mut out);
        out.send();
    });
    (
        [(header::CONTENT_TYPE, tidewatch_analyzer::exposition::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

impl Write for Chunked {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.gone {
            return Err(fmt::Error);
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(METRICS_CHUNK + 4096);
        }
        self.buf.push_str(s);
        if self.buf.len() >= METRICS_CHUNK {
            self.send();
        }
        Ok(())
    }
}

async fn metrics(State(s): State<WebState>) -> Response {
    let snap = match s.engine.snapshot().await {
        Ok(snap) => snap,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    stream_metrics(move |out| {
        prom::render_snapshot(out, &snap);
        drop(snap);
        prom::render_engine(out, &s.ingest, s.engine.stats());
        if let Some(budget) = s.engine.series_budget() {
            prom::render_budget(out, &budget);
        }
        prom::render_health(out, &s.engine.health());
        for hook in &s.extra_metrics {
            hook(out);
        }
    })
}
