//! A small shop built of microservices, as the load generator's source of realistic telemetry:
//!
//! ```text
//! user → frontend → checkout → payment → (stripe, not instrumented)
//!                       ├────→ inventory → postgres
//!                       └─kafka→ shipping
//!        frontend → inventory (browsing)
//! ```
//!
//! Each service runs a few pods. Load follows a daily cycle; incidents can be switched on for a while: a
//! latency spike in one service, an error burst in one service, one bad pod among healthy siblings, or a
//! surge of the whole shop's traffic.
//!
//! On its own (`tidewatch loadgen`) the shop's pods are fixed and their latency does not depend on load.
//! In `tidewatch demo` they are the ready pods of a simulated cluster's Deployments ([`Fleet`]), and each
//! pod is a queue ([`SimConfig::serve`]): more pods, less load per pod, lower latency; past saturation the
//! latency sits at the model's cap. (The model's failed requests are left out: with all pods equally
//! loaded they would only add noise to the per-pod error ratios the healer reads.)

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind};
use rand::Rng;
use rand::rngs::SmallRng;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tidewatch_scaler::simulate::SimConfig;

/// Services of the model, with their pod counts and their own work per request in milliseconds.
const SERVICES: [(&str, usize, f64); 5] = [
    ("frontend", 3, 4.0),
    ("checkout", 2, 6.0),
    ("payment", 2, 12.0),
    ("inventory", 3, 3.0),
    ("shipping", 2, 2.0),
];

fn service_index(name: &str) -> Option<usize> {
    SERVICES.iter().position(|(s, _, _)| *s == name)
}

/// Requests per second each service serves per trace started at the frontend: every trace enters at the
/// frontend and reaches inventory; checkouts (60 %) also reach checkout, payment and shipping.
pub const REQUESTS_PER_TRACE: [f64; 5] = [1.0, 0.6, 0.6, 1.0, 0.6];

/// Spans in one trace, on average: a checkout has 11, a browse 4.
pub const SPANS_PER_TRACE: f64 = 0.6 * 11.0 + 0.4 * 4.0;

/// How much the traffic is multiplied by during a surge.
pub const SURGE_FACTOR: f64 = 2.5;

/// How many times longer a service's own work takes during a latency incident: its callers' p95 rises
/// well past what a surge does to them (a surge slows pods at most 5x their idle work before the
/// scale-up), so the incident reads as new, not as a repeat of the surge.
pub const LATENCY_FACTOR: f64 = 16.0;

/// The services, in the order incidents and fleets index them.
pub fn services() -> impl Iterator<Item = (&'static str, usize, f64)> {
    SERVICES.iter().copied()
}

/// Where the shop's pods come from when they are not fixed: the pods of each service that serve now.
pub trait Fleet: Send + Sync {
    fn ready_pods(&self, service: &str) -> Vec<String>;
}

/// Pods backed by a fleet, each a queue.
pub struct Queueing {
    pub fleet: Arc<dyn Fleet>,
    /// Per service (in [`services`] order): its per-pod queueing model; `base_latency_ms` is the
    /// service's own work.
    pub models: Vec<SimConfig>,
    /// Traces per second at the daily mean. Each service's load is the shop's offered load at the
    /// moment (this times the traffic factor and its requests per trace), as in `tidewatch simulate`:
    /// not what the sender managed to send, so a sender that stalls and catches up on a busy machine
    /// does not look like a burst of load to the queues.
    pub traces_per_s: f64,
}

/// What goes wrong during an incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncidentKind {
    /// The service's own work takes [`LATENCY_FACTOR`] times longer.
    Latency,
    /// 30% of the service's requests fail.
    Errors,
    /// One pod of the service fails half its requests and is 5x slower; its siblings are healthy. A
    /// restart cures it: the pod that replaces it is healthy.
    BadPod,
    /// The whole shop's traffic is [`SURGE_FACTOR`] times its usual (`surge`, or `surge:frontend`).
    Surge,
}

