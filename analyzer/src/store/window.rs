//! One window of history from two consecutive snapshots: the deltas of the cumulative counters, one row
//! per series and table.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use super::tables::{Chunk, EDGES, Key, LOGS, METRICS, OPERATION_RED, POD_RED, SERVICE_RED, Table};
use crate::graph::EdgeRow;
use crate::red::{Histogram, PodRow, RedRow, is_entry};
use crate::signals::MetricKind;
use crate::snapshot::Snapshot;

/// The series each table of the history holds rows of (in [`TABLES`](super::tables::TABLES) order), by
/// their shared keys.
pub(super) type Known = [HashMap<Key, usize>];

/// Rows of one window for one table.
struct Rows {
    /// The table's place in [`TABLES`](super::tables::TABLES).
    table: usize,
    width: usize,
    chunk: Chunk,
    /// The labels key columns repeat (span kinds, connection types), one allocation each.
    labels: Vec<Arc<str>>,
}

impl Rows {
    /// Rows of `table`, with room for `at_most` of them made at once (what is left over is given back by
    /// [`Rows::chunk`]).
    fn new(table: &Table, at_most: usize) -> Rows {
        let mut chunk = Chunk::default();
        chunk.keys.reserve_exact(at_most);
        chunk.values.reserve_exact(at_most * table.width());
        Rows {
            table: table.index(),
            width: table.width(),
            chunk,
            labels: Vec::new(),
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

    /// A row: its key columns and its values (`None`: missing). A row of a series the history's table
    /// already holds (`known`) takes its key, allocating none.
    fn push<const N: usize>(&mut self, known: &Known, keys: [Arc<str>; N], values: &[Option<f64>]) {
        debug_assert_eq!(values.len(), self.width);
        let key = match known[self.table].get_key_value(&keys[..]) {
            Some((known, _)) => known.clone(),
            None => Key::from(keys),
        };
        self.chunk.keys.push(key);
        self.chunk
            .values
            .extend(values.iter().map(|v| v.unwrap_or(f64::NAN)));
    }

    /// The window's chunk, holding no spare capacity: it is kept for the whole retention. Rows added a
    /// group of services at a time are in no overall order; nothing reads a chunk in order (queries and
    /// rollups group rows by key).
    fn chunk(mut self, ts_ms: i64, seconds: f64) -> Chunk {
        let c = &mut self.chunk;
        c.keys.shrink_to_fit();
        c.values.shrink_to_fit();
        c.ts = ts_ms;
        c.seconds = vec![seconds; c.keys.len()];
        self.chunk
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

/// A window being closed: its rows so far, and what the previous snapshot's rows become. The counters
/// come in parts (a group of one shard's services at a time, or a whole snapshot); each part's RED and pod
/// rows are turned into window rows against the previous snapshot and then replace their rows there, so
/// a window close holds the previous snapshot and one part, never two whole snapshots.
pub(super) struct Window {
    services: Rows,
    operations: Rows,
    pods: Rows,
    /// Which of the previous snapshot's RED rows and pods a part has replaced.
    seen_red: Vec<bool>,
    seen_pods: Vec<bool>,
    /// Series and pods the previous snapshot does not have.
    new_red: Vec<RedRow>,
    new_pods: Vec<PodRow>,
    /// The parts' edges, graph counters, metrics and logs, with their units and bounds: the first part,
    /// its RED and pod rows taken out, and the others' added to it.
    rest: Snapshot,
}

impl Window {
    /// A window of the rows of `part` (the first), against `prev`.
    pub(super) fn new(prev: Option<&mut Snapshot>, part: Snapshot, known: &Known) -> Window {
        let (red, pods) = prev.as_ref().map_or((0, 0), |p| (p.red.len(), p.pods.len()));
        let mut rest = part;
        let part = Snapshot {
            red: std::mem::take(&mut rest.red),
            pods: std::mem::take(&mut rest.pods),
            edges: std::mem::take(&mut rest.edges),
            metrics: std::mem::take(&mut rest.metrics),
            logs: std::mem::take(&mut rest.logs),
            graph: std::mem::take(&mut rest.graph),
            ..rest.clone()
        };
        let mut w = Window {
            services: Rows::new(&SERVICE_RED, 0),
            operations: Rows::new(&OPERATION_RED, red),
            pods: Rows::new(&POD_RED, pods),
            seen_red: vec![false; red],
            seen_pods: vec![false; pods],
            new_red: Vec::new(),
            new_pods: Vec::new(),
            rest,
        };
        w.add(prev, part, known);
        w
    }

    /// Adds the rows of `part`, whose services' RED series and pods no other part of the window holds.
    pub(super) fn add(&mut self, prev: Option<&mut Snapshot>, mut part: Snapshot, known: &Known) {
        let mut red = std::mem::take(&mut part.red);
        // What services past the series budget sent is in the exposition and the budget's counters; the
        // history has no service to file it under (and every shard may hold some of it).
        red.retain(|r| !(r.overflow && r.service.is_empty()));
        let pods = std::mem::take(&mut part.pods);
        let ms = Ms::of(&part);
        let (prev_red, prev_pods) = match &prev {
            Some(p) => (Some(&p.red[..]), Some(&p.pods[..])),
            None => (None, None),
        };
        let rows = (&mut self.services, &mut self.operations);
        red_rows(prev_red, &red, &ms, known, rows);
        pod_rows(prev_pods, &pods, &ms, known, &mut self.pods);
        match prev {
            Some(p) => {
                replace(&mut p.red, &mut self.seen_red, &mut self.new_red, red, red_order);
                replace(
                    &mut p.pods,
                    &mut self.seen_pods,
                    &mut self.new_pods,
                    pods,
                    pod_order,
                );
            }
            None => {
                self.new_red.extend(red);
                self.new_pods.extend(pods);
            }
        }
        let rest = &mut self.rest;
        rest.add_edges(part.edges.into_iter());
        rest.graph.add(&part.graph);
        rest.metrics.extend(part.metrics);
        rest.logs.extend(part.logs);
    }

    /// The window's rows, one chunk per table (in [`TABLES`](super::tables::TABLES) order), and the
    /// snapshot the next window starts from (taken at `taken_at`): `prev`'s rows as the parts replaced
    /// them, and the new ones; a row no part had is gone, as it would be from a snapshot taken whole.
    pub(super) fn finish(
        self,
        mut prev: Option<Snapshot>,
        taken_at: SystemTime,
        known: &Known,
        ts_ms: i64,
        seconds: f64,
    ) -> (Vec<Chunk>, Snapshot) {
        let mut cur = self.rest;
        cur.taken_at = taken_at;
        let (red, pods) = match prev.as_mut() {
            Some(p) => (std::mem::take(&mut p.red), std::mem::take(&mut p.pods)),
            None => Default::default(),
        };
        cur.red = kept(red, &self.seen_red, self.new_red, red_order);
        cur.pods = kept(pods, &self.seen_pods, self.new_pods, pod_order);
        let prev = prev.as_ref();
        let chunks = [
            self.services,
            self.operations,
            self.pods,
            edge_rows(prev, &cur, known),
            metric_rows(prev, &cur, known, seconds),
            log_rows(prev, &cur, known),
        ]
        .into_iter()
        .map(|r| r.chunk(ts_ms, seconds))
        .collect();
        (chunks, cur)
    }
}

fn red_order(a: &RedRow, b: &RedRow) -> Ordering {
    a.id().cmp(&b.id())
}

fn pod_order(a: &PodRow, b: &PodRow) -> Ordering {
    (&a.service, &a.pod).cmp(&(&b.service, &b.pod))
}

/// Replaces each row of `part` in `prev` (in `order`), marking it `seen`; a row `prev` does not have goes
/// to `new`.
fn replace<T>(
    prev: &mut [T],
    seen: &mut [bool],
    new: &mut Vec<T>,
    part: Vec<T>,
    order: fn(&T, &T) -> Ordering,
) {
    for r in part {
        match prev.binary_search_by(|p| order(p, &r)) {
            Ok(i) => {
                prev[i] = r;
                seen[i] = true;
            }
            Err(_) => new.push(r),
        }
    }
}

/// The `seen` rows of `rows` and the `new` ones, in `order`.
fn kept<T>(mut rows: Vec<T>, seen: &[bool], mut new: Vec<T>, order: fn(&T, &T) -> Ordering) -> Vec<T> {
    let mut seen = seen.iter();
    rows.retain(|_| seen.next().copied().unwrap_or(false));
    if rows.is_empty() {
        // The first window: every row is new, and not copied again.
        new.sort_unstable_by(order);
        new.shrink_to_fit();
        return new;
    }
    if !new.is_empty() {
        rows.reserve_exact(new.len());
        rows.extend(new);
        rows.sort_unstable_by(order);
    }
    rows.shrink_to_fit();
    rows
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
fn red_rows(
    prev: Option<&[RedRow]>,
    cur: &[RedRow],
    ms: &Ms,
    known: &Known,
    (service_rows, op_rows): (&mut Rows, &mut Rows),
) {
    // The service and span name at hand: its entry and other spans' totals, and its operations' per kind.
    let mut service: Option<(Arc<str>, [Totals; 2])> = None;
    let mut name: Option<Arc<str>> = None;
    let mut ops: Vec<(&'static str, Totals)> = Vec::new();
    for (r, p) in paired(prev, cur, RedRow::id) {
        if name.as_ref().is_some_and(|n| *n != r.span_name)
            || service.as_ref().is_some_and(|(s, _)| *s != r.service)
        {
            let service = service.as_ref().map(|s| &s.0);
            operations(op_rows, ms, known, service, name.take(), &mut ops);
        }
        if service.as_ref().is_some_and(|(s, _)| *s != r.service) {
            service_row(service_rows, ms, known, service.take());
        }
        let calls = r.calls.saturating_sub(p.map_or(0, |p| p.calls)) as f64;
        let errors = if r.status == crate::records::StatusCode::Error {
            calls
        } else {
            0.0
        };
        let h = r.duration.since(p.map(|p| &p.duration));
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
        op.2.merge(&h);
        let (_, svc) = service.get_or_insert_with(|| (r.service.clone(), Default::default()));
        let slot = &mut svc[usize::from(!is_entry(r.kind))];
        slot.0 += calls;
        slot.1 += errors;
        slot.2.merge(&h);
    }
    operations(op_rows, ms, known, service.as_ref().map(|s| &s.0), name, &mut ops);
    service_row(service_rows, ms, known, service.take());
}

/// The row of a service: its entry spans' RED, or all its spans' when it had no entry spans.
fn service_row(rows: &mut Rows, ms: &Ms, known: &Known, service: Option<(Arc<str>, [Totals; 2])>) {
    let Some((service, [entry, other])) = service else {
        return;
    };
    let (n, e, h) = if entry.2.count > 0.0 || other.2.count == 0.0 {
        entry
    } else {
        other
    };
    rows.push(
        known,
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
    known: &Known,
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
            known,
            [service.clone(), name.clone(), kind],
            &[Some(n), Some(e), ms.q(&h, 0.95), ms.mean(&h)],
        );
    }
}

/// RED per pod, for the pods that had requests in the window.
fn pod_rows(prev: Option<&[PodRow]>, cur: &[PodRow], ms: &Ms, known: &Known, rows: &mut Rows) {
    for (r, p) in paired(prev, cur, |r| (&*r.service, &*r.pod)) {
        let n = r.calls.saturating_sub(p.map_or(0, |p| p.calls)) as f64;
        let e = r.errors.saturating_sub(p.map_or(0, |p| p.errors)) as f64;
        if n == 0.0 {
            continue;
        }
        let h = r.duration.since(p.map(|p| &p.duration));
        rows.push(
            known,
            [r.service.clone(), r.pod.clone()],
            &[Some(n), Some(e), ms.q(&h, 0.95), ms.mean(&h)],
        );
    }
}

/// Requests, failures and server p95 per edge (client, server, connection type).
fn edge_rows(prev: Option<&Snapshot>, cur: &Snapshot, known: &Known) -> Rows {
    let mut edge_rows = Rows::new(&EDGES, cur.edges.len());
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
            .merge(&e.server_latency.since(p.map(|p| &p.server_latency)));
    }
    for ((client, server, conn), (n, f, h)) in &edges {
        let conn = edge_rows.label(conn);
        edge_rows.push(
            known,
            [client.clone(), server.clone(), conn],
            &[Some(*n), Some(*f), quantile_ms(h, &cur.graph_bounds, 0.95, 1e3)],
        );
    }
    edge_rows
}

/// A level per gauge, a per-second rate per counter.
fn metric_rows(prev: Option<&Snapshot>, cur: &Snapshot, known: &Known, seconds: f64) -> Rows {
    let prev_metrics: HashMap<_, _> = prev
        .map(|p| {
            p.metrics
                .iter()
                .map(|m| ((m.service.clone(), m.pod.clone(), m.name.clone()), m))
                .collect()
        })
        .unwrap_or_default();
    let mut metric_rows = Rows::new(&METRICS, cur.metrics.len());
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
        metric_rows.push(
            known,
            [m.service.clone(), m.pod.clone(), m.name.clone()],
            &[Some(value)],
        );
    }
    metric_rows
}

/// Log records per service and severity.
fn log_rows(prev: Option<&Snapshot>, cur: &Snapshot, known: &Known) -> Rows {
    let prev_logs: HashMap<_, _> = prev
        .map(|p| {
            p.logs
                .iter()
                .map(|l| ((l.service.clone(), l.severity), l.records))
                .collect()
        })
        .unwrap_or_default();
    let mut log_rows = Rows::new(&LOGS, cur.logs.len());
    for l in &cur.logs {
        let before = prev_logs
            .get(&(l.service.clone(), l.severity))
            .copied()
            .unwrap_or(0);
        let severity = log_rows.label(l.severity);
        log_rows.push(
            known,
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
