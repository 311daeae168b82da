//! `--role analyze`: one member of the consumer group `kafka.group` reading `kafka.topics.traces`.
//!
//! Each assigned partition is one [`RecordTimeShard`], owned by this task alone. Its clock is the
//! partition's record time (the largest record timestamp so far), and windows of `analyzer.window` are
//! numbered on that clock. When a record opens a new window, the window that ends is closed: the
//! partition's cumulative totals, where the new window starts and where a successor must replay from are
//! written as a checkpoint ([`crate::checkpoint`]), then the replay offset is committed (manual commits).
//!
//! A new owner (after a crash or a rebalance) loads the checkpoint and starts at the replay offset, which
//! is the first record of the window two before the open one: with `service_graph.wait` at most one
//! window, every half edge still waiting at the close arrived in the last two windows, so replaying them
//! rebuilds exactly the waiting halves. Records before the resume offset only warm the shard up; their
//! counts are subtracted, so nothing is counted twice and nothing is lost.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tidewatch_analyzer::config::AnalyzerConfig;
use tidewatch_analyzer::partition::{RecordTimeShard, Totals};
use tidewatch_analyzer::records::{AttrKeys, SpanBatch};
use tidewatch_collector::decode::wire::decode_traces;

use crate::checkpoint::{Checkpoint, Checkpoints, WindowStart};
use crate::config::KafkaConfig;
use crate::{Error, Result};

/// The cumulative totals of every partition this instance owns, as `/metrics` renders them.
pub type Published = Arc<Mutex<BTreeMap<i32, Totals>>>;

/// Counts of the consumer, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub records: AtomicU64,
    pub records_undecodable: AtomicU64,
    pub records_replayed: AtomicU64,
    pub checkpoints: AtomicU64,
    pub checkpoint_failures: AtomicU64,
    pub partitions_owned: AtomicU64,
}

/// Which partitions the group gave us, each with the number of its assignment (a partition revoked and
/// given back is a new assignment: its state is loaded again).
#[derive(Default)]
struct Assignment {
    owned: Mutex<HashMap<i32, u64>>,
    next: AtomicU64,
}

struct Ctx(Arc<Assignment>);

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            let mut owned = self.0.owned.lock().unwrap_or_else(|e| e.into_inner());
            for e in tpl.elements() {
                owned.remove(&e.partition());
            }
            tracing::info!(revoked = tpl.count(), "kafka: partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            let mut owned = self.0.owned.lock().unwrap_or_else(|e| e.into_inner());
            for e in tpl.elements() {
                owned.insert(e.partition(), self.0.next.fetch_add(1, Ordering::Relaxed));
            }
            tracing::info!(assigned = tpl.count(), "kafka: partitions assigned");
        }
    }
}

/// One owned partition.
struct Part {
    assignment: u64,
    shard: RecordTimeShard,
    /// Totals at `resume` (from the checkpoint; empty for a partition read from its start).
    base: Totals,
    /// The shard's own totals when counting began (`None` while replaying records before `resume`).
    baseline: Option<Totals>,
    resume: i64,
    /// Records before this offset are skipped (the group's offset can trail the checkpoint).
    first: i64,
    window: u64,
    clock_ms: u64,
    /// Starts of the windows a successor may have to replay from, oldest first.
    starts: VecDeque<WindowStart>,
    dirty: bool,
}

impl Part {
    fn new(assignment: u64, cfg: &AnalyzerConfig, cp: Option<Checkpoint>, first_offset: i64) -> Part {
        let shard = RecordTimeShard::new(cfg);
        match cp {
            Some(cp) => Part {
                assignment,
                shard,
                base: cp.totals,
                baseline: None,
                resume: cp.resume.offset,
                first: cp.replay.offset,
                window: cp.replay.window,
                clock_ms: cp.replay.clock_ms,
                starts: VecDeque::from([cp.replay]),
                dirty: true,
            },
            None => Part {
                assignment,
                shard,
                base: Totals::default(),
                baseline: None,
                resume: first_offset,
                first: first_offset,
                window: 0,
                clock_ms: 0,
                starts: VecDeque::new(),
                dirty: true,
            },
        }
    }

