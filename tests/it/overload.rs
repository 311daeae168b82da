//! Overload: the real binary with a small in-flight cap, driven far above what it can take by three
//! `tidewatch loadgen` processes (gRPC, HTTP protobuf, HTTP JSON; 80 requests in flight) and two probes
//! that check every answer by hand. It must
//! - keep its resident memory under [`RSS_LIMIT_MIB`] (kernel's peak, `VmHWM`),
//! - refuse the excess only with retryable answers (HTTP 503 + `Retry-After`, gRPC `UNAVAILABLE` or
//!   `RESOURCE_EXHAUSTED`), never with an error or a dropped connection,
//! - accept again as soon as the load stops, with its queues and in-flight bytes back at zero,
//! - account for every span: sent = accepted + refused on the clients' side, and the engine counted
//!   exactly the accepted ones (`tidewatch_analyzer_items_total`, the RED counters).
//!
//! Run with `--nocapture` to see the figures RELIABILITY.md quotes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::common::Tidewatch;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

/// The resident-memory ceiling the test holds Tidewatch to while overloaded. The budget: ~30 MiB of
/// binary and runtime, `max_inflight` (1 MiB) of accepted batches, and the request bodies being read
/// (80 in flight at up to ~0.5 MiB each, before they are admitted or refused), with room for the
/// allocator's slack (peaks of 170-215 MiB measured on 2 busy cores).
const RSS_LIMIT_MIB: u64 = 320;
const LOAD_SECONDS: u64 = 8;

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// An OTLP/JSON traces request of `n` server spans for `service`.
fn json_traces(service: &str, n: u32, seed: u32) -> Vec<u8> {
    crate::common::numbered_json_traces(service, "GET /probe", seed * 10_000 + 1, n)
}

/// What one client saw, in spans.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    sent: u64,
    accepted: u64,
    refused: u64,
    /// Anything that is neither a success nor a retryable refusal.
    failed: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.sent += o.sent;
        self.accepted += o.accepted;
        self.refused += o.refused;
        self.failed += o.failed;
    }
}

/// One `tidewatch loadgen` run, flat out, against `endpoint`; its JSON report as a tally.
fn loadgen(endpoint: String, protocol: &'static str, encoding: &'static str, concurrency: u32) -> Tally {
    let out = crate::common::tidewatch()
        .args(["loadgen", "--endpoint", &endpoint, "--protocol", protocol])
        .args(["--encoding", encoding, "--rate", "0", "--batch", "1000"])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--duration", &format!("{LOAD_SECONDS}s")])
        .args(["--metrics-and-logs", "false", "--json"])
        .output()
        .expect("run loadgen");
    let r = crate::common::loadgen_report(out);
    eprintln!("loadgen {protocol}/{encoding}: {r}");
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    assert_eq!(n("spans_rejected"), 0, "{r}");
    Tally {
        sent: n("spans_sent"),
        accepted: n("spans_accepted"),
        refused: n("spans_refused"),
        failed: n("spans_failed"),
    }
}

