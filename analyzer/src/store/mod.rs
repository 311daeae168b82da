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

use std::collections::BTreeSet;
use std::sync::Arc;

use polars::prelude::*;

use crate::Result;
use crate::config::StoreConfig;
use crate::snapshot::Snapshot;

mod files;
mod tables;
mod view;
mod window;

use files::{read_parquet, save_tables};
use tables::{Frames, TABLES, columns, empty_frame, polars_err};
use view::{aggregate, index_services};
use window::window_frames;

pub use view::{
    EdgeKey, HistoryView, OperationKey, PodKey, RedPoint, RedSummary, SeriesKey, SeriesPoint, ServiceKey,
};

/// The history the engine writes. One owner (the engine's window task); readers get a [`HistoryView`].
pub struct History {
    cfg: StoreConfig,
    /// The engine's window length: the length of the first window after a start.
    window: std::time::Duration,
    tables: Vec<Frames>,
    prev: Option<Arc<Snapshot>>,
    /// The services `tables` hold, kept with them so a view's lookups need no scan.
    services: Arc<BTreeSet<String>>,
}

impl History {
    /// An empty history, or the one saved in `data_dir`. A file that cannot be read is moved aside
    /// (`*.corrupt`) and reported, rather than keeping Tidewatch from starting.
    pub fn open(cfg: &StoreConfig, window: std::time::Duration) -> History {
        let mut tables: Vec<Frames> = TABLES
            .iter()
            .map(|t| Frames {
                raw: empty_frame(t),
                rollup: empty_frame(t),
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
        let services = index_services(&tables).unwrap_or_default();
        History {
            cfg: cfg.clone(),
            window,
            tables,
            prev: None,
            services,
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
        self.cap_rows()?;
        self.services = index_services(&self.tables)?;
        Ok(())
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

impl History {
    /// An immutable view for readers (cheap: polars columns are shared, not copied).
    pub fn view(&self) -> HistoryView {
        HistoryView::new(self.tables.clone(), self.services.clone())
    }

    /// Rows held in memory, raw and rolled up.
    pub fn rows(&self) -> usize {
        self.tables
            .iter()
            .map(|f| f.raw.height() + f.rollup.height())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AnalyzerConfig;
    use crate::records::{SpanKind, StatusCode};
    use crate::red::{Histogram, RedRow};
    use std::path::PathBuf;
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
        assert_eq!(s[0].key.service, "checkout");
        assert!(h.view().has_service("checkout") && !h.view().has_service("check"));
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
