//! Prometheus text exposition (format 0.0.4) of a [`Snapshot`] and of the analyzer's own counters.
//!
//! RED series carry the names and labels of the OpenTelemetry Collector's spanmetrics connector as the
//! Prometheus exporter writes them; service-graph series those of the servicegraph connector and Tempo. So
//! Grafana's service-graph view, Jaeger's Monitor tab and existing dashboards read them unchanged.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tidewatch_analyzer::Snapshot;
use tidewatch_analyzer::engine::EngineStats;
use tidewatch_analyzer::exposition::{Kind, by_label, family, histogram, le_values, sample, single};
use tidewatch_analyzer::graph::{ConnectionType, EdgeRow, GraphCounters};
use tidewatch_analyzer::ingest::Ingest;
use tidewatch_analyzer::red::RedRow;
use tidewatch_analyzer::signals::{LogRow, MetricKind, MetricRow};

/// RED, service-graph, metric-point and log-record series of a snapshot.
pub fn render_snapshot<W: Write>(out: &mut W, s: &Snapshot) {
    render_red(out, s);
    render_graph(out, s);
    let rows = SignalRows {
        labels: &[],
        metrics: &s.metrics,
        logs: &s.logs,
    };
    render_signals(out, &[rows]);
}

/// One part's metric rows and log counts, and the labels its samples carry beyond their own (an
/// analyzer's partition: `tidewatch_partition`).
pub struct SignalRows<'a> {
    pub labels: &'a [(&'a str, &'a str)],
    pub metrics: &'a [MetricRow],
    pub logs: &'a [LogRow],
}

/// Metric rows and log counts of several parts, each family written once.
pub fn render_signals(out: &mut impl Write, parts: &[SignalRows<'_>]) {
    let points = "tidewatch_metric_points_total";
    if parts.iter().any(|p| !p.metrics.is_empty()) {
        family(
            out,
            points,
            Kind::Counter,
            "Metric points received, by service, pod and metric.",
        );
        for p in parts {
            for m in p.metrics {
                sample(out, points, &metric_labels(m, p.labels), m.points);
            }
        }
    }
    let increase = "tidewatch_metric_increase_total";
    let counter = |m: &&MetricRow| m.kind == MetricKind::Counter;
    if parts.iter().any(|p| p.metrics.iter().any(|m| counter(&m))) {
        family(
            out,
            increase,
            Kind::Counter,
            "Increase of monotonic sums (delta or cumulative, across restarts), by service, pod and metric.",
        );
        for p in parts {
            for m in p.metrics.iter().filter(counter) {
                sample(out, increase, &metric_labels(m, p.labels), m.increase);
            }
        }
    }
    let records = "tidewatch_log_records_total";
    if parts.iter().any(|p| !p.logs.is_empty()) {
        family(
            out,
            records,
            Kind::Counter,
            "Log records received, by service and severity.",
        );
        for p in parts {
            for r in p.logs {
                let mut labels = vec![("service_name", &*r.service), ("severity", r.severity)];
                labels.extend_from_slice(p.labels);
                sample(out, records, &labels, r.records);
            }
        }
    }
}

fn metric_labels<'a>(m: &'a MetricRow, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut labels = vec![
        ("service_name", &*m.service),
        ("k8s_pod_name", &*m.pod),
        ("metric_name", &*m.name),
    ];
    labels.extend_from_slice(extra);
    labels
}

fn render_red<W: Write>(out: &mut W, s: &Snapshot) {
    let calls = "traces_span_metrics_calls_total";
    let duration = format!("traces_span_metrics_duration_{}", s.red_unit.suffix());
    let dim_labels: Vec<String> = s
        .red_dimensions
        .iter()
        .map(|d| tidewatch_analyzer::graph::sanitize_label(d))
        .collect();
    // One list of label pairs, refilled for each row: a scrape allocates nothing per series.
    let mut pairs = Vec::new();
    family(
        out,
        calls,
        Kind::Counter,
        "Spans counted, by service, span name, kind and status (spanmetrics).",
    );
    for r in &s.red {
        red_labels(r, &dim_labels, &mut pairs);
        sample(out, calls, &pairs, r.calls);
    }
    family(out, &duration, Kind::Histogram, "Span durations (spanmetrics).");
    let le = le_values(&s.red_bounds);
    for r in &s.red {
        red_labels(r, &dim_labels, &mut pairs);
        histogram(out, &duration, &pairs, &le, &r.duration);
    }
}

/// The labels of a RED row, as the spanmetrics connector names them, into `pairs`.
fn red_labels<'a>(r: &'a RedRow, dim_labels: &'a [String], pairs: &mut Vec<(&'a str, &'a str)>) {
    pairs.clear();
    pairs.push(("service_name", &r.service));
    if r.overflow {
        pairs.push(("otel_metric_overflow", "true"));
        return;
    }
    pairs.extend([
        ("span_name", &*r.span_name),
        ("span_kind", r.kind.as_label()),
        ("status_code", r.status.as_label()),
    ]);
    dimensions(dim_labels, &r.dims, pairs);
}

