//! The way in: a cheap, cloneable [`Ingest`] handle that receivers push batches into.
//!
//! The analyzer owns the queues, so it owns this type (the consumer owns its channel). Two limits keep memory
//! bounded under any load, and both answer at once rather than wait, so a receiver can tell its client to
//! retry: a bounded queue per shard, and a cap on the bytes held by batches that are queued or being worked on
//! ([`Inflight`]). A batch of spans is split by trace id over the shards; it goes in whole or not at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

pub use crate::inflight::{Inflight, InflightPermit, Refused};
use crate::records::{AttrKeys, LogBatch, MetricBatch, SpanBatch};
use crate::shard::ShardMsg;

/// Counters of what went through [`Ingest`], read by the self-metrics.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub refused_queue_full: AtomicU64,
    pub refused_memory: AtomicU64,
}

/// The sending side of the engine's shard queues. Clone it into every receiver.
#[derive(Clone)]
pub struct Ingest {
    pub(crate) shards: Arc<[mpsc::Sender<ShardMsg>]>,
    pub(crate) inflight: Arc<Inflight>,
    pub(crate) keys: Arc<AttrKeys>,
    pub(crate) stats: Arc<IngestStats>,
}

impl Ingest {
    /// A handle with the memory cap and attribute keys of `cfg` but no engine behind it, for receivers that
    /// forward what they accept elsewhere (`--role ingest`); its `try_send_*` refuse everything.
    pub fn detached(cfg: &crate::config::AnalyzerConfig) -> Ingest {
        Ingest {
            shards: Arc::from(Vec::new()),
            inflight: Inflight::new(cfg.max_inflight.as_usize()),
            keys: Arc::new(crate::shard::wanted_keys(cfg).0),
            stats: Arc::new(IngestStats::default()),
        }
    }

    /// The span attributes the analyzer wants kept; the collector skips every other one.
    pub fn attr_keys(&self) -> &Arc<AttrKeys> {
        &self.keys
    }

    /// Reserves memory for a request of `bytes` before it is decoded, so a flood of large requests is
    /// refused before it is buffered twice.
    pub fn reserve(&self, bytes: usize) -> Result<InflightPermit, Refused> {
        self.inflight.try_acquire(bytes).inspect_err(|_| {
            self.stats.refused_memory.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Hands a batch of spans to the engine, split over the shards by trace id; all or nothing.
    pub fn try_send_spans(&self, mut batch: SpanBatch, mut permit: InflightPermit) -> Result<(), Refused> {
        permit.resize(batch.heap_bytes());
        batch.set_permit(permit);
        let n = self.shards.len();
        if n == 0 {
            return Err(Refused::ShuttingDown);
        }
        if n == 1 {
            return self.send_one(0, ShardMsg::Spans(Arc::new(batch), None));
        }
        let mut parts: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (i, s) in batch.spans.iter().enumerate() {
            parts[shard_of(&s.trace_id, n)].push(i as u32);
        }
        // Reserve a slot on every shard that gets a part before sending any, so a full shard refuses the
        // whole batch instead of keeping half of it.
        let mut permits = Vec::with_capacity(n);
        for (shard, part) in parts.iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            match self.shards[shard].try_reserve() {
                Ok(p) => permits.push((shard, p)),
                Err(e) => return Err(self.refusal(e)),
            }
        }
        let batch = Arc::new(batch);
        for (shard, p) in permits {
            p.send(ShardMsg::Spans(
                batch.clone(),
                Some(std::mem::take(&mut parts[shard])),
            ));
        }
        Ok(())
    }

    /// Hands metric points to the engine (shard 0 keeps the metric and log series).
    pub fn try_send_metrics(
        &self,
        mut batch: MetricBatch,
        mut permit: InflightPermit,
    ) -> Result<(), Refused> {
        permit.resize(batch.heap_bytes());
        batch.permit = Some(permit);
        self.send_one(0, ShardMsg::Metrics(batch))
    }

    /// Hands log records to the engine.
    pub fn try_send_logs(&self, mut batch: LogBatch, mut permit: InflightPermit) -> Result<(), Refused> {
        permit.resize(batch.heap_bytes());
        batch.permit = Some(permit);
        self.send_one(0, ShardMsg::Logs(batch))
    }

    /// Batches waiting in the shard queues.
    pub fn queue_depth(&self) -> usize {
        self.shards.iter().map(|s| s.max_capacity() - s.capacity()).sum()
    }

    /// Total queue capacity over all shards.
    pub fn queue_capacity(&self) -> usize {
        self.shards.iter().map(|s| s.max_capacity()).sum()
    }

    pub fn inflight(&self) -> &Inflight {
        &self.inflight
    }

    pub fn stats(&self) -> &IngestStats {
        &self.stats
    }

    fn send_one(&self, shard: usize, msg: ShardMsg) -> Result<(), Refused> {
        let Some(queue) = self.shards.get(shard) else {
            return Err(Refused::ShuttingDown);
        };
        queue.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => self.refusal(mpsc::error::TrySendError::Full(())),
            mpsc::error::TrySendError::Closed(_) => Refused::ShuttingDown,
        })
    }

    fn refusal(&self, e: mpsc::error::TrySendError<()>) -> Refused {
        match e {
            mpsc::error::TrySendError::Full(()) => {
                self.stats.refused_queue_full.fetch_add(1, Ordering::Relaxed);
                Refused::QueueFull
            }
            mpsc::error::TrySendError::Closed(()) => Refused::ShuttingDown,
        }
    }
}

/// The shard that owns a trace: client and server spans of one trace meet in one place, so the service
/// graph pairs them without locks. Trace ids are random, so their low bytes spread evenly.
pub(crate) fn shard_of(trace_id: &[u8; 16], shards: usize) -> usize {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    (u64::from_le_bytes(low) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_caps_and_releases() {
        let f = Inflight::new(100);
        let a = f.try_acquire(60).unwrap();
        assert_eq!(f.try_acquire(50).unwrap_err(), Refused::MemoryLimit);
        let b = f.try_acquire(40).unwrap();
        assert_eq!(f.used(), 100);
        drop(a);
        drop(b);
        assert_eq!(f.used(), 0);
        // Alone, an oversized request still passes (the body limit bounds it).
        let big = f.try_acquire(500).unwrap();
        assert_eq!(f.try_acquire(1).unwrap_err(), Refused::MemoryLimit);
        drop(big);
    }

    #[test]
    fn permit_resize_tracks_real_size() {
        let f = Inflight::new(1000);
        let mut p = f.try_acquire(100).unwrap();
        p.resize(300);
        assert_eq!(f.used(), 300);
        p.resize(10);
        assert_eq!(f.used(), 10);
        drop(p);
        assert_eq!(f.used(), 0);
    }

    #[test]
    fn shards_spread_trace_ids() {
        let mut hits = [0usize; 4];
        for i in 0u64..4000 {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
            hits[shard_of(&id, 4)] += 1;
        }
        assert!(hits.iter().all(|&h| h > 800), "{hits:?}");
    }
}
