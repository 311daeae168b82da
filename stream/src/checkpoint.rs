//! A partition's checkpoint: its cumulative totals at a window close (spans' series on the traces topic,
//! metric rows and log counts on the metrics and logs topics), the service-graph halves still waiting
//! then, and the record-time point to resume from. Stored as JSON through `object_store` (a shared
//! bucket or directory every analyzer can read), written whole (the local backend writes and renames).
//!
//! Writes are fenced by epochs. A new owner of a partition *claims* it: it reads the checkpoint of the
//! highest epoch and creates the next epoch's object with it, create-if-absent
//! (`<group>/<topic>/<partition>/<epoch>.json`). From then on it writes only its own epoch's object, and
//! a reader takes the highest epoch. An earlier owner that still runs (a zombie, not yet told it lost the
//! partition) finds the higher epoch before each write and stops ([`Error::Fenced`]); a write of its that
//! races the claim lands under its own, lower epoch, which no reader takes again.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tidewatch_analyzer::graph::{ConnectionType, EdgeRow, GraphCounters, HalfName, PendingHalf};
use tidewatch_analyzer::partition::Totals;
use tidewatch_analyzer::records::{SpanKind, StatusCode};
use tidewatch_analyzer::red::{Histogram, PodRow, RedRow};
use tidewatch_analyzer::signals::{LogRow, MetricKind, MetricRow, severity_label};

use crate::config::KafkaConfig;
use crate::partitioner::lower_hex;
use crate::{Error, Result};
use tidewatch_collector::decode::Signal;

/// Where a window began on a partition: its number, the offset of its first record, and the partition's
/// clock (record time, ms) after that record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowStart {
    pub window: u64,
    pub offset: i64,
    pub clock_ms: u64,
}

/// What a new owner needs to continue a partition exactly, replaying nothing before `resume`.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Counted from offset 0 up to (not including) `resume.offset`.
    pub totals: Totals,
    /// The service-graph halves waiting at `resume`, deadlines in record time.
    pub pending: Vec<PendingHalf>,
    /// The first record not counted in `totals`: the first of the window that was open.
    pub resume: WindowStart,
}

/// A partition this instance claimed: the epoch its checkpoints are written under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub partition: i32,
    pub epoch: u64,
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

    /// The checkpoints of each of `kafka`'s topics, in `kafka.checkpoints` under `kafka.group`.
    pub fn open_all(kafka: &KafkaConfig) -> Result<BTreeMap<Signal, Checkpoints>> {
        Signal::ALL
            .into_iter()
            .map(|s| {
                Ok((
                    s,
                    Checkpoints::open(&kafka.checkpoints, &kafka.group, kafka.topics.name(s))?,
                ))
            })
            .collect()
    }

    fn dir(&self, partition: i32) -> Path {
        self.prefix.clone().join(partition.to_string())
    }

    fn path(&self, claim: Claim) -> Path {
        self.dir(claim.partition)
            .join(format!("{:020}.json", claim.epoch))
    }

    /// The epochs written for `partition`, lowest first.
    async fn epochs(&self, partition: i32) -> Result<Vec<u64>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.dir(partition)))
            .await
            .map_err(|e| Error::Checkpoints(e.to_string()))?;
        let mut epochs: Vec<u64> = listed
            .objects
            .iter()
            .filter_map(|o| o.location.filename()?.strip_suffix(".json")?.parse().ok())
            .collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// The stored form of the highest epoch's checkpoint (`null`: claimed, nothing saved yet).
    async fn latest(&self, partition: i32) -> Result<(u64, Vec<u8>)> {
        let Some(&epoch) = self.epochs(partition).await?.last() else {
            return Ok((0, b"null".to_vec()));
        };
        let path = self.path(Claim { partition, epoch });
        match self.store.get_opts(&path, GetOptions::default()).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(|e| Error::Checkpoints(e.to_string()))?;
                Ok((epoch, bytes.to_vec()))
            }
            Err(e) => Err(Error::Checkpoints(e.to_string())),
        }
    }

    /// The checkpoint a new owner would take now.
    pub async fn load(&self, partition: i32) -> Result<Option<Checkpoint>> {
        let (_, bytes) = self.latest(partition).await?;
        decode(partition, &bytes)
    }

    /// Claims `partition` for a new owner: the next epoch, holding the checkpoint of the one before, which
    /// is returned. Earlier epochs' objects are removed.
    pub async fn claim(&self, partition: i32) -> Result<(Claim, Option<Checkpoint>)> {
        for _ in 0..8 {
            let (epoch, bytes) = self.latest(partition).await?;
            let checkpoint = decode(partition, &bytes)?;
            let claim = Claim {
                partition,
                epoch: epoch + 1,
            };
            let create = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match self
                .store
                .put_opts(&self.path(claim), PutPayload::from(bytes), create)
                .await
            {
                Ok(_) => {
                    for old in self
                        .epochs(partition)
                        .await?
                        .into_iter()
                        .filter(|&e| e < claim.epoch)
                    {
                        let _ = self
                            .store
                            .delete(&self.path(Claim {
                                partition,
                                epoch: old,
                            }))
                            .await;
                    }
                    return Ok((claim, checkpoint));
                }
                // Another instance claimed the same epoch at the same time: read again.
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(Error::Checkpoints(e.to_string())),
            }
        }
        Err(Error::Checkpoints(format!(
            "partition {partition}: claimed by others eight times in a row"
        )))
    }

    /// Saves `c` under `claim`, unless a later owner has claimed the partition since.
    pub async fn save(&self, claim: Claim, c: &Checkpoint) -> Result<()> {
        if let Some(&newer) = self.epochs(claim.partition).await?.last()
            && newer > claim.epoch
        {
            return Err(Error::Fenced {
                partition: claim.partition,
                epoch: claim.epoch,
                newer,
            });
        }
        let json =
            serde_json::to_vec(&Some(Stored::from(c))).map_err(|e| Error::Checkpoints(e.to_string()))?;
        self.store
            .put_opts(&self.path(claim), PutPayload::from(json), PutOptions::default())
            .await
            .map_err(|e| Error::Checkpoints(e.to_string()))?;
        Ok(())
    }
}

