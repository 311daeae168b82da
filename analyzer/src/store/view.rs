//! What readers ask of the history: RED summaries by typed key, RED over time, metric series.

use std::collections::BTreeSet;
use std::sync::Arc;

use polars::prelude::*;

use super::tables::{
    EDGES, Frames, METRICS, OPERATION_RED, POD_RED, SERVICE_RED, TABLES, Table, empty_frame, f64_col,
    i64_col, polars_err, str_col,
};
use crate::Result;

/// Aggregates `lf` by `keys` (and by `step`-long time buckets when `step_ms` is given).
pub(super) fn aggregate(lf: LazyFrame, t: &Table, step_ms: Option<i64>) -> LazyFrame {
    let mut by: Vec<Expr> = t.keys.iter().map(|k| col(*k)).collect();
    let lf = match step_ms {
        Some(step) => {
            by.insert(0, col("bucket"));
            lf.with_column((col("ts") - col("ts") % lit(step)).alias("bucket"))
        }
        None => lf,
    };
    let mut aggs = vec![col("seconds").sum(), col("ts").max()];
    aggs.extend(t.sums.iter().map(|c| col(*c).sum()));
    for w in t.weighted {
        // The mean weighted by requests, over the rows that have a value.
        let weight = when(col(*w).is_not_null())
            .then(col("requests"))
            .otherwise(lit(0.0));
        let num = (col(*w).fill_null(lit(0.0)) * weight.clone()).sum();
        let den = weight.sum();
        aggs.push(
            when(den.clone().gt(lit(0.0)))
                .then(num / den)
                .otherwise(lit(NULL).cast(DataType::Float64))
                .alias(*w),
        );
    }
    aggs.extend(t.means.iter().map(|c| col(*c).mean()));
    lf.group_by(by).agg(aggs)
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
    tables: Arc<Vec<Frames>>,
    /// Every service with a row in the history (raw or rolled up), so checking a name is a lookup.
    services: Arc<BTreeSet<String>>,
}

/// Every service with a row in `tables` (raw or rolled up): the distinct values of the service table's
/// `service` column, found by polars (only the distinct names are copied).
pub(super) fn index_services(tables: &[Frames]) -> Result<Arc<BTreeSet<String>>> {
    let services = &tables[TABLES
        .iter()
        .position(|t| t.name == SERVICE_RED.name)
        .expect("known table")];
    let mut names = BTreeSet::new();
    for df in [&services.raw, &services.rollup] {
        let unique = df
            .column("service")
            .map_err(polars_err)?
            .unique()
            .map_err(polars_err)?;
        let column = unique.str().map_err(polars_err)?;
        names.extend(column.iter().flatten().map(str::to_owned));
    }
    Ok(Arc::new(names))
}

impl Default for HistoryView {
    fn default() -> Self {
        HistoryView {
            tables: Arc::new(
                TABLES
                    .iter()
                    .map(|t| Frames {
                        raw: empty_frame(t),
                        rollup: empty_frame(t),
                    })
                    .collect(),
            ),
            services: Arc::default(),
        }
    }
}

impl HistoryView {
    /// A view of `tables`, with `services`, the index of the services they hold.
    pub(super) fn new(tables: Vec<Frames>, services: Arc<BTreeSet<String>>) -> HistoryView {
        HistoryView {
            tables: Arc::new(tables),
            services,
        }
    }

    fn frame(&self, table: &Table, from_ms: i64, to_ms: i64, filter: Option<Expr>) -> Result<LazyFrame> {
        let i = TABLES
            .iter()
            .position(|t| t.name == table.name)
            .expect("known table");
        let f = &self.tables[i];
        let both = concat(
            [f.rollup.clone().lazy(), f.raw.clone().lazy()],
            UnionArgs::default(),
        )
        .map_err(polars_err)?;
        let mut range = col("ts").gt(lit(from_ms)).and(col("ts").lt_eq(lit(to_ms)));
        if let Some(extra) = filter {
            range = range.and(extra);
        }
        Ok(both.filter(range))
    }

