//! A zero-copy walk of an OTLP `ExportTraceServiceRequest` in protobuf wire format.
//!
//! Decoding into the owned opentelemetry-proto types costs a `String` per key and value, which caps a core at
//! about 0.3 M spans/s. This walk reads only the fields RED and the service graph need and borrows strings
//! as byte ranges of the request buffer, so it allocates nothing per span (the batch's three vectors grow
//! per request). Fields it does not need are skipped by length, without being parsed.
//!
//! Field numbers (opentelemetry/proto/trace/v1/trace.proto, common/v1/common.proto):
//! request{1: resource_spans} resource_spans{1: resource, 2: scope_spans}
//! resource{1: attributes} scope_spans{2: spans} key_value{1: key, 2: value}
//! any_value{1: string, 2: bool, 3: int, 4: double}
//! span{1: trace_id, 2: span_id, 4: parent_span_id, 5: name, 6: kind, 7: start, 8: end, 9: attributes,
//! 15: status} status{3: code}

use bytes::Bytes;
use tidewatch_analyzer::records::{Attr, AttrKeys, Resource, Span, SpanBatch, SpanKind, StatusCode, Text};

use super::{Rejections, check_span_ids};
use crate::{Error, Result};

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const I32: u8 = 5;
/// prost's recursion limit.
const MAX_GROUP_DEPTH: u32 = 100;

/// A byte range `start..end` of the buffer.
type Range = (usize, usize);

/// A cursor over `buf[pos..end]`, reporting positions in the whole buffer so texts can point into it.
struct Reader<'a> {
    /// The buffer up to `end`: one bounds check per read is both the message's end and the slice's.
    buf: &'a [u8],
    pos: usize,
    /// The field number of the last key read (a group's end must repeat it).
    field: u32,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], start: usize, end: usize) -> Reader<'a> {
        Reader {
            buf: &buf[..end],
            pos: start,
            field: 0,
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn err(&self, what: &str) -> Error {
        Error::Decode(format!("invalid protobuf: {what} at byte {}", self.pos))
    }

    #[inline]
    fn varint(&mut self) -> Result<u64> {
        // Nearly every tag and length on this path fits in one byte, a span's own length in two.
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
            if let Some(&c) = self.buf.get(self.pos + 1)
                && c < 0x80
            {
                self.pos += 2;
                return Ok(u64::from(b & 0x7f) | u64::from(c) << 7);
            }
        }
        self.varint_slow()
    }

    #[cold]
    fn varint_slow(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    /// The next field number and wire type.
    #[inline(always)]
    fn key(&mut self) -> Result<(u32, u8)> {
        // Every key OTLP defines (fields 1 to 15) is one byte: decode it here, where the caller's match sees it.
        if let Some(&b) = self.buf.get(self.pos)
            && (8..0x80).contains(&b)
        {
            self.pos += 1;
            self.field = u32::from(b >> 3);
            return Ok((self.field, b & 7));
        }
        self.key_slow()
    }

    #[cold]
    fn key_slow(&mut self) -> Result<(u32, u8)> {
        let k = self.varint()?;
        let field = u32::try_from(k >> 3).map_err(|_| self.err("field number out of range"))?;
        if field == 0 {
            return Err(self.err("field number 0"));
        }
        self.field = field;
        Ok((field, (k & 7) as u8))
    }

    /// A length-delimited field: its start and end in the buffer.
    #[inline]
    fn len_delimited(&mut self) -> Result<(usize, usize)> {
        let len = self.varint()?;
        let start = self.pos;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(self.err("length-delimited field runs past the end of its message"));
        };
        self.pos = end;
        Ok((start, end))
    }

    #[inline]
    fn fixed64(&mut self) -> Result<u64> {
        let Some(b) = self.buf.get(self.pos..self.pos + 8) else {
            return Err(self.err("truncated fixed64"));
        };
        self.pos += 8;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// Skips a field of wire type `wt` whose key was just read. Groups (long deprecated, never in OTLP) are
    /// skipped whole, as prost and every protobuf parser do with unknown fields, so the zero-copy walk takes
    /// exactly what the owned decode takes.
    #[inline]
    fn skip(&mut self, wt: u8) -> Result<()> {
        match wt {
            START_GROUP => self.skip_group(self.field, 1),
            VARINT => self.varint().map(drop),
            I64 => self.fixed64().map(drop),
            LEN => self.len_delimited().map(drop),
            I32 => {
                if self.pos + 4 > self.buf.len() {
                    return Err(self.err("truncated fixed32"));
                }
                self.pos += 4;
                Ok(())
            }
            _ => Err(self.err(&format!("unsupported wire type {wt}"))),
        }
    }

    /// Skips to the end of group `field`, nested groups included (at most [`MAX_GROUP_DEPTH`] deep, so
    /// hostile nesting cannot exhaust the stack).
    #[cold]
    fn skip_group(&mut self, field: u32, depth: u32) -> Result<()> {
        if depth > MAX_GROUP_DEPTH {
            return Err(self.err("groups nested too deep"));
        }
        loop {
            if self.done() {
                return Err(self.err("unterminated group"));
            }
            match self.key()? {
                (f, END_GROUP) if f == field => return Ok(()),
                (_, END_GROUP) => return Err(self.err("mismatched end of group")),
                (f, START_GROUP) => self.skip_group(f, depth + 1)?,
                (_, wt) => self.skip(wt)?,
            }
        }
    }

    /// A length-delimited field expected where `wt` was read.
    #[inline]
    fn expect_len(&mut self, wt: u8, what: &str) -> Result<(usize, usize)> {
        if wt != LEN {
            return Err(self.err(&format!("{what} has wire type {wt}, expected 2")));
        }
        self.len_delimited()
    }
}