    /// Everything counted on this partition from its first offset.
    fn totals(&self) -> Totals {
        match &self.baseline {
            Some(b) => self.base.plus(&self.shard.totals().minus(b)),
            None => self.base.clone(),
        }
    }

    /// Applies one record; returns the checkpoint to save when it closed a window.
    fn record(
        &mut self,
        offset: i64,
        ts_ms: u64,
        batch: Option<&SpanBatch>,
        window_ms: u64,
    ) -> Option<Checkpoint> {
        let clock = self.clock_ms.max(ts_ms);
        let w = clock / window_ms;
        let mut save = None;
        if w > self.window {
            self.shard.advance(clock);
            let start = WindowStart {
                window: w,
                offset,
                clock_ms: clock,
            };
            self.starts.push_back(start);
            while self.starts.len() > 1 && self.starts[0].window < w.saturating_sub(2) {
                self.starts.pop_front();
            }
            let counting = self.baseline.is_some();
            if offset >= self.resume && !counting {
                // Where the checkpoint this partition was loaded from was taken: counting starts here.
                self.baseline = Some(self.shard.totals());
            } else if counting {
                save = Some(Checkpoint {
                    totals: self.totals(),
                    resume: start,
                    replay: self.starts[0],
                });
            }
            self.window = w;
        }
        if self.baseline.is_none() && offset >= self.resume {
            self.baseline = Some(self.shard.totals());
        }
        self.clock_ms = clock;
        if let Some(b) = batch {
            self.shard.spans(b, clock);
        }
        self.dirty = true;
        save
    }
}

/// Runs the analyze role until `stop` resolves.
pub async fn run(
    kafka: KafkaConfig,
    analyzer: AnalyzerConfig,
    published: Published,
    stats: Arc<ConsumerStats>,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    let topic = kafka.topics.traces.clone();
    let checkpoints = Checkpoints::open(&kafka.checkpoints, &kafka.group, &topic)?;
    let assignment = Arc::new(Assignment::default());
    let session_ms = kafka.session_timeout.as_millis();
    let mut c = kafka.client_config().map_err(Error::Secret)?;
    c.set("group.id", &kafka.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", session_ms.to_string())
        .set("heartbeat.interval.ms", (session_ms / 3).max(100).to_string());
    let consumer: Arc<StreamConsumer<Ctx>> = Arc::new(
        c.create_with_context(Ctx(assignment.clone()))
            .map_err(|e| Error::Client(e.to_string()))?,
    );
    {
        let (cons, t) = (consumer.clone(), topic.clone());
        crate::partition_count(
            move |timeout| cons.fetch_metadata(Some(&t), timeout),
            &topic,
            &kafka.brokers,
        )
        .await?;
    }
    consumer
        .subscribe(&[&topic])
        .map_err(|e| Error::Client(e.to_string()))?;
    let keys: AttrKeys = RecordTimeShard::attr_keys(&analyzer);
    let window_ms = (analyzer.window.as_millis() as u64).max(1);
    let mut parts: HashMap<i32, Part> = HashMap::new();
    let mut publish = tokio::time::interval(Duration::from_millis(250));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = publish.tick() => {
                let owned = assignment.owned.lock().unwrap_or_else(|e| e.into_inner()).clone();
                parts.retain(|p, part| owned.get(p) == Some(&part.assignment));
                stats.partitions_owned.store(owned.len() as u64, Ordering::Relaxed);
                let mut out = published.lock().unwrap_or_else(|e| e.into_inner());
                out.retain(|p, _| parts.contains_key(p));
                for (p, part) in parts.iter_mut().filter(|(_, part)| part.dirty) {
                    out.insert(*p, part.totals());
                    part.dirty = false;
                }
            }
            msg = consumer.recv() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        // The client reconnects by itself; this only paces the loop while it does.
                        tracing::warn!(error = %e, "kafka: consume");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let (p, offset) = (msg.partition(), msg.offset());
                let Some(&assigned) = assignment.owned.lock().unwrap_or_else(|e| e.into_inner()).get(&p) else {
                    continue;
                };
                if parts.get(&p).is_none_or(|part| part.assignment != assigned) {
                    let cp = load(&checkpoints, p).await?;
                    match &cp {
                        Some(cp) if offset > cp.replay.offset => tracing::error!(partition = p, offset,
                            replay = cp.replay.offset, "kafka: records between the checkpoint and the group's offset are gone; counting from here"),
                        Some(cp) => tracing::info!(partition = p, replay = cp.replay.offset,
                            resume = cp.resume.offset, "kafka: partition resumed from its checkpoint"),
                        None => tracing::info!(partition = p, offset, "kafka: partition started without a checkpoint"),
                    }
                    parts.insert(p, Part::new(assigned, &analyzer, cp, offset));
                }
                let part = parts.get_mut(&p).expect("inserted above");
                if offset < part.first {
                    continue;
                }
                if offset < part.resume {
                    stats.records_replayed.fetch_add(1, Ordering::Relaxed);
                }
                stats.records.fetch_add(1, Ordering::Relaxed);
                let ts = msg.timestamp().to_millis().unwrap_or(0).max(0) as u64;
                let batch = match decode_traces(Bytes::copy_from_slice(msg.payload().unwrap_or_default()), &keys) {
                    Ok((b, _)) => Some(b),
                    Err(e) => {
                        stats.records_undecodable.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(partition = p, offset, error = %e, "kafka: record is not an OTLP traces request");
                        None
                    }
                };
                if let Some(cp) = part.record(offset, ts, batch.as_ref(), window_ms) {
                    match checkpoints.save(p, &cp).await {
                        Ok(()) => {
                            stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                            let mut tpl = TopicPartitionList::new();
                            let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(cp.replay.offset));
                            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                                tracing::warn!(partition = p, error = %e, "kafka: commit failed");
                            }
                        }
                        Err(e) => {
                            // The next window close tries again; until then a successor replays more.
                            stats.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(partition = p, error = %e, "kafka: checkpoint not saved");
                        }
                    }
                }
            }
        }
    }
    consumer.unsubscribe();
    Ok(())
}

