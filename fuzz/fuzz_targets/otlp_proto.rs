//! OTLP protobuf requests, as the receivers decode them: the first byte picks the signal, the rest is the
//! (already decompressed) body. Traces take the zero-copy wire walk; it is checked against prost's full
//! decode plus the owned conversion: when prost can read the request, both paths must keep and reject the
//! same number of spans.
#![no_main]

#[path = "common.rs"]
mod common;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tidewatch_collector::decode::{Format, Signal, convert, decode, wire};

fuzz_target!(|data: &[u8]| {
    let Some((signal, body)) = common::split(data) else {
        return;
    };
    let keys = &*common::KEYS;
    let body = Bytes::copy_from_slice(body);
    let _ = decode(signal, Format::Protobuf, body.clone(), keys);
    if signal == Signal::Traces
        && let Ok(req) = ExportTraceServiceRequest::decode(&body[..])
    {
        let (owned, owned_rej) = convert::traces(&req, keys);
        let (walked, walked_rej) = wire::decode_traces(body, keys).expect("prost read it, the walk must too");
        assert_eq!(walked.spans.len(), owned.spans.len(), "kept spans differ");
        assert_eq!(walked_rej.count, owned_rej.count, "rejected spans differ");
    }
});
