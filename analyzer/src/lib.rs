//! Tidewatch's domain: what spans, metric points and log records mean, with no knowledge of the wire
//! (OTLP lives in the collector) or of Kubernetes (the scaler).
//!
//! ```text
//! collector ──Ingest::try_send_*──▶ shard queues (bounded, memory-capped)      ingest.rs
//!                                      │ one task per shard, sole owner of its state   engine.rs
//!                                      ├─ RedTable   calls/errors/duration per series   red.rs
//!                                      ├─ GraphStore client/server pairing → edges     graph.rs
//!                                      └─ Signals    metric points, log severities     signals.rs
//! readers ◀── Engine::snapshot(): immutable merged Snapshot
//! every window: snapshot deltas → History (native columns, rollups, Parquet)      store/
//! readers ◀── Engine::history(): immutable HistoryView (services, RED over time, edges, series)
//! ```
//!
//! `records` holds the records (a zero-copy `SpanBatch` for spans), `config` the settings, `intern` the
//! string interning that keeps the per-span path free of allocation.

pub mod budget;
pub mod config;
pub mod engine;
pub mod exposition;
pub mod forecast;
pub mod graph;
pub mod health;
pub mod inflight;
pub mod ingest;
pub mod intern;
pub mod models;
pub mod partition;
pub mod records;
pub mod red;
pub mod rootcause;
pub mod shard;
pub mod signals;
pub mod snapshot;
pub mod store;

pub use engine::{Engine, SnapshotSource, follow, start};
pub use snapshot::Snapshot;

/// The analyzer's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the analyzer engine has stopped")]
    Stopped,
    #[error("history store: {0}")]
    Store(String),
    #[error("snapshot source: {0}")]
    Source(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
