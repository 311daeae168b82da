//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics`, `/v1/logs`, in protobuf or JSON, optionally gzip or zstd,
//! answered in the request's own content type as the OTLP specification asks. Errors carry a
//! `google.rpc.Status` body; refusals carry `Retry-After` so exporters back off and retry.

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;

use crate::body::{Encoding, decompress};
use crate::budget::ReadError;
use crate::decode::{Format, Rejections, Signal};
use crate::grpc::{Logs, Metrics, OtlpSpec, Traces};
use crate::receiver::Receiver;
use crate::stats::Protocol;
use crate::{Error, Result};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// The OTLP/HTTP routes.
pub fn router(receiver: Receiver) -> Router {
    Router::new()
        .route("/v1/traces", post(|s, h, b| handle(s, h, b, Signal::Traces)))
        .route("/v1/metrics", post(|s, h, b| handle(s, h, b, Signal::Metrics)))
        .route("/v1/logs", post(|s, h, b| handle(s, h, b, Signal::Logs)))
        // The limit is enforced in `Receiver::read_body`, after decompression as well as before.
        .layer(DefaultBodyLimit::disable())
        .with_state(receiver)
}

async fn handle(State(rx): State<Receiver>, headers: HeaderMap, body: Body, signal: Signal) -> Response {
    let format = content_type(&headers);
    // An unsupported content type is answered in protobuf, the default encoding.
    let answer_in = *format.as_ref().unwrap_or(&Format::Protobuf);
    let mut wire_bytes = 0;
    let result = async {
        rx.authorize(headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes))?;
        let format = format?;
        let encoding = Encoding::parse(
            headers
                .get(header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok()),
        )?;
        let raw = rx
            .read_body(&headers, body, Protocol::Http, rx.max_body())
            .await?;
        wire_bytes = raw.len();
        let body = decompress(encoding, raw, rx.max_body())?;
        rx.export(signal, format, body).await
    }
    .await;
    rx.record(Protocol::Http, &result, wire_bytes);
    match result {
        Ok(rejected) => success(signal, answer_in, &rejected),
        Err(e) => failure(&e, answer_in, rx.retry_after_secs()),
    }
}

/// The request's encoding from `Content-Type` (parameters such as `charset` are ignored).
fn content_type(headers: &HeaderMap) -> Result<Format> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = raw.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        PROTOBUF | "application/protobuf" => Ok(Format::Protobuf),
        JSON => Ok(Format::Json),
        _ => Err(Error::ContentType(raw.to_owned())),
    }
}

fn encode<M: Message + serde::Serialize>(msg: &M, format: Format) -> (Vec<u8>, &'static str) {
    match format {
        Format::Protobuf => (msg.encode_to_vec(), PROTOBUF),
        // Serialising these plain structs to JSON cannot fail.
        Format::Json => (serde_json::to_vec(msg).unwrap_or_default(), JSON),
    }
}

fn respond(status: StatusCode, (body, ct): (Vec<u8>, &'static str)) -> Response {
    (status, [(header::CONTENT_TYPE, ct)], body).into_response()
}

fn success(signal: Signal, format: Format, r: &Rejections) -> Response {
    let body = match signal {
        Signal::Traces => encode(&Traces::respond(r), format),
        Signal::Metrics => encode(&Metrics::respond(r), format),
        Signal::Logs => encode(&Logs::respond(r), format),
    };
    respond(StatusCode::OK, body)
}

/// `google.rpc.Status`, the error body OTLP/HTTP specifies.
#[derive(Clone, PartialEq, Message, serde::Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The HTTP status and gRPC code for an error.
pub(crate) fn error_codes(e: &Error) -> (StatusCode, tonic::Code) {
    match e {
        Error::Decode(_) | Error::Body(_) => (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument),
        Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, tonic::Code::ResourceExhausted),
        Error::ContentType(_) | Error::ContentEncoding(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, tonic::Code::Unimplemented)
        }
        Error::Reading(ReadError::TimedOut { .. }) => {
            (StatusCode::REQUEST_TIMEOUT, tonic::Code::DeadlineExceeded)
        }
        Error::Unauthenticated => (StatusCode::UNAUTHORIZED, tonic::Code::Unauthenticated),
        Error::Refused(_) | Error::Reading(ReadError::Overdrawn { .. }) => {
            (StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable)
        }
        Error::Tls(_) | Error::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, tonic::Code::Internal),
    }
}

fn failure(e: &Error, format: Format, retry_after: u64) -> Response {
    let (status, code) = error_codes(e);
    let body = encode(
        &RpcStatus {
            code: code as i32,
            message: e.to_string(),
        },
        format,
    );
    let mut resp = respond(status, body);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    }
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, v.parse().unwrap());
            m
        };
        assert_eq!(
            content_type(&h("application/json; charset=utf-8")).unwrap(),
            Format::Json
        );
        assert_eq!(
            content_type(&h("Application/X-Protobuf")).unwrap(),
            Format::Protobuf
        );
        assert!(matches!(
            content_type(&h("text/plain")),
            Err(Error::ContentType(_))
        ));
        assert!(matches!(
            content_type(&HeaderMap::new()),
            Err(Error::ContentType(_))
        ));
    }
}
