//! The web UI, served by Tidewatch itself on the web port so that a cluster needs nothing else to look at
//! what it sees:
//!
//! - `GET /`: the overview (the dependency map, the services erroring most now, the collector's health)
//! - `GET /map`: the dependency map alone, full screen
//! - `GET /services/{name}`: a service's page (RED charts, operations, pods, neighbours)
//! - `GET /scaling`: the operator's policies, their replicas against load, capacity and forecast
//!   (`scaling.rs` draws the charts), its decision log, and the recent incidents
//! - `GET /charts/services/{name}/{rate|errors|latency}.svg?from=&to=&step=&tz=&w=&h=[&forecast=1]`: a
//!   chart, with the anomaly detector's flags and (rate) the forecast, drawn here with
//!   plotters so that the browser only has to show an SVG
//! - `GET /ui/{file}`: the page scripts and styles
//!
//! Every asset is compiled into the binary (`include_str!`): nothing is fetched from the internet, so the
//! UI works in an air-gapped cluster and is always the version of the binary serving it. The pages are
//! static HTML; their scripts read the JSON API (`api.rs`) and `/metrics`, so the UI shows nothing the API
//! does not, and the map's layout runs in the browser, which is where pan, zoom and selection live.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;
use tidewatch_analyzer::store::RedPoint;

use crate::WebState;
use crate::api::parse_time;

const OVERVIEW_HTML: &str = include_str!("../assets/overview.html");
const MAP_HTML: &str = include_str!("../assets/map.html");
const SERVICE_HTML: &str = include_str!("../assets/service.html");
const SCALING_HTML: &str = include_str!("../assets/scaling.html");
const NOT_FOUND_HTML: &str = include_str!("../assets/not_found.html");

/// The files under `/ui/`: name, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../assets/app.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/common.js"),
    ),
    (
        "map.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/map.js"),
    ),
    (
        "overview.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/overview.js"),
    ),
    (
        "service.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/service.js"),
    ),
    (
        "scaling.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/scaling.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../assets/favicon.svg"),
    ),
];

/// Pages and assets change only with the binary; `no-cache` still lets the browser revalidate, so an
/// upgrade is seen at the next load instead of after some expiry.
const CACHE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-cache");

pub async fn overview() -> Response {
    ([CACHE], Html(OVERVIEW_HTML)).into_response()
}

pub async fn map() -> Response {
    ([CACHE], Html(MAP_HTML)).into_response()
}

pub async fn scaling() -> Response {
    ([CACHE], Html(SCALING_HTML)).into_response()
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, ctype, body)) => ([(header::CONTENT_TYPE, *ctype), CACHE], *body).into_response(),
        None => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    }
}

/// Escapes text for HTML element content and attribute values.
fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [CACHE],
        Html(NOT_FOUND_HTML.replace("{{WHAT}}", &escape_html(what))),
    )
        .into_response()
}

/// A page for every service the history has seen (`HistoryView::has_service`). Virtual nodes (databases,
/// `user`, uninstrumented peers) are not services: they have no spans of their own, so no page.
pub async fn service(State(s): State<WebState>, Path(name): Path<String>) -> Response {
    if s.engine.history().has_service(&name) {
        (
            [CACHE],
            Html(SERVICE_HTML.replace("{{SERVICE}}", &escape_html(&name))),
        )
            .into_response()
    } else {
        not_found(&format!("no service named “{name}” in the history"))
    }
}

/// What a chart shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Requests per second.
    Rate,
    /// Failed requests as a percentage of all.
    Errors,
    /// p50, p95 and p99 in milliseconds.
    Latency,
}

