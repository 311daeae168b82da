//! OTLP/gRPC: the Export method of TraceService, MetricsService and LogsService.
//!
//! The services are written by hand as one tower service on tonic's server (its transport and HTTP/2
//! settings; not its router: the three Export paths are told apart here) rather than generated: a
//! generated service decodes with prost into owned messages before our code runs, and tonic's own unary
//! handling copies each message into a buffer it grows as frames arrive. Here the body
//! is read like an OTLP/HTTP body (`Receiver::read_body`: the shared budget, the limit, no copy when it
//! arrives in one HTTP/2 frame), the gRPC message is the body past its 5-byte prefix, decompressed by the
//! HTTP receiver's code when `grpc-encoding` says so, and traces take the same zero-copy walk as OTLP/HTTP
//! protobuf. Answers are one message and `grpc-status` in the trailers, or a trailers-only status.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use http::{HeaderMap, HeaderValue, header};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use tidewatch_analyzer::config::ByteSize;
use tonic::Status;
use tonic::body::Body;

use crate::body::{Encoding, decompress};
use crate::decode::{Format, Rejections, Signal};
use crate::http::error_codes;
use crate::receiver::Receiver;
use crate::stats::Protocol;
use crate::{Error, Result};

/// A gRPC message's prefix: a compressed flag and a 4-byte big-endian length.
const PREFIX: usize = 5;
/// The message encodings accepted, as `grpc-accept-encoding` lists them.
const ACCEPTED: &str = "gzip,zstd";

/// What differs between the three OTLP services.
pub trait OtlpSpec: Send + Sync + 'static {
    /// The request path of the service's Export method.
    const PATH: &'static str;
    const SIGNAL: Signal;
    type Response: Message + Default + Send + 'static;
    fn respond(rejected: &Rejections) -> Self::Response;
}

/// `opentelemetry.proto.collector.trace.v1.TraceService`.
pub struct Traces;
/// `opentelemetry.proto.collector.metrics.v1.MetricsService`.
pub struct Metrics;
/// `opentelemetry.proto.collector.logs.v1.LogsService`.
pub struct Logs;

impl OtlpSpec for Traces {
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    const SIGNAL: Signal = Signal::Traces;
    type Response = ExportTraceServiceResponse;
    fn respond(r: &Rejections) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: (r.count > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: r.count as i64,
                error_message: r.message(),
            }),
        }
    }
}

impl OtlpSpec for Metrics {
    const PATH: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    const SIGNAL: Signal = Signal::Metrics;
    type Response = ExportMetricsServiceResponse;
    fn respond(r: &Rejections) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: (r.count > 0).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: r.count as i64,
                error_message: r.message(),
            }),
        }
    }
}

impl OtlpSpec for Logs {
    const PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    const SIGNAL: Signal = Signal::Logs;
    type Response = ExportLogsServiceResponse;
    fn respond(r: &Rejections) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: (r.count > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: r.count as i64,
                error_message: r.message(),
            }),
        }
    }
}

/// The three OTLP services' Export methods as one service for tonic's server. The method is told apart by
/// the request's path here, so a request passes through no router (tonic's `Routes`, an axum router)
/// before its body is read.
#[derive(Clone)]
pub struct OtlpGrpc {
    rx: Receiver,
}

