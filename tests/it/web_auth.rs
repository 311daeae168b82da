//! Web authentication over real HTTP: the UI, the API and `/metrics` behind a token (bearer or Basic
//! password), the probes open, and no token ever in the logs or in `check-config`'s output. OTLP token
//! auth and TLS/mTLS through the SDK are tested in `otlp_ingest.rs` and `tls.rs`.

use crate::common::Tidewatch;

const WEB_TOKEN: &str = "web-Zq8v1X3kP0s9";
const OTLP_TOKEN: &str = "otlp-Hn4mB7cV2wL5";

fn get(tw: &Tidewatch, path: &str, auth: Option<&str>) -> reqwest::blocking::Response {
    let mut req = reqwest::blocking::Client::new().get(format!("http://{}{path}", tw.web));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.send().expect("GET")
}

fn basic(user: &str, password: &str) -> String {
    // Base64 by hand (the test must not trust the server's decoder to check it).
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for c in raw.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

#[test]
fn web_token_guards_ui_api_and_metrics_but_not_probes_and_is_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("web-token");
    std::fs::write(&token_file, format!("{WEB_TOKEN}\n")).unwrap();
    let file_set = format!("web.auth.token_file={}", token_file.display());
    let otlp_set = format!("collector.auth.token={OTLP_TOKEN}");
    let mut tw = Tidewatch::start_with(&[&file_set, &otlp_set], &[("RUST_LOG", "trace")]);
    let bearer = format!("Bearer {WEB_TOKEN}");

    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(&tw, path, None).status(), 200, "{path} must stay open");
    }
    for path in [
        "/metrics",
        "/api/services",
        "/api/graph",
        "/",
        "/map",
        "/services/x",
        "/ui/common.js",
    ] {
        let r = get(&tw, path, None);
        assert_eq!(r.status(), 401, "{path} without a token");
        let challenges: Vec<&str> = r
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert!(
            challenges.iter().any(|c| c.starts_with("Basic")),
            "{path}: {challenges:?}"
        );
        assert!(!r.text().unwrap().contains(WEB_TOKEN));
        for wrong in [
            format!("Bearer {OTLP_TOKEN}"),
            format!("Bearer {WEB_TOKEN}x"),
            format!("Bearer {}", &WEB_TOKEN[..WEB_TOKEN.len() - 1]),
            basic("admin", "nope"),
            "Bearer".to_owned(),
        ] {
            assert_eq!(get(&tw, path, Some(&wrong)).status(), 401, "{path} with {wrong}");
        }
    }
    assert_eq!(get(&tw, "/api/services", Some(&bearer)).status(), 200);
    assert_eq!(get(&tw, "/metrics", Some(&bearer)).status(), 200);
    // A browser's Basic login: any user name, the token as password.
    let r = get(&tw, "/", Some(&basic("alice", WEB_TOKEN)));
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("<html"));

    // OTLP keeps its own token: the web token does not open it.
    let body = br#"{"resourceSpans":[]}"#.to_vec();
    let ct = "application/json";
    let post = |auth: &str| {
        tw.post("/v1/traces", ct, body.clone(), &[("authorization", auth)])
            .status()
    };
    assert_eq!(post(&bearer), 401);
    assert_eq!(post(&format!("Bearer {OTLP_TOKEN}")), 200);
    // And over gRPC (HTTP/2 headers, where h2 and tonic log at trace level).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let grpc = format!("http://{}", tw.grpc);
    let export = |token| {
        rt.block_on(tidewatch::loadgen::grpc_export_traces(
            &grpc,
            Vec::new().into(),
            Some(token),
        ))
    };
    assert_eq!(export(OTLP_TOKEN).unwrap(), 0);
    assert_eq!(
        export(WEB_TOKEN).unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    let status = tw.stop();
    assert!(status.success());
    let logs = tw.logs();
    assert!(logs.contains("TRACE"), "the log level did not apply: {logs}");
    assert!(!logs.contains(WEB_TOKEN), "web token in the logs");
    assert!(!logs.contains(OTLP_TOKEN), "OTLP token in the logs");
}

#[test]
fn metrics_can_stay_open_for_scrapers() {
    let set = format!("web.auth.token={WEB_TOKEN}");
    let tw = Tidewatch::start(&[&set, "web.auth.protect_metrics=false"]);
    assert_eq!(get(&tw, "/metrics", None).status(), 200);
    assert_eq!(get(&tw, "/api/services", None).status(), 401);
    assert_eq!(
        get(&tw, "/api/services", Some(&format!("Bearer {WEB_TOKEN}"))).status(),
        200
    );
}

#[test]
fn tokens_are_redacted_in_check_config_and_a_bad_auth_config_is_named() {
    let out = crate::common::tidewatch()
        .args(["check-config", "--set", &format!("web.auth.token={WEB_TOKEN}")])
        .args(["--set", &format!("collector.auth.token={OTLP_TOKEN}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("<redacted>"), "{printed}");
    assert!(
        !printed.contains(WEB_TOKEN) && !printed.contains(OTLP_TOKEN),
        "{printed}"
    );

    let out = crate::common::tidewatch()
        .args(["check-config", "--set", "web.auth.protect_metrics=false"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("web.auth: set token or token_file"));

    let out = crate::common::tidewatch()
        .args([
            "run",
            "--set",
            "web.auth.token_file=/nonexistent/token",
            "--set",
            "web.endpoint=127.0.0.1:0",
        ])
        .args([
            "--set",
            "collector.grpc.endpoint=127.0.0.1:0",
            "--set",
            "collector.http.endpoint=127.0.0.1:0",
        ])
        .args(["--set", "analyzer.store.data_dir=null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("web.auth") && err.contains("/nonexistent/token"),
        "{err}"
    );
}
