//! The memory taken by request bodies while they are being read, capped across both receivers.
//!
//! Admitted batches are capped by the analyzer's `max_inflight`, but a body has to be read before it can
//! be decoded and admitted. Without a cap here, memory would grow with open connections × `max_body`: a
//! few hundred slow clients each sending a large body could exhaust it. So every body is wrapped in a
//! [`Metered`] body that takes its bytes from one shared budget (`collector.max_reading`) as they arrive —
//! all at once when `Content-Length` announces them, so such a request is refused before a byte is read —
//! and gives them back when the body is dropped: once `Receiver::read_body` has it whole,
//! just before `Receiver::export` reserves the decoded batch under `max_inflight`. A body that would take
//! the budget past its limit fails with [`Overdrawn`], answered as a retryable refusal (HTTP 503 with
//! `Retry-After`, gRPC `UNAVAILABLE`), like a full queue.
//!
//! A body must also arrive within `collector.body_timeout` of its headers, or it fails with
//! [`ReadError::TimedOut`] (HTTP 408, gRPC `DEADLINE_EXCEEDED`): a client that stalls mid-body would
//! otherwise hold its share of the budget for as long as it keeps the connection open.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tidewatch_analyzer::config::ByteSize;

use crate::stats::{Outcome, Protocol, Stats};

/// Why a metered body stopped being read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The bytes of the bodies already being read are at the limit; the client should retry.
    #[error("request bodies being read at once would exceed collector.max_reading ({limit}); retry later")]
    Overdrawn { limit: ByteSize },
    /// The body did not arrive in time.
    #[error("request body not received within collector.body_timeout ({after:?})")]
    TimedOut { after: Duration },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body whose bytes are taken from the shared reading budget; see the module docs.
pub struct Metered<B> {
    inner: B,
    stats: Arc<Stats>,
    protocol: Protocol,
    limit: usize,
    /// Bytes taken from the budget, given back on drop.
    held: usize,
    /// The part of `held` not yet read (taken ahead from `Content-Length`).
    credit: usize,
    /// Whether this body's failure is counted already (a consumer may poll again after an error).
    counted: bool,
    timeout: Duration,
    deadline: tokio::time::Instant,
    /// Set the first time the body has nothing to give: a body that is already there whole (most are, by
    /// the time their headers are read) never registers a timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Metered<B> {
    /// Wraps `inner`, taking `announced` bytes (its `Content-Length`, 0 when unknown) at once; the body
    /// must be read within `timeout`. Failures are counted in `stats` here, where they happen, as
    /// `refused` or `timed_out` requests of `protocol`. Needs a Tokio runtime (for the timer).
    pub fn new(
        inner: B,
        stats: Arc<Stats>,
        protocol: Protocol,
        (limit, timeout): (usize, Duration),
        announced: usize,
    ) -> Result<Metered<B>, ReadError> {
        let mut m = Metered {
            inner,
            stats,
            protocol,
            limit,
            held: 0,
            credit: 0,
            counted: false,
            timeout,
            deadline: tokio::time::Instant::now() + timeout,
            timer: None,
        };
        m.take(announced)?;
        m.credit = announced;
        Ok(m)
    }

    fn take(&mut self, n: usize) -> Result<(), ReadError> {
        if n == 0 || self.stats.take_reading(n, self.limit) {
            self.held += n;
            return Ok(());
        }
        Err(self.fail(ReadError::Overdrawn {
            limit: ByteSize(self.limit as u64),
        }))
    }

    fn fail(&mut self, e: ReadError) -> ReadError {
        if std::mem::replace(&mut self.counted, true) {
            return e;
        }
        let outcome = match e {
            ReadError::Overdrawn { .. } => Outcome::Refused,
            ReadError::TimedOut { .. } => Outcome::TimedOut,
        };
        self.stats
            .request(self.protocol, outcome, self.held - self.credit);
        e
    }

