//! The relay's HTTP side: `/tunnel` (WebSocket upgrade), `/healthz`, `/readyz`, `/metrics`, and
//! the portal API under `/api/v1` ([`crate::portal`]).
//!
//! Plain hyper (HTTP/1.1) over either a TCP or a TLS stream: the same service serves both, and
//! the upgraded connection is handed to [`crate::tunnel::run`]. A handful of routes do not need
//! a framework. Never logs header values (Authorization, cookies).
//!
//! `/tunnel` checks, in order, before anything is upgraded: draining (503), the agent source
//! allowlist `security.tunnel_allow_cidrs` (403), the per-source abuse gate (429), the
//! WebSocket handshake itself (426/400), then the Bearer token (401/403/503). Every refusal is
//! counted in `nowconnect_agent_auth_failures_total{reason}` and audited; the token never is.
//!
//! Before any of that, each connection passes the pre-auth limits (`tunnel.preauth`, module
//! `preauth`): the total cap at accept, the PROXY header on the tunnel port when
//! `tunnel.proxy_protocol` is on (module `proxy_protocol`; from then on `peer` is the address it
//! names, everywhere), the per-source cap, one deadline for PROXY header, TLS handshake and first
//! request head, then the head size caps and the idle deadline between requests. Refusals there
//! are counted in `nowconnect_http_refused_total{reason}`, logged only at debug level.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::LiveAcceptor;
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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

use crate::abuse::{Refusal, SourceKey};
use crate::audit::{Action, Event};
use crate::auth::{self, AuthError};
use crate::conn::reject;
use crate::preauth::{Preauth, PreauthSlot};
use crate::proxy_protocol::{self, ProxyError};
use crate::Shared;

/// Read buffer between an accepted socket and the TLS layer: one full TLS record (16 KiB of
/// plaintext plus header and tag), held only while the connection is busy
/// ([`crate::readbuf::IdleFreeReader`]; the agent, with one connection, buffers 64 KiB).
const TLS_READ_BUFFER: usize = 16 * 1024 + 256;
/// Most bytes tungstenite reads at once: it zero-fills that much first (its default is 128 KiB)
/// and every tunnel keeps that buffer for its lifetime. 4 KiB, not one TLS record (16 KiB): an
/// idle tunnel holds 12 KiB less (10,000 tunnels: 50 -> 34 KiB each), and bulk through one
/// stream costs no measurable relay CPU more (four copies out of rustls' plaintext per record
/// instead of one, no extra syscall; BENCHMARKS.md, "10,000 idle agent tunnels").
const WS_READ_BUFFER: usize = 4 * 1024;

type Body = Full<Bytes>;

/// Which routes a server exposes besides health: the main one has `/tunnel` (and the portal
/// unless `portal.bind` moves it), the optional metrics port neither. `/metrics` is served only
/// on the metrics port when `observability.metrics_port` is set, else on every port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Routes {
    pub tunnel: bool,
    /// `/mesh`: links from the other relays (`ha`), here or on `ha.mesh.listen`.
    pub mesh: bool,
    pub portal: bool,
    pub metrics: bool,
}

/// A connection the accept loop took, on its way to its first request.
#[derive(Debug)]
struct Accepted {
    sock: TcpStream,
    /// The socket peer; the PROXY header, where one is read, names the real one.
    peer: SocketAddr,
    /// Held until the connection is upgraded to a tunnel or closed.
    slot: PreauthSlot,
    /// For the PROXY header, the TLS handshake and the first request head together.
    deadline: Instant,
    /// The connection starts with a PROXY header (`tunnel.proxy_protocol`, on the tunnel port).
    proxy: bool,
}

