//! `tidewatch loadgen`: sends the shop's telemetry ([`crate::topology`]) over OTLP/gRPC or OTLP/HTTP, at a
//! fixed span rate that follows the daily cycle, or as fast as the receiver takes it.
//!
//! One generator task encodes requests and hands them to `concurrency` sender tasks. At a fixed rate it
//! encodes as it goes (fresh timestamps and incidents); flat out it encodes a pool once and replays it, so
//! the generator is never the bottleneck being measured. Every request's outcome is counted, so a run ends
//! with sent = accepted + rejected + refused + failed.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::{BufMut, Bytes};
use clap::{Args, ValueEnum};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::mpsc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::topology::{Incident, Shop};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    Grpc,
    Http,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// Options of `tidewatch loadgen` (and of the traffic `tidewatch demo` sends itself).
#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    /// Receiver address; defaults to localhost's OTLP port of the protocol.
    #[arg(long)]
    pub endpoint: Option<String>,
    #[arg(long, value_enum, default_value = "grpc")]
    pub protocol: Protocol,
    /// Body encoding for OTLP/HTTP (gRPC is always protobuf).
    #[arg(long, value_enum, default_value = "protobuf")]
    pub encoding: Encoding,
    /// Spans per second at the daily mean; 0 sends as fast as the receiver takes it.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// How long to send; 0 runs until interrupted.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Spans per request (whole traces, so a little more).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Length of one simulated day, for the daily load cycle.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub day: Duration,
    /// Incidents to inject: latency:SERVICE, errors:SERVICE, bad-pod:SERVICE, each with an optional
    /// @START[+DURATION], e.g. `latency:payment@30s+1m`. Repeatable.
    #[arg(long = "incident")]
    pub incidents: Vec<Incident>,
    /// Also send pod metrics and logs once a second.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics_and_logs: bool,
    /// Bearer token to send.
    #[arg(long, env = "TIDEWATCH_LOADGEN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the report as JSON on the last line.
    #[arg(long)]
    pub json: bool,
}

/// What happened to what was sent.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub seconds: f64,
    pub requests: u64,
    pub spans_sent: u64,
    pub spans_accepted: u64,
    /// Rejected item by item (partial success).
    pub spans_rejected: u64,
    /// Refused for now (retryable: queue full, memory limit).
    pub spans_refused: u64,
    /// Failed otherwise (connection errors, bad request).
    pub spans_failed: u64,
    pub other_requests: u64,
    pub other_failed: u64,
    pub spans_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    other_requests: AtomicU64,
    other_failed: AtomicU64,
    latencies_us: std::sync::Mutex<Vec<u32>>,
}

/// A request ready to send.
struct Job {
    signal: Signal,
    body: Bytes,
    spans: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        }
    }

    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn encode<M: Message + serde::Serialize>(m: &M, enc: Encoding) -> Bytes {
    match enc {
        Encoding::Protobuf => m.encode_to_vec().into(),
        Encoding::Json => serde_json::to_vec(m).unwrap_or_default().into(),
    }
}

/// Sends until `duration` passes or `stop` resolves; returns the tally.
pub async fn run(args: LoadArgs, stop: impl Future<Output = ()>) -> anyhow::Result<Report> {
    run_shop(args, None, stop).await
}

/// [`run`] with a shop of the caller's (the demo's, on its simulated cluster); `None` builds one from
/// `args`.
pub async fn run_shop(
    args: LoadArgs,
    shop: Option<Shop>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Report> {
    let encoding = if args.protocol == Protocol::Grpc {
        Encoding::Protobuf
    } else {
        args.encoding
    };
    let endpoint = args.endpoint.clone().unwrap_or_else(|| match args.protocol {
        Protocol::Grpc => "http://127.0.0.1:4317".into(),
        Protocol::Http => "http://127.0.0.1:4318".into(),
    });
    let sender = Sender::connect(args.protocol, &endpoint, encoding, args.token.clone()).await?;
    let tally = Arc::new(Tally::default());
    let (tx, rx) = mpsc::channel::<Job>(args.concurrency * 2);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (rx, sender, tally) = (rx.clone(), sender.clone(), tally.clone());
        workers.spawn(async move {
            loop {
                let job = rx.lock().await.recv().await;
                let Some(job) = job else { break };
                sender.send(job, &tally).await;
            }
        });
    }
    let started = Instant::now();
    let generator = generate(args.clone(), shop, encoding, tx);
    let deadline = async {
        if args.duration.is_zero() {
            std::future::pending::<()>().await
        } else {
            tokio::time::sleep(args.duration).await
        }
    };
    tokio::select! {
        r = generator => r?,
        () = deadline => {}
        () = stop => {}
    }
    // The generator (and with it the sending side of the queue) is gone: workers finish what is queued.
    while workers.join_next().await.is_some() {}
    Ok(report(&tally, started.elapsed()))
}

