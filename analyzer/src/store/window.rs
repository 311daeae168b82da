//! One window of history from two consecutive snapshots: the deltas of the cumulative counters, one row
//! per series and table.

use std::collections::HashMap;

use std::sync::Arc;

use super::tables::{Chunk, EDGES, Key, LOGS, METRICS, OPERATION_RED, POD_RED, SERVICE_RED, Table};
use crate::red::{Histogram, is_entry};
use crate::signals::MetricKind;
use crate::snapshot::Snapshot;

/// Rows of one window for one table.
struct Rows {
    width: usize,
    chunk: Chunk,
}

impl Rows {
    fn new(table: &Table) -> Rows {
        Rows {
            width: table.width(),
            chunk: Chunk::default(),
        }
    }

    /// A row: its key columns and its values (`None`: missing).
    fn push<const N: usize>(&mut self, keys: [Arc<str>; N], values: &[Option<f64>]) {
        debug_assert_eq!(values.len(), self.width);
        let key: Key = keys.into();
        self.chunk.keys.push(key);
        self.chunk
            .values
            .extend(values.iter().map(|v| v.unwrap_or(f64::NAN)));
    }

    fn chunk(mut self, ts_ms: i64, seconds: f64) -> Chunk {
        self.chunk.ts = ts_ms;
        self.chunk.seconds = vec![seconds; self.chunk.keys.len()];
        self.chunk
    }
}

/// Quantiles of a histogram in milliseconds (`to_ms` converts its unit).
pub(super) fn quantile_ms(h: &Histogram, bounds: &[f64], q: f64, to_ms: f64) -> Option<f64> {
    h.quantile(bounds, q).map(|v| v * to_ms)
}

pub(super) fn delta(cur: &Histogram, prev: Option<&Histogram>) -> Histogram {
    let mut d = cur.clone();
    if let Some(p) = prev {
        for (a, b) in d.counts.iter_mut().zip(&p.counts) {
            *a = (*a - b).max(0.0);
        }
        d.sum = (d.sum - p.sum).max(0.0);
        d.count = (d.count - p.count).max(0.0);
    }
    d
}

/// The window rows between two snapshots, one chunk per table (in [`TABLES`](super::tables::TABLES) order).
pub(super) fn window_chunks(prev: Option<&Snapshot>, cur: &Snapshot, ts_ms: i64, seconds: f64) -> Vec<Chunk> {
    let (service_rows, op_rows) = red_rows(prev, cur);
    [
        service_rows,
        op_rows,
        pod_rows(prev, cur),
        edge_rows(prev, cur),
        metric_rows(prev, cur, seconds),
        log_rows(prev, cur),
    ]
    .into_iter()
    .map(|r| r.chunk(ts_ms, seconds))
    .collect()
}

/// Two names and a label: an operation (service, span name, kind) or an edge (client, server, type).
type Labels = (Arc<str>, Arc<str>, &'static str);

/// Requests, errors and the latency histogram of the series a history row sums up, in one window.
type Totals = (f64, f64, Histogram);

/// Latency figures of the RED histograms of one snapshot, in milliseconds.
struct Ms<'a> {
    bounds: &'a [f64],
    unit_ms: f64,
}

impl Ms<'_> {
    fn of(cur: &Snapshot) -> Ms<'_> {
        Ms {
            bounds: &cur.red_bounds,
            unit_ms: cur.red_unit.nanos() / 1e6,
        }
    }

    fn q(&self, h: &Histogram, q: f64) -> Option<f64> {
        quantile_ms(h, self.bounds, q, self.unit_ms)
    }

    fn mean(&self, h: &Histogram) -> Option<f64> {
        (h.count > 0.0).then(|| h.sum / h.count * self.unit_ms)
    }
}

/// RED per service (over its entry spans; all spans if it has none) and per operation.
fn red_rows(prev: Option<&Snapshot>, cur: &Snapshot) -> (Rows, Rows) {
    let ms = Ms::of(cur);
    let bounds = &cur.red_bounds;
    let prev_red: HashMap<_, _> = prev
        .map(|p| p.red.iter().map(|r| (r.key(), r)).collect())
        .unwrap_or_default();
    let mut ops: std::collections::BTreeMap<Labels, Totals> = Default::default();
    let mut services: std::collections::BTreeMap<Arc<str>, [Totals; 2]> = Default::default();
    for r in &cur.red {
        // What services past the series budget sent is in the exposition and the budget's counters; the
        // history has no service to file it under.
        if r.overflow && r.service.is_empty() {
            continue;
        }
        let p = prev_red.get(&r.key());
        let calls = r.calls.saturating_sub(p.map_or(0, |p| p.calls)) as f64;
        let errors = if r.status == crate::records::StatusCode::Error {
            calls
        } else {
            0.0
        };
        let h = delta(&r.duration, p.map(|p| &p.duration));
        let op = ops
            .entry((r.service.clone(), r.span_name.clone(), r.kind.as_label()))
            .or_insert_with(|| (0.0, 0.0, Histogram::new(bounds.len())));
        op.0 += calls;
        op.1 += errors;
        op.2.merge(&h);
        let svc = services.entry(r.service.clone()).or_insert_with(|| {
            [
                (0.0, 0.0, Histogram::new(bounds.len())),
                (0.0, 0.0, Histogram::new(bounds.len())),
            ]
        });
        let slot = &mut svc[usize::from(!is_entry(r.kind))];
        slot.0 += calls;
        slot.1 += errors;
        slot.2.merge(&h);
    }
    let mut service_rows = Rows::new(&SERVICE_RED);
    for (service, [entry, other]) in &services {
        let (n, e, h) = if entry.2.count > 0.0 || other.2.count == 0.0 {
            entry
        } else {
            other
        };
        service_rows.push(
            [service.clone()],
            &[
                Some(*n),
                Some(*e),
                ms.q(h, 0.5),
                ms.q(h, 0.95),
                ms.q(h, 0.99),
                ms.mean(h),
            ],
        );
    }
    let mut op_rows = Rows::new(&OPERATION_RED);
    // Operations and pods are the many series: a row only for a window they had requests in, so the history
    // grows with activity rather than with every series ever seen.
    for ((service, name, kind), (n, e, h)) in ops.iter().filter(|(_, (n, _, _))| *n > 0.0) {
        op_rows.push(
            [service.clone(), name.clone(), Arc::from(*kind)],
            &[Some(*n), Some(*e), ms.q(h, 0.95), ms.mean(h)],
        );
    }
    (service_rows, op_rows)
}

