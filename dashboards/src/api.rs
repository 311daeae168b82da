//! The JSON API, read from the analyzer's history:
//!
//! - `GET /api/services?window=5m`: every service with its RED over the window
//! - `GET /api/services/{name}/red?from=&to=&step=`: a service's RED over time
//! - `GET /api/services/{name}/operations?window=` and `/pods?window=`: its breakdowns
//! - `GET /api/graph?window=5m`: the dependency map, `{"nodes":[{"id",…}],"edges":[{"source","target",…}]}`
//! - `GET /api/series?service=&name=[&pod=]&from=&to=&step=`: a metric's values over time
//!
//! Times are `now`, a relative duration (`-15m`), Unix seconds, or RFC 3339. Bad parameters get 400 and
//! unknown services or metrics 404, each with `{"error": "…"}`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tidewatch_analyzer::budget::BudgetStatus;
use tidewatch_analyzer::engine::Health;
use tidewatch_analyzer::forecast::Forecast;
use tidewatch_analyzer::health::HealthReport;
use tidewatch_analyzer::rootcause::{Cause, ServiceState};
use tidewatch_analyzer::store::{HistoryView, OperationKey, PodKey, RedPoint, RedSummary, SeriesPoint};

use crate::WebState;

/// An API error: status and message, answered as `{"error": message}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorAnswer { error: self.1 })).into_response()
    }
}

impl ApiError {
    /// What the answer's `error` says.
    pub fn message(self) -> String {
        self.1
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn store_err(e: tidewatch_analyzer::Error) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// `{"error": "…"}`.
#[derive(Serialize)]
struct ErrorAnswer {
    error: String,
}

/// `/api/services`: every service (as `name`) with its RED over the window.
#[derive(Serialize)]
pub struct ServicesAnswer {
    window_ms: i64,
    services: Vec<RedSummary<Named>>,
}

/// A service named `name` in a list of services.
#[derive(Serialize)]
pub struct Named {
    name: String,
}

/// `/api/services/{name}/red`.
#[derive(Serialize)]
pub struct RedAnswer {
    service: String,
    from: i64,
    to: i64,
    step_ms: i64,
    points: Vec<RedPoint>,
}

/// `/api/services/{name}/operations`.
#[derive(Serialize)]
pub struct OperationsAnswer {
    service: String,
    window_ms: i64,
    operations: Vec<RedSummary<OperationKey>>,
}

/// `/api/services/{name}/pods`.
#[derive(Serialize)]
pub struct PodsAnswer {
    service: String,
    window_ms: i64,
    pods: Vec<RedSummary<PodKey>>,
}

/// `/api/graph`: the dependency map.
#[derive(Serialize)]
pub struct GraphAnswer {
    window_ms: i64,
    nodes: Vec<RedSummary<Node>>,
    edges: Vec<RedSummary<Link>>,
    /// `null` on `--role analyze`, whose engine follows the partitions' counts and admits no series.
    series_budget: Option<BudgetStatus>,
}

/// A node of the map: a service, or a virtual node (a database, `user`, an uninstrumented peer).
#[derive(Serialize)]
pub struct Node {
    id: String,
    #[serde(rename = "virtual")]
    is_virtual: bool,
}

/// An edge of the map, from client (`source`) to server (`target`).
#[derive(Serialize)]
pub struct Link {
    source: String,
    target: String,
    connection_type: String,
}

/// `/api/series`.
#[derive(Serialize)]
pub struct SeriesAnswer {
    service: String,
    name: String,
    pod: Option<String>,
    from: i64,
    to: i64,
    step_ms: i64,
    points: Vec<SeriesPoint>,
}

/// `/api/anomalies`.
#[derive(Serialize)]
pub struct AnomaliesAnswer {
    ts: i64,
    anomalies: Vec<ServiceState>,
    causes: Vec<Cause>,
    services: Vec<ServiceState>,
    recent: Vec<HealthReport>,
}

/// `/api/services/{name}/forecast`.
#[derive(Serialize)]
pub struct ForecastAnswer {
    service: String,
    pub(crate) model: &'static str,
    mase: Option<f64>,
    periods: Vec<usize>,
    step_ms: i64,
    history_points: usize,
    pub(crate) forecast: Vec<ForecastPoint>,
}

/// One step of a forecast: the rate and its 95 % interval, never below zero.
#[derive(Serialize)]
pub struct ForecastPoint {
    pub(crate) ts: i64,
    pub(crate) rate: f64,
    pub(crate) lo: f64,
    pub(crate) hi: f64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Parses a time parameter (see the module docs) into milliseconds since the epoch.
pub fn parse_time(s: &str, now: i64) -> Result<i64, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Some(rel) = s.strip_prefix('-') {
        let d = humantime::parse_duration(rel).map_err(|e| format!("`{s}`: {e}"))?;
        // Saturating: an absurd duration is a time long ago, not an overflow.
        return Ok(now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
    }
    if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() {
            return Err(format!("`{s}` is not a time"));
        }
        // `as` saturates at the i64 range.
        return Ok((secs * 1000.0) as i64);
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64))
        .map_err(|_| format!("`{s}` is not a time: use now, -15m, Unix seconds or RFC 3339"))
}

fn parse_window(w: Option<&str>, default: Duration) -> Result<i64, ApiError> {
    let d = match w {
        None => default,
        Some(w) => humantime::parse_duration(w).map_err(|e| bad(format!("window `{w}`: {e}")))?,
    };
    if d.is_zero() {
        return Err(bad("window must be longer than zero"));
    }
    Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Deserialize)]
