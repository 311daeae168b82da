//! `--role ingest`: what the receivers accept goes to Kafka instead of the in-process shards.
//!
//! Traces are split by trace id, one `ExportTraceServiceRequest` (encoding `otlp_proto`) per trace, keyed
//! and placed as the OpenTelemetry Collector's kafkaexporter places them with `partition_traces_by_id`
//! ([`crate::partitioner`]). Metrics and logs go one message per resource, keyed by the resource's
//! attributes, so every series of a resource stays in one partition, in order. The producer is
//! idempotent with `acks=all`; a request is answered only when every message of it is acknowledged, and
//! refused retryably (503 / `UNAVAILABLE`) when any is not within `kafka.produce_timeout`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tidewatch_analyzer::ingest::Refused;
use tidewatch_collector::decode::{Format, Signal, check_span_ids};
use tidewatch_collector::receiver::Forward;

use crate::config::KafkaConfig;
use crate::partitioner::{partition, trace_key};
use crate::{Error, Result};

/// One message to produce: key, encoded request, and the spans in it (0 for metrics and logs).
struct Outgoing {
    key: String,
    payload: Vec<u8>,
    spans: u64,
}

/// Counts of the producer, for `/metrics`.
#[derive(Debug, Default)]
pub struct ProducerStats {
    pub messages_acked: AtomicU64,
    pub messages_failed: AtomicU64,
    pub requests_refused: AtomicU64,
    /// Spans of refused requests that Kafka acknowledged, or that librdkafka handed to a broker and
    /// reported as not delivered (a timed-out message may have been written before its acknowledgement
    /// was lost): a client that sends such a request again may have them counted twice, so this is the
    /// bound on spans counted twice.
    pub spans_acked_in_refused: AtomicU64,
}

/// The ingest role's Kafka producer; a [`Forward`] for the receivers.
pub struct KafkaForward {
    producer: FutureProducer,
    topics: [(Signal, String, Arc<AtomicI32>); 3],
    timeout: Duration,
    pub stats: Arc<ProducerStats>,
}

impl KafkaForward {
    /// Connects and reads each topic's partition count; a cluster that cannot be reached, or a topic that
    /// does not exist, is a start-up error naming it.
    pub async fn connect(cfg: &KafkaConfig) -> Result<Arc<KafkaForward>> {
        let mut c = cfg.client_config().map_err(Error::Secret)?;
        let timeout_ms = cfg.produce_timeout.as_millis().to_string();
        c.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", &timeout_ms)
            .set("linger.ms", "5")
            .set("compression.type", "lz4");
        let producer: FutureProducer = c.create().map_err(|e| Error::Client(e.to_string()))?;
        let t = &cfg.topics;
        let topics = [
            (Signal::Traces, t.traces.clone(), Arc::new(AtomicI32::new(0))),
            (Signal::Metrics, t.metrics.clone(), Arc::new(AtomicI32::new(0))),
            (Signal::Logs, t.logs.clone(), Arc::new(AtomicI32::new(0))),
        ];
        for (_, topic, count) in &topics {
            let n = partitions(&producer, topic, cfg).await?;
            count.store(n, Ordering::Relaxed);
        }
        let forward = Arc::new(KafkaForward {
            producer,
            topics,
            timeout: cfg.produce_timeout,
            stats: Arc::new(ProducerStats::default()),
        });
        // Partitions can be added to a topic while we run: read the counts again now and then.
        let weak = Arc::downgrade(&forward);
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(f) = weak.upgrade() else { return };
                for (_, topic, count) in &f.topics {
                    match partitions(&f.producer, topic, &cfg).await {
                        Ok(n) => count.store(n, Ordering::Relaxed),
                        Err(e) => tracing::warn!(error = %e, "kafka: partition count not refreshed"),
                    }
                }
            }
        });
        Ok(forward)
    }

    fn topic(&self, signal: Signal) -> (&str, i32) {
        let (_, t, n) = self
            .topics
            .iter()
            .find(|(s, _, _)| *s == signal)
            .expect("a topic per signal");
        (t, n.load(Ordering::Relaxed))
    }

    /// Produces every message and waits for all acknowledgements. Refused when any message is not
    /// acknowledged, counting the spans of those that were (a client's retry counts them twice).
    async fn produce(&self, signal: Signal, messages: Vec<Outgoing>) -> std::result::Result<(), Refused> {
        let (topic, partitions) = self.topic(signal);
        let mut pending = Vec::with_capacity(messages.len());
        for m in &messages {
            let record = FutureRecord::to(topic)
                .key(m.key.as_bytes())
                .payload(&m.payload)
                .partition(partition(m.key.as_bytes(), partitions));
            match self.producer.send_result(record) {
                Ok(delivery) => pending.push(delivery),
                Err((e, _)) => {
                    // The queue is full: the rest is not sent, what was handed over is still reported.
                    tracing::warn!(error = %e, topic, "kafka: produce refused");
                    break;
                }
            }
        }
        let sent = &messages[..pending.len()];
        let mut failed = (messages.len() - sent.len()) as u64;
        let mut acked_spans = 0u64;
        // librdkafka reports every message by `message.timeout.ms`; the extra second only covers the report.
        let all = futures::future::join_all(pending);
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), all).await {
            Ok(results) => {
                for (r, m) in results.into_iter().zip(sent) {
                    match r {
                        Ok(Ok(_)) => acked_spans += m.spans,
                        Ok(Err((e, _))) => {
                            // Not acknowledged is not "not written": the broker may have written it and
                            // lost the acknowledgement (librdkafka's safe API does not say which).
                            failed += 1;
                            acked_spans += m.spans;
                            tracing::debug!(error = %e, topic, "kafka: message not acknowledged");
                        }
                        Err(_) => {
                            failed += 1;
                            acked_spans += m.spans;
                        }
                    }
                }
            }
            Err(_) => {
                // No report in time: any message handed over may yet be acknowledged.
                failed = messages.len() as u64;
                acked_spans = sent.iter().map(|m| m.spans).sum();
            }
        }
        let acked = messages.len() as u64 - failed;
        self.stats.messages_acked.fetch_add(acked, Ordering::Relaxed);
        self.stats.messages_failed.fetch_add(failed, Ordering::Relaxed);
        if failed == 0 {
            return Ok(());
        }
        self.stats
            .spans_acked_in_refused
            .fetch_add(acked_spans, Ordering::Relaxed);
        Err(Refused::Downstream)
    }

    /// Waits for every message already handed to librdkafka (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "kafka: flush at shutdown");
        }
    }
}

