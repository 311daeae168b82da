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
        let order = |a: &RedRow, b: &RedRow| a.id().cmp(&b.id());
        merge_into(&mut self.red, rows, order, |o, r| {
            o.calls += r.calls;
            o.duration.merge(&r.duration);
        });
    }

    /// Adds per-pod rows (one shard's), summing a pod the snapshot already holds.
    pub(crate) fn add_pods(&mut self, rows: impl ExactSizeIterator<Item = PodRow>) {
        let order = |a: &PodRow, b: &PodRow| (&a.service, &a.pod).cmp(&(&b.service, &b.pod));
        merge_into(&mut self.pods, rows, order, |o, p| {
            o.calls += p.calls;
            o.errors += p.errors;
            o.duration.merge(&p.duration);
        });
    }

    /// Adds edge rows (one shard's), summing an edge the snapshot holds.
    pub(crate) fn add_edges(&mut self, rows: impl ExactSizeIterator<Item = EdgeRow>) {
        let order = |a: &EdgeRow, b: &EdgeRow| a.id().cmp(&b.id());
        merge_into(&mut self.edges, rows, order, |o, e| o.merge(&e));
    }
}

/// Adds `rows` (no two equal) to `acc` (in `order`, no two equal), keeping it in `order`: a row equal to
/// one of `acc`'s is combined into it where it stands, the others are added and sorted in. Rows come one
/// at a time, so a shard's rows are never held whole beside the snapshot's; room is made for them at
/// once (each shard keeps its own services' RED series and pods, so most rows are new), and what is left
/// over when some were combined is given back.
fn merge_into<T>(
    acc: &mut Vec<T>,
    rows: impl ExactSizeIterator<Item = T>,
    order: impl Fn(&T, &T) -> Ordering,
    combine: impl Fn(&mut T, T),
) {
    let before = acc.len();
    acc.reserve_exact(rows.len());
    for r in rows {
        match acc[..before].binary_search_by(|a| order(a, &r)) {
            Ok(i) => combine(&mut acc[i], r),
            Err(_) => acc.push(r),
        }
    }
    if acc.len() > before {
        acc.sort_unstable_by(order);
    }
    acc.shrink_to_fit();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_merge_in_order_summing_equal_ones() {
        let mut acc = Vec::new();
        let sum = |a: &mut (u8, u32), b: (u8, u32)| a.1 += b.1;
        let order = |a: &(u8, u32), b: &(u8, u32)| a.0.cmp(&b.0);
        merge_into(&mut acc, [(3, 1), (1, 1)].into_iter(), order, sum);
        assert_eq!(acc, vec![(1, 1), (3, 1)]);
        merge_into(&mut acc, [(2, 5), (3, 2), (0, 7)].into_iter(), order, sum);
        assert_eq!(acc, vec![(0, 7), (1, 1), (2, 5), (3, 3)]);
        assert_eq!(acc.capacity(), 4, "no spare room kept");
        merge_into(&mut acc, [(1, 1), (3, 1)].into_iter(), order, sum);
        assert_eq!(acc, vec![(0, 7), (1, 2), (2, 5), (3, 4)]);
        assert_eq!(acc.capacity(), 4, "no spare room kept");
    }
}