/// Walks a traces request into a [`SpanBatch`] that borrows `wire`, keeping the span attributes in `keys`.
/// Spans with invalid ids or strings are left out and described in the returned [`Rejections`]; malformed
/// protobuf fails the whole request.
pub fn decode_traces(wire: Bytes, keys: &AttrKeys) -> Result<(SpanBatch, Rejections)> {
    let mut batch = SpanBatch::with_wire(wire.clone());
    // About one span per 300 wire bytes in practice: reserving up front saves the vector's regrowth copies.
    batch.spans.reserve(wire.len() / 300);
    let mut rejected = Rejections::default();
    let buf = &wire[..];
    let mut top = Reader::new(buf, 0, buf.len());
    let mut rs_index = 0usize;
    while !top.done() {
        let (field, wt) = top.key()?;
        if field == 1 {
            let (s, e) = top.expect_len(wt, "resource_spans")?;
            resource_spans(buf, s, e, rs_index, keys, &mut batch, &mut rejected)?;
            rs_index += 1;
        } else {
            top.skip(wt)?;
        }
    }
    Ok((batch, rejected))
}

fn resource_spans(
    buf: &[u8],
    start: usize,
    end: usize,
    rs_index: usize,
    keys: &AttrKeys,
    batch: &mut SpanBatch,
    rejected: &mut Rejections,
) -> Result<()> {
    // The resource usually comes first, but the wire format does not promise it: find it in a first pass
    // (skipping over everything else by length), then walk the spans in a second.
    let mut r = Reader::new(buf, start, end);
    let mut resource = Resource::default();
    while !r.done() {
        let (field, wt) = r.key()?;
        if field == 1 {
            let (s, e) = r.expect_len(wt, "resource")?;
            resource = parse_resource(buf, s, e, keys, batch)?;
        } else {
            r.skip(wt)?;
        }
    }
    let res_idx = batch.resources.len() as u32;
    batch.resources.push(resource);
    let mut r = Reader::new(buf, start, end);
    let mut span_index = 0usize;
    while !r.done() {
        let (field, wt) = r.key()?;
        if field != 2 {
            r.skip(wt)?;
            continue;
        }
        let (s, e) = r.expect_len(wt, "scope_spans")?;
        let mut sr = Reader::new(buf, s, e);
        while !sr.done() {
            let (field, wt) = sr.key()?;
            if field != 2 {
                sr.skip(wt)?;
                continue;
            }
            let (ss, se) = sr.expect_len(wt, "span")?;
            let attr_mark = batch.attrs.len();
            match parse_span(buf, ss, se, res_idx, keys, batch)? {
                Ok(span) => batch.spans.push(span),
                Err(why) => {
                    batch.attrs.truncate(attr_mark);
                    rejected.add(format!("resource_spans[{rs_index}] span {span_index}: {why}"));
                }
            }
            span_index += 1;
        }
    }
    Ok(())
}