/// The partition count of `topic`, from the cluster's metadata.
async fn partitions(producer: &FutureProducer, topic: &str, cfg: &KafkaConfig) -> Result<i32> {
    let (p, t) = (producer.clone(), topic.to_owned());
    crate::partition_count(
        move |timeout| p.client().fetch_metadata(Some(&t), timeout),
        topic,
        &cfg.brokers,
    )
    .await
}

impl Forward for KafkaForward {
    fn forward(
        &self,
        signal: Signal,
        format: Format,
        body: Bytes,
    ) -> Pin<Box<dyn Future<Output = std::result::Result<(), Refused>> + Send + '_>> {
        Box::pin(async move {
            // The body was decoded and validated by the receiver already; this parse cannot fail then.
            let messages = split(signal, format, &body).map_err(|e| {
                tracing::error!(error = %e, "kafka: a validated request failed to parse again");
                Refused::Downstream
            })?;
            let res = self.produce(signal, messages).await;
            if res.is_err() {
                self.stats.requests_refused.fetch_add(1, Ordering::Relaxed);
            }
            res
        })
    }
}

fn parse<T: Message + Default + serde::de::DeserializeOwned>(format: Format, body: &[u8]) -> Result<T> {
    match format {
        Format::Protobuf => T::decode(body).map_err(|e| Error::Decode(e.to_string())),
        Format::Json => serde_json::from_slice(body).map_err(|e| Error::Decode(e.to_string())),
    }
}

/// A request as the messages that carry it.
fn split(signal: Signal, format: Format, body: &[u8]) -> Result<Vec<Outgoing>> {
    Ok(match signal {
        Signal::Traces => split_traces(parse(format, body)?),
        Signal::Metrics => {
            let req: ExportMetricsServiceRequest = parse(format, body)?;
            req.resource_metrics
                .into_iter()
                .map(|rm| Outgoing {
                    key: resource_key(rm.resource.as_ref()),
                    payload: ExportMetricsServiceRequest {
                        resource_metrics: vec![rm],
                    }
                    .encode_to_vec(),
                    spans: 0,
                })
                .collect()
        }
        Signal::Logs => {
            let req: ExportLogsServiceRequest = parse(format, body)?;
            req.resource_logs
                .into_iter()
                .map(|rl| Outgoing {
                    key: resource_key(rl.resource.as_ref()),
                    payload: ExportLogsServiceRequest {
                        resource_logs: vec![rl],
                    }
                    .encode_to_vec(),
                    spans: 0,
                })
                .collect()
        }
    })
}

