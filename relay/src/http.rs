//! The relay's HTTP side: `/tunnel` (WebSocket upgrade), `/healthz`, `/readyz`, `/metrics`.
//!
//! Plain hyper (HTTP/1.1) over either a TCP or a TLS stream: the same service serves both, and
//! the upgraded connection is handed to [`crate::tunnel::run`]. Four routes do not need a
//! framework. Never logs header values (Authorization, cookies).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use nowconnect_shared::{subprotocol, Limits};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

use crate::metrics::ReasonLabel;
use crate::Shared;

/// Time a client gets to send its request head (and to finish a TLS handshake).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

type Body = Full<Bytes>;

/// Which routes a server exposes: the main one has `/tunnel`, the optional admin port does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Routes {
    All,
    AdminOnly,
}

/// Accepts HTTP connections until the relay stops.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    routes: Routes,
) {
    loop {
        let (sock, peer) = tokio::select! {
            _ = shared.root.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "HTTP accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                        _ = shared.root.cancelled() => break,
                    }
                }
            },
        };
        // The tunnel socket carries every stream's bytes: no Nagle delay on it.
        let _ = sock.set_nodelay(true);
        let shared2 = shared.clone();
        let tls = tls.clone();
        shared.tasks.spawn(async move {
            match tls {
                None => connection(sock, peer, shared2, routes).await,
                Some(acceptor) => {
                    let hs = tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(sock));
                    let stream = tokio::select! {
                        r = hs => r,
                        _ = shared2.root.cancelled() => return,
                    };
                    match stream {
                        Ok(Ok(s)) => connection(s, peer, shared2, routes).await,
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn connection<I>(io: I, peer: SocketAddr, shared: Arc<Shared>, routes: Routes)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let root = shared.root.clone();
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(req, peer, shared, routes)) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::select! {
        r = conn => if let Err(e) = r { debug!(%peer, error = %e, "HTTP connection ended with an error") },
        _ = root.cancelled() => {}
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    routes: Routes,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if shared.ready.load(Ordering::Acquire) && !shared.draining.is_cancelled() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(shared.metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (_, "/tunnel") if routes == Routes::All => upgrade(req, peer, shared),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn auth_failure(shared: &Shared, reason: &'static str) {
    shared
        .metrics
        .agent_auth_failures
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

fn upgrade(mut req: Request<Incoming>, peer: SocketAddr, shared: Arc<Shared>) -> Response<Body> {
    if shared.draining.is_cancelled() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "relay is shutting down\n");
    }
    let allow = &shared.cfg.security.allow_cidrs;
    let ip = peer.ip().to_canonical();
    if !allow.is_empty() && !allow.iter().any(|n| n.contains(&ip)) {
        auth_failure(&shared, "cidr");
        warn!(event = "agent_auth_failed", reason = "cidr", %peer, "agent address not in security.allow_cidrs");
        return text(StatusCode::FORBIDDEN, "address not allowed\n");
    }
    if !shared.cfg.security.dev_bypass {
        // JWT validation is a later issue: until then nothing but the dev bypass admits agents.
        auth_failure(&shared, "not_configured");
        warn!(event = "agent_auth_failed", reason = "not_configured", %peer, "agent authentication not configured");
        return text(
            StatusCode::UNAUTHORIZED,
            "agent authentication not configured\n",
        );
    }
    let is_ws = req.method() == Method::GET
        && header_has_token(&req, header::CONNECTION, "upgrade")
        && header_has_token(&req, header::UPGRADE, "websocket");
    if !is_ws {
        return text(StatusCode::UPGRADE_REQUIRED, "WebSocket upgrade required\n");
    }
    if req.headers().get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
        return text(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Version must be 13\n",
        );
    }
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let negotiated = match subprotocol::negotiate(offered) {
        Ok(n) => n,
        Err(offered) => {
            warn!(%peer, offered = %offered, "no supported tunnel subprotocol offered");
            return text(
                StatusCode::BAD_REQUEST,
                "unsupported subprotocol (expected nowconnect.v2 or nowconnect.v1)\n",
            );
        }
    };

    let on_upgrade = hyper::upgrade::on(&mut req);
    let version = negotiated.version;
    let limits = Limits::default();
    let max_msg = limits.max_v2_frame_len().max(limits.max_v1_text_len());
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_msg))
        .max_frame_size(Some(max_msg))
        // Frames are batched by the writer; flush when its queue drains.
        .write_buffer_size(256 * 1024)
        .max_write_buffer_size(16 * 1024 * 1024);
    let shared2 = shared.clone();
    shared.tasks.spawn(async move {
        let upgraded = tokio::select! {
            r = on_upgrade => r,
            _ = shared2.root.cancelled() => return,
        };
        match upgraded {
            Ok(up) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, Some(config))
                        .await;
                crate::tunnel::run(ws, version, peer, shared2).await;
            }
            Err(e) => debug!(%peer, error = %e, "WebSocket upgrade failed"),
        }
    });

    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = negotiated.echo {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    r
}