async fn generate(
    args: LoadArgs,
    shop: Option<Shop>,
    encoding: Encoding,
    tx: mpsc::Sender<Job>,
) -> anyhow::Result<()> {
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let mut shop = shop.unwrap_or_else(|| Shop::new(args.incidents.clone(), args.day, &mut rng));
    let started = Instant::now();
    let start_ns = now_ns();
    let mut next_signals = started;
    let traces = |shop: &mut Shop, rng: &mut SmallRng| {
        let req = shop.traces(rng, args.batch.max(1), now_ns(), started.elapsed());
        let spans = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum();
        Job {
            signal: Signal::Traces,
            body: encode(&req, encoding),
            spans,
        }
    };
    let pool: Vec<(Bytes, u64)> = if args.rate == 0 {
        (0..32)
            .map(|_| traces(&mut shop, &mut rng))
            .map(|j| (j.body, j.spans))
            .collect()
    } else {
        Vec::new()
    };
    let mut next = tokio::time::Instant::now();
    for i in 0usize.. {
        if args.metrics_and_logs && Instant::now() >= next_signals {
            next_signals += Duration::from_secs(1);
            let now = now_ns();
            let m = shop.metrics(&mut rng, now, start_ns, started.elapsed());
            let l = shop.logs(now);
            for (signal, body) in [
                (Signal::Metrics, encode(&m, encoding)),
                (Signal::Logs, encode(&l, encoding)),
            ] {
                if tx
                    .send(Job {
                        signal,
                        body,
                        spans: 0,
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
        let job = if pool.is_empty() {
            let job = traces(&mut shop, &mut rng);
            // Pace by the spans actually generated, scaled by the daily cycle (and a surge).
            let per_sec = args.rate as f64 * shop.traffic_factor(started.elapsed());
            next += Duration::from_secs_f64(job.spans as f64 / per_sec.max(1.0));
            tokio::time::sleep_until(next).await;
            job
        } else {
            let (body, spans) = &pool[i % pool.len()];
            Job {
                signal: Signal::Traces,
                body: body.clone(),
                spans: *spans,
            }
        };
        if tx.send(job).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn report(t: &Tally, elapsed: Duration) -> Report {
    let mut lat = std::mem::take(&mut *t.latencies_us.lock().unwrap_or_else(|e| e.into_inner()));
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |&v| v as f64 / 1000.0)
    };
    let accepted = t.accepted.load(Relaxed);
    Report {
        seconds: elapsed.as_secs_f64(),
        requests: t.requests.load(Relaxed),
        spans_sent: t.sent.load(Relaxed),
        spans_accepted: accepted,
        spans_rejected: t.rejected.load(Relaxed),
        spans_refused: t.refused.load(Relaxed),
        spans_failed: t.failed.load(Relaxed),
        other_requests: t.other_requests.load(Relaxed),
        other_failed: t.other_failed.load(Relaxed),
        spans_per_second: accepted as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: q(0.5),
        p99_ms: q(0.99),
    }
}

/// The outcome of one request, in items.
enum Outcome {
    Accepted { rejected: u64 },
    Refused,
    Failed(String),
}

#[derive(Clone)]
enum Sender {
    Grpc {
        grpc: tonic::client::Grpc<tonic::transport::Channel>,
        token: Option<Arc<str>>,
    },
    Http {
        client: reqwest::Client,
        base: String,
        content_type: &'static str,
        token: Option<Arc<str>>,
    },
}

impl Sender {
    async fn connect(
        p: Protocol,
        endpoint: &str,
        enc: Encoding,
        token: Option<String>,
    ) -> anyhow::Result<Sender> {
        let token = token.map(Arc::from);
        Ok(match p {
            Protocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
                    .with_context(|| format!("endpoint {endpoint}"))?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {endpoint}"))?;
                let grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
                Sender::Grpc { grpc, token }
            }
            Protocol::Http => Sender::Http {
                client: reqwest::Client::builder().tcp_nodelay(true).build()?,
                base: endpoint.trim_end_matches('/').to_owned(),
                content_type: if enc == Encoding::Json {
                    "application/json"
                } else {
                    "application/x-protobuf"
                },
                token,
            },
        })
    }

    async fn send(&self, job: Job, t: &Tally) {
        let started = Instant::now();
        let outcome = match self {
            Sender::Grpc { grpc, token } => grpc_send(grpc.clone(), token.as_deref(), &job).await,
            Sender::Http {
                client,
                base,
                content_type,
                token,
            } => {
                let mut req = client
                    .post(format!("{base}{}", job.signal.http_path()))
                    .header("content-type", *content_type)
                    .body(job.body.clone());
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let body = r.bytes().await.unwrap_or_default();
                        let rejected = if *content_type == "application/json" {
                            serde_json::from_slice::<serde_json::Value>(&body)
                                .ok()
                                .and_then(|v| v["partialSuccess"]["rejectedSpans"].as_str()?.parse().ok())
                                .unwrap_or(0)
                        } else {
                            ExportTraceServiceResponse::decode(body)
                                .ok()
                                .and_then(|r| r.partial_success)
                                .map_or(0, |p| p.rejected_spans as u64)
                        };
                        Outcome::Accepted { rejected }
                    }
                    Ok(r) if matches!(r.status().as_u16(), 429 | 503) => Outcome::Refused,
                    Ok(r) => Outcome::Failed(format!("HTTP {}", r.status())),
                    Err(e) => Outcome::Failed(e.to_string()),
                }
            }
        };
        if job.signal != Signal::Traces {
            t.other_requests.fetch_add(1, Relaxed);
            if !matches!(outcome, Outcome::Accepted { .. }) {
                t.other_failed.fetch_add(1, Relaxed);
            }
            return;
        }
        t.requests.fetch_add(1, Relaxed);
        t.sent.fetch_add(job.spans, Relaxed);
        match outcome {
            Outcome::Accepted { rejected } => {
                t.accepted.fetch_add(job.spans - rejected.min(job.spans), Relaxed);
                t.rejected.fetch_add(rejected.min(job.spans), Relaxed);
                let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                t.latencies_us.lock().unwrap_or_else(|e| e.into_inner()).push(us);
            }
            Outcome::Refused => {
                t.refused.fetch_add(job.spans, Relaxed);
            }
            Outcome::Failed(why) => {
                if t.failed.fetch_add(job.spans, Relaxed) == 0 {
                    tracing::warn!(error = %why, "request failed");
                }
            }
        }
    }
}

/// Exports one pre-encoded traces request over OTLP/gRPC; returns the spans the receiver rejected.
/// For tests and tools that need the raw status.
pub async fn grpc_export_traces(
    endpoint: &str,
    body: Bytes,
    token: Option<&str>,
) -> Result<u64, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(body);
    if let Some(t) = token
        && let Ok(v) = format!("Bearer {t}").parse()
    {
        req.metadata_mut().insert("authorization", v);
    }
    let path = http::uri::PathAndQuery::from_static(Signal::Traces.grpc_path());
    let resp = grpc
        .unary(req, path, RawCodec::<ExportTraceServiceResponse>(PhantomData))
        .await?;
    Ok(resp
        .into_inner()
        .partial_success
        .map_or(0, |p| p.rejected_spans as u64))
}

