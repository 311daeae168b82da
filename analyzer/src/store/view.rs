//! What readers ask of the history: RED summaries by typed key, RED over time, metric series. Queries run
//! over the shared chunks directly: filter by time (whole chunks) and key, group, combine.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::tables::{
    Chunk, EDGES, Key, METRICS, OPERATION_RED, POD_RED, SERVICE_RED, TABLES, Table, TableRows,
};
use crate::Result;

/// One row of a table, as queries and rollups read it.
pub(super) struct Row<'a> {
    pub(super) ts: i64,
    pub(super) key: &'a Key,
    pub(super) seconds: f64,
    pub(super) values: &'a [f64],
}

/// The rows of `chunks` with `from_ms < ts <= to_ms`.
pub(super) fn rows<'a>(
    t: &Table,
    chunks: impl IntoIterator<Item = &'a Arc<Chunk>>,
    from_ms: i64,
    to_ms: i64,
) -> impl Iterator<Item = Row<'a>> {
    let width = t.width();
    chunks
        .into_iter()
        .filter(move |c| c.ts > from_ms && c.ts <= to_ms)
        .flat_map(move |c| {
            (0..c.len()).map(move |i| Row {
                ts: c.ts,
                key: &c.keys[i],
                seconds: c.seconds(i),
                values: c.row(i, width),
            })
        })
}

/// The start of the `step_ms`-long bucket `ts` falls in.
pub(super) fn bucket(ts: i64, step_ms: i64) -> i64 {
    ts - ts.rem_euclid(step_ms.max(1))
}

/// Rows of a group combined: counts summed, latencies averaged weighted by requests (over the rows that
/// have one), levels averaged. What a rollup keeps and what a query over a longer step answers.
#[derive(Clone, Debug)]
pub(super) struct Combined {
    pub(super) seconds: f64,
    /// Per value column: the sum (counts), or the numerator of the mean.
    num: Vec<f64>,
    /// Per value column: the weight (latencies) or number of rows (levels) behind the mean.
    den: Vec<f64>,
}

impl Combined {
    fn new(width: usize) -> Combined {
        Combined {
            seconds: 0.0,
            num: vec![0.0; width],
            den: vec![0.0; width],
        }
    }

    /// Adds `row`; `weight` is the column latencies are weighted by (requests), if the table has latencies.
    fn add(&mut self, t: &Table, row: &Row<'_>, weight: Option<usize>) {
        self.seconds += row.seconds;
        let (n_sums, n_weighted) = (t.sums.len(), t.weighted.len());
        let weight = weight.map_or(0.0, |c| row.values[c]);
        for (c, &v) in row.values.iter().enumerate() {
            if v.is_nan() {
                continue;
            }
            if c < n_sums {
                self.num[c] += v;
            } else if c < n_sums + n_weighted {
                self.num[c] += v * weight;
                self.den[c] += weight;
            } else {
                self.num[c] += v;
                self.den[c] += 1.0;
            }
        }
    }

    /// The combined value of every column (NaN: no row had one).
    pub(super) fn values(&self, t: &Table) -> Vec<f64> {
        (0..self.num.len()).map(|c| self.value_at(t, c)).collect()
    }

    fn value_at(&self, t: &Table, c: usize) -> f64 {
        if c < t.sums.len() {
            self.num[c]
        } else if self.den[c] > 0.0 {
            self.num[c] / self.den[c]
        } else {
            f64::NAN
        }
    }

    /// The combined value of column `name`, `None` if no row had one.
    fn get(&self, t: &Table, name: &str) -> Option<f64> {
        Some(self.value_at(t, t.col(name))).filter(|v| !v.is_nan())
    }
}

/// Combines `rows` by the group each falls in, in the groups' order.
pub(super) fn aggregate<'a, G: Ord>(
    t: &Table,
    rows: impl Iterator<Item = Row<'a>>,
    group: impl Fn(&Row<'a>) -> G,
) -> BTreeMap<G, Combined> {
    let weight = (!t.weighted.is_empty()).then(|| t.col("requests"));
    let mut groups: BTreeMap<G, Combined> = BTreeMap::new();
    for row in rows {
        groups
            .entry(group(&row))
            .or_insert_with(|| Combined::new(t.width()))
            .add(t, &row, weight);
    }
    groups
}

