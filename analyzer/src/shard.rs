//! A shard of the engine: its part of the state (RED table, service-graph store, signal counts) and a task
//! that serves the messages of its bounded queue in order. The receivers' [`crate::ingest`] sends into the
//! queues, or, when a shard's queue is empty and no one holds its state, aggregates a batch into it in place
//! (no hand-off, no wake-up); the [`crate::engine`] starts the shards and collects their rows into a
//! snapshot (each shard adds its own, [`Snapshot::add_red`] and its siblings); both depend on this module,
//! and it on neither.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::budget::SeriesBudget;
use crate::config::AnalyzerConfig;
use crate::graph::{GraphKeys, GraphStore};
use crate::intern::Interner;
use crate::records::{AttrKeys, LogBatch, MetricBatch, SpanBatch};
use crate::red::RedTable;
use crate::signals::Signals;
use crate::snapshot::Snapshot;

/// What travels down a shard's queue.
pub(crate) enum ShardMsg {
    /// A batch and the spans of it this shard counts (`None`: all of them, RED and graph).
    Spans(Arc<SpanBatch>, Option<SpanPart>),
    Metrics(MetricBatch),
    Logs(LogBatch),
    /// Add this shard's rows to the snapshot (which holds the rows of the shards asked before) and hand
    /// it back.
    Snapshot(Box<Snapshot>, oneshot::Sender<Box<Snapshot>>),
    /// Finish: everything queued before this is processed first.
    Stop,
}

/// The spans of a batch one shard counts, each with what it counts of it: its RED, on the shard of its
/// service (so a RED series and a pod are kept by one shard), and its half of a service-graph edge, on the
/// shard of its trace (so a client and a server span of one trace meet). Each span is counted by one shard
/// for each, which may be the same one.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SpanPart(Vec<u32>);

impl SpanPart {
    /// The span's RED is counted here.
    pub(crate) const RED: u32 = 1 << 31;
    /// The span's service-graph half is counted here.
    pub(crate) const GRAPH: u32 = 1 << 30;
    pub(crate) fn with_capacity(n: usize) -> SpanPart {
        SpanPart(Vec::with_capacity(n))
    }

    /// Span `i` of the batch, for what `what` flags. A batch has fewer than 2^30 spans (a request is at
    /// most 2 GiB, `collector.max_body`, and a span takes at least 2 bytes of it), so the flags' bits are
    /// free.
    #[inline]
    pub(crate) fn push(&mut self, i: u32, what: u32) {
        self.0.push(i | what);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each span's index, whether its RED is counted here, whether its graph half is.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, bool, bool)> + '_ {
        let index = !(Self::RED | Self::GRAPH);
        self.0
            .iter()
            .map(move |&e| ((e & index) as usize, e & Self::RED != 0, e & Self::GRAPH != 0))
    }
}

/// Counts kept by the engine itself.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub spans: AtomicU64,
    pub metric_points: AtomicU64,
    pub log_records: AtomicU64,
}

/// The span attributes `cfg` makes the engine read (the RED dimensions, then the service graph's), with
/// the indices of each part. The receivers skip every other attribute on the wire.
pub fn wanted_keys(cfg: &AnalyzerConfig) -> (AttrKeys, Vec<u16>, GraphKeys) {
    let mut keys = AttrKeys::default();
    let red_dims: Vec<u16> = cfg
        .span_metrics
        .dimensions
        .iter()
        .map(|d| keys.intern(d))
        .collect();
    let graph_keys = GraphStore::attr_keys(&cfg.service_graph, &mut keys);
    (keys, red_dims, graph_keys)
}

/// A shard's state, shared by its task and the receivers that aggregate in place. Each holder keeps it for
/// one message or one batch at a time.
pub(crate) type SharedShard = Arc<Mutex<Shard>>;

/// The shard's state; a panic while it was held leaves counters that are still counters, so it is used on.
pub(crate) fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct Shard {
    names: Interner,
    red: RedTable,
    graph: GraphStore,
    signals: Signals,
    budget: Arc<SeriesBudget>,
    stats: Arc<EngineStats>,
    /// Interned service (`None`: past the series budget) and pod name per resource of the batch at hand
    /// (reused: no allocation per batch).
    scratch: Vec<(Option<u32>, Option<u32>)>,
}

