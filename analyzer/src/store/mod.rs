//! History: what happened in each window, kept in native columns, rolled up, bounded, persisted as Parquet.
//!
//! The engine's snapshots hold cumulative counters. At every window close [`History::append`] turns the
//! difference between two consecutive snapshots into one row per series: requests, errors and latency
//! quantiles per service, per operation, per pod and per edge; a level or a rate per metric; log records per
//! severity. Rows are stamped with the wall-clock end of their window, so late or out-of-order spans count
//! in the window they arrive in rather than being dropped.
//!
//! Raw rows are kept for `raw_retention`; older ones are rolled up into `rollup_step` buckets (sums summed,
//! latency quantiles averaged weighted by requests, metric values averaged) and kept for
//! `rollup_retention`. Every `snapshot_interval` the tables are written to `data_dir` as Parquet (write to
//! a temporary file, then rename, so a crash leaves the previous file whole) and read back at start.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::Result;
use crate::config::StoreConfig;
use crate::snapshot::Snapshot;

mod files;
mod tables;
mod view;
mod window;

use files::{read_parquet, save_tables};
use tables::{Chunk, Key, SERVICE_RED, TABLES, TableRows};
use view::{aggregate, bucket, rows};
use window::window_chunks;

pub use view::{
    EdgeKey, HistoryView, OperationKey, PodKey, RedPoint, RedSummary, SeriesKey, SeriesPoint, ServiceKey,
};

/// Where a chunk sits in a table: the recent raw rows or the rollups.
#[derive(Clone, Copy)]
enum Tier {
    Raw,
    Rollup,
}

/// The history the engine writes. One owner (the engine's window task); readers get a [`HistoryView`].
pub struct History {
    cfg: StoreConfig,
    /// The engine's window length: the length of the first window after a start.
    window: std::time::Duration,
    tables: Vec<TableRows>,
    /// Per table, every series it holds rows of and how many: each series' key is allocated once and
    /// shared by all its rows, and a series whose last row goes is forgotten.
    series: Vec<HashMap<Key, usize>>,
    prev: Option<Arc<Snapshot>>,
    /// The services `tables` hold, kept with them so a view's lookups need no scan.
    services: Arc<BTreeSet<Arc<str>>>,
}

impl History {
    /// An empty history, or the one saved in `data_dir`. A file that cannot be read is moved aside
    /// (`*.corrupt`) and reported, rather than keeping Tidewatch from starting.
    pub fn open(cfg: &StoreConfig, window: std::time::Duration) -> History {
        let mut h = History {
            cfg: cfg.clone(),
            window,
            tables: vec![TableRows::default(); TABLES.len()],
            series: vec![HashMap::new(); TABLES.len()],
            prev: None,
            services: Arc::default(),
        };
        if let Some(dir) = cfg.data_dir.clone() {
            for (i, t) in TABLES.iter().enumerate() {
                for (suffix, tier) in [("", Tier::Raw), (".rollup", Tier::Rollup)] {
                    let path = dir.join(format!("{}{suffix}.parquet", t.name));
                    if !path.exists() {
                        continue;
                    }
                    match read_parquet(&path, t) {
                        Ok(chunks) => chunks.into_iter().for_each(|c| h.add(i, tier, c)),
                        Err(e) => {
                            let aside = path.with_extension("parquet.corrupt");
                            tracing::error!(path = %path.display(), error = %e, moved_to = %aside.display(), "history file unreadable");
                            let _ = std::fs::rename(&path, &aside);
                        }
                    }
                }
            }
        }
        h.index_services();
        h
    }

    /// Takes `cur` as the counters the next window starts from, adding no rows: for counters that began
    /// before this history did (the global view of a deployment on Kafka), whose first snapshot holds
    /// everything counted before.
    pub fn baseline(&mut self, cur: Arc<Snapshot>) {
        self.prev = Some(cur);
    }