/// RED of a service (or pod, operation) over one time bucket.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RedPoint {
    /// End of the bucket, milliseconds since the Unix epoch.
    pub ts: i64,
    pub requests: f64,
    /// Requests per second.
    pub rate: f64,
    pub errors: f64,
    pub error_ratio: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One key's RED over a whole range; serialised flat (the key's fields, then the figures).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RedSummary<K> {
    /// What the row is about: a [`ServiceKey`], [`OperationKey`], [`PodKey`] or [`EdgeKey`].
    #[serde(flatten)]
    pub key: K,
    pub requests: f64,
    pub rate: f64,
    pub errors: f64,
    pub error_ratio: f64,
    pub p95_ms: Option<f64>,
}

impl<K> RedSummary<K> {
    /// The same figures under another key (e.g. the name an API answers with).
    pub fn with_key<L>(&self, key: L) -> RedSummary<L> {
        RedSummary {
            key,
            requests: self.requests,
            rate: self.rate,
            errors: self.errors,
            error_ratio: self.error_ratio,
            p95_ms: self.p95_ms,
        }
    }
}

/// The key of a summary row, read from its table's key columns in order.
pub trait SeriesKey: Sized {
    /// `values` holds the row's key columns in the table's order.
    fn from_row(values: &mut dyn Iterator<Item = String>) -> Self;
}

/// A service's row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ServiceKey {
    pub service: String,
}

/// An operation (span name and kind) of a service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct OperationKey {
    pub service: String,
    pub span_name: String,
    pub span_kind: String,
}

/// A pod of a service (empty: spans without a pod name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct PodKey {
    pub service: String,
    pub pod: String,
}

/// An edge of the service graph.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct EdgeKey {
    pub client: String,
    pub server: String,
    pub connection_type: String,
}

pub(super) fn next(values: &mut dyn Iterator<Item = String>) -> String {
    values.next().unwrap_or_default()
}

impl SeriesKey for ServiceKey {
    fn from_row(v: &mut dyn Iterator<Item = String>) -> Self {
        ServiceKey { service: next(v) }
    }
}

impl SeriesKey for OperationKey {
    fn from_row(v: &mut dyn Iterator<Item = String>) -> Self {
        let (service, span_name, span_kind) = (next(v), next(v), next(v));
        OperationKey {
            service,
            span_name,
            span_kind,
        }
    }
}

impl SeriesKey for PodKey {
    fn from_row(v: &mut dyn Iterator<Item = String>) -> Self {
        let (service, pod) = (next(v), next(v));
        PodKey { service, pod }
    }
}

impl SeriesKey for EdgeKey {
    fn from_row(v: &mut dyn Iterator<Item = String>) -> Self {
        let (client, server, connection_type) = (next(v), next(v), next(v));
        EdgeKey {
            client,
            server,
            connection_type,
        }
    }
}

/// A point of a metric series.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SeriesPoint {
    pub ts: i64,
    pub value: f64,
}

/// The history as readers see it: immutable, shared.
#[derive(Clone)]
pub struct HistoryView {
    tables: Arc<Vec<TableRows>>,
    /// Every service with a row in the history (raw or rolled up), so checking a name is a lookup.
    services: Arc<BTreeSet<Arc<str>>>,
}

impl Default for HistoryView {
    fn default() -> Self {
        HistoryView::new(vec![TableRows::default(); TABLES.len()], Arc::default())
    }
}

