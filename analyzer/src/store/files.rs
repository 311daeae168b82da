//! Parquet files of the history: written to a temporary file, then renamed into place.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::tables::{Frames, TABLES, Table, columns, empty_frame, polars_err};
use crate::{Error, Result};

/// Writes every table to a temporary file and flushes it to disk, then renames them all into place and
/// flushes the directory. A crash (or power loss) during the writes leaves the previous files whole; the
/// renames that follow take microseconds, so the tables on disk are of one save in all but that instant.
pub(super) fn save_tables(dir: Option<&Path>, tables: &[Frames]) -> Result<()> {
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

/// Writes `df` beside `path` as `*.parquet.tmp`, flushed to disk; returns the temporary path.
pub(super) fn write_parquet_tmp(path: &Path, df: &DataFrame) -> Result<PathBuf> {
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

pub(super) fn read_parquet(path: &Path, t: &Table) -> Result<DataFrame> {
    let file = std::fs::File::open(path).map_err(|e| Error::Store(format!("{}: {e}", path.display())))?;
    let df = ParquetReader::new(file).finish().map_err(polars_err)?;
    // Same columns, same types as a fresh table, or it is not ours.
    df.lazy()
        .select(columns(t))
        .collect()
        .map_err(polars_err)
        .and_then(|df| {
            let want = empty_frame(t);
            if df.schema() == want.schema() {
                Ok(df)
            } else {
                Err(Error::Store(format!("{}: unexpected schema", path.display())))
            }
        })
}