/// `Err` of the outer result: the request is malformed. `Err` of the inner one: this span is invalid.
fn parse_span(
    buf: &[u8],
    start: usize,
    end: usize,
    resource: u32,
    keys: &AttrKeys,
    batch: &mut SpanBatch,
) -> Result<std::result::Result<Span, String>> {
    let mut span = Span {
        resource,
        attr_start: batch.attrs.len() as u32,
        ..Span::default()
    };
    let (mut trace_id, mut span_id, mut parent) = (&buf[0..0], &buf[0..0], &buf[0..0]);
    let mut bad_utf8 = false;
    let mut r = Reader::new(buf, start, end);
    while !r.done() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, LEN) => trace_id = slice(buf, r.len_delimited()?),
            (2, LEN) => span_id = slice(buf, r.len_delimited()?),
            (4, LEN) => parent = slice(buf, r.len_delimited()?),
            (5, LEN) => {
                let (s, e) = r.len_delimited()?;
                bad_utf8 |= !is_utf8(&buf[s..e]);
                span.name = Text::wire(s, e - s);
            }
            (6, VARINT) => span.kind = SpanKind::from_i32(r.varint()? as i32),
            (7, I64) => span.start_ns = r.fixed64()?,
            (8, I64) => span.end_ns = r.fixed64()?,
            (9, LEN) => {
                let (s, e) = r.len_delimited()?;
                if !keys.is_empty() {
                    bad_utf8 |= !key_value(buf, s, e, keys, batch)?;
                }
            }
            (15, LEN) => {
                let (s, e) = r.len_delimited()?;
                span.status = parse_status(buf, s, e)?;
            }
            _ => r.skip(wt)?,
        }
    }
    if let Err(why) = check_span_ids(trace_id, span_id, parent) {
        return Ok(Err(why));
    }
    if bad_utf8 {
        return Ok(Err("name or attribute value is not valid UTF-8".into()));
    }
    span.trace_id.copy_from_slice(trace_id);
    span.span_id.copy_from_slice(span_id);
    if parent.len() == 8 {
        span.parent_span_id.copy_from_slice(parent);
    }
    span.attr_len = u16::try_from(batch.attrs.len() - span.attr_start as usize).unwrap_or(u16::MAX);
    Ok(Ok(span))
}

fn slice(buf: &[u8], (s, e): (usize, usize)) -> &[u8] {
    &buf[s..e]
}

fn parse_status(buf: &[u8], start: usize, end: usize) -> Result<StatusCode> {
    let mut r = Reader::new(buf, start, end);
    let mut code = StatusCode::Unset;
    while !r.done() {
        let (field, wt) = r.key()?;
        if (field, wt) == (3, VARINT) {
            code = StatusCode::from_i32(r.varint()? as i32);
        } else {
            r.skip(wt)?;
        }
    }
    Ok(code)
}

