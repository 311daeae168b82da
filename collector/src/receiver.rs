//! What both receivers do with a request once its body is in hand: reserve memory, decode, validate, hand
//! the batch to the analyzer, count. Stateless apart from counters, so any number of requests run at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tidewatch_analyzer::config::ByteSize;
use tidewatch_analyzer::ingest::{Ingest, Refused};

use crate::budget::{Metered, ReadError};
use crate::decode::{Decoded, Format, Rejections, Signal, decode};
use crate::stats::{Outcome, Protocol, Stats};
use crate::{CollectorConfig, Error, Result};

/// Where a receiver hands valid requests when they do not go to the in-process analyzer: the ingest role's
/// Kafka producer. `forward` resolves once the items are durably accepted, or refuses them retryably.
pub trait Forward: Send + Sync {
    fn forward(
        &self,
        signal: Signal,
        format: Format,
        body: Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Refused>> + Send + '_>>;
}

/// Shared by the gRPC and HTTP receivers; cheap to clone.
#[derive(Clone)]
pub struct Receiver {
    ingest: Ingest,
    forward: Option<Arc<dyn Forward>>,
    stats: Arc<Stats>,
    max_body: usize,
    max_reading: usize,
    body_timeout: Duration,
    token: Option<Arc<str>>,
    retry_after_secs: u64,
}

impl Receiver {
    /// Reads the token file, if one is configured.
    pub fn new(cfg: &CollectorConfig, ingest: Ingest, stats: Arc<Stats>) -> Result<Receiver> {
        let token = match &cfg.auth {
            Some(a) => Some(Arc::from(a.resolve().map_err(Error::Io)?)),
            None => None,
        };
        Ok(Receiver {
            ingest,
            forward: None,
            stats,
            max_body: cfg.max_body.as_usize(),
            max_reading: cfg.max_reading.as_usize(),
            body_timeout: cfg.body_timeout,
            token,
            retry_after_secs: cfg.retry_after.as_secs().max(1),
        })
    }

    /// Sends valid requests to `forward` instead of the analyzer (`ingest` then only caps memory).
    pub fn forwarding(mut self, forward: Arc<dyn Forward>) -> Receiver {
        self.forward = Some(forward);
        self
    }

    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Wraps a request body so that its bytes are read under the shared budget and within the body
    /// timeout (`budget.rs`); `announced` is its `Content-Length` (0 when unknown).
    pub fn meter<B>(&self, body: B, protocol: Protocol, announced: usize) -> Result<Metered<B>> {
        Ok(Metered::new(
            body,
            self.stats.clone(),
            protocol,
            (self.max_reading, self.body_timeout),
            announced,
        )?)
    }

    /// Reads a request body whole, under the shared budget and within `limit` bytes: refused at once when
    /// its `Content-Length` (in `headers`, if any) is over the limit, otherwise as soon as the bytes read
    /// pass it. Both receivers read their bodies here. A body that arrives in one frame is handed over as
    /// it is, without a copy.
    pub async fn read_body<B>(
        &self,
        headers: &http::HeaderMap,
        body: B,
        protocol: Protocol,
        limit: usize,
    ) -> Result<Bytes>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let too_large = || Error::TooLarge {
            limit: ByteSize(limit as u64),
        };
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let announced = declared.map_or(0, |n| n as usize);
        match Limited::new(self.meter(body, protocol, announced)?, limit)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
            Err(e) => match e.downcast::<ReadError>() {
                Ok(r) => Err(Error::Reading(*r)),
                Err(e) => Err(Error::Body(e.to_string())),
            },
        }
    }

    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_secs
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Checks an `authorization` header value against the configured token (if any). The comparison takes
    /// the same time wherever the first difference is, so the token cannot be guessed byte by byte.
    pub fn authorize(&self, header: Option<&[u8]>) -> Result<()> {
        let Some(token) = &self.token else { return Ok(()) };
        let given = header
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .unwrap_or_default();
        let want = token.as_bytes();
        let diff = given.len() ^ want.len();
        let same = want
            .iter()
            .zip(given.iter().chain(std::iter::repeat(&0)))
            .fold(diff, |acc, (a, b)| acc | usize::from(a ^ b));
        if same == 0 {
            Ok(())
        } else {
            Err(Error::Unauthenticated)
        }
    }

    /// Decodes one request and hands it to the analyzer (or forwards it), resolving once the analyzer has
    /// counted it (or the forward is acknowledged); returns what was rejected item by item.
    pub async fn export(&self, signal: Signal, format: Format, body: Bytes) -> Result<Rejections> {
        let mut permit = self.ingest.reserve(body.len())?;
        let (decoded, rejected) = decode(signal, format, body.clone(), self.ingest.attr_keys())?;
        let n = decoded.len() as u64;
        if n > 0 {
            // Answered once the batch is counted (at once when it was counted in place), not when it is
            // queued: a client's requests in flight then bound what it has waiting in the shards' queues,
            // so a client faster than the shards is slowed down instead of filling `max_inflight`.
            let released = permit.released();
            let sent = match (&self.forward, decoded) {
                (Some(f), decoded) => {
                    drop(decoded);
                    let sent = f.forward(signal, format, body).await;
                    drop(permit);
                    sent
                }
                (None, Decoded::Spans(b)) => self.ingest.try_send_spans(b, permit),
                (None, Decoded::Metrics(b)) => self.ingest.try_send_metrics(b, permit),
                (None, Decoded::Logs(b)) => self.ingest.try_send_logs(b, permit),
            };
            if let Err(e) = sent {
                self.stats.refused(signal, n);
                return Err(e.into());
            }
            released.await;
        }
        self.stats.items(signal, n, rejected.count);
        Ok(rejected)
    }

    /// Counts a finished request.
    pub fn record(&self, protocol: Protocol, result: &Result<Rejections>, wire_bytes: usize) {
        let outcome = match result {
            Ok(r) if r.count == 0 => Outcome::Ok,
            Ok(_) => Outcome::Partial,
            Err(Error::Decode(_) | Error::Body(_)) => Outcome::BadRequest,
            Err(Error::TooLarge { .. }) => Outcome::TooLarge,
            Err(Error::ContentType(_) | Error::ContentEncoding(_)) => Outcome::Unsupported,
            Err(Error::Unauthenticated) => Outcome::Unauthenticated,
            Err(Error::Refused(_)) => Outcome::Refused,
            // Counted by the metered body that failed it, where gRPC's are counted too.
            Err(Error::Reading(_)) => return,
            Err(Error::Tls(_) | Error::Io(_)) => Outcome::BadRequest,
        };
        self.stats.request(protocol, outcome, wire_bytes);
    }
}