pub struct WindowQuery {
    window: Option<String>,
}

#[derive(Deserialize)]
pub struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
}

/// The most points one series answer may hold.
const MAX_POINTS: i64 = 11_000;

/// A validated `from`, `to` and `step` (default: the last hour in about 120 steps, at least 10 s).
fn range(q: &RangeQuery) -> Result<(i64, i64, i64), ApiError> {
    let now = now_ms();
    let to =
        q.to.as_deref()
            .map_or(Ok(now), |t| parse_time(t, now))
            .map_err(bad)?;
    let from = q
        .from
        .as_deref()
        .map_or(Ok(to - 3_600_000), |f| parse_time(f, now))
        .map_err(bad)?;
    if from >= to {
        return Err(bad("from must be before to"));
    }
    let step = match q.step.as_deref() {
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| bad(format!("step `{s}`: {e}")))?
            .as_millis()
            .min(i64::MAX as u128) as i64,
        None => (to.saturating_sub(from) / 120).max(10_000),
    };
    if step <= 0 {
        return Err(bad("step must be longer than zero"));
    }
    if to.saturating_sub(from) / step > MAX_POINTS {
        return Err(bad(format!(
            "from..to over step gives more than {MAX_POINTS} points: use a longer step"
        )));
    }
    Ok((from, to, step))
}

fn known_service(h: &HistoryView, name: &str) -> Result<(), ApiError> {
    if h.has_service(name) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no service named `{name}` in the history"),
        ))
    }
}

pub async fn services(State(s): State<WebState>, Query(q): Query<WindowQuery>) -> ApiResult<ServicesAnswer> {
    let window = parse_window(q.window.as_deref(), Duration::from_secs(300))?;
    let now = now_ms();
    let list = s
        .engine
        .history()
        .services(now.saturating_sub(window), now)
        .map_err(store_err)?;
    let services = list
        .iter()
        .map(|r| {
            r.with_key(Named {
                name: r.key.service.clone(),
            })
        })
        .collect();
    Ok(Json(ServicesAnswer {
        window_ms: window,
        services,
    }))
}

pub async fn service_red(
    State(s): State<WebState>,
    Path(name): Path<String>,
    Query(q): Query<RangeQuery>,
) -> ApiResult<RedAnswer> {
    let (from, to, step) = range(&q)?;
    let h = s.engine.history();
    known_service(&h, &name)?;
    let points = h.service_red(&name, from, to, step).map_err(store_err)?;
    Ok(Json(RedAnswer {
        service: name,
        from,
        to,
        step_ms: step,
        points,
    }))
}

/// A per-service breakdown of the history (`HistoryView::operations` or `pods`): service, from, to.
type Breakdown<K> = fn(&HistoryView, &str, i64, i64) -> tidewatch_analyzer::Result<Vec<RedSummary<K>>>;

/// A known service's window (`window`, default 5 minutes) of `rows` from the history.
fn breakdown<K>(
    s: &WebState,
    name: &str,
    q: &WindowQuery,
    rows: Breakdown<K>,
) -> Result<(i64, Vec<RedSummary<K>>), ApiError> {
    let window = parse_window(q.window.as_deref(), Duration::from_secs(300))?;
    let h = s.engine.history();
    known_service(&h, name)?;
    let now = now_ms();
    let list = rows(&h, name, now.saturating_sub(window), now).map_err(store_err)?;
    Ok((window, list))
}