fn parse_resource(
    buf: &[u8],
    start: usize,
    end: usize,
    keys: &AttrKeys,
    batch: &mut SpanBatch,
) -> Result<Resource> {
    let mut res = Resource {
        attr_start: batch.attrs.len() as u32,
        ..Resource::default()
    };
    let mut r = Reader::new(buf, start, end);
    while !r.done() {
        let (field, wt) = r.key()?;
        if field != 1 {
            r.skip(wt)?;
            continue;
        }
        let (s, e) = r.expect_len(wt, "resource attribute")?;
        let (key, value) = kv_ranges(buf, s, e)?;
        let Some(v) = value else { continue };
        let key = &buf[key.0..key.1];
        let slot = match key {
            b"service.name" => Some(&mut res.service),
            b"k8s.pod.name" => Some(&mut res.pod),
            b"k8s.namespace.name" => Some(&mut res.namespace),
            _ => None,
        };
        let wanted = keys.find(key);
        if slot.is_none() && wanted.is_none() {
            continue;
        }
        // A resource attribute that is not valid text is ignored rather than failing every span under it.
        let Some(text) = any_value_text(buf, v.0, v.1, batch)? else {
            continue;
        };
        if let Some(slot) = slot {
            *slot = text;
        }
        if let Some(k) = wanted {
            batch.attrs.push(Attr { key: k, value: text });
        }
    }
    res.attr_len = u16::try_from(batch.attrs.len() - res.attr_start as usize).unwrap_or(u16::MAX);
    Ok(res)
}

/// Splits a KeyValue into its key range and value range (either may come first on the wire).
fn kv_ranges(buf: &[u8], start: usize, end: usize) -> Result<(Range, Option<Range>)> {
    let mut r = Reader::new(buf, start, end);
    let (mut key, mut value) = ((start, start), None);
    while !r.done() {
        let (field, wt) = r.key()?;
        match field {
            1 => key = r.expect_len(wt, "attribute key")?,
            2 => value = Some(r.expect_len(wt, "attribute value")?),
            _ => r.skip(wt)?,
        }
    }
    Ok((key, value))
}

/// Keeps one span attribute if its key is wanted. Returns false when the kept value is not valid UTF-8.
#[inline(always)]
fn key_value(buf: &[u8], start: usize, end: usize, keys: &AttrKeys, batch: &mut SpanBatch) -> Result<bool> {
    // Encoders write the key (field 1) first: when its bytes are not a wanted key, the attribute is
    // skipped without reading its value at all. Anything else takes the general path below.
    if let Some(key) = short_field(buf, start, end, KEY) {
        let Some(k) = keys.find(&buf[key.0..key.1]) else {
            return Ok(true);
        };
        // A wanted key followed by the value (field 2) and nothing else, as encoders write it: the
        // key is not read a second time.
        if let Some(v) = field_to_end(buf, key.1, end, VALUE) {
            return keep_value(buf, k, v, batch);
        }
    }
    let (key, value) = kv_ranges(buf, start, end)?;
    let (Some(k), Some(v)) = (keys.find(&buf[key.0..key.1]), value) else {
        return Ok(true);
    };
    keep_value(buf, k, v, batch)
}

/// The key byte of a KeyValue's key (field 1, length-delimited).
const KEY: u8 = 0x0A;
/// The key byte of a KeyValue's value (field 2, length-delimited).
const VALUE: u8 = 0x12;
/// The key byte of an AnyValue's string (field 1, length-delimited).
const STRING: u8 = 0x0A;

/// The range of a length-delimited field with key byte `tag` and a one-byte length (below 128) that starts
/// at `at` and ends by `end`, if that is what the bytes there are. Anything else, malformed included, is
/// `None`, for the caller's general path. (An empty message has no byte of its own at `at`: the bytes from
/// `end` on belong to what follows, so both bytes read must lie before `end`.)
#[inline(always)]
fn short_field(buf: &[u8], at: usize, end: usize, tag: u8) -> Option<Range> {
    if at + 1 >= end || buf[at] != tag || buf[at + 1] >= 0x80 {
        return None;
    }
    let start = at + 2;
    let stop = start + usize::from(buf[at + 1]);
    (stop <= end).then_some((start, stop))
}

/// [`short_field`] when the field also ends exactly at `end`.
#[inline(always)]
fn field_to_end(buf: &[u8], at: usize, end: usize, tag: u8) -> Option<Range> {
    short_field(buf, at, end, tag).filter(|&(_, stop)| stop == end)
}