impl Metric {
    fn from_file(file: &str) -> Option<Metric> {
        match file.strip_suffix(".svg")? {
            "rate" => Some(Metric::Rate),
            "errors" => Some(Metric::Errors),
            "latency" => Some(Metric::Latency),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
pub struct ChartQuery {
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
    /// The viewer's offset from UTC in minutes (east positive), so the axis shows their clock.
    tz: Option<String>,
    /// Size in pixels: the page asks for the size of its box, so text is drawn at the size it is read.
    w: Option<String>,
    h: Option<String>,
    /// `1`: draw the request-rate forecast after the range (rate chart only).
    forecast: Option<String>,
}

/// 2100-01-01 in milliseconds: the latest time a chart accepts.
const LATEST: i64 = 4_102_444_800_000;

/// The most points a chart draws: more is finer than its pixels.
const MAX_CHART_POINTS: i64 = 2_000;

/// A chart's validated time axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChartRange {
    pub from: i64,
    pub to: i64,
    pub step: i64,
    /// Offset from UTC in milliseconds, for the labels only.
    pub tz: i64,
    pub width: u32,
    pub height: u32,
}

/// A time parameter as the API reads it (`parse_time`), except that a relative time too far back for
/// the arithmetic is an error here rather than an overflow.
fn time_arg(s: &str, now: i64) -> Result<i64, String> {
    if let Some(rel) = s.trim().strip_prefix('-')
        && let Ok(d) = humantime::parse_duration(rel)
    {
        return i64::try_from(d.as_millis())
            .ok()
            .and_then(|ms| now.checked_sub(ms))
            .ok_or_else(|| format!("`{s}` is too far back"));
    }
    parse_time(s, now)
}

/// Reads `from`, `to`, `step` and `tz`; by default the last hour in about 120 steps of at least a second.
pub fn chart_range(q: &ChartQuery, now: i64) -> Result<ChartRange, String> {
    let to = q.to.as_deref().map_or(Ok(now), |t| time_arg(t, now))?;
    let from = q
        .from
        .as_deref()
        .map_or(Ok(to.saturating_sub(3_600_000)), |f| time_arg(f, now))?;
    // Bounded times keep every later sum and product far from overflow, whatever the query says.
    if !(0..=LATEST).contains(&from) || !(0..=LATEST).contains(&to) {
        return Err("from and to must be between 1970 and 2100".into());
    }
    if from >= to {
        return Err("from must be before to".into());
    }
    let step = match q.step.as_deref() {
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| format!("step `{s}`: {e}"))?
            .as_millis()
            .min(i64::MAX as u128) as i64,
        None => ((to - from) / 120).max(1_000),
    };
    if step <= 0 || step > to - from {
        return Err("step must be longer than zero and at most to - from".into());
    }
    if (to - from) / step > MAX_CHART_POINTS {
        return Err(format!(
            "from..to over step gives more than {MAX_CHART_POINTS} points: use a longer step"
        ));
    }
    let tz = match q.tz.as_deref() {
        None => 0,
        Some(t) => match t.trim().parse::<i64>() {
            Ok(m) if m.abs() <= 18 * 60 => m * 60_000,
            _ => return Err(format!("tz `{t}`: minutes east of UTC, -1080 to 1080")),
        },
    };
    let size = |v: Option<&str>, name: &str, default: u32, max: u32| match v {
        None => Ok(default),
        Some(t) => match t.trim().parse::<u32>() {
            Ok(n) if (MIN_SIDE..=max).contains(&n) => Ok(n),
            _ => Err(format!("{name} `{t}`: pixels, {MIN_SIDE} to {max}")),
        },
    };
    let width = size(q.w.as_deref(), "w", WIDTH, 2400)?;
    let height = size(q.h.as_deref(), "h", HEIGHT, 1200)?;
    Ok(ChartRange {
        from,
        to,
        step,
        tz,
        width,
        height,
    })
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn text_error(status: StatusCode, msg: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{msg}\n"),
    )
        .into_response()
}

pub async fn chart(
    State(s): State<WebState>,
    Path((name, file)): Path<(String, String)>,
    Query(q): Query<ChartQuery>,
) -> Response {
    let Some(metric) = Metric::from_file(&file) else {
        return text_error(
            StatusCode::NOT_FOUND,
            format!("no chart `{file}`: rate.svg, errors.svg or latency.svg"),
        );
    };
    let range = match chart_range(&q, now_ms()) {
        Ok(r) => r,
        Err(e) => return text_error(StatusCode::BAD_REQUEST, e),
    };
    let h = s.engine.history();
    if !h.has_service(&name) {
        return text_error(
            StatusCode::NOT_FOUND,
            format!("no service named `{name}` in the history"),
        );
    }
    let mut extras = Extras {
        anomalies: anomaly_times(&s, &name),
        forecast: None,
    };
    if metric == Metric::Rate && q.forecast.as_deref().is_some_and(|f| f == "1" || f == "true") {
        extras.forecast = Some(forecast(&s, &name, range).await);
    }
    // Polars and plotters both work for a while on a long range: keep them off the async workers.
    svg_response(move || {
        let points = h
            .service_red(&name, range.from, range.to, range.step)
            .map_err(|e| e.to_string())?;
        render_chart(metric, &points, range, &extras)
    })
    .await
}

/// Renders a chart on a blocking thread and answers it as an uncached SVG, or its error as text.
pub(crate) async fn svg_response(
    render: impl FnOnce() -> Result<String, String> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(render).await {
        Ok(Ok(svg)) => (
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            svg,
        )
            .into_response(),
        Ok(Err(e)) => text_error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => text_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// When the anomaly detector flagged `service`, from its current report and the recent ones it keeps.
fn anomaly_times(s: &WebState, service: &str) -> Vec<i64> {
    let health = s.engine.health();
    let mut ts: Vec<i64> = std::iter::once(&health.current)
        .chain(&health.recent)
        .filter(|r| r.services.iter().any(|x| x.service == service && x.anomalous))
        .map(|r| r.ts)
        .collect();
    ts.sort_unstable();
    ts.dedup();
    ts
}

/// The request-rate forecast for a chart: the JSON API's own forecast (`/api/services/{name}/forecast`,
/// the model picked by backtest), one chart step apart, a quarter of the range ahead, fitted on the
/// range (at least an hour of history when there is one).
async fn forecast(s: &WebState, service: &str, range: ChartRange) -> Result<Forecast, String> {
    let span = range.to - range.from;
    let query = serde_json::json!({
        "step": format!("{}ms", range.step),
        "horizon": format!("{}ms", (span / 4).max(range.step)),
        "history": format!("{}ms", span.max(3_600_000).min(range.step * 20_000)),
    });
    let q = serde_json::from_value(query).map_err(|e| e.to_string())?;
    let v = match crate::api::forecast(State(s.clone()), Path(service.to_owned()), Query(q)).await {
        Ok(answer) => answer.0,
        // The API's own message: while a service's history is too short it says how far along it is
        // ("learning: 14 of 24 points").
        Err(e) => return Err(e.message()),
    };
    let points = v.forecast.iter().map(|p| (p.ts, p.rate, p.lo, p.hi)).collect();
    Ok(Forecast {
        model: v.model.to_owned(),
        points,
    })
}

/// Default chart size in pixels (the SVG has a viewBox, so it also scales), and the smallest side that
/// still leaves room for the axes.
const WIDTH: u32 = 720;
const HEIGHT: u32 = 240;
const MIN_SIDE: u32 = 160;

/// One line of a chart; times in milliseconds since the epoch.
struct Line {
    label: &'static str,
    color: RGBColor,
    values: Vec<(i64, Option<f64>)>,
}

/// Tick times (milliseconds) on round clock values in the viewer's zone (every 10 s, 5 min, 1 h…), fewer
/// than `max` of them, so the axis reads 10:05, 10:10 rather than wherever the range happens to start;
/// with the interval between them.
fn time_ticks(from: i64, to: i64, tz: i64, max: i64) -> (i64, Vec<i64>) {
    const STEPS: [i64; 20] = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400,
        172_800, 604_800,
    ];
    let span = to - from;
    let every = STEPS
        .iter()
        .map(|s| s * 1000)
        .find(|s| span / s < max.max(1))
        .unwrap_or(span.max(1));
    let first = (from + tz).div_euclid(every) * every + every - tz;
    let ticks = (0..)
        .map(|i| first + i * every)
        .take_while(|t| *t <= to)
        .collect();
    (every, ticks)
}

/// A chart's lines from the points.
fn lines(metric: Metric, points: &[RedPoint]) -> Vec<Line> {
    let series = |label, color, f: &dyn Fn(&RedPoint) -> Option<f64>| Line {
        label,
        color,
        values: points.iter().map(|p| (p.ts, f(p))).collect(),
    };
    match metric {
        Metric::Rate => vec![series("requests/s", RGBColor(37, 99, 235), &|p| Some(p.rate))],
        Metric::Errors => vec![series("errors %", RGBColor(220, 38, 38), &|p| {
            (p.requests > 0.0).then_some(p.error_ratio * 100.0)
        })],
        Metric::Latency => vec![
            series("p50", RGBColor(22, 163, 74), &|p| p.p50_ms),
            series("p95", RGBColor(217, 119, 6), &|p| p.p95_ms),
            series("p99", RGBColor(220, 38, 38), &|p| p.p99_ms),
        ],
    }
}

/// `HH:MM` of a time shifted by `tz`, or `HH:MM:SS` when ticks are under a minute apart. No date: the
/// page says which range it shows, so the date would only crowd the axis.
fn time_label(ts: i64, seconds: bool, tz: i64) -> String {
    let secs = (ts + tz).div_euclid(1000).rem_euclid(86_400);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if seconds {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}")
    }
}

/// A short number for an axis: 0.5, 12, 1.2k, 3.4M.
pub(crate) fn short_number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A request-rate forecast past the end of the range: (time in ms, mean, low, high), 95 % interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Forecast {
    pub model: String,
    pub points: Vec<(i64, f64, f64, f64)>,
}

/// What a chart shows besides the service's own series.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extras {
    /// The forecast, or why there is none (shown on the chart, so an absent band is explained).
    pub forecast: Option<Result<Forecast, String>>,
    /// Window closes (ms) at which the anomaly detector flagged the service.
    pub anomalies: Vec<i64>,
}

