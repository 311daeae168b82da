//! OTLP ingestion, end to end: the real binary on loopback, real clients (the OpenTelemetry Python SDK's
//! exporters, tonic, reqwest), every bad input the receivers must refuse, and proof that nothing already
//! accepted is lost beside a bad request.

use std::io::Write;
use std::process::Output;

use crate::common::{Metrics, Tidewatch, python, shared};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

fn sdk(protocol: &str, endpoint: &str, extra: &[&str]) -> Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/send_otlp.py");
    python()
        .args([
            script,
            "--protocol",
            protocol,
            "--endpoint",
            endpoint,
            "--spans",
            "50",
        ])
        .args(extra)
        .output()
        .expect("run the SDK script")
}

fn assert_sdk_data(m: &Metrics, service: &str) {
    assert_eq!(m.items("spans", "accepted"), 100.0, "{}", m.text);
    assert_eq!(m.items("log_records", "accepted"), 2.0);
    assert!(m.items("data_points", "accepted") >= 1.0);
    let calls = |status| {
        m.get(
            "traces_span_metrics_calls_total",
            &[
                ("service_name", service),
                ("span_name", "GET /items"),
                ("span_kind", "SPAN_KIND_SERVER"),
                ("status_code", status),
            ],
        )
    };
    assert_eq!(calls("STATUS_CODE_ERROR"), Some(5.0));
    assert_eq!(calls("STATUS_CODE_UNSET"), Some(45.0));
    let db_edge = [
        ("client", service),
        ("server", "items"),
        ("connection_type", "database"),
    ];
    assert_eq!(m.get("traces_service_graph_request_total", &db_edge), Some(50.0));
    assert_eq!(
        m.get(
            "tidewatch_log_records_total",
            &[("service_name", service), ("severity", "error")]
        ),
        Some(1.0)
    );
}