/// An incident: `latency:payment`, `errors:checkout@30s`, `bad-pod:inventory@1m+2m`, `surge@20s+1m`
/// (kind, service, start after the load begins, duration; by default from the start to the end).
#[derive(Clone, Debug, PartialEq)]
pub struct Incident {
    pub kind: IncidentKind,
    pub service: usize,
    pub start: Duration,
    pub duration: Option<Duration>,
}

impl FromStr for Incident {
    type Err = String;

    fn from_str(s: &str) -> Result<Incident, String> {
        let (what, when) = s.split_once('@').unwrap_or((s, ""));
        let (kind, svc) = match what.split_once(':') {
            Some(pair) => pair,
            // The whole shop's traffic enters at the frontend.
            None if what == "surge" => ("surge", SERVICES[0].0),
            None => return Err("expected KIND:SERVICE[@START[+DURATION]]".into()),
        };
        let kind = match kind {
            "latency" => IncidentKind::Latency,
            "errors" => IncidentKind::Errors,
            "bad-pod" => IncidentKind::BadPod,
            "surge" if svc == SERVICES[0].0 => IncidentKind::Surge,
            "surge" => {
                return Err(format!(
                    "a surge enters at {}: `surge:{}`",
                    SERVICES[0].0, SERVICES[0].0
                ));
            }
            k => {
                return Err(format!(
                    "unknown incident kind `{k}` (latency, errors, bad-pod, surge)"
                ));
            }
        };
        let names: Vec<_> = SERVICES.iter().map(|s| s.0).collect();
        let service =
            service_index(svc).ok_or_else(|| format!("unknown service `{svc}` (one of {names:?})"))?;
        let parse = |d: &str| humantime::parse_duration(d).map_err(|e| format!("`{d}`: {e}"));
        let (start, duration) = match when.split_once('+') {
            _ if when.is_empty() => (Duration::ZERO, None),
            Some((a, b)) => (parse(a)?, Some(parse(b)?)),
            None => (parse(when)?, None),
        };
        Ok(Incident {
            kind,
            service,
            start,
            duration,
        })
    }
}

impl std::fmt::Display for Incident {
    /// As it parses: `KIND:SERVICE@START[+DURATION]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            IncidentKind::Latency => "latency",
            IncidentKind::Errors => "errors",
            IncidentKind::BadPod => "bad-pod",
            IncidentKind::Surge => "surge",
        };
        let service = SERVICES.get(self.service).map_or("?", |s| s.0);
        write!(f, "{kind}:{service}@{}", humantime::format_duration(self.start))?;
        if let Some(d) = self.duration {
            write!(f, "+{}", humantime::format_duration(d))?;
        }
        Ok(())
    }
}

impl Incident {
    fn active(&self, elapsed: Duration) -> bool {
        elapsed >= self.start && self.duration.is_none_or(|d| elapsed < self.start + d)
    }
}

