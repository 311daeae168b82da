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
    line(out, [name, ""], labels, None, value);
}

/// A family of one sample per value of one label, in the order given.
pub fn by_label<'a, V: Display>(
    out: &mut impl Write,
    name: &str,
    kind: Kind,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, V)>,
) {
    family(out, name, kind, help);
    for (value, v) in samples {
        sample(out, name, &[(label, value)], v);
    }
}

/// A family of one sample without labels.
pub fn single(out: &mut impl Write, name: &str, kind: Kind, help: &str, value: impl Display) {
    family(out, name, kind, help);
    sample(out, name, &[], value);
}

/// The `le` values of a histogram's buckets, as the exposition writes them: each bound, then `+Inf`.
/// Made once per metric family, not for every series.
pub fn le_values(bounds: &[f64]) -> Vec<String> {
    bounds
        .iter()
        .map(f64::to_string)
        .chain(["+Inf".to_owned()])
        .collect()
}

/// A classic histogram: cumulative `_bucket` series with `le` (`le`: [`le_values`] of its bounds), then
/// `_sum` and `_count`.
pub fn histogram(out: &mut impl Write, name: &str, labels: &[(&str, &str)], le: &[String], h: &Histogram) {
    let mut cum = 0.0;
    for (i, le) in le.iter().enumerate() {
        cum += h.bucket(i);
        line(out, [name, "_bucket"], labels, Some(le), Number(cum));
    }
    line(out, [name, "_sum"], labels, None, h.sum);
    line(out, [name, "_count"], labels, None, Number(h.count));
}

/// A sample value written as `{}` writes an `f64`; an integral one (a count) through the integer
/// formatter, which writes the same digits for less.
struct Number(f64);

impl Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        // Below 2^53 an integral f64 is exactly its i64; `-0` keeps its sign only as a float.
        if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 && !(v == 0.0 && v.is_sign_negative()) {
            Display::fmt(&(v as i64), f)
        } else {
            Display::fmt(&v, f)
        }
    }
}

/// One sample line, its name written in parts (a histogram's name and suffix: no name is put together
/// per series).
fn line(
    out: &mut impl Write,
    name: [&str; 2],
    labels: &[(&str, &str)],
    le: Option<&str>,
    value: impl Display,
) {
    for part in name {
        let _ = out.write_str(part);
    }
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
        line(
            &mut s,
            ["m", ""],
            &[("a", "x\"y\\z\n"), ("b", "")],
            Some("0.5"),
            2.0,
        );
        assert_eq!(s, "m{a=\"x\\\"y\\\\z\\n\",le=\"0.5\"} 2\n");
    }

    #[test]
    fn a_single_sample_has_its_family_lines() {
        let mut s = String::new();
        single(&mut s, "up_total", Kind::Counter, "Ups.", 3u64);
        assert_eq!(s, "# HELP up_total Ups.\n# TYPE up_total counter\nup_total 3\n");
    }

    #[test]
    fn a_family_by_label_has_one_sample_per_value_in_order() {
        let mut s = String::new();
        by_label(
            &mut s,
            "hits",
            Kind::Gauge,
            "Hits.",
            "kind",
            [("b", 2u64), ("a", 1)],
        );
        assert_eq!(
            s,
            "# HELP hits Hits.\n# TYPE hits gauge\nhits{kind=\"b\"} 2\nhits{kind=\"a\"} 1\n"
        );
    }

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::default();
        for v in [0.1, 0.6, 2.0] {
            h.observe(&[0.5, 1.0], v);
        }
        let mut s = String::new();
        histogram(&mut s, "h", &[("x", "1")], &le_values(&[0.5, 1.0]), &h);
        let lines: Vec<_> = s.lines().collect();
        assert_eq!(lines[0], "h_bucket{x=\"1\",le=\"0.5\"} 1");
        assert_eq!(lines[1], "h_bucket{x=\"1\",le=\"1\"} 2");
        assert_eq!(lines[2], "h_bucket{x=\"1\",le=\"+Inf\"} 3");
        assert_eq!(lines[4], "h_count{x=\"1\"} 3");
    }

    #[test]
    fn numbers_are_written_as_floats_are() {
        for v in [
            0.0,
            -0.0,
            3.0,
            -7.0,
            0.25,
            1e15,
            9_007_199_254_740_991.0,
            9_007_199_254_740_992.0,
            1e300,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            assert_eq!(Number(v).to_string(), v.to_string(), "{v:?}");
        }
    }
}
