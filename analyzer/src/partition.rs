//! One partition of a shared, replayable log as a single-owner shard on *record time*: the engine's RED
//! table and service-graph store, driven by the partition's event clock (milliseconds the caller passes
//! in) instead of wall-clock arrival, and the engine's [`Signals`] for metric points and log records.
//! Replaying the same records from the same point therefore gives the same rows, which is what lets a new
//! owner of a partition rebuild it exactly. The log itself (Kafka) is the caller's business; this module
//! knows only records and clocks.

use std::time::Duration;

use tokio::time::Instant;

use std::sync::Arc;

use crate::budget::SeriesBudget;
use crate::config::AnalyzerConfig;
use crate::graph::{EdgeRow, GraphCounters, GraphStore, PendingHalf};
use crate::intern::Interner;
use crate::records::{AttrKeys, LogBatch, MetricBatch, SpanBatch};
use crate::red::{PodRow, RedRow, RedTable};
use crate::shard::{admit_resources, wanted_keys};
use crate::signals::{LogRow, MetricRow, Signals};
use crate::snapshot::{self, Counters, Snapshot};

/// A shard whose clock is the partition's record time.
pub struct RecordTimeShard {
    names: Interner,
    red: RedTable,
    graph: GraphStore,
    signals: Signals,
    /// This partition's own series budget (`analyzer.max_series`), so a replay admits the same series.
    budget: Arc<SeriesBudget>,
    /// Record time 0 on the store's `Instant` scale: deadlines are `origin + wait` after the record time.
    origin: Instant,
    spans: u64,
    scratch: Vec<(Option<u32>, Option<u32>)>,
}

impl RecordTimeShard {
    pub fn new(cfg: &AnalyzerConfig) -> RecordTimeShard {
        let (_, red_dims, graph_keys) = wanted_keys(cfg);
        let budget = Arc::new(SeriesBudget::new(cfg.max_series));
        RecordTimeShard {
            names: Interner::default(),
            red: RedTable::new(&cfg.span_metrics, red_dims, budget.clone()),
            graph: GraphStore::new(&cfg.service_graph, graph_keys, 1, budget.clone()),
            signals: Signals::new(budget.clone()),
            budget,
            origin: Instant::now(),
            spans: 0,
            scratch: Vec::new(),
        }
    }

    /// The attribute keys batches for this shard must be decoded with.
    pub fn attr_keys(cfg: &AnalyzerConfig) -> AttrKeys {
        wanted_keys(cfg).0
    }

    fn at(&self, clock_ms: u64) -> Instant {
        self.origin + Duration::from_millis(clock_ms)
    }

    /// Expires what is due at `clock_ms`, then applies every span of `batch` as seen at that time.
    pub fn spans(&mut self, batch: &SpanBatch, clock_ms: u64) {
        let now = self.at(clock_ms);
        self.graph.expire(&mut self.names, now);
        admit_resources(&mut self.names, &self.budget, batch, &mut self.scratch);
        for s in &batch.spans {
            let (service, pod) = self.scratch[s.resource as usize];
            self.red.record(&mut self.names, batch, s, service, pod);
            self.graph.record(&mut self.names, batch, s, service, now);
        }
        self.spans += batch.spans.len() as u64;
    }

    /// Applies metric points (their order is the partition's; the clock plays no part).
    pub fn metrics(&mut self, batch: &MetricBatch) {
        self.signals.metrics(batch);
    }

    /// Counts log records.
    pub fn logs(&mut self, batch: &LogBatch) {
        self.signals.logs(batch);
    }

    /// Expires what is due at `clock_ms` (a window close).
    pub fn advance(&mut self, clock_ms: u64) {
        let now = self.at(clock_ms);
        self.graph.expire(&mut self.names, now);
    }

    /// The service-graph halves still waiting, deadlines in record time (ms since record time 0).
    pub fn pending(&self) -> Vec<PendingHalf> {
        self.graph.pending(&self.names, self.origin)
    }