    /// Services seen in the range.
    pub fn services(&self, from_ms: i64, to_ms: i64) -> Result<Vec<RedSummary<ServiceKey>>> {
        self.summaries(&SERVICE_RED, from_ms, to_ms, None)
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
        filter: Option<Expr>,
    ) -> Result<Vec<RedSummary<K>>> {
        let df = aggregate(self.frame(t, from_ms, to_ms, filter)?, t, None)
            .sort(t.keys.to_vec(), SortMultipleOptions::default())
            .collect()
            .map_err(polars_err)?;
        let keys: Vec<Vec<String>> = t.keys.iter().map(|k| str_col(&df, k)).collect::<Result<_>>()?;
        let (requests, errors, seconds) = (
            f64_col(&df, "requests")?,
            f64_col(&df, "errors")?,
            f64_col(&df, "seconds")?,
        );
        let p95 = f64_col(&df, "p95_ms")?;
        Ok((0..df.height())
            .map(|i| {
                let n = requests[i].unwrap_or(0.0);
                let e = errors[i].unwrap_or(0.0);
                // Every known series has a row in every window, so its summed seconds is the time covered.
                let secs = seconds[i].unwrap_or(0.0);
                RedSummary {
                    key: K::from_row(&mut keys.iter().map(|column| column[i].clone())),
                    requests: n,
                    rate: if secs > 0.0 { n / secs } else { 0.0 },
                    errors: e,
                    error_ratio: if n > 0.0 { e / n } else { 0.0 },
                    p95_ms: p95[i],
                }
            })
            .collect())
    }

    /// Per-operation RED of one service over the range.
    pub fn operations(
        &self,
        service: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<RedSummary<OperationKey>>> {
        self.summaries(
            &OPERATION_RED,
            from_ms,
            to_ms,
            Some(col("service").eq(lit(service))),
        )
    }

    /// Per-pod RED of one service over the range.
    pub fn pods(&self, service: &str, from_ms: i64, to_ms: i64) -> Result<Vec<RedSummary<PodKey>>> {
        self.summaries(&POD_RED, from_ms, to_ms, Some(col("service").eq(lit(service))))
    }

    /// Edges with traffic in the range.
    pub fn edges(&self, from_ms: i64, to_ms: i64) -> Result<Vec<RedSummary<EdgeKey>>> {
        self.summaries(&EDGES, from_ms, to_ms, None)
    }

    /// A service's RED in `step_ms` buckets over the range.
    pub fn service_red(
        &self,
        service: &str,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<RedPoint>> {
        let lf = self.frame(
            &SERVICE_RED,
            from_ms,
            to_ms,
            Some(col("service").eq(lit(service))),
        )?;
        let df = aggregate(lf, &SERVICE_RED, Some(step_ms))
            .sort(["bucket"], SortMultipleOptions::default())
            .collect()
            .map_err(polars_err)?;
        let bucket = i64_col(&df, "bucket")?;
        let (n, e, s) = (
            f64_col(&df, "requests")?,
            f64_col(&df, "errors")?,
            f64_col(&df, "seconds")?,
        );
        let (p50, p95, p99) = (
            f64_col(&df, "p50_ms")?,
            f64_col(&df, "p95_ms")?,
            f64_col(&df, "p99_ms")?,
        );
        Ok((0..df.height())
            .map(|i| {
                let (requests, errors, secs) =
                    (n[i].unwrap_or(0.0), e[i].unwrap_or(0.0), s[i].unwrap_or(0.0));
                RedPoint {
                    ts: bucket[i] + step_ms,
                    requests,
                    rate: if secs > 0.0 { requests / secs } else { 0.0 },
                    errors,
                    error_ratio: if requests > 0.0 { errors / requests } else { 0.0 },
                    p50_ms: p50[i],
                    p95_ms: p95[i],
                    p99_ms: p99[i],
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
        let mut filter = col("service").eq(lit(service)).and(col("name").eq(lit(name)));
        if let Some(p) = pod {
            filter = filter.and(col("pod").eq(lit(p)));
        }
        let lf = self.frame(&METRICS, from_ms, to_ms, Some(filter))?;
        let df = lf
            .with_column((col("ts") - col("ts") % lit(step_ms)).alias("bucket"))
            .group_by([col("bucket")])
            .agg([col("value").mean()])
            .sort(["bucket"], SortMultipleOptions::default())
            .collect()
            .map_err(polars_err)?;
        let (bucket, value) = (i64_col(&df, "bucket")?, f64_col(&df, "value")?);
        Ok(bucket
            .into_iter()
            .zip(value)
            .filter_map(|(b, v)| {
                Some(SeriesPoint {
                    ts: b + step_ms,
                    value: v?,
                })
            })
            .collect())
    }

    /// Metric names known for a service.
    pub fn metric_names(&self, service: &str) -> Result<Vec<String>> {
        let df = self
            .frame(
                &METRICS,
                i64::MIN,
                i64::MAX,
                Some(col("service").eq(lit(service))),
            )?
            .select([col("name")])
            .unique(None, UniqueKeepStrategy::Any)
            .sort(["name"], SortMultipleOptions::default())
            .collect()
            .map_err(polars_err)?;
        str_col(&df, "name")
    }

    /// Newest row time of any table, if any.
    pub fn latest_ts(&self) -> Option<i64> {
        self.tables
            .iter()
            .filter_map(|f| f.raw.column("ts").ok()?.i64().ok()?.max())
            .max()
    }
}
