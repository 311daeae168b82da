//! The engine: N shards, each a state (RED table, service-graph store, signal counts) held by one party at a
//! time and a task fed through its own bounded queue. A receiver that finds every shard of a batch idle
//! aggregates it in place instead (`Ingest::try_send_spans`); nobody ever waits on a shard's lock.
//!
//! Readers never touch shard state. They ask for a [`Snapshot`]: a message that goes down each shard's
//! queue *behind* the batches already there, so a snapshot taken after a request was answered always
//! includes that request (read-your-writes, which the golden tests rely on). The message goes to one shard
//! after another, each adding its rows into the snapshot the shards before it built (immutable owned rows
//! once done). Every `window` the engine also takes one for the history.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::budget::{BudgetStatus, SeriesBudget};
use crate::config::AnalyzerConfig;
use crate::forecast::Forecasts;
use crate::health::{HealthReport, Monitor};
use crate::ingest::{Inflight, Ingest, IngestStats};
pub use crate::shard::EngineStats;
use crate::shard::{Shard, ShardMsg, wanted_keys};
use crate::snapshot::Snapshot;
use crate::store::{History, HistoryView};
use crate::{Error, Result};

/// What the demo's backfill asks of the window task.
enum Backfill {
    /// Close a window stamped `ts_ms` now.
    Window {
        ts_ms: i64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// The backfill is over: publish the history, resume live windows.
    Done(oneshot::Sender<()>),
}

/// The running engine: ask it for snapshots, history, health and forecasts; stop it.
pub struct Engine {
    source: Source,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    history: watch::Receiver<HistoryView>,
    health: watch::Receiver<Arc<Health>>,
    forecasts: watch::Receiver<Arc<Forecasts>>,
    stop_windows: watch::Sender<bool>,
    window_task: std::sync::Mutex<Option<JoinHandle<()>>>,
    trainer_task: std::sync::Mutex<Option<JoinHandle<()>>>,
    backfill: mpsc::Sender<Backfill>,
    stats: Arc<EngineStats>,
}

/// Takes a snapshot of counters kept outside the engine (see [`follow`]).
pub type SnapshotSource = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Snapshot>> + Send>> + Send + Sync,
>;

/// Where the engine's snapshots come from.
#[derive(Clone)]
enum Source {
    /// Its own shards, merged: counters that began at zero when the engine started; the series budget
    /// they admit series under.
    Shards {
        shards: Arc<[mpsc::Sender<ShardMsg>]>,
        template: Arc<Snapshot>,
        budget: Arc<SeriesBudget>,
    },
    /// Someone else's counters, which may have begun long before: the first snapshot is a baseline.
    Follow(SnapshotSource),
}

impl Source {
    async fn take(&self) -> Result<Snapshot> {
        match self {
            Source::Shards { shards, template, .. } => collect(shards, template).await,
            Source::Follow(f) => f().await,
        }
    }
}

/// Starts the shards on the current tokio runtime; returns the handle receivers send into and the engine.
pub fn start(cfg: &AnalyzerConfig) -> (Ingest, Engine) {
    let (keys, red_dims, graph_keys) = wanted_keys(cfg);
    let keys = Arc::new(keys);
    let stats = Arc::new(EngineStats::default());
    let budget = Arc::new(SeriesBudget::new(cfg.max_series));
    let n = cfg.shard_count();
    let mut senders = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = mpsc::channel(cfg.queue_batches);
        let state = Arc::new(Mutex::new(Shard::new(
            cfg,
            &red_dims,
            &graph_keys,
            n,
            &budget,
            &stats,
        )));
        senders.push(tx);
        states.push(state.clone());
        tasks.push(tokio::spawn(Shard::run(
            state,
            rx,
            tick_every(cfg.service_graph.wait),
        )));
    }
    let shards: Arc<[_]> = senders.into();
    let source = Source::Shards {
        shards: shards.clone(),
        template: Arc::new(Snapshot::empty(cfg)),
        budget,
    };
    let ingest = Ingest {
        shards: shards.clone(),
        states: states.into(),
        inflight: Inflight::new(cfg.max_inflight.as_usize()),
        keys,
        stats: Arc::new(IngestStats::default()),
    };
    let engine = assemble(cfg, source, tasks, stats);
    (ingest, engine)
}

