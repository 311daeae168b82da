//! A partition's checkpoint: its cumulative totals at a window close, the record-time point to resume
//! from, and the earlier point a new owner replays from to rebuild the service graph's waiting halves.
//! Stored as JSON through `object_store` (a shared bucket or directory every analyzer can read), one
//! object per group, topic and partition, written whole (the local backend writes and renames).

use std::sync::Arc;

use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tidewatch_analyzer::graph::{ConnectionType, EdgeRow, GraphCounters};
use tidewatch_analyzer::partition::Totals;
use tidewatch_analyzer::records::{SpanKind, StatusCode};
use tidewatch_analyzer::red::{Histogram, RedRow};

use crate::{Error, Result};

/// Where a window began on a partition: its number, the offset of its first record, and the partition's
/// clock (record time, ms) after that record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowStart {
    pub window: u64,
    pub offset: i64,
    pub clock_ms: u64,
}

/// What a new owner needs to continue a partition exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Counted from offset 0 up to (not including) `resume.offset`.
    pub totals: Totals,
    /// The first record not counted in `totals`: the first of the window that was open.
    pub resume: WindowStart,
    /// Where replay starts to rebuild the waiting halves; records before `resume` are not counted again.
    pub replay: WindowStart,
}

/// The checkpoints of one consumer group and topic.
#[derive(Clone)]
pub struct Checkpoints {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl Checkpoints {
    /// Opens the store named by `url` (`file:///dir` creates the directory).
    pub fn open(url: &str, group: &str, topic: &str) -> Result<Checkpoints> {
        let parsed = url::Url::parse(url).map_err(|e| Error::Checkpoints(format!("`{url}`: {e}")))?;
        if parsed.scheme() == "file" {
            let dir = parsed
                .to_file_path()
                .map_err(|()| Error::Checkpoints(format!("`{url}` is not a local path")))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::Checkpoints(format!("creating {}: {e}", dir.display())))?;
        }
        let (store, base) =
            object_store::parse_url(&parsed).map_err(|e| Error::Checkpoints(format!("`{url}`: {e}")))?;
        let prefix = Path::from(format!("{base}/{group}/{topic}").trim_start_matches('/'));
        Ok(Checkpoints {
            store: Arc::from(store),
            prefix,
        })
    }

    fn path(&self, partition: i32) -> Path {
        self.prefix.clone().join(format!("{partition}.json"))
    }

    pub async fn load(&self, partition: i32) -> Result<Option<Checkpoint>> {
        match self
            .store
            .get_opts(&self.path(partition), GetOptions::default())
            .await
        {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(|e| Error::Checkpoints(e.to_string()))?;
                let stored: Stored = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Checkpoints(format!("partition {partition}: {e}")))?;
                Ok(Some(stored.into()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::Checkpoints(e.to_string())),
        }
    }

    pub async fn save(&self, partition: i32, c: &Checkpoint) -> Result<()> {
        let json = serde_json::to_vec(&Stored::from(c)).map_err(|e| Error::Checkpoints(e.to_string()))?;
        self.store
            .put_opts(
                &self.path(partition),
                PutPayload::from(json),
                PutOptions::default(),
            )
            .await
            .map_err(|e| Error::Checkpoints(e.to_string()))?;
        Ok(())
    }
}

// The stored form: plain fields, versioned.

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    resume: WindowStart,
    replay: WindowStart,
    spans: u64,
    red: Vec<StoredRed>,
    edges: Vec<StoredEdge>,
    graph: [u64; 7],
}

#[derive(Serialize, Deserialize)]
struct StoredHistogram {
    counts: Vec<f64>,
    sum: f64,
    count: f64,
}

#[derive(Serialize, Deserialize)]
struct StoredRed {
    service: String,
    span_name: String,
    kind: u8,
    status: u8,
    dims: Vec<String>,
    overflow: bool,
    calls: u64,
    duration: StoredHistogram,
}

#[derive(Serialize, Deserialize)]
struct StoredEdge {
    client: String,
    server: String,
    connection_type: String,
    dims: Vec<String>,
    total: f64,
    failed: f64,
    client_latency: StoredHistogram,
    server_latency: StoredHistogram,
    messaging_latency: StoredHistogram,
}

impl From<&Histogram> for StoredHistogram {
    fn from(h: &Histogram) -> StoredHistogram {
        StoredHistogram {
            counts: h.counts.clone(),
            sum: h.sum,
            count: h.count,
        }
    }
}