/// The labels of an edge, as Tempo and the servicegraph connector name them, into `pairs`.
fn edge_labels<'a>(e: &'a EdgeRow, dim_labels: &'a [String], pairs: &mut Vec<(&'a str, &'a str)>) {
    pairs.clear();
    pairs.extend([
        ("client", &*e.client),
        ("server", &*e.server),
        ("connection_type", e.connection_type.as_label()),
    ]);
    dimensions(dim_labels, &e.dims, pairs);
}

/// The configured dimensions' labels with a row's values of them, after its own labels in `pairs`.
fn dimensions<'a>(labels: &'a [String], values: &'a [Arc<str>], pairs: &mut Vec<(&'a str, &'a str)>) {
    pairs.extend(labels.iter().map(String::as_str).zip(values.iter().map(|v| &**v)));
}

/// Writes one edge's samples, given its label pairs.
type EdgeSamples<'a, W> = dyn Fn(&mut W, &[(&str, &str)], &EdgeRow) + 'a;

/// The service-graph series of the edges (as Tempo and the servicegraph connector name them), then the
/// processor's own counters.
fn render_graph<W: Write>(out: &mut W, s: &Snapshot) {
    let cfg = &s.graph_config;
    let each = |out: &mut W, f: &EdgeSamples<'_, W>| {
        let mut pairs = Vec::new();
        for e in &s.edges {
            edge_labels(e, &s.graph_dimensions, &mut pairs);
            f(out, &pairs, e);
        }
    };
    if cfg.request_metrics {
        family(
            out,
            "traces_service_graph_request_total",
            Kind::Counter,
            "Requests between two nodes of the service graph.",
        );
        each(out, &|o, p, e| {
            sample(o, "traces_service_graph_request_total", p, e.total)
        });
        family(
            out,
            "traces_service_graph_request_failed_total",
            Kind::Counter,
            "Failed requests between two nodes.",
        );
        each(out, &|o, p, e| {
            sample(o, "traces_service_graph_request_failed_total", p, e.failed)
        });
    }
    if cfg.latency_metrics {
        let le = le_values(&s.graph_bounds);
        for (name, help) in [
            (
                "traces_service_graph_request_server_seconds",
                "Request duration as seen by the server.",
            ),
            (
                "traces_service_graph_request_client_seconds",
                "Request duration as seen by the client.",
            ),
        ] {
            family(out, name, Kind::Histogram, help);
            let server = name.contains("server");
            each(out, &|o, p, e| {
                histogram(
                    o,
                    name,
                    p,
                    &le,
                    if server {
                        &e.server_latency
                    } else {
                        &e.client_latency
                    },
                )
            });
        }
        if cfg.enable_messaging_system_latency_histogram {
            let name = "traces_service_graph_request_messaging_system_seconds";
            family(
                out,
                name,
                Kind::Histogram,
                "Time between a producer's end and its consumer's start.",
            );
            each(out, &|o, p, e| {
                if e.connection_type == ConnectionType::MessagingSystem {
                    histogram(o, name, p, &le, &e.messaging_latency)
                }
            });
        }
    }
    if cfg.connection_info {
        family(
            out,
            "traces_service_graph_connection_info",
            Kind::Gauge,
            "1 for every pair of connected nodes.",
        );
        each(out, &|o, p, _| {
            sample(o, "traces_service_graph_connection_info", p, 1.0)
        });
    }
    render_graph_counters(out, &s.graph);
}

/// The service-graph processor's own counters: half edges created, expired, dropped and waiting.
fn render_graph_counters(out: &mut impl Write, g: &GraphCounters) {
    single(
        out,
        "tidewatch_service_graph_edges_total",
        Kind::Counter,
        "Half edges created (including database edges).",
        g.edges as f64,
    );
    by_label(
        out,
        "tidewatch_service_graph_expired_edges_total",
        Kind::Counter,
        "Half edges that expired unpaired, by the kind of the span last applied.",
        "unmatched_span_kind",
        [
            ("SPAN_KIND_SERVER", g.expired_server as f64),
            ("SPAN_KIND_CLIENT", g.expired_client as f64),
            ("SPAN_KIND_PRODUCER", g.expired_producer as f64),
            ("SPAN_KIND_CONSUMER", g.expired_consumer as f64),
        ],
    );
    single(
        out,
        "tidewatch_service_graph_dropped_spans_total",
        Kind::Counter,
        "Spans dropped because max_items halves were waiting.",
        g.dropped_spans as f64,
    );
    single(
        out,
        "tidewatch_service_graph_pending_edges",
        Kind::Gauge,
        "Half edges waiting for their other half.",
        g.pending as f64,
    );
}

