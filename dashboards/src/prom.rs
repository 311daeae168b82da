//! Prometheus text exposition (format 0.0.4) of a [`Snapshot`] and of the analyzer's own counters.
//!
//! RED series carry the names and labels of the OpenTelemetry Collector's spanmetrics connector as the
//! Prometheus exporter writes them; service-graph series those of the servicegraph connector and Tempo. So
//! Grafana's service-graph view, Jaeger's Monitor tab and existing dashboards read them unchanged.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use tidewatch_analyzer::Snapshot;
use tidewatch_analyzer::engine::EngineStats;
use tidewatch_analyzer::graph::ConnectionType;
use tidewatch_analyzer::ingest::Ingest;
use tidewatch_analyzer::red::Histogram;

/// Writes one label set; labels with an empty value are left out (Prometheus treats them as absent).
fn labels(out: &mut String, pairs: &[(&str, &str)], le: Option<&str>) {
    let mut first = true;
    for (k, v) in pairs.iter().copied().chain(le.map(|l| ("le", l))) {
        if v.is_empty() {
            continue;
        }
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    if !first {
        out.push('}');
    }
}

fn sample(out: &mut String, name: &str, pairs: &[(&str, &str)], le: Option<&str>, value: f64) {
    out.push_str(name);
    labels(out, pairs, le);
    let _ = writeln!(out, " {value}");
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A classic histogram: cumulative `_bucket` series with `le`, then `_sum` and `_count`.
fn histogram(out: &mut String, name: &str, pairs: &[(&str, &str)], bounds: &[f64], h: &Histogram) {
    let mut cum = 0.0;
    let mut le = String::new();
    for (i, c) in h.counts.iter().enumerate() {
        cum += c;
        le.clear();
        match bounds.get(i) {
            Some(b) => {
                let _ = write!(le, "{b}");
            }
            None => le.push_str("+Inf"),
        }
        sample(out, &format!("{name}_bucket"), pairs, Some(&le), cum);
    }
    sample(out, &format!("{name}_sum"), pairs, None, h.sum);
    sample(out, &format!("{name}_count"), pairs, None, h.count);
}

/// RED and service-graph series of a snapshot.
pub fn render_snapshot(out: &mut String, s: &Snapshot) {
    render_red(out, s);
    render_graph(out, s);
    if !s.logs.is_empty() {
        family(
            out,
            "tidewatch_log_records_total",
            "counter",
            "Log records received, by service and severity.",
        );
        for r in &s.logs {
            sample(
                out,
                "tidewatch_log_records_total",
                &[("service_name", &r.service), ("severity", r.severity)],
                None,
                r.records as f64,
            );
        }
    }
}

fn render_red(out: &mut String, s: &Snapshot) {
    let calls = "traces_span_metrics_calls_total";
    let duration = format!("traces_span_metrics_duration_{}", s.red_unit.suffix());
    let dim_labels: Vec<String> = s
        .red_dimensions
        .iter()
        .map(|d| tidewatch_analyzer::graph::sanitize_label(d))
        .collect();
    let row_labels = |r: &tidewatch_analyzer::red::RedRow| -> Vec<(String, String)> {
        if r.overflow {
            return vec![
                ("service_name".into(), r.service.to_string()),
                ("otel_metric_overflow".into(), "true".into()),
            ];
        }
        let mut v = vec![
            ("service_name".to_owned(), r.service.to_string()),
            ("span_name".to_owned(), r.span_name.to_string()),
            ("span_kind".to_owned(), r.kind.as_label().to_owned()),
            ("status_code".to_owned(), r.status.as_label().to_owned()),
        ];
        v.extend(
            dim_labels
                .iter()
                .cloned()
                .zip(r.dims.iter().map(|d| d.to_string())),
        );
        v
    };
    family(
        out,
        calls,
        "counter",
        "Spans counted, by service, span name, kind and status (spanmetrics).",
    );
    for r in &s.red {
        let l = row_labels(r);
        let pairs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        sample(out, calls, &pairs, None, r.calls as f64);
    }
    family(out, &duration, "histogram", "Span durations (spanmetrics).");
    for r in &s.red {
        let l = row_labels(r);
        let pairs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        histogram(out, &duration, &pairs, &s.red_bounds, &r.duration);
    }
}

/// Writes one edge's samples, given its label pairs.
type EdgeSamples<'a> = dyn Fn(&mut String, &[(&str, &str)], &tidewatch_analyzer::graph::EdgeRow) + 'a;

fn render_graph(out: &mut String, s: &Snapshot) {
    let cfg = &s.graph_config;
    let edge_labels = |e: &tidewatch_analyzer::graph::EdgeRow| -> Vec<(String, String)> {
        let mut v = vec![
            ("client".to_owned(), e.client.to_string()),
            ("server".to_owned(), e.server.to_string()),
            (
                "connection_type".to_owned(),
                e.connection_type.as_label().to_owned(),
            ),
        ];
        v.extend(
            s.graph_dimensions
                .iter()
                .cloned()
                .zip(e.dims.iter().map(|d| d.to_string())),
        );
        v
    };
    let all: Vec<(Vec<(String, String)>, &tidewatch_analyzer::graph::EdgeRow)> =
        s.edges.iter().map(|e| (edge_labels(e), e)).collect();
    let each = |out: &mut String, f: &EdgeSamples<'_>| {
        for (l, e) in &all {
            let pairs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            f(out, &pairs, e);
        }
    };
    if cfg.request_metrics {
        family(
            out,
            "traces_service_graph_request_total",
            "counter",
            "Requests between two nodes of the service graph.",
        );
        each(out, &|o, p, e| {
            sample(o, "traces_service_graph_request_total", p, None, e.total)
        });
        family(
            out,
            "traces_service_graph_request_failed_total",
            "counter",
            "Failed requests between two nodes.",
        );
        each(out, &|o, p, e| {
            sample(o, "traces_service_graph_request_failed_total", p, None, e.failed)
        });
    }
    if cfg.latency_metrics {
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
            family(out, name, "histogram", help);
            let server = name.contains("server");
            each(out, &|o, p, e| {
                histogram(
                    o,
                    name,
                    p,
                    &s.graph_bounds,
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
                "histogram",
                "Time between a producer's end and its consumer's start.",
            );
            each(out, &|o, p, e| {
                if e.connection_type == ConnectionType::MessagingSystem {
                    histogram(o, name, p, &s.graph_bounds, &e.messaging_latency)
                }
            });
        }
    }
    if cfg.connection_info {
        family(
            out,
            "traces_service_graph_connection_info",
            "gauge",
            "1 for every pair of connected nodes.",
        );
        each(out, &|o, p, _| {
            sample(o, "traces_service_graph_connection_info", p, None, 1.0)
        });
    }
    let g = &s.graph;
    family(
        out,
        "tidewatch_service_graph_edges_total",
        "counter",
        "Half edges created (including database edges).",
    );
    sample(
        out,
        "tidewatch_service_graph_edges_total",
        &[],
        None,
        g.edges as f64,
    );
    family(
        out,
        "tidewatch_service_graph_expired_edges_total",
        "counter",
        "Half edges that expired unpaired, by the kind of the span last applied.",
    );
    for (kind, v) in [
        ("SPAN_KIND_SERVER", g.expired_server),
        ("SPAN_KIND_CLIENT", g.expired_client),
        ("SPAN_KIND_PRODUCER", g.expired_producer),
        ("SPAN_KIND_CONSUMER", g.expired_consumer),
    ] {
        sample(
            out,
            "tidewatch_service_graph_expired_edges_total",
            &[("unmatched_span_kind", kind)],
            None,
            v as f64,
        );
    }
    family(
        out,
        "tidewatch_service_graph_dropped_spans_total",
        "counter",
        "Spans dropped because max_items halves were waiting.",
    );
    sample(
        out,
        "tidewatch_service_graph_dropped_spans_total",
        &[],
        None,
        g.dropped_spans as f64,
    );
    family(
        out,
        "tidewatch_service_graph_pending_edges",
        "gauge",
        "Half edges waiting for their other half.",
    );
    sample(
        out,
        "tidewatch_service_graph_pending_edges",
        &[],
        None,
        g.pending as f64,
    );
}

/// Anomaly scores of the last window close (0 normal; 0.5 at the alarm threshold; towards 1 beyond).
pub fn render_health(out: &mut String, h: &tidewatch_analyzer::engine::Health) {
    family(
        out,
        "tidewatch_anomaly_score",
        "gauge",
        "Anomaly score of each service at the last window close (0.5 = threshold).",
    );
    for s in &h.current.services {
        sample(
            out,
            "tidewatch_anomaly_score",
            &[("service_name", &s.service)],
            None,
            s.score,
        );
    }
    family(
        out,
        "tidewatch_anomalous_services",
        "gauge",
        "Services anomalous at the last window close.",
    );
    sample(
        out,
        "tidewatch_anomalous_services",
        &[],
        None,
        h.current.services.iter().filter(|s| s.anomalous).count() as f64,
    );
}

/// The engine's and the ingest queue's own figures.
pub fn render_engine(out: &mut String, ingest: &Ingest, stats: &EngineStats) {
    family(
        out,
        "tidewatch_analyzer_items_total",
        "counter",
        "Items processed by the engine, by signal.",
    );
    for (signal, v) in [
        ("spans", &stats.spans),
        ("data_points", &stats.metric_points),
        ("log_records", &stats.log_records),
    ] {
        sample(
            out,
            "tidewatch_analyzer_items_total",
            &[("signal", signal)],
            None,
            v.load(Relaxed) as f64,
        );
    }
    family(
        out,
        "tidewatch_analyzer_queue_depth_batches",
        "gauge",
        "Batches waiting in the shard queues.",
    );
    sample(
        out,
        "tidewatch_analyzer_queue_depth_batches",
        &[],
        None,
        ingest.queue_depth() as f64,
    );
    family(
        out,
        "tidewatch_analyzer_queue_capacity_batches",
        "gauge",
        "Batches the shard queues hold at most.",
    );
    sample(
        out,
        "tidewatch_analyzer_queue_capacity_batches",
        &[],
        None,
        ingest.queue_capacity() as f64,
    );
    family(
        out,
        "tidewatch_analyzer_inflight_bytes",
        "gauge",
        "Bytes held by batches queued or in work.",
    );
    sample(
        out,
        "tidewatch_analyzer_inflight_bytes",
        &[],
        None,
        ingest.inflight().used() as f64,
    );
    family(
        out,
        "tidewatch_analyzer_inflight_limit_bytes",
        "gauge",
        "Limit on in-flight bytes; past it requests are refused.",
    );
    sample(
        out,
        "tidewatch_analyzer_inflight_limit_bytes",
        &[],
        None,
        ingest.inflight().limit() as f64,
    );
    family(
        out,
        "tidewatch_analyzer_refused_batches_total",
        "counter",
        "Batches refused, by reason.",
    );
    let st = ingest.stats();
    for (reason, v) in [
        ("queue_full", &st.refused_queue_full),
        ("memory_limit", &st.refused_memory),
    ] {
        sample(
            out,
            "tidewatch_analyzer_refused_batches_total",
            &[("reason", reason)],
            None,
            v.load(Relaxed) as f64,
        );
    }
}

/// The global series budget: its limit, the series it holds, the items that went to overflow series.
pub fn render_budget(out: &mut String, b: &tidewatch_analyzer::budget::BudgetStatus) {
    for (name, kind, help, value) in [
        (
            "tidewatch_series_budget_limit",
            "gauge",
            "Active series allowed (analyzer.max_series), every kind together.",
            b.limit as f64,
        ),
        (
            "tidewatch_series_active",
            "gauge",
            "Active series: services, RED series, pods, edges and the names they refer to, metric and log series.",
            b.active as f64,
        ),
        (
            "tidewatch_series_overflow_total",
            "counter",
            "Spans, points and records counted in overflow series (otel_metric_overflow=\"true\") or dropped, the budget being spent.",
            b.overflow_items as f64,
        ),
    ] {
        family(out, name, kind, help);
        sample(out, name, &[], None, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_escape_and_skip_empty() {
        let mut s = String::new();
        sample(&mut s, "m", &[("a", "x\"y\\z\n"), ("b", "")], Some("0.5"), 2.0);
        assert_eq!(s, "m{a=\"x\\\"y\\\\z\\n\",le=\"0.5\"} 2\n");
    }

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::new(2);
        for v in [0.1, 0.6, 2.0] {
            h.observe(&[0.5, 1.0], v);
        }
        let mut s = String::new();
        histogram(&mut s, "h", &[("x", "1")], &[0.5, 1.0], &h);
        let lines: Vec<_> = s.lines().collect();
        assert_eq!(lines[0], "h_bucket{x=\"1\",le=\"0.5\"} 1");
        assert_eq!(lines[1], "h_bucket{x=\"1\",le=\"1\"} 2");
        assert_eq!(lines[2], "h_bucket{x=\"1\",le=\"+Inf\"} 3");
        assert_eq!(lines[4], "h_count{x=\"1\"} 3");
    }
}
