//! The six tables of the history: their names, key columns and value columns, and the rows they hold.
//!
//! Rows live in native columns, one [`Chunk`] per window (or rollup bucket), shared between the writer and
//! every view: a window's append, its rollup and the queries never touch polars. polars only reads and
//! writes the Parquet files (files.rs).

use std::sync::Arc;

use crate::Error;

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

impl Table {
    /// The value columns, in order: sums, weighted, means.
    pub(super) fn values(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.sums.iter().chain(self.weighted).chain(self.means).copied()
    }

    /// How many value columns a row has.
    pub(super) fn width(&self) -> usize {
        self.sums.len() + self.weighted.len() + self.means.len()
    }

    /// The position of value column `name` in a row's values.
    pub(super) fn col(&self, name: &str) -> usize {
        self.values()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("{}: no column {name}", self.name))
    }

    /// Which table this is in [`TABLES`].
    pub(super) fn index(&self) -> usize {
        TABLES
            .iter()
            .position(|t| t.name == self.name)
            .expect("known table")
    }
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

pub(super) fn polars_err(e: polars::prelude::PolarsError) -> Error {
    Error::Store(e.to_string())
}

/// A series' key columns, in the table's key order; one allocation per series, shared by all its rows.
pub(super) type Key = Arc<[Arc<str>]>;

/// Rows of one table that share one timestamp: one window, or one rollup bucket. Immutable once in the
/// history, so views share it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Chunk {
    /// End of the window (or bucket), milliseconds since the Unix epoch.
    pub(super) ts: i64,
    pub(super) keys: Vec<Key>,
    /// The seconds each row covers: one figure while every row's is the same (a window's rows all cover
    /// the window), else one per row (a rollup's series may have had rows in only some of its windows).
    /// Read it with [`Chunk::seconds`].
    seconds: Vec<f64>,
    /// The value columns, row after row ([`Table::width`] per row); NaN where a value is missing (a
    /// latency of a window without requests).
    pub(super) values: Vec<f64>,
}

impl Chunk {
    pub(super) fn new(ts: i64) -> Chunk {
        Chunk {
            ts,
            ..Chunk::default()
        }
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// A chunk of rows that all cover `seconds`.
    pub(super) fn uniform(ts: i64, keys: Vec<Key>, seconds: f64, values: Vec<f64>) -> Chunk {
        Chunk {
            ts,
            keys,
            seconds: vec![seconds],
            values,
        }
    }

    pub(super) fn push(&mut self, key: Key, seconds: f64, values: &[f64]) {
        match self.seconds[..] {
            _ if self.keys.is_empty() => self.seconds = vec![seconds],
            [all] if all == seconds => {}
            [all] => {
                self.seconds = vec![all; self.keys.len()];
                self.seconds.push(seconds);
            }
            _ => self.seconds.push(seconds),
        }
        self.keys.push(key);
        self.values.extend_from_slice(values);
    }

    /// The seconds row `i` covers.
    pub(super) fn seconds(&self, i: usize) -> f64 {
        match self.seconds[..] {
            [all] => all,
            _ => self.seconds[i],
        }
    }

    /// Row `i`'s values.
    pub(super) fn row(&self, i: usize, width: usize) -> &[f64] {
        &self.values[i * width..(i + 1) * width]
    }
}

/// The rows of one table: recent raw rows and older rollups, oldest chunk first.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct TableRows {
    pub(super) raw: Vec<Arc<Chunk>>,
    pub(super) rollup: Vec<Arc<Chunk>>,
}

impl TableRows {
    pub(super) fn rows(&self) -> usize {
        self.raw.iter().chain(&self.rollup).map(|c| c.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_keeps_one_seconds_figure_until_its_rows_differ() {
        let key = |s: &str| -> Key { Arc::from([Arc::from(s)]) };
        let mut c = Chunk::new(10);
        c.push(key("a"), 10.0, &[1.0]);
        c.push(key("b"), 10.0, &[2.0]);
        assert_eq!(c.seconds, [10.0], "a window's rows share one figure");
        c.push(key("c"), 4.0, &[3.0]);
        c.push(key("d"), 4.0, &[4.0]);
        let seconds: Vec<f64> = (0..c.len()).map(|i| c.seconds(i)).collect();
        assert_eq!(seconds, [10.0, 10.0, 4.0, 4.0]);
        assert_eq!(c.row(2, 1), [3.0]);
    }
}
