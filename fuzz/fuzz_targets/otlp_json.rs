//! OTLP/JSON requests: the first byte picks the signal, the rest is the body. Whatever the bytes, decoding
//! returns a batch or an error; it must not panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidewatch_analyzer::model::AttrKeys;
use tidewatch_collector::decode::{Format, Signal, decode};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let keys = AttrKeys::new([
        "peer.service",
        "db.name",
        "db.system",
        "server.address",
        "k8s.pod.name",
    ]);
    let signal = match sel % 3 {
        0 => Signal::Traces,
        1 => Signal::Metrics,
        _ => Signal::Logs,
    };
    let _ = decode(signal, Format::Json, Bytes::copy_from_slice(body), &keys);
});
