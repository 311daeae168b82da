//! Optional authentication of the web port: one shared token, given as `Authorization: Bearer <token>`
//! (API clients, Prometheus' `authorization` setting) or as the password of HTTP Basic authentication, any
//! user name (browsers: the UI's pages and its `fetch` calls then carry it without any script). The probes
//! (`/healthz`, `/readyz`) stay open so the kubelet needs no secret; `/metrics` is protected unless
//! `protect_metrics` is off. The token's configuration is `web.auth` (the root package's `WebAuthConfig`,
//! the same `TokenConfig` as the OTLP port's). The token is never logged, printed or compared in variable time.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

#[derive(Clone)]
struct Guard {
    token: Arc<[u8]>,
    protect_metrics: bool,
}

/// Puts `router` behind the token.
pub fn protect(router: Router, token: String, protect_metrics: bool) -> Router {
    let guard = Guard {
        token: Arc::from(token.into_bytes()),
        protect_metrics,
    };
    router.layer(middleware::from_fn_with_state(guard, check))
}

async fn check(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let open = matches!(path, "/healthz" | "/readyz") || (path == "/metrics" && !g.protect_metrics);
    if open || authorized(&g.token, req.headers().get(header::AUTHORIZATION)) {
        return next.run(req).await;
    }
    let mut resp = (StatusCode::UNAUTHORIZED, "missing or invalid credentials\n").into_response();
    let h = resp.headers_mut();
    h.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    h.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"tidewatch\", charset=\"UTF-8\""),
    );
    resp
}

/// Whether the header carries the token, as a bearer token or as a Basic password.
fn authorized(token: &[u8], header: Option<&HeaderValue>) -> bool {
    let Some(h) = header.map(HeaderValue::as_bytes) else {
        return false;
    };
    let scheme_end = h.iter().position(|&b| b == b' ').unwrap_or(h.len());
    let (scheme, rest) = h.split_at(scheme_end);
    let cred = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case(b"bearer") {
        same(cred, token)
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        let Some(decoded) = base64_decode(cred) else {
            return false;
        };
        let password = match decoded.iter().position(|&b| b == b':') {
            Some(i) => &decoded[i + 1..],
            None => return false,
        };
        same(password, token)
    } else {
        false
    }
}

/// Compares in time that depends only on the lengths, not on where the first difference is.
fn same(given: &[u8], want: &[u8]) -> bool {
    let diff = given.len() ^ want.len();
    let acc = want
        .iter()
        .zip(given.iter().chain(std::iter::repeat(&0)))
        .fold(diff, |acc, (a, b)| acc | usize::from(a ^ b));
    acc == 0
}

/// Standard base64 (padding optional); `None` on anything else.
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s
        .strip_suffix(b"==")
        .or_else(|| s.strip_suffix(b"="))
        .unwrap_or(s);
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_values() {
        assert_eq!(base64_decode(b"dXNlcjpzM2NyZXQ=").unwrap(), b"user:s3cret");
        assert_eq!(base64_decode(b"YQ==").unwrap(), b"a");
        assert_eq!(base64_decode(b"YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode(b"YWJj").unwrap(), b"abc");
        assert_eq!(base64_decode(b"").unwrap(), b"");
        assert!(base64_decode(b"Y").is_none());
        assert!(base64_decode(b"a!bc").is_none());
    }

    #[test]
    fn bearer_and_basic_carry_the_token() {
        let t = b"s3cret";
        let h = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(authorized(t, Some(&h("Bearer s3cret"))));
        assert!(authorized(t, Some(&h("bearer s3cret"))));
        assert!(authorized(t, Some(&h("Basic dXNlcjpzM2NyZXQ="))));
        assert!(!authorized(t, Some(&h("Bearer s3cre"))));
        assert!(!authorized(t, Some(&h("Bearer s3crett"))));
        assert!(!authorized(t, Some(&h("Bearer"))));
        assert!(!authorized(t, Some(&h("Basic dXNlcg=="))), "no colon");
        assert!(!authorized(t, Some(&h("Basic !!!"))));
        assert!(!authorized(t, Some(&h("Digest s3cret"))));
        assert!(!authorized(t, None));
    }
}
