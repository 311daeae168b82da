//! `--role analyze`: one member of the consumer group `kafka.group` reading `kafka.topics.traces`,
//! `kafka.topics.metrics` and `kafka.topics.logs`.
//!
//! Each assigned partition (of any of the three topics; partition numbers are per topic, so a partition is
//! named by its signal and number) is one [`RecordTimeShard`], owned by this task alone: spans feed its
//! RED table and service graph, metric points and log records the engine's `Signals`. Its clock is the
//! partition's record time (the largest record timestamp so far), and windows of `analyzer.window` are
//! numbered on that clock. When a record opens a new window, the window that ends is closed: the
//! partition's cumulative totals (metric rows whole, with what turns cumulative sums into increases), the
//! service-graph halves still waiting and where the new window starts are written as a checkpoint
//! ([`crate::checkpoint`]), then that offset is committed (manual commits).
//!
//! A new owner (after a crash or a rebalance) claims the partition's checkpoints (fencing the previous
//! owner's writes), loads the latest, takes its waiting halves and metric and log rows back and starts at
//! its resume offset: it reads again at most the window that was open, and counts every record once.

use std::collections::{BTreeMap, HashMap, HashSet};
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
use tidewatch_analyzer::records::AttrKeys;
use tidewatch_collector::decode::{Decoded, Format, Signal, decode};

use crate::checkpoint::{Checkpoint, Checkpoints, Claim, WindowStart};
use crate::config::{KafkaConfig, Topics};
use crate::{Error, Result};

/// A partition of one of the topics read: the signal its topic carries, and its number in that topic.
pub type PartitionId = (Signal, i32);

/// The cumulative totals of every partition this instance owns, as `/metrics` renders them.
pub type Published = Arc<Mutex<BTreeMap<PartitionId, Totals>>>;

/// Counts of the consumer, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub records: AtomicU64,
    pub records_undecodable: AtomicU64,
    pub records_replayed: AtomicU64,
    pub partitions_resumed: AtomicU64,
    pub checkpoints_fenced: AtomicU64,
    pub checkpoints: AtomicU64,
    pub checkpoint_failures: AtomicU64,
    pub partitions_owned: AtomicU64,
}

/// Which partitions the group gave us, each with the number of its assignment (a partition revoked and
/// given back is a new assignment: its state is loaded again).
struct Assignment {
    topics: Topics,
    owned: Mutex<HashMap<PartitionId, u64>>,
    next: AtomicU64,
}

struct Ctx(Arc<Assignment>);

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            let mut owned = self.0.owned.lock().unwrap_or_else(|e| e.into_inner());
            for e in tpl.elements() {
                if let Some(s) = self.0.topics.signal(e.topic()) {
                    owned.remove(&(s, e.partition()));
                }
            }
            tracing::info!(revoked = tpl.count(), "kafka: partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            let mut owned = self.0.owned.lock().unwrap_or_else(|e| e.into_inner());
            for e in tpl.elements() {
                if let Some(s) = self.0.topics.signal(e.topic()) {
                    owned.insert((s, e.partition()), self.0.next.fetch_add(1, Ordering::Relaxed));
                }
            }
            tracing::info!(assigned = tpl.count(), "kafka: partitions assigned");
        }
    }
}

/// One owned partition.
struct Part {
    assignment: u64,
    claim: Claim,
    shard: RecordTimeShard,
    /// Totals at `first` (from the checkpoint; empty for a partition read from its start).
    base: Totals,
    /// The shard's own totals when counting began (its restored waiting halves, or nothing).
    baseline: Totals,
    /// Records before this offset are skipped (the group's offset can trail the checkpoint).
    first: i64,
    window: u64,
    clock_ms: u64,
    /// Reading the window the checkpoint left open, which the previous owner may have read already.
    reread: bool,
    /// After a seek back to the resume offset: records are skipped until that one arrives (records fetched
    /// before the seek may still be delivered first).
    awaiting: Option<i64>,
    /// The last offset counted: a record at or before it is a redelivery, never counted twice.
    last: i64,
    /// The offset the last progress published counts up to (see [`Checkpoints::publish`]).
    published: i64,
    dirty: bool,
}