impl Shard {
    /// One of `n` shards of the engine `cfg` describes.
    pub(crate) fn new(
        cfg: &AnalyzerConfig,
        red_dims: &[u16],
        graph_keys: &GraphKeys,
        n: usize,
        budget: &Arc<SeriesBudget>,
        stats: &Arc<EngineStats>,
    ) -> Shard {
        Shard {
            names: Interner::default(),
            red: RedTable::new(&cfg.span_metrics, red_dims.to_vec(), budget.clone()),
            graph: GraphStore::new(&cfg.service_graph, graph_keys.clone(), n, budget.clone()),
            signals: Signals::new(budget.clone()),
            budget: budget.clone(),
            stats: stats.clone(),
            scratch: Vec::new(),
        }
    }

    /// Serves `rx` until [`ShardMsg::Stop`] or until every sender is gone, expiring pending edges every
    /// `sweep`.
    pub(crate) async fn run(state: SharedShard, mut rx: mpsc::Receiver<ShardMsg>, sweep: Duration) {
        let mut tick = tokio::time::interval(sweep);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(ShardMsg::Stop) | None => return,
                    Some(msg) => lock(&state).serve(msg),
                },
                _ = tick.tick() => lock(&state).expire(),
            }
        }
    }

    fn serve(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Spans(batch, part) => self.spans(&batch, part.as_ref()),
            ShardMsg::Metrics(m) => {
                self.stats
                    .metric_points
                    .fetch_add(m.points.len() as u64, Ordering::Relaxed);
                self.signals.metrics(&m);
            }
            ShardMsg::Logs(l) => {
                self.stats
                    .log_records
                    .fetch_add(l.records.len() as u64, Ordering::Relaxed);
                self.signals.logs(&l);
            }
            ShardMsg::Snapshot(mut snap, reply) => {
                self.expire();
                self.add_rows(&mut snap);
                let _ = reply.send(snap);
            }
            ShardMsg::Stop => {}
        }
    }

    /// Expires the service graph's pending edges that waited long enough.
    fn expire(&mut self) {
        self.graph.expire(&mut self.names, Instant::now());
    }

    /// Aggregates `part` of `batch` (`None`: all of it, RED and graph).
    pub(crate) fn spans(&mut self, batch: &SpanBatch, part: Option<&SpanPart>) {
        let now = Instant::now();
        admit_resources(&mut self.names, &self.budget, batch, &mut self.scratch);
        let (names, red, graph, resources) = (&mut self.names, &mut self.red, &mut self.graph, &self.scratch);
        let mut graphed = 0;
        let mut count = |s: &crate::records::Span, with_red: bool, with_graph: bool| {
            let (service, pod) = resources[s.resource as usize];
            if with_red {
                red.record(names, batch, s, service, pod);
            }
            if with_graph {
                graph.record(names, batch, s, service, now);
                graphed += 1;
            }
        };
        match part {
            None => batch.spans.iter().for_each(|s| count(s, true, true)),
            Some(part) => part
                .iter()
                .for_each(|(i, with_red, with_graph)| count(&batch.spans[i], with_red, with_graph)),
        }
        // Every span has its graph half counted by exactly one shard: the spans are counted there.
        self.stats.spans.fetch_add(graphed, Ordering::Relaxed);
    }

    /// Adds this shard's rows to `snap`, summing the series, pods and edges it holds already.
    fn add_rows(&self, snap: &mut Snapshot) {
        snap.add_red(self.red.rows(&self.names));
        snap.add_pods(self.red.pod_rows(&self.names));
        snap.add_edges(self.graph.rows(&self.names));
        snap.graph.add(&self.graph.counters());
        snap.metrics.extend(self.signals.metric_rows());
        snap.logs.extend(self.signals.log_rows());
    }
}

/// Interns each resource's service and pod of `batch` into `out` (reused: no allocation per batch), under
/// the series budget: a new service the budget does not admit is `None` (its spans count in the global
/// overflow series), and so is a new pod past the budget or of an overflowed service.
pub(crate) fn admit_resources(
    names: &mut Interner,
    budget: &SeriesBudget,
    batch: &SpanBatch,
    out: &mut Vec<(Option<u32>, Option<u32>)>,
) {
    out.clear();
    for r in &batch.resources {
        let name = batch.bytes(r.service);
        let service = match names.get(name) {
            Some(id) => Some(id),
            None if budget.admit_service(name) => Some(names.id(name)),
            None => None,
        };
        let pod = if r.pod.is_empty() || service.is_none() {
            None
        } else {
            let pod = batch.bytes(r.pod);
            match names.get(pod) {
                Some(id) => Some(id),
                None if budget.take() => Some(names.id(pod)),
                None => None,
            }
        };
        out.push((service, pod));
    }
}