/// Keeps the value `v` of wanted attribute `k`. Returns false when it is not valid UTF-8.
#[inline]
fn keep_value(buf: &[u8], k: u16, v: Range, batch: &mut SpanBatch) -> Result<bool> {
    // Nearly every value is a string and nothing else: read here, without the field loop.
    let text = match field_to_end(buf, v.0, v.1, STRING) {
        Some(string) => utf8_text(buf, string),
        None => any_value_text(buf, v.0, v.1, batch)?,
    };
    match text {
        Some(value) => {
            batch.attrs.push(Attr { key: k, value });
            Ok(true)
        }
        None => Ok(!matches!(utf8_string(buf, v.0, v.1)?, Some(false))),
    }
}

/// Whether `bytes` are valid UTF-8. Names and values are nearly always ASCII, which is checked a word at a
/// time inline; anything else takes the full check.
#[inline]
fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// The bytes of a string field as a text, if they are valid UTF-8.
#[inline(always)]
fn utf8_text(buf: &[u8], (s, e): Range) -> Option<Text> {
    is_utf8(&buf[s..e]).then(|| Text::wire(s, e - s))
}

/// Whether the AnyValue is a string (`Some(valid UTF-8?)`) or not (`None`).
fn utf8_string(buf: &[u8], start: usize, end: usize) -> Result<Option<bool>> {
    let mut r = Reader::new(buf, start, end);
    let mut out = None;
    while !r.done() {
        let (field, wt) = r.key()?;
        if (field, wt) == (1, LEN) {
            let (s, e) = r.len_delimited()?;
            out = Some(is_utf8(&buf[s..e]));
        } else {
            r.skip(wt)?;
        }
    }
    Ok(out)
}

