//! The records the collector hands to the analyzer.
//!
//! Spans are the hot path, so a [`SpanBatch`] is built to cost nothing per span on the heap: every string a
//! span carries is a [`Text`], a byte range into either the request's own wire buffer (protobuf input, zero
//! copy) or a per-batch arena (JSON input, numbers turned into text). Spans, resources and the few attributes
//! the analyzer asked for ([`AttrKeys`]) sit in three flat vectors. Metric points and log records are far
//! fewer and carry owned strings.

use bytes::Bytes;

use crate::inflight::InflightPermit;

/// A string inside a [`SpanBatch`]: `len` bytes at `start` of the wire buffer, or of the owned arena when the
/// top bit of `start` is set. Always valid UTF-8: the collector checks before it makes one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Text {
    start: u32,
    len: u32,
}

const OWNED_BIT: u32 = 1 << 31;

impl Text {
    /// The empty string.
    pub const EMPTY: Text = Text { start: 0, len: 0 };

    /// A range of the wire buffer. The caller keeps ranges below 2 GiB (the body limit is far smaller).
    pub fn wire(start: usize, len: usize) -> Text {
        debug_assert!(start < OWNED_BIT as usize);
        Text {
            start: start as u32,
            len: len as u32,
        }
    }

    pub fn is_empty(self) -> bool {
        self.len == 0
    }
}

/// OTLP span kind, numbered as in the protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum SpanKind {
    #[default]
    Unspecified = 0,
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

impl SpanKind {
    /// Unknown numbers map to `Unspecified`, as the protocol asks receivers to do.
    pub fn from_i32(v: i32) -> SpanKind {
        match v {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }

    /// The label value the OpenTelemetry Collector's spanmetrics connector uses.
    pub fn as_label(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "SPAN_KIND_UNSPECIFIED",
            SpanKind::Internal => "SPAN_KIND_INTERNAL",
            SpanKind::Server => "SPAN_KIND_SERVER",
            SpanKind::Client => "SPAN_KIND_CLIENT",
            SpanKind::Producer => "SPAN_KIND_PRODUCER",
            SpanKind::Consumer => "SPAN_KIND_CONSUMER",
        }
    }
}

/// OTLP status code, numbered as in the protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum StatusCode {
    #[default]
    Unset = 0,
    Ok = 1,
    Error = 2,
}

impl StatusCode {
    pub fn from_i32(v: i32) -> StatusCode {
        match v {
            1 => StatusCode::Ok,
            2 => StatusCode::Error,
            _ => StatusCode::Unset,
        }
    }

    pub fn as_label(self) -> &'static str {
        match self {
            StatusCode::Unset => "STATUS_CODE_UNSET",
            StatusCode::Ok => "STATUS_CODE_OK",
            StatusCode::Error => "STATUS_CODE_ERROR",
        }
    }
}

/// What a span's resource tells the analyzer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resource {
    /// `service.name`; empty when the resource has none.
    pub service: Text,
    /// `k8s.pod.name`, to single out one pod among its siblings.
    pub pod: Text,
    /// `k8s.namespace.name`.
    pub namespace: Text,
    /// The resource's selected attributes ([`AttrKeys`]): `attrs[attr_start..attr_start + attr_len]`.
    pub attr_start: u32,
    pub attr_len: u16,
}

/// One span, as far as RED and the service graph need it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero for a root span.
    pub parent_span_id: [u8; 8],
    pub name: Text,
    pub kind: SpanKind,
    pub status: StatusCode,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Index into [`SpanBatch::resources`].
    pub resource: u32,
    /// This span's selected attributes: `attrs[attr_start..attr_start + attr_len]` of the batch.
    pub attr_start: u32,
    pub attr_len: u16,
}

impl Span {
    pub fn has_parent(&self) -> bool {
        self.parent_span_id != [0; 8]
    }

    /// Duration in nanoseconds; an end before the start counts as zero, as in Tempo and the connectors.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// A selected span attribute: which of the [`AttrKeys`] it is, and its value as text.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub key: u16,
    pub value: Text,
}

/// The span attribute keys the analyzer wants the collector to keep (peer and database attributes for the
/// service graph, configured extra dimensions). Everything else is skipped on the wire without a copy.
#[derive(Clone, Debug, Default)]
pub struct AttrKeys {
    keys: Vec<String>,
    /// Where a key is looked up: entry [`slot`]`(key)` holds the index + 1 of the wanted key there, 0 when
    /// there is none, [`SHARED`] when several are. Most attributes on the wire are rejected by this one load,
    /// without a comparison. Empty until a key is added.
    slots: Vec<u16>,
}

/// Entries of [`AttrKeys::slots`].
const SLOTS: usize = 256;
/// A slot of several wanted keys: they are found by a scan.
const SHARED: u16 = u16::MAX;

/// A key's slot: its length, first and last byte mixed, which set apart the attribute names in use
/// (`url.path`, `server.port`, `peer.service`, `db.namespace`, ...).
#[inline(always)]
fn slot(key: &[u8]) -> usize {
    let byte = |b: Option<&u8>| usize::from(b.copied().unwrap_or(0));
    (key.len()
        .wrapping_mul(31)
        .wrapping_add(byte(key.first()))
        .wrapping_mul(31)
        ^ byte(key.last()))
        % SLOTS
}