impl Checkpoints {
    fn progress_path(&self, partition: i32) -> Path {
        self.dir(partition).join(PROGRESS)
    }

    /// Publishes what the owner of `partition` has counted so far, for the global view: the totals of
    /// `c`, which count every record before `c.resume.offset` (its waiting halves are left out: progress is
    /// read, never resumed from). Unfenced: whoever writes it, the totals up to an offset are the same
    /// (record time), so a reader keeps whichever covers more.
    pub async fn publish(&self, partition: i32, c: &Checkpoint) -> Result<()> {
        let stored = Stored::from(&Checkpoint {
            totals: c.totals.clone(),
            pending: Vec::new(),
            resume: c.resume,
        });
        let json = serde_json::to_vec(&Some(stored)).map_err(|e| Error::Checkpoints(e.to_string()))?;
        self.store
            .put_opts(
                &self.progress_path(partition),
                PutPayload::from(json),
                PutOptions::default(),
            )
            .await
            .map_err(|e| Error::Checkpoints(e.to_string()))?;
        Ok(())
    }

    /// Every partition with a checkpoint or progress in the store.
    pub async fn partitions(&self) -> Result<Vec<i32>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.prefix))
            .await
            .map_err(|e| Error::Checkpoints(e.to_string()))?;
        let mut parts: Vec<i32> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename()?.parse().ok())
            .collect();
        parts.sort_unstable();
        Ok(parts)
    }

    /// The most `partition` is known to have counted: its latest checkpoint or its owner's progress,
    /// whichever covers more records (the checkpoint when both cover the same), as the offset it counted
    /// up to and the totals.
    pub async fn counted(&self, partition: i32) -> Result<Option<(i64, Totals)>> {
        let checkpoint = self.load(partition).await?;
        let progress = match self
            .store
            .get_opts(&self.progress_path(partition), GetOptions::default())
            .await
        {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(|e| Error::Checkpoints(e.to_string()))?;
                decode(partition, &bytes)?
            }
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(Error::Checkpoints(e.to_string())),
        };
        Ok([checkpoint, progress]
            .into_iter()
            .flatten()
            .reduce(|a, b| if b.resume.offset > a.resume.offset { b } else { a })
            .map(|c| (c.resume.offset, c.totals)))
    }
}

/// The object holding a partition's progress, next to its epochs' checkpoints (not a number: never taken
/// for an epoch).
const PROGRESS: &str = "progress.json";

fn decode(partition: i32, bytes: &[u8]) -> Result<Option<Checkpoint>> {
    let stored: Option<Stored> = serde_json::from_slice(bytes)
        .map_err(|e| Error::Checkpoints(format!("partition {partition}: {e}")))?;
    Ok(stored.map(Into::into))
}

