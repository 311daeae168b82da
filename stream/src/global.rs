//! The global view of a deployment on Kafka: every partition of the traces, metrics and logs topics,
//! whoever owns it, read
//! from the shared store (each partition's latest checkpoint or its owner's progress, whichever covers
//! more) and summed into one [`Snapshot`]. Every analyzer follows it with the engine's own window task
//! ([`tidewatch_analyzer::follow`]), so its history, anomalies, forecasts, UI and operator see all
//! partitions, the same figures on every analyzer.
//!
//! A partition's totals up to an offset are the same whoever counted them (record time), and a partition
//! only ever moves forward here: a read that covers less than the one before (a stale progress object, a
//! store error) keeps the one before. A partition whose figures arrive late only shifts its counts into a
//! later window; cumulative totals stay exact.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tidewatch_analyzer::config::AnalyzerConfig;
use tidewatch_analyzer::partition::Totals;
use tidewatch_analyzer::{Snapshot, SnapshotSource};

use tidewatch_collector::decode::Signal;

use crate::Result;
use crate::checkpoint::Checkpoints;
use crate::consumer::PartitionId;

/// Every partition's counts, as last read from the store.
pub struct GlobalView {
    /// Each topic's checkpoints.
    checkpoints: BTreeMap<Signal, Checkpoints>,
    cfg: AnalyzerConfig,
    /// Per partition: the offset its totals count up to, and the totals.
    seen: Mutex<BTreeMap<PartitionId, (i64, Totals)>>,
}

impl GlobalView {
    pub fn new(checkpoints: BTreeMap<Signal, Checkpoints>, cfg: AnalyzerConfig) -> GlobalView {
        GlobalView {
            checkpoints,
            cfg,
            seen: Mutex::default(),
        }
    }

    /// Reads every partition's counts from the store and returns their sum.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut read = Vec::new();
        for (&signal, checkpoints) in &self.checkpoints {
            for p in checkpoints.partitions().await? {
                match checkpoints.counted(p).await {
                    Ok(Some(c)) => read.push(((signal, p), c)),
                    Ok(None) => {}
                    // The figures read before stand until the next read.
                    Err(e) => {
                        tracing::warn!(?signal, partition = p, error = %e, "global view: partition not read")
                    }
                }
            }
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for (p, (offset, totals)) in read {
            if seen.get(&p).is_none_or(|(o, _)| offset > *o) {
                seen.insert(p, (offset, totals));
            }
        }
        Ok(Totals::sum(seen.values().map(|(_, t)| t)).snapshot(&self.cfg))
    }

    /// This view as the snapshot source of an engine.
    pub fn source(self: Arc<Self>) -> SnapshotSource {
        Arc::new(move || {
            let view = self.clone();
            Box::pin(async move {
                view.snapshot()
                    .await
                    .map_err(|e| tidewatch_analyzer::Error::Source(e.to_string()))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Checkpoint, WindowStart};
    use tidewatch_analyzer::records::{SpanKind, StatusCode};
    use tidewatch_analyzer::red::{Histogram, RedRow};

    fn counted(calls: u64, offset: i64) -> Checkpoint {
        Checkpoint {
            totals: Totals {
                spans: calls,
                red: vec![RedRow {
                    service: "a".into(),
                    span_name: "op".into(),
                    kind: SpanKind::Server,
                    status: StatusCode::Unset,
                    dims: Default::default(),
                    overflow: false,
                    calls,
                    duration: Histogram::from_counts(&[calls as f64, 0.0], 0.0, calls as f64),
                }],
                ..Totals::default()
            },
            pending: Vec::new(),
            resume: WindowStart {
                window: 1,
                offset,
                clock_ms: 1_000,
            },
        }
    }

    fn calls(s: &Snapshot) -> u64 {
        s.red.iter().map(|r| r.calls).sum()
    }

    #[tokio::test]
    async fn every_partition_summed_and_never_going_back() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = || Checkpoints::open(&url, "g", "t").unwrap();
        let logs = Checkpoints::open(&url, "g", "l").unwrap();
        let view = GlobalView::new(
            BTreeMap::from([(Signal::Traces, store()), (Signal::Logs, logs.clone())]),
            AnalyzerConfig::default(),
        );
        assert!(view.snapshot().await.unwrap().red.is_empty());
        let (claim, _) = store().claim(0).await.unwrap();
        store().save(claim, &counted(5, 10)).await.unwrap();
        store().publish(1, &counted(7, 20)).await.unwrap();
        let s = view.snapshot().await.unwrap();
        assert_eq!(
            (calls(&s), s.red.len()),
            (12, 1),
            "one series over both partitions"
        );
        // A stale progress object (an earlier owner's, covering less) does not take counts back.
        store().publish(1, &counted(3, 12)).await.unwrap();
        assert_eq!(calls(&view.snapshot().await.unwrap()), 12);
        store().publish(1, &counted(9, 25)).await.unwrap();
        assert_eq!(calls(&view.snapshot().await.unwrap()), 14);
        // Partition 0 of the logs topic is another partition than the traces topic's 0.
        let mut c = counted(0, 3);
        c.totals.logs = vec![tidewatch_analyzer::signals::LogRow {
            service: "a".into(),
            severity: "error",
            records: 4,
        }];
        logs.publish(0, &c).await.unwrap();
        let s = view.snapshot().await.unwrap();
        assert_eq!(
            (calls(&s), s.logs.iter().map(|l| l.records).sum::<u64>()),
            (14, 4)
        );
    }
}
