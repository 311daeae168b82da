//! OTLP/gRPC: the Export method of TraceService, MetricsService and LogsService.
//!
//! The services are written by hand instead of generated: a generated server decodes with prost into owned
//! messages before our code runs, while this one's codec hands over the request's raw bytes (tonic passes
//! its buffer without a copy), so traces take the same zero-copy walk as OTLP/HTTP protobuf.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use crate::Error;
use crate::budget::ReadError;
use crate::decode::{Format, Rejections, Signal};
use crate::http::error_codes;
use crate::receiver::Receiver;
use crate::stats::Protocol;

/// Decodes nothing: hands the message bytes over as they are. Encodes any prost message.
struct RawCodec<M>(PhantomData<M>);

struct RawDecoder;
struct ProstEncoder<M>(PhantomData<M>);

impl<M: Message + Send + 'static> Codec for RawCodec<M> {
    type Encode = M;
    type Decode = Bytes;
    type Encoder = ProstEncoder<M>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl<M: Message> Encoder for ProstEncoder<M> {
    type Item = M;
    type Error = Status;

    fn encode(&mut self, item: M, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding response: {e}")))
    }
}

/// What differs between the three OTLP services.
pub trait OtlpSpec: Send + Sync + 'static {
    const NAME: &'static str;
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
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
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
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
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
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
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

/// One OTLP gRPC service (its Export method), ready for `tonic::transport::Server::add_service`.
pub struct OtlpGrpc<S> {
    rx: Receiver,
    spec: PhantomData<fn() -> S>,
}

impl<S> OtlpGrpc<S> {
    pub fn new(rx: Receiver) -> OtlpGrpc<S> {
        OtlpGrpc {
            rx,
            spec: PhantomData,
        }
    }
}

impl<S> Clone for OtlpGrpc<S> {
    fn clone(&self) -> Self {
        OtlpGrpc::new(self.rx.clone())
    }
}

impl<S: OtlpSpec> NamedService for OtlpGrpc<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S: OtlpSpec> tower::Service<http::Request<tonic::body::Body>> for OtlpGrpc<S> {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let rx = self.rx.clone();
        Box::pin(async move {
            if req.uri().path() != format!("/{}/Export", S::NAME) {
                return Ok(Status::unimplemented("only Export is served").into_http());
            }
            let auth = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if let Err(e) = rx.authorize(auth) {
                rx.record(Protocol::Grpc, &Err(e), 0);
                return Ok(Status::unauthenticated("missing or invalid bearer token").into_http());
            }
            // Its bytes are read under the shared budget; an overdrawn body fails tonic's read with
            // UNAVAILABLE, so the client retries.
            let req = match metered_request(&rx, req) {
                Ok(req) => req,
                Err(status) => return Ok(status.into_http()),
            };
            let mut grpc = Grpc::new(RawCodec::<S::Response>(PhantomData))
                .apply_compression_config(encodings(), encodings())
                .apply_max_message_size_config(Some(rx.max_body()), None);
            Ok(grpc
                .unary(
                    Export::<S> {
                        rx,
                        spec: PhantomData,
                    },
                    req,
                )
                .await)
        })
    }
}

/// The unary call itself: decode and enqueue in the request task, answer with partial success.
struct Export<S> {
    rx: Receiver,
    spec: PhantomData<fn() -> S>,
}

impl<S: OtlpSpec> UnaryService<Bytes> for Export<S> {
    type Response = S::Response;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response<S::Response>, Status>> + Send>>;

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let body = req.into_inner();
        let len = body.len();
        let rx = self.rx.clone();
        Box::pin(async move {
            let result = rx.export(S::SIGNAL, Format::Protobuf, body).await;
            rx.record(Protocol::Grpc, &result, len);
            match result {
                Ok(rejected) => Ok(Response::new(S::respond(&rejected))),
                Err(e) => Err(status_of(&e)),
            }
        })
    }
}

/// The request with its body read under the shared budget (`budget.rs`); refused at once when the
/// `Content-Length` it announces (rare in gRPC) does not fit.
fn metered_request(
    rx: &Receiver,
    req: http::Request<tonic::body::Body>,
) -> Result<http::Request<tonic::body::Body>, Status> {
    let (parts, body) = req.into_parts();
    let announced = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .filter(|&n| n <= rx.max_body().saturating_add(5))
        .unwrap_or(0);
    let metered = rx
        .meter(body, Protocol::Grpc, announced)
        .map_err(|e| status_of(&e))?;
    let body = tonic::body::Body::new(http_body_util::BodyExt::map_err(metered, |e| {
        match e.downcast::<ReadError>() {
            Ok(r) => status_of(&Error::Reading(*r)),
            Err(e) => Status::from_error(e),
        }
    }));
    Ok(http::Request::from_parts(parts, body))
}

/// The gRPC status for an error (UNAVAILABLE, so the client retries, when refused for now).
fn status_of(e: &Error) -> Status {
    let (_, code) = error_codes(e);
    Status::new(code, e.to_string())
}

fn encodings() -> tonic::codec::EnabledCompressionEncodings {
    let mut e = tonic::codec::EnabledCompressionEncodings::default();
    e.enable(CompressionEncoding::Gzip);
    e.enable(CompressionEncoding::Zstd);
    e
}