/// Accepts HTTP connections until the relay stops. Each server counts its own unauthenticated
/// connections against `tunnel.preauth`.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<LiveAcceptor>,
    shared: Arc<Shared>,
    routes: Routes,
) {
    let preauth = Preauth::new(&shared.cfg().tunnel.preauth, shared.metrics.clone());
    let proxy = routes.tunnel && shared.cfg().tunnel.proxy_protocol;
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
        // Refused at once, before a task or a buffer exists for it (counted, not logged).
        let Some(slot) = preauth.admit() else {
            reject(sock);
            continue;
        };
        if proxy && !proxy_protocol::is_trusted(peer, &shared.cfg().security.trusted_proxies) {
            shared.metrics.http_refused(ProxyError::Untrusted.reason());
            debug!(%peer, "PROXY protocol connection from an untrusted peer closed");
            reject(sock);
            continue;
        }
        // The tunnel socket carries every stream's bytes: no Nagle delay on it.
        let _ = sock.set_nodelay(true);
        let deadline = Instant::now() + shared.cfg().tunnel.preauth.head_timeout;
        let Some(shards) = &shared.shards else {
            let conn = Accepted {
                sock,
                peer,
                slot,
                deadline,
                proxy,
            };
            shared
                .tasks
                .spawn(accepted(conn, tls.clone(), shared.clone(), routes));
            continue;
        };
        // Registered again on the shard so its readiness wakes that thread.
        let sock = match sock.into_std() {
            Ok(s) => s,
            Err(e) => {
                debug!(%peer, error = %e, "cannot move the connection to a shard");
                continue;
            }
        };
        let (rt, placement) = shards.place();
        let shared2 = shared.clone();
        let tls = tls.clone();
        rt.spawn(shared.tasks.track_future(async move {
            let _placement = placement;
            match TcpStream::from_std(sock) {
                Ok(sock) => {
                    let conn = Accepted {
                        sock,
                        peer,
                        slot,
                        deadline,
                        proxy,
                    };
                    accepted(conn, tls, shared2, routes).await
                }
                Err(e) => debug!(%peer, error = %e, "cannot move the connection to a shard"),
            }
        }));
    }
}