/// The shop: generates whole traces, metric points and log records.
pub struct Shop {
    pub incidents: Vec<Incident>,
    /// Length of one simulated day (the load's daily cycle).
    pub day: Duration,
    /// Time of the daily cycle before `elapsed` zero (the demo's backfilled history): the cycle's phase
    /// at `elapsed` is that of `offset + elapsed`. Incidents count from `elapsed` zero.
    pub offset: Duration,
    /// Serving pods per service, by name.
    pods: Vec<Vec<String>>,
    queueing: Option<Queueing>,
    /// The pod each bad-pod incident hit (by incident index), once it has started.
    bad: BTreeMap<usize, String>,
    /// Requests served and failed per pod since the start (for the cumulative request counter and the
    /// error logs).
    served: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

/// One span placed in the model: which service and pod emitted it.
struct Placed {
    service: usize,
    pod: usize,
    span: Span,
}

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

impl Shop {
    pub fn new(incidents: Vec<Incident>, day: Duration, rng: &mut SmallRng) -> Shop {
        let pods: Vec<Vec<String>> = SERVICES
            .iter()
            .map(|(name, n, _)| {
                let rs: u32 = rng.random();
                (0..*n)
                    .map(|i| format!("{name}-{rs:08x}-{}", ["a1b2c", "d3e4f", "g5h6i", "j7k8l"][i % 4]))
                    .collect()
            })
            .collect();
        Shop {
            incidents,
            day,
            offset: Duration::ZERO,
            pods,
            queueing: None,
            bad: BTreeMap::new(),
            served: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    /// A shop whose pods are the fleet's, each a queue.
    pub fn with_queueing(incidents: Vec<Incident>, day: Duration, queueing: Queueing) -> Shop {
        let mut shop = Shop::new(
            incidents,
            day,
            &mut <SmallRng as rand::SeedableRng>::seed_from_u64(0),
        );
        shop.queueing = Some(queueing);
        shop.refresh();
        shop
    }

    /// Takes the fleet's serving pods (a no-op for fixed pods).
    fn refresh(&mut self) {
        if let Some(q) = &self.queueing {
            for (i, (name, _, _)) in SERVICES.iter().enumerate() {
                let ready = q.fleet.ready_pods(name);
                // With no pod serving, requests stay with the last ones seen (the healer never restarts
                // the last ready pod, and a Deployment keeps at least one).
                if !ready.is_empty() {
                    self.pods[i] = ready;
                }
            }
        }
    }

    pub fn service_names() -> Vec<&'static str> {
        SERVICES.iter().map(|s| s.0).collect()
    }

    /// The daily cycle's load factor at `elapsed`: it starts at the daily mean (1.0), peaks at 1.6 a quarter
    /// day later and bottoms out at 0.4 three quarters in.
    pub fn load_factor(&self, elapsed: Duration) -> f64 {
        let phase = (self.offset + elapsed).as_secs_f64() / self.day.as_secs_f64().max(1e-9);
        1.0 + 0.6 * (std::f64::consts::TAU * phase).sin()
    }

    /// The traffic's factor at `elapsed`: the daily cycle, times [`SURGE_FACTOR`] during a surge.
    pub fn traffic_factor(&self, elapsed: Duration) -> f64 {
        let surge = self
            .incidents
            .iter()
            .any(|i| i.kind == IncidentKind::Surge && i.active(elapsed));
        self.load_factor(elapsed) * if surge { SURGE_FACTOR } else { 1.0 }
    }

    fn active(&self, elapsed: Duration, service: usize, kind: IncidentKind) -> bool {
        self.incidents
            .iter()
            .any(|i| i.service == service && i.kind == kind && i.active(elapsed))
    }

    /// A bad-pod incident that starts hits the service's first serving pod, and stays with that pod.
    fn pick_bad_pods(&mut self, elapsed: Duration) {
        for (i, inc) in self.incidents.iter().enumerate() {
            if inc.kind == IncidentKind::BadPod
                && inc.active(elapsed)
                && !self.bad.contains_key(&i)
                && let Some(first) = self.pods[inc.service].first()
            {
                self.bad.insert(i, first.clone());
            }
        }
    }

    /// Whether `pod` of `service` is hit by an active bad-pod incident.
    fn is_bad(&self, elapsed: Duration, service: usize, pod: &str) -> bool {
        self.incidents.iter().enumerate().any(|(i, inc)| {
            inc.kind == IncidentKind::BadPod
                && inc.service == service
                && inc.active(elapsed)
                && self.bad.get(&i).is_some_and(|p| p == pod)
        })
    }

    /// How many times its idle work `service`'s own work takes under the offered load at `elapsed` (1
    /// without queueing).
    fn queue(&self, service: usize, elapsed: Duration) -> f64 {
        let Some(q) = &self.queueing else {
            return 1.0;
        };
        let Some(model) = q.models.get(service) else {
            return 1.0;
        };
        let load = q.traces_per_s * self.traffic_factor(elapsed) * REQUESTS_PER_TRACE[service];
        let (latency, _) = model.serve(load, self.pods[service].len());
        latency / model.base_latency_ms
    }

    /// One request's trace, with spans timed from `now_ns`. Returns roughly 11 spans.
    fn trace(&mut self, rng: &mut SmallRng, now_ns: u64, elapsed: Duration, out: &mut Vec<Placed>) {
        let trace_id: [u8; 16] = rng.random();
        let checkout = rng.random_bool(0.6);
        let mut ctx = Ctx {
            rng,
            trace_id,
            out,
            shop: self,
            elapsed,
        };
        if checkout {
            ctx.call(None, 0, "GET /checkout", now_ns, &|c, parent, t| {
                let mut t = c.hop(parent, 0, 1, "POST /api/checkout", t, &|c, parent, t| {
                    let mut t = c.hop(parent, 1, 2, "POST /pay", t, &|c, parent, t| {
                        c.external(parent, 2, "POST /v1/charges", "stripe", t)
                    });
                    t = c.hop(parent, 1, 3, "GET /stock", t, &|c, parent, t| {
                        c.db(parent, 3, "SELECT stock", t)
                    });
                    c.publish(parent, 1, 4, "orders", t)
                });
                t += 100_000;
                t
            });
        } else {
            ctx.call(None, 0, "GET /products", now_ns, &|c, parent, t| {
                c.hop(parent, 0, 3, "GET /products", t, &|c, parent, t| {
                    c.db(parent, 3, "SELECT products", t)
                })
            });
        }
    }

    /// A traces request of about `spans` spans (whole traces), resources grouped by service and pod.
    pub fn traces(
        &mut self,
        rng: &mut SmallRng,
        spans: usize,
        now_ns: u64,
        elapsed: Duration,
    ) -> ExportTraceServiceRequest {
        self.refresh();
        self.pick_bad_pods(elapsed);
        let mut placed = Vec::with_capacity(spans + 16);
        while placed.len() < spans {
            self.trace(rng, now_ns, elapsed, &mut placed);
        }
        let mut groups: Vec<((usize, usize), Vec<Span>)> = Vec::new();
        for p in placed {
            match groups.iter_mut().find(|(k, _)| *k == (p.service, p.pod)) {
                Some((_, v)) => v.push(p.span),
                None => groups.push(((p.service, p.pod), vec![p.span])),
            }
        }
        ExportTraceServiceRequest {
            resource_spans: groups
                .into_iter()
                .map(|((svc, pod), spans)| ResourceSpans {
                    resource: Some(self.resource(svc, pod)),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "tidewatch-loadgen".into(),
                            ..Default::default()
                        }),
                        spans,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                })
                .collect(),
        }
    }