impl AttrKeys {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(keys: I) -> AttrKeys {
        let mut out = AttrKeys::default();
        for k in keys {
            out.intern(&k.into());
        }
        out
    }

    /// The index of `key`, adding it when new.
    pub fn intern(&mut self, key: &str) -> u16 {
        if let Some(i) = self.keys.iter().position(|k| k == key) {
            return i as u16;
        }
        let i = self.keys.len();
        self.keys.push(key.to_owned());
        if self.slots.is_empty() {
            self.slots = vec![0; SLOTS];
        }
        let entry = &mut self.slots[slot(key.as_bytes())];
        *entry = match u16::try_from(i + 1) {
            Ok(one_based) if *entry == 0 && one_based != SHARED => one_based,
            _ => SHARED,
        };
        i as u16
    }

    /// The index of `key` if it is wanted: one load of its slot, then one comparison.
    #[inline(always)]
    pub fn find(&self, key: &[u8]) -> Option<u16> {
        match *self.slots.get(slot(key))? {
            0 => None,
            SHARED => self.scan(key),
            one_based => {
                let i = one_based - 1;
                (self.keys[usize::from(i)].as_bytes() == key).then_some(i)
            }
        }
    }

    #[cold]
    fn scan(&self, key: &[u8]) -> Option<u16> {
        self.keys
            .iter()
            .position(|k| k.as_bytes() == key)
            .map(|i| i as u16)
    }

    pub fn get(&self, key: &str) -> Option<u16> {
        self.find(key.as_bytes())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A request's worth of spans.
#[derive(Debug, Default)]
pub struct SpanBatch {
    wire: Bytes,
    owned: Vec<u8>,
    pub resources: Vec<Resource>,
    pub spans: Vec<Span>,
    pub attrs: Vec<Attr>,
    permit: Option<InflightPermit>,
}

impl SpanBatch {
    /// A batch whose [`Text::wire`] ranges point into `wire`.
    pub fn with_wire(wire: Bytes) -> SpanBatch {
        SpanBatch {
            wire,
            ..SpanBatch::default()
        }
    }

    /// Copies `s` into the batch's arena (for input that is not borrowed from the wire).
    pub fn push_text(&mut self, s: &str) -> Text {
        if s.is_empty() {
            return Text::EMPTY;
        }
        let start = self.owned.len();
        self.owned.extend_from_slice(s.as_bytes());
        Text {
            start: start as u32 | OWNED_BIT,
            len: s.len() as u32,
        }
    }

    /// Writes `v` into the batch's arena (numbers and booleans from the wire become text this way).
    pub fn push_display(&mut self, v: impl std::fmt::Display) -> Text {
        use std::io::Write;
        let start = self.owned.len();
        // Writing into a Vec cannot fail.
        let _ = write!(self.owned, "{v}");
        Text {
            start: start as u32 | OWNED_BIT,
            len: (self.owned.len() - start) as u32,
        }
    }

    /// The bytes of a text (valid UTF-8 by construction, see [`Text`]).
    #[inline]
    pub fn bytes(&self, t: Text) -> &[u8] {
        let (buf, start) = if t.start & OWNED_BIT != 0 {
            (&self.owned[..], (t.start & !OWNED_BIT) as usize)
        } else {
            (&self.wire[..], t.start as usize)
        };
        buf.get(start..start + t.len as usize).unwrap_or_default()
    }

    /// The text as a `&str`; invalid UTF-8 (impossible for texts made by the collector) reads as empty.
    pub fn str(&self, t: Text) -> &str {
        std::str::from_utf8(self.bytes(t)).unwrap_or_default()
    }

    pub fn span_attrs(&self, span: &Span) -> &[Attr] {
        let start = span.attr_start as usize;
        self.attrs
            .get(start..start + span.attr_len as usize)
            .unwrap_or_default()
    }

    /// The value of attribute `key` on `span`, if the collector kept it.
    pub fn attr(&self, span: &Span, key: u16) -> Option<Text> {
        self.span_attrs(span)
            .iter()
            .find(|a| a.key == key)
            .map(|a| a.value)
    }

    /// The attributes the collector kept of the span's resource.
    pub fn resource_attrs(&self, span: &Span) -> &[Attr] {
        let Some(r) = self.resources.get(span.resource as usize) else {
            return &[];
        };
        let start = r.attr_start as usize;
        self.attrs
            .get(start..start + r.attr_len as usize)
            .unwrap_or_default()
    }

    /// The value of attribute `key` on the span's resource.
    pub fn resource_attr(&self, span: &Span, key: u16) -> Option<Text> {
        self.resource_attrs(span)
            .iter()
            .find(|a| a.key == key)
            .map(|a| a.value)
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// What this batch holds on the heap, for the in-flight memory cap.
    pub fn heap_bytes(&self) -> usize {
        self.wire.len()
            + self.owned.capacity()
            + self.resources.capacity() * size_of::<Resource>()
            + self.spans.capacity() * size_of::<Span>()
            + self.attrs.capacity() * size_of::<Attr>()
    }

    pub(crate) fn set_permit(&mut self, permit: InflightPermit) {
        self.permit = Some(permit);
    }
}

/// The kind of an OTLP metric data point, with what the store needs to turn it into a rate or a level.
#[derive(Clone, Debug, PartialEq)]
pub enum PointValue {
    Gauge(f64),
    /// A sum; `monotonic` counters that are `cumulative` are turned into rates by the store.
    Sum {
        value: f64,
        monotonic: bool,
        cumulative: bool,
    },
    Histogram {
        count: u64,
        sum: f64,
        bounds: Vec<f64>,
        counts: Vec<u64>,
        cumulative: bool,
    },
    Summary {
        count: u64,
        sum: f64,
    },
}

/// One metric data point.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricPoint {
    pub service: String,
    pub pod: String,
    pub name: String,
    /// Data point attributes, sorted by key.
    pub attributes: Vec<(String, String)>,
    pub start_ns: u64,
    pub time_ns: u64,
    pub value: PointValue,
}

/// One log record, reduced to what per-service severity counts need.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRecord {
    pub service: String,
    pub pod: String,
    /// OTLP severity number (1–24; 17 and above is an error); 0 when unset.
    pub severity: u8,
    pub time_ns: u64,
}

/// Metric points from one request.
#[derive(Debug, Default)]
pub struct MetricBatch {
    pub points: Vec<MetricPoint>,
    pub(crate) permit: Option<InflightPermit>,
}

/// Log records from one request.
#[derive(Debug, Default)]
pub struct LogBatch {
    pub records: Vec<LogRecord>,
    pub(crate) permit: Option<InflightPermit>,
}

impl MetricBatch {
    pub fn heap_bytes(&self) -> usize {
        self.points
            .iter()
            .map(|p| {
                size_of::<MetricPoint>()
                    + p.service.len()
                    + p.pod.len()
                    + p.name.len()
                    + p.attributes
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 48)
                        .sum::<usize>()
            })
            .sum()
    }
}