/// Anomaly scores of the last window close (0 normal; 0.5 at the alarm threshold; towards 1 beyond).
pub fn render_health(out: &mut impl Write, h: &tidewatch_analyzer::engine::Health) {
    family(
        out,
        "tidewatch_anomaly_score",
        Kind::Gauge,
        "Anomaly score of each service at the last window close (0.5 = threshold).",
    );
    for s in &h.current.services {
        sample(
            out,
            "tidewatch_anomaly_score",
            &[("service_name", &s.service)],
            s.score,
        );
    }
    single(
        out,
        "tidewatch_anomalous_services",
        Kind::Gauge,
        "Services anomalous at the last window close.",
        h.current.services.iter().filter(|s| s.anomalous).count() as f64,
    );
}

/// The engine's and the ingest queue's own figures.
pub fn render_engine(out: &mut impl Write, ingest: &Ingest, stats: &EngineStats) {
    by_label(
        out,
        "tidewatch_analyzer_items_total",
        Kind::Counter,
        "Items processed by the engine, by signal.",
        "signal",
        [
            ("spans", &stats.spans),
            ("data_points", &stats.metric_points),
            ("log_records", &stats.log_records),
        ]
        .map(|(signal, v)| (signal, v.load(Relaxed) as f64)),
    );
    single(
        out,
        "tidewatch_analyzer_queue_depth_batches",
        Kind::Gauge,
        "Batches waiting in the shard queues.",
        ingest.queue_depth() as f64,
    );
    single(
        out,
        "tidewatch_analyzer_queue_capacity_batches",
        Kind::Gauge,
        "Batches the shard queues hold at most.",
        ingest.queue_capacity() as f64,
    );
    single(
        out,
        "tidewatch_analyzer_inflight_bytes",
        Kind::Gauge,
        "Bytes held by batches queued or in work.",
        ingest.inflight().used() as f64,
    );
    single(
        out,
        "tidewatch_analyzer_inflight_limit_bytes",
        Kind::Gauge,
        "Limit on in-flight bytes; past it requests are refused.",
        ingest.inflight().limit() as f64,
    );
    let st = ingest.stats();
    by_label(
        out,
        "tidewatch_analyzer_refused_batches_total",
        Kind::Counter,
        "Batches refused, by reason.",
        "reason",
        [
            ("queue_full", &st.refused_queue_full),
            ("memory_limit", &st.refused_memory),
        ]
        .map(|(reason, v)| (reason, v.load(Relaxed) as f64)),
    );
}

/// The global series budget: its limit, the series it holds, the items that went to overflow series.
pub fn render_budget(out: &mut impl Write, b: &tidewatch_analyzer::budget::BudgetStatus) {
    for (name, kind, help, value) in [
        (
            "tidewatch_series_budget_limit",
            Kind::Gauge,
            "Active series allowed (analyzer.max_series), every kind together.",
            b.limit as f64,
        ),
        (
            "tidewatch_series_active",
            Kind::Gauge,
            "Active series: services, RED series, pods, edges and the names they refer to, metric and log series.",
            b.active as f64,
        ),
        (
            "tidewatch_series_overflow_total",
            Kind::Counter,
            "Spans, points and records counted in overflow series (otel_metric_overflow=\"true\") or dropped, the budget being spent.",
            b.overflow_items as f64,
        ),
    ] {
        single(out, name, kind, help, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_carry_their_parts_labels_and_counters_their_increase() {
        let row = |name: &str, kind| MetricRow {
            service: "api".into(),
            pod: "api-1".into(),
            name: name.into(),
            kind,
            points: 3,
            last_time_ns: 9,
            last_value: 7.0,
            increase: 4.5,
            last_start_ns: 1,
            seen_cumulative: true,
        };
        let metrics = [
            row("cpu", MetricKind::Gauge),
            row("requests", MetricKind::Counter),
        ];
        let logs = [LogRow {
            service: "api".into(),
            severity: "error",
            records: 2,
        }];
        let mut out = String::new();
        render_signals(
            &mut out,
            &[SignalRows {
                labels: &[("tidewatch_partition", "1")],
                metrics: &metrics,
                logs: &logs,
            }],
        );
        let samples: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        let labels = |name: &str| {
            format!(
                "service_name=\"api\",k8s_pod_name=\"api-1\",metric_name=\"{name}\",tidewatch_partition=\"1\""
            )
        };
        assert_eq!(
            samples,
            [
                format!("tidewatch_metric_points_total{{{}}} 3", labels("cpu")),
                format!("tidewatch_metric_points_total{{{}}} 3", labels("requests")),
                format!("tidewatch_metric_increase_total{{{}}} 4.5", labels("requests")),
                "tidewatch_log_records_total{service_name=\"api\",severity=\"error\",tidewatch_partition=\"1\"} 2"
                    .to_owned(),
            ]
        );
    }
}