const FORECAST: RGBColor = RGBColor(37, 99, 235);
const ANOMALY: RGBColor = RGBColor(124, 58, 237);

/// A chart's axes: the y axis with short numbers and grid lines, and below the x axis (seconds since the
/// epoch) round clock times with their grid lines, drawn here since plotters would put its labels
/// wherever the range happens to start.
pub(crate) fn draw_time_axis(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    range: ChartRange,
    x_end: i64,
    y_max: f64,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let (every, ticks) = time_ticks(range.from, x_end, range.tz, i64::from(range.width / 75));
    let y_fmt = |v: &f64| short_number(*v);
    let grid = RGBColor(226, 232, 240);
    let label_font = ("sans-serif", 14).into_font().color(&RGBColor(71, 85, 105));
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels((range.height / 50).clamp(2, 10) as usize)
        .max_light_lines(0)
        .y_label_formatter(&y_fmt)
        .bold_line_style(grid)
        .axis_style(RGBColor(148, 163, 184))
        .label_style(label_font.clone())
        .draw()
        .map_err(e)?;
    let below = label_font.pos(Pos::new(HPos::Center, VPos::Top));
    for t in &ticks {
        let x = *t as f64 / 1000.0;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, 0.0), (x, y_max)],
                grid,
            )))
            .map_err(e)?;
        let (px, py) = chart.backend_coord(&(x, 0.0));
        root.draw(&Text::new(
            time_label(*t, every < 60_000, range.tz),
            (px, py + 6),
            below.clone(),
        ))
        .map_err(e)?;
    }
    Ok(())
}

