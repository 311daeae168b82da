//! The six tables of the history: their names, key columns and schemas, and the column readers.

use polars::prelude::*;

use crate::{Error, Result};

/// How a table's rows combine when rolled up or queried over a longer step.
pub(super) struct Table {
    pub(super) name: &'static str,
    pub(super) keys: &'static [&'static str],
    /// Counts: summed.
    pub(super) sums: &'static [&'static str],
    /// Latencies: averaged, weighted by `requests`.
    pub(super) weighted: &'static [&'static str],
    /// Levels: averaged.
    pub(super) means: &'static [&'static str],
}

pub(super) const SERVICE_RED: Table = Table {
    name: "service_red",
    keys: &["service"],
    sums: &["requests", "errors"],
    weighted: &["p50_ms", "p95_ms", "p99_ms", "mean_ms"],
    means: &[],
};

pub(super) const OPERATION_RED: Table = Table {
    name: "operation_red",
    keys: &["service", "span_name", "span_kind"],
    sums: &["requests", "errors"],
    weighted: &["p95_ms", "mean_ms"],
    means: &[],
};

pub(super) const POD_RED: Table = Table {
    name: "pod_red",
    keys: &["service", "pod"],
    sums: &["requests", "errors"],
    weighted: &["p95_ms", "mean_ms"],
    means: &[],
};

pub(super) const EDGES: Table = Table {
    name: "edges",
    keys: &["client", "server", "connection_type"],
    sums: &["requests", "errors"],
    weighted: &["p95_ms"],
    means: &[],
};

pub(super) const METRICS: Table = Table {
    name: "metrics",
    keys: &["service", "pod", "name"],
    sums: &[],
    weighted: &[],
    means: &["value"],
};

pub(super) const LOGS: Table = Table {
    name: "logs",
    keys: &["service", "severity"],
    sums: &["records"],
    weighted: &[],
    means: &[],
};

pub(super) const TABLES: [&Table; 6] = [&SERVICE_RED, &OPERATION_RED, &POD_RED, &EDGES, &METRICS, &LOGS];

pub(super) fn polars_err(e: PolarsError) -> Error {
    Error::Store(e.to_string())
}

pub(super) fn empty_frame(t: &Table) -> DataFrame {
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
pub(super) struct Frames {
    pub(super) raw: DataFrame,
    pub(super) rollup: DataFrame,
}

pub(super) fn columns(t: &Table) -> Vec<Expr> {
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

pub(super) fn str_col(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    Ok(df
        .column(name)
        .map_err(polars_err)?
        .str()
        .map_err(polars_err)?
        .iter()
        .map(|v| v.unwrap_or("").to_owned())
        .collect())
}

pub(super) fn f64_col(df: &DataFrame, name: &str) -> Result<Vec<Option<f64>>> {
    Ok(df
        .column(name)
        .map_err(polars_err)?
        .f64()
        .map_err(polars_err)?
        .iter()
        .collect())
}

pub(super) fn i64_col(df: &DataFrame, name: &str) -> Result<Vec<i64>> {
    Ok(df
        .column(name)
        .map_err(polars_err)?
        .i64()
        .map_err(polars_err)?
        .iter()
        .map(Option::unwrap_or_default)
        .collect())
}
