//! [`Snapshot`]: an immutable picture of every shard's cumulative counters, merged. The engine takes them
//! (for `/metrics`, and at every window close), the history turns two consecutive ones into a window.

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