/// Draws a chart of `metric` over `range` as an SVG document, with the forecast after the range's end
/// and the anomalies marked. A gap in the data breaks the line (see [`segments`]), so missing data shows
/// as missing rather than as a straight line across it.
pub fn render_chart(
    metric: Metric,
    points: &[RedPoint],
    range: ChartRange,
    extras: &Extras,
) -> Result<String, String> {
    let lines = lines(metric, points);
    let forecast = match &extras.forecast {
        Some(Ok(f)) if !f.points.is_empty() => Some(f),
        _ => None,
    };
    let max = lines
        .iter()
        .flat_map(|l| l.values.iter().filter_map(|(_, v)| *v))
        .chain(forecast.iter().flat_map(|f| f.points.iter().map(|p| p.3)))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let y_max = match metric {
        // An error ratio of a few percent should not fill the chart as if everything failed.
        Metric::Errors => (max * 1.15).clamp(5.0, 100.0),
        _ if max > 0.0 => max * 1.15,
        _ => 1.0,
    };
    // With a forecast, the time axis runs on to its end.
    let x_end = forecast
        .and_then(|f| f.points.last())
        .map_or(range.to, |p| p.0.max(range.to));
    let mut svg = String::new();
    {
        let (width, height) = (range.width, range.height);
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        let e = |e: DrawingAreaErrorKind<_>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        // The x axis is in seconds as f64: plotters' i64 axis overflows on epoch milliseconds.
        let secs = |ms: i64| ms as f64 / 1000.0;
        let mut chart = ChartBuilder::on(&root)
            .margin_top(10)
            .margin_right(18)
            .x_label_area_size(26)
            .y_label_area_size(48)
            .build_cartesian_2d(secs(range.from)..secs(x_end), 0.0..y_max)
            .map_err(e)?;
        draw_time_axis(&root, &mut chart, range, x_end, y_max)?;
        let mut legend = lines.len() > 1;
        // Anomalies first, so the lines are drawn over them: a band one step wide at each flagged window.
        let marks: Vec<i64> = extras
            .anomalies
            .iter()
            .copied()
            .filter(|t| (range.from..=range.to).contains(t))
            .collect();
        if !marks.is_empty() {
            legend = true;
            let half = (range.step / 2).max(500);
            chart
                .draw_series(marks.iter().map(|t| {
                    Rectangle::new(
                        [(secs(t - half), 0.0), (secs(t + half), y_max)],
                        ANOMALY.mix(0.18).filled(),
                    )
                }))
                .map_err(e)?
                .label("anomaly")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], ANOMALY.mix(0.3).filled()));
        }
        if let Some(f) = forecast {
            legend = true;
            let band: Vec<(f64, f64)> = f
                .points
                .iter()
                .map(|p| (secs(p.0), p.3))
                .chain(f.points.iter().rev().map(|p| (secs(p.0), p.2)))
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(band, FORECAST.mix(0.12).filled())))
                .map_err(e)?
                .label("95 % interval")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], FORECAST.mix(0.2).filled()));
            chart
                .draw_series(DashedLineSeries::new(
                    f.points.iter().map(|p| (secs(p.0), p.1)),
                    6,
                    4,
                    FORECAST.stroke_width(2),
                ))
                .map_err(e)?
                .label(format!("forecast ({})", f.model))
                .legend(|(x, y)| {
                    PathElement::new(
                        vec![(x, y), (x + 6, y), (x + 10, y), (x + 16, y)],
                        FORECAST.stroke_width(2),
                    )
                });
            // "now": where the measured series ends and the forecast begins.
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(secs(range.to), 0.0), (secs(range.to), y_max)],
                    RGBColor(148, 163, 184).stroke_width(1),
                )))
                .map_err(e)?;
        }
        let has_data = lines.iter().any(|l| l.values.iter().any(|(_, v)| v.is_some()));
        if !has_data {
            root.draw(&Text::new(
                "no data in this range",
                ((width / 2) as i32 - 70, (height / 2) as i32 - 10),
                ("sans-serif", 16).into_font().color(&RGBColor(100, 116, 139)),
            ))
            .map_err(e)?;
        }
        if let Some(Err(why)) = &extras.forecast {
            root.draw(&Text::new(
                format!("no forecast: {why}"),
                (width as i32 - 22, 14),
                ("sans-serif", 12)
                    .into_font()
                    .color(&RGBColor(100, 116, 139))
                    .pos(Pos::new(HPos::Right, VPos::Top)),
            ))
            .map_err(e)?;
        }
        for line in &lines {
            let style = ShapeStyle::from(&line.color).stroke_width(2);
            for segment in segments(&line.values, range.step) {
                if segment.len() == 1 {
                    chart
                        .draw_series(
                            segment
                                .iter()
                                .map(|(t, v)| Circle::new((secs(*t), *v), 3, style.filled())),
                        )
                        .map_err(e)?;
                } else {
                    chart
                        .draw_series(LineSeries::new(
                            segment.iter().map(|(t, v)| (secs(*t), *v)),
                            style,
                        ))
                        .map_err(e)?;
                }
            }
            // The legend entry: one invisible series carrying the label.
            if legend {
                let color = line.color;
                chart
                    .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
                    .map_err(e)?
                    .label(line.label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            }
        }
        if legend {
            draw_legend(chart.configure_series_labels())?;
        }
        root.present().map_err(e)?;
    }
    Ok(svg)
}

