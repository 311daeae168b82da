//! The way in: a cheap, cloneable [`Ingest`] handle that receivers push batches into.
//!
//! The analyzer owns the queues, so it owns this type (the consumer owns its channel). Two limits keep memory
//! bounded under any load, and both answer at once rather than wait, so a receiver can tell its client to
//! retry: a bounded queue per shard, and a cap on the bytes held by batches that are queued or being worked on
//! ([`Inflight`]). A batch of spans is split over the shards (each span's RED to its service's shard, its
//! service-graph half to its trace's); it goes in whole or not at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

pub use crate::inflight::{Inflight, InflightPermit, Refused, Released};
use crate::records::{AttrKeys, LogBatch, MetricBatch, SpanBatch};
use crate::shard::{Shard, ShardMsg, SharedShard, SpanPart};

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
    /// The shards' states, for batches aggregated in place (`try_send_spans`).
    pub(crate) states: Arc<[SharedShard]>,
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
            states: Arc::from(Vec::new()),
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

    /// Hands a batch of spans to the engine, split over the shards ([`split`]); all or nothing. When every
    /// shard it needs is idle (nothing queued, its state free), the batch is aggregated right here, on the
    /// receiver's task, while it is still in this core's cache: no hand-off and no shard task to wake, which
    /// at a few requests a second is most of a request's fixed cost. Otherwise it is queued.
    pub fn try_send_spans(&self, mut batch: SpanBatch, mut permit: InflightPermit) -> Result<(), Refused> {
        permit.resize(batch.heap_bytes());
        batch.set_permit(permit);
        let n = self.shards.len();
        if n == 0 {
            return Err(Refused::ShuttingDown);
        }
        let parts = split(&batch, n);
        if self.aggregate_in_place(&batch, &parts) {
            return Ok(());
        }
        // Reserve a slot on every shard that gets a part before sending any, so a full shard refuses the
        // whole batch instead of keeping half of it.
        let mut permits = Vec::with_capacity(parts.len());
        for (shard, part) in parts {
            match self.shards[shard].try_reserve() {
                Ok(p) => permits.push((p, part)),
                Err(e) => return Err(self.refusal(e)),
            }
        }
        let batch = Arc::new(batch);
        for (p, part) in permits {
            p.send(ShardMsg::Spans(batch.clone(), part));
        }
        Ok(())
    }

    /// Aggregates `parts` of `batch` into their shards here if every one of them is idle: its queue empty
    /// (nothing still queued is overtaken; a message the shard's task has just taken off the queue and not
    /// yet served may be, which changes no count and only adds to a snapshot) and open, its state free. All
    /// or none: false leaves every shard untouched.
    fn aggregate_in_place(&self, batch: &SpanBatch, parts: &[(usize, Option<SpanPart>)]) -> bool {
        let mut held = Vec::with_capacity(parts.len());
        for &(shard, _) in parts {
            let queue = &self.shards[shard];
            if queue.is_closed() || queue.capacity() < queue.max_capacity() {
                return false;
            }
            match self.states[shard].try_lock() {
                Ok(state) => held.push(state),
                Err(std::sync::TryLockError::Poisoned(p)) => held.push(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => return false,
            }
        }
        for ((_, part), state) in parts.iter().zip(&mut held) {
            Shard::spans(state, batch, part.as_ref());
        }
        true
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

/// Which shards count which spans of `batch` (`None`: one shard counts all of it): a span's RED goes to
/// its service's shard, its service-graph half to its trace's. Only the shards with something to count
/// are listed.
fn split(batch: &SpanBatch, n: usize) -> Vec<(usize, Option<SpanPart>)> {
    if n == 1 {
        return vec![(0, None)];
    }
    let red_shards: Vec<usize> = batch
        .resources
        .iter()
        .map(|r| shard_of_service(batch.bytes(r.service), n))
        .collect();
    let mut parts = vec![SpanPart::with_capacity(batch.spans.len() / n + 16); n];
    for (i, s) in batch.spans.iter().enumerate() {
        let (red, graph) = (red_shards[s.resource as usize], shard_of(&s.trace_id, n));
        if red == graph {
            parts[red].push(i as u32, SpanPart::RED | SpanPart::GRAPH);
        } else {
            parts[red].push(i as u32, SpanPart::RED);
            parts[graph].push(i as u32, SpanPart::GRAPH);
        }
    }
    parts
        .into_iter()
        .enumerate()
        .filter(|(_, part)| !part.is_empty())
        .map(|(shard, part)| (shard, Some(part)))
        .collect()
}

/// The shard that owns a trace: client and server spans of one trace meet in one place, so the service
/// graph pairs them without locks. Trace ids are random, so their low bytes spread evenly.
pub(crate) fn shard_of(trace_id: &[u8; 16], shards: usize) -> usize {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    (u64::from_le_bytes(low) % shards as u64) as usize
}

/// The shard that keeps a service's RED series and pods, by its name: each series is kept once, not by
/// every shard its traces land on.
pub(crate) fn shard_of_service(name: &[u8], shards: usize) -> usize {
    use std::hash::BuildHasher;
    let h = foldhash::fast::FixedState::default().hash_one(name);
    ((u128::from(h) * shards as u128) >> 64) as usize
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
    fn released_resolves_once_the_permit_is_dropped() {
        use std::future::Future;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let f = Inflight::new(100);
        let mut p = f.try_acquire(10).unwrap();
        let mut released = std::pin::pin!(p.released());
        assert!(released.as_mut().poll(&mut cx).is_pending());
        p.resize(20);
        assert!(released.as_mut().poll(&mut cx).is_pending());
        drop(p);
        assert!(released.as_mut().poll(&mut cx).is_ready());
    }

    /// `n` server spans of service `svc`, trace ids spread over the shards.
    fn spans(svc: &str, n: u8) -> SpanBatch {
        use crate::records::SpanKind;
        let spans: Vec<_> = (1..=n).map(|i| (i, i, SpanKind::Server, 0)).collect();
        SpanBatch::of_spans(svc, &spans)
    }

    /// An engine of `shards` shards whose window never closes during a test, keeping nothing on disk.
    fn engine_cfg(shards: usize) -> crate::config::AnalyzerConfig {
        crate::config::AnalyzerConfig {
            shards,
            window: std::time::Duration::from_secs(3600),
            store: crate::config::StoreConfig {
                data_dir: None,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// On a current-thread runtime the shard tasks run only when this test yields, so a batch counted
    /// right after `try_send_spans` returns was aggregated in place.
    #[tokio::test]
    async fn an_idle_shard_aggregates_in_place_and_a_busy_one_takes_the_batch_through_its_queue() {
        let cfg = engine_cfg(2);
        let (ingest, engine) = crate::engine::start(&cfg);
        let counted = || engine.stats().spans.load(Ordering::Relaxed);
        let send = |b: SpanBatch| ingest.try_send_spans(b, ingest.reserve(1).unwrap());
        let both = spans("a", 8);
        assert!(both.spans.iter().any(|s| shard_of(&s.trace_id, 2) == 0));
        assert!(both.spans.iter().any(|s| shard_of(&s.trace_id, 2) == 1));
        send(both).unwrap();
        assert_eq!(counted(), 8);
        assert_eq!(
            ingest.inflight().used(),
            0,
            "the batch's memory is given back at once"
        );

        // One shard busy: neither part is aggregated here (all or none); both wait in the queues.
        let busy = crate::shard::lock(&ingest.states[1]);
        send(spans("a", 8)).unwrap();
        assert_eq!((counted(), ingest.queue_depth()), (8, 2));
        drop(busy);
        // Something queued: a later batch does not overtake it.
        send(spans("a", 8)).unwrap();
        assert_eq!(ingest.queue_depth(), 4);
        let snap = engine.snapshot().await.unwrap();
        assert_eq!(counted(), 24);
        let calls: u64 = snap.red.iter().map(|r| r.calls).sum();
        assert_eq!(calls, 24);
        assert_eq!(ingest.queue_depth(), 0);
        engine.shutdown().await;
        assert_eq!(send(spans("a", 8)), Err(Refused::ShuttingDown));
    }

    /// A batch that had to wait in the queues is released (its sender answered) only once every shard
    /// it went to has counted its part.
    #[tokio::test]
    async fn a_queued_batch_is_released_once_counted() {
        use std::future::Future;
        let cfg = engine_cfg(2);
        let (ingest, engine) = crate::engine::start(&cfg);
        let busy = crate::shard::lock(&ingest.states[1]);
        let mut permit = ingest.reserve(1).unwrap();
        let mut released = std::pin::pin!(permit.released());
        ingest.try_send_spans(spans("a", 8), permit).unwrap();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(released.as_mut().poll(&mut cx).is_pending());
        assert_eq!(ingest.queue_depth(), 2);
        drop(busy);
        released.await;
        assert_eq!(engine.stats().spans.load(Ordering::Relaxed), 8);
        assert_eq!(ingest.inflight().used(), 0);
        engine.shutdown().await;
    }

    /// `n` server spans in traces spread over the shards, the first half of service `a`, the rest of `b`.
    fn two_services(n: u8) -> SpanBatch {
        let mut b = spans("a", n);
        let service = b.push_text("b");
        b.resources.push(crate::records::Resource {
            service,
            ..b.resources[0]
        });
        for s in b.spans.iter_mut().skip(usize::from(n / 2)) {
            s.resource = 1;
        }
        // Called from outside the batch: each waits for its client half, so no edge forms (a root span
        // would be a `user` edge at once, kept by the shard of its trace: on several shards).
        for s in &mut b.spans {
            s.parent_span_id = [0xff; 8];
        }
        b
    }

    #[test]
    fn a_spans_red_goes_to_its_services_shard_and_its_graph_half_to_its_traces() {
        let b = two_services(32);
        for n in [2, 3] {
            let mut red = vec![Vec::new(); b.spans.len()];
            let mut graph = vec![Vec::new(); b.spans.len()];
            for (shard, part) in split(&b, n) {
                for (i, with_red, with_graph) in part.expect("a part per shard").iter() {
                    if with_red {
                        red[i].push(shard);
                    }
                    if with_graph {
                        graph[i].push(shard);
                    }
                }
            }
            for (i, s) in b.spans.iter().enumerate() {
                let service = b.bytes(b.resources[s.resource as usize].service);
                assert_eq!(red[i], vec![shard_of_service(service, n)], "span {i} of {n}");
                assert_eq!(graph[i], vec![shard_of(&s.trace_id, n)], "span {i} of {n}");
            }
        }
        assert_eq!(split(&b, 1), vec![(0, None)]);
    }

    /// Each RED series is kept by one shard, so shards change neither the rows nor what the series
    /// budget counts.
    #[tokio::test]
    async fn a_red_series_is_kept_once_however_many_shards() {
        let mut seen = Vec::new();
        for shards in [1, 2, 3] {
            let cfg = engine_cfg(shards);
            let (ingest, engine) = crate::engine::start(&cfg);
            for _ in 0..3 {
                ingest
                    .try_send_spans(two_services(32), ingest.reserve(1).unwrap())
                    .unwrap();
            }
            let snap = engine.snapshot().await.unwrap();
            let used = engine.series_budget().expect("shards admit series").active;
            seen.push((snap.red, used));
            engine.shutdown().await;
        }
        assert_eq!(seen[0].0.len(), 2, "a series per service");
        assert_eq!(seen[0].0.iter().map(|r| r.calls).sum::<u64>(), 96);
        assert!(seen.iter().all(|s| *s == seen[0]), "{seen:?}");
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