impl Part {
    fn new(
        assignment: u64,
        claim: Claim,
        cfg: &AnalyzerConfig,
        cp: Option<Checkpoint>,
        first_offset: i64,
    ) -> Part {
        let mut shard = RecordTimeShard::new(cfg);
        let (base, first, window, clock_ms, reread) = match cp {
            Some(cp) => {
                shard.restore(cp.pending, cp.totals.metrics.clone(), cp.totals.logs.clone());
                (
                    cp.totals,
                    cp.resume.offset,
                    cp.resume.window,
                    cp.resume.clock_ms,
                    true,
                )
            }
            None => (Totals::default(), first_offset, 0, 0, false),
        };
        Part {
            assignment,
            claim,
            baseline: shard.totals(),
            shard,
            base,
            first,
            window,
            clock_ms,
            reread,
            awaiting: None,
            last: -1,
            published: -1,
            dirty: true,
        }
    }

    /// Everything counted on this partition from its first offset. The shard's metric and log rows are
    /// whole already (it continued the checkpoint's).
    fn totals(&self) -> Totals {
        let now = self.shard.totals();
        let mut t = self.base.plus(&now.minus(&self.baseline));
        t.graph.pending = now.graph.pending;
        t.metrics = now.metrics;
        t.logs = now.logs;
        t
    }

    /// What has been counted so far, for [`Checkpoints::publish`], if it covers more than the last one.
    fn progress(&self) -> Option<Checkpoint> {
        let covered = self.last + 1;
        (self.last >= 0 && covered > self.published).then(|| Checkpoint {
            totals: self.totals(),
            pending: Vec::new(),
            resume: WindowStart {
                window: self.window,
                offset: covered,
                clock_ms: self.clock_ms,
            },
        })
    }