/// Draws a chart's legend as every chart here has it: upper left, on a translucent white box.
pub(crate) fn draw_legend<'a, 'b, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    mut labels: plotters::chart::SeriesLabelStyle<'a, 'b, DB, CT>,
) -> Result<(), String> {
    labels
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(226, 232, 240))
        .label_font(("sans-serif", 13).into_font().color(&RGBColor(51, 65, 85)))
        .draw()
        .map_err(|e| e.to_string())
}

/// Runs of consecutive points with values, split where a value is missing or where the gap to the next
/// point is well over the usual spacing. The spacing is measured rather than taken from `step`, because a
/// step shorter than the analyzer's window (which the page cannot know) leaves every other bucket empty.
pub(crate) fn segments(values: &[(i64, Option<f64>)], step: i64) -> Vec<Vec<(i64, f64)>> {
    let present: Vec<i64> = values
        .iter()
        .filter(|(_, v)| v.is_some_and(f64::is_finite))
        .map(|(t, _)| *t)
        .collect();
    let mut gaps: Vec<i64> = present.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    let usual = gaps.get(gaps.len() / 2).copied().unwrap_or(step).max(step);
    let max_gap = usual.saturating_mul(5) / 2;
    let mut out: Vec<Vec<(i64, f64)>> = Vec::new();
    let mut cur: Vec<(i64, f64)> = Vec::new();
    for &(ts, v) in values {
        match v.filter(|v| v.is_finite()) {
            Some(v) => {
                if cur.last().is_some_and(|(last, _)| ts - last > max_gap) {
                    out.push(std::mem::take(&mut cur));
                }
                cur.push((ts, v));
            }
            None => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(from: Option<&str>, to: Option<&str>, step: Option<&str>, tz: Option<&str>) -> ChartQuery {
        ChartQuery {
            from: from.map(Into::into),
            to: to.map(Into::into),
            step: step.map(Into::into),
            tz: tz.map(Into::into),
            w: None,
            h: None,
            forecast: None,
        }
    }

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn chart_ranges_are_checked() {
        let r = chart_range(&q(None, None, None, None), NOW).unwrap();
        assert_eq!((r.from, r.to, r.step, r.tz), (NOW - 3_600_000, NOW, 30_000, 0));
        assert_eq!((r.width, r.height), (WIDTH, HEIGHT));
        let r = chart_range(&q(Some("-5m"), None, Some("2s"), Some("-120")), NOW).unwrap();
        assert_eq!((r.step, r.tz), (2_000, -7_200_000));
        for bad in [
            q(Some("now"), Some("-1h"), None, None),
            q(Some("yesterday"), None, None, None),
            q(Some("-30d"), None, Some("1s"), None),
            q(None, None, Some("0s"), None),
            q(None, None, Some("soon"), None),
            q(None, None, None, Some("Europe/Paris")),
            q(None, None, None, Some("100000")),
            q(Some("-1e300"), None, None, None),
            q(Some("-100000000000000y"), None, None, None),
            q(None, Some("1e300"), None, None),
            q(Some("-1h"), None, Some("100000000d"), None),
            ChartQuery {
                w: Some("5".into()),
                ..q(None, None, None, None)
            },
            ChartQuery {
                h: Some("tall".into()),
                ..q(None, None, None, None)
            },
        ] {
            assert!(chart_range(&bad, NOW).is_err());
        }
        let sized = ChartQuery {
            w: Some("480".into()),
            h: Some("200".into()),
            ..q(None, None, None, None)
        };
        let r = chart_range(&sized, NOW).unwrap();
        assert_eq!((r.width, r.height), (480, 200));
    }

    #[test]
    fn chart_files_are_known() {
        assert_eq!(Metric::from_file("rate.svg"), Some(Metric::Rate));
        assert_eq!(Metric::from_file("latency.svg"), Some(Metric::Latency));
        assert_eq!(Metric::from_file("latency"), None);
        assert_eq!(Metric::from_file("cpu.svg"), None);
    }

    fn point(ts: i64, rate: f64) -> RedPoint {
        RedPoint {
            ts,
            requests: rate * 10.0,
            rate,
            errors: rate,
            error_ratio: 0.1,
            p50_ms: Some(5.0),
            p95_ms: Some(20.0),
            p99_ms: None,
        }
    }

    #[test]
    fn charts_draw_lines_and_break_at_gaps() {
        let range = ChartRange {
            from: NOW - 100_000,
            to: NOW,
            step: 10_000,
            tz: 0,
            width: WIDTH,
            height: HEIGHT,
        };
        let pts: Vec<RedPoint> = [-90, -80, -70, -20, -10]
            .iter()
            .map(|s| point(NOW + s * 1000, 3.0))
            .collect();
        let svg = render_chart(Metric::Rate, &pts, range, &Extras::default()).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("viewBox"), "{svg}");
        // Two runs, so two lines (the axes are polylines too, one pixel wide).
        let lines = svg
            .lines()
            .filter(|l| l.starts_with("<polyline") && l.contains("stroke-width=\"2\""));
        assert_eq!(lines.count(), 2, "{svg}");
        let svg = render_chart(Metric::Latency, &pts, range, &Extras::default()).unwrap();
        assert!(
            svg.contains("\np95\n") && svg.contains("\np99\n"),
            "legend: {svg}"
        );
        // A forecast after the range and anomaly bands inside it.
        let extras = Extras {
            forecast: Some(Ok(Forecast {
                model: "holt-winters".into(),
                points: (1..=5).map(|i| (NOW + i * 10_000, 3.0, 2.0, 4.0)).collect(),
            })),
            anomalies: vec![NOW - 20_000, NOW - 500_000],
        };
        let svg = render_chart(Metric::Rate, &pts, range, &extras).unwrap();
        assert!(svg.contains("<polygon"), "interval band: {svg}");
        assert!(
            svg.contains("forecast (holt-winters)") && svg.contains("\nanomaly\n"),
            "legend: {svg}"
        );
        // One anomaly is inside the range, one before it.
        assert_eq!(
            svg.matches("fill=\"#7C3AED\"").count(),
            2,
            "band and legend: {svg}"
        );
        let why = Extras {
            forecast: Some(Err("not enough history yet".into())),
            anomalies: vec![],
        };
        let svg = render_chart(Metric::Rate, &pts, range, &why).unwrap();
        assert!(svg.contains("no forecast: not enough history yet"));
        let empty = render_chart(Metric::Errors, &[], range, &Extras::default()).unwrap();
        assert!(empty.contains("no data in this range"));
    }

    #[test]
    fn ticks_fall_on_round_times() {
        // 22:13:20 UTC; an hour at most 8 ticks: every 10 minutes, at :20, :30…
        let (every, t) = time_ticks(NOW - 3_600_000, NOW, 0, 8);
        assert_eq!(every, 600_000);
        assert_eq!(t.len(), 6, "{t:?}");
        assert!(t.iter().all(|t| t % 600_000 == 0));
        // An hour ahead of UTC moves nothing on a 10-minute grid; 30 minutes ahead shifts it.
        let (_, half) = time_ticks(NOW - 3_600_000, NOW, 1_800_000, 8);
        assert!(half.iter().all(|t| (t + 1_800_000) % 600_000 == 0));
        assert!(time_ticks(NOW - 5_000, NOW, 0, 8).1.len() >= 2);
        // A real range of epoch milliseconds renders (plotters' i64 axis overflowed on these).
        let range = ChartRange {
            from: NOW - 300_000,
            to: NOW,
            step: 3_000,
            tz: 0,
            width: 400,
            height: 240,
        };
        assert!(
            render_chart(
                Metric::Rate,
                &[point(NOW - 3_000, 1.0), point(NOW, 2.0)],
                range,
                &Extras::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn labels_and_escapes() {
        assert_eq!(time_label(NOW, true, 0), "22:13:20");
        assert_eq!(time_label(NOW, false, 3_600_000), "23:13");
        assert_eq!(short_number(1234.0), "1.2k");
        assert_eq!(short_number(0.25), "0.25");
        assert_eq!(
            escape_html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