/// Whether a row's first key column (the service, or the client of an edge) is `service`.
fn of_service<'a>(service: &'a str) -> impl Fn(&Row<'_>) -> bool + 'a {
    move |r| &*r.key[0] == service
}

impl HistoryView {
    /// A view of `tables`, with `services`, the index of the services they hold.
    pub(super) fn new(tables: Vec<TableRows>, services: Arc<BTreeSet<Arc<str>>>) -> HistoryView {
        HistoryView {
            tables: Arc::new(tables),
            services,
        }
    }

    /// The rows of `table` in the range, rolled up and raw.
    fn rows<'a>(&'a self, table: &Table, from_ms: i64, to_ms: i64) -> impl Iterator<Item = Row<'a>> {
        let f = &self.tables[table.index()];
        rows(table, f.rollup.iter().chain(&f.raw), from_ms, to_ms)
    }

    /// Services seen in the range.
    pub fn services(&self, from_ms: i64, to_ms: i64) -> Result<Vec<RedSummary<ServiceKey>>> {
        Ok(self.summaries(&SERVICE_RED, from_ms, to_ms, |_| true))
    }

    /// Whether `name` has any row in the history (a lookup in the view's index of services).
    pub fn has_service(&self, name: &str) -> bool {
        self.services.contains(name)
    }

    /// A table's keys with their RED over the range, sorted by key.
    fn summaries<K: SeriesKey>(
        &self,
        t: &Table,
        from_ms: i64,
        to_ms: i64,
        keep: impl Fn(&Row<'_>) -> bool,
    ) -> Vec<RedSummary<K>> {
        let groups = aggregate(t, self.rows(t, from_ms, to_ms).filter(keep), |r| r.key.clone());
        groups
            .into_iter()
            .map(|(key, c)| {
                let n = c.get(t, "requests").unwrap_or(0.0);
                let e = c.get(t, "errors").unwrap_or(0.0);
                // Every known series has a row in every window, so its summed seconds is the time covered.
                let secs = c.seconds;
                RedSummary {
                    key: K::from_row(&mut key.iter().map(|k| k.to_string())),
                    requests: n,
                    rate: if secs > 0.0 { n / secs } else { 0.0 },
                    errors: e,
                    error_ratio: if n > 0.0 { e / n } else { 0.0 },
                    p95_ms: c.get(t, "p95_ms"),
                }
            })
            .collect()
    }

    /// Per-operation RED of one service over the range.
    pub fn operations(
        &self,
        service: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<RedSummary<OperationKey>>> {
        Ok(self.summaries(&OPERATION_RED, from_ms, to_ms, of_service(service)))
    }

    /// Per-pod RED of one service over the range.
    pub fn pods(&self, service: &str, from_ms: i64, to_ms: i64) -> Result<Vec<RedSummary<PodKey>>> {
        Ok(self.summaries(&POD_RED, from_ms, to_ms, of_service(service)))
    }

    /// Edges with traffic in the range.
    pub fn edges(&self, from_ms: i64, to_ms: i64) -> Result<Vec<RedSummary<EdgeKey>>> {
        Ok(self.summaries(&EDGES, from_ms, to_ms, |_| true))
    }

    /// A service's RED in `step_ms` buckets over the range.
    pub fn service_red(
        &self,
        service: &str,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<RedPoint>> {
        let t = &SERVICE_RED;
        let rows = self.rows(t, from_ms, to_ms).filter(of_service(service));
        Ok(aggregate(t, rows, |r| bucket(r.ts, step_ms))
            .into_iter()
            .map(|(b, c)| {
                let requests = c.get(t, "requests").unwrap_or(0.0);
                let errors = c.get(t, "errors").unwrap_or(0.0);
                RedPoint {
                    ts: b + step_ms,
                    requests,
                    rate: if c.seconds > 0.0 {
                        requests / c.seconds
                    } else {
                        0.0
                    },
                    errors,
                    error_ratio: if requests > 0.0 { errors / requests } else { 0.0 },
                    p50_ms: c.get(t, "p50_ms"),
                    p95_ms: c.get(t, "p95_ms"),
                    p99_ms: c.get(t, "p99_ms"),
                }
            })
            .collect())
    }

    /// A metric's values (levels, or per-second rates for counters), averaged over `step_ms` buckets; the
    /// pods of the service are averaged unless `pod` names one.
    pub fn series(
        &self,
        service: &str,
        pod: Option<&str>,
        name: &str,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<SeriesPoint>> {
        let t = &METRICS;
        // Key columns: service, pod, name.
        let rows = self
            .rows(t, from_ms, to_ms)
            .filter(|r| &*r.key[0] == service && &*r.key[2] == name && pod.is_none_or(|p| &*r.key[1] == p));
        Ok(aggregate(t, rows, |r| bucket(r.ts, step_ms))
            .into_iter()
            .filter_map(|(b, c)| {
                Some(SeriesPoint {
                    ts: b + step_ms,
                    value: c.get(t, "value")?,
                })
            })
            .collect())
    }

    /// Metric names known for a service.
    pub fn metric_names(&self, service: &str) -> Result<Vec<String>> {
        let names: BTreeSet<&str> = self
            .rows(&METRICS, i64::MIN, i64::MAX)
            .filter(of_service(service))
            .map(|r| &*r.key[2])
            .collect();
        Ok(names.into_iter().map(str::to_owned).collect())
    }

    /// Newest row time of any table, if any.
    pub fn latest_ts(&self) -> Option<i64> {
        self.tables
            .iter()
            .filter_map(|f| f.raw.iter().map(|c| c.ts).max())
            .max()
    }
}
