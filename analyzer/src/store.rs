//! History: what happened in each window, kept as polars frames, rolled up, bounded, persisted as Parquet.
//!
//! The engine's snapshots hold cumulative counters. At every window close [`History::append`] turns the
//! difference between two consecutive snapshots into one row per series: requests, errors and latency
//! quantiles per service, per operation, per pod and per edge; a level or a rate per metric; log records per
//! severity. Rows are stamped with the wall-clock end of their window, so late or out-of-order spans count
//! in the window they arrive in rather than being dropped.
//!
//! Raw rows are kept for `raw_retention`; older ones are rolled up into `rollup_step` buckets (sums summed,
//! latency quantiles averaged weighted by requests, metric values averaged) and kept for
//! `rollup_retention`. Every `snapshot_interval` the frames are written to `data_dir` as Parquet (write to
//! a temporary file, then rename, so a crash leaves the previous file whole) and read back at start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::prelude::*;

use crate::config::StoreConfig;
use crate::engine::Snapshot;
use crate::red::{Histogram, is_entry};
use crate::signals::MetricKind;
use crate::{Error, Result};

/// How a table's rows combine when rolled up or queried over a longer step.
struct Table {
    name: &'static str,
    keys: &'static [&'static str],
    /// Counts: summed.
    sums: &'static [&'static str],
    /// Latencies: averaged, weighted by `requests`.
    weighted: &'static [&'static str],
    /// Levels: averaged.
    means: &'static [&'static str],
}

const SERVICE_RED: Table = Table {
    name: "service_red",
    keys: &["service"],
    sums: &["requests", "errors"],
    weighted: &["p50_ms", "p95_ms", "p99_ms", "mean_ms"],
    means: &[],
};
const OPERATION_RED: Table = Table {
    name: "operation_red",
    keys: &["service", "span_name", "span_kind"],
    sums: &["requests", "errors"],
    weighted: &["p95_ms", "mean_ms"],
    means: &[],
};
const POD_RED: Table = Table {
    name: "pod_red",
    keys: &["service", "pod"],
    sums: &["requests", "errors"],
    weighted: &["p95_ms", "mean_ms"],
    means: &[],
};
const EDGES: Table = Table {
    name: "edges",
    keys: &["client", "server", "connection_type"],
    sums: &["requests", "errors"],
    weighted: &["p95_ms"],
    means: &[],
};
const METRICS: Table = Table {
    name: "metrics",
    keys: &["service", "pod", "name"],
    sums: &[],
    weighted: &[],
    means: &["value"],
};
const LOGS: Table = Table {
    name: "logs",
    keys: &["service", "severity"],
    sums: &["records"],
    weighted: &[],
    means: &[],
};

const TABLES: [&Table; 6] = [&SERVICE_RED, &OPERATION_RED, &POD_RED, &EDGES, &METRICS, &LOGS];

fn polars_err(e: PolarsError) -> Error {
    Error::Store(e.to_string())
}