    /// Takes back the waiting halves of a checkpoint and its metric and log rows (into a new shard,
    /// before any record): the signals continue from them, so [`RecordTimeShard::totals`]' metric and log
    /// rows are the partition's whole, not only what this shard read.
    pub fn restore(&mut self, halves: Vec<PendingHalf>, metrics: Vec<MetricRow>, logs: Vec<LogRow>) {
        self.graph.restore(&mut self.names, self.origin, halves);
        self.signals.restore(metrics, logs);
    }

    /// Everything counted since the shard was created, each kind of row in series order.
    pub fn totals(&self) -> Totals {
        fn sorted<T: Counters>(mut rows: Vec<T>) -> Vec<T> {
            rows.sort_unstable_by(T::order);
            rows
        }
        Totals {
            spans: self.spans,
            red: sorted(self.red.export(&self.names)),
            pods: sorted(self.red.export_pods(&self.names)),
            edges: sorted(self.graph.export(&self.names)),
            graph: self.graph.counters(),
            metrics: self.signals.metric_rows(),
            logs: self.signals.log_rows(),
        }
    }
}

/// Cumulative counts of a shard or partition: span count, RED series, per-pod RED, service-graph edges and
/// counters (`graph.pending` is a level, not a count: arithmetic keeps the left side's), metric rows and
/// log counts (a metric row's latest reading is a level: a sum keeps the later one, a difference the left
/// side's).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub spans: u64,
    /// In series order, as every kind of row here.
    pub red: Vec<RedRow>,
    /// Per (service, pod): RED of entry spans.
    pub pods: Vec<PodRow>,
    pub edges: Vec<EdgeRow>,
    pub graph: GraphCounters,
    /// Per (service, pod, metric), sorted.
    pub metrics: Vec<MetricRow>,
    /// Per (service, severity), sorted.
    pub logs: Vec<LogRow>,
}