#[test]
fn overload_is_refused_retryably_within_bounded_memory_and_nothing_accepted_is_lost() {
    let tw = Tidewatch::start(&[
        "analyzer.shards=2",
        "analyzer.queue_batches=2",
        "analyzer.max_inflight=1MiB",
        "collector.max_body=4MiB",
    ]);
    let pid = tw.pid();
    let baseline_kib = proc_kib(pid, "VmRSS");
    let done = Arc::new(AtomicBool::new(false));
    let rss_max = Arc::new(AtomicU64::new(baseline_kib));
    let started = Instant::now();

    let (tallies, http_probe, grpc_probe) = std::thread::scope(|s| {
        // Resident memory, sampled every 50 ms (VmHWM, read at the end, catches what falls between).
        s.spawn(|| {
            while !done.load(Relaxed) {
                rss_max.fetch_max(proc_kib(pid, "VmRSS"), Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let loads: Vec<_> = [
            ("grpc", "protobuf", 32, format!("http://{}", tw.grpc)),
            ("http", "protobuf", 32, format!("http://{}", tw.http)),
            ("http", "json", 16, format!("http://{}", tw.http)),
        ]
        .into_iter()
        .map(|(p, e, c, endpoint)| s.spawn(move || loadgen(endpoint, p, e, c)))
        .collect();

        // HTTP probe: every refusal must be a 503 with Retry-After.
        let http_probe = s.spawn(|| {
            let body = json_traces("probe-http", 100, 1);
            let mut t = Tally::default();
            let mut without_retry_after = 0;
            while started.elapsed() < Duration::from_secs(LOAD_SECONDS) {
                let r = tw.post("/v1/traces", "application/json", body.clone(), &[]);
                t.sent += 100;
                match r.status().as_u16() {
                    200 => t.accepted += 100,
                    429 | 503 => {
                        t.refused += 100;
                        if r.headers().get("retry-after").is_none() {
                            without_retry_after += 1;
                        }
                    }
                    other => {
                        eprintln!("http probe: unexpected {other}");
                        t.failed += 100;
                    }
                }
            }
            (t, without_retry_after)
        });
        // gRPC probe: every refusal must be UNAVAILABLE or RESOURCE_EXHAUSTED.
        let grpc_probe = s.spawn(|| {
            let req: ExportTraceServiceRequest =
                serde_json::from_slice(&json_traces("probe-grpc", 100, 2)).unwrap();
            let body = bytes::Bytes::from(req.encode_to_vec());
            let endpoint = format!("http://{}", tw.grpc);
            let rt = tokio::runtime::Runtime::new().unwrap();
            let mut t = Tally::default();
            while started.elapsed() < Duration::from_secs(LOAD_SECONDS) {
                let r = rt.block_on(tidewatch::loadgen::grpc_export_traces(
                    &endpoint,
                    body.clone(),
                    None,
                ));
                t.sent += 100;
                match r {
                    Ok(0) => t.accepted += 100,
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                        ) =>
                    {
                        t.refused += 100
                    }
                    other => {
                        eprintln!("grpc probe: unexpected {other:?}");
                        t.failed += 100;
                    }
                }
            }
            t
        });
        let tallies: Vec<Tally> = loads.into_iter().map(|h| h.join().unwrap()).collect();
        let probes = (http_probe.join().unwrap(), grpc_probe.join().unwrap());
        done.store(true, Relaxed);
        (tallies, probes.0, probes.1)
    });
    let load_secs = started.elapsed().as_secs_f64();
    let hwm_kib = proc_kib(pid, "VmHWM");
    let peak_kib = hwm_kib.max(rss_max.load(Relaxed));

    // Load is gone: a request is taken at once, and nothing is left queued or reserved.
    let r = tw.post("/v1/traces", "application/json", json_traces("after", 10, 3), &[]);
    assert_eq!(r.status(), 200, "not accepting after the load: {}", tw.logs());

    let (http_tally, without_retry_after) = http_probe;
    let mut all = Tally::default();
    for t in tallies.iter().chain([&http_tally, &grpc_probe]) {
        all += *t;
    }
    let m = tw.metrics();
    let refused_share = all.refused as f64 / all.sent as f64;
    eprintln!(
        "overload: {load_secs:.1}s, sent {} spans, accepted {} ({:.0}/s), refused {} ({:.1} %), failed {}; \
         RSS baseline {} KiB, peak {} KiB (VmHWM {} KiB), limit {} MiB; refused requests: grpc {}, http {}",
        all.sent,
        all.accepted,
        all.accepted as f64 / load_secs,
        all.refused,
        100.0 * refused_share,
        all.failed,
        baseline_kib,
        peak_kib,
        hwm_kib,
        RSS_LIMIT_MIB,
        m.get(
            "tidewatch_collector_requests_total",
            &[("protocol", "grpc"), ("outcome", "refused")]
        )
        .unwrap_or(0.0),
        m.get(
            "tidewatch_collector_requests_total",
            &[("protocol", "http"), ("outcome", "refused")]
        )
        .unwrap_or(0.0),
    );

    // Memory stayed bounded.
    assert!(hwm_kib > 0, "no VmHWM for pid {pid}");
    assert!(
        peak_kib < RSS_LIMIT_MIB * 1024,
        "peak RSS {peak_kib} KiB over the {RSS_LIMIT_MIB} MiB limit"
    );
    // It was overloaded, on both protocols, and said so only in retryable ways.
    assert_eq!(
        all.failed, 0,
        "non-retryable failures: {tallies:?} {http_tally:?} {grpc_probe:?}"
    );
    assert_eq!(without_retry_after, 0, "503 without Retry-After");
    // Every sender was refused, and each protocol got work through (which sender of a protocol gets its
    // requests in is up to the race for the queues: on a busy machine the JSON sender may lose every one).
    for (i, t) in tallies.iter().enumerate() {
        assert!(t.refused > 0, "loadgen {i} not overloaded: {t:?}");
    }
    let (grpc, http) = (&tallies[0], [&tallies[1], &tallies[2]]);
    assert!(grpc.accepted > 0, "nothing accepted over gRPC: {grpc:?}");
    assert!(
        http.iter().any(|t| t.accepted > 0),
        "nothing accepted over HTTP: {http:?}"
    );
    assert!(
        refused_share > 0.1,
        "only {refused_share:.3} refused: not overloaded"
    );
    // Every span is accounted for, and every accepted one was counted by the engine.
    assert_eq!(all.sent, all.accepted + all.refused);
    let accepted = (all.accepted + 10) as f64;
    assert_eq!(m.items("spans", "accepted"), accepted);
    assert_eq!(
        m.get("tidewatch_analyzer_items_total", &[("signal", "spans")]),
        Some(accepted),
        "the engine lost accepted spans"
    );
    assert_eq!(m.sum("traces_span_metrics_calls_total", &[]), accepted);
    assert_eq!(
        m.sum(
            "traces_span_metrics_calls_total",
            &[("service_name", "probe-http")]
        ),
        http_tally.accepted as f64
    );
    assert_eq!(m.get("tidewatch_analyzer_queue_depth_batches", &[]), Some(0.0));
    assert_eq!(m.get("tidewatch_analyzer_inflight_bytes", &[]), Some(0.0));
}

/// Bodies being read are capped too: many slow clients, each sending a large body a little at a time,
/// would otherwise hold clients × body size. With `collector.max_reading` at 8 MiB, 200 HTTP clients
/// (announcing 1 MiB with `Content-Length`, as the SDKs do) and 100 gRPC clients (no length: metered as
/// the frames arrive) trickling their bodies at once must leave Tidewatch's memory near its baseline,
/// be refused only with retryable answers, and still have every span accounted for. Without the budget
/// the same load held ~300 MiB of bodies (RELIABILITY.md).
#[test]
fn slow_clients_with_large_bodies_are_read_within_the_budget() {
    const HTTP_CLIENTS: u32 = 200;
    const GRPC_CLIENTS: u32 = 100;
    const SPANS: u32 = 5_000; // ~1 MiB of OTLP/JSON, ~0.5 MiB of protobuf
    const MAX_READING_MIB: u64 = 8;
    // Baseline (~60 MiB) + the reading budget + `max_inflight` of admitted batches + what decoding
    // the admitted bodies takes, with room for the allocator; far below the ~300 MiB of bodies.
    const LIMIT_MIB: u64 = 192;
    let tw = Tidewatch::start(&[
        "collector.max_body=2MiB",
        &format!("collector.max_reading={MAX_READING_MIB}MiB"),
        "analyzer.max_inflight=8MiB",
    ]);
    let pid = tw.pid();
    let baseline_kib = proc_kib(pid, "VmRSS");

    // The same request from every client (the span counts are what is checked), all starting at once.
    let json = crate::common::numbered_json_traces("slow-http", "POST /upload", 1, SPANS);
    let proto = serde_json::from_slice::<ExportTraceServiceRequest>(&json)
        .unwrap()
        .encode_to_vec();
    let start = std::sync::Barrier::new(HTTP_CLIENTS as usize + 1);
    let started = Instant::now();
    let (http, grpc) = std::thread::scope(|s| {
        let http: Vec<_> = (0..HTTP_CLIENTS)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    slow_http_export(&tw.http, &json, json.len())
                })
            })
            .collect();
        let grpc = s.spawn(|| {
            let rt = tokio::runtime::Runtime::new().unwrap();
            start.wait();
            rt.block_on(async {
                let calls: Vec<_> = (0..GRPC_CLIENTS)
                    .map(|_| tokio::spawn(slow_grpc_export(tw.grpc.clone(), proto.clone(), usize::MAX)))
                    .collect();
                let mut codes = Vec::new();
                for c in calls {
                    codes.push(c.await.unwrap());
                }
                codes
            })
        });
        let http: Vec<_> = http.into_iter().map(|h| h.join().unwrap()).collect();
        (http, grpc.join().unwrap())
    });
    let hwm_kib = proc_kib(pid, "VmHWM");
    let m = tw.metrics();
    let count =
        |v: &[Result<u16, String>], want: u16| v.iter().filter(|r| r.as_ref().ok() == Some(&want)).count();
    let (http_ok, http_refused) = (count(&http, 200), count(&http, 503));
    let (grpc_ok, grpc_refused) = (count(&grpc, 0), count(&grpc, 14));
    eprintln!(
        "slow bodies: {:.1}s; http {http_ok} accepted, {http_refused} refused; grpc {grpc_ok} accepted, \
         {grpc_refused} refused; RSS baseline {baseline_kib} KiB, peak (VmHWM) {hwm_kib} KiB, limit {LIMIT_MIB} MiB",
        started.elapsed().as_secs_f64()
    );
    let unexpected: Vec<_> = http
        .iter()
        .filter(|r| !matches!(r, Ok(200 | 503)))
        .chain(grpc.iter().filter(|r| !matches!(r, Ok(0 | 14))))
        .collect();
    assert!(
        unexpected.is_empty(),
        "answers other than success or a retryable refusal: {unexpected:?}"
    );
    assert!(
        http_ok > 0 && grpc_ok > 0 && http_refused > 0 && grpc_refused > 0,
        "not both admitted and refused on both protocols"
    );
    assert!(
        hwm_kib < LIMIT_MIB * 1024,
        "peak RSS {hwm_kib} KiB over {LIMIT_MIB} MiB: bodies being read are not bounded"
    );
    // The refusals were the budget's, counted once each, and every accepted span reached the engine.
    let refused = |p: &str| {
        m.get(
            "tidewatch_collector_requests_total",
            &[("protocol", p), ("outcome", "refused")],
        )
        .unwrap_or(0.0) as usize
    };
    assert_eq!((refused("http"), refused("grpc")), (http_refused, grpc_refused));
    let accepted = ((http_ok + grpc_ok) as u32 * SPANS) as f64;
    assert_eq!(m.items("spans", "accepted"), accepted);
    assert_eq!(m.sum("traces_span_metrics_calls_total", &[]), accepted);
    assert_eq!(m.get("tidewatch_collector_reading_bytes", &[]), Some(0.0));
    // And with the slow clients gone, a request is read and taken at once.
    let r = tw.post("/v1/traces", "application/json", json_traces("after", 10, 4), &[]);
    assert_eq!(r.status(), 200);
}