/// Rows of one window for one table, built column by column.
#[derive(Default)]
struct Rows {
    strings: Vec<(&'static str, Vec<String>)>,
    floats: Vec<(&'static str, Vec<Option<f64>>)>,
    len: usize,
}

impl Rows {
    fn new(table: &Table) -> Rows {
        Rows {
            strings: table.keys.iter().map(|k| (*k, Vec::new())).collect(),
            floats: table
                .sums
                .iter()
                .chain(table.weighted)
                .chain(table.means)
                .map(|k| (*k, Vec::new()))
                .collect(),
            len: 0,
        }
    }

    fn push(&mut self, keys: &[&str], values: &[Option<f64>]) {
        for ((_, col), k) in self.strings.iter_mut().zip(keys) {
            col.push((*k).to_owned());
        }
        for ((_, col), v) in self.floats.iter_mut().zip(values) {
            col.push(*v);
        }
        self.len += 1;
    }

    fn frame(self, ts_ms: i64, seconds: f64) -> Result<DataFrame> {
        let mut cols = vec![
            Column::new("ts".into(), vec![ts_ms; self.len]),
            Column::new("seconds".into(), vec![seconds; self.len]),
        ];
        cols.extend(self.strings.into_iter().map(|(n, v)| Column::new(n.into(), v)));
        cols.extend(self.floats.into_iter().map(|(n, v)| Column::new(n.into(), v)));
        DataFrame::new_infer_height(cols).map_err(polars_err)
    }
}

/// Quantiles of a histogram in milliseconds (`to_ms` converts its unit).
fn quantile_ms(h: &Histogram, bounds: &[f64], q: f64, to_ms: f64) -> Option<f64> {
    h.quantile(bounds, q).map(|v| v * to_ms)
}

fn delta(cur: &Histogram, prev: Option<&Histogram>) -> Histogram {
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

/// The window rows between two snapshots, one frame per table (in [`TABLES`] order).
fn window_frames(
    prev: Option<&Snapshot>,
    cur: &Snapshot,
    ts_ms: i64,
    seconds: f64,
) -> Result<Vec<DataFrame>> {
    let unit_ms = cur.red_unit.nanos() / 1e6;
    let bounds = &cur.red_bounds;
    let q = |h: &Histogram, q| quantile_ms(h, bounds, q, unit_ms);
    let mean = |h: &Histogram| (h.count > 0.0).then(|| h.sum / h.count * unit_ms);

    // RED: per operation, and per service over its entry spans (all spans if it has none).
    let prev_red: HashMap<_, _> = prev
        .map(|p| p.red.iter().map(|r| (r.key(), r)).collect())
        .unwrap_or_default();
    let mut ops: std::collections::BTreeMap<(String, String, &'static str), (f64, f64, Histogram)> =
        Default::default();
    let mut services: std::collections::BTreeMap<String, [(f64, f64, Histogram); 2]> = Default::default();
    for r in &cur.red {
        // What services past the series budget sent is in the exposition and the budget's counters; the
        // history has no service to file it under.
        if r.overflow && r.service.is_empty() {
            continue;
        }
        let p = prev_red.get(&r.key());
        let calls = r.calls.saturating_sub(p.map_or(0, |p| p.calls)) as f64;
        let errors = if r.status == crate::model::StatusCode::Error {
            calls
        } else {
            0.0
        };
        let h = delta(&r.duration, p.map(|p| &p.duration));
        let op = ops
            .entry((r.service.to_string(), r.span_name.to_string(), r.kind.as_label()))
            .or_insert_with(|| (0.0, 0.0, Histogram::new(bounds.len())));
        op.0 += calls;
        op.1 += errors;
        op.2.merge(&h);
        let svc = services.entry(r.service.to_string()).or_insert_with(|| {
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
            &[service],
            &[Some(*n), Some(*e), q(h, 0.5), q(h, 0.95), q(h, 0.99), mean(h)],
        );
    }
    let mut op_rows = Rows::new(&OPERATION_RED);
    // Operations and pods are the many series: a row only for a window they had requests in, so the history
    // grows with activity rather than with every series ever seen.
    for ((service, name, kind), (n, e, h)) in ops.iter().filter(|(_, (n, _, _))| *n > 0.0) {
        op_rows.push(&[service, name, kind], &[Some(*n), Some(*e), q(h, 0.95), mean(h)]);
    }

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
        pod_rows.push(&[&r.service, &r.pod], &[Some(n), Some(e), q(&h, 0.95), mean(&h)]);
    }

    let prev_edges: HashMap<_, _> = prev
        .map(|p| p.edges.iter().map(|e| (e.key(), e)).collect())
        .unwrap_or_default();
    let mut edge_rows = Rows::new(&EDGES);
    // Edges with the same client, server and type but other dimension values are one edge here.
    let mut edges: std::collections::BTreeMap<(String, String, &'static str), (f64, f64, Histogram)> =
        Default::default();
    for e in &cur.edges {
        let p = prev_edges.get(&e.key());
        let entry = edges
            .entry((
                e.client.to_string(),
                e.server.to_string(),
                e.connection_type.as_label(),
            ))
            .or_insert_with(|| (0.0, 0.0, Histogram::new(cur.graph_bounds.len())));
        entry.0 += (e.total - p.map_or(0.0, |p| p.total)).max(0.0);
        entry.1 += (e.failed - p.map_or(0.0, |p| p.failed)).max(0.0);
        entry
            .2
            .merge(&delta(&e.server_latency, p.map(|p| &p.server_latency)));
    }
    for ((client, server, conn), (n, f, h)) in &edges {
        edge_rows.push(
            &[client, server, conn],
            &[Some(*n), Some(*f), quantile_ms(h, &cur.graph_bounds, 0.95, 1e3)],
        );
    }

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
        metric_rows.push(&[&m.service, &m.pod, &m.name], &[Some(value)]);
    }

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
            &[&l.service, l.severity],
            &[Some(l.records.saturating_sub(before) as f64)],
        );
    }

    [service_rows, op_rows, pod_rows, edge_rows, metric_rows, log_rows]
        .into_iter()
        .map(|r| r.frame(ts_ms, seconds))
        .collect()
}

/// Aggregates `lf` by `keys` (and by `step`-long time buckets when `step_ms` is given).
fn aggregate(lf: LazyFrame, t: &Table, step_ms: Option<i64>) -> LazyFrame {
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

fn empty(t: &Table) -> DataFrame {
    let mut cols = vec![
        Column::new("ts".into(), Vec::<i64>::new()),
        Column::new("seconds".into(), Vec::<f64>::new()),
    ];
    cols.extend(
        t.keys
            .iter()
            .map(|k| Column::new((*k).into(), Vec::<String>::new())),
    );
    cols.extend(
        t.sums
            .iter()
            .chain(t.weighted)
            .chain(t.means)
            .map(|k| Column::new((*k).into(), Vec::<f64>::new())),
    );
    DataFrame::new_infer_height(cols).expect("empty frame")
}

/// The frames of one table: recent raw rows and older rollups.
#[derive(Clone)]
struct Frames {
    raw: DataFrame,
    rollup: DataFrame,
}

/// The history the engine writes. One owner (the engine's window task); readers get a [`HistoryView`].
pub struct History {
    cfg: StoreConfig,
    /// The engine's window length: the length of the first window after a start.
    window: std::time::Duration,
    tables: Vec<Frames>,
    prev: Option<Arc<Snapshot>>,
}

impl History {
    /// An empty history, or the one saved in `data_dir`. A file that cannot be read is moved aside
    /// (`*.corrupt`) and reported, rather than keeping Tidewatch from starting.
    pub fn open(cfg: &StoreConfig, window: std::time::Duration) -> History {
        let mut tables: Vec<Frames> = TABLES
            .iter()
            .map(|t| Frames {
                raw: empty(t),
                rollup: empty(t),
            })
            .collect();
        if let Some(dir) = &cfg.data_dir {
            for (t, frames) in TABLES.iter().zip(tables.iter_mut()) {
                for (suffix, slot) in [("", &mut frames.raw), (".rollup", &mut frames.rollup)] {
                    let path = dir.join(format!("{}{suffix}.parquet", t.name));
                    if !path.exists() {
                        continue;
                    }
                    match read_parquet(&path, t) {
                        Ok(df) => *slot = df,
                        Err(e) => {
                            let aside = path.with_extension("parquet.corrupt");
                            tracing::error!(path = %path.display(), error = %e, moved_to = %aside.display(), "history file unreadable");
                            let _ = std::fs::rename(&path, &aside);
                        }
                    }
                }
            }
        }
        History {
            cfg: cfg.clone(),
            window,
            tables,
            prev: None,
        }
    }

    /// Adds the window that ends with `cur` (taken at `ts_ms`), then applies rollup and retention.
    pub fn append(&mut self, cur: Arc<Snapshot>, ts_ms: i64) -> Result<()> {
        let seconds = match &self.prev {
            Some(p) => cur
                .taken_at
                .duration_since(p.taken_at)
                .map_or(0.0, |d| d.as_secs_f64()),
            None => self.window.as_secs_f64(),
        };
        let frames = window_frames(self.prev.as_deref(), &cur, ts_ms, seconds.max(1e-3))?;
        for (t, df) in self.tables.iter_mut().zip(frames) {
            t.raw.vstack_mut_owned(df).map_err(polars_err)?;
        }
        self.prev = Some(cur);
        self.compact(ts_ms)?;
        self.cap_rows()
    }

    /// Past `max_rows`, drops the oldest rows (rollups before raw rows, being older) down to 90 % of it,
    /// so a high-cardinality deployment shortens its history instead of growing without bound.
    fn cap_rows(&mut self) -> Result<()> {
        let max = self.cfg.max_rows;
        if self.rows() <= max {
            return Ok(());
        }
        let mut ts: Vec<i64> = Vec::with_capacity(self.rows());
        for f in &self.tables {
            for df in [&f.raw, &f.rollup] {
                let col = df.column("ts").map_err(polars_err)?.i64().map_err(polars_err)?;
                ts.extend(col.into_no_null_iter());
            }
        }
        let keep = max - max / 10;
        let nth = ts.len() - keep;
        let (_, &mut cutoff, _) = ts.select_nth_unstable(nth);
        // Rows at `cutoff` itself go too, so the cap holds even when many rows share one timestamp.
        let cutoff = cutoff + 1;
        for f in &mut self.tables {
            for df in [&mut f.raw, &mut f.rollup] {
                *df = df
                    .clone()
                    .lazy()
                    .filter(col("ts").gt_eq(lit(cutoff)))
                    .collect()
                    .map_err(polars_err)?;
            }
        }
        tracing::warn!(
            max_rows = max,
            "history: over analyzer.store.max_rows, oldest rows dropped"
        );
        Ok(())
    }

    /// Rolls raw rows older than the raw retention into whole rollup buckets; drops expired rollups.
    fn compact(&mut self, now_ms: i64) -> Result<()> {
        let step = self.cfg.rollup_step.as_millis() as i64;
        let raw_keep = self.cfg.raw_retention.as_millis() as i64;
        let cutoff = (now_ms - raw_keep).div_euclid(step) * step;
        let rollup_cutoff = now_ms - self.cfg.rollup_retention.as_millis() as i64;
        for (t, frames) in TABLES.iter().zip(self.tables.iter_mut()) {
            let old = frames
                .raw
                .clone()
                .lazy()
                .filter(col("ts").lt(lit(cutoff)))
                .collect()
                .map_err(polars_err)?;
            if old.height() > 0 {
                let rolled = aggregate(old.lazy(), t, Some(step))
                    .with_column((col("bucket") + lit(step)).alias("ts"))
                    .select(columns(t))
                    .collect()
                    .map_err(polars_err)?;
                frames.rollup.vstack_mut_owned(rolled).map_err(polars_err)?;
                frames.raw = frames
                    .raw
                    .clone()
                    .lazy()
                    .filter(col("ts").gt_eq(lit(cutoff)))
                    .collect()
                    .map_err(polars_err)?;
            }
            if frames.rollup.height() > 0 {
                frames.rollup = frames
                    .rollup
                    .clone()
                    .lazy()
                    .filter(col("ts").gt_eq(lit(rollup_cutoff)))
                    .collect()
                    .map_err(polars_err)?;
                frames.rollup.rechunk_mut();
            }
            frames.raw.rechunk_mut();
        }
        Ok(())
    }

    /// Writes every table to the data directory (no-op without one).
    pub fn save(&self) -> Result<()> {
        self.saver()()
    }

    /// The save as a closure over a copy of the frames (cheap: columns are shared), to run off the async
    /// threads while the history moves on.
    pub fn saver(&self) -> impl FnOnce() -> Result<()> + Send + 'static {
        let (dir, tables) = (self.cfg.data_dir.clone(), self.tables.clone());
        move || save_tables(dir.as_deref(), &tables)
    }
}

/// Writes every table to a temporary file and flushes it to disk, then renames them all into place and
/// flushes the directory. A crash (or power loss) during the writes leaves the previous files whole; the
/// renames that follow take microseconds, so the tables on disk are of one save in all but that instant.
fn save_tables(dir: Option<&Path>, tables: &[Frames]) -> Result<()> {
    let Some(dir) = dir else { return Ok(()) };
    std::fs::create_dir_all(dir).map_err(|e| Error::Store(format!("creating {}: {e}", dir.display())))?;
    let mut written = Vec::with_capacity(tables.len() * 2);
    for (t, frames) in TABLES.iter().zip(tables) {
        for (suffix, df) in [("", &frames.raw), (".rollup", &frames.rollup)] {
            let path = dir.join(format!("{}{suffix}.parquet", t.name));
            let tmp = write_parquet_tmp(&path, df)?;
            written.push((tmp, path));
        }
    }
    for (tmp, path) in written {
        std::fs::rename(&tmp, &path).map_err(|e| Error::Store(format!("{}: {e}", path.display())))?;
    }
    // The renames are durable once the directory is (best effort: not every filesystem allows it).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl History {
    /// An immutable view for readers (cheap: polars columns are shared, not copied).
    pub fn view(&self) -> HistoryView {
        HistoryView {
            tables: Arc::new(self.tables.clone()),
        }
    }

    /// Rows held in memory, raw and rolled up.
    pub fn rows(&self) -> usize {
        self.tables
            .iter()
            .map(|f| f.raw.height() + f.rollup.height())
            .sum()
    }
}

fn columns(t: &Table) -> Vec<Expr> {
    let mut c = vec![col("ts"), col("seconds")];
    c.extend(
        t.keys
            .iter()
            .chain(t.sums)
            .chain(t.weighted)
            .chain(t.means)
            .map(|k| col(*k)),
    );
    c
}

/// Writes `df` beside `path` as `*.parquet.tmp`, flushed to disk; returns the temporary path.
fn write_parquet_tmp(path: &Path, df: &DataFrame) -> Result<PathBuf> {
    let tmp: PathBuf = path.with_extension("parquet.tmp");
    let err = |e: std::io::Error| Error::Store(format!("{}: {e}", tmp.display()));
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    let mut df = df.clone();
    ParquetWriter::new(&mut file)
        .finish(&mut df)
        .map_err(polars_err)?;
    file.sync_all().map_err(err)?;
    Ok(tmp)
}

fn read_parquet(path: &Path, t: &Table) -> Result<DataFrame> {
    let file = std::fs::File::open(path).map_err(|e| Error::Store(format!("{}: {e}", path.display())))?;
    let df = ParquetReader::new(file).finish().map_err(polars_err)?;
    // Same columns, same types as a fresh table, or it is not ours.
    df.lazy()
        .select(columns(t))
        .collect()
        .map_err(polars_err)
        .and_then(|df| {
            let want = empty(t);
            if df.schema() == want.schema() {
                Ok(df)
            } else {
                Err(Error::Store(format!("{}: unexpected schema", path.display())))
            }
        })
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

/// One key's RED over a whole range.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RedSummary {
    /// The key columns by name (service; or service and pod; or client, server and connection type…).
    pub key: Vec<(String, String)>,
    pub requests: f64,
    pub rate: f64,
    pub errors: f64,
    pub error_ratio: f64,
    pub p95_ms: Option<f64>,
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
}

fn str_col(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    Ok(df
        .column(name)
        .map_err(polars_err)?
        .str()
        .map_err(polars_err)?
        .iter()
        .map(|v| v.unwrap_or("").to_owned())
        .collect())
}

fn f64_col(df: &DataFrame, name: &str) -> Result<Vec<Option<f64>>> {
    Ok(df
        .column(name)
        .map_err(polars_err)?
        .f64()
        .map_err(polars_err)?
        .iter()
        .collect())
}

fn i64_col(df: &DataFrame, name: &str) -> Result<Vec<i64>> {
    Ok(df
        .column(name)
        .map_err(polars_err)?
        .i64()
        .map_err(polars_err)?
        .iter()
        .map(Option::unwrap_or_default)
        .collect())
}

impl Default for HistoryView {
    fn default() -> Self {
        HistoryView {
            tables: Arc::new(
                TABLES
                    .iter()
                    .map(|t| Frames {
                        raw: empty(t),
                        rollup: empty(t),
                    })
                    .collect(),
            ),
        }
    }
}

impl HistoryView {
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
    pub fn services(&self, from_ms: i64, to_ms: i64) -> Result<Vec<RedSummary>> {
        self.summaries(&SERVICE_RED, from_ms, to_ms, None)
    }

    /// A table's keys with their RED over the range, sorted by key.
    fn summaries(
        &self,
        t: &Table,
        from_ms: i64,
        to_ms: i64,
        filter: Option<Expr>,
    ) -> Result<Vec<RedSummary>> {
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
                    key: t
                        .keys
                        .iter()
                        .zip(&keys)
                        .map(|(k, v)| ((*k).to_owned(), v[i].clone()))
                        .collect(),
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
    pub fn operations(&self, service: &str, from_ms: i64, to_ms: i64) -> Result<Vec<RedSummary>> {
        self.summaries(
            &OPERATION_RED,
            from_ms,
            to_ms,
            Some(col("service").eq(lit(service))),
        )
    }

    /// Per-pod RED of one service over the range.
    pub fn pods(&self, service: &str, from_ms: i64, to_ms: i64) -> Result<Vec<RedSummary>> {
        self.summaries(&POD_RED, from_ms, to_ms, Some(col("service").eq(lit(service))))
    }

    /// Edges with traffic in the range.
    pub fn edges(&self, from_ms: i64, to_ms: i64) -> Result<Vec<RedSummary>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AnalyzerConfig;
    use crate::model::{SpanKind, StatusCode};
    use crate::red::RedRow;
    use std::time::{Duration, SystemTime};

    fn snap(calls_ok: u64, calls_err: u64, at: SystemTime) -> Arc<Snapshot> {
        let cfg = AnalyzerConfig::default();
        let mut s = Snapshot::empty(&cfg);
        s.taken_at = at;
        let row = |status, calls: u64, ms: f64| {
            let mut h = Histogram::new(s.red_bounds.len());
            for _ in 0..calls {
                h.observe(&s.red_bounds, ms);
            }
            RedRow {
                service: "checkout".into(),
                span_name: "POST /".into(),
                kind: SpanKind::Server,
                status,
                dims: vec![],
                overflow: false,
                calls,
                duration: h,
            }
        };
        // Durations in the snapshot's unit (seconds): 5 ms and 50 ms.
        s.red = vec![
            row(StatusCode::Unset, calls_ok, 0.005),
            row(StatusCode::Error, calls_err, 0.05),
        ];
        Arc::new(s)
    }

    fn store(dir: Option<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: dir,
            ..StoreConfig::default()
        }
    }

    #[test]
    fn windows_become_deltas_and_rates() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = History::open(&store(None), Duration::from_secs(10));
        h.append(snap(100, 0, t0), 1_700_000_000_000).unwrap();
        h.append(snap(300, 20, t0 + Duration::from_secs(10)), 1_700_000_010_000)
            .unwrap();
        let v = h.view();
        let pts = v
            .service_red("checkout", 1_699_999_990_000, 1_700_000_010_000, 10_000)
            .unwrap();
        assert_eq!(pts.len(), 2);
        // Second window: 200 ok + 20 errors in 10 s.
        assert_eq!((pts[1].requests, pts[1].errors, pts[1].rate), (220.0, 20.0, 22.0));
        assert!(
            pts[1].p99_ms.unwrap() > 10.0 && pts[1].p50_ms.unwrap() <= 6.0,
            "{:?}",
            pts[1]
        );
        let s = v.services(0, i64::MAX).unwrap();
        assert_eq!(s[0].key, vec![("service".to_owned(), "checkout".to_owned())]);
        assert_eq!(s[0].requests, 320.0);
    }

    #[test]
    fn old_rows_roll_up_and_expire() {
        let cfg = StoreConfig {
            raw_retention: Duration::from_secs(60),
            rollup_step: Duration::from_secs(60),
            rollup_retention: Duration::from_secs(3600),
            ..store(None)
        };
        let mut h = History::open(&cfg, Duration::from_secs(10));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let base = 1_700_000_000_000i64 - 1_700_000_000_000 % 60_000;
        // 30 minutes of 10 s windows, 10 requests each.
        for i in 0..180u64 {
            h.append(
                snap(10 * (i + 1), 0, t0 + Duration::from_secs(10 * i)),
                base + 10_000 * i as i64,
            )
            .unwrap();
        }
        let v = h.view();
        let total: f64 = v.services(0, i64::MAX).unwrap()[0].requests;
        assert_eq!(total, 1800.0, "rolled up or raw, every request is still counted");
        // Raw rows only for the last ~minute; the rest is in 1-minute rollups.
        let raw = h.tables[0].raw.height();
        let rolled = h.tables[0].rollup.height();
        assert!(raw <= 12 && rolled >= 28, "raw {raw} rollup {rolled}");
        // Past the rollup retention, data goes.
        h.append(snap(2000, 0, t0 + Duration::from_secs(7200)), base + 7_200_000)
            .unwrap();
        assert_eq!(h.view().services(0, i64::MAX).unwrap()[0].requests, 200.0);
    }

    #[test]
    fn max_rows_caps_the_history_oldest_first_and_idle_operations_add_no_rows() {
        let cfg = StoreConfig {
            max_rows: 1000,
            ..store(None)
        };
        let mut h = History::open(&cfg, Duration::from_secs(10));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let base = 1_700_000_000_000i64;
        // One snapshot of 300 operations, then windows in which none of them has a request.
        let mut wide = (*snap(10, 0, t0)).clone();
        let template = wide.red[0].clone();
        wide.red = (0..300)
            .map(|i| RedRow {
                span_name: format!("op {i}").into(),
                ..template.clone()
            })
            .collect();
        h.append(Arc::new(wide.clone()), base).unwrap();
        assert_eq!(h.tables[1].raw.height(), 300);
        for i in 1..6u64 {
            wide.taken_at = t0 + Duration::from_secs(10 * i);
            h.append(Arc::new(wide.clone()), base + 10_000 * i as i64)
                .unwrap();
        }
        // Idle operations: no new rows; the service keeps one row per window.
        assert_eq!(h.tables[1].raw.height(), 300);
        assert_eq!(h.tables[0].raw.height(), 6);
        // Busy operations fill the history past max_rows: the oldest windows go, the newest stay.
        for i in 6..20u64 {
            for r in wide.red.iter_mut() {
                r.calls += 1;
            }
            wide.taken_at = t0 + Duration::from_secs(10 * i);
            h.append(Arc::new(wide.clone()), base + 10_000 * i as i64)
                .unwrap();
            assert!(h.rows() <= 1000, "{} rows after window {i}", h.rows());
        }
        assert_eq!(h.view().latest_ts(), Some(base + 190_000));
        let ops = h.tables[1]
            .raw
            .column("ts")
            .unwrap()
            .i64()
            .unwrap()
            .min()
            .unwrap();
        assert!(ops > base + 60_000, "oldest operation row at {ops}");
    }

    #[test]
    fn history_survives_a_restart_and_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = store(Some(dir.path().to_owned()));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = History::open(&cfg, Duration::from_secs(10));
        h.append(snap(50, 5, t0), 1_700_000_000_000).unwrap();
        h.save().unwrap();
        let again = History::open(&cfg, Duration::from_secs(10));
        assert_eq!(again.view().services(0, i64::MAX).unwrap()[0].requests, 55.0);
        std::fs::write(dir.path().join("service_red.parquet"), b"not parquet").unwrap();
        let fresh = History::open(&cfg, Duration::from_secs(10));
        assert!(fresh.view().services(0, i64::MAX).unwrap().is_empty());
        assert!(dir.path().join("service_red.parquet.corrupt").exists());
    }
}