async fn grpc_send(
    mut grpc: tonic::client::Grpc<tonic::transport::Channel>,
    token: Option<&str>,
    job: &Job,
) -> Outcome {
    if let Err(e) = grpc.ready().await {
        return Outcome::Failed(e.to_string());
    }
    let mut req = tonic::Request::new(job.body.clone());
    if let Some(t) = token
        && let Ok(v) = format!("Bearer {t}").parse()
    {
        req.metadata_mut().insert("authorization", v);
    }
    let path = http::uri::PathAndQuery::from_static(job.signal.grpc_path());
    let result = match job.signal {
        Signal::Traces => grpc
            .unary(req, path, RawCodec::<ExportTraceServiceResponse>(PhantomData))
            .await
            .map(|r| {
                r.into_inner()
                    .partial_success
                    .map_or(0, |p| p.rejected_spans as u64)
            }),
        Signal::Metrics => grpc
            .unary(req, path, RawCodec::<ExportMetricsServiceResponse>(PhantomData))
            .await
            .map(|_| 0),
        Signal::Logs => grpc
            .unary(req, path, RawCodec::<ExportLogsServiceResponse>(PhantomData))
            .await
            .map(|_| 0),
    };
    match result {
        Ok(rejected) => Outcome::Accepted { rejected },
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::ResourceExhausted
            ) =>
        {
            Outcome::Refused
        }
        Err(s) => Outcome::Failed(format!("{}: {}", s.code(), s.message())),
    }
}

/// Sends pre-encoded request bytes; decodes the response with prost.
struct RawCodec<M>(PhantomData<M>);
struct BytesEncoder;
struct ProstDecoder<M>(PhantomData<M>);

impl<M: Message + Default + Send + 'static> Codec for RawCodec<M> {
    type Encode = Bytes;
    type Decode = M;
    type Encoder = BytesEncoder;
    type Decoder = ProstDecoder<M>;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<M> {
        ProstDecoder(PhantomData)
    }
}

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl<M: Message + Default> Decoder for ProstDecoder<M> {
    type Item = M;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<M>, tonic::Status> {
        M::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// Prints a report for people, and as JSON on the last line when asked.
pub fn print(r: &Report, json: bool) {
    println!(
        "sent {} spans in {} requests over {:.1}s: accepted {}, rejected {}, refused {}, failed {}",
        r.spans_sent,
        r.requests,
        r.seconds,
        r.spans_accepted,
        r.spans_rejected,
        r.spans_refused,
        r.spans_failed
    );
    println!(
        "accepted {:.0} spans/s; request latency p50 {:.2} ms, p99 {:.2} ms; metrics/logs requests {} ({} failed)",
        r.spans_per_second, r.p50_ms, r.p99_ms, r.other_requests, r.other_failed
    );
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
    }
}
