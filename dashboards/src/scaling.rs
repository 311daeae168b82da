//! The Scaling page's chart, `GET /charts/policies/{namespace}/{name}/replicas.svg?from=&to=&tz=&w=&h=`:
//! one ServicePolicy's decisions over time, read from the operator's decision log. In requests per
//! second: the load its pods reported, the capacity of the replicas it ran (replicas × per-replica
//! capacity), the forecast peak each decision was given (the 95 % upper bound over the policy's horizon)
//! and the service's current forecast band; on the right axis the replicas decided; restarts and held-back
//! restarts as vertical marks. Everything drawn is a logged input or output of a decision, so the chart
//! shows what the operator saw and did, not a recomputation.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use tidewatch_scaler::decisions::{Entry, Record};
use tidewatch_scaler::heal::HealDecision;

use crate::WebState;
use plotters::coord::types::RangedCoordf64;

use crate::ui::{
    ChartQuery, ChartRange, chart_range, draw_legend, draw_time_axis, now_ms, segments, svg_response,
    text_error,
};

/// One scaling decision as drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct Decided {
    pub ts: i64,
    /// Requests per second summed over the pods that reported.
    pub load: Option<f64>,
    /// Per-replica capacity × the replicas running when the decision was made.
    pub capacity: Option<f64>,
    /// The forecast's 95 % upper bound over the horizon, when a forecast was given.
    pub forecast_peak: Option<f64>,
    /// What the decision set the replicas to.
    pub replicas: u32,
}

/// A healing decision that acted or would have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealMark {
    Restart(i64),
    HeldBack(i64),
}

/// A policy's decisions between `from` and `to`, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicySeries {
    pub service: Option<String>,
    pub decided: Vec<Decided>,
    pub heals: Vec<HealMark>,
}

impl PolicySeries {
    pub fn from_records(records: &[Record], from: i64, to: i64) -> PolicySeries {
        let mut out = PolicySeries::default();
        for r in records.iter().filter(|r| (from..=to).contains(&r.ts_ms)) {
            out.service = Some(r.service.clone());
            match &r.entry {
                Entry::Scale { inputs, decision, .. } => {
                    let rates: Vec<f64> = inputs.pods.iter().filter_map(|p| p.rate).collect();
                    out.decided.push(Decided {
                        ts: r.ts_ms,
                        load: (!rates.is_empty()).then(|| rates.iter().sum()),
                        capacity: inputs.capacity.map(|c| c * f64::from(inputs.current_replicas)),
                        forecast_peak: inputs.forecast.as_ref().and_then(|f| f.peak_upper),
                        replicas: decision.replicas,
                    });
                }
                Entry::Heal { decision, .. } => match decision {
                    HealDecision::Restart { .. } => out.heals.push(HealMark::Restart(r.ts_ms)),
                    HealDecision::HeldBack { .. } => out.heals.push(HealMark::HeldBack(r.ts_ms)),
                    HealDecision::None { .. } => {}
                },
            }
        }
        out
    }
}

const LOAD: RGBColor = RGBColor(37, 99, 235);
const CAPACITY: RGBColor = RGBColor(22, 163, 74);
const FORECAST: RGBColor = RGBColor(124, 58, 237);
const REPLICAS: RGBColor = RGBColor(15, 23, 42);
const RESTART: RGBColor = RGBColor(220, 38, 38);
const HELD_BACK: RGBColor = RGBColor(217, 119, 6);

