//! [`Snapshot`]: an immutable picture of every shard's cumulative counters, merged. The engine takes them
//! (for `/metrics`, and at every window close), the history turns two consecutive ones into a window.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{AnalyzerConfig, GraphConfig, LatencyUnit};
use crate::graph::{EdgeRow, GraphCounters, GraphStore};
use crate::red::{PodRow, RedRow};
use crate::signals::{LogRow, MetricRow};

/// An immutable picture of everything the analyzer knows, cheap to share (`Arc`).
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub taken_at: SystemTime,
    pub red: Vec<RedRow>,
    /// RED histogram bounds, in `red_unit`.
    pub red_bounds: Arc<[f64]>,
    pub red_unit: LatencyUnit,
    pub red_dimensions: Arc<[String]>,
    /// Per-pod RED of entry spans.
    pub pods: Vec<PodRow>,
    pub edges: Vec<EdgeRow>,
    /// Service-graph histogram bounds, in seconds.
    pub graph_bounds: Arc<[f64]>,
    pub graph_dimensions: Arc<[String]>,
    /// Which service-graph series to expose, and the rest of its settings.
    pub graph_config: Arc<GraphConfig>,
    pub graph: GraphCounters,
    pub metrics: Vec<MetricRow>,
    pub logs: Vec<LogRow>,
}

impl Snapshot {
    /// A snapshot with nothing counted yet, in `cfg`'s units and dimensions.
    pub fn empty(cfg: &AnalyzerConfig) -> Snapshot {
        Snapshot {
            taken_at: SystemTime::now(),
            red: Vec::new(),
            red_bounds: cfg.span_metrics.bounds().into(),
            red_unit: cfg.span_metrics.unit,
            red_dimensions: cfg.span_metrics.dimensions.clone().into(),
            pods: Vec::new(),
            edges: Vec::new(),
            graph_bounds: cfg.service_graph.bounds().into(),
            graph_dimensions: GraphStore::dimension_labels(&cfg.service_graph).into(),
            graph_config: Arc::new(cfg.service_graph.clone()),
            graph: GraphCounters::default(),
            metrics: Vec::new(),
            logs: Vec::new(),
        }
    }
}

impl Snapshot {
    /// Adds RED rows (one shard's: no two of one series) to the snapshot's, summing a series it holds.
    pub(crate) fn add_red(&mut self, rows: impl ExactSizeIterator<Item = RedRow>) {
        merge_into(&mut self.red, rows);
    }

    /// Adds per-pod rows (one shard's), summing a pod the snapshot already holds.
    pub(crate) fn add_pods(&mut self, rows: impl ExactSizeIterator<Item = PodRow>) {
        merge_into(&mut self.pods, rows);
    }

    /// Adds edge rows (one shard's), summing an edge the snapshot holds.
    pub(crate) fn add_edges(&mut self, rows: impl ExactSizeIterator<Item = EdgeRow>) {
        merge_into(&mut self.edges, rows);
    }
}

/// A row of one series' cumulative counters: the one place that says how two rows of a series combine,
/// for snapshots (shards' rows summed) and partitions' totals (summed, or an earlier state taken away).
pub trait Counters: Clone {
    /// The series' order; equal means the same series.
    fn order(&self, o: &Self) -> Ordering;
    /// Adds `o`, a row of the same series.
    fn add(&mut self, o: &Self);
    /// Takes away `o`, an earlier state of the same counters.
    fn sub(&mut self, o: &Self);
    /// Whether nothing is counted: sums and differences drop such rows.
    fn is_zero(&self) -> bool;
}

impl Counters for RedRow {
    fn order(&self, o: &Self) -> Ordering {
        self.id().cmp(&o.id())
    }
    fn add(&mut self, o: &Self) {
        self.calls += o.calls;
        self.duration.merge(&o.duration);
    }
    fn sub(&mut self, o: &Self) {
        self.calls = self.calls.saturating_sub(o.calls);
        self.duration.add(&o.duration, -1.0);
    }
    fn is_zero(&self) -> bool {
        self.calls == 0
    }
}

impl Counters for PodRow {
    fn order(&self, o: &Self) -> Ordering {
        (&self.service, &self.pod).cmp(&(&o.service, &o.pod))
    }
    fn add(&mut self, o: &Self) {
        self.calls += o.calls;
        self.errors += o.errors;
        self.duration.merge(&o.duration);
    }
    fn sub(&mut self, o: &Self) {
        self.calls = self.calls.saturating_sub(o.calls);
        self.errors = self.errors.saturating_sub(o.errors);
        self.duration.add(&o.duration, -1.0);
    }
    fn is_zero(&self) -> bool {
        self.calls == 0
    }
}

impl Counters for EdgeRow {
    fn order(&self, o: &Self) -> Ordering {
        self.id().cmp(&o.id())
    }
    fn add(&mut self, o: &Self) {
        self.combine(o, 1.0);
    }
    fn sub(&mut self, o: &Self) {
        self.combine(o, -1.0);
    }
    fn is_zero(&self) -> bool {
        self.total == 0.0 && self.failed == 0.0
    }
}