/// A client that stops sending mid-body is cut off after `collector.body_timeout` (HTTP 408, gRPC
/// `DEADLINE_EXCEEDED`), and the share of the reading budget it held is given back.
#[test]
fn a_stalled_body_is_cut_off_and_gives_its_budget_back() {
    let tw = Tidewatch::start(&["collector.body_timeout=1s"]);
    let json = json_traces("stalled", 5_000, 5);
    let req: ExportTraceServiceRequest = serde_json::from_slice(&json).unwrap();
    let started = Instant::now();
    let http = slow_http_export(&tw.http, &json, TRICKLE.0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let grpc = rt.block_on(slow_grpc_export(tw.grpc.clone(), req.encode_to_vec(), TRICKLE.0));
    let took = started.elapsed();
    assert_eq!(
        (http, grpc),
        (Ok(408), Ok(4)),
        "HTTP 408 and gRPC DEADLINE_EXCEEDED"
    );
    assert!(took < Duration::from_secs(10), "cut off only after {took:?}");
    let m = tw.metrics();
    for protocol in ["http", "grpc"] {
        assert_eq!(
            m.get(
                "tidewatch_collector_requests_total",
                &[("protocol", protocol), ("outcome", "timed_out")]
            ),
            Some(1.0)
        );
    }
    assert_eq!(m.get("tidewatch_collector_reading_bytes", &[]), Some(0.0));
    assert_eq!(m.items("spans", "accepted"), 0.0);
    let r = tw.post("/v1/traces", "application/json", json_traces("after", 10, 6), &[]);
    assert_eq!(r.status(), 200);
}

/// Connections past `collector.max_connections` (over both OTLP endpoints) are closed at once and counted,
/// and their places come back when the held connections close.
#[test]
fn connections_past_the_cap_are_closed_and_counted() {
    use std::io::Read;
    let tw = Tidewatch::start(&["collector.max_connections=4"]);
    // Two idle connections on each endpoint take the four places.
    let held: Vec<_> = [&tw.http, &tw.http, &tw.grpc, &tw.grpc]
        .iter()
        .map(|a| std::net::TcpStream::connect(a.as_str()).unwrap())
        .collect();
    let gauge = |name: &str| tw.metrics().get(name, &[]).unwrap_or(-1.0);
    // Connections are counted as the server gets to them: wait for the gauge to read `n`.
    let open_connections_reach = |n: f64| {
        crate::common::wait_for("the connections gauge", Duration::from_secs(60), || {
            let g = gauge("tidewatch_collector_connections");
            (g == n).then_some(()).ok_or(format!("{g}, not {n}"))
        })
    };
    open_connections_reach(4.0);
    // A fifth, on either endpoint, is closed without a byte.
    for addr in [&tw.http, &tw.grpc] {
        let mut c = std::net::TcpStream::connect(addr.as_str()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        let n = c.read(&mut buf);
        // Closed: end of stream or a reset, not data (h2 greets with SETTINGS) and not a timeout.
        let closed = match &n {
            Ok(n) => *n == 0,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ),
        };
        assert!(closed, "over the cap but not closed: {n:?}");
    }
    let body = json_traces("capped", 10, 7);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let req: ExportTraceServiceRequest = serde_json::from_slice(&body).unwrap();
    let export_grpc = || {
        rt.block_on(tidewatch::loadgen::grpc_export_traces(
            &format!("http://{}", tw.grpc),
            bytes::Bytes::from(req.encode_to_vec()),
            None,
        ))
    };
    assert!(export_grpc().is_err(), "a gRPC export over the cap succeeded");
    assert!(gauge("tidewatch_collector_connections_refused_total") >= 3.0);
    // The held connections close: their places come back, and exports go through on both endpoints.
    drop(held);
    open_connections_reach(0.0);
    assert_eq!(tw.post("/v1/traces", "application/json", body, &[]).status(), 200);
    assert_eq!(export_grpc().ok(), Some(0));
    assert_eq!(tw.metrics().items("spans", "accepted"), 20.0);
}

/// Chunk size and pause of the slow clients: 1 MiB takes about a third of a second.
const TRICKLE: (usize, Duration) = (64 * 1024, Duration::from_millis(20));

/// POSTs `body` over HTTP/1.1 with its `Content-Length`, a chunk at a time, watching for an early answer
/// between chunks (a refusal comes before the body is read); stops sending after `send` bytes (a stalled
/// client when less than the body). Returns the status.
fn slow_http_export(addr: &str, body: &[u8], send: usize) -> Result<u16, String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    for chunk in body[..send].chunks(TRICKLE.0) {
        conn.set_read_timeout(Some(TRICKLE.1))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4096];
        match conn.read(&mut buf) {
            Ok(n) if n > 0 => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Ok(_) => return Err("connection closed before an answer".into()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.to_string()),
        }
        conn.write_all(chunk).map_err(|e| format!("sending: {e}"))?;
    }
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    conn.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    if status == 503 && !text.to_ascii_lowercase().contains("\r\nretry-after:") {
        return Err("503 without Retry-After".into());
    }
    Ok(status)
}