/// RED per pod, for the pods that had requests in the window.
fn pod_rows(prev: Option<&Snapshot>, cur: &Snapshot) -> Rows {
    let ms = Ms::of(cur);
    let prev_pods: HashMap<_, _> = prev
        .map(|p| {
            p.pods
                .iter()
                .map(|r| ((r.service.clone(), r.pod.clone()), r))
                .collect()
        })
        .unwrap_or_default();
    let mut pod_rows = Rows::new(&POD_RED);
    for r in &cur.pods {
        let p = prev_pods.get(&(r.service.clone(), r.pod.clone()));
        let n = r.calls.saturating_sub(p.map_or(0, |p| p.calls)) as f64;
        let e = r.errors.saturating_sub(p.map_or(0, |p| p.errors)) as f64;
        if n == 0.0 {
            continue;
        }
        let h = delta(&r.duration, p.map(|p| &p.duration));
        pod_rows.push(
            [r.service.clone(), r.pod.clone()],
            &[Some(n), Some(e), ms.q(&h, 0.95), ms.mean(&h)],
        );
    }
    pod_rows
}

/// Requests, failures and server p95 per edge (client, server, connection type).
fn edge_rows(prev: Option<&Snapshot>, cur: &Snapshot) -> Rows {
    let prev_edges: HashMap<_, _> = prev
        .map(|p| p.edges.iter().map(|e| (e.key(), e)).collect())
        .unwrap_or_default();
    let mut edge_rows = Rows::new(&EDGES);
    // Edges with the same client, server and type but other dimension values are one edge here.
    let mut edges: std::collections::BTreeMap<Labels, Totals> = Default::default();
    for e in &cur.edges {
        let p = prev_edges.get(&e.key());
        let entry = edges
            .entry((e.client.clone(), e.server.clone(), e.connection_type.as_label()))
            .or_insert_with(|| (0.0, 0.0, Histogram::new(cur.graph_bounds.len())));
        entry.0 += (e.total - p.map_or(0.0, |p| p.total)).max(0.0);
        entry.1 += (e.failed - p.map_or(0.0, |p| p.failed)).max(0.0);
        entry
            .2
            .merge(&delta(&e.server_latency, p.map(|p| &p.server_latency)));
    }
    for ((client, server, conn), (n, f, h)) in &edges {
        edge_rows.push(
            [client.clone(), server.clone(), Arc::from(*conn)],
            &[Some(*n), Some(*f), quantile_ms(h, &cur.graph_bounds, 0.95, 1e3)],
        );
    }
    edge_rows
}

/// A level per gauge, a per-second rate per counter.
fn metric_rows(prev: Option<&Snapshot>, cur: &Snapshot, seconds: f64) -> Rows {
    let prev_metrics: HashMap<_, _> = prev
        .map(|p| {
            p.metrics
                .iter()
                .map(|m| ((m.service.clone(), m.pod.clone(), m.name.clone()), m))
                .collect()
        })
        .unwrap_or_default();
    let mut metric_rows = Rows::new(&METRICS);
    for m in &cur.metrics {
        let value = match m.kind {
            MetricKind::Gauge => m.last_value,
            MetricKind::Counter => {
                let before = prev_metrics
                    .get(&(m.service.clone(), m.pod.clone(), m.name.clone()))
                    .map_or(0.0, |p| p.increase);
                (m.increase - before).max(0.0) / seconds.max(1e-9)
            }
        };
        metric_rows.push([m.service.clone(), m.pod.clone(), m.name.clone()], &[Some(value)]);
    }
    metric_rows
}

/// Log records per service and severity.
fn log_rows(prev: Option<&Snapshot>, cur: &Snapshot) -> Rows {
    let prev_logs: HashMap<_, _> = prev
        .map(|p| {
            p.logs
                .iter()
                .map(|l| ((l.service.clone(), l.severity), l.records))
                .collect()
        })
        .unwrap_or_default();
    let mut log_rows = Rows::new(&LOGS);
    for l in &cur.logs {
        let before = prev_logs
            .get(&(l.service.clone(), l.severity))
            .copied()
            .unwrap_or(0);
        log_rows.push(
            [l.service.clone(), Arc::from(l.severity)],
            &[Some(l.records.saturating_sub(before) as f64)],
        );
    }
    log_rows
}