    /// Waiting for more of the body: pending until the body timeout, then failed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let after = self.timeout;
        Poll::Ready(Some(Err(Box::new(self.fail(ReadError::TimedOut { after })))))
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        self.stats.give_back_reading(self.held);
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return self.poll_deadline(cx),
        };
        if let Some(data) = frame.data_ref() {
            let n = data.len();
            if n <= self.credit {
                self.credit -= n;
            } else {
                let more = n - self.credit;
                if let Err(e) = self.take(more) {
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                self.credit = 0;
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body_util::{BodyExt, Full};

    use super::*;

    /// A body that yields the given data frames, each ready at once.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    const LIMIT_100: (usize, Duration) = (100, Duration::from_secs(60));
    const LIMIT_1000: (usize, Duration) = (1000, Duration::from_secs(60));

    fn chunks(sizes: &[usize]) -> Chunks {
        Chunks(sizes.iter().map(|&n| Bytes::from(vec![0u8; n])).collect())
    }

    #[tokio::test]
    async fn bytes_are_held_while_reading_and_given_back_on_drop() {
        let stats = Arc::new(Stats::default());
        let mut a = Metered::new(chunks(&[300, 300]), stats.clone(), Protocol::Http, LIMIT_1000, 0).unwrap();
        a.frame().await.unwrap().unwrap();
        assert_eq!(stats.reading(), 300);
        // A second body may read while the first holds 300 bytes, up to the limit.
        let b = Metered::new(chunks(&[100]), stats.clone(), Protocol::Http, LIMIT_1000, 700).unwrap();
        assert_eq!(stats.reading(), 1000);
        // The first body's next frame would pass the limit: refused, and counted as a refused request.
        let err = a.frame().await.unwrap().unwrap_err();
        assert!(
            matches!(err.downcast_ref(), Some(ReadError::Overdrawn { .. })),
            "{err}"
        );
        assert_eq!(stats.requests(Protocol::Http, Outcome::Refused), 1);
        drop(a);
        assert_eq!(stats.reading(), 700);
        drop(b);
        assert_eq!(stats.reading(), 0);
    }

    #[tokio::test]
    async fn an_announced_length_is_taken_at_once_and_read_against() {
        let stats = Arc::new(Stats::default());
        assert!(
            Metered::new(
                Full::new(Bytes::new()),
                stats.clone(),
                Protocol::Grpc,
                LIMIT_100,
                101
            )
            .is_err()
        );
        assert_eq!(stats.reading(), 0);
        assert_eq!(stats.requests(Protocol::Grpc, Outcome::Refused), 1);
        let body = Metered::new(chunks(&[60, 40]), stats.clone(), Protocol::Http, LIMIT_100, 100).unwrap();
        // Reading what was announced takes nothing more.
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), 100);
        assert_eq!(stats.reading(), 0);
    }

    #[tokio::test]
    async fn a_body_longer_than_announced_takes_the_rest_as_it_comes() {
        let stats = Arc::new(Stats::default());
        let mut body =
            Metered::new(chunks(&[50, 80]), stats.clone(), Protocol::Http, LIMIT_1000, 60).unwrap();
        body.frame().await.unwrap().unwrap();
        assert_eq!(stats.reading(), 60);
        body.frame().await.unwrap().unwrap();
        assert_eq!(stats.reading(), 130);
    }

    #[tokio::test]
    async fn a_stalled_body_times_out_and_gives_its_bytes_back() {
        /// Never yields a frame, like a client that stopped sending.
        struct Stalled;
        impl Body for Stalled {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
                Poll::Pending
            }
        }
        let stats = Arc::new(Stats::default());
        let limits = (1000, Duration::from_millis(50));
        let mut body = Metered::new(Stalled, stats.clone(), Protocol::Grpc, limits, 500).unwrap();
        assert_eq!(stats.reading(), 500);
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(
            matches!(err.downcast_ref(), Some(ReadError::TimedOut { .. })),
            "{err}"
        );
        assert_eq!(stats.requests(Protocol::Grpc, Outcome::TimedOut), 1);
        // Polled again, it fails again but is counted once.
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(stats.requests(Protocol::Grpc, Outcome::TimedOut), 1);
        drop(body);
        assert_eq!(stats.reading(), 0);
    }

    /// Many bodies of random frames and announced lengths, read in random interleavings and dropped at
    /// random points: the budget is never above its limit, what is held is what the live bodies took, and
    /// it is back at zero when they are gone.
    #[tokio::test]
    async fn random_interleavings_keep_the_budget_exact() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let stats = Arc::new(Stats::default());
        let limits = (4096, Duration::from_secs(60));
        for _ in 0..200 {
            let mut live: Vec<Metered<Chunks>> = Vec::new();
            for _ in 0..rng.random_range(1..12) {
                let frames: Vec<usize> = (0..rng.random_range(0..6))
                    .map(|_| rng.random_range(0..900))
                    .collect();
                let total: usize = frames.iter().sum();
                let announced = if rng.random_bool(0.5) { total } else { 0 };
                if let Ok(m) = Metered::new(chunks(&frames), stats.clone(), Protocol::Http, limits, announced)
                {
                    live.push(m);
                }
                assert!(stats.reading() <= limits.0);
            }
            while !live.is_empty() {
                let i = rng.random_range(0..live.len());
                if rng.random_bool(0.2) {
                    drop(live.swap_remove(i));
                } else {
                    match live[i].frame().await {
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => drop(live.swap_remove(i)),
                    }
                }
                assert!(stats.reading() <= limits.0);
                assert_eq!(stats.reading(), live.iter().map(|m| m.held).sum::<usize>());
            }
            assert_eq!(stats.reading(), 0);
        }
    }
}
