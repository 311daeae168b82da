//! The Prometheus text exposition format (0.0.4): the one writer of `/metrics` text. The collector's,
//! the engine's, the operator's and the Kafka roles' figures are all written through it, so escaping,
//! `# HELP`/`# TYPE` lines and histograms are the same everywhere. A text format only: serving it over
//! HTTP is the dashboards' business. Every writer takes any [`Write`]: a `String`, or a writer that hands
//! the text on in bounded chunks as it is written (the dashboards' `/metrics`), so an exposition of tens
//! of thousands of series is never held whole.

use std::fmt::{Display, Write};

use crate::red::Histogram;

/// The `Content-Type` of a `/metrics` answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The `# HELP` and `# TYPE` lines of a metric family.
pub fn family(out: &mut impl Write, name: &str, kind: Kind, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
}

/// One sample; labels with an empty value are left out (Prometheus treats them as absent).
pub fn sample(out: &mut impl Write, name: &str, labels: &[(&str, &str)], value: impl Display) {
    sample_le(out, name, labels, None, value);
}

/// A family of one sample without labels.
pub fn single(out: &mut impl Write, name: &str, kind: Kind, help: &str, value: impl Display) {
    family(out, name, kind, help);
    sample(out, name, &[], value);
}

/// A classic histogram: cumulative `_bucket` series with `le`, then `_sum` and `_count`.
pub fn histogram(out: &mut impl Write, name: &str, labels: &[(&str, &str)], bounds: &[f64], h: &Histogram) {
    let mut cum = 0.0;
    let mut le = String::new();
    for i in 0..h.slots().max(bounds.len() + 1) {
        cum += h.bucket(i);
        le.clear();
        match bounds.get(i) {
            Some(b) => {
                let _ = write!(le, "{b}");
            }
            None => le.push_str("+Inf"),
        }
        sample_le(out, &format!("{name}_bucket"), labels, Some(&le), cum);
    }
    sample(out, &format!("{name}_sum"), labels, h.sum);
    sample(out, &format!("{name}_count"), labels, h.count);
}

fn sample_le(
    out: &mut impl Write,
    name: &str,
    labels: &[(&str, &str)],
    le: Option<&str>,
    value: impl Display,
) {
    let _ = out.write_str(name);
    write_labels(out, labels, le);
    let _ = writeln!(out, " {value}");
}

fn write_labels(out: &mut impl Write, pairs: &[(&str, &str)], le: Option<&str>) {
    let mut first = true;
    for (k, v) in pairs.iter().copied().chain(le.map(|l| ("le", l))) {
        if v.is_empty() {
            continue;
        }
        let _ = out.write_char(if first { '{' } else { ',' });
        first = false;
        let _ = out.write_str(k);
        let _ = out.write_str("=\"");
        // Unescaped runs go out whole; only the three characters the format escapes are replaced.
        let mut rest = v;
        while let Some(at) = rest.find(['\\', '"', '\n']) {
            let _ = out.write_str(&rest[..at]);
            let _ = out.write_str(match rest.as_bytes()[at] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            });
            rest = &rest[at + 1..];
        }
        let _ = out.write_str(rest);
        let _ = out.write_char('"');
    }
    if !first {
        let _ = out.write_char('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_escape_and_skip_empty() {
        let mut s = String::new();
        sample_le(&mut s, "m", &[("a", "x\"y\\z\n"), ("b", "")], Some("0.5"), 2.0);
        assert_eq!(s, "m{a=\"x\\\"y\\\\z\\n\",le=\"0.5\"} 2\n");
    }

    #[test]
    fn a_single_sample_has_its_family_lines() {
        let mut s = String::new();
        single(&mut s, "up_total", Kind::Counter, "Ups.", 3u64);
        assert_eq!(s, "# HELP up_total Ups.\n# TYPE up_total counter\nup_total 3\n");
    }

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::default();
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
