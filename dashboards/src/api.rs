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
use serde::Deserialize;
use serde_json::{Value, json};
use tidewatch_analyzer::store::{HistoryView, RedSummary};

use crate::WebState;

/// An API error: status and message, answered as `{"error": message}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn store_err(e: tidewatch_analyzer::Error) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

type ApiResult = Result<Json<Value>, ApiError>;

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

fn summary_json(s: &RedSummary) -> Value {
    let mut v = json!({
        "requests": s.requests,
        "rate": s.rate,
        "errors": s.errors,
        "error_ratio": s.error_ratio,
        "p95_ms": s.p95_ms,
    });
    for (k, val) in &s.key {
        v[k] = json!(val);
    }
    v
}

fn known_service(h: &HistoryView, name: &str) -> Result<(), ApiError> {
    let all = h.services(i64::MIN, i64::MAX).map_err(store_err)?;
    if all.iter().any(|s| s.key[0].1 == name) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no service named `{name}` in the history"),
        ))
    }
}

pub async fn services(State(s): State<WebState>, Query(q): Query<WindowQuery>) -> ApiResult {
    let window = parse_window(q.window.as_deref(), Duration::from_secs(300))?;
    let now = now_ms();
    let list = s
        .engine
        .history()
        .services(now.saturating_sub(window), now)
        .map_err(store_err)?;
    let services: Vec<Value> = list
        .iter()
        .map(|r| {
            let mut v = summary_json(r);
            v["name"] = v["service"].take();
            v.as_object_mut().map(|o| o.remove("service"));
            v
        })
        .collect();
    Ok(Json(json!({ "window_ms": window, "services": services })))
}

pub async fn service_red(
    State(s): State<WebState>,
    Path(name): Path<String>,
    Query(q): Query<RangeQuery>,
) -> ApiResult {
    let (from, to, step) = range(&q)?;
    let h = s.engine.history();
    known_service(&h, &name)?;
    let points = h.service_red(&name, from, to, step).map_err(store_err)?;
    Ok(Json(
        json!({ "service": name, "from": from, "to": to, "step_ms": step, "points": points }),
    ))
}

/// A per-service breakdown over a window (`operations` or `pods`), read by `rows` from the history.
fn breakdown(
    s: &WebState,
    name: &str,
    q: &WindowQuery,
    field: &str,
    rows: fn(&HistoryView, &str, i64, i64) -> tidewatch_analyzer::Result<Vec<RedSummary>>,
) -> ApiResult {
    let window = parse_window(q.window.as_deref(), Duration::from_secs(300))?;
    let h = s.engine.history();
    known_service(&h, name)?;
    let now = now_ms();
    let list: Vec<Value> = rows(&h, name, now.saturating_sub(window), now)
        .map_err(store_err)?
        .iter()
        .map(summary_json)
        .collect();
    Ok(Json(json!({ "service": name, "window_ms": window, field: list })))
}

pub async fn operations(
    State(s): State<WebState>,
    Path(name): Path<String>,
    Query(q): Query<WindowQuery>,
) -> ApiResult {
    breakdown(&s, &name, &q, "operations", HistoryView::operations)
}

pub async fn pods(
    State(s): State<WebState>,
    Path(name): Path<String>,
    Query(q): Query<WindowQuery>,
) -> ApiResult {
    breakdown(&s, &name, &q, "pods", HistoryView::pods)
}

/// The map: every service and virtual node as a node with its RED, every edge with the RED of its calls.
/// A node's RED is that of its own entry spans; a virtual node (a database, `user`, an uninstrumented
/// peer) has none, so it shows what its callers saw.
pub async fn graph(State(s): State<WebState>, Query(q): Query<WindowQuery>) -> ApiResult {
    let window = parse_window(q.window.as_deref(), Duration::from_secs(300))?;
    let now = now_ms();
    let h = s.engine.history();
    let services = h.services(now.saturating_sub(window), now).map_err(store_err)?;
    let edges = h.edges(now.saturating_sub(window), now).map_err(store_err)?;
    let mut nodes: BTreeMap<String, Value> = BTreeMap::new();
    for svc in &services {
        let mut v = summary_json(svc);
        v.as_object_mut().map(|o| o.remove("service"));
        v["id"] = json!(svc.key[0].1);
        v["virtual"] = json!(false);
        nodes.insert(svc.key[0].1.clone(), v);
    }
    let mut incoming: BTreeMap<String, Vec<&RedSummary>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    let edge_json: Vec<Value> = edges
        .iter()
        .map(|e| {
            let get = |k: &str| {
                e.key
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let (client, server) = (get("client"), get("server"));
            incoming.entry(server.clone()).or_default().push(e);
            ids.insert(client.clone());
            ids.insert(server.clone());
            let mut v = summary_json(e);
            let o = v.as_object_mut().expect("object");
            o.remove("client");
            o.remove("server");
            v["source"] = json!(client);
            v["target"] = json!(server);
            v
        })
        .collect();
    for id in ids {
        nodes.entry(id.clone()).or_insert_with(|| {
            let calls = incoming.get(&id).map(Vec::as_slice).unwrap_or_default();
            let requests: f64 = calls.iter().map(|c| c.requests).sum();
            let errors: f64 = calls.iter().map(|c| c.errors).sum();
            let rate: f64 = calls.iter().map(|c| c.rate).sum();
            json!({
                "id": id, "virtual": true, "requests": requests, "rate": rate, "errors": errors,
                "error_ratio": if requests > 0.0 { errors / requests } else { 0.0 },
                "p95_ms": calls.iter().filter_map(|c| c.p95_ms).fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))),
            })
        });
    }
    let nodes: Vec<Value> = nodes.into_values().collect();
    Ok(Json(
        json!({ "window_ms": window, "nodes": nodes, "edges": edge_json, "series_budget": s.engine.series_budget() }),
    ))
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

pub async fn series(State(s): State<WebState>, Query(q): Query<SeriesQuery>) -> ApiResult {
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
    Ok(Json(
        json!({ "service": service, "name": name, "pod": q.pod, "from": from, "to": to, "step_ms": step, "points": points }),
    ))
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
pub async fn anomalies(State(s): State<WebState>) -> ApiResult {
    let h = s.engine.health();
    let anomalous: Vec<_> = h.current.services.iter().filter(|s| s.anomalous).collect();
    Ok(Json(json!({
        "ts": h.current.ts,
        "anomalies": anomalous,
        "causes": h.current.causes,
        "services": h.current.services,
        "recent": h.recent,
    })))
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
) -> ApiResult {
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
    let forecast: Vec<Value> = forecasts
        .iter()
        .enumerate()
        .map(|(i, f)| json!({"ts": start + (i as i64 + 1) * step, "rate": f.mean.max(0.0), "lo": f.lo.max(0.0), "hi": f.hi.max(0.0)}))
        .collect();
    Ok(Json(json!({
        "service": name, "model": model, "mase": mase, "periods": periods, "step_ms": step, "history_points": n,
        "forecast": forecast,
    })))
}