    fn resource(&self, svc: usize, pod: usize) -> Resource {
        Resource {
            attributes: vec![
                kv("service.name", s(SERVICES[svc].0)),
                kv("service.namespace", s("shop")),
                kv("k8s.namespace.name", s("shop")),
                kv("k8s.pod.name", s(&self.pods[svc][pod])),
                kv("service.version", s("1.4.2")),
            ],
            ..Default::default()
        }
    }

    /// Per pod: CPU utilisation (gauge), memory (gauge) and requests served (cumulative sum).
    pub fn metrics(
        &mut self,
        rng: &mut SmallRng,
        now_ns: u64,
        start_ns: u64,
        elapsed: Duration,
    ) -> ExportMetricsServiceRequest {
        self.refresh();
        let load = self.load_factor(elapsed);
        let mut resource_metrics = Vec::new();
        for (svc, pods) in self.pods.iter().enumerate() {
            for (pod, name) in pods.iter().enumerate() {
                let bad = self.is_bad(elapsed, svc, name);
                let cpu = (0.25 * load + rng.random_range(0.0..0.05) + if bad { 0.4 } else { 0.0 }).min(1.0);
                let point = |v: number_data_point::Value, start| NumberDataPoint {
                    start_time_unix_nano: start,
                    time_unix_nano: now_ns,
                    value: Some(v),
                    ..Default::default()
                };
                let gauge = |name: &str, unit: &str, v: f64| Metric {
                    name: name.into(),
                    unit: unit.into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![point(number_data_point::Value::AsDouble(v), 0)],
                    })),
                    ..Default::default()
                };
                resource_metrics.push(ResourceMetrics {
                    resource: Some(self.resource(svc, pod)),
                    scope_metrics: vec![ScopeMetrics {
                        metrics: vec![
                            gauge("container.cpu.utilization", "1", cpu),
                            gauge(
                                "container.memory.usage",
                                "By",
                                120e6 + 80e6 * load + rng.random_range(0.0..5e6),
                            ),
                            Metric {
                                name: "http.server.request.count".into(),
                                unit: "{request}".into(),
                                data: Some(Data::Sum(Sum {
                                    data_points: vec![point(
                                        number_data_point::Value::AsInt(
                                            self.served.get(name).copied().unwrap_or(0) as i64,
                                        ),
                                        start_ns,
                                    )],
                                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                                    is_monotonic: true,
                                })),
                                ..Default::default()
                            },
                        ],
                        ..Default::default()
                    }],
                    schema_url: String::new(),
                });
            }
        }
        ExportMetricsServiceRequest { resource_metrics }
    }

    /// Log records for the errors served since the last call (one per error), plus a heartbeat per pod.
    pub fn logs(&mut self, now_ns: u64) -> ExportLogsServiceRequest {
        let mut resource_logs = Vec::new();
        for svc in 0..self.pods.len() {
            for pod in 0..self.pods[svc].len() {
                let errors = self.errors.remove(&self.pods[svc][pod]).unwrap_or(0);
                let record = |sev: i32, text: &str, body: &str| LogRecord {
                    time_unix_nano: now_ns,
                    observed_time_unix_nano: now_ns,
                    severity_number: sev,
                    severity_text: text.into(),
                    body: Some(AnyValue { value: Some(s(body)) }),
                    ..Default::default()
                };
                let mut records = vec![record(9, "INFO", "heartbeat")];
                records.extend((0..errors.min(1000)).map(|_| record(17, "ERROR", "request failed")));
                resource_logs.push(ResourceLogs {
                    resource: Some(self.resource(svc, pod)),
                    scope_logs: vec![ScopeLogs {
                        log_records: records,
                        ..Default::default()
                    }],
                    schema_url: String::new(),
                });
            }
        }
        ExportLogsServiceRequest { resource_logs }
    }
}