pub async fn operations(
    State(s): State<WebState>,
    Path(name): Path<String>,
    Query(q): Query<WindowQuery>,
) -> ApiResult<OperationsAnswer> {
    let (window_ms, operations) = breakdown(&s, &name, &q, HistoryView::operations)?;
    Ok(Json(OperationsAnswer {
        service: name,
        window_ms,
        operations,
    }))
}

pub async fn pods(
    State(s): State<WebState>,
    Path(name): Path<String>,
    Query(q): Query<WindowQuery>,
) -> ApiResult<PodsAnswer> {
    let (window_ms, pods) = breakdown(&s, &name, &q, HistoryView::pods)?;
    Ok(Json(PodsAnswer {
        service: name,
        window_ms,
        pods,
    }))
}

/// The map: every service and virtual node as a node with its RED, every edge with the RED of its calls.
/// A node's RED is that of its own entry spans; a virtual node (a database, `user`, an uninstrumented
/// peer) has none, so it shows what its callers saw.
pub async fn graph(State(s): State<WebState>, Query(q): Query<WindowQuery>) -> ApiResult<GraphAnswer> {
    let window = parse_window(q.window.as_deref(), Duration::from_secs(300))?;
    let now = now_ms();
    let h = s.engine.history();
    let services = h.services(now.saturating_sub(window), now).map_err(store_err)?;
    let edges = h.edges(now.saturating_sub(window), now).map_err(store_err)?;
    let mut nodes: BTreeMap<&str, RedSummary<Node>> = BTreeMap::new();
    for svc in &services {
        let node = Node {
            id: svc.key.service.clone(),
            is_virtual: false,
        };
        nodes.insert(&svc.key.service, svc.with_key(node));
    }
    let mut incoming: BTreeMap<&str, Vec<&RedSummary<_>>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for e in &edges {
        incoming.entry(&e.key.server).or_default().push(e);
        ids.insert(e.key.client.as_str());
        ids.insert(e.key.server.as_str());
    }
    for id in ids {
        nodes
            .entry(id)
            .or_insert_with(|| virtual_node(id, incoming.get(id).map(Vec::as_slice).unwrap_or_default()));
    }
    let links = edges
        .iter()
        .map(|e| {
            e.with_key(Link {
                source: e.key.client.clone(),
                target: e.key.server.clone(),
                connection_type: e.key.connection_type.clone(),
            })
        })
        .collect();
    Ok(Json(GraphAnswer {
        window_ms: window,
        nodes: nodes.into_values().collect(),
        edges: links,
        series_budget: s.engine.series_budget(),
    }))
}

/// A node without spans of its own: what its callers saw (rates and counts summed, the worst p95).
fn virtual_node<K>(id: &str, calls: &[&RedSummary<K>]) -> RedSummary<Node> {
    let requests: f64 = calls.iter().map(|c| c.requests).sum();
    let errors: f64 = calls.iter().map(|c| c.errors).sum();
    RedSummary {
        key: Node {
            id: id.to_owned(),
            is_virtual: true,
        },
        requests,
        rate: calls.iter().map(|c| c.rate).sum(),
        errors,
        error_ratio: if requests > 0.0 { errors / requests } else { 0.0 },
        p95_ms: calls.iter().filter_map(|c| c.p95_ms).reduce(f64::max),
    }
}

#[derive(Deserialize)]
pub struct SeriesQuery {
    service: Option<String>,
    name: Option<String>,
    pod: Option<String>,
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
}

