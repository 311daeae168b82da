//! The collector's part of the configuration (one `Default`, unknown fields rejected, `validate` names
//! every problem).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidewatch_analyzer::config::ByteSize;

/// Where and how OTLP is received.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    pub grpc: Listener,
    pub http: Listener,
    /// Largest request body accepted, measured after decompression too (so a gzip bomb is refused).
    pub max_body: ByteSize,
    /// Bytes of request bodies being read at once, over both endpoints; past it, requests are refused
    /// as retryable (503, `UNAVAILABLE`). Bounds memory however many clients connect (see `budget.rs`).
    /// At least `max_body`, or the largest request could never be read.
    pub max_reading: ByteSize,
    /// Longest a request body may take to arrive after its headers; slower ones are answered 408 /
    /// `DEADLINE_EXCEEDED` and give their share of `max_reading` back.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// OTLP connections open at once, over both endpoints; more are closed at once (clients retry).
    /// Each may hold up to 2 MiB that HTTP/2 lets a client send ahead (its connection window), outside
    /// `max_reading`.
    pub max_connections: usize,
    /// What a refused client is told to wait before retrying (`Retry-After`).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Require `Authorization: Bearer <token>` on both endpoints.
    pub auth: Option<TokenConfig>,
    /// Serve both endpoints over TLS (and require client certificates when `client_ca` is set).
    pub tls: Option<TlsConfig>,
}

impl Default for CollectorConfig {
    fn default() -> CollectorConfig {
        CollectorConfig {
            grpc: Listener {
                enabled: true,
                endpoint: SocketAddr::from(([0, 0, 0, 0], 4317)),
            },
            http: Listener {
                enabled: true,
                endpoint: SocketAddr::from(([0, 0, 0, 0], 4318)),
            },
            max_body: ByteSize::mib(64),
            max_reading: ByteSize::mib(64),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            retry_after: Duration::from_secs(1),
            auth: None,
            tls: None,
        }
    }
}

/// One listening socket.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub endpoint: SocketAddr,
}

fn yes() -> bool {
    true
}

/// A shared secret both ports can require (`collector.auth` on OTLP, `web.auth` on the web port): given
/// inline (`token`, or through `TIDEWATCH_COLLECTOR__AUTH__TOKEN` / `TIDEWATCH_WEB__AUTH__TOKEN`) or read
/// from `token_file` (e.g. a mounted Kubernetes Secret). One rule for both: surrounding whitespace is not
/// part of the token (HTTP strips it from header values, and files end in a newline), and what remains
/// is at least [`MIN_TOKEN_LEN`] characters.
#[derive(Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// Printed as `<redacted>` by `check-config`.
    #[serde(serialize_with = "redact")]
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
}

/// The shortest token either port accepts.
pub const MIN_TOKEN_LEN: usize = 8;

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

/// Serialises a secret as `<redacted>`, so printing the configuration never shows it.
fn redact<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("<redacted>"),
        None => s.serialize_none(),
    }
}

impl TokenConfig {
    /// Appends every problem to `errors`, under `path` (where this section sits in the configuration).
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        match (&self.token, &self.token_file) {
            (None, None) => errors.push(format!("{path}: set token or token_file")),
            (Some(_), Some(_)) => errors.push(format!("{path}: set token or token_file, not both")),
            (Some(t), None) if t.trim().chars().count() < MIN_TOKEN_LEN => errors.push(format!(
                "{path}.token: must be at least {MIN_TOKEN_LEN} characters (surrounding whitespace not counted)"
            )),
            (None, Some(f)) if !f.is_file() => {
                errors.push(format!("{path}.token_file: {} is not a readable file", f.display()))
            }
            _ => {}
        }
    }

    /// The token to require (read from the file when one is named), trimmed, and checked against the
    /// same rule as [`TokenConfig::validate`] (a file's content is only known now).
    pub fn resolve(&self) -> std::io::Result<String> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.trim().to_owned(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", f.display())))?
                .trim()
                .to_owned(),
            (None, None) => return Err(std::io::Error::other("no token configured")),
        };
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(std::io::Error::other(format!(
                "the token is shorter than {MIN_TOKEN_LEN} characters"
            )));
        }
        Ok(token)
    }
}

/// PEM files for TLS; `client_ca` turns on mutual TLS.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl CollectorConfig {
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.max_body.0 < 1024 {
            errors.push(format!(
                "collector.max_body: {} is below the minimum of 1KiB",
                self.max_body
            ));
        }
        if self.max_body.0 > u64::from(u32::MAX / 2) {
            errors.push(format!(
                "collector.max_body: {} is above the maximum of 2GiB",
                self.max_body
            ));
        }
        if self.max_reading.0 < self.max_body.0 {
            errors.push(format!(
                "collector.max_reading: {} is below collector.max_body ({}), so the largest request could never be read",
                self.max_reading, self.max_body
            ));
        }
        if self.max_connections == 0 {
            errors.push("collector.max_connections: must be at least 1".into());
        }
        if self.body_timeout.is_zero() {
            errors.push("collector.body_timeout: must be above 0".into());
        }
        // Port 0 asks the OS for a free port, so two of them never clash.
        if self.grpc.enabled
            && self.http.enabled
            && self.grpc.endpoint == self.http.endpoint
            && self.grpc.endpoint.port() != 0
        {
            errors.push(format!(
                "collector.http.endpoint: {} is also the gRPC endpoint",
                self.http.endpoint
            ));
        }
        if let Some(a) = &self.auth {
            a.validate("collector.auth", errors);
        }
        if let Some(t) = &self.tls {
            t.validate("collector.tls", errors);
        }
    }
}

impl TlsConfig {
    /// Names each file that is missing, under `path` (where this section sits in the configuration).
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        for (field, file) in [
            ("cert", Some(&self.cert)),
            ("key", Some(&self.key)),
            ("client_ca", self.client_ca.as_ref()),
        ] {
            if let Some(f) = file
                && !f.is_file()
            {
                errors.push(format!("{path}.{field}: {} is not a readable file", f.display()));
            }
        }
    }
}
