//! The collector's one error type. Mapped to HTTP responses and gRPC statuses only at the edges
//! ([`crate::http`], [`crate::grpc`]).

use tidewatch_analyzer::config::ByteSize;
use tidewatch_analyzer::ingest::Refused;

use crate::budget::ReadError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body could not be parsed as the request it claims to be.
    #[error("{0}")]
    Decode(String),
    #[error("request body exceeds the limit of {limit}")]
    TooLarge { limit: ByteSize },
    #[error("unsupported content type `{0}`: use application/x-protobuf or application/json")]
    ContentType(String),
    #[error("unsupported content encoding `{0}`: use gzip, zstd or none")]
    ContentEncoding(String),
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    /// The analyzer cannot take the batch now; the client should retry.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The body could not be read: the reading budget is spent (retry) or it came too slowly.
    #[error(transparent)]
    Reading(#[from] ReadError),
    #[error("reading request body: {0}")]
    Body(String),
    #[error("tls setup: {0}")]
    Tls(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