/// Sends one gRPC Export of `message` over HTTP/2, its frames a chunk at a time (stopping after `upto`
/// bytes, like a stalled client, when that is less), and returns the `grpc-status` (from the headers of a
/// trailers-only answer, or from the trailers).
async fn slow_grpc_export(addr: String, message: Vec<u8>, upto: usize) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| e.to_string())?;
    let (client, conn) = h2::client::handshake(tcp).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut client = client.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::post(format!(
        "http://{addr}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (response, mut send) = client.send_request(req, false).map_err(|e| e.to_string())?;
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let stall = upto < framed.len();
    framed.truncate(upto);
    let sender = tokio::spawn(async move {
        let chunks: Vec<_> = framed
            .chunks(TRICKLE.0)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        let last = chunks.len() - 1;
        for (i, c) in chunks.into_iter().enumerate() {
            // A refusal resets the stream: sending stops there.
            if send.send_data(c, i == last && !stall).is_err() {
                return;
            }
            tokio::time::sleep(TRICKLE.1).await;
        }
        // A stalled client keeps its stream open without sending.
        std::future::pending::<()>().await;
    });
    let response = response.await.map_err(|e| e.to_string())?;
    sender.abort();
    let status_of = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
    };
    if let Some(code) = status_of(response.headers()) {
        return Ok(code);
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let data = data.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
    trailers
        .as_ref()
        .and_then(status_of)
        .ok_or_else(|| format!("no grpc-status: {trailers:?}"))
}