impl OtlpGrpc {
    pub fn new(rx: Receiver) -> OtlpGrpc {
        OtlpGrpc { rx }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<Body>> for OtlpGrpc {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let rx = self.rx.clone();
        Box::pin(async move {
            let path = req.uri().path();
            let mut answer = if path == Traces::PATH {
                export::<Traces>(&rx, req).await
            } else if path == Metrics::PATH {
                export::<Metrics>(&rx, req).await
            } else if path == Logs::PATH {
                export::<Logs>(&rx, req).await
            } else {
                Status::unimplemented("only the OTLP services' Export methods are served").into_http()
            };
            answer
                .headers_mut()
                .insert("grpc-accept-encoding", HeaderValue::from_static(ACCEPTED));
            Ok(answer)
        })
    }
}

/// One Export call: read, unframe and decode in the request's task, hand over to the analyzer, answer with
/// partial success once the spans are counted.
async fn export<S: OtlpSpec>(rx: &Receiver, req: http::Request<Body>) -> http::Response<Body> {
    let mut wire_bytes = 0;
    let result = async {
        rx.authorize(
            req.headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
        )?;
        let encoding = message_encoding(req.headers())?;
        // An overdrawn budget fails the read with UNAVAILABLE, so the client retries.
        let limit = rx.max_body().saturating_add(PREFIX);
        let (parts, body) = req.into_parts();
        let body = rx.read_body(&parts.headers, body, Protocol::Grpc, limit).await?;
        wire_bytes = body.len();
        let message = unframe(body, encoding, rx.max_body())?;
        rx.export(S::SIGNAL, Format::Protobuf, message).await
    }
    .await;
    rx.record(Protocol::Grpc, &result, wire_bytes);
    match result {
        Ok(rejected) => answer(&S::respond(&rejected)),
        Err(e) => status_of(&e).into_http(),
    }
}

/// The `grpc-encoding` of the request's message (identity when absent).
fn message_encoding(headers: &HeaderMap) -> Result<Encoding> {
    let value = headers.get("grpc-encoding").map(|v| v.to_str().unwrap_or("?"));
    Encoding::parse(value)
}

/// The one message of a unary call's body: past its prefix, decompressed when its flag says so, at most
/// `limit` bytes either way.
fn unframe(body: Bytes, encoding: Encoding, limit: usize) -> Result<Bytes> {
    let Some(prefix) = body.get(..PREFIX) else {
        return Err(Error::Decode("gRPC body holds no complete message prefix".into()));
    };
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > limit {
        return Err(Error::TooLarge {
            limit: ByteSize(limit as u64),
        });
    }
    if body.len() != PREFIX + len {
        return Err(Error::Decode(format!(
            "gRPC body of {} bytes does not hold exactly one message of {len} bytes",
            body.len()
        )));
    }
    let message = body.slice(PREFIX..);
    match (prefix[0], encoding) {
        (0, _) => Ok(message),
        (1, Encoding::Identity) => Err(Error::Decode(
            "gRPC message is marked compressed but the request has no grpc-encoding".into(),
        )),
        (1, encoding) => decompress(encoding, message, limit),
        (flag, _) => Err(Error::Decode(format!("invalid gRPC compressed flag {flag}"))),
    }
}

/// A successful answer: `msg` as one uncompressed message, then `grpc-status: 0` in the trailers.
fn answer<M: Message>(msg: &M) -> http::Response<Body> {
    let len = msg.encoded_len();
    // Full success (no partial_success) is an empty message: its frame is the prefix alone.
    let frame = if len == 0 {
        Bytes::from_static(&[0; PREFIX])
    } else {
        let mut frame = Vec::with_capacity(PREFIX + len);
        frame.put_u8(0);
        frame.put_u32(len as u32);
        msg.encode_raw(&mut frame);
        Bytes::from(frame)
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = Full::new(frame).with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut response = http::Response::new(Body::new(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// The gRPC status for an error (UNAVAILABLE, so the client retries, when refused for now).
fn status_of(e: &Error) -> Status {
    let (_, code) = error_codes(e);
    Status::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn framed(flag: u8, message: &[u8]) -> Bytes {
        let mut b = vec![flag];
        b.extend_from_slice(&(message.len() as u32).to_be_bytes());
        b.extend_from_slice(message);
        b.into()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn an_uncompressed_message_is_the_body_past_its_prefix_without_a_copy() {
        let body = framed(0, b"hello");
        let message = unframe(body.clone(), Encoding::Identity, 100).unwrap();
        assert_eq!(&message[..], b"hello");
        assert_eq!(message.as_ptr(), body[PREFIX..].as_ptr());
        // An encoding announced for a message not marked compressed changes nothing.
        assert_eq!(&unframe(body, Encoding::Gzip, 100).unwrap()[..], b"hello");
    }

    #[test]
    fn compressed_messages_are_inflated_within_the_limit() {
        let data = b"span ".repeat(100);
        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(unframe(framed(1, &z), Encoding::Zstd, 1000).unwrap(), data);
        assert_eq!(
            unframe(framed(1, &gzip(&data)), Encoding::Gzip, 1000).unwrap(),
            data
        );
        // Small on the wire, past the limit once inflated.
        assert!(matches!(
            unframe(framed(1, &gzip(&data)), Encoding::Gzip, 100),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn malformed_bodies_are_refused_with_what_is_wrong() {
        let err = |body: Bytes, encoding| match unframe(body, encoding, 100) {
            Err(Error::Decode(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(err(Bytes::from_static(b"\0\0\0"), Encoding::Identity).contains("no complete"));
        let mut two = framed(0, b"one").to_vec();
        two.extend_from_slice(&framed(0, b"two"));
        assert!(err(two.into(), Encoding::Identity).contains("exactly one message"));
        let short = framed(0, b"hello").slice(..7);
        assert!(err(short, Encoding::Identity).contains("exactly one message"));
        assert!(err(framed(1, b"x"), Encoding::Identity).contains("no grpc-encoding"));
        assert!(err(framed(2, b"x"), Encoding::Identity).contains("flag 2"));
        assert!(matches!(
            unframe(framed(0, &[0; 101]), Encoding::Identity, 100),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn encodings_come_from_grpc_encoding() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-encoding", HeaderValue::from_static(v));
            message_encoding(&h)
        };
        assert_eq!(message_encoding(&HeaderMap::new()).unwrap(), Encoding::Identity);
        assert_eq!(with("gzip").unwrap(), Encoding::Gzip);
        assert_eq!(with("zstd").unwrap(), Encoding::Zstd);
        assert!(matches!(with("snappy"), Err(Error::ContentEncoding(_))));
    }

    #[tokio::test]
    async fn an_answer_is_one_message_then_grpc_status_in_the_trailers() {
        let reply = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 2,
                error_message: "bad ids".into(),
            }),
        };
        let response = answer(&reply);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        let body = collected.to_bytes();
        let message = unframe(body, Encoding::Identity, 1000).unwrap();
        assert_eq!(ExportTraceServiceResponse::decode(message).unwrap(), reply);
    }
}
