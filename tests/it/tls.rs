//! TLS and mutual TLS on both OTLP endpoints, end to end through the OpenTelemetry Python SDK's exporters,
//! with bearer-token auth on top. Certificates are made here with rcgen: a CA, a server certificate for
//! 127.0.0.1, and a client certificate the CA signed.

use std::path::{Path, PathBuf};

use crate::common::{Tidewatch, python};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: a leaf whose subject equals its issuer's looks self-signed to TLS clients.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Tidewatch test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>, usage| {
            let mut p = CertificateParams::new(names.clone()).unwrap();
            p.distinguished_name.push(DnType::CommonName, names[0].clone());
            p.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(vec!["client".into()], ExtendedKeyUsagePurpose::ClientAuth);
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server),
            ("server-key.pem", server_key),
            ("client.pem", client),
            ("client-key.pem", client_key),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Sends with the SDK; `true` if every export succeeded. Calls expected to fail get a short timeout, since
/// the exporters retry transient errors until it runs out.
fn send(protocol: &str, endpoint: &str, args: &[&Path], token: &str, service: &str) -> bool {
    let timeout = if ["intruder", "plain", "anonymous"].contains(&service) {
        "1"
    } else {
        "10"
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/send_otlp.py");
    let mut cmd = python();
    cmd.args([
        script,
        "--protocol",
        protocol,
        "--endpoint",
        endpoint,
        "--spans",
        "10",
        "--service",
        service,
    ]);
    cmd.args(["--token", token, "--timeout", timeout]);
    // `requests` lets these environment variables override the CA file the exporter sets on its session.
    cmd.env_remove("REQUESTS_CA_BUNDLE").env_remove("CURL_CA_BUNDLE");
    let flags = ["--ca", "--client-cert", "--client-key"];
    for (flag, path) in flags.iter().zip(args) {
        cmd.arg(flag).arg(path);
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        eprintln!(
            "{protocol} {service}: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        );
    }
    out.status.success()
}

#[test]
fn tls_and_token_through_the_sdk() {
    let pki = Pki::new();
    let (cert, key) = (pki.path("server.pem"), pki.path("server-key.pem"));
    let tw = Tidewatch::start(&[
        &format!("collector.tls.cert={}", cert.display()),
        &format!("collector.tls.key={}", key.display()),
        "collector.auth.token=tls-token-123",
    ]);
    let ca = pki.path("ca.pem");
    for (protocol, endpoint) in [("grpc", &tw.grpc), ("http", &tw.http)] {
        let service = format!("tls-{protocol}");
        assert!(
            send(protocol, endpoint, &[&ca], "tls-token-123", &service),
            "{protocol} over TLS failed"
        );
        assert!(
            !send(protocol, endpoint, &[&ca], "wrong-token", "intruder"),
            "{protocol}: a wrong token got in"
        );
    }
    // Plain text to a TLS port fails.
    assert!(!send("http", &tw.http, &[], "tls-token-123", "plain"));
    let m = tw.metrics();
    for svc in ["tls-grpc", "tls-http"] {
        assert_eq!(
            m.sum("traces_span_metrics_calls_total", &[("service_name", svc)]),
            20.0,
            "{svc}"
        );
    }
    assert_eq!(
        m.sum("traces_span_metrics_calls_total", &[("service_name", "intruder")]),
        0.0
    );
    assert_eq!(
        m.sum("traces_span_metrics_calls_total", &[("service_name", "plain")]),
        0.0
    );
    // The token never appears in the logs.
    assert!(!tw.logs().contains("tls-token-123"));
}

#[test]
fn mutual_tls_requires_a_client_certificate() {
    let pki = Pki::new();
    let tw = Tidewatch::start(&[
        &format!("collector.tls.cert={}", pki.path("server.pem").display()),
        &format!("collector.tls.key={}", pki.path("server-key.pem").display()),
        &format!("collector.tls.client_ca={}", pki.path("ca.pem").display()),
    ]);
    let (ca, cc, ck) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client-key.pem"),
    );
    for (protocol, endpoint) in [("grpc", &tw.grpc), ("http", &tw.http)] {
        assert!(
            send(
                protocol,
                endpoint,
                &[&ca, &cc, &ck],
                "unused",
                &format!("mtls-{protocol}")
            ),
            "{protocol}"
        );
        assert!(
            !send(protocol, endpoint, &[&ca], "unused", "anonymous"),
            "{protocol}: no client cert got in"
        );
    }
    let m = tw.metrics();
    assert_eq!(
        m.sum(
            "traces_span_metrics_calls_total",
            &[("service_name", "mtls-grpc")]
        ),
        20.0
    );
    assert_eq!(
        m.sum(
            "traces_span_metrics_calls_total",
            &[("service_name", "mtls-http")]
        ),
        20.0
    );
    assert_eq!(
        m.sum(
            "traces_span_metrics_calls_total",
            &[("service_name", "anonymous")]
        ),
        0.0
    );
}

/// The web port over TLS with a token: the UI, API and `/metrics` answer over HTTPS to a client that
/// trusts the CA, a plain-HTTP client gets no answer, and the token is still required.
#[test]
fn web_port_over_tls_keeps_its_token_out_of_clear_text() {
    let pki = Pki::new();
    let set = |k: &str, f: &str| format!("web.tls.{k}={}", pki.path(f).display());
    let tw = Tidewatch::start(&[
        &set("cert", "server.pem"),
        &set("key", "server-key.pem"),
        "web.auth.token=web-Zq8v1X3kP0s9",
    ]);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.path("ca.pem")).unwrap()).unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let get = |path: &str, token: Option<&str>| {
        let mut req = client.get(format!("https://{}{path}", tw.web));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().expect("GET over TLS").status().as_u16()
    };
    assert_eq!(get("/readyz", None), 200);
    assert_eq!(get("/api/services", None), 401);
    assert_eq!(get("/api/services", Some("web-Zq8v1X3kP0s9")), 200);
    assert_eq!(get("/metrics", Some("web-Zq8v1X3kP0s9")), 200);
    assert_eq!(get("/", Some("web-Zq8v1X3kP0s9")), 200);
    // Plain HTTP to the TLS port gets no HTTP answer, so nothing is ever sent or served in clear.
    let plain = reqwest::blocking::get(format!("http://{}/readyz", tw.web));
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    // A client that does not trust the CA refuses the server.
    let untrusted = reqwest::blocking::get(format!("https://{}/readyz", tw.web));
    assert!(untrusted.is_err(), "untrusted certificate accepted");
}

/// A missing web certificate is a configuration error naming the field.
#[test]
fn a_missing_web_certificate_is_named() {
    let out = crate::common::tidewatch()
        .args(["check-config", "--set", "web.tls.cert=/nonexistent/cert.pem"])
        .args(["--set", "web.tls.key=/nonexistent/key.pem"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("web.tls.cert: /nonexistent/cert.pem is not a readable file"),
        "{err}"
    );
    assert!(err.contains("web.tls.key"), "{err}");
}