    /// Applies one record; returns the checkpoint to save when it closed a window.
    fn record(
        &mut self,
        offset: i64,
        ts_ms: u64,
        records: Option<&Decoded>,
        window_ms: u64,
    ) -> Option<Checkpoint> {
        let clock = self.clock_ms.max(ts_ms);
        let w = clock / window_ms;
        let mut save = None;
        if w > self.window {
            self.shard.advance(clock);
            save = Some(Checkpoint {
                totals: self.totals(),
                pending: self.shard.pending(),
                resume: WindowStart {
                    window: w,
                    offset,
                    clock_ms: clock,
                },
            });
            self.window = w;
            self.reread = false;
        }
        self.clock_ms = clock;
        match records {
            Some(Decoded::Spans(b)) => self.shard.spans(b, clock),
            Some(Decoded::Metrics(b)) => self.shard.metrics(b),
            Some(Decoded::Logs(b)) => self.shard.logs(b),
            None => {}
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
    let topics = kafka.topics.clone();
    let stores = Checkpoints::open_all(&kafka)?;
    let assignment = Arc::new(Assignment {
        topics: topics.clone(),
        owned: Mutex::default(),
        next: AtomicU64::new(0),
    });
    let session_ms = kafka.session_timeout.as_millis();
    let mut c = kafka.client_config().map_err(Error::Secret)?;
    c.set("group.id", &kafka.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Only messages of committed transactions: a refused request's messages are never counted.
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", session_ms.to_string())
        .set("heartbeat.interval.ms", (session_ms / 3).max(100).to_string());
    let consumer: Arc<StreamConsumer<Ctx>> = Arc::new(
        c.create_with_context(Ctx(assignment.clone()))
            .map_err(|e| Error::Client(e.to_string()))?,
    );
    for signal in Signal::ALL {
        let (cons, t) = (consumer.clone(), topics.name(signal).to_owned());
        crate::partition_count(
            move |timeout| cons.fetch_metadata(Some(&t), timeout),
            topics.name(signal),
            &kafka.brokers,
        )
        .await?;
    }
    consumer
        .subscribe(&Signal::ALL.map(|s| topics.name(s)))
        .map_err(|e| Error::Client(e.to_string()))?;
    let keys: AttrKeys = RecordTimeShard::attr_keys(&analyzer);
    let window_ms = (analyzer.window.as_millis() as u64).max(1);
    let mut parts: HashMap<PartitionId, Part> = HashMap::new();
    // Assignments whose checkpoints a later owner claimed: skipped until the group assigns anew.
    let mut fenced: HashSet<(PartitionId, u64)> = HashSet::new();
    let mut publish = tokio::time::interval(Duration::from_millis(250));
    // Progress for the global view, every window of wall time: a window that stays open (no later record
    // yet) is seen all the same.
    let mut progress = tokio::time::interval(analyzer.window.max(Duration::from_millis(100)));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = progress.tick() => publish_progress(&stores, &mut parts).await,
            _ = publish.tick() => {
                let owned = assignment.owned.lock().unwrap_or_else(|e| e.into_inner()).clone();
                parts.retain(|p, part| owned.get(p) == Some(&part.assignment));
                fenced.retain(|(p, a)| owned.get(p) == Some(a));
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
                let Some(signal) = topics.signal(msg.topic()) else { continue };
                let (p, offset) = ((signal, msg.partition()), msg.offset());
                let Some(&assigned) = assignment.owned.lock().unwrap_or_else(|e| e.into_inner()).get(&p) else {
                    continue;
                };
                let (topic, checkpoints) = (topics.name(signal), &stores[&signal]);
                if fenced.contains(&(p, assigned)) {
                    continue;
                }
                if parts.get(&p).is_none_or(|part| part.assignment != assigned) {
                    let (claim, cp) = claim(checkpoints, p.1).await?;
                    let resume = cp.as_ref().map(|cp| cp.resume.offset);
                    match resume {
                        Some(resume) => {
                            stats.partitions_resumed.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(topic, partition = p.1, resume, epoch = claim.epoch, "kafka: partition resumed from its checkpoint");
                        }
                        None => tracing::info!(topic, partition = p.1, offset, epoch = claim.epoch, "kafka: partition started without a checkpoint"),
                    }
                    parts.insert(p, Part::new(assigned, claim, &analyzer, cp, offset));
                    // The group's offset can be past the checkpoint (an earlier owner committed after
                    // saving a checkpoint it lost to a later claim): go back to it.
                    if let Some(resume) = resume.filter(|&r| offset > r) {
                        match consumer.seek(topic, p.1, Offset::Offset(resume), Duration::from_secs(10)) {
                            Ok(()) => {
                                if let Some(part) = parts.get_mut(&p) {
                                    part.awaiting = Some(resume);
                                }
                                continue;
                            }
                            Err(e) => tracing::error!(topic, partition = p.1, offset, resume, error = %e,
                                "kafka: cannot go back to the checkpoint; counting from here"),
                        }
                    }
                }
                let part = parts.get_mut(&p).expect("inserted above");
                if offset < part.first || offset <= part.last {
                    continue;
                }
                match part.awaiting {
                    Some(r) if offset != r => continue,
                    Some(_) => part.awaiting = None,
                    None => {}
                }
                part.last = offset;
                if part.reread {
                    stats.records_replayed.fetch_add(1, Ordering::Relaxed);
                }
                stats.records.fetch_add(1, Ordering::Relaxed);
                let ts = msg.timestamp().to_millis().unwrap_or(0).max(0) as u64;
                let payload = Bytes::copy_from_slice(msg.payload().unwrap_or_default());
                let records = match decode(signal, Format::Protobuf, payload, &keys) {
                    Ok((r, _)) => Some(r),
                    Err(e) => {
                        stats.records_undecodable.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic, partition = p.1, offset, error = %e, "kafka: record is not an OTLP request of its topic's signal");
                        None
                    }
                };
                if let Some(cp) = part.record(offset, ts, records.as_ref(), window_ms) {
                    match checkpoints.save(part.claim, &cp).await {
                        Ok(()) => {
                            stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                            let mut tpl = TopicPartitionList::new();
                            let _ = tpl.add_partition_offset(topic, p.1, Offset::Offset(cp.resume.offset));
                            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                                tracing::warn!(topic, partition = p.1, error = %e, "kafka: commit failed");
                            }
                        }
                        Err(e @ Error::Fenced { .. }) => {
                            // A later owner has the partition: stop counting it until the group gives it back.
                            stats.checkpoints_fenced.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(topic, partition = p.1, error = %e, "kafka: partition lost to a later owner");
                            parts.remove(&p);
                            fenced.insert((p, assigned));
                        }
                        Err(e) => {
                            // The next window close tries again; until then a successor reads more again.
                            stats.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(topic, partition = p.1, error = %e, "kafka: checkpoint not saved");
                        }
                    }
                }
            }
        }
    }
    publish_progress(&stores, &mut parts).await;
    consumer.unsubscribe();
    Ok(())
}