impl LogBatch {
    pub fn heap_bytes(&self) -> usize {
        self.records
            .iter()
            .map(|r| size_of::<LogRecord>() + r.service.len() + r.pod.len())
            .sum()
    }
}

/// Batches for tests (this crate's and others'): one resource (`service`, no pod) and spans named "op"
/// lasting 5 ms.
impl SpanBatch {
    /// One span per `(trace id byte, span id byte, kind, parent span id byte or 0)`.
    pub fn of_spans(service: &str, spans: &[(u8, u8, SpanKind, u8)]) -> SpanBatch {
        let mut b = SpanBatch::default();
        let service = b.push_text(service);
        let empty = b.push_text("");
        b.resources.push(Resource {
            service,
            pod: empty,
            namespace: empty,
            attr_start: 0,
            attr_len: 0,
        });
        for &(trace, id, kind, parent) in spans {
            let name = b.push_text("op");
            let mut s = Span {
                name,
                kind,
                start_ns: 1_000_000,
                end_ns: 6_000_000,
                ..Span::default()
            };
            s.trace_id = [trace; 16];
            s.span_id = [id; 8];
            if parent != 0 {
                s.parent_span_id = [parent; 8];
            }
            b.spans.push(s);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_read_from_wire_and_arena() {
        let mut b = SpanBatch::with_wire(Bytes::from_static(b"hello world"));
        let w = Text::wire(6, 5);
        let o = b.push_text("owned");
        assert_eq!(b.str(w), "world");
        assert_eq!(b.str(o), "owned");
        assert_eq!(b.str(Text::EMPTY), "");
        // A range past the end reads as empty rather than panicking.
        assert_eq!(b.str(Text::wire(8, 10)), "");
    }

    #[test]
    fn attr_keys_find_by_bytes() {
        let keys = AttrKeys::new(["peer.service", "db.name"]);
        assert_eq!(keys.find(b"db.name"), Some(1));
        assert_eq!(keys.find(b"db.nam"), None);
        assert_eq!(keys.find(b"http.method"), None);
        // Same length as a wanted key, other bytes.
        assert_eq!(keys.find(b"peer.servicf"), None);
        // Same length and last byte (one slot), other bytes.
        assert_eq!(keys.find(b"xx.name"), None);
        assert_eq!(AttrKeys::default().find(b""), None);
        // More keys than slots: many slots are shared, each key is still found, and only the wanted ones.
        let names: Vec<String> = (0..600).map(|i| format!("k{i}.{}", "x".repeat(i % 40))).collect();
        let keys = AttrKeys::new(names.iter().step_by(2).chain([&String::new()]));
        for (i, name) in names.iter().enumerate() {
            let want = (i % 2 == 0).then_some((i / 2) as u16);
            assert_eq!(keys.find(name.as_bytes()), want, "{name}");
        }
        assert_eq!(keys.find(b""), Some(300));
    }

    #[test]
    fn negative_duration_is_zero() {
        let s = Span {
            start_ns: 10,
            end_ns: 5,
            ..Span::default()
        };
        assert_eq!(s.duration_ns(), 0);
    }
}
