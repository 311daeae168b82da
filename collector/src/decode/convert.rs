//! Owned opentelemetry-proto messages to the analyzer's records, validating item by item.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, NumberDataPoint, metric::Data, number_data_point::Value as Num,
};
use opentelemetry_proto::tonic::resource::v1::Resource as PbResource;
use tidewatch_analyzer::records::{
    Attr, AttrKeys, LogBatch, LogRecord, MetricBatch, MetricPoint, PointValue, Resource, Span, SpanBatch,
    SpanKind, StatusCode, Text,
};

use super::{Rejections, check_span_ids};

/// The string value of resource attribute `key`, or "".
fn resource_str<'a>(res: Option<&'a PbResource>, key: &str) -> &'a str {
    res.and_then(|r| r.attributes.iter().find(|kv| kv.key == key))
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or("")
}

/// An attribute value as text, as the wire walk does it: strings, booleans and numbers; not arrays or maps.
fn value_text(v: &AnyValue, batch: &mut SpanBatch) -> Option<Text> {
    Some(match v.value.as_ref()? {
        Value::StringValue(s) => batch.push_text(s),
        Value::BoolValue(b) => batch.push_text(if *b { "true" } else { "false" }),
        Value::IntValue(i) => batch.push_display(i),
        Value::DoubleValue(d) => batch.push_display(d),
        _ => return None,
    })
}

/// Appends the wanted attributes of `attrs` to the batch.
fn keep_attrs(attrs: &[KeyValue], keys: &AttrKeys, batch: &mut SpanBatch) {
    for KeyValue { key, value, .. } in attrs {
        if let (Some(k), Some(v)) = (keys.get(key), value.as_ref())
            && let Some(value) = value_text(v, batch)
        {
            batch.attrs.push(Attr { key: k, value });
        }
    }
}

/// Traces (from JSON) into a batch whose texts live in its own arena.
pub fn traces(req: &ExportTraceServiceRequest, keys: &AttrKeys) -> (SpanBatch, Rejections) {
    let mut batch = SpanBatch::default();
    let mut rejected = Rejections::default();
    for (rs_index, rs) in req.resource_spans.iter().enumerate() {
        let res = rs.resource.as_ref();
        let mut resource = Resource {
            service: batch.push_text(resource_str(res, "service.name")),
            pod: batch.push_text(resource_str(res, "k8s.pod.name")),
            namespace: batch.push_text(resource_str(res, "k8s.namespace.name")),
            attr_start: batch.attrs.len() as u32,
            attr_len: 0,
        };
        keep_attrs(res.map_or(&[][..], |r| &r.attributes), keys, &mut batch);
        resource.attr_len =
            u16::try_from(batch.attrs.len() - resource.attr_start as usize).unwrap_or(u16::MAX);
        let res_idx = batch.resources.len() as u32;
        batch.resources.push(resource);
        for (span_index, s) in rs.scope_spans.iter().flat_map(|ss| &ss.spans).enumerate() {
            if let Err(why) = check_span_ids(&s.trace_id, &s.span_id, &s.parent_span_id) {
                rejected.add(format!("resource_spans[{rs_index}] span {span_index}: {why}"));
                continue;
            }
            let attr_start = batch.attrs.len();
            keep_attrs(&s.attributes, keys, &mut batch);
            let mut span = Span {
                name: batch.push_text(&s.name),
                kind: SpanKind::from_i32(s.kind),
                status: StatusCode::from_i32(s.status.as_ref().map_or(0, |st| st.code)),
                start_ns: s.start_time_unix_nano,
                end_ns: s.end_time_unix_nano,
                resource: res_idx,
                attr_start: attr_start as u32,
                attr_len: u16::try_from(batch.attrs.len() - attr_start).unwrap_or(u16::MAX),
                ..Span::default()
            };
            span.trace_id.copy_from_slice(&s.trace_id);
            span.span_id.copy_from_slice(&s.span_id);
            if s.parent_span_id.len() == 8 {
                span.parent_span_id.copy_from_slice(&s.parent_span_id);
            }
            batch.spans.push(span);
        }
    }
    (batch, rejected)
}

fn number(p: &NumberDataPoint) -> Option<f64> {
    match p.value? {
        Num::AsDouble(d) => Some(d),
        Num::AsInt(i) => Some(i as f64),
    }
}

fn attributes(attrs: &[KeyValue]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = attrs
        .iter()
        .filter_map(|kv| {
            let v = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::BoolValue(b) => b.to_string(),
                Value::IntValue(i) => i.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), v))
        })
        .collect();
    out.sort();
    out
}