/// Publishes the progress of every partition that counted records since its last.
async fn publish_progress(stores: &BTreeMap<Signal, Checkpoints>, parts: &mut HashMap<PartitionId, Part>) {
    for (&(signal, p), part) in parts.iter_mut() {
        let Some(c) = part.progress() else { continue };
        match stores[&signal].publish(p, &c).await {
            Ok(()) => part.published = c.resume.offset,
            Err(e) => tracing::warn!(?signal, partition = p, error = %e, "kafka: progress not published"),
        }
    }
}

/// Claims a partition's checkpoints, retrying with backoff while the store does not answer.
async fn claim(checkpoints: &Checkpoints, p: i32) -> Result<(Claim, Option<Checkpoint>)> {
    let mut wait = Duration::from_millis(100);
    for _ in 0..8 {
        match checkpoints.claim(p).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "kafka: checkpoint not loaded; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    checkpoints.claim(p).await
}

/// The span series of all owned partitions as one snapshot, each series labelled `tidewatch_partition`
/// (metric and log rows carry no labels of their own: `/metrics` writes them with the label apart).
pub fn snapshot(cfg: &AnalyzerConfig, parts: &BTreeMap<PartitionId, Totals>) -> tidewatch_analyzer::Snapshot {
    use tidewatch_analyzer::graph::GraphStore;
    let label = |dims: &[String]| -> Arc<[String]> {
        dims.iter()
            .cloned()
            .chain(std::iter::once(PARTITION_LABEL.to_owned()))
            .collect()
    };
    let mut snap = tidewatch_analyzer::Snapshot {
        red_dimensions: label(&cfg.span_metrics.dimensions),
        graph_dimensions: label(&GraphStore::dimension_labels(&cfg.service_graph)),
        ..tidewatch_analyzer::Snapshot::empty(cfg)
    };
    for ((_, p), t) in parts {
        let p: Arc<str> = p.to_string().into();
        snap.red.extend(t.red.iter().cloned().map(|mut r| {
            r.dims = r.dims.iter().cloned().chain([p.clone()]).collect();
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
    use tidewatch_analyzer::records::{
        LogBatch, LogRecord, MetricBatch, MetricPoint, PointValue, SpanBatch, SpanKind,
    };

    /// Spans of service "svc": `(span id, kind, parent span id or 0)`, a child in its parent's trace.
    fn batch(spans: &[(u8, SpanKind, u8)]) -> SpanBatch {
        let spans: Vec<_> = spans
            .iter()
            .map(|&(id, kind, parent)| (if parent == 0 { id } else { parent }, id, kind, parent))
            .collect();
        SpanBatch::of_spans("svc", &spans)
    }

    /// A cumulative counter's point at `value`, restarted (a new start time) at `start`.
    fn counter(start: u64, time: u64, value: f64) -> Decoded {
        let mut b = MetricBatch::default();
        b.points = vec![MetricPoint {
            service: "svc".into(),
            pod: "svc-1".into(),
            name: "requests".into(),
            attributes: Vec::new(),
            start_ns: start,
            time_ns: time,
            value: PointValue::Sum {
                value,
                monotonic: true,
                cumulative: true,
            },
        }];
        Decoded::Metrics(b)
    }

    /// A log of records: (record time ms, records). Client i and its server arrive 1.5 windows apart;
    /// between them, a cumulative counter that restarts half way, and log records.
    fn log() -> Vec<(u64, Decoded)> {
        let mut log = Vec::new();
        for i in 0..60u8 {
            let t = 1_000 + u64::from(i) * 400;
            let spans = if i % 3 == 0 {
                vec![(i + 1, SpanKind::Client, 0)]
            } else if i % 3 == 2 && i >= 2 {
                vec![(200, SpanKind::Server, i - 1), (i + 100, SpanKind::Internal, 0)]
            } else {
                vec![(i + 100, SpanKind::Server, 0)]
            };
            log.push((t, Decoded::Spans(batch(&spans))));
            if i % 4 == 3 {
                let (start, base) = if i < 30 { (1, 100.0) } else { (2, 0.0) };
                log.push((t, counter(start, t, base + f64::from(i) * 10.0)));
            }
            if i % 5 == 0 {
                let records = (0..=i % 3)
                    .map(|k| LogRecord {
                        service: "svc".into(),
                        pod: String::new(),
                        severity: 9 + 8 * k,
                        time_ns: t,
                    })
                    .collect();
                let mut b = LogBatch::default();
                b.records = records;
                log.push((t, Decoded::Logs(b)));
            }
        }
        log
    }

    /// Every count of the totals; histogram sums are floats added in another order, so they are left out.
    fn exact(t: &Totals) -> Vec<(String, Vec<f64>)> {
        let h = |h: &tidewatch_analyzer::red::Histogram| {
            h.counts(0).into_iter().chain([h.count]).collect::<Vec<f64>>()
        };
        t.red
            .iter()
            .map(|r| {
                (
                    format!("{:?}", r.id()),
                    [vec![r.calls as f64], h(&r.duration)].concat(),
                )
            })
            .chain(t.pods.iter().map(|p| {
                let v = [vec![p.calls as f64, p.errors as f64], h(&p.duration)].concat();
                (format!("pod {}/{}", p.service, p.pod), v)
            }))
            .chain(t.edges.iter().map(|e| {
                let v = [
                    vec![e.total, e.failed],
                    h(&e.client_latency),
                    h(&e.server_latency),
                ]
                .concat();
                (format!("{:?}", e.id()), v)
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
            let claim = Claim {
                partition: 0,
                epoch: 1,
            };
            let mut part = Part::new(0, claim, &cfg, cp, start as i64);
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
        assert!(
            checkpoints.iter().any(|c| !c.pending.is_empty()),
            "some checkpoints carry waiting halves"
        );
        let increase = reference.metrics.first().map(|m| m.increase);
        // 130 → 370, then a restart: 310 → 590.
        assert_eq!(increase, Some(240.0 + 310.0 + 280.0), "{:?}", reference.metrics);
        assert!(reference.logs.len() > 1, "{:?}", reference.logs);
        for cp in checkpoints {
            // The successor reads from the checkpoint's resume offset on, nothing before it.
            let (t, _) = run_from(cp.resume.offset as usize, Some(cp.clone()));
            assert_eq!(t.spans, reference.spans, "from {:?}", cp.resume);
            assert_eq!(exact(&t), exact(&reference), "from {:?}", cp.resume);
            assert_eq!(t.graph, reference.graph, "from {:?}", cp.resume);
            assert_eq!(t.metrics, reference.metrics, "from {:?}", cp.resume);
            assert_eq!(t.logs, reference.logs, "from {:?}", cp.resume);
        }
    }
}