    /// Whether a snapshot has been taken in since this history was opened (as a window or a baseline).
    pub fn has_baseline(&self) -> bool {
        self.prev.is_some()
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
        let chunks = window_chunks(self.prev.as_deref(), &cur, &self.series, ts_ms, seconds.max(1e-3));
        for (i, chunk) in chunks.into_iter().enumerate() {
            self.add(i, Tier::Raw, chunk);
        }
        self.prev = Some(cur);
        self.compact(ts_ms);
        self.cap_rows();
        self.index_services();
        Ok(())
    }

    /// Files `chunk` under table `i`, its keys replaced by the series' shared ones.
    fn add(&mut self, i: usize, tier: Tier, mut chunk: Chunk) {
        if chunk.len() == 0 {
            return;
        }
        let series = &mut self.series[i];
        for key in &mut chunk.keys {
            if let Some((shared, _)) = series.get_key_value(&**key) {
                *key = shared.clone();
            }
            *series.entry(key.clone()).or_default() += 1;
        }
        let rows = &mut self.tables[i];
        match tier {
            Tier::Raw => rows.raw.push(Arc::new(chunk)),
            Tier::Rollup => rows.rollup.push(Arc::new(chunk)),
        }
    }

    /// Takes the chunks of table `i` and tier that `gone` selects out of the history, oldest first.
    fn remove(&mut self, i: usize, tier: Tier, gone: impl Fn(&Chunk) -> bool) -> Vec<Arc<Chunk>> {
        let rows = &mut self.tables[i];
        let chunks = match tier {
            Tier::Raw => &mut rows.raw,
            Tier::Rollup => &mut rows.rollup,
        };
        let (removed, kept): (Vec<_>, Vec<_>) = std::mem::take(chunks).into_iter().partition(|c| gone(c));
        *chunks = kept;
        let series = &mut self.series[i];
        for key in removed.iter().flat_map(|c| &c.keys) {
            if let Some(n) = series.get_mut(&**key) {
                *n -= 1;
                if *n == 0 {
                    series.remove(&**key);
                }
            }
        }
        removed
    }

    /// Past `max_rows`, drops the oldest rows (rollups before raw rows, being older) down to 90 % of it,
    /// so a high-cardinality deployment shortens its history instead of growing without bound.
    fn cap_rows(&mut self) {
        let max = self.cfg.max_rows;
        let total = self.rows();
        if total <= max {
            return;
        }
        // Rows per timestamp, oldest first: the cutoff is the timestamp of the oldest row kept.
        let mut by_ts: Vec<(i64, usize)> = self
            .tables
            .iter()
            .flat_map(|t| t.raw.iter().chain(&t.rollup))
            .map(|c| (c.ts, c.len()))
            .collect();
        by_ts.sort_unstable();
        let keep = max - max / 10;
        let mut dropped = 0;
        let mut cutoff = i64::MIN;
        for (ts, n) in by_ts {
            if total - dropped <= keep {
                break;
            }
            dropped += n;
            cutoff = ts;
        }
        // Rows at `cutoff` itself go too, so the cap holds even when many rows share one timestamp.
        for i in 0..TABLES.len() {
            for tier in [Tier::Raw, Tier::Rollup] {
                self.remove(i, tier, |c| c.ts <= cutoff);
            }
        }
        tracing::warn!(
            max_rows = max,
            "history: over analyzer.store.max_rows, oldest rows dropped"
        );
    }

    /// Rolls raw rows older than the raw retention into whole rollup buckets; drops expired rollups.
    fn compact(&mut self, now_ms: i64) {
        let step = (self.cfg.rollup_step.as_millis() as i64).max(1);
        let raw_keep = self.cfg.raw_retention.as_millis() as i64;
        let cutoff = (now_ms - raw_keep).div_euclid(step) * step;
        let rollup_cutoff = now_ms - self.cfg.rollup_retention.as_millis() as i64;
        for (i, t) in TABLES.iter().enumerate() {
            let old = self.remove(i, Tier::Raw, |c| c.ts < cutoff);
            if !old.is_empty() {
                let groups = aggregate(t, rows(t, &old, i64::MIN, i64::MAX), |r| {
                    (bucket(r.ts, step), r.key.clone())
                });
                let mut rolled: Vec<Chunk> = Vec::new();
                for ((b, key), combined) in groups {
                    if rolled.last().is_none_or(|c| c.ts != b + step) {
                        rolled.push(Chunk::new(b + step));
                    }
                    let chunk = rolled.last_mut().expect("pushed above");
                    chunk.push(key, combined.seconds, &combined.values(t));
                }
                for chunk in rolled {
                    self.add(i, Tier::Rollup, chunk);
                }
            }
            self.remove(i, Tier::Rollup, |c| c.ts < rollup_cutoff);
        }
    }

