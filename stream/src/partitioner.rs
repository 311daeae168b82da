//! Where a record goes: the OpenTelemetry Collector kafkaexporter's default `sarama_compatible`
//! partitioner, so Tidewatch and Collectors can write the same topic. It is sarama's hash partitioner:
//! FNV-1a 32-bit of the key, read as a signed 32-bit integer, remainder by the partition count, sign
//! dropped. With `partition_traces_by_id` the key is the trace id in lowercase hex.

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// FNV-1a, 32 bits.
pub fn fnv1a32(key: &[u8]) -> u32 {
    key.iter()
        .fold(FNV_OFFSET, |h, &b| (h ^ u32::from(b)).wrapping_mul(FNV_PRIME))
}

/// The partition of `key` among `partitions` (at least 1).
pub fn partition(key: &[u8], partitions: i32) -> i32 {
    // Go's `%` truncates toward zero, as Rust's does; the sign is then dropped.
    ((fnv1a32(key) as i32) % partitions.max(1)).abs()
}

/// A trace id as the kafkaexporter keys it: 32 lowercase hex digits.
pub fn trace_key(trace_id: &[u8]) -> String {
    lower_hex(trace_id)
}

/// Bytes as lowercase hex, two digits each.
pub(crate) fn lower_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference test suite (Go's hash/fnv tests use the same).
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn negative_hashes_fold_like_sarama() {
        // 0xbf9cf968 is negative as an i32 (-1_080_231_576): sarama takes -(h % n).
        assert_eq!(partition(b"foobar", 7), ((-1_080_231_576i32) % 7).abs());
        assert_eq!(partition(b"a", 1), 0);
        for n in 1..64 {
            assert!((0..n).contains(&partition(b"foobar", n)));
        }
    }

    #[test]
    fn partitions_match_franz_go_sarama_compat_hasher() {
        // Printed by franz-go v1.21.5 (the kafkaexporter's client at v0.157.0):
        // kgo.SaramaCompatHasher(fnv32a)(key, n) for each (key, n).
        let cases = [
            ("foobar", 1, 0),
            ("foobar", 3, 0),
            ("foobar", 6, 0),
            ("foobar", 7, 4),
            ("foobar", 12, 0),
            ("foobar", 64, 24),
            ("0af7651916cd43dd8448eb211c80319c", 1, 0),
            ("0af7651916cd43dd8448eb211c80319c", 3, 1),
            ("0af7651916cd43dd8448eb211c80319c", 6, 1),
            ("0af7651916cd43dd8448eb211c80319c", 7, 5),
            ("0af7651916cd43dd8448eb211c80319c", 12, 7),
            ("0af7651916cd43dd8448eb211c80319c", 64, 59),
            ("4bf92f3577b34da6a3ce929d0e0e4736", 1, 0),
            ("4bf92f3577b34da6a3ce929d0e0e4736", 3, 0),
            ("4bf92f3577b34da6a3ce929d0e0e4736", 6, 0),
            ("4bf92f3577b34da6a3ce929d0e0e4736", 7, 5),
            ("4bf92f3577b34da6a3ce929d0e0e4736", 12, 6),
            ("4bf92f3577b34da6a3ce929d0e0e4736", 64, 46),
            ("00000000000000000000000000000001", 1, 0),
            ("00000000000000000000000000000001", 3, 0),
            ("00000000000000000000000000000001", 6, 0),
            ("00000000000000000000000000000001", 7, 6),
            ("00000000000000000000000000000001", 12, 6),
            ("00000000000000000000000000000001", 64, 14),
            ("ffffffffffffffffffffffffffffffff", 1, 0),
            ("ffffffffffffffffffffffffffffffff", 3, 0),
            ("ffffffffffffffffffffffffffffffff", 6, 3),
            ("ffffffffffffffffffffffffffffffff", 7, 4),
            ("ffffffffffffffffffffffffffffffff", 12, 3),
            ("ffffffffffffffffffffffffffffffff", 64, 59),
        ];
        for (key, n, want) in cases {
            assert_eq!(partition(key.as_bytes(), n), want, "{key} over {n}");
        }
    }

    #[test]
    fn trace_keys_are_lowercase_hex() {
        assert_eq!(trace_key(&[0x0a, 0xff, 0x10]), "0aff10");
    }
}
