//! Request body decompression with the body limit applied to the output, so a small compressed body that
//! inflates past the limit (a "zip bomb") is stopped at the limit, never buffered whole.

use std::io::Read;

use bytes::Bytes;
use tidewatch_analyzer::config::ByteSize;

use crate::{Error, Result};

/// A `Content-Encoding` we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// Parses a `Content-Encoding` header value.
    pub fn parse(v: Option<&str>) -> Result<Encoding> {
        match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("" | "identity") => Ok(Encoding::Identity),
            Some("gzip" | "x-gzip") => Ok(Encoding::Gzip),
            Some("zstd") => Ok(Encoding::Zstd),
            Some(other) => Err(Error::ContentEncoding(other.to_owned())),
        }
    }
}

/// Decompresses `body`, failing with [`Error::TooLarge`] as soon as the output passes `limit` bytes.
pub fn decompress(encoding: Encoding, body: Bytes, limit: usize) -> Result<Bytes> {
    let reader: Box<dyn Read + '_> = match encoding {
        Encoding::Identity => return Ok(body),
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&body[..])),
        Encoding::Zstd => Box::new(
            zstd::stream::read::Decoder::new(&body[..])
                .map_err(|e| Error::Decode(format!("invalid zstd body: {e}")))?,
        ),
    };
    let mut out = Vec::with_capacity((body.len() * 4).min(limit));
    let read = reader.take(limit as u64 + 1).read_to_end(&mut out);
    if let Err(e) = read {
        return Err(Error::Decode(
            format!("invalid {encoding:?} body: {e}").to_lowercase(),
        ));
    }
    if out.len() > limit {
        return Err(Error::TooLarge {
            limit: ByteSize(limit as u64),
        });
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap().into()
    }

    #[test]
    fn round_trips_gzip_and_zstd() {
        let data = b"hello hello hello".repeat(100);
        assert_eq!(decompress(Encoding::Gzip, gzip(&data), 1 << 20).unwrap(), data);
        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(decompress(Encoding::Zstd, z.into(), 1 << 20).unwrap(), data);
    }

    #[test]
    fn bomb_stops_at_the_limit() {
        // 64 MiB of zeros compresses to ~64 KiB; the limit is 1 MiB.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100 << 10);
        assert!(matches!(
            decompress(Encoding::Gzip, bomb, 1 << 20),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_and_unknown_encodings_are_errors() {
        assert!(matches!(
            decompress(Encoding::Gzip, Bytes::from_static(b"nope"), 1024),
            Err(Error::Decode(_))
        ));
        assert!(matches!(
            Encoding::parse(Some("br")),
            Err(Error::ContentEncoding(_))
        ));
        assert_eq!(Encoding::parse(Some("GZIP")).unwrap(), Encoding::Gzip);
    }
}