pub async fn series(State(s): State<WebState>, Query(q): Query<SeriesQuery>) -> ApiResult<SeriesAnswer> {
    let (Some(service), Some(name)) = (q.service.as_deref(), q.name.as_deref()) else {
        return Err(bad("service and name are required"));
    };
    let (from, to, step) = range(&RangeQuery {
        from: q.from.clone(),
        to: q.to.clone(),
        step: q.step.clone(),
    })?;
    let h = s.engine.history();
    if !h
        .metric_names(service)
        .map_err(store_err)?
        .iter()
        .any(|n| n == name)
    {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no metric `{name}` for service `{service}`"),
        ));
    }
    let points = h
        .series(service, q.pod.as_deref(), name, from, to, step)
        .map_err(store_err)?;
    Ok(Json(SeriesAnswer {
        service: service.to_owned(),
        name: name.to_owned(),
        pod: q.pod.clone(),
        from,
        to,
        step_ms: step,
        points,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("-15m", now), Ok(now - 900_000));
        assert_eq!(parse_time("1700000000", now), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z", now), Ok(1_700_000_000_000));
        assert!(parse_time("yesterday", now).is_err());
        // Absurd but parseable: saturates rather than overflowing; past what humantime reads: an error.
        assert!(parse_time("-500000000y", now).unwrap() < -9_000_000_000_000_000_000);
        assert!(parse_time("-100000000000000y", now).is_err());
        assert!(parse_time("NaN", now).is_err());
    }

    #[test]
    fn ranges_are_checked() {
        let q = |f: &str, t: &str, s: Option<&str>| RangeQuery {
            from: Some(f.into()),
            to: Some(t.into()),
            step: s.map(Into::into),
        };
        assert!(range(&q("-1h", "now", None)).is_ok());
        assert!(range(&q("now", "-1h", None)).is_err());
        assert!(range(&q("-30d", "now", Some("1s"))).is_err());
        assert!(range(&q("-1h", "now", Some("0s"))).is_err());
    }
}

/// `GET /api/anomalies`: every scored service with its score now, the likely causes with their
/// explanations, and the recent window closes that had causes.
pub async fn anomalies(State(s): State<WebState>) -> ApiResult<AnomaliesAnswer> {
    let h: std::sync::Arc<Health> = s.engine.health();
    Ok(Json(AnomaliesAnswer {
        ts: h.current.ts,
        anomalies: h
            .current
            .services
            .iter()
            .filter(|s| s.anomalous)
            .cloned()
            .collect(),
        causes: h.current.causes.clone(),
        services: h.current.services.clone(),
        recent: h.recent.clone(),
    }))
}

#[derive(Deserialize)]
pub struct ForecastQuery {
    horizon: Option<String>,
    step: Option<String>,
    history: Option<String>,
}

/// `GET /api/services/{name}/forecast?horizon=30m&step=1m&history=24h`: the service's request rate
/// forecast with 95 % intervals. The model is chosen per call the way the scheduled trainer chooses it
/// (`tidewatch_analyzer::forecast::select_and_forecast`), on this call's step and horizon.
pub async fn forecast(
    State(s): State<WebState>,
    Path(name): Path<String>,
    Query(q): Query<ForecastQuery>,
) -> ApiResult<ForecastAnswer> {
    use tidewatch_analyzer::forecast::{detect_periods, select_and_forecast};
    let dur = |v: Option<&str>, d: u64, what: &str| -> Result<i64, ApiError> {
        let d = match v {
            Some(v) => humantime::parse_duration(v).map_err(|e| bad(format!("{what} `{v}`: {e}")))?,
            None => Duration::from_secs(d),
        };
        if d.is_zero() {
            return Err(bad(format!("{what} must be longer than zero")));
        }
        Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    };
    let step = dur(q.step.as_deref(), 60, "step")?;
    let horizon = dur(q.horizon.as_deref(), 1800, "horizon")?;
    let history = dur(q.history.as_deref(), 86_400, "history")?;
    let steps = (horizon / step).max(1) as usize;
    if steps > 1000 || history / step > 20_000 {
        return Err(bad("horizon or history too long for the step"));
    }
    let h = s.engine.history();
    known_service(&h, &name)?;
    let now = now_ms();
    let points = h
        .service_red(&name, now.saturating_sub(history), now, step)
        .map_err(store_err)?;
    // The last bucket is still filling: leave it out.
    let y: Vec<f64> = points.iter().filter(|p| p.ts <= now).map(|p| p.rate).collect();
    let last_ts = points.iter().rfind(|p| p.ts <= now).map(|p| p.ts);
    let periods = detect_periods(&y, step as f64 / 1000.0);
    let m = periods.first().copied().unwrap_or(1);
    let n = y.len();
    if n < 3 * m.max(8) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "not enough history to forecast `{name}` yet (learning: {n} of {} points of {step} ms)",
                3 * m.max(8)
            ),
        ));
    }
    // The trainer's model choice (`select_and_forecast`), off the async workers: backtests take a while.
    let fitted = tokio::task::spawn_blocking(move || select_and_forecast(&y, step as f64 / 1000.0, steps))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (model, mase, forecasts) = fitted;
    let start = last_ts.unwrap_or(now);
    let forecast = forecasts
        .iter()
        .enumerate()
        .map(|(i, f): (usize, &Forecast)| ForecastPoint {
            ts: start + (i as i64 + 1) * step,
            rate: f.mean.max(0.0),
            lo: f.lo.max(0.0),
            hi: f.hi.max(0.0),
        })
        .collect();
    Ok(Json(ForecastAnswer {
        service: name,
        model,
        mase,
        periods,
        step_ms: step,
        history_points: n,
        forecast,
    }))
}