/// An engine without shards that follows counters kept elsewhere: every `window` it takes a snapshot from
/// `source` and runs it through the same window task as [`start`]'s engine (history, health monitor,
/// forecast trainer), so everything that reads an [`Engine`] reads these counters unchanged. The first
/// snapshot is the baseline the history starts from. `--role analyze` follows the sum of every
/// partition's counts this way: the global view.
pub fn follow(cfg: &AnalyzerConfig, source: SnapshotSource) -> Engine {
    assemble(
        cfg,
        Source::Follow(source),
        Vec::new(),
        Arc::new(EngineStats::default()),
    )
}

/// The window task and forecast trainer over `source`, and the engine that owns them.
fn assemble(
    cfg: &AnalyzerConfig,
    source: Source,
    tasks: Vec<JoinHandle<()>>,
    stats: Arc<EngineStats>,
) -> Engine {
    let history = History::open(&cfg.store, cfg.window);
    let (hist_tx, history_rx) = watch::channel(history.view());
    let (health_tx, health_rx) = watch::channel(Arc::new(Health::default()));
    let (stop_windows, stop_rx) = watch::channel(false);
    let (backfill, backfill_rx) = mpsc::channel(1);
    let windows_loop = Windows {
        backfill: backfill_rx,
        source: source.clone(),
        window: cfg.window,
        snapshot_every: cfg.store.snapshot_interval,
        views: hist_tx,
        health: health_tx,
        monitor: Monitor::for_analyzer(cfg),
    };
    // The forecast trainer reads the history views the window task publishes, off the hot path.
    let (forecast_tx, forecasts) = watch::channel(Arc::new(Forecasts::default()));
    let trainer_task = std::sync::Mutex::new(Some(tokio::spawn(crate::forecast::run_trainer(
        cfg.forecast.clone(),
        history_rx.clone(),
        forecast_tx,
        stop_rx.clone(),
    ))));
    let window_task = std::sync::Mutex::new(Some(tokio::spawn(windows_loop.run(history, stop_rx))));
    Engine {
        source,
        tasks: tasks.into(),
        history: history_rx,
        health: health_rx,
        forecasts,
        stop_windows,
        window_task,
        trainer_task,
        backfill,
        stats,
    }
}

/// Expiry sweeps run a few times per wait period, so a half edge lives at most ~1.25 x `wait`.
fn tick_every(wait: Duration) -> Duration {
    (wait / 4).clamp(Duration::from_millis(10), Duration::from_secs(2))
}

