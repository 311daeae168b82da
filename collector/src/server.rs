//! Serving: the gRPC server (tonic) and an HTTP server for any axum router, each plain or over TLS (rustls),
//! each stopping gracefully: on shutdown they stop accepting, finish the requests in progress, then return.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tower::ServiceExt;

use crate::config::TlsConfig;
use crate::grpc::OtlpGrpc;
use crate::limit::ConnLimit;
use crate::receiver::Receiver;
use crate::{Error, Result};

fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Tls(format!("reading {}: {e}", path.display())))
}

/// A rustls server config from PEM files; with `client_ca`, clients must present a certificate it signed.
pub fn rustls_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &read(&tls.cert)?[..])
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Tls(format!("{}: {e}", tls.cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no certificate found",
            tls.cert.display()
        )));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &read(&tls.key)?[..])
        .map_err(|e| Error::Tls(format!("{}: {e}", tls.key.display())))?
        .ok_or_else(|| Error::Tls(format!("{}: no private key found", tls.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut &read(ca)?[..]) {
                let c = c.map_err(|e| Error::Tls(format!("{}: {e}", ca.display())))?;
                roots
                    .add(c)
                    .map_err(|e| Error::Tls(format!("{}: {e}", ca.display())))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| Error::Tls(format!("client_ca: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The largest HTTP/2 frame a client may send (HTTP/2's default is 16 KiB). A request body that arrives in
/// one DATA frame is decoded where h2 read it; one split over several frames is first joined into a copy
/// (`Receiver::read_body`). Exports of up to 1 MiB (3,000 spans of the usual size) arrive whole.
const MAX_FRAME: u32 = 1024 * 1024;
/// What a client may send ahead on one request before the server reads it (HTTP/2 flow control).
const STREAM_WINDOW: u32 = 1024 * 1024;
/// What a client may send ahead over all its requests on one connection: twice a stream's window, so a
/// client with a few exports in flight (an SDK's 512-span batches are about 170 KB, a collector's
/// 1,000-span batches 330 KB) is not made to split its frames to fit a shared window. Split frames are
/// joined in copies, and flat out those copies, of other sizes than h2's buffers, made the allocator
/// (mimalloc then) keep 15-30 MiB more memory (BENCHMARKS.md, "Memory: where it goes").
const CONNECTION_WINDOW: u32 = 2 * STREAM_WINDOW;

/// Serves the three OTLP gRPC services (one `OtlpGrpc`) on `listener`, with at most `limit` connections,
/// until `shutdown` resolves.
pub async fn serve_grpc(
    listener: TcpListener,
    rx: Receiver,
    tls: Option<&TlsConfig>,
    limit: &ConnLimit,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let mut builder = tonic::transport::Server::builder()
        .max_frame_size(MAX_FRAME)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    if let Some(t) = tls {
        let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(read(&t.cert)?, read(&t.key)?));
        if let Some(ca) = &t.client_ca {
            cfg = cfg.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        builder = builder.tls_config(cfg).map_err(|e| Error::Tls(e.to_string()))?;
    }
    builder
        .serve_with_incoming_shutdown(OtlpGrpc::new(rx), limit.incoming(listener), shutdown)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))
}

/// Serves `router` over HTTP/1.1 and HTTP/2 (and TLS when `tls` is given), with at most `limit`
/// connections when one is given, until `shutdown` resolves, then waits for open connections to finish
/// their requests.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limit: Option<ConnLimit>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // Over the cap the stream is dropped here, which closes it.
        let place = match limit.as_ref().map(ConnLimit::place) {
            Some(None) => continue,
            Some(place) => place,
            None => None,
        };
        let service = hyper::service::service_fn({
            let router = router.clone();
            move |req: hyper::Request<hyper::body::Incoming>| {
                router.clone().oneshot(req.map(axum::body::Body::new))
            }
        });
        match &acceptor {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _place = place;
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "http connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _place = place;
                    let tls = match tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return tracing::debug!(error = %e, "tls handshake failed"),
                        Err(_) => return tracing::debug!("tls handshake timed out"),
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "https connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
