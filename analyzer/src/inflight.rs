//! Admission: the bytes held by batches between a receiver and the engine, against a fixed limit, and why
//! a batch was not taken. A leaf: the records carry an [`InflightPermit`], and the ingest path hands them out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

/// Why a batch was not taken. Both are temporary: the client should retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("ingest queue is full")]
    QueueFull,
    #[error("in-flight memory limit reached")]
    MemoryLimit,
    #[error("shutting down")]
    ShuttingDown,
    /// The store past the receiver (the Kafka cluster of `--role ingest`) did not acknowledge in time.
    #[error("the downstream store did not acknowledge the batch in time")]
    Downstream,
}

/// Bytes held by batches between a receiver and the engine, against a fixed limit.
#[derive(Debug)]
pub struct Inflight {
    used: AtomicUsize,
    limit: usize,
}

impl Inflight {
    pub fn new(limit: usize) -> Arc<Inflight> {
        Arc::new(Inflight {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Reserves `bytes`, or refuses when that would pass the limit. A single request larger than the whole
    /// limit is still let through when nothing else is in flight, so a limit below the body limit cannot
    /// wedge a client forever.
    pub fn try_acquire(self: &Arc<Self>, bytes: usize) -> Result<InflightPermit, Refused> {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur > 0 && cur + bytes > self.limit {
                return Err(Refused::MemoryLimit);
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + bytes, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(InflightPermit {
                        owner: self.clone(),
                        bytes,
                        released: None,
                    });
                }
                Err(now) => cur = now,
            }
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Bytes reserved in [`Inflight`], given back when the batch carrying it is dropped.
#[derive(Debug)]
pub struct InflightPermit {
    owner: Arc<Inflight>,
    bytes: usize,
    /// Dropped with the permit, which wakes the [`Released`] waiting on it.
    released: Option<oneshot::Sender<()>>,
}

impl InflightPermit {
    /// Grows or shrinks the reservation to `bytes` once the real size is known (after decoding). Growing
    /// never fails: the request is already admitted; the next one sees the larger figure.
    pub fn resize(&mut self, bytes: usize) {
        if bytes >= self.bytes {
            self.owner.used.fetch_add(bytes - self.bytes, Ordering::AcqRel);
        } else {
            self.owner.used.fetch_sub(self.bytes - bytes, Ordering::AcqRel);
        }
        self.bytes = bytes;
    }

    /// A future that resolves once this permit is dropped: once the batch carrying it has been counted (or
    /// dropped) and its bytes given back. A receiver answers its client then, so that a client's requests
    /// in flight bound the batches it has waiting in the shards' queues.
    pub fn released(&mut self) -> Released {
        let (tx, rx) = oneshot::channel();
        self.released = Some(tx);
        Released(rx)
    }
}

/// Resolves when the [`InflightPermit`] it was taken from is dropped.
#[derive(Debug)]
pub struct Released(oneshot::Receiver<()>);

impl Future for Released {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Nothing is ever sent: the sender is dropped with the permit, which ends the wait.
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl Drop for InflightPermit {
    fn drop(&mut self) {
        self.owner.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}