impl Totals {
    /// The totals of several partitions together, series by series (`graph.pending` summed too: every
    /// partition's waiting halves).
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a Totals>) -> Totals {
        let mut pending = 0;
        let mut sum = parts.into_iter().fold(Totals::default(), |acc, t| {
            pending += t.graph.pending;
            acc.plus(t)
        });
        sum.graph.pending = pending;
        sum
    }

    /// These totals as a [`Snapshot`] in `cfg`'s units and dimensions, taken now.
    pub fn snapshot(self, cfg: &AnalyzerConfig) -> Snapshot {
        Snapshot {
            red: self.red,
            pods: self.pods,
            edges: self.edges,
            graph: self.graph,
            metrics: self.metrics,
            logs: self.logs,
            ..Snapshot::empty(cfg)
        }
    }

    /// `self + o`, series by series.
    pub fn plus(&self, o: &Totals) -> Totals {
        Totals {
            spans: self.spans + o.spans,
            red: snapshot::sum(&self.red, &o.red),
            pods: snapshot::sum(&self.pods, &o.pods),
            edges: snapshot::sum(&self.edges, &o.edges),
            graph: self.graph.combine(&o.graph, |a, b| a + b),
            metrics: snapshot::sum(&self.metrics, &o.metrics),
            logs: snapshot::sum(&self.logs, &o.logs),
        }
    }

    /// `self - o`, series by series, for `o` an earlier state of the same counters; series left at zero
    /// are dropped.
    pub fn minus(&self, o: &Totals) -> Totals {
        Totals {
            spans: self.spans.saturating_sub(o.spans),
            red: snapshot::difference(&self.red, &o.red),
            pods: snapshot::difference(&self.pods, &o.pods),
            edges: snapshot::difference(&self.edges, &o.edges),
            graph: self.graph.combine(&o.graph, u64::saturating_sub),
            metrics: snapshot::difference(&self.metrics, &o.metrics),
            logs: snapshot::difference(&self.logs, &o.logs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::HalfName;
    use crate::records::SpanKind;

    /// Spans of one trace.
    fn batch(service: &str, spans: &[(u8, SpanKind, u8)]) -> SpanBatch {
        let spans: Vec<_> = spans
            .iter()
            .map(|&(id, kind, parent)| (7, id, kind, parent))
            .collect();
        SpanBatch::of_spans(service, &spans)
    }

    #[test]
    fn pairs_on_record_time_and_replays_identically() {
        let cfg = AnalyzerConfig::default();
        let run = || {
            let mut s = RecordTimeShard::new(&cfg);
            s.spans(&batch("a", &[(1, SpanKind::Client, 0)]), 1_000);
            // The server half arrives 2 s of record time later: still within `wait`, so the edge forms.
            s.spans(&batch("b", &[(2, SpanKind::Server, 1)]), 3_000);
            // A lone client half, expired (and counted) only once record time passes its deadline.
            s.spans(&batch("a", &[(3, SpanKind::Client, 0)]), 4_000);
            s.advance(4_000 + cfg.service_graph.wait.as_millis() as u64 + 1);
            s.totals()
        };
        let t = run();
        assert_eq!(t.spans, 3);
        assert_eq!(t.edges.iter().map(|e| e.total).sum::<f64>(), 1.0);
        assert_eq!(t.graph.expired_client, 1);
        assert_eq!(
            t,
            run(),
            "the same records at the same record times give the same rows"
        );
    }

    #[test]
    fn waiting_halves_move_to_a_new_shard_and_pair_there() {
        let cfg = AnalyzerConfig::default();
        let wait = cfg.service_graph.wait.as_millis() as u64;
        // One shard sees everything; the other is handed the first one's waiting halves half way.
        let mut whole = RecordTimeShard::new(&cfg);
        let mut first = RecordTimeShard::new(&cfg);
        for s in [&mut whole, &mut first] {
            s.spans(&batch("a", &[(1, SpanKind::Client, 0)]), 1_000);
            s.spans(&batch("c", &[(5, SpanKind::Server, 0)]), 1_500);
            s.spans(&batch("a", &[(3, SpanKind::Client, 0)]), 2_000);
        }
        let mut halves = first.pending();
        assert_eq!(halves.len(), 2, "the root server 5 waited for nothing");
        let user_c = |t: &Totals| t.edges.iter().any(|e| (&*e.client, &*e.server) == ("user", "c"));
        assert!(user_c(&first.totals()), "user->c, counted at once");
        // A root half in a checkpoint written before roots completed at once still becomes user->c.
        let mut root = halves[0].clone();
        (root.id, root.root, root.kind) = ([9; 8], true, SpanKind::Server);
        (root.client, root.server) = (None, Some(HalfName::Known("c".into())));
        halves.push(root);
        let mut second = RecordTimeShard::new(&cfg);
        second.restore(halves, Vec::new(), Vec::new());
        let mut restored = second.pending();
        restored.retain(|h| !h.root);
        assert_eq!(restored, first.pending(), "the halves and deadlines round-trip");
        let before = whole.totals();
        for s in [&mut whole, &mut second] {
            // The server half of call 1 pairs; the lone client 3 expires.
            s.spans(&batch("b", &[(2, SpanKind::Server, 1)]), 2_500);
            s.advance(2_000 + wait + 1);
        }
        let (w, s) = (whole.totals().minus(&before), second.totals());
        assert_eq!(w.edges.iter().map(|e| e.total).sum::<f64>(), 1.0, "a->b");
        assert!(user_c(&s) && s.edges.len() == 2, "a->b and the restored user->c");
        assert_eq!(w.edges[..], s.edges[..1]);
        assert_eq!(w.graph, s.graph);
        assert_eq!(s.graph.expired_client, 1);
    }

    #[test]
    fn plus_and_minus_are_inverse() {
        let cfg = AnalyzerConfig::default();
        let mut s = RecordTimeShard::new(&cfg);
        s.spans(&batch("a", &[(1, SpanKind::Client, 0)]), 1_000);
        let early = s.totals();
        s.spans(
            &batch("b", &[(2, SpanKind::Server, 1), (4, SpanKind::Server, 0)]),
            2_000,
        );
        let late = s.totals();
        let delta = late.minus(&early);
        assert_eq!(delta.spans, 2);
        assert_eq!(early.plus(&delta).red, late.red);
        assert_eq!(early.plus(&delta).edges, late.edges);
    }
}