/// Builds one trace; each helper returns the end time of what it placed.
struct Ctx<'a> {
    rng: &'a mut SmallRng,
    trace_id: [u8; 16],
    out: &'a mut Vec<Placed>,
    shop: &'a mut Shop,
    elapsed: Duration,
}

type Body<'b> = dyn Fn(&mut Ctx<'_>, [u8; 8], u64) -> u64 + 'b;

impl Ctx<'_> {
    fn span_id(&mut self) -> [u8; 8] {
        let mut id: [u8; 8] = self.rng.random();
        id[0] |= 1; // never all zero
        id
    }

    /// Own work of `svc` on `pod` in nanoseconds, with the incidents and the queueing applied; and
    /// whether it failed.
    fn work(&mut self, svc: usize, pod: usize) -> (u64, bool) {
        let base = SERVICES[svc].2;
        // Log-normal noise around the base (median = base).
        let z: f64 = (0..4).map(|_| self.rng.random_range(-1.0..1.0)).sum::<f64>() * 0.35;
        let mut ms = base * z.exp() * self.shop.queue(svc, self.elapsed);
        let mut fail = self.rng.random_bool(0.002);
        if self.shop.active(self.elapsed, svc, IncidentKind::Latency) {
            ms *= LATENCY_FACTOR;
        }
        if self.shop.active(self.elapsed, svc, IncidentKind::Errors) && self.rng.random_bool(0.3) {
            fail = true;
        }
        let name = &self.shop.pods[svc][pod];
        if self.shop.is_bad(self.elapsed, svc, name) {
            ms *= 5.0;
            fail |= self.rng.random_bool(0.5);
        }
        *self.shop.served.entry(name.clone()).or_default() += 1;
        if fail {
            *self.shop.errors.entry(name.clone()).or_default() += 1;
        }
        ((ms * 1e6) as u64, fail)
    }

    fn http_attrs(method: &str, path: &str, code: i64, host: &str) -> Vec<KeyValue> {
        vec![
            kv("http.request.method", s(method)),
            kv("url.path", s(path)),
            kv("url.scheme", s("http")),
            kv("http.response.status_code", Value::IntValue(code)),
            kv("server.address", s(host)),
            kv("server.port", Value::IntValue(8080)),
            kv("network.protocol.version", s("1.1")),
            kv("user_agent.original", s("tidewatch-loadgen/0.1")),
        ]
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        svc: usize,
        pod: usize,
        id: [u8; 8],
        parent: Option<[u8; 8]>,
        name: &str,
        kind: SpanKind,
        start: u64,
        end: u64,
        fail: bool,
        attributes: Vec<KeyValue>,
    ) {
        self.out.push(Placed {
            service: svc,
            pod,
            span: Span {
                trace_id: self.trace_id.to_vec(),
                span_id: id.to_vec(),
                parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
                name: name.into(),
                kind: kind as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                status: Some(Status {
                    code: if fail { 2 } else { 0 },
                    message: if fail {
                        "internal error".into()
                    } else {
                        String::new()
                    },
                }),
                ..Default::default()
            },
        });
    }

    /// A server span of `svc` doing its work around `body`'s calls.
    fn call(&mut self, parent: Option<[u8; 8]>, svc: usize, name: &str, start: u64, body: &Body<'_>) -> u64 {
        let pod = self.rng.random_range(0..self.shop.pods[svc].len());
        let id = self.span_id();
        let (work, fail) = self.work(svc, pod);
        let before = start + work / 2;
        let after_calls = body(self, id, before);
        let end = after_calls + work / 2;
        let (method, path) = name.split_once(' ').unwrap_or(("GET", name));
        let attrs = Self::http_attrs(method, path, if fail { 500 } else { 200 }, SERVICES[svc].0);
        self.push(
            svc,
            pod,
            id,
            parent,
            name,
            SpanKind::Server,
            start,
            end,
            fail,
            attrs,
        );
        end
    }

    /// A client span in `from` calling `to`, which serves it.
    fn hop(
        &mut self,
        parent: [u8; 8],
        from: usize,
        to: usize,
        name: &str,
        start: u64,
        body: &Body<'_>,
    ) -> u64 {
        let pod = self.rng.random_range(0..self.shop.pods[from].len());
        let id = self.span_id();
        let net = 300_000 + self.rng.random_range(0..200_000);
        let before = self.out.len();
        let server_end = self.call(Some(id), to, name, start + net / 2, body);
        let fail = self.out[before..]
            .last()
            .is_some_and(|p| p.span.status.as_ref().is_some_and(|s| s.code == 2));
        let end = server_end + net / 2;
        let (method, path) = name.split_once(' ').unwrap_or(("GET", name));
        let attrs = Self::http_attrs(method, path, if fail { 500 } else { 200 }, SERVICES[to].0);
        self.push(
            from,
            pod,
            id,
            Some(parent),
            name,
            SpanKind::Client,
            start,
            end,
            fail,
            attrs,
        );
        end
    }

    /// A call to a service nobody instruments, named by `peer.service`.
    fn external(&mut self, parent: [u8; 8], from: usize, name: &str, peer: &str, start: u64) -> u64 {
        let pod = self.rng.random_range(0..self.shop.pods[from].len());
        let id = self.span_id();
        let end = start + 20_000_000 + self.rng.random_range(0..10_000_000);
        let mut attrs = Self::http_attrs("POST", "/v1/charges", 200, "api.stripe.com");
        attrs.push(kv("peer.service", s(peer)));
        self.push(
            from,
            pod,
            id,
            Some(parent),
            name,
            SpanKind::Client,
            start,
            end,
            false,
            attrs,
        );
        end
    }

    /// A PostgreSQL query.
    fn db(&mut self, parent: [u8; 8], from: usize, statement: &str, start: u64) -> u64 {
        let pod = self.rng.random_range(0..self.shop.pods[from].len());
        let id = self.span_id();
        let end = start + 1_000_000 + self.rng.random_range(0..2_000_000);
        let attrs = vec![
            kv("db.system", s("postgresql")),
            kv("db.namespace", s("shop")),
            kv("db.query.text", s(statement)),
            kv("db.operation.name", s("SELECT")),
            kv("server.address", s("postgres")),
            kv("server.port", Value::IntValue(5432)),
            kv("network.peer.address", s("10.0.3.7")),
            kv("db.user", s("shop")),
        ];
        self.push(
            from,
            pod,
            id,
            Some(parent),
            statement,
            SpanKind::Client,
            start,
            end,
            false,
            attrs,
        );
        end
    }

    /// A Kafka hop: `from` publishes to `topic`, `to` consumes a little later.
    fn publish(&mut self, parent: [u8; 8], from: usize, to: usize, topic: &str, start: u64) -> u64 {
        let pod = self.rng.random_range(0..self.shop.pods[from].len());
        let id = self.span_id();
        let end = start + 500_000;
        let attrs = |op: &str| {
            vec![
                kv("messaging.system", s("kafka")),
                kv("messaging.destination.name", s(topic)),
                kv("messaging.operation.type", s(op)),
                kv("messaging.kafka.message.key", s("order")),
                kv("messaging.client.id", s("shop")),
                kv("server.address", s("kafka")),
                kv("server.port", Value::IntValue(9092)),
                kv("network.transport", s("tcp")),
            ]
        };
        self.push(
            from,
            pod,
            id,
            Some(parent),
            &format!("{topic} publish"),
            SpanKind::Producer,
            start,
            end,
            false,
            attrs("publish"),
        );
        let cpod = self.rng.random_range(0..self.shop.pods[to].len());
        let cid = self.span_id();
        let (work, fail) = self.work(to, cpod);
        let cstart = end + 2_000_000;
        self.push(
            to,
            cpod,
            cid,
            Some(id),
            &format!("{topic} process"),
            SpanKind::Consumer,
            cstart,
            cstart + work,
            fail,
            attrs("process"),
        );
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn incidents_parse() {
        let i: Incident = "bad-pod:inventory@1m+30s".parse().unwrap();
        assert_eq!(i.kind, IncidentKind::BadPod);
        assert_eq!(
            (i.start, i.duration),
            (Duration::from_secs(60), Some(Duration::from_secs(30)))
        );
        assert!(i.active(Duration::from_secs(70)) && !i.active(Duration::from_secs(95)));
        assert!("latency:nope".parse::<Incident>().is_err());
        assert!("slow:payment".parse::<Incident>().is_err());
    }

    #[test]
    fn traces_are_whole_and_linked() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut shop = Shop::new(vec![], Duration::from_secs(86400), &mut rng);
        let req = shop.traces(&mut rng, 1000, 1_700_000_000_000_000_000, Duration::ZERO);
        let spans: Vec<&Span> = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans[0].spans)
            .collect();
        assert!(spans.len() >= 1000);
        // Every parent id refers to a span of the request: whole traces only.
        let ids: std::collections::HashSet<_> = spans.iter().map(|s| s.span_id.clone()).collect();
        assert!(
            spans
                .iter()
                .all(|s| s.parent_span_id.is_empty() || ids.contains(&s.parent_span_id))
        );
        assert!(
            spans
                .iter()
                .all(|s| s.end_time_unix_nano >= s.start_time_unix_nano)
        );
    }

    #[test]
    fn latency_incident_slows_only_its_service() {
        let mut rng = SmallRng::seed_from_u64(2);
        let inc = vec!["latency:payment".parse().unwrap()];
        let mut shop = Shop::new(inc, Duration::from_secs(86400), &mut rng);
        let req = shop.traces(&mut rng, 2000, 0, Duration::ZERO);
        let mean = |svc: &str| {
            let d: Vec<f64> = req
                .resource_spans
                .iter()
                .filter(|r| {
                    r.resource.as_ref().unwrap().attributes[0]
                        .value
                        .as_ref()
                        .unwrap()
                        .value
                        == Some(s(svc))
                })
                .flat_map(|r| &r.scope_spans[0].spans)
                .filter(|s| s.kind == SpanKind::Server as i32)
                .map(|s| (s.end_time_unix_nano - s.start_time_unix_nano) as f64)
                .collect();
            d.iter().sum::<f64>() / d.len() as f64
        };
        assert!(mean("payment") > 60e6, "{}", mean("payment"));
        assert!(mean("inventory") < 15e6, "{}", mean("inventory"));
    }
}