/// Metric data points; a metric without a name or data, or a point without a value, is rejected.
pub fn metrics(req: &ExportMetricsServiceRequest) -> (MetricBatch, Rejections) {
    let mut batch = MetricBatch::default();
    let mut rejected = Rejections::default();
    for (rm_index, rm) in req.resource_metrics.iter().enumerate() {
        let service = resource_str(rm.resource.as_ref(), "service.name");
        let pod = resource_str(rm.resource.as_ref(), "k8s.pod.name");
        for m in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
            let point = |attrs: &[KeyValue], start_ns, time_ns, value| MetricPoint {
                service: service.to_owned(),
                pod: pod.to_owned(),
                name: m.name.clone(),
                attributes: attributes(attrs),
                start_ns,
                time_ns,
                value,
            };
            let Some(data) = m.data.as_ref() else {
                rejected.add(format!(
                    "resource_metrics[{rm_index}] metric `{}`: no data",
                    m.name
                ));
                continue;
            };
            let count = match data {
                Data::Gauge(g) => g.data_points.len(),
                Data::Sum(s) => s.data_points.len(),
                Data::Histogram(h) => h.data_points.len(),
                Data::ExponentialHistogram(h) => h.data_points.len(),
                Data::Summary(s) => s.data_points.len(),
            };
            if m.name.is_empty() {
                rejected.add_n(
                    count as u64,
                    format!("resource_metrics[{rm_index}]: metric name is empty"),
                );
                continue;
            }
            let cumulative = |t: i32| t == AggregationTemporality::Cumulative as i32;
            match data {
                Data::Gauge(g) => {
                    for p in &g.data_points {
                        match number(p) {
                            Some(v) => batch.points.push(point(
                                &p.attributes,
                                p.start_time_unix_nano,
                                p.time_unix_nano,
                                PointValue::Gauge(v),
                            )),
                            None => rejected.add(format!("metric `{}`: data point without a value", m.name)),
                        }
                    }
                }
                Data::Sum(s) => {
                    for p in &s.data_points {
                        match number(p) {
                            Some(value) => batch.points.push(point(
                                &p.attributes,
                                p.start_time_unix_nano,
                                p.time_unix_nano,
                                PointValue::Sum {
                                    value,
                                    monotonic: s.is_monotonic,
                                    cumulative: cumulative(s.aggregation_temporality),
                                },
                            )),
                            None => rejected.add(format!("metric `{}`: data point without a value", m.name)),
                        }
                    }
                }
                Data::Histogram(h) => {
                    for p in &h.data_points {
                        batch.points.push(point(
                            &p.attributes,
                            p.start_time_unix_nano,
                            p.time_unix_nano,
                            PointValue::Histogram {
                                count: p.count,
                                sum: p.sum.unwrap_or(0.0),
                                bounds: p.explicit_bounds.clone(),
                                counts: p.bucket_counts.clone(),
                                cumulative: cumulative(h.aggregation_temporality),
                            },
                        ));
                    }
                }
                Data::ExponentialHistogram(h) => {
                    for p in &h.data_points {
                        let value = PointValue::Summary {
                            count: p.count,
                            sum: p.sum.unwrap_or(0.0),
                        };
                        batch.points.push(point(
                            &p.attributes,
                            p.start_time_unix_nano,
                            p.time_unix_nano,
                            value,
                        ));
                    }
                }
                Data::Summary(s) => {
                    for p in &s.data_points {
                        let value = PointValue::Summary {
                            count: p.count,
                            sum: p.sum,
                        };
                        batch.points.push(point(
                            &p.attributes,
                            p.start_time_unix_nano,
                            p.time_unix_nano,
                            value,
                        ));
                    }
                }
            }
        }
    }
    (batch, rejected)
}

/// Log records; ids, when present, must have the right length.
pub fn logs(req: &ExportLogsServiceRequest) -> (LogBatch, Rejections) {
    let mut batch = LogBatch::default();
    let mut rejected = Rejections::default();
    for (rl_index, rl) in req.resource_logs.iter().enumerate() {
        let service = resource_str(rl.resource.as_ref(), "service.name");
        let pod = resource_str(rl.resource.as_ref(), "k8s.pod.name");
        for (i, r) in rl.scope_logs.iter().flat_map(|sl| &sl.log_records).enumerate() {
            let bad_trace = !r.trace_id.is_empty() && r.trace_id.len() != 16;
            let bad_span = !r.span_id.is_empty() && r.span_id.len() != 8;
            if bad_trace || bad_span {
                rejected.add(format!(
                    "resource_logs[{rl_index}] log record {i}: trace_id must be empty or 16 bytes and span_id \
                     empty or 8 bytes, got {} and {}",
                    r.trace_id.len(),
                    r.span_id.len()
                ));
                continue;
            }
            batch.records.push(LogRecord {
                service: service.to_owned(),
                pod: pod.to_owned(),
                severity: u8::try_from(r.severity_number).unwrap_or(0),
                time_ns: if r.time_unix_nano != 0 {
                    r.time_unix_nano
                } else {
                    r.observed_time_unix_nano
                },
            });
        }
    }
    (batch, rejected)
}

#[cfg(test)]
mod tests {
    use super::super::{Decoded, Format, Signal, decode};
    use bytes::Bytes;
    use tidewatch_analyzer::records::AttrKeys;

    /// The upstream OTLP/JSON examples (`../shared/data/otlp/examples`) decode, with every item accepted.
    #[test]
    fn upstream_examples_decode() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/otlp/examples");
        let entries = std::fs::read_dir(dir).expect("../shared beside the project");
        let mut seen = 0;
        for e in entries {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let signal = match name.as_str() {
                "trace.json" => Signal::Traces,
                "metrics.json" => Signal::Metrics,
                "logs.json" => Signal::Logs,
                _ => continue,
            };
            let body = Bytes::from(std::fs::read(&path).unwrap());
            let keys = AttrKeys::new(["my.span.attr"]);
            let (decoded, rejected) = decode(signal, Format::Json, body, &keys).unwrap();
            assert_eq!(rejected.count, 0, "{name}: {}", rejected.message());
            assert!(!decoded.is_empty(), "{name}");
            if let Decoded::Spans(b) = &decoded {
                assert_eq!(b.str(b.resources[0].service), "my.service");
                assert_eq!(b.spans[0].trace_id[0], 0x5b);
            }
            seen += 1;
        }
        assert_eq!(seen, 3);
    }
}