    /// Rebuilds the index of services when the service table's series changed.
    fn index_services(&mut self) {
        let series = &self.series[SERVICE_RED.index()];
        if series.len() != self.services.len() || series.keys().any(|k| !self.services.contains(&k[0])) {
            self.services = Arc::new(series.keys().map(|k| k[0].clone()).collect());
        }
    }

    /// Writes every table to the data directory (no-op without one).
    pub fn save(&self) -> Result<()> {
        self.saver()()
    }

    /// The save as a closure over the chunks (shared, not copied), to run off the async threads while the
    /// history moves on.
    pub fn saver(&self) -> impl FnOnce() -> Result<()> + Send + 'static {
        let (dir, tables) = (self.cfg.data_dir.clone(), self.tables.clone());
        move || save_tables(dir.as_deref(), &tables)
    }
}

impl History {
    /// An immutable view for readers (cheap: the chunks are shared, not copied).
    pub fn view(&self) -> HistoryView {
        HistoryView::new(self.tables.clone(), self.services.clone())
    }

    /// Rows held in memory, raw and rolled up.
    pub fn rows(&self) -> usize {
        self.tables.iter().map(TableRows::rows).sum()
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
            let mut h = Histogram::default();
            for _ in 0..calls {
                h.observe(&s.red_bounds, ms);
            }
            RedRow {
                service: "checkout".into(),
                span_name: "POST /".into(),
                kind: SpanKind::Server,
                status,
                dims: Default::default(),
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

    fn rows_of(chunks: &[Arc<Chunk>]) -> usize {
        chunks.iter().map(|c| c.len()).sum()
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
        let raw = rows_of(&h.tables[0].raw);
        let rolled = rows_of(&h.tables[0].rollup);
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
        assert_eq!(rows_of(&h.tables[1].raw), 300);
        for i in 1..6u64 {
            wide.taken_at = t0 + Duration::from_secs(10 * i);
            h.append(Arc::new(wide.clone()), base + 10_000 * i as i64)
                .unwrap();
        }
        // Idle operations: no new rows; the service keeps one row per window.
        assert_eq!(rows_of(&h.tables[1].raw), 300);
        assert_eq!(rows_of(&h.tables[0].raw), 6);
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
        let ops = h.tables[1].raw.iter().map(|c| c.ts).min().unwrap();
        assert!(ops > base + 60_000, "oldest operation row at {ops}");
    }

    /// Cumulative counters after window `w` (1, 2, 3): six services, two operations each, server and
    /// client spans, a pod per service; service 5 first counts in window 2, and an operation of
    /// service 0 is gone from window 3 (as from a source that restarted), so rows come, stay and go.
    fn counters(w: u64, at: SystemTime) -> Snapshot {
        let mut s = (*snap(0, 0, at)).clone();
        let template = s.red[0].clone();
        s.red.clear();
        for svc in 0..6u64 {
            if svc == 5 && w < 2 {
                continue;
            }
            let service: Arc<str> = format!("svc {svc}").into();
            for (op, kind) in [
                ("GET /a", SpanKind::Server),
                ("GET /b", SpanKind::Server),
                ("GET /a", SpanKind::Client),
            ] {
                if svc == 0 && op == "GET /b" && w == 3 {
                    continue;
                }
                let calls = 10 * w * (svc + 1) + op.len() as u64;
                let mut duration = Histogram::default();
                duration.observe(&s.red_bounds, 0.005 * w as f64);
                duration.count = calls as f64;
                s.red.push(RedRow {
                    service: service.clone(),
                    span_name: op.into(),
                    kind,
                    calls,
                    duration,
                    ..template.clone()
                });
            }
            s.pods.push(crate::red::PodRow {
                service,
                pod: "pod-0".into(),
                calls: 7 * w * (svc + 1),
                errors: w,
                // Not empty: a window's latency of a pod without requests is NaN, never equal to itself.
                duration: {
                    let mut h = Histogram::default();
                    h.observe(&s.red_bounds, 0.002 * w as f64);
                    h.count = (7 * w * (svc + 1)) as f64;
                    h
                },
            });
        }
        s.red.sort_by(|a, b| a.id().cmp(&b.id()));
        s
    }

    #[test]
    fn every_call_is_counted_once_across_window_closes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let base = 1_700_000_000_000i64;
        let mut h = History::open(&store(None), Duration::from_secs(10));
        for w in 1..=3u64 {
            let at = t0 + Duration::from_secs(10 * w);
            h.append(Arc::new(counters(w, at)), base + 10_000 * w as i64)
                .unwrap();
        }
        // Every call is counted once: the operations' rows add up to the last counts, and those of the
        // operation that went before window 3.
        let gone = counters(2, t0)
            .red
            .iter()
            .find(|r| &*r.service == "svc 0" && &*r.span_name == "GET /b")
            .unwrap()
            .calls;
        let last: u64 = counters(3, t0).red.iter().map(|r| r.calls).sum();
        let view = h.view();
        let services = view.services(0, i64::MAX).unwrap();
        let all: f64 = services
            .iter()
            .flat_map(|s| view.operations(&s.key.service, 0, i64::MAX).unwrap())
            .map(|o| o.requests)
            .sum();
        assert_eq!(all, (last + gone) as f64);
        let ops = view.operations("svc 3", 0, i64::MAX).unwrap();
        let a = ops
            .iter()
            .find(|o| o.key.span_name == "GET /b")
            .expect("svc 3's GET /b");
        assert_eq!(a.requests, (10 * 3 * 4 + 6) as f64);
        let svc5 = services.iter().find(|s| s.key.service == "svc 5").unwrap();
        assert_eq!(
            svc5.requests,
            (2 * (10 * 3 * 6 + 6)) as f64,
            "two server operations, from window 2"
        );
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

    #[test]
    fn raw_rows_and_rollups_read_back_the_same_from_parquet() {
        use polars::prelude::{ParquetReader, SerReader};
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            raw_retention: Duration::from_secs(60),
            rollup_step: Duration::from_secs(60),
            ..store(Some(dir.path().to_owned()))
        };
        let mut h = History::open(&cfg, Duration::from_secs(10));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let base = 1_700_000_000_000i64 - 1_700_000_000_000 % 60_000;
        for i in 0..30u64 {
            h.append(
                snap(10 * (i + 1), i, t0 + Duration::from_secs(10 * i)),
                base + 10_000 * i as i64,
            )
            .unwrap();
        }
        assert!(rows_of(&h.tables[0].rollup) > 0 && rows_of(&h.tables[0].raw) > 0);
        h.save().unwrap();
        let again = History::open(&cfg, Duration::from_secs(10));
        assert_eq!(
            again.tables, h.tables,
            "every chunk, raw and rolled up, as it was"
        );
        let (a, b) = (h.view(), again.view());
        assert_eq!(
            a.service_red("checkout", 0, i64::MAX, 60_000).unwrap(),
            b.service_red("checkout", 0, i64::MAX, 60_000).unwrap()
        );
        // The file keeps its columns and types: ts, seconds, the keys, nullable values.
        let file = std::fs::File::open(dir.path().join("service_red.rollup.parquet")).unwrap();
        let df = ParquetReader::new(file).finish().unwrap();
        let names: Vec<&str> = df.get_column_names().iter().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "ts", "seconds", "service", "requests", "errors", "p50_ms", "p95_ms", "p99_ms", "mean_ms"
            ]
        );
    }
}
