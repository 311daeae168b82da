//! From request bytes to the analyzer's records.
//!
//! Traces in protobuf take the zero-copy walk in [`wire`]; everything else (traces in JSON, metrics and logs
//! in either format) is decoded into the owned opentelemetry-proto types and converted in [`convert`]. Both
//! paths validate item by item: an invalid item is left out and counted in [`Rejections`], which becomes the
//! response's `partial_success`; only a request that cannot be parsed at all fails as a whole.

pub mod convert;
pub mod wire;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tidewatch_analyzer::records::{AttrKeys, LogBatch, MetricBatch, SpanBatch};

use crate::{Error, Result};

/// The three OTLP signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// What the signal's items are called in counters and messages.
    pub fn items(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "data_points",
            Signal::Logs => "log_records",
        }
    }
}

/// Wire encodings of an OTLP request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Json,
}

/// Items left out of a request, with the first few reasons.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rejections {
    pub count: u64,
    reasons: Vec<String>,
}

impl Rejections {
    const KEEP: usize = 3;

    pub fn add(&mut self, why: String) {
        self.add_n(1, why);
    }

    pub fn add_n(&mut self, n: u64, why: String) {
        self.count += n;
        if self.reasons.len() < Self::KEEP {
            self.reasons.push(why);
        }
    }

    /// The `partial_success.error_message`: the first reasons, and how many more there were.
    pub fn message(&self) -> String {
        let mut m = self.reasons.join("; ");
        let shown = self.reasons.len() as u64;
        if self.count > shown {
            m.push_str(&format!("; and {} more", self.count - shown));
        }
        m
    }
}

/// A decoded request, ready for the analyzer.
pub enum Decoded {
    Spans(SpanBatch),
    Metrics(MetricBatch),
    Logs(LogBatch),
}

impl Decoded {
    /// Items accepted from the request.
    pub fn len(&self) -> usize {
        match self {
            Decoded::Spans(b) => b.spans.len(),
            Decoded::Metrics(b) => b.points.len(),
            Decoded::Logs(b) => b.records.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes one request body (already decompressed).
pub fn decode(signal: Signal, format: Format, body: Bytes, keys: &AttrKeys) -> Result<(Decoded, Rejections)> {
    match (signal, format) {
        (Signal::Traces, Format::Protobuf) => {
            wire::decode_traces(body, keys).map(|(b, r)| (Decoded::Spans(b), r))
        }
        (Signal::Traces, Format::Json) => {
            let req: ExportTraceServiceRequest = from_json(&body)?;
            Ok(convert::traces(&req, keys)).map(|(b, r)| (Decoded::Spans(b), r))
        }
        (Signal::Metrics, f) => {
            let req: ExportMetricsServiceRequest = parse(f, &body)?;
            Ok(convert::metrics(&req)).map(|(b, r)| (Decoded::Metrics(b), r))
        }
        (Signal::Logs, f) => {
            let req: ExportLogsServiceRequest = parse(f, &body)?;
            Ok(convert::logs(&req)).map(|(b, r)| (Decoded::Logs(b), r))
        }
    }
}

fn parse<T: Message + Default + serde::de::DeserializeOwned>(format: Format, body: &[u8]) -> Result<T> {
    match format {
        Format::Protobuf => T::decode(body).map_err(|e| Error::Decode(format!("invalid protobuf: {e}"))),
        Format::Json => from_json(body),
    }
}

fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::Decode(format!("invalid OTLP/JSON: {e}")))
}

/// The id rules of the OTLP spec: a 16-byte, not all-zero trace id; an 8-byte, not all-zero span id; a
/// parent that is absent or 8 bytes.
#[inline(always)]
pub fn check_span_ids(trace_id: &[u8], span_id: &[u8], parent: &[u8]) -> std::result::Result<(), String> {
    // Valid ids, nearly every span's, in a few comparisons; the reason for anything else is found apart.
    let valid = trace_id.len() == 16
        && span_id.len() == 8
        && (parent.is_empty() || parent.len() == 8)
        && trace_id != [0; 16]
        && span_id != [0; 8];
    if valid {
        Ok(())
    } else {
        span_ids_problem(trace_id, span_id, parent)
    }
}

#[cold]
fn span_ids_problem(trace_id: &[u8], span_id: &[u8], parent: &[u8]) -> std::result::Result<(), String> {
    check_id("trace_id", trace_id, 16)?;
    check_id("span_id", span_id, 8)?;
    if !parent.is_empty() && parent.len() != 8 {
        return Err(format!(
            "parent_span_id must be empty or 8 bytes, got {}",
            parent.len()
        ));
    }
    Ok(())
}

fn check_id(what: &str, id: &[u8], len: usize) -> std::result::Result<(), String> {
    if id.len() != len {
        Err(format!("{what} must be {len} bytes, got {}", id.len()))
    } else if id.iter().all(|&b| b == 0) {
        Err(format!("{what} is all zero"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_message_summarises() {
        let mut r = Rejections::default();
        for i in 0..5 {
            r.add(format!("bad {i}"));
        }
        assert_eq!(r.message(), "bad 0; bad 1; bad 2; and 2 more");
    }

    #[test]
    fn id_rules() {
        assert!(check_span_ids(&[1; 16], &[1; 8], &[]).is_ok());
        assert!(check_span_ids(&[1; 16], &[1; 8], &[0; 8]).is_ok());
        assert_eq!(
            check_span_ids(&[], &[1; 8], &[]).unwrap_err(),
            "trace_id must be 16 bytes, got 0"
        );
        assert_eq!(
            check_span_ids(&[1; 16], &[0; 8], &[]).unwrap_err(),
            "span_id is all zero"
        );
        assert!(check_span_ids(&[1; 16], &[1; 8], &[1; 3]).is_err());
    }

    #[test]
    fn malformed_json_names_the_problem() {
        let err = decode(
            Signal::Traces,
            Format::Json,
            Bytes::from_static(b"{\"resourceSpans\": [}"),
            &AttrKeys::default(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("invalid OTLP/JSON"), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
