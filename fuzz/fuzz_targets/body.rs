//! Request body decompression under a limit: the first byte picks the encoding (identity, gzip, zstd),
//! the rest is the body. Output is never larger than the limit; bad input is an error, not a panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidewatch_collector::Error;
use tidewatch_collector::body::{Encoding, decompress};

const LIMIT: usize = 256 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let encoding = match sel % 3 {
        0 => Encoding::Identity,
        1 => Encoding::Gzip,
        _ => Encoding::Zstd,
    };
    match decompress(encoding, Bytes::copy_from_slice(body), LIMIT) {
        Ok(out) => assert!(encoding == Encoding::Identity || out.len() <= LIMIT),
        Err(Error::TooLarge { .. } | Error::Decode(_)) => {}
        Err(e) => panic!("unexpected error kind: {e:?}"),
    }
});
