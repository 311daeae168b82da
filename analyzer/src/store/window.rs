//! One window of history from two consecutive snapshots: the deltas of the cumulative counters, one row
//! per series and table.

use std::collections::HashMap;

use std::sync::Arc;

use super::tables::{Chunk, EDGES, Key, LOGS, METRICS, OPERATION_RED, POD_RED, SERVICE_RED, Table};
use crate::graph::EdgeRow;
use crate::red::{Histogram, RedRow, is_entry};
use crate::signals::MetricKind;
use crate::snapshot::Snapshot;

/// The series each table of the history holds rows of (in [`TABLES`](super::tables::TABLES) order), by
/// their shared keys.
pub(super) type Known = [HashMap<Key, usize>];

/// Rows of one window for one table.
struct Rows<'a> {
    width: usize,
    keys: Vec<Key>,
    values: Vec<f64>,
    /// The labels key columns repeat (span kinds, connection types), one allocation each.
    labels: Vec<Arc<str>>,
    /// The series the history's table already holds: a row of one of them takes its key, allocating none.
    known: &'a HashMap<Key, usize>,
}

impl<'a> Rows<'a> {
    /// Rows of `table`, with room for `at_most` of them made at once (the chunk is not regrown while it
    /// fills; what is left over is given back by [`Rows::chunk`]).
    fn new(table: &Table, known: &'a Known, at_most: usize) -> Rows<'a> {
        Rows {
            width: table.width(),
            keys: Vec::with_capacity(at_most),
            values: Vec::with_capacity(at_most * table.width()),
            labels: Vec::new(),
            known: &known[table.index()],
        }
    }

    /// `label` as a key column, shared by every row that has it.
    fn label(&mut self, label: &'static str) -> Arc<str> {
        if let Some(l) = self.labels.iter().find(|l| ***l == *label) {
            return l.clone();
        }
        let l: Arc<str> = Arc::from(label);
        self.labels.push(l.clone());
        l
    }

    /// A row: its key columns and its values (`None`: missing).
    fn push<const N: usize>(&mut self, keys: [Arc<str>; N], values: &[Option<f64>]) {
        debug_assert_eq!(values.len(), self.width);
        let key = match self.known.get_key_value(&keys[..]) {
            Some((known, _)) => known.clone(),
            None => Key::from(keys),
        };
        self.keys.push(key);
        self.values.extend(values.iter().map(|v| v.unwrap_or(f64::NAN)));
    }

    /// The window's chunk, holding no spare capacity: it is kept for the whole retention.
    fn chunk(mut self, ts_ms: i64, seconds: f64) -> Chunk {
        self.keys.shrink_to_fit();
        self.values.shrink_to_fit();
        Chunk::uniform(ts_ms, self.keys, seconds, self.values)
    }
}

/// Quantiles of a histogram in milliseconds (`to_ms` converts its unit).
pub(super) fn quantile_ms(h: &Histogram, bounds: &[f64], q: f64, to_ms: f64) -> Option<f64> {
    h.quantile(bounds, q).map(|v| v * to_ms)
}

/// `rows` in the order of `key`: a merged snapshot's rows already are, and are walked as they stand (no
/// vector of references to every row); other sources' may not be.
fn in_order<'a, T, K: Ord>(rows: &'a [T], key: impl Fn(&'a T) -> K) -> Box<dyn Iterator<Item = &'a T> + 'a> {
    if rows.is_sorted_by_key(&key) {
        return Box::new(rows.iter());
    }
    let mut v: Vec<&T> = rows.iter().collect();
    v.sort_by_key(|r| key(r));
    Box::new(v.into_iter())
}

/// Each row of `cur` with the row of `prev` that has its key (in `key` order): a walk over both, so a
/// window close needs no index of the previous snapshot.
fn paired<'a, T, K: Ord>(
    prev: Option<&'a [T]>,
    cur: &'a [T],
    key: impl Fn(&'a T) -> K + Copy,
) -> impl Iterator<Item = (&'a T, Option<&'a T>)> {
    let mut prev = in_order(prev.unwrap_or_default(), key).peekable();
    in_order(cur, key).map(move |r| {
        let k = key(r);
        while prev.next_if(|p| key(p) < k).is_some() {}
        (r, prev.next_if(|p| key(p) == k))
    })
}

/// The window rows between two snapshots, one chunk per table (in [`TABLES`](super::tables::TABLES) order).
/// `known`: the series the history holds rows of, whose keys the rows share.
pub(super) fn window_chunks(
    prev: Option<&Snapshot>,
    cur: &Snapshot,
    known: &Known,
    ts_ms: i64,
    seconds: f64,
) -> Vec<Chunk> {
    let (service_rows, op_rows) = red_rows(prev, cur, known);
    [
        service_rows,
        op_rows,
        pod_rows(prev, cur, known),
        edge_rows(prev, cur, known),
        metric_rows(prev, cur, known, seconds),
        log_rows(prev, cur, known),
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

/// RED per service (over its entry spans; all spans if it has none) and per operation. Rows come in
/// series order (service, span name, kind, ...), so each service's and each operation's series are
/// neighbours: their totals are summed as the walk passes, with no map of every operation.
fn red_rows<'k>(prev: Option<&Snapshot>, cur: &Snapshot, known: &'k Known) -> (Rows<'k>, Rows<'k>) {
    let ms = Ms::of(cur);
    let mut service_rows = Rows::new(&SERVICE_RED, known, 0);
    let mut op_rows = Rows::new(&OPERATION_RED, known, cur.red.len());
    // The service and span name at hand: its entry and other spans' totals, and its operations' per kind.
    let mut service: Option<(Arc<str>, [Totals; 2])> = None;
    let mut name: Option<Arc<str>> = None;
    let mut ops: Vec<(&'static str, Totals)> = Vec::new();
    let rows = paired(prev.map(|p| &p.red[..]), &cur.red, RedRow::id)
        // What services past the series budget sent is in the exposition and the budget's counters; the
        // history has no service to file it under.
        .filter(|(r, _)| !(r.overflow && r.service.is_empty()));
    for (r, p) in rows {
        if name.as_ref().is_some_and(|n| *n != r.span_name)
            || service.as_ref().is_some_and(|(s, _)| *s != r.service)
        {
            let service = service.as_ref().map(|s| &s.0);
            operations(&mut op_rows, &ms, service, name.take(), &mut ops);
        }
        if service.as_ref().is_some_and(|(s, _)| *s != r.service) {
            service_row(&mut service_rows, &ms, service.take());
        }
        let calls = r.calls.saturating_sub(p.map_or(0, |p| p.calls)) as f64;
        let errors = if r.status == crate::records::StatusCode::Error {
            calls
        } else {
            0.0
        };
        name.get_or_insert_with(|| r.span_name.clone());
        let kind = r.kind.as_label();
        let op = match ops.iter().position(|(k, _)| *k == kind) {
            Some(i) => &mut ops[i].1,
            None => {
                ops.push((kind, Totals::default()));
                &mut ops.last_mut().expect("just pushed").1
            }
        };
        op.0 += calls;
        op.1 += errors;
        let (_, svc) = service.get_or_insert_with(|| (r.service.clone(), Default::default()));
        let slot = &mut svc[usize::from(!is_entry(r.kind))];
        slot.0 += calls;
        slot.1 += errors;
        let prev = p.map(|p| &p.duration);
        op.2.merge_since(&r.duration, prev);
        slot.2.merge_since(&r.duration, prev);
    }
    operations(&mut op_rows, &ms, service.as_ref().map(|s| &s.0), name, &mut ops);
    service_row(&mut service_rows, &ms, service.take());
    (service_rows, op_rows)
}

/// The row of a service: its entry spans' RED, or all its spans' when it had no entry spans.
fn service_row(rows: &mut Rows, ms: &Ms, service: Option<(Arc<str>, [Totals; 2])>) {
    let Some((service, [entry, other])) = service else {
        return;
    };
    let (n, e, h) = if entry.2.count > 0.0 || other.2.count == 0.0 {
        entry
    } else {
        other
    };
    rows.push(
        [service],
        &[
            Some(n),
            Some(e),
            ms.q(&h, 0.5),
            ms.q(&h, 0.95),
            ms.q(&h, 0.99),
            ms.mean(&h),
        ],
    );
}

/// The rows of one span name's operations (`ops`: one per kind, taken out; in label order). Operations
/// and pods are the many series: a row only for a window they had requests in, so the history grows with
/// activity rather than with every series ever seen.
fn operations(
    rows: &mut Rows,
    ms: &Ms,
    service: Option<&Arc<str>>,
    name: Option<Arc<str>>,
    ops: &mut Vec<(&'static str, Totals)>,
) {
    let (Some(service), Some(name)) = (service, name) else {
        return;
    };
    ops.sort_by_key(|(kind, _)| *kind);
    for (kind, (n, e, h)) in ops.drain(..).filter(|(_, (n, _, _))| *n > 0.0) {
        let kind = rows.label(kind);
        rows.push(
            [service.clone(), name.clone(), kind],
            &[Some(n), Some(e), ms.q(&h, 0.95), ms.mean(&h)],
        );
    }
}

/// RED per pod, for the pods that had requests in the window.
fn pod_rows<'k>(prev: Option<&Snapshot>, cur: &Snapshot, known: &'k Known) -> Rows<'k> {
    let ms = Ms::of(cur);
    let mut pod_rows = Rows::new(&POD_RED, known, cur.pods.len());
    for (r, p) in paired(prev.map(|p| &p.pods[..]), &cur.pods, |r| (&*r.service, &*r.pod)) {
        let n = r.calls.saturating_sub(p.map_or(0, |p| p.calls)) as f64;
        let e = r.errors.saturating_sub(p.map_or(0, |p| p.errors)) as f64;
        if n == 0.0 {
            continue;
        }
        let h = r.duration.since(p.map(|p| &p.duration));
        pod_rows.push(
            [r.service.clone(), r.pod.clone()],
            &[Some(n), Some(e), ms.q(&h, 0.95), ms.mean(&h)],
        );
    }
    pod_rows
}

/// Requests, failures and server p95 per edge (client, server, connection type).
fn edge_rows<'k>(prev: Option<&Snapshot>, cur: &Snapshot, known: &'k Known) -> Rows<'k> {
    let mut edge_rows = Rows::new(&EDGES, known, cur.edges.len());
    // Edges with the same client, server and type but other dimension values are one edge here.
    let mut edges: std::collections::BTreeMap<Labels, Totals> = Default::default();
    for (e, p) in paired(prev.map(|p| &p.edges[..]), &cur.edges, EdgeRow::id) {
        let entry = edges
            .entry((e.client.clone(), e.server.clone(), e.connection_type.as_label()))
            .or_default();
        entry.0 += (e.total - p.map_or(0.0, |p| p.total)).max(0.0);
        entry.1 += (e.failed - p.map_or(0.0, |p| p.failed)).max(0.0);
        entry
            .2
            .merge_since(&e.server_latency, p.map(|p| &p.server_latency));
    }
    for ((client, server, conn), (n, f, h)) in &edges {
        let conn = edge_rows.label(conn);
        edge_rows.push(
            [client.clone(), server.clone(), conn],
            &[Some(*n), Some(*f), quantile_ms(h, &cur.graph_bounds, 0.95, 1e3)],
        );
    }
    edge_rows
}