impl From<StoredHistogram> for Histogram {
    fn from(h: StoredHistogram) -> Histogram {
        Histogram {
            counts: h.counts,
            sum: h.sum,
            count: h.count,
        }
    }
}

fn connection_type(label: &str) -> ConnectionType {
    [
        ConnectionType::MessagingSystem,
        ConnectionType::Database,
        ConnectionType::VirtualNode,
    ]
    .into_iter()
    .find(|c| c.as_label() == label)
    .unwrap_or(ConnectionType::Direct)
}

impl From<&Checkpoint> for Stored {
    fn from(c: &Checkpoint) -> Stored {
        let g = &c.totals.graph;
        Stored {
            version: 1,
            resume: c.resume,
            replay: c.replay,
            spans: c.totals.spans,
            red: c
                .totals
                .red
                .iter()
                .map(|r| StoredRed {
                    service: r.service.to_string(),
                    span_name: r.span_name.to_string(),
                    kind: r.kind as u8,
                    status: r.status as u8,
                    dims: r.dims.iter().map(|d| d.to_string()).collect(),
                    overflow: r.overflow,
                    calls: r.calls,
                    duration: (&r.duration).into(),
                })
                .collect(),
            edges: c
                .totals
                .edges
                .iter()
                .map(|e| StoredEdge {
                    client: e.client.to_string(),
                    server: e.server.to_string(),
                    connection_type: e.connection_type.as_label().to_owned(),
                    dims: e.dims.iter().map(|d| d.to_string()).collect(),
                    total: e.total,
                    failed: e.failed,
                    client_latency: (&e.client_latency).into(),
                    server_latency: (&e.server_latency).into(),
                    messaging_latency: (&e.messaging_latency).into(),
                })
                .collect(),
            graph: [
                g.edges,
                g.expired_server,
                g.expired_client,
                g.expired_producer,
                g.expired_consumer,
                g.dropped_spans,
                g.pending,
            ],
        }
    }
}

impl From<Stored> for Checkpoint {
    fn from(s: Stored) -> Checkpoint {
        let [
            edges,
            expired_server,
            expired_client,
            expired_producer,
            expired_consumer,
            dropped_spans,
            pending,
        ] = s.graph;
        Checkpoint {
            resume: s.resume,
            replay: s.replay,
            totals: Totals {
                spans: s.spans,
                red: s
                    .red
                    .into_iter()
                    .map(|r| RedRow {
                        service: r.service.into(),
                        span_name: r.span_name.into(),
                        kind: SpanKind::from_i32(i32::from(r.kind)),
                        status: StatusCode::from_i32(i32::from(r.status)),
                        dims: r.dims.into_iter().map(Into::into).collect(),
                        overflow: r.overflow,
                        calls: r.calls,
                        duration: r.duration.into(),
                    })
                    .collect(),
                edges: s
                    .edges
                    .into_iter()
                    .map(|e| EdgeRow {
                        client: e.client.into(),
                        server: e.server.into(),
                        connection_type: connection_type(&e.connection_type),
                        dims: e.dims.into_iter().map(Into::into).collect(),
                        total: e.total,
                        failed: e.failed,
                        client_latency: e.client_latency.into(),
                        server_latency: e.server_latency.into(),
                        messaging_latency: e.messaging_latency.into(),
                    })
                    .collect(),
                graph: GraphCounters {
                    edges,
                    expired_server,
                    expired_client,
                    expired_producer,
                    expired_consumer,
                    dropped_spans,
                    pending,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_checkpoint_round_trips_through_the_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = Checkpoints::open(&url, "g", "otlp_spans").unwrap();
        assert!(store.load(3).await.unwrap().is_none());
        let c = Checkpoint {
            totals: Totals {
                spans: 5,
                red: vec![RedRow {
                    service: "a".into(),
                    span_name: "op".into(),
                    kind: SpanKind::Server,
                    status: StatusCode::Error,
                    dims: vec!["GET".into()],
                    overflow: false,
                    calls: 5,
                    duration: Histogram {
                        counts: vec![1.0, 4.0],
                        sum: 0.5,
                        count: 5.0,
                    },
                }],
                edges: Vec::new(),
                graph: GraphCounters {
                    edges: 2,
                    pending: 1,
                    ..GraphCounters::default()
                },
            },
            resume: WindowStart {
                window: 7,
                offset: 40,
                clock_ms: 7_000,
            },
            replay: WindowStart {
                window: 5,
                offset: 10,
                clock_ms: 5_001,
            },
        };
        store.save(3, &c).await.unwrap();
        assert_eq!(store.load(3).await.unwrap(), Some(c));
    }
}