pub async fn chart(
    State(s): State<WebState>,
    Path((namespace, name, file)): Path<(String, String, String)>,
    Query(q): Query<ChartQuery>,
) -> Response {
    if file != "replicas.svg" {
        return text_error(StatusCode::NOT_FOUND, format!("no chart `{file}`: replicas.svg"));
    }
    let range = match chart_range(&q, now_ms()) {
        Ok(r) => r,
        Err(e) => return text_error(StatusCode::BAD_REQUEST, e),
    };
    let policy = format!("{namespace}/{name}");
    let records = s.decisions.recent(usize::MAX, Some(policy.as_str()));
    let mut range = range;
    // The axis starts at the first decision in the range (but spans ten minutes at least), so a policy
    // that started deciding recently is not squeezed into the right edge.
    if let Some(first) = records.iter().map(|r| r.ts_ms).find(|t| *t >= range.from) {
        range.from = range.from.max(first.min(range.to - 600_000) - range.step);
    }
    let series = PolicySeries::from_records(&records, range.from, range.to);
    // The service's forecast as the trainer last fitted it: (ts, low, high), up to a quarter range ahead.
    let band: Vec<(i64, f64, f64)> = series
        .service
        .as_ref()
        .and_then(|svc| s.engine.forecasts().services.get(svc).cloned())
        .map(|f| {
            f.points
                .iter()
                .filter(|(t, _)| *t >= range.from && *t <= range.to + (range.to - range.from) / 4)
                .map(|(t, p)| (*t, p.lo.max(0.0), p.hi.max(0.0)))
                .collect()
        })
        .unwrap_or_default();
    svg_response(move || render(&series, &band, range)).await
}

fn steps(values: &[(i64, Option<f64>)], step: i64) -> Vec<Vec<(i64, f64)>> {
    segments(values, step)
        .into_iter()
        .map(|seg| {
            let mut out = Vec::with_capacity(seg.len() * 2);
            for (i, &(t, v)) in seg.iter().enumerate() {
                if i > 0 {
                    out.push((t, seg[i - 1].1));
                }
                out.push((t, v));
            }
            out
        })
        .collect()
}

/// Draws a policy's chart (see the module docs) as an SVG document.
pub fn render(series: &PolicySeries, band: &[(i64, f64, f64)], range: ChartRange) -> Result<String, String> {
    let d = &series.decided;
    let y_max = d
        .iter()
        .flat_map(|p| [p.load, p.capacity, p.forecast_peak])
        .flatten()
        .chain(band.iter().map(|b| b.2))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
    let r_max = f64::from(d.iter().map(|p| p.replicas).max().unwrap_or(1).max(1)) * 1.25;
    let x_end = band.last().map_or(range.to, |b| b.0.max(range.to));
    // The usual spacing of decisions, for where a line breaks.
    let spacing = d
        .windows(2)
        .map(|w| w[1].ts - w[0].ts)
        .min()
        .unwrap_or(range.step)
        .max(1);
    let secs = |ms: i64| ms as f64 / 1000.0;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (range.width, range.height)).into_drawing_area();
        let e = |e: DrawingAreaErrorKind<_>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .margin_top(10)
            .margin_right(6)
            .x_label_area_size(26)
            .y_label_area_size(48)
            .right_y_label_area_size(34)
            .build_cartesian_2d(secs(range.from)..secs(x_end), 0.0..y_max)
            .map_err(e)?
            .set_secondary_coord(secs(range.from)..secs(x_end), 0.0..r_max);
        draw_time_axis(&root, &mut chart, range, x_end, y_max)?;
        let label_font = ("sans-serif", 14).into_font().color(&RGBColor(71, 85, 105));
        let r_fmt = |v: &f64| {
            if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        };
        chart
            .configure_secondary_axes()
            .y_labels((r_max.ceil() as usize + 1).min(8))
            .y_label_formatter(&r_fmt)
            .axis_style(RGBColor(148, 163, 184))
            .label_style(label_font)
            .draw()
            .map_err(e)?;

        if !band.is_empty() {
            let poly: Vec<(f64, f64)> = band
                .iter()
                .map(|b| (secs(b.0), b.2))
                .chain(band.iter().rev().map(|b| (secs(b.0), b.1)))
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(poly, FORECAST.mix(0.12).filled())))
                .map_err(e)?
                .label("forecast, 95 % band")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], FORECAST.mix(0.2).filled()));
        }
        for mark in &series.heals {
            let (t, colour, dashed) = match *mark {
                HealMark::Restart(t) => (t, RESTART, false),
                HealMark::HeldBack(t) => (t, HELD_BACK, true),
            };
            let line = [(secs(t), 0.0), (secs(t), y_max)];
            if dashed {
                chart
                    .draw_series(DashedLineSeries::new(line, 5, 4, colour.stroke_width(2)))
                    .map_err(e)?;
            } else {
                chart
                    .draw_series(std::iter::once(PathElement::new(line, colour.stroke_width(2))))
                    .map_err(e)?;
            }
        }
        if !d.is_empty() {
            legend(&mut chart, "load (req/s)", LOAD, false)?;
            legend(&mut chart, "capacity (req/s)", CAPACITY, false)?;
        }
        if d.iter().any(|p| p.forecast_peak.is_some()) {
            legend(&mut chart, "forecast peak (req/s)", FORECAST, true)?;
        }
        if !d.is_empty() {
            legend(&mut chart, "replicas (right axis)", REPLICAS, false)?;
        }
        if series.heals.iter().any(|m| matches!(m, HealMark::Restart(_))) {
            legend(&mut chart, "pod restarted", RESTART, false)?;
        }
        if series.heals.iter().any(|m| matches!(m, HealMark::HeldBack(_))) {
            legend(&mut chart, "restart held back", HELD_BACK, true)?;
        }
        let line = |f: fn(&Decided) -> Option<f64>| -> Vec<(i64, Option<f64>)> {
            d.iter().map(|p| (p.ts, f(p))).collect()
        };
        for seg in segments(&line(|p| p.load), spacing) {
            chart
                .draw_series(LineSeries::new(
                    seg.iter().map(|(t, v)| (secs(*t), *v)),
                    LOAD.stroke_width(2),
                ))
                .map_err(e)?;
        }
        for seg in steps(&line(|p| p.capacity), spacing) {
            chart
                .draw_series(LineSeries::new(
                    seg.iter().map(|(t, v)| (secs(*t), *v)),
                    CAPACITY.stroke_width(2),
                ))
                .map_err(e)?;
        }
        let peaks = line(|p| p.forecast_peak);
        if peaks.iter().any(|(_, v)| v.is_some()) {
            for seg in segments(&peaks, spacing) {
                chart
                    .draw_series(DashedLineSeries::new(
                        seg.iter().map(|(t, v)| (secs(*t), *v)),
                        6,
                        4,
                        FORECAST.stroke_width(2),
                    ))
                    .map_err(e)?;
            }
        }
        let replicas: Vec<(i64, Option<f64>)> =
            d.iter().map(|p| (p.ts, Some(f64::from(p.replicas)))).collect();
        for seg in steps(&replicas, spacing) {
            chart
                .draw_secondary_series(LineSeries::new(
                    seg.iter().map(|(t, v)| (secs(*t), *v)),
                    REPLICAS.stroke_width(3),
                ))
                .map_err(e)?;
        }
        if d.is_empty() {
            draw_note(&root, range, "no scaling decision in this range")?;
        }
        draw_legend(chart.configure_series_labels())?;
        root.present().map_err(e)?;
    }
    Ok(svg)
}