/// Loads a partition's checkpoint, retrying with backoff while the store does not answer.
async fn load(checkpoints: &Checkpoints, p: i32) -> Result<Option<Checkpoint>> {
    let mut wait = Duration::from_millis(100);
    for _ in 0..8 {
        match checkpoints.load(p).await {
            Ok(cp) => return Ok(cp),
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "kafka: checkpoint not loaded; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    checkpoints.load(p).await
}

/// The totals of all owned partitions as one snapshot, each series labelled `tidewatch_partition`.
pub fn snapshot(cfg: &AnalyzerConfig, parts: &BTreeMap<i32, Totals>) -> tidewatch_analyzer::Snapshot {
    use tidewatch_analyzer::graph::GraphStore;
    let label = |dims: &[String]| -> Arc<[String]> {
        dims.iter()
            .cloned()
            .chain(std::iter::once(PARTITION_LABEL.to_owned()))
            .collect()
    };
    let mut snap = tidewatch_analyzer::Snapshot {
        taken_at: std::time::SystemTime::now(),
        red: Vec::new(),
        red_bounds: cfg.span_metrics.bounds().into(),
        red_unit: cfg.span_metrics.unit,
        red_dimensions: label(&cfg.span_metrics.dimensions),
        pods: Vec::new(),
        edges: Vec::new(),
        graph_bounds: cfg.service_graph.bounds().into(),
        graph_dimensions: label(&GraphStore::dimension_labels(&cfg.service_graph)),
        graph_config: Arc::new(cfg.service_graph.clone()),
        graph: Default::default(),
        metrics: Vec::new(),
        logs: Vec::new(),
    };
    for (p, t) in parts {
        let p: Arc<str> = p.to_string().into();
        snap.red.extend(t.red.iter().cloned().map(|mut r| {
            r.dims.push(p.clone());
            r
        }));
        snap.edges.extend(t.edges.iter().cloned().map(|mut e| {
            e.dims.push(p.clone());
            e
        }));
        snap.graph.add(&t.graph);
    }
    snap
}

/// The label every analyze-role series carries: the partition it was counted on.
pub const PARTITION_LABEL: &str = "tidewatch_partition";

#[cfg(test)]
mod tests {
    use super::*;
    use tidewatch_analyzer::records::{Resource, Span, SpanKind};

    fn batch(spans: &[(u8, SpanKind, u8)]) -> SpanBatch {
        let mut b = SpanBatch::default();
        let service = b.push_text("svc");
        b.resources.push(Resource {
            service,
            pod: Default::default(),
            namespace: Default::default(),
            attr_start: 0,
            attr_len: 0,
        });
        for &(id, kind, parent) in spans {
            let name = b.push_text("op");
            let mut s = Span {
                name,
                kind,
                start_ns: 1,
                end_ns: 2,
                ..Span::default()
            };
            s.trace_id = [id; 16];
            s.span_id = [id; 8];
            if parent != 0 {
                s.trace_id = [parent; 16];
                s.parent_span_id = [parent; 8];
            }
            b.spans.push(s);
        }
        b
    }

    /// A log of records: (record time ms, spans). Client i and its server arrive 1.5 windows apart.
    fn log() -> Vec<(u64, SpanBatch)> {
        (0..60u8)
            .map(|i| {
                let t = 1_000 + u64::from(i) * 400;
                let spans = if i % 3 == 0 {
                    vec![(i + 1, SpanKind::Client, 0)]
                } else if i % 3 == 2 && i >= 2 {
                    vec![(200, SpanKind::Server, i - 1), (i + 100, SpanKind::Internal, 0)]
                } else {
                    vec![(i + 100, SpanKind::Server, 0)]
                };
                (t, batch(&spans))
            })
            .collect()
    }

    /// Every count of the totals; histogram sums are floats added in another order, so they are left out.
    fn exact(t: &Totals) -> Vec<(String, Vec<f64>)> {
        let h = |h: &tidewatch_analyzer::red::Histogram| {
            h.counts.iter().copied().chain([h.count]).collect::<Vec<f64>>()
        };
        t.red
            .iter()
            .map(|r| {
                (
                    format!("{:?}", r.key()),
                    [vec![r.calls as f64], h(&r.duration)].concat(),
                )
            })
            .chain(t.edges.iter().map(|e| {
                let v = [
                    vec![e.total, e.failed],
                    h(&e.client_latency),
                    h(&e.server_latency),
                ]
                .concat();
                (format!("{:?}", e.key()), v)
            }))
            .collect()
    }

    #[test]
    fn a_successor_from_any_checkpoint_ends_with_the_same_totals() {
        let cfg = AnalyzerConfig {
            window: Duration::from_secs(1),
            service_graph: tidewatch_analyzer::config::GraphConfig {
                wait: Duration::from_secs(1),
                ..Default::default()
            },
            ..Default::default()
        };
        let log = log();
        let run_from = |start: usize, cp: Option<Checkpoint>| {
            let mut part = Part::new(0, &cfg, cp, start as i64);
            let mut cps = Vec::new();
            for (o, (t, b)) in log.iter().enumerate().skip(start) {
                if let Some(c) = part.record(o as i64, *t, Some(b), 1_000) {
                    cps.push(c);
                }
            }
            (part.totals(), cps)
        };
        let (reference, checkpoints) = run_from(0, None);
        assert!(checkpoints.len() > 5);
        assert!(reference.edges.iter().map(|e| e.total).sum::<f64>() > 0.0);
        for cp in checkpoints {
            let (t, _) = run_from(cp.replay.offset as usize, Some(cp.clone()));
            assert_eq!(t.spans, reference.spans, "from {:?}", cp.resume);
            assert_eq!(exact(&t), exact(&reference), "from {:?}", cp.resume);
            assert_eq!(t.graph, reference.graph, "from {:?}", cp.resume);
        }
    }
}
