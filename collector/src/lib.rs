//! Tidewatch's OTLP receivers. Stateless: they decode, validate and convert each request in its own task
//! and push the result into the analyzer's bounded queues; everything stateful lives in the analyzer.
//!
//! ```text
//! gRPC :4317 (tonic, grpc.rs) ─┐  body read, prefix stripped (own framing)
//! HTTP :4318 (axum, http.rs) ──┤  content type, encoding; both: Receiver::read_body, body.rs
//!                              ▼
//!            Receiver::export (receiver.rs): reserve memory → decode (decode/) → Ingest::try_send_*
//!                              │ refused → HTTP 503 + Retry-After / gRPC UNAVAILABLE
//!                              ▼
//!            analyzer shard queues
//! ```
//!
//! Bodies are read under one shared byte budget (`budget.rs`), so memory stays bounded however many
//! clients connect. `server.rs` serves both, plain or TLS, with graceful shutdown; `stats.rs` counts what happened.

pub mod body;
pub mod budget;
pub mod config;
pub mod decode;
mod error;
pub mod grpc;
pub mod http;
pub mod limit;
pub mod receiver;
pub mod server;
pub mod stats;

pub use config::CollectorConfig;
pub use error::{Error, Result};
pub use receiver::Receiver;
pub use stats::Stats;
