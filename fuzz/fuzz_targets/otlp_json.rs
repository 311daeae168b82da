//! OTLP/JSON requests: the first byte picks the signal, the rest is the body. Whatever the bytes, decoding
//! returns a batch or an error; it must not panic.
#![no_main]

#[path = "common.rs"]
mod common;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidewatch_collector::decode::{Format, decode};

fuzz_target!(|data: &[u8]| {
    let Some((signal, body)) = common::split(data) else {
        return;
    };
    let _ = decode(signal, Format::Json, Bytes::copy_from_slice(body), &common::KEYS);
});