/// One accepted connection: the PROXY header when expected, the per-source cap, TLS when
/// configured, then HTTP.
async fn accepted(mut c: Accepted, tls: Option<LiveAcceptor>, shared: Arc<Shared>, routes: Routes) {
    let mut peer = c.peer;
    if c.proxy {
        let read = proxy_protocol::read_header(&mut c.sock, peer, c.deadline);
        let real = tokio::select! {
            r = read => r,
            _ = shared.root.cancelled() => return,
        };
        match real {
            Ok(real) => peer = real,
            Err(e) => {
                shared.metrics.http_refused(e.reason());
                debug!(%peer, error = %e, "connection without a valid PROXY header closed");
                reject(c.sock);
                return;
            }
        }
    }
    if !c.slot.charge(peer.ip()) {
        reject(c.sock);
        return;
    }
    let Accepted {
        sock,
        slot,
        deadline,
        ..
    } = c;
    // A connection that sends nothing costs no buffers: hyper and TLS get it at its first byte
    // (a peek: `readable()` alone reports a fresh socket ready before anything arrived).
    let mut probe = [0u8; 1];
    let first_byte = tokio::time::timeout_at(deadline, sock.peek(&mut probe));
    let readable = tokio::select! {
        r = first_byte => r,
        _ = shared.root.cancelled() => return,
    };
    match readable {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "connection failed before its first byte");
            return;
        }
        Err(_) => {
            shared.metrics.http_refused("head_timeout");
            debug!(%peer, "nothing sent before the head deadline; connection closed");
            return;
        }
    }
    match tls {
        None => connection(sock, peer, shared, routes, slot, deadline, None).await,
        Some(acceptor) => {
            // rustls reads at most 4 KiB per call: buffer the socket so a record
            // costs one `recvfrom`, not four (a buffer an idle tunnel gives back).
            let sock = crate::readbuf::IdleFreeReader::new(sock, TLS_READ_BUFFER);
            let hs = tokio::time::timeout_at(deadline, acceptor.current().accept(sock));
            let stream = tokio::select! {
                r = hs => r,
                _ = shared.root.cancelled() => return,
            };
            match stream {
                Ok(Ok(s)) => {
                    // Only `/mesh` looks at a client certificate (a relay of the service).
                    let chain = s.get_ref().1.peer_certificates().map(|c| {
                        Arc::new(c.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>())
                    });
                    connection(s, peer, shared, routes, slot, deadline, chain).await
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => {
                    shared.metrics.http_refused("tls_timeout");
                    debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
}

/// Serves HTTP on one connection. The first request head must be complete by `deadline`
/// (`head_timeout_ms` after accept); after that, hyper's header timer, set to `idle_timeout_ms`,
/// closes a keep-alive connection that does not complete its next head in time: hyper starts
/// it whenever it waits for a head, so it is the idle deadline between requests too.
async fn connection<I>(
    io: I,
    peer: SocketAddr,
    shared: Arc<Shared>,
    routes: Routes,
    slot: PreauthSlot,
    deadline: Instant,
    chain: crate::mesh::accept::PeerChain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let root = shared.root.clone();
    let limits = shared.cfg().tunnel.preauth.clone();
    let metrics = shared.metrics.clone();
    // Woken by every request that reaches the service: its head is complete.
    let served = Arc::new(Notify::new());
    let served2 = served.clone();
    let svc = service_fn(move |req| {
        served2.notify_one();
        let shared = shared.clone();
        let chain = chain.clone();
        async move { Ok::<_, Infallible>(handle(req, peer, shared, routes, chain).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let first_head = tokio::time::sleep_until(deadline);
    tokio::pin!(first_head);
    let mut had_request = false;
    loop {
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        metrics.http_refused(if had_request { "idle_timeout" } else { "head_timeout" });
                    } else if e.is_parse_too_large() {
                        metrics.http_refused("head_too_large");
                    }
                    debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                break;
            }
            _ = served.notified(), if !had_request => had_request = true,
            _ = &mut first_head, if !had_request => {
                metrics.http_refused("head_timeout");
                debug!(%peer, "no complete request head in time; connection closed");
                break;
            }
            _ = root.cancelled() => break,
        }
    }
    // Upgraded (the tunnel runs on in its own task) or closed: no longer unauthenticated.
    drop(slot);
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    text_owned(status, Bytes::from_static(body.as_bytes()))
}

fn text_owned(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    routes: Routes,
    chain: crate::mesh::accept::PeerChain,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            let ready = shared.is_ready();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            // HA shadow/active: a JSON body that says what is degraded (still 200).
            match crate::cluster::run::readiness(&shared, ready) {
                Some(body) => {
                    let mut r = text_owned(status, body);
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    r
                }
                None if ready => text(status, "ready\n"),
                None => text(status, "not ready\n"),
            }
        }
        (&Method::GET, "/metrics") if routes.metrics => {
            let mut r = Response::new(Full::new(Bytes::from(crate::scrape::render(&shared))));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (_, "/tunnel") if routes.tunnel => upgrade(req, peer, shared).await,
        (&Method::GET, "/mesh") if routes.mesh => {
            crate::mesh::accept::upgrade(req, peer, chain, shared).await
        }
        (_, p) if routes.portal && (p == "/api/v1" || p.starts_with("/api/v1/")) => {
            crate::portal::handle(req, peer, shared).await
        }
        (_, p) if routes.portal && (p == "/ui" || p.starts_with("/ui/")) => {
            crate::ui::handle(req, peer, shared).await
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Counts, audits and answers a refused `/tunnel` attempt. Failures that say something about
/// the caller (not our own 503s) count toward the source's cool-down.
fn refuse(
    shared: &Shared,
    peer: SocketAddr,
    key: &SourceKey,
    status: StatusCode,
    reason: &'static str,
    message: &str,
) -> Response<Body> {
    shared.metrics.agent_auth_failed(reason);
    shared.audit.record(
        Event::new(Action::TunnelAuth, false)
            .reason(reason)
            .source(peer),
    );
    if status != StatusCode::SERVICE_UNAVAILABLE {
        shared.gate.note_failure(key, peer, &shared.audit);
    }
    let mut r = text_owned(status, format!("{message}\n"));
    if status == StatusCode::UNAUTHORIZED {
        // RFC 6750: tell the agent the token is what failed; `reason` is already public.
        if let Ok(v) = HeaderValue::from_str(&format!(
            "Bearer error=\"invalid_token\", error_description=\"{reason}\""
        )) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    r
}

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

async fn upgrade(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Response<Body> {
    if shared.draining.is_cancelled() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "relay is shutting down\n");
    }
    let allow = &shared.cfg().security.tunnel_allow_cidrs;
    let ip = peer.ip().to_canonical();
    // Behind a shared egress, failures count per (address, unverified subject): one user's bad
    // tokens do not cool down the other agents there.
    let source = shared.gate.key(ip, || {
        auth::bearer(req.headers())
            .ok()
            .and_then(auth::unverified_subject)
    });
    if !allow.is_empty() && !allow.iter().any(|n| n.contains(&ip)) {
        return refuse(
            &shared,
            peer,
            &source,
            StatusCode::FORBIDDEN,
            "cidr_blocked",
            "address not allowed",
        );
    }
    let slot = match shared.gate.admit(&source) {
        Ok(slot) => slot,
        Err(refusal) => {
            // Not audited one by one: a source in cool-down may knock thousands of times.
            shared.metrics.agent_auth_failed(refusal.reason());
            debug!(%peer, reason = refusal.reason(), "tunnel attempt refused");
            let mut r = match refusal {
                Refusal::Cooldown(_) => text(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed attempts; retry later\n",
                ),
                Refusal::TooManyPending => text(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many tunnel attempts in progress from this address\n",
                ),
            };
            let retry = match refusal {
                Refusal::Cooldown(left) => left.as_secs().max(1),
                Refusal::TooManyPending => 1,
            };
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry));
            return r;
        }
    };
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

    let identity = if shared.cfg().security.dev_bypass {
        None
    } else {
        let checked = match (
            shared.checkers.auth.load_full(),
            auth::bearer(req.headers()),
        ) {
            (None, _) => Err(AuthError::NotConfigured),
            (Some(auth), Ok(token)) => auth.authenticate(token).await,
            (Some(_), Err(e)) => Err(e),
        };
        match checked {
            Ok(identity) => Some(identity),
            Err(e) => {
                return refuse(
                    &shared,
                    peer,
                    &source,
                    e.status(),
                    e.reason(),
                    &e.to_string(),
                )
            }
        }
    };
    if let Some(id) = &identity {
        if shared.state.is_blocked(&id.agent_id) {
            // Not a credential failure: does not count toward the source's cool-down.
            shared.metrics.agent_auth_failed("agent_blocked");
            shared.audit.record(
                Event::new(Action::TunnelAuth, false)
                    .reason("agent_blocked")
                    .agent(&id.agent_id)
                    .source(peer)
                    .detail("agent_id is on the portal block list"),
            );
            return text(StatusCode::FORBIDDEN, "agent is blocked\n");
        }
    }
    shared.metrics.agent_auth_successes.inc();
    let mut event = Event::new(Action::TunnelAuth, true).source(peer);
    event = match &identity {
        Some(id) => {
            let e = event.agent(&id.agent_id);
            match &id.subject {
                Some(sub) => e.detail(format!("sub={sub}")),
                None => e,
            }
        }
        None => event.reason("dev_bypass"),
    };
    shared.audit.record(event);

    let on_upgrade = hyper::upgrade::on(&mut req);
    let version = negotiated.version;
    let limits = Limits::default();
    let max_msg = limits.max_v2_frame_len().max(limits.max_v1_text_len());
    let config = WebSocketConfig::default()
        // tungstenite zero-fills up to this much before every read (default 128 KiB).
        .read_buffer_size(WS_READ_BUFFER)
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
                // Counted: the writer tells a slow agent from one that takes nothing.
                let written = crate::tunnel::Written::default();
                let io = crate::tunnel::Counted::new(TokioIo::new(up), written.clone());
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                let admission = crate::tunnel::Admission { identity, slot };
                crate::tunnel::run(ws, version, peer, shared2, admission, written).await;
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
