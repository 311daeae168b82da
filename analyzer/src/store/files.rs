//! Parquet files of the history: written to a temporary file, then renamed into place. The only part of the
//! store that uses polars: the chunks become a frame for a save, a file's frame becomes chunks at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::prelude::*;

use super::tables::{Chunk, Key, TABLES, Table, TableRows, polars_err};
use crate::{Error, Result};

/// Writes every table to a temporary file and flushes it to disk, then renames them all into place and
/// flushes the directory. A crash (or power loss) during the writes leaves the previous files whole; the
/// renames that follow take microseconds, so the tables on disk are of one save in all but that instant.
pub(super) fn save_tables(dir: Option<&Path>, tables: &[TableRows]) -> Result<()> {
    let Some(dir) = dir else { return Ok(()) };
    std::fs::create_dir_all(dir).map_err(|e| Error::Store(format!("creating {}: {e}", dir.display())))?;
    let mut written = Vec::with_capacity(tables.len() * 2);
    for (t, rows) in TABLES.iter().zip(tables) {
        for (suffix, chunks) in [("", &rows.raw), (".rollup", &rows.rollup)] {
            let path = dir.join(format!("{}{suffix}.parquet", t.name));
            let tmp = write_parquet_tmp(&path, &mut frame(t, chunks)?)?;
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

/// Writes `df` beside `path` as `*.parquet.tmp`, flushed to disk; returns the temporary path. On the calling
/// thread: a save is small and runs off the async threads already, so it needs no thread pool.
pub(super) fn write_parquet_tmp(path: &Path, df: &mut DataFrame) -> Result<PathBuf> {
    let tmp: PathBuf = path.with_extension("parquet.tmp");
    let err = |e: std::io::Error| Error::Store(format!("{}: {e}", tmp.display()));
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    ParquetWriter::new(&mut file)
        .set_parallel(false)
        .finish(df)
        .map_err(polars_err)?;
    file.sync_all().map_err(err)?;
    Ok(tmp)
}

/// The file's columns, in order: `ts`, `seconds`, the keys (strings), the values (nullable floats).
fn schema(t: &Table) -> Schema {
    let mut s = Schema::default();
    s.insert("ts".into(), DataType::Int64);
    s.insert("seconds".into(), DataType::Float64);
    for k in t.keys {
        s.insert((*k).into(), DataType::String);
    }
    for v in t.values() {
        s.insert(v.into(), DataType::Float64);
    }
    s
}

/// The rows of `chunks` as one frame with the file's columns (a missing value is a null).
pub(super) fn frame(t: &Table, chunks: &[Arc<Chunk>]) -> Result<DataFrame> {
    let width = t.width();
    let rows = chunks.iter().map(|c| c.len()).sum();
    let mut ts = Vec::with_capacity(rows);
    let mut seconds = Vec::with_capacity(rows);
    let mut keys: Vec<Vec<&str>> = vec![Vec::with_capacity(rows); t.keys.len()];
    let mut values: Vec<Vec<Option<f64>>> = vec![Vec::with_capacity(rows); width];
    for c in chunks {
        ts.extend(std::iter::repeat_n(c.ts, c.len()));
        seconds.extend((0..c.len()).map(|i| c.seconds(i)));
        for (i, key) in c.keys.iter().enumerate() {
            for (col, k) in keys.iter_mut().zip(key.iter()) {
                col.push(k);
            }
            for (col, &v) in values.iter_mut().zip(c.row(i, width)) {
                col.push((!v.is_nan()).then_some(v));
            }
        }
    }
    let mut cols = vec![
        Column::new("ts".into(), ts),
        Column::new("seconds".into(), seconds),
    ];
    cols.extend(t.keys.iter().zip(keys).map(|(n, v)| Column::new((*n).into(), v)));
    cols.extend(t.values().zip(values).map(|(n, v)| Column::new(n.into(), v)));
    DataFrame::new_infer_height(cols).map_err(polars_err)
}

/// A table's file, read back as chunks (one per timestamp, oldest first).
pub(super) fn read_parquet(path: &Path, t: &Table) -> Result<Vec<Chunk>> {
    let file = std::fs::File::open(path).map_err(|e| Error::Store(format!("{}: {e}", path.display())))?;
    let df = ParquetReader::new(file)
        .read_parallel(ParallelStrategy::None)
        .finish()
        .map_err(polars_err)?;
    let want = schema(t);
    // Same columns, same types as the table's, or it is not ours.
    let df = df
        .select(want.iter_names().cloned())
        .map_err(|e| Error::Store(format!("{}: {e}", path.display())))?;
    if **df.schema() != want {
        return Err(Error::Store(format!("{}: unexpected schema", path.display())));
    }
    chunks(t, &df).map_err(|e| Error::Store(format!("{}: {e}", path.display())))
}

/// The rows of a frame with the file's columns, grouped into chunks by timestamp.
fn chunks(t: &Table, df: &DataFrame) -> PolarsResult<Vec<Chunk>> {
    let ts = df.column("ts")?.i64()?;
    let seconds = df.column("seconds")?.f64()?;
    let keys: Vec<&StringChunked> = t
        .keys
        .iter()
        .map(|k| df.column(k).and_then(|c| c.str()))
        .collect::<PolarsResult<_>>()?;
    let values: Vec<&Float64Chunked> = t
        .values()
        .map(|v| df.column(v).and_then(|c| c.f64()))
        .collect::<PolarsResult<_>>()?;
    let mut by_ts: BTreeMap<i64, Chunk> = BTreeMap::new();
    let mut row = Vec::with_capacity(t.width());
    for i in 0..df.height() {
        let at = ts.get(i).unwrap_or_default();
        let key: Key = keys.iter().map(|k| Arc::from(k.get(i).unwrap_or(""))).collect();
        row.clear();
        row.extend(values.iter().map(|v| v.get(i).unwrap_or(f64::NAN)));
        by_ts
            .entry(at)
            .or_insert_with(|| Chunk::new(at))
            .push(key, seconds.get(i).unwrap_or(0.0), &row);
    }
    Ok(by_ts.into_values().collect())
}
