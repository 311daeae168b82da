//! Metric points and log records, reduced to what the analyzer uses now: per (service, pod, metric) the
//! latest value and how many points arrived, and per (service, severity) how many log records arrived.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::budget::SeriesBudget;
use crate::records::{LogBatch, MetricBatch, PointValue};

/// OTLP severity ranges, named as the spec names them (1–4 TRACE … 21–24 FATAL).
pub fn severity_text(severity: u8) -> &'static str {
    match severity {
        1..=4 => "trace",
        5..=8 => "debug",
        9..=12 => "info",
        13..=16 => "warn",
        17..=20 => "error",
        21..=24 => "fatal",
        _ => "unspecified",
    }
}

/// The severity label [`severity_text`] gives, for a label read back (anything else: `unspecified`).
pub fn severity_label(label: &str) -> &'static str {
    [1, 5, 9, 13, 17, 21]
        .into_iter()
        .map(severity_text)
        .find(|s| *s == label)
        .unwrap_or("unspecified")
}

/// Whether a metric is read as a level or as a rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Gauges, non-monotonic sums, histogram means: the latest value is what counts.
    Gauge,
    /// Monotonic sums: what counts is how fast they grow.
    Counter,
}

/// The latest reading of one metric of one pod of one service.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRow {
    pub service: Arc<str>,
    pub pod: Arc<str>,
    pub name: Arc<str>,
    pub kind: MetricKind,
    pub points: u64,
    pub last_time_ns: u64,
    /// Gauge or sum value; for histograms and summaries, the mean of the latest point.
    pub last_value: f64,
    /// For counters: the total increase seen, across resets (a cumulative sum that falls or changes its
    /// start time restarted from zero) and delta points alike. The store turns its growth into a rate.
    pub increase: f64,
    /// For cumulative counters: the start time of the latest point, to tell a reset.
    pub last_start_ns: u64,
    /// Whether a cumulative point has been seen (the first one is the baseline, not an increase).
    pub seen_cumulative: bool,
}

/// Log records of one service at one severity.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRow {
    pub service: Arc<str>,
    pub severity: &'static str,
    pub records: u64,
}

/// (service, pod, metric name).
type MetricKey = (Arc<str>, Arc<str>, Arc<str>);

pub(crate) struct Signals {
    metrics: BTreeMap<MetricKey, MetricRow>,
    logs: BTreeMap<(Arc<str>, &'static str), u64>,
    budget: Arc<SeriesBudget>,
}

impl Signals {
    pub fn new(budget: Arc<SeriesBudget>) -> Signals {
        Signals {
            metrics: BTreeMap::new(),
            logs: BTreeMap::new(),
            budget,
        }
    }

    /// Whether a new series of `service` may be created: its service admitted and a unit left.
    fn admit(&self, service: &str) -> bool {
        let ok = self.budget.admit_service(service.as_bytes()) && self.budget.take();
        if !ok {
            self.budget.overflowed(1);
        }
        ok
    }

    pub fn metrics(&mut self, batch: &MetricBatch) {
        for p in &batch.points {
            let (value, kind) = match &p.value {
                PointValue::Gauge(v) => (*v, MetricKind::Gauge),
                PointValue::Sum {
                    value,
                    monotonic: true,
                    ..
                } => (*value, MetricKind::Counter),
                PointValue::Sum { value, .. } => (*value, MetricKind::Gauge),
                PointValue::Histogram { count, sum, .. } | PointValue::Summary { count, sum } => (
                    if *count == 0 { 0.0 } else { sum / *count as f64 },
                    MetricKind::Gauge,
                ),
            };
            let key = (
                Arc::from(p.service.as_str()),
                Arc::from(p.pod.as_str()),
                Arc::from(p.name.as_str()),
            );
            // Past the series budget a new metric series is counted as overflow and not kept.
            if !self.metrics.contains_key(&key) && !self.admit(&p.service) {
                continue;
            }
            let row = self.metrics.entry(key.clone()).or_insert_with(|| MetricRow {
                service: key.0,
                pod: key.1,
                name: key.2,
                kind,
                points: 0,
                last_time_ns: 0,
                last_value: 0.0,
                increase: 0.0,
                last_start_ns: 0,
                seen_cumulative: false,
            });
            row.points += 1;
            let late = p.time_ns < row.last_time_ns;
            if let PointValue::Sum {
                value,
                monotonic: true,
                cumulative,
                ..
            } = p.value
            {
                if !cumulative {
                    row.increase += value.max(0.0);
                } else if !late {
                    // The first cumulative point is the baseline; after it, growth is the increase, and a
                    // fall or a new start time means the counter restarted from zero.
                    if row.seen_cumulative {
                        let reset = value < row.last_value || p.start_ns != row.last_start_ns;
                        row.increase += if reset { value } else { value - row.last_value };
                    }
                    row.seen_cumulative = true;
                    row.last_start_ns = p.start_ns;
                }
            }
            // Late points count but do not replace a newer reading.
            if !late {
                row.last_time_ns = p.time_ns;
                row.last_value = value;
            }
        }
    }