/// An AnyValue as text: strings borrowed from the wire, booleans and numbers written into the batch's arena.
/// Arrays, maps, bytes and invalid UTF-8 give `None`.
fn any_value_text(buf: &[u8], start: usize, end: usize, batch: &mut SpanBatch) -> Result<Option<Text>> {
    let mut r = Reader::new(buf, start, end);
    let mut out = None;
    while !r.done() {
        let (field, wt) = r.key()?;
        out = match (field, wt) {
            (1, LEN) => utf8_text(buf, r.len_delimited()?),
            (2, VARINT) => Some(batch.push_text(if r.varint()? != 0 { "true" } else { "false" })),
            (3, VARINT) => Some(batch.push_display(r.varint()? as i64)),
            (4, I64) => Some(batch.push_display(f64::from_bits(r.fixed64()?))),
            _ => {
                r.skip(wt)?;
                None
            }
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::resource::v1::Resource as PbResource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as PbSpan, Status};
    use prost::Message;

    fn kv(k: &str, v: Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn request(spans: Vec<PbSpan>) -> Bytes {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(PbResource {
                    attributes: vec![
                        kv("host.name", Value::StringValue("h".into())),
                        kv("service.name", Value::StringValue("checkout".into())),
                        kv("k8s.pod.name", Value::StringValue("checkout-7d9f".into())),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
        }
        .encode_to_vec()
        .into()
    }

    fn span(trace: u8, id: u8) -> PbSpan {
        PbSpan {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: vec![9; 8],
            name: "GET /cart".into(),
            kind: 3,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 5_000,
            attributes: vec![
                kv("http.method", Value::StringValue("GET".into())),
                kv("peer.service", Value::StringValue("payment".into())),
                kv("server.port", Value::IntValue(8080)),
                kv("retry", Value::BoolValue(true)),
            ],
            status: Some(Status {
                code: 2,
                message: "boom".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn walks_spans_resources_and_wanted_attributes() {
        let keys = AttrKeys::new(["peer.service", "server.port", "retry"]);
        let (b, rej) = decode_traces(request(vec![span(1, 2), span(3, 4)]), &keys).unwrap();
        assert_eq!(rej.count, 0);
        assert_eq!(b.spans.len(), 2);
        let s = &b.spans[1];
        assert_eq!(
            (s.trace_id, s.span_id, s.parent_span_id),
            ([3; 16], [4; 8], [9; 8])
        );
        assert_eq!(b.str(s.name), "GET /cart");
        assert_eq!(
            (s.kind, s.status, s.duration_ns()),
            (SpanKind::Client, StatusCode::Error, 4_000)
        );
        let res = &b.resources[s.resource as usize];
        assert_eq!(
            (b.str(res.service), b.str(res.pod)),
            ("checkout", "checkout-7d9f")
        );
        let attrs: Vec<_> = b.span_attrs(s).iter().map(|a| (a.key, b.str(a.value))).collect();
        assert_eq!(attrs, vec![(0, "payment"), (1, "8080"), (2, "true")]);
    }

    /// `bytes` as length-delimited field `field`.
    fn wrap(field: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(field << 3) | LEN];
        prost::encoding::encode_varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }

    /// A request of one span with `extra` appended to the span's own bytes and to the request's.
    fn with_unknown(extra: &[u8]) -> Bytes {
        let mut span_bytes = span(1, 2).encode_to_vec();
        span_bytes.extend_from_slice(extra);
        let mut req = wrap(1, &wrap(2, &wrap(2, &span_bytes)));
        req.extend_from_slice(extra);
        req.into()
    }

    /// Found by fuzzing (fuzz/, otlp_proto): an unknown field of the deprecated group type made the walk
    /// refuse a request that prost, and so the metrics and logs path, accepts.
    #[test]
    fn unknown_groups_are_skipped_like_prost_does() {
        let keys = AttrKeys::new(["peer.service"]);
        // Group 99 (unknown in every message) { 1: varint 1, group 2 { 3: fixed32 } }.
        let group = [0x9b, 0x06, 0x08, 0x01, 0x13, 0x1d, 1, 2, 3, 4, 0x14, 0x9c, 0x06];
        let body = with_unknown(&group);
        let owned = ExportTraceServiceRequest::decode(&body[..]).expect("prost skips groups");
        assert_eq!(owned.resource_spans[0].scope_spans[0].spans.len(), 1);
        let (b, rej) = decode_traces(body, &keys).unwrap();
        assert_eq!((b.spans.len(), rej.count), (1, 0));
        assert_eq!(b.str(b.spans[0].name), "GET /cart");

        for bad in [
            &[0x9b, 0x06, 0x08, 0x01][..],         // never closed
            &[0x9b, 0x06, 0x08, 0x01, 0x94, 0x06], // closed as group 98
            &[0x9c, 0x06],                         // closed, never opened
        ] {
            let body = with_unknown(bad);
            assert!(ExportTraceServiceRequest::decode(&body[..]).is_err());
            assert!(decode_traces(body, &keys).is_err(), "{bad:?}");
        }
        // Nesting past the limit is an error, not a stack overflow.
        let mut deep = [0x9b, 0x06].repeat(10_000);
        deep.extend([0x9c, 0x06].repeat(10_000));
        let err = decode_traces(with_unknown(&deep), &keys).err().unwrap();
        assert!(err.to_string().contains("nested too deep"), "{err}");
    }

    /// Found by fuzzing (fuzz/, otlp_proto): an empty span attribute (`KeyValue {}`, length 0) followed
    /// by a field whose tag is 0x0A made the key fast path read the next field's bytes as the attribute's
    /// key and fail the whole request as truncated; prost reads it as the empty attribute it is.
    #[test]
    fn an_empty_attribute_is_not_read_past() {
        let keys = AttrKeys::new(["peer.service"]);
        // The span, then an empty attribute (`4a 00`) and the trace id written again (`0a 10 ...`).
        let mut span_bytes = span(1, 2).encode_to_vec();
        span_bytes.extend_from_slice(&[0x4a, 0x00, 0x0a, 0x10]);
        span_bytes.extend_from_slice(&[1; 16]);
        let body: Bytes = wrap(1, &wrap(2, &wrap(2, &span_bytes))).into();
        let owned = ExportTraceServiceRequest::decode(&body[..]).expect("prost reads it");
        let (owned_batch, owned_rej) = super::super::convert::traces(&owned, &keys);
        let (b, rej) = decode_traces(body, &keys).unwrap();
        assert_eq!((b.spans.len(), rej.count), (1, 0));
        assert_eq!((owned_batch.spans.len(), owned_rej.count), (1, 0));
    }

    #[test]
    fn invalid_ids_reject_only_that_span() {
        let mut zero = span(0, 2);
        zero.trace_id = vec![0; 16];
        let mut short = span(1, 2);
        short.span_id = vec![1; 4];
        let (b, rej) = decode_traces(
            request(vec![span(1, 1), zero, short, span(2, 2)]),
            &AttrKeys::default(),
        )
        .unwrap();
        assert_eq!(b.spans.len(), 2);
        assert_eq!(rej.count, 2);
        assert!(
            rej.message().contains("span 1: trace_id is all zero"),
            "{}",
            rej.message()
        );
    }

    #[test]
    fn non_ascii_text_is_kept_and_invalid_utf8_rejects_its_span() {
        let keys = AttrKeys::new(["peer.service"]);
        let mut named = span(1, 1);
        named.name = "GET /caf\u{e9}".into();
        let mut valued = span(2, 2);
        valued.attributes[1] = kv("peer.service", Value::StringValue("pa\u{ef}ment".into()));
        let body = request(vec![named, valued, span(3, 3)]);
        let (b, rej) = decode_traces(body.clone(), &keys).unwrap();
        assert_eq!((b.spans.len(), rej.count), (3, 0));
        assert_eq!(b.str(b.spans[0].name), "GET /caf\u{e9}");
        assert_eq!(b.str(b.span_attrs(&b.spans[1])[0].value), "pa\u{ef}ment");
        // The same bytes with each two-byte character turned into bytes that are not UTF-8.
        let mut broken = body.to_vec();
        for ch in ["\u{e9}", "\u{ef}"] {
            let at = broken
                .windows(2)
                .position(|w| w == ch.as_bytes())
                .expect("present");
            broken[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
        }
        let (b, rej) = decode_traces(broken.into(), &keys).unwrap();
        assert_eq!((b.spans.len(), rej.count), (1, 2));
        assert!(rej.message().contains("not valid UTF-8"), "{}", rej.message());
    }

    #[test]
    fn malformed_input_fails_cleanly() {
        let good = request(vec![span(1, 1)]);
        for cut in [1, 5, good.len() / 2, good.len() - 1] {
            let err = decode_traces(good.slice(..cut), &AttrKeys::default()).unwrap_err();
            assert!(err.to_string().starts_with("invalid protobuf"), "{err}");
        }
        assert!(decode_traces(Bytes::from_static(b"\xff\xff\xff"), &AttrKeys::default()).is_err());
    }

    #[test]
    fn matches_prost_on_random_requests() {
        // Random spans through prost encode, then our walk: every field we read must agree.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for _ in 0..50 {
            let spans: Vec<_> = (0..rng.random_range(1..20))
                .map(|_| {
                    let mut s = span(rng.random_range(1..=255), rng.random_range(1..=255));
                    s.name = (0..rng.random_range(0..30))
                        .map(|_| rng.random_range('a'..='z'))
                        .collect();
                    s.kind = rng.random_range(0..6);
                    s.start_time_unix_nano = rng.random();
                    s.end_time_unix_nano = rng.random();
                    s
                })
                .collect();
            let (b, _) = decode_traces(request(spans.clone()), &AttrKeys::default()).unwrap();
            for (ours, theirs) in b.spans.iter().zip(&spans) {
                assert_eq!(b.str(ours.name), theirs.name);
                assert_eq!(ours.kind as i32, theirs.kind);
                assert_eq!(
                    (ours.start_ns, ours.end_ns),
                    (theirs.start_time_unix_nano, theirs.end_time_unix_nano)
                );
            }
        }
    }
}