/// One request per trace id, keeping each span's resource and scope; spans the receiver rejected (bad
/// ids) are left out, as they were left out of its answer.
fn split_traces(req: ExportTraceServiceRequest) -> Vec<Outgoing> {
    // Per trace: its request, and which input resource and scope its last entries came from.
    let mut traces: HashMap<[u8; 16], (ExportTraceServiceRequest, usize, usize)> = HashMap::new();
    let mut order: Vec<[u8; 16]> = Vec::new();
    for (ri, rs) in req.resource_spans.into_iter().enumerate() {
        let ResourceSpans {
            resource,
            scope_spans,
            schema_url,
        } = rs;
        for (si, ss) in scope_spans.into_iter().enumerate() {
            let ScopeSpans {
                scope,
                spans,
                schema_url: scope_schema,
            } = ss;
            for span in spans {
                if check_span_ids(&span.trace_id, &span.span_id, &span.parent_span_id).is_err() {
                    continue;
                }
                let mut id = [0u8; 16];
                id.copy_from_slice(&span.trace_id);
                let (out, last_r, last_s) = traces.entry(id).or_insert_with(|| {
                    order.push(id);
                    (ExportTraceServiceRequest::default(), usize::MAX, usize::MAX)
                });
                if *last_r != ri {
                    out.resource_spans.push(ResourceSpans {
                        resource: resource.clone(),
                        scope_spans: Vec::new(),
                        schema_url: schema_url.clone(),
                    });
                    (*last_r, *last_s) = (ri, usize::MAX);
                }
                let rs_out = out.resource_spans.last_mut().expect("pushed above");
                if *last_s != si {
                    rs_out.scope_spans.push(ScopeSpans {
                        scope: scope.clone(),
                        spans: Vec::new(),
                        schema_url: scope_schema.clone(),
                    });
                    *last_s = si;
                }
                rs_out
                    .scope_spans
                    .last_mut()
                    .expect("pushed above")
                    .spans
                    .push(span);
            }
        }
    }
    order
        .into_iter()
        .filter_map(|id| {
            let (req, _, _) = traces.remove(&id)?;
            let spans = req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len() as u64)
                .sum();
            Some(Outgoing {
                key: trace_key(&id),
                payload: req.encode_to_vec(),
                spans,
            })
        })
        .collect()
}

/// A resource's identity: its attributes, sorted, as `key=value` lines.
fn resource_key(res: Option<&Resource>) -> String {
    let mut attrs: Vec<String> = res
        .map_or(&[][..], |r| &r.attributes[..])
        .iter()
        .map(|KeyValue { key, value, .. }| format!("{key}={value:?}"))
        .collect();
    attrs.sort();
    attrs.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn span(trace: u8, id: u8) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            name: format!("s{id}"),
            ..Span::default()
        }
    }

    #[test]
    fn traces_split_by_id_keeping_resources_and_dropping_invalid_spans() {
        let rs = |name: &str, spans: Vec<Span>| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                        value: Some(
                            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                                name.into(),
                            ),
                        ),
                    }),
                    ..KeyValue::default()
                }],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            schema_url: String::new(),
        };
        let mut bad = span(3, 9);
        bad.trace_id = vec![0; 16];
        let req = ExportTraceServiceRequest {
            resource_spans: vec![
                rs("a", vec![span(1, 1), span(2, 2), bad]),
                rs("b", vec![span(1, 3)]),
            ],
        };
        let out = split_traces(req);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].spans, out[1].spans), (2, 1));
        assert_eq!(out[0].key, "01".repeat(16));
        let first = ExportTraceServiceRequest::decode(&out[0].payload[..]).unwrap();
        assert_eq!(
            first.resource_spans.len(),
            2,
            "trace 1 has spans of both resources"
        );
        let names: Vec<_> = first
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["s1", "s3"]);
        let second = ExportTraceServiceRequest::decode(&out[1].payload[..]).unwrap();
        assert_eq!(second.resource_spans[0].scope_spans[0].spans.len(), 1);
    }
}