/// A legend entry with no series of its own: a line (or a dash) of `colour`.
fn legend(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    label: &str,
    colour: RGBColor,
    dashed: bool,
) -> Result<(), String> {
    chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
        .map_err(|e| e.to_string())?
        .label(label)
        .legend(move |(x, y)| {
            let len = if dashed { 5 } else { 16 };
            PathElement::new(vec![(x, y), (x + len, y)], colour.stroke_width(2))
        });
    Ok(())
}

fn draw_note(root: &DrawingArea<SVGBackend<'_>, Shift>, range: ChartRange, text: &str) -> Result<(), String> {
    root.draw(&Text::new(
        text,
        ((range.width / 2) as i32, (range.height / 2) as i32),
        ("sans-serif", 16)
            .into_font()
            .color(&RGBColor(100, 116, 139))
            .pos(Pos::new(HPos::Center, VPos::Center)),
    ))
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use tidewatch_scaler::behavior::ScaleHistory;
    use tidewatch_scaler::crd::{Healing, ServicePolicySpec};
    use tidewatch_scaler::decide::{ForecastInput, Inputs, PodLoad, decide};
    use tidewatch_scaler::heal::HealInputs;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn scale(ts: i64, replicas: u32, rate: f64) -> Record {
        let spec: ServicePolicySpec = serde_json::from_value(serde_json::json!({
            "targetRef": {"name": "web"}, "service": "web", "maxReplicas": 9,
            "capacity": {"requestsPerReplica": 10}
        }))
        .unwrap();
        let inputs = Inputs {
            now_ms: ts,
            current_replicas: replicas,
            pods: (0..replicas)
                .map(|i| PodLoad {
                    name: format!("web-{i}"),
                    rate: Some(rate),
                    ready: true,
                })
                .collect(),
            capacity: Some(10.0),
            forecast: Some(ForecastInput {
                model: "holt_winters".into(),
                mase: Some(0.5),
                peak_upper: Some(rate * f64::from(replicas) * 1.5),
                peak_mean: None,
                calibration: None,
            }),
            last_scale_ms: None,
            history: ScaleHistory::default(),
        };
        let (decision, _) = decide(&spec, &inputs);
        Record {
            seq: 0,
            ts_ms: ts,
            policy: "shop/web".into(),
            service: "web".into(),
            action: "none".into(),
            outcome: "ok".into(),
            entry: Entry::Scale {
                spec: Box::new(spec),
                inputs: Box::new(inputs),
                decision,
            },
        }
    }

    fn heal(ts: i64, decision: HealDecision) -> Record {
        Record {
            seq: 0,
            ts_ms: ts,
            policy: "shop/web".into(),
            service: "web".into(),
            action: "held back".into(),
            outcome: "ok".into(),
            entry: Entry::Heal {
                healing: Healing::default(),
                inputs: Box::new(HealInputs {
                    now_ms: ts,
                    service: "web".into(),
                    causes: vec![],
                    pods: vec![],
                    ready_pods: 2,
                    restarts: vec![],
                }),
                decision,
            },
        }
    }

    fn range() -> ChartRange {
        ChartRange {
            from: NOW - 600_000,
            to: NOW,
            step: 5_000,
            tz: 0,
            width: 720,
            height: 260,
        }
    }

    #[test]
    fn series_come_from_the_logged_inputs_and_decisions() {
        let records = vec![
            scale(NOW - 900_000, 2, 5.0), // before the range
            scale(NOW - 60_000, 2, 12.0),
            heal(
                NOW - 45_000,
                HealDecision::HeldBack {
                    pod: "web-1".into(),
                    reason: "budget".into(),
                },
            ),
            heal(
                NOW - 40_000,
                HealDecision::None {
                    reason: String::new(),
                },
            ),
            scale(NOW - 30_000, 3, 9.0),
        ];
        let s = PolicySeries::from_records(&records, NOW - 600_000, NOW);
        assert_eq!(s.service.as_deref(), Some("web"));
        assert_eq!(s.decided.len(), 2);
        let first = &s.decided[0];
        assert_eq!((first.load, first.capacity), (Some(24.0), Some(20.0)));
        assert_eq!(first.forecast_peak, Some(36.0));
        assert!(
            first.replicas > 2,
            "12 req/s per pod over a capacity of 10 scales up: {first:?}"
        );
        assert_eq!(s.heals, vec![HealMark::HeldBack(NOW - 45_000)]);
    }

    #[test]
    fn charts_draw_replicas_load_capacity_and_marks() {
        let records: Vec<Record> = (0..10)
            .map(|i| scale(NOW - 300_000 + i * 15_000, 2 + (i as u32) / 3, 8.0))
            .chain([heal(
                NOW - 100_000,
                HealDecision::Restart {
                    pod: "web-0".into(),
                    reason: "slow pod".into(),
                },
            )])
            .collect();
        let s = PolicySeries::from_records(&records, NOW - 600_000, NOW);
        let band = vec![(NOW - 10_000, 10.0, 30.0), (NOW + 60_000, 12.0, 40.0)];
        let svg = render(&s, &band, range()).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for label in [
            "load (req/s)",
            "capacity (req/s)",
            "forecast peak (req/s)",
            "replicas (right axis)",
            "forecast, 95 % band",
            "pod restarted",
        ] {
            assert!(svg.contains(label), "{label}: {svg}");
        }
        assert!(!svg.contains("restart held back"));
        assert!(svg.contains("<polygon"), "band: {svg}");
        let empty = render(&PolicySeries::default(), &[], range()).unwrap();
        assert!(empty.contains("no scaling decision in this range"));
    }

    #[test]
    fn steps_hold_until_the_next_value() {
        let v = [(0, Some(1.0)), (10, Some(3.0)), (20, Some(2.0))];
        assert_eq!(
            steps(&v, 10),
            vec![vec![(0, 1.0), (10, 1.0), (10, 3.0), (20, 3.0), (20, 2.0)]]
        );
    }
}