impl Engine {
    /// A snapshot that includes every batch accepted before this call (for [`follow`]: what the source
    /// gives now).
    pub async fn snapshot(&self) -> Result<Snapshot> {
        self.source.take().await
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The global series budget: its limit, the active series, what went to overflow series. `None` for
    /// an engine that [`follow`]s counters kept elsewhere: it admits no series itself (on Kafka each
    /// partition's owner applies its own budget).
    pub fn series_budget(&self) -> Option<BudgetStatus> {
        match &self.source {
            Source::Shards { budget, .. } => Some(budget.status()),
            Source::Follow(_) => None,
        }
    }

    /// The history as of the last window close.
    pub fn history(&self) -> HistoryView {
        self.history.borrow().clone()
    }

    /// Anomalies and likely causes as of the last window close, with the recent ones.
    pub fn health(&self) -> Arc<Health> {
        self.health.borrow().clone()
    }

    /// Every service's request-rate forecast as the scheduled trainer last fitted it (empty until there
    /// is enough history for a first training).
    pub fn forecasts(&self) -> Arc<Forecasts> {
        self.forecasts.borrow().clone()
    }

    /// Closes a window of backfilled history (`tidewatch demo`) stamped `ts_ms`, which must be later than
    /// the previous window's: what was ingested since the last close becomes its rows and the health
    /// monitor scores it, as at a live window close. From the first call until [`Engine::end_backfill`]
    /// live windows wait, and history views are not published, so the forecast trainer first sees the
    /// whole backfill.
    pub async fn backfill_window(&self, ts_ms: i64) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.backfill
            .send(Backfill::Window { ts_ms, reply })
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Ends a backfill: publishes the history and resumes live windows.
    pub async fn end_backfill(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.backfill
            .send(Backfill::Done(reply))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Processes everything still queued, then stops the shards. Call after the receivers have stopped;
    /// later snapshots fail with [`Error::Stopped`].
    pub async fn shutdown(&self) {
        // The window task closes a last window and saves the history while the shards still answer.
        let _ = self.stop_windows.send(true);
        // A training in progress is not worth waiting for: its result would not be read.
        if let Some(t) = self.trainer_task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
        let task = self.window_task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
        let shards = match &self.source {
            Source::Shards { shards, .. } => &shards[..],
            Source::Follow(_) => &[],
        };
        for s in shards {
            // A closed queue means the shard is already gone; nothing to drain.
            let _ = s.send(ShardMsg::Stop).await;
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// A snapshot of every shard: the shards are asked one after another, each adding its rows to the
/// snapshot the ones before built (a series several shards keep is summed), so no shard's rows are ever
/// copied out whole beside it. Every shard is asked after this call began, so a batch accepted before it
/// is counted (read-your-writes).
async fn collect(shards: &[mpsc::Sender<ShardMsg>], template: &Snapshot) -> Result<Snapshot> {
    let mut snap = Box::new(template.clone());
    for s in shards {
        let (tx, rx) = oneshot::channel();
        s.send(ShardMsg::Snapshot(snap, tx))
            .await
            .map_err(|_| Error::Stopped)?;
        snap = rx.await.map_err(|_| Error::Stopped)?;
    }
    snap.taken_at = SystemTime::now();
    Ok(*snap)
}

/// The window task: every `window`, a snapshot becomes a window of history; the history is saved every
/// `snapshot_every` and once more when the engine stops.
struct Windows {
    backfill: mpsc::Receiver<Backfill>,
    source: Source,
    window: Duration,
    snapshot_every: Duration,
    views: watch::Sender<HistoryView>,
    health: watch::Sender<Arc<Health>>,
    monitor: Monitor,
}

/// What the monitor says now, and the recent window closes that had likely causes.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Health {
    pub current: HealthReport,
    /// Newest first, at most [`RECENT`].
    pub recent: Vec<HealthReport>,
}

/// Reports with causes kept for `/api/anomalies`.
const RECENT: usize = 50;

impl Windows {
    async fn run(mut self, mut history: History, mut stop: watch::Receiver<bool>) {
        let mut recent: std::collections::VecDeque<HealthReport> = Default::default();
        let mut tick = tokio::time::interval_at(Instant::now() + self.window, self.window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_save = Instant::now();
        let (mut backfilling, mut last_ts) = (false, i64::MIN);
        loop {
            let (stopping, request) = tokio::select! {
                _ = tick.tick() => (false, None),
                Some(r) = self.backfill.recv() => (false, Some(r)),
                _ = stop.changed() => (true, None),
            };
            let (at, reply) = match request {
                Some(Backfill::Window { ts_ms, reply }) if ts_ms <= last_ts => {
                    let _ = reply.send(Err(Error::Store(format!(
                        "backfilled window at {ts_ms} is not after the previous one ({last_ts})"
                    ))));
                    continue;
                }
                Some(Backfill::Window { ts_ms, reply }) => {
                    backfilling = true;
                    (Some(ts_ms), Some(reply))
                }
                Some(Backfill::Done(reply)) => {
                    backfilling = false;
                    let _ = self.views.send(history.view());
                    tick.reset();
                    let _ = reply.send(());
                    continue;
                }
                // Live windows wait for the backfill to end.
                None if backfilling && !stopping => continue,
                None => (None, None),
            };
            let mut snap = match self.source.take().await {
                Ok(snap) => snap,
                Err(e @ Error::Source(_)) if !stopping => {
                    // The next window tries again; what it counts lands in that window.
                    tracing::warn!(error = %e, "window skipped");
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(e));
                    }
                    continue;
                }
                Err(_) => break,
            };
            if matches!(self.source, Source::Follow(_)) && !history.has_baseline() {
                history.baseline(Arc::new(snap));
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
                if stopping {
                    break;
                }
                continue;
            }
            if let Some(ts) = at {
                snap.taken_at = SystemTime::UNIX_EPOCH + Duration::from_millis(ts.max(0) as u64);
            }
            let snap = Arc::new(snap);
            let ts_ms = snap
                .taken_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            last_ts = last_ts.max(ts_ms);
            // The append runs off the async threads; the history comes back with the window added.
            let cur = snap.clone();
            let appended = tokio::task::spawn_blocking(move || {
                let r = history.append(cur, ts_ms);
                (history, r)
            })
            .await;
            let Ok((h, result)) = appended else { break };
            history = h;
            let failed = result.err();
            if let Some(e) = &failed {
                tracing::error!(error = %e, "history: window not recorded");
            }
            let view = history.view();
            match self.monitor.observe(&view, ts_ms, self.window.as_millis() as i64) {
                Ok(report) => {
                    if !report.causes.is_empty() {
                        recent.push_front(report.clone());
                        recent.truncate(RECENT);
                    }
                    let _ = self.health.send(Arc::new(Health {
                        current: report,
                        recent: recent.iter().cloned().collect(),
                    }));
                }
                Err(e) => tracing::error!(error = %e, "health: window not scored"),
            }
            if let Some(reply) = reply {
                let _ = reply.send(failed.map_or(Ok(()), Err));
            } else {
                let _ = self.views.send(view);
            }
            if stopping || last_save.elapsed() >= self.snapshot_every {
                last_save = Instant::now();
                let save = history.saver();
                match tokio::task::spawn_blocking(save).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "history: save failed"),
                    Err(e) => tracing::error!(error = %e, "history: save task failed"),
                }
            }
            if stopping {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{SpanKind, StatusCode};
    use crate::red::{Histogram, RedRow};

    /// A snapshot of one series with `calls` calls so far.
    fn counted(cfg: &AnalyzerConfig, calls: u64) -> Snapshot {
        Snapshot {
            red: vec![RedRow {
                service: "a".into(),
                span_name: "op".into(),
                kind: SpanKind::Server,
                status: StatusCode::Unset,
                dims: Arc::default(),
                overflow: false,
                calls,
                duration: Histogram::from_counts(&[calls as f64; 1], 0.0, calls as f64),
            }],
            ..Snapshot::empty(cfg)
        }
    }

    #[tokio::test]
    async fn a_followed_source_starts_from_a_baseline_and_skips_a_failed_read() {
        let cfg = AnalyzerConfig {
            // No live window closes during the test: the windows below are closed on demand.
            window: Duration::from_secs(3600),
            store: crate::config::StoreConfig {
                data_dir: None,
                ..Default::default()
            },
            ..Default::default()
        };
        // Counters that began before the engine did: 100 calls already, then 130, a failed read, 150.
        let script = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from([
            Some(100),
            Some(130),
            None,
            Some(150),
        ])));
        let source: SnapshotSource = {
            let cfg = cfg.clone();
            Arc::new(move || {
                let next = script.lock().unwrap().pop_front().flatten();
                let snap = next
                    .map(|calls| counted(&cfg, calls))
                    .ok_or_else(|| Error::Source("the store did not answer".into()));
                Box::pin(async move { snap })
            })
        };
        let engine = follow(&cfg, source);
        engine.backfill_window(1_000).await.expect("the baseline");
        engine.backfill_window(2_000).await.expect("30 calls");
        assert!(matches!(
            engine.backfill_window(3_000).await,
            Err(Error::Source(_))
        ));
        engine.backfill_window(4_000).await.expect("20 calls");
        engine.end_backfill().await.unwrap();
        let rows = engine.history().services(0, 10_000).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].requests, 50.0,
            "the 100 calls before the engine are the baseline; the failed read moved nothing"
        );
        engine.shutdown().await;
    }
}