    pub fn logs(&mut self, batch: &LogBatch) {
        for r in &batch.records {
            let key = (Arc::from(r.service.as_str()), severity_text(r.severity));
            // Past the series budget a new (service, severity) series is counted as overflow, not kept.
            if !self.logs.contains_key(&key) && !self.admit(&r.service) {
                continue;
            }
            *self.logs.entry(key).or_default() += 1;
        }
    }

    /// Takes back the rows of an earlier state (a partition's checkpoint), before any new point: later
    /// points continue them (a cumulative sum's next point is an increase over the restored one). Each
    /// row takes its unit of the series budget again.
    pub fn restore(&mut self, metrics: Vec<MetricRow>, logs: Vec<LogRow>) {
        for m in metrics {
            if self.admit(&m.service) {
                self.metrics
                    .insert((m.service.clone(), m.pod.clone(), m.name.clone()), m);
            }
        }
        for l in logs {
            if self.admit(&l.service) {
                self.logs.insert((l.service, l.severity), l.records);
            }
        }
    }

    pub fn metric_rows(&self) -> Vec<MetricRow> {
        self.metrics.values().cloned().collect()
    }

    pub fn log_rows(&self) -> Vec<LogRow> {
        self.logs
            .iter()
            .map(|((service, severity), &records)| LogRow {
                service: service.clone(),
                severity,
                records,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{LogRecord, MetricPoint};

    #[test]
    fn latest_value_wins_and_late_points_count() {
        let p = |t, v| MetricPoint {
            service: "api".into(),
            pod: "api-1".into(),
            name: "cpu".into(),
            attributes: vec![],
            start_ns: 0,
            time_ns: t,
            value: PointValue::Gauge(v),
        };
        let mut s = Signals::new(Arc::new(SeriesBudget::new(1000)));
        s.metrics(&MetricBatch {
            points: vec![p(2, 0.5), p(1, 0.9)],
            permit: None,
        });
        let rows = s.metric_rows();
        assert_eq!((rows[0].points, rows[0].last_value), (2, 0.5));
    }

    #[test]
    fn cumulative_counters_survive_resets() {
        let p = |start, t, v| MetricPoint {
            service: "api".into(),
            pod: "api-1".into(),
            name: "requests".into(),
            attributes: vec![],
            start_ns: start,
            time_ns: t,
            value: PointValue::Sum {
                value: v,
                monotonic: true,
                cumulative: true,
            },
        };
        let mut s = Signals::new(Arc::new(SeriesBudget::new(1000)));
        // Baseline 100, +20, a late point (ignored), then a restart at t=50 counting 5 since.
        let points = vec![
            p(0, 10, 100.0),
            p(0, 20, 120.0),
            p(0, 15, 110.0),
            p(50, 60, 5.0),
            p(50, 70, 9.0),
        ];
        s.metrics(&MetricBatch { points, permit: None });
        let row = &s.metric_rows()[0];
        assert_eq!(
            (row.kind, row.increase, row.last_value),
            (MetricKind::Counter, 29.0, 9.0)
        );
    }

    #[test]
    fn restored_rows_continue_a_cumulative_counter() {
        let p = |t, v| MetricPoint {
            service: "api".into(),
            pod: "api-1".into(),
            name: "requests".into(),
            attributes: vec![],
            start_ns: 0,
            time_ns: t,
            value: PointValue::Sum {
                value: v,
                monotonic: true,
                cumulative: true,
            },
        };
        let batch = |points| MetricBatch { points, permit: None };
        let budget = || Arc::new(SeriesBudget::new(1000));
        let mut whole = Signals::new(budget());
        let mut first = Signals::new(budget());
        for s in [&mut whole, &mut first] {
            s.metrics(&batch(vec![p(10, 100.0), p(20, 120.0)]));
        }
        let mut second = Signals::new(budget());
        second.restore(first.metric_rows(), first.log_rows());
        for s in [&mut whole, &mut second] {
            s.metrics(&batch(vec![p(30, 150.0)]));
        }
        assert_eq!(second.metric_rows(), whole.metric_rows());
        assert_eq!(second.metric_rows()[0].increase, 50.0);
        assert_eq!(severity_label("error"), "error");
        assert_eq!(severity_label("bogus"), "unspecified");
    }

    #[test]
    fn logs_count_by_severity_range() {
        let r = |sev| LogRecord {
            service: "api".into(),
            pod: String::new(),
            severity: sev,
            time_ns: 0,
        };
        let mut s = Signals::new(Arc::new(SeriesBudget::new(1000)));
        s.logs(&LogBatch {
            records: vec![r(17), r(18), r(9), r(0)],
            permit: None,
        });
        let rows: Vec<_> = s
            .log_rows()
            .into_iter()
            .map(|r| (r.severity, r.records))
            .collect();
        assert_eq!(rows, vec![("error", 2), ("info", 1), ("unspecified", 1)]);
    }
}