/// A level per gauge, a per-second rate per counter.
fn metric_rows<'k>(prev: Option<&Snapshot>, cur: &Snapshot, known: &'k Known, seconds: f64) -> Rows<'k> {
    let prev_metrics: HashMap<_, _> = prev
        .map(|p| {
            p.metrics
                .iter()
                .map(|m| ((m.service.clone(), m.pod.clone(), m.name.clone()), m))
                .collect()
        })
        .unwrap_or_default();
    let mut metric_rows = Rows::new(&METRICS, known, cur.metrics.len());
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
fn log_rows<'k>(prev: Option<&Snapshot>, cur: &Snapshot, known: &'k Known) -> Rows<'k> {
    let prev_logs: HashMap<_, _> = prev
        .map(|p| {
            p.logs
                .iter()
                .map(|l| ((l.service.clone(), l.severity), l.records))
                .collect()
        })
        .unwrap_or_default();
    let mut log_rows = Rows::new(&LOGS, known, cur.logs.len());
    for l in &cur.logs {
        let before = prev_logs
            .get(&(l.service.clone(), l.severity))
            .copied()
            .unwrap_or(0);
        let severity = log_rows.label(l.severity);
        log_rows.push(
            [l.service.clone(), severity],
            &[Some(l.records.saturating_sub(before) as f64)],
        );
    }
    log_rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_pair_with_the_previous_row_of_their_key_in_any_order() {
        let prev = [("b", 2), ("a", 1), ("d", 4)];
        let cur = [("c", 30), ("a", 10), ("b", 20)];
        let got: Vec<_> = paired(Some(&prev[..]), &cur, |r: &(&str, i32)| r.0)
            .map(|(r, p)| (r.1, p.map(|p| p.1)))
            .collect();
        // In key order; "c" is new, "d" is gone.
        assert_eq!(got, vec![(10, Some(1)), (20, Some(2)), (30, None)]);
        assert_eq!(
            paired(None, &cur, |r: &(&str, i32)| r.0)
                .filter(|(_, p)| p.is_some())
                .count(),
            0
        );
    }
}