// The stored form: plain fields, versioned.

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    resume: WindowStart,
    spans: u64,
    red: Vec<StoredRed>,
    /// Absent in version 2 checkpoints.
    #[serde(default)]
    pods: Vec<StoredPod>,
    edges: Vec<StoredEdge>,
    graph: [u64; 7],
    pending: Vec<StoredHalf>,
    /// Absent before version 4.
    #[serde(default)]
    metrics: Vec<StoredMetric>,
    /// Absent before version 4.
    #[serde(default)]
    logs: Vec<StoredLog>,
}

/// A metric row whole, its cumulative-sum state included: a new owner continues the series from it.
#[derive(Serialize, Deserialize)]
struct StoredMetric {
    service: String,
    pod: String,
    name: String,
    counter: bool,
    points: u64,
    last_time_ns: u64,
    last_value: f64,
    increase: f64,
    last_start_ns: u64,
    seen_cumulative: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredLog {
    service: String,
    severity: String,
    records: u64,
}

impl From<&MetricRow> for StoredMetric {
    fn from(m: &MetricRow) -> StoredMetric {
        StoredMetric {
            service: m.service.to_string(),
            pod: m.pod.to_string(),
            name: m.name.to_string(),
            counter: m.kind == MetricKind::Counter,
            points: m.points,
            last_time_ns: m.last_time_ns,
            last_value: m.last_value,
            increase: m.increase,
            last_start_ns: m.last_start_ns,
            seen_cumulative: m.seen_cumulative,
        }
    }
}

impl From<StoredMetric> for MetricRow {
    fn from(m: StoredMetric) -> MetricRow {
        MetricRow {
            service: m.service.into(),
            pod: m.pod.into(),
            name: m.name.into(),
            kind: if m.counter {
                MetricKind::Counter
            } else {
                MetricKind::Gauge
            },
            points: m.points,
            last_time_ns: m.last_time_ns,
            last_value: m.last_value,
            increase: m.increase,
            last_start_ns: m.last_start_ns,
            seen_cumulative: m.seen_cumulative,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredName {
    Known(String),
    OverBudget,
}

#[derive(Serialize, Deserialize)]
struct StoredHalf {
    trace: String,
    id: String,
    deadline_ns: u64,
    client: Option<StoredName>,
    server: Option<StoredName>,
    connection_type: String,
    client_latency: f64,
    server_latency: f64,
    client_end_ns: u64,
    server_start_ns: u64,
    kind: u8,
    failed: bool,
    peer: Option<StoredName>,
    multiplier: f64,
    root: bool,
    dims: Vec<Option<StoredName>>,
}

impl From<&HalfName> for StoredName {
    fn from(n: &HalfName) -> StoredName {
        match n {
            HalfName::Known(s) => StoredName::Known(s.to_string()),
            HalfName::OverBudget => StoredName::OverBudget,
        }
    }
}

impl From<StoredName> for HalfName {
    fn from(n: StoredName) -> HalfName {
        match n {
            StoredName::Known(s) => HalfName::Known(s.into()),
            StoredName::OverBudget => HalfName::OverBudget,
        }
    }
}

/// `N` bytes from hex; anything else is all zeros (a half no span will ever match).
fn from_hex<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    if s.len() == 2 * N && s.is_ascii() {
        for (i, b) in out.iter_mut().enumerate() {
            match u8::from_str_radix(&s[2 * i..2 * i + 2], 16) {
                Ok(v) => *b = v,
                Err(_) => return [0u8; N],
            }
        }
    }
    out
}

impl From<&PendingHalf> for StoredHalf {
    fn from(h: &PendingHalf) -> StoredHalf {
        let name = |n: &Option<HalfName>| n.as_ref().map(StoredName::from);
        StoredHalf {
            trace: lower_hex(&h.trace),
            id: lower_hex(&h.id),
            deadline_ns: h.deadline.as_nanos().min(u128::from(u64::MAX)) as u64,
            client: name(&h.client),
            server: name(&h.server),
            connection_type: h.connection_type.as_label().to_owned(),
            client_latency: h.client_latency,
            server_latency: h.server_latency,
            client_end_ns: h.client_end_ns,
            server_start_ns: h.server_start_ns,
            kind: h.kind as u8,
            failed: h.failed,
            peer: name(&h.peer),
            multiplier: h.multiplier,
            root: h.root,
            dims: h.dims.iter().map(name).collect(),
        }
    }
}

impl From<StoredHalf> for PendingHalf {
    fn from(h: StoredHalf) -> PendingHalf {
        PendingHalf {
            trace: from_hex(&h.trace),
            id: from_hex(&h.id),
            deadline: std::time::Duration::from_nanos(h.deadline_ns),
            client: h.client.map(Into::into),
            server: h.server.map(Into::into),
            connection_type: connection_type(&h.connection_type),
            client_latency: h.client_latency,
            server_latency: h.server_latency,
            client_end_ns: h.client_end_ns,
            server_start_ns: h.server_start_ns,
            kind: SpanKind::from_i32(i32::from(h.kind)),
            failed: h.failed,
            peer: h.peer.map(Into::into),
            multiplier: h.multiplier,
            root: h.root,
            dims: h.dims.into_iter().map(|d| d.map(Into::into)).collect(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredHistogram {
    /// Per-bucket counts from bucket 0 up to the last non-empty one (checkpoints written before
    /// 2026-11-30 hold every bucket, trailing empty ones too: both load the same).
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
struct StoredPod {
    service: String,
    pod: String,
    calls: u64,
    errors: u64,
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
            counts: h.counts(0),
            sum: h.sum,
            count: h.count,
        }
    }
}

impl From<StoredHistogram> for Histogram {
    fn from(h: StoredHistogram) -> Histogram {
        Histogram::from_counts(&h.counts, h.sum, h.count)
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
            version: 4,
            metrics: c.totals.metrics.iter().map(StoredMetric::from).collect(),
            logs: c
                .totals
                .logs
                .iter()
                .map(|l| StoredLog {
                    service: l.service.to_string(),
                    severity: l.severity.to_owned(),
                    records: l.records,
                })
                .collect(),
            resume: c.resume,
            pending: c.pending.iter().map(StoredHalf::from).collect(),
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
            pods: c
                .totals
                .pods
                .iter()
                .map(|p| StoredPod {
                    service: p.service.to_string(),
                    pod: p.pod.to_string(),
                    calls: p.calls,
                    errors: p.errors,
                    duration: (&p.duration).into(),
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
            pending: s.pending.into_iter().map(PendingHalf::from).collect(),
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
                pods: s
                    .pods
                    .into_iter()
                    .map(|p| PodRow {
                        service: p.service.into(),
                        pod: p.pod.into(),
                        calls: p.calls,
                        errors: p.errors,
                        duration: p.duration.into(),
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
                metrics: s.metrics.into_iter().map(MetricRow::from).collect(),
                logs: s
                    .logs
                    .into_iter()
                    .map(|l| LogRow {
                        service: l.service.into(),
                        severity: severity_label(&l.severity),
                        records: l.records,
                    })
                    .collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &tempfile::TempDir) -> Checkpoints {
        let url = format!("file://{}", dir.path().display());
        Checkpoints::open(&url, "g", "otlp_spans").unwrap()
    }

    fn checkpoint(spans: u64, offset: i64) -> Checkpoint {
        Checkpoint {
            totals: Totals {
                spans,
                red: vec![RedRow {
                    service: "a".into(),
                    span_name: "op".into(),
                    kind: SpanKind::Server,
                    status: StatusCode::Error,
                    dims: Arc::from([Arc::from("GET")]),
                    overflow: false,
                    calls: spans,
                    duration: Histogram::from_counts(&[1.0, 4.0], 0.5, 5.0),
                }],
                pods: vec![PodRow {
                    service: "a".into(),
                    pod: "a-1".into(),
                    calls: spans,
                    errors: 1,
                    duration: Histogram::from_counts(&[2.0, 3.0], 0.25, 5.0),
                }],
                edges: Vec::new(),
                graph: GraphCounters {
                    edges: 2,
                    pending: 1,
                    ..GraphCounters::default()
                },
                metrics: vec![MetricRow {
                    service: "a".into(),
                    pod: "a-1".into(),
                    name: "requests".into(),
                    kind: MetricKind::Counter,
                    points: 3,
                    last_time_ns: 30,
                    last_value: 120.5,
                    increase: 20.5,
                    last_start_ns: 5,
                    seen_cumulative: true,
                }],
                logs: vec![LogRow {
                    service: "a".into(),
                    severity: "error",
                    records: spans,
                }],
            },
            pending: vec![PendingHalf {
                trace: [0xab; 16],
                id: [7; 8],
                deadline: std::time::Duration::from_millis(8_500),
                client: Some(HalfName::Known("a".into())),
                server: None,
                connection_type: ConnectionType::MessagingSystem,
                client_latency: 0.25,
                server_latency: 0.0,
                client_end_ns: 42,
                server_start_ns: 0,
                kind: SpanKind::Producer,
                failed: true,
                peer: Some(HalfName::OverBudget),
                multiplier: 0.5,
                root: false,
                dims: vec![Some(HalfName::Known("GET".into())), None],
            }],
            resume: WindowStart {
                window: 7,
                offset,
                clock_ms: 7_000,
            },
        }
    }

    #[tokio::test]
    async fn a_checkpoint_with_waiting_halves_round_trips_through_the_local_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        assert!(store.load(3).await.unwrap().is_none());
        let (claim, none) = store.claim(3).await.unwrap();
        assert_eq!((claim.epoch, none), (1, None));
        let c = checkpoint(5, 40);
        store.save(claim, &c).await.unwrap();
        assert_eq!(store.load(3).await.unwrap(), Some(c.clone()));
        assert!(store.load(4).await.unwrap().is_none(), "partitions are apart");
        let (next, got) = store.claim(3).await.unwrap();
        assert_eq!((next.epoch, got), (2, Some(c)));
    }

    #[test]
    fn a_version_3_checkpoint_reads_without_metrics_or_logs() {
        let mut v3 = serde_json::to_value(Stored::from(&checkpoint(5, 40))).unwrap();
        let o = v3.as_object_mut().unwrap();
        o.remove("metrics");
        o.remove("logs");
        o.insert("version".into(), 3.into());
        let got = decode(0, &serde_json::to_vec(&v3).unwrap()).unwrap().unwrap();
        let mut want = checkpoint(5, 40);
        want.totals.metrics.clear();
        want.totals.logs.clear();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn progress_counts_when_it_covers_more_than_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        assert!(store.partitions().await.unwrap().is_empty());
        assert_eq!(store.counted(2).await.unwrap(), None);
        let (claim, _) = store.claim(2).await.unwrap();
        // Claimed, nothing saved: the partition is listed, nothing counted yet.
        assert_eq!(store.partitions().await.unwrap(), vec![2]);
        assert_eq!(store.counted(2).await.unwrap(), None);
        store.save(claim, &checkpoint(5, 40)).await.unwrap();
        store.publish(7, &checkpoint(6, 41)).await.unwrap();
        assert_eq!(store.partitions().await.unwrap(), vec![2, 7]);
        assert_eq!(
            store.counted(7).await.unwrap(),
            Some((41, checkpoint(6, 41).totals))
        );
        // Progress behind the checkpoint (a previous owner's) and progress ahead of it.
        store.publish(2, &checkpoint(4, 30)).await.unwrap();
        assert_eq!(
            store.counted(2).await.unwrap(),
            Some((40, checkpoint(5, 40).totals))
        );
        store.publish(2, &checkpoint(9, 52)).await.unwrap();
        assert_eq!(
            store.counted(2).await.unwrap(),
            Some((52, checkpoint(9, 52).totals))
        );
        // Progress is never resumed from: a new owner takes the checkpoint, and the epochs ignore it.
        let (next, got) = store.claim(2).await.unwrap();
        assert_eq!((next.epoch, got), (2, Some(checkpoint(5, 40))));
    }

    #[tokio::test]
    async fn a_zombie_owner_cannot_overwrite_the_new_owners_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (store(&dir), store(&dir));
        let (zombie, _) = old.claim(0).await.unwrap();
        old.save(zombie, &checkpoint(5, 40)).await.unwrap();
        // The group moves the partition: the new owner claims it and resumes from the zombie's checkpoint.
        let (owner, got) = new.claim(0).await.unwrap();
        assert!(owner.epoch > zombie.epoch);
        assert_eq!(got, Some(checkpoint(5, 40)));
        // The zombie, not yet told, closes another window: refused, naming the later epoch.
        match old.save(zombie, &checkpoint(9, 80)).await {
            Err(Error::Fenced {
                partition: 0,
                epoch,
                newer,
            }) => {
                assert_eq!((epoch, newer), (zombie.epoch, owner.epoch));
            }
            other => panic!("the zombie's save went through: {other:?}"),
        }
        assert_eq!(new.load(0).await.unwrap(), Some(checkpoint(5, 40)));
        new.save(owner, &checkpoint(7, 60)).await.unwrap();
        // A write of the zombie that raced the claim lands under its own epoch: no reader takes it.
        let stray = serde_json::to_vec(&Some(Stored::from(&checkpoint(9, 80)))).unwrap();
        old.store
            .put_opts(&old.path(zombie), PutPayload::from(stray), PutOptions::default())
            .await
            .unwrap();
        assert_eq!(new.load(0).await.unwrap(), Some(checkpoint(7, 60)));
        let (third, got) = old.claim(0).await.unwrap();
        assert_eq!((third.epoch, got), (owner.epoch + 1, Some(checkpoint(7, 60))));
    }
}
