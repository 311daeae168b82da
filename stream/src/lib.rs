//! Tidewatch on Apache Kafka: two roles of the one binary that share the work of one process among many.
//!
//! ```text
//! OTLP ─▶ --role ingest: receivers (tidewatch-collector) ─▶ KafkaForward (producer.rs)
//!                         acks=all, idempotent; 503 / UNAVAILABLE until acknowledged
//!              topic otlp_spans, one message per trace, partition = sarama FNV-1a(hex trace id);
//!              otlp_metrics, otlp_logs: one message per resource, keyed by it
//!                                  ▼
//!         --role analyze: consumer group (consumer.rs) on the three topics; each assigned partition one
//!                         RecordTimeShard (tidewatch-analyzer: spans, or metric points and log records),
//!                         windows on the partition's record time; at each window
//!                         close: checkpoint (checkpoint.rs, object_store) then commit; every window
//!                         of wall time: the partition's progress to the same store
//!         global view (global.rs): every partition's latest counts from the store, summed, followed by
//!                         the analyzer's engine (history, anomalies, forecasts, UI, operator)
//! ```
//!
//! The analyzer knows nothing of Kafka: it gets batches and a clock in milliseconds.

pub mod checkpoint;
pub mod config;
pub mod consumer;
pub mod global;
pub mod partitioner;
pub mod producer;

use std::time::Duration;

use rdkafka::error::KafkaResult;
use rdkafka::metadata::Metadata;

pub use config::KafkaConfig;

/// The errors of the Kafka roles, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka.brokers: cannot reach {brokers}: {reason}")]
    Unreachable {
        brokers: String,
        reason: rdkafka::error::KafkaError,
    },
    #[error("kafka.topics: topic `{0}` does not exist (create it before starting)")]
    NoTopic(String),
    #[error("kafka client: {0}")]
    Client(String),
    #[error("kafka.security.sasl.password_file: {0}")]
    Secret(std::io::Error),
    #[error("kafka.checkpoints: {0}")]
    Checkpoints(String),
    #[error(
        "kafka.checkpoints: partition {partition} was claimed by a later owner (epoch {newer} > ours, {epoch})"
    )]
    Fenced { partition: i32, epoch: u64, newer: u64 },
    #[error("decoding a record: {0}")]
    Decode(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads `topic`'s partition count with `fetch` (a client's blocking metadata call, run off the async
/// threads); an unreachable cluster or a missing topic is an error naming it.
pub async fn partition_count(
    fetch: impl FnOnce(Duration) -> KafkaResult<Metadata> + Send + 'static,
    topic: &str,
    brokers: &[String],
) -> Result<i32> {
    let md = tokio::task::spawn_blocking(move || fetch(Duration::from_secs(10)))
        .await
        .map_err(|e| Error::Client(e.to_string()))?
        .map_err(|reason| Error::Unreachable {
            brokers: brokers.join(","),
            reason,
        })?;
    md.topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32)
        .ok_or_else(|| Error::NoTopic(topic.to_owned()))
}