#[test]
fn python_sdk_exports_over_grpc_and_http() {
    for (protocol, compression) in [
        ("grpc", None),
        ("grpc", Some("--gzip")),
        ("http", None),
        ("http", Some("--gzip")),
    ] {
        let tw = Tidewatch::start(&[]);
        let endpoint = if protocol == "grpc" { &tw.grpc } else { &tw.http };
        let mut args = vec!["--service", "shop-api"];
        args.extend(compression);
        let out = sdk(protocol, endpoint, &args);
        assert!(
            out.status.success(),
            "{protocol} {compression:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_sdk_data(&tw.metrics(), "shop-api");
        let requests = if protocol == "grpc" { "grpc" } else { "http" };
        let m = tw.metrics();
        assert!(
            m.get(
                "tidewatch_collector_requests_total",
                &[("protocol", requests), ("outcome", "ok")]
            )
            .unwrap()
                >= 3.0
        );
    }
}

#[test]
fn upstream_json_examples_are_accepted_over_http() {
    let tw = Tidewatch::start(&[]);
    let dir = shared().join("data/otlp/examples");
    for (file, path) in [
        ("trace.json", "/v1/traces"),
        ("metrics.json", "/v1/metrics"),
        ("logs.json", "/v1/logs"),
    ] {
        let body = std::fs::read(dir.join(file)).unwrap();
        let r = tw.post(path, "application/json", body, &[]);
        assert_eq!(r.status(), 200, "{file}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let v: serde_json::Value = r.json().unwrap();
        assert!(v.get("partialSuccess").is_none_or(|p| p.is_null()), "{file}: {v}");
    }
    let m = tw.metrics();
    assert!(m.items("spans", "accepted") >= 1.0);
    assert!(m.items("data_points", "accepted") >= 1.0);
    assert!(m.items("log_records", "accepted") >= 1.0);
    assert_eq!(
        m.items("spans", "rejected")
            + m.items("data_points", "rejected")
            + m.items("log_records", "rejected"),
        0.0
    );
}

/// A traces request in OTLP/JSON: `ids` are (trace id, span id) pairs in hex.
fn json_traces(service: &str, ids: &[(&str, &str)]) -> Vec<u8> {
    crate::common::json_traces(service, "GET /", ids)
}

const T: &str = "0102030405060708090a0b0c0d0e0f10";

fn good(tw: &Tidewatch) {
    let r = tw.post(
        "/v1/traces",
        "application/json",
        json_traces("good", &[(T, "0102030405060708")]),
        &[],
    );
    assert_eq!(r.status(), 200);
}

fn good_kept(tw: &Tidewatch, n: f64) {
    let m = tw.metrics();
    assert_eq!(
        m.sum("traces_span_metrics_calls_total", &[("service_name", "good")]),
        n,
        "valid data lost"
    );
}

#[test]
fn invalid_ids_are_rejected_one_by_one() {
    let tw = Tidewatch::start(&[]);
    let body = json_traces(
        "good",
        &[
            (T, "0102030405060708"),
            ("00000000000000000000000000000000", "0102030405060708"),
            (T, "0000000000000000"),
            ("0102", "0102030405060708"),
            (T, "1112131415161718"),
        ],
    );
    let r = tw.post("/v1/traces", "application/json", body, &[]);
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().unwrap();
    let p = &v["partialSuccess"];
    assert_eq!(
        p["rejectedSpans"]
            .as_i64()
            .or_else(|| p["rejectedSpans"].as_str()?.parse().ok()),
        Some(3),
        "{v}"
    );
    let msg = p["errorMessage"].as_str().unwrap();
    assert!(
        msg.contains("trace_id is all zero")
            && msg.contains("span_id is all zero")
            && msg.contains("16 bytes"),
        "{msg}"
    );
    good_kept(&tw, 2.0);
    assert_eq!(tw.metrics().items("spans", "rejected"), 3.0);

    // The same over protobuf: the response is protobuf too.
    let mut req: ExportTraceServiceRequest =
        serde_json::from_slice(&json_traces("good", &[(T, "2122232425262728")])).unwrap();
    req.resource_spans[0].scope_spans[0].spans[0].span_id = vec![1, 2, 3];
    let r = tw.post("/v1/traces", "application/x-protobuf", req.encode_to_vec(), &[]);
    assert_eq!(
        (r.status().as_u16(), r.headers()["content-type"].to_str().unwrap()),
        (200, "application/x-protobuf")
    );
    let resp = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(
        r.bytes().unwrap(),
    )
    .unwrap();
    assert_eq!(resp.partial_success.unwrap().rejected_spans, 1);
}

#[test]
fn bad_requests_get_clear_errors_and_lose_nothing() {
    let tw = Tidewatch::start(&["collector.max_body=256KiB"]);
    good(&tw);
    let text = |r: reqwest::blocking::Response| {
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().unwrap_or_default();
        (status, body["message"].as_str().unwrap_or_default().to_owned())
    };

    // Malformed JSON: 400, saying where.
    let (s, msg) = text(tw.post(
        "/v1/traces",
        "application/json",
        b"{\"resourceSpans\": [{]}".to_vec(),
        &[],
    ));
    assert_eq!(s, 400);
    assert!(
        msg.contains("invalid OTLP/JSON") && msg.contains("column"),
        "{msg}"
    );

    // Malformed protobuf: 400 (answered in protobuf: google.rpc.Status).
    let r = tw.post(
        "/v1/traces",
        "application/x-protobuf",
        vec![0x0a, 0xff, 0xff, 0x01, 0x02],
        &[],
    );
    assert_eq!(r.status(), 400);
    assert!(String::from_utf8_lossy(&r.bytes().unwrap()).contains("invalid protobuf"));

    // Unknown content type: 415 (answered in protobuf, the default encoding).
    let r = tw.post("/v1/traces", "text/plain", b"hello".to_vec(), &[]);
    assert_eq!(r.status(), 415);
    assert!(String::from_utf8_lossy(&r.bytes().unwrap()).contains("unsupported content type `text/plain`"));
    // Unknown content encoding: 415.
    let r = tw.post(
        "/v1/traces",
        "application/json",
        b"{}".to_vec(),
        &[("content-encoding", "br")],
    );
    assert_eq!(r.status(), 415);

    // Oversized body: 413 before it is read whole.
    let big = json_traces("good", &vec![(T, "0102030405060708"); 4000]);
    assert!(big.len() > 256 * 1024);
    let (s, msg) = text(tw.post("/v1/traces", "application/json", big, &[]));
    assert_eq!(s, 413);
    assert!(msg.contains("256KiB"), "{msg}");

    // A gzip bomb: 30 KiB on the wire, 32 MiB inflated; refused at the limit with 413.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(b"{\"resourceSpans\":[").unwrap();
    for _ in 0..(32 << 10) {
        gz.write_all(&[b' '; 1024]).unwrap();
    }
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let r = tw.post(
        "/v1/traces",
        "application/json",
        bomb,
        &[("content-encoding", "gzip")],
    );
    assert_eq!(r.status(), 413);

    // gzip and zstd bodies within the limit are fine.
    for (enc, body) in [
        ("gzip", {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&json_traces("good", &[(T, "3132333435363738")]))
                .unwrap();
            e.finish().unwrap()
        }),
        (
            "zstd",
            zstd::encode_all(&json_traces("good", &[(T, "4142434445464748")])[..], 3).unwrap(),
        ),
    ] {
        let r = tw.post(
            "/v1/traces",
            "application/json",
            body,
            &[("content-encoding", enc)],
        );
        assert_eq!(r.status(), 200, "{enc}");
    }

    // Everything valid so far is still there, and every bad request was counted.
    good_kept(&tw, 3.0);
    let m = tw.metrics();
    let req = |o| {
        m.get(
            "tidewatch_collector_requests_total",
            &[("protocol", "http"), ("outcome", o)],
        )
        .unwrap()
    };
    assert_eq!(
        (
            req("bad_request"),
            req("unsupported"),
            req("too_large"),
            req("ok")
        ),
        (2.0, 2.0, 2.0, 3.0)
    );
}

#[test]
fn bearer_token_is_required_on_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-value\n").unwrap();
    let set = format!("collector.auth.token_file={}", token_file.display());
    let tw = Tidewatch::start(&[&set]);

    // HTTP: no token, wrong token → 401; the right one → 200.
    let body = || json_traces("good", &[(T, "0102030405060708")]);
    assert_eq!(
        tw.post("/v1/traces", "application/json", body(), &[]).status(),
        401
    );
    assert_eq!(
        tw.post(
            "/v1/traces",
            "application/json",
            body(),
            &[("authorization", "Bearer nope")]
        )
        .status(),
        401
    );
    let ok = tw.post(
        "/v1/traces",
        "application/json",
        body(),
        &[("authorization", "Bearer s3cret-token-value")],
    );
    assert_eq!(ok.status(), 200);

    // gRPC through the SDK: the wrong token fails, the right one goes through.
    let bad = sdk("grpc", &tw.grpc, &["--service", "intruder", "--token", "wrong"]);
    assert!(!bad.status.success());
    let good = sdk(
        "grpc",
        &tw.grpc,
        &["--service", "shop-api", "--token", "s3cret-token-value"],
    );
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    let m = tw.metrics();
    assert_eq!(
        m.sum("traces_span_metrics_calls_total", &[("service_name", "intruder")]),
        0.0
    );
    assert_eq!(
        m.sum("traces_span_metrics_calls_total", &[("service_name", "shop-api")]),
        100.0
    );
    assert!(
        m.get(
            "tidewatch_collector_requests_total",
            &[("protocol", "grpc"), ("outcome", "unauthenticated")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        m.get(
            "tidewatch_collector_requests_total",
            &[("protocol", "http"), ("outcome", "unauthenticated")]
        ),
        Some(2.0)
    );
}

#[test]
fn grpc_refuses_malformed_and_oversized_messages() {
    let tw = Tidewatch::start(&["collector.max_body=64KiB"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let endpoint = format!("http://{}", tw.grpc);
    let send = |body: Vec<u8>| {
        rt.block_on(tidewatch::loadgen::grpc_export_traces(
            &endpoint,
            body.into(),
            None,
        ))
    };
    let valid: ExportTraceServiceRequest =
        serde_json::from_slice(&json_traces("good", &[(T, "0102030405060708")])).unwrap();
    assert_eq!(send(valid.encode_to_vec()).unwrap(), 0);

    let err = send(vec![0x0a, 0xff, 0xff, 0x01]).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("invalid protobuf"), "{}", err.message());

    let mut big = valid.clone();
    big.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(100 << 10);
    let err = send(big.encode_to_vec()).unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );

    good_kept(&tw, 1.0);
}

/// The `grpc-status` a server answers to one unary call on `path` (an empty message), from the headers of
/// a trailers-only answer or from the trailers.
async fn grpc_status_of_call(addr: &str, path: &str) -> u16 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(req, false).unwrap();
    // A server may answer a method it does not serve (and close the stream) before the body is sent, so
    // the send can fail on a busy machine; the answer is what the test reads.
    let _ = send.send_data(bytes::Bytes::from_static(&[0; 5]), true);
    let response = response.await.unwrap();
    let status_of = |h: &http::HeaderMap| h.get("grpc-status")?.to_str().ok()?.parse::<u16>().ok();
    if let Some(code) = status_of(response.headers()) {
        return code;
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let _ = body.flow_control().release_capacity(data.unwrap().len());
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    status_of(&trailers).expect("grpc-status in the trailers")
}

#[test]
fn grpc_serves_the_three_export_methods_and_answers_unimplemented_to_others() {
    let tw = Tidewatch::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let call = |path: &str| rt.block_on(grpc_status_of_call(&tw.grpc, path));
    // An empty Export request is a valid one: OK on each of the three services.
    for service in [
        "trace.v1.TraceService",
        "metrics.v1.MetricsService",
        "logs.v1.LogsService",
    ] {
        assert_eq!(
            call(&format!("/opentelemetry.proto.collector.{service}/Export")),
            0,
            "{service}"
        );
    }
    // UNIMPLEMENTED (12) for another method of an OTLP service, another service, or no service at all.
    for path in [
        "/opentelemetry.proto.collector.trace.v1.TraceService/Other",
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export/more",
        "/grpc.health.v1.Health/Check",
        "/",
    ] {
        assert_eq!(call(path), 12, "{path}");
    }
}

#[test]
fn a_full_queue_refuses_with_retry_after_and_keeps_the_count() {
    // A tiny engine: one shard, one queued batch, 1 MiB in flight. Many concurrent 400 KiB requests cannot
    // all fit, so some are refused with 503 + Retry-After; whatever got 200 must be counted, exactly.
    let tw = Tidewatch::start(&[
        "analyzer.shards=1",
        "analyzer.queue_batches=1",
        "analyzer.max_inflight=1MiB",
    ]);
    let ids: Vec<(String, String)> = (0..3000u32)
        .map(|i| (format!("{:032x}", i + 1), format!("{:016x}", i + 1)))
        .collect();
    let refs: Vec<(&str, &str)> = ids.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let body = json_traces("good", &refs);
    let (mut accepted, mut refused) = (0u64, 0u64);
    for _round in 0..20 {
        let results: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| {
                        let r = tw.post("/v1/traces", "application/json", body.clone(), &[]);
                        (
                            r.status().as_u16(),
                            r.headers()
                                .get("retry-after")
                                .map(|v| v.to_str().unwrap().to_owned()),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (status, retry_after) in results {
            match status {
                200 => accepted += 1,
                503 => {
                    assert_eq!(retry_after.as_deref(), Some("1"));
                    refused += 1;
                }
                s => panic!("unexpected status {s}"),
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(refused > 0, "no request was ever refused");
    let m = tw.metrics();
    assert_eq!(
        m.sum("traces_span_metrics_calls_total", &[("service_name", "good")]),
        accepted as f64 * 3000.0
    );
    assert_eq!(m.items("spans", "accepted"), accepted as f64 * 3000.0);
    assert!(m.sum("tidewatch_analyzer_refused_batches_total", &[]) >= 1.0);
}

#[test]
fn graceful_shutdown_drains_and_exits_cleanly() {
    let mut tw = Tidewatch::start(&[]);
    good(&tw);
    let status = tw.stop();
    assert!(status.success(), "{status:?}: {}", tw.logs());
    assert!(tw.logs().contains("engine drained"), "{}", tw.logs());
}

#[test]
fn invalid_config_exits_nonzero_naming_every_field() {
    let out = crate::common::tidewatch()
        .args([
            "check-config",
            "--set",
            "analyzer.queue_batches=0",
            "--set",
            "collector.max_body=1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("analyzer.queue_batches") && err.contains("collector.max_body"),
        "{err}"
    );
    let out = crate::common::tidewatch()
        .args(["check-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_body: 64MiB"));
}