/// A metric's point count and increase add up; its latest reading is a level: a sum keeps the later one
/// (the right side's on a tie), a difference the left side's.
impl Counters for MetricRow {
    fn order(&self, o: &Self) -> Ordering {
        (&self.service, &self.pod, &self.name).cmp(&(&o.service, &o.pod, &o.name))
    }
    fn add(&mut self, o: &Self) {
        let (points, increase) = (self.points + o.points, self.increase + o.increase);
        if o.last_time_ns >= self.last_time_ns {
            *self = o.clone();
        }
        (self.points, self.increase) = (points, increase);
    }
    fn sub(&mut self, o: &Self) {
        self.points = self.points.saturating_sub(o.points);
        self.increase -= o.increase;
    }
    fn is_zero(&self) -> bool {
        self.points == 0
    }
}

impl Counters for LogRow {
    fn order(&self, o: &Self) -> Ordering {
        (&self.service, self.severity).cmp(&(&o.service, o.severity))
    }
    fn add(&mut self, o: &Self) {
        self.records += o.records;
    }
    fn sub(&mut self, o: &Self) {
        self.records = self.records.saturating_sub(o.records);
    }
    fn is_zero(&self) -> bool {
        self.records == 0
    }
}

/// `a + b`, series by series, in series order (the inputs in any order, no two rows of a series in
/// either); rows left at zero are dropped.
pub fn sum<T: Counters>(a: &[T], b: &[T]) -> Vec<T> {
    let mut acc = a.to_vec();
    acc.sort_unstable_by(T::order);
    merge_into(&mut acc, b.iter().cloned());
    acc.retain(|r| !r.is_zero());
    acc
}

/// `a - b`, series by series, in series order, for `b` an earlier state of the same counters; rows left
/// at zero are dropped.
pub fn difference<T: Counters>(a: &[T], b: &[T]) -> Vec<T> {
    let mut acc = a.to_vec();
    acc.sort_unstable_by(T::order);
    for r in b {
        if let Ok(i) = acc.binary_search_by(|x| x.order(r)) {
            acc[i].sub(r);
        }
    }
    acc.retain(|r| !r.is_zero());
    acc
}

/// Adds `rows` (no two of one series) to `acc` (in series order, no two of one series), keeping it in
/// order: a row of a series `acc` holds is added to it where it stands, the others are added and sorted
/// in. Rows come one at a time, so a shard's rows are never held whole beside the snapshot's; room is
/// made for them at once (each shard keeps its own services' RED series and pods, so most rows are new),
/// and what is left over when some were combined is given back.
fn merge_into<T: Counters>(acc: &mut Vec<T>, rows: impl ExactSizeIterator<Item = T>) {
    let before = acc.len();
    acc.reserve_exact(rows.len());
    for r in rows {
        match acc[..before].binary_search_by(|a| a.order(&r)) {
            Ok(i) => acc[i].add(&r),
            Err(_) => acc.push(r),
        }
    }
    if acc.len() > before {
        acc.sort_unstable_by(T::order);
    }
    acc.shrink_to_fit();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A series id and a count.
    #[derive(Clone, Debug, PartialEq)]
    struct Row(u8, u32);

    impl Counters for Row {
        fn order(&self, o: &Self) -> Ordering {
            self.0.cmp(&o.0)
        }
        fn add(&mut self, o: &Self) {
            self.1 += o.1;
        }
        fn sub(&mut self, o: &Self) {
            self.1 -= o.1;
        }
        fn is_zero(&self) -> bool {
            self.1 == 0
        }
    }

    fn rows(r: &[(u8, u32)]) -> Vec<Row> {
        r.iter().map(|&(k, n)| Row(k, n)).collect()
    }

    #[test]
    fn rows_merge_in_order_summing_equal_ones() {
        let mut acc = Vec::new();
        merge_into(&mut acc, rows(&[(3, 1), (1, 1)]).into_iter());
        assert_eq!(acc, rows(&[(1, 1), (3, 1)]));
        merge_into(&mut acc, rows(&[(2, 5), (3, 2), (0, 7)]).into_iter());
        assert_eq!(acc, rows(&[(0, 7), (1, 1), (2, 5), (3, 3)]));
        assert_eq!(acc.capacity(), 4, "no spare room kept");
        merge_into(&mut acc, rows(&[(1, 1), (3, 1)]).into_iter());
        assert_eq!(acc, rows(&[(0, 7), (1, 2), (2, 5), (3, 4)]));
        assert_eq!(acc.capacity(), 4, "no spare room kept");
    }

    #[test]
    fn a_sum_less_one_side_is_the_other_and_zeros_go() {
        let (a, b) = (rows(&[(4, 2), (1, 3)]), rows(&[(2, 5), (4, 1)]));
        let s = sum(&a, &b);
        assert_eq!(s, rows(&[(1, 3), (2, 5), (4, 3)]));
        assert_eq!(
            difference(&s, &a),
            rows(&[(2, 5), (4, 1)]),
            "in order, (1, 0) dropped"
        );
        assert_eq!(difference(&s, &b), rows(&[(1, 3), (4, 2)]));
    }
}
