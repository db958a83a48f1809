//! One TCP listener per connector: accept, check the client, hand the socket to an agent tunnel.
//!
//! Owns only the accept loop. A client outside `security.allow_cidrs` (global) or the
//! listener's own `allow_cidrs` (both apply), over its source's share of the listener
//! (`max_conn_per_source`), over `max_conn_total`, or for a connector no agent serves is closed
//! at once, before any OPEN, counted and audited; everything else becomes a stream on the tunnel
//! the registry picks (where the PDP, if any, decides before a byte is relayed). A stream whose
//! agent answered `connect_failed` comes back here ([`Reroute`]) and goes the same way, to
//! another agent.
//!
//! With `proxy_protocol`, each connection's PROXY header is read first (off the accept loop),
//! and the address it names is the client's for the allowlists, the PDP and the audit.
//!
//! A `route_by: sni` listener checks a client like any other (PROXY header, allowlists, caps),
//! then peeks its TLS ClientHello (off the accept loop, [`crate::sni`]) and hands it on under
//! the settings of the connector its server name routes to; a client with no route (and no
//! `default`), an invalid ClientHello, or none within `sni_peek_timeout_ms` of accept is
//! closed, counted (`nowconnect_sni_rejected_total`) and audited.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use ipnet::IpNet;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::audit::{Action, Event};
use crate::conn::{reject, reject_client, ClientSock, ConnGuard, ListenerCtx, NewConn, Reroute};
use crate::listeners::Started;
use crate::proxy_protocol::{self, ProxyError};
use crate::Shared;

/// A client behind a PROXY-protocol ingress must have its header read this soon after accept.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

fn allowed(cidrs: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    cidrs.is_empty() || cidrs.iter().any(|net| net.contains(&ip))
}

/// Accepts until the relay starts draining or stops, or a reload removes or re-binds this
/// listener (`started.stop`). Each client is checked with the settings current when it was
/// accepted (a reload sends new ones through `started.settings`).
pub(crate) async fn run(started: Started, shared: Arc<Shared>) {
    let Started {
        socket: listener,
        settings,
        stop,
    } = started;
    let mut ctx = settings.borrow().clone();
    loop {
        let accepted = tokio::select! {
            _ = shared.draining.cancelled() => break,
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        ctx = settings.borrow().clone();
        match accepted {
            Ok((sock, peer)) => serve(sock, peer, &ctx, &shared, Instant::now()),
            Err(e) => {
                ctx.metrics.accept_errors.inc();
                warn!(listener = %ctx.name, connector = %ctx.connector, error = %e, "accept failed");
                // Typically out of file descriptors: back off briefly instead of spinning.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = shared.root.cancelled() => break,
                }
            }
        }
    }
    if stop.is_cancelled() && !shared.draining.is_cancelled() {
        // Removed or re-bound by a reload: clients whose handshake completed before the socket
        // closes are served, not reset with the backlog.
        while let Some(Ok((sock, peer))) = listener.accept().now_or_never() {
            serve(sock, peer, &ctx, &shared, Instant::now());
        }
    }
    info!(event = "listener_stopped", listener = %ctx.name, connector = %ctx.connector, "listener stopped accepting");
}

/// `accepted`: when the client was accepted (an SNI peek's deadline counts from it).
fn serve(
    sock: TcpStream,
    peer: SocketAddr,
    ctx: &Arc<ListenerCtx>,
    shared: &Arc<Shared>,
    accepted: Instant,
) {
    if ctx.proxy_protocol {
        proxied(sock, peer, ctx, shared, accepted);
    } else {
        route(sock, peer, ctx, shared, accepted);
    }
}

/// A listener with `proxy_protocol`: refuses an untrusted peer at once, else reads the PROXY
/// header in a task of its own (the accept loop never waits for one) within
/// [`PROXY_HEADER_TIMEOUT`], at most `limits.max_conn_total` at once per listener, and routes
/// the connection under the address the header names.
fn proxied(
    sock: TcpStream,
    peer: SocketAddr,
    ctx: &Arc<ListenerCtx>,
    shared: &Arc<Shared>,
    accepted: Instant,
) {
    if !proxy_protocol::is_trusted(peer, &shared.cfg().security.trusted_proxies) {
        shared
            .metrics
            .rejected(&ctx.connector, ProxyError::Untrusted.reason());
        debug!(listener = %ctx.name, %peer, "PROXY protocol connection from an untrusted peer closed");
        reject(sock);
        return;
    }
    let max = shared.cfg().limits.max_conn_total;
    let Some(pending) = ConnGuard::try_acquire(&ctx.proxy_pending, max) else {
        shared.metrics.rejected(&ctx.connector, "proxy_pending");
        reject(sock);
        return;
    };
    let (ctx, shared2) = (ctx.clone(), shared.clone());
    shared.tasks.spawn(async move {
        let _pending = pending;
        let mut sock = sock;
        let deadline = accepted + PROXY_HEADER_TIMEOUT;
        let real = tokio::select! {
            r = proxy_protocol::read_header(&mut sock, peer, deadline) => r,
            _ = shared2.root.cancelled() => return,
        };
        match real {
            Ok(real) => route(sock, real, &ctx, &shared2, accepted),
            Err(e) => {
                shared2.metrics.rejected(&ctx.connector, e.reason());
                debug!(listener = %ctx.name, %peer, error = %e, "connection without a valid PROXY header closed");
                reject(sock);
            }
        }
    });
}

fn route(
    sock: TcpStream,
    peer: SocketAddr,
    ctx: &Arc<ListenerCtx>,
    shared: &Arc<Shared>,
    accepted: Instant,
) {
    let _ = sock.set_nodelay(true);
    let global = &shared.cfg().security.allow_cidrs;
    // pol-cidr-allowlists: an operator may switch the allowlists off (e.g. during an incident).
    let enforce = shared.state.cidr_allowlists();
    let blocked_by = if !enforce {
        None
    } else if !allowed(global, peer.ip()) {
        Some("security.allow_cidrs")
    } else if !allowed(&ctx.allow_cidrs, peer.ip()) {
        Some("listener allow_cidrs")
    } else {
        None
    };
    if let Some(list) = blocked_by {
        let detail = format!("listener={}; not in {list}", ctx.name);
        return refuse(sock, peer, ctx, shared, ("cidr", "cidr_blocked"), detail);
    }
    // Per source first: a source at its share is told so even when the relay is full too.
    let per_source = ctx.max_conn_per_source;
    let Some(slot) = ctx.sources.try_acquire(peer.ip(), per_source) else {
        let detail = format!("listener={}; max_conn_per_source={per_source}", ctx.name);
        return refuse(
            sock,
            peer,
            ctx,
            shared,
            ("conn_cap", "max_conn_per_source"),
            detail,
        );
    };
    let max = shared.cfg().limits.max_conn_total;
    let Some(guard) = ConnGuard::try_acquire(&shared.conns, max) else {
        let detail = format!("listener={}; limits.max_conn_total={max}", ctx.name);
        return refuse(
            sock,
            peer,
            ctx,
            shared,
            ("conn_cap", "max_conn_total"),
            detail,
        );
    };
    let guard = guard.with_source(slot);
    if ctx.sni.is_some() {
        by_sni(sock, peer, ctx, guard, shared, accepted);
    } else {
        dispatch(sock, peer, ctx, guard, shared);
    }
}

/// An sni listener's checked client: peeks its ClientHello in a task of its own (holding the
/// client's connection slots, so peeks are capped like connections), then dispatches it under
/// the settings of the connector its server name routes to, or closes it.
fn by_sni(
    sock: TcpStream,
    peer: SocketAddr,
    ctx: &Arc<ListenerCtx>,
    guard: ConnGuard,
    shared: &Arc<Shared>,
    accepted: Instant,
) {
    let (ctx, shared2) = (ctx.clone(), shared.clone());
    shared.tasks.spawn(async move {
        let Some(sni) = &ctx.sni else {
            return;
        };
        let deadline = accepted + sni.table.peek_timeout;
        let peeked = tokio::select! {
            r = crate::sni::peek_server_name(&sock, deadline) => r,
            _ = shared2.root.cancelled() => return,
        };
        let refusal = match peeked {
            Ok(name) => match sni.table.route(name.as_deref()) {
                Some((connector, how)) => match sni.by_connector.get(connector) {
                    Some(target) => {
                        shared2
                            .metrics
                            .sni
                            .route(&ctx.name, connector, how.as_str());
                        return dispatch(sock, peer, target, guard, &shared2);
                    }
                    // Built from the same table: not reached.
                    None => (
                        "unknown_name",
                        format!("connector {connector} has no settings"),
                    ),
                },
                None => match name {
                    None => ("no_sni", "no server name and no default".to_owned()),
                    Some(n) => ("unknown_name", format!("sni={n}; no route and no default")),
                },
            },
            Err(e) => (e.reason(), e.to_string()),
        };
        let (reason, why) = refusal;
        shared2.metrics.sni.reject(&ctx.name, reason);
        shared2.audit.record(
            Event::new(Action::Open, false)
                .by("sni")
                .reason(reason)
                .source(peer)
                .detail(format!("listener={}; {why}", ctx.name)),
        );
        drop(guard);
        reject(sock);
    });
}

/// A checked client of `ctx`'s connector: becomes a stream on a tunnel of an agent that serves
/// it (here, or over the mesh), or is refused (`no_agent`).
fn dispatch(
    sock: TcpStream,
    peer: SocketAddr,
    ctx: &Arc<ListenerCtx>,
    guard: ConnGuard,
    shared: &Arc<Shared>,
) {
    ctx.metrics.connections.inc();
    let conn = NewConn {
        sock: ClientSock::Tcp(sock),
        peer,
        listener: ctx.clone(),
        guard,
        reopen: None,
    };
    let Err(conn) = hand_over(conn, None, shared) else {
        return;
    };
    // No local agent: the relay that owns one, over the mesh (`ha.mode: active` only).
    let conn = match &shared.mesh {
        Some(mesh) => match mesh.forward(*conn) {
            None => return,
            Some(back) => back,
        },
        None => *conn,
    };
    let detail = format!("listener={}; no agent serves this connector", ctx.name);
    refuse(
        conn.sock,
        peer,
        ctx,
        shared,
        ("no_agent", "no_agent"),
        detail,
    );
}

/// Hands `conn` to the tunnel the registry picks for its connector (not one of agent `except`).
/// `Err`: no agent serves it.
fn hand_over(conn: NewConn, except: Option<&str>, shared: &Shared) -> Result<(), Box<NewConn>> {
    // Boxed on the tunnel's queue: a tokio channel holds a block of 32 slots for as long as
    // it lives, each as large as its item, and every idle tunnel has this queue.
    let mut conn = Box::new(conn);
    // A tunnel that just ended may still be listed for a moment: try the next pick.
    for _ in 0..8 {
        let Some(agent) = shared.registry.pick(&conn.listener.connector, except) else {
            break;
        };
        match agent.conns.send(conn) {
            Ok(()) => return Ok(()),
            Err(tokio::sync::mpsc::error::SendError(back)) => {
                shared.registry.unregister(agent.tunnel_id);
                conn = back;
            }
        }
    }
    Err(conn)
}

/// A retry goes where a new client would, minus the agent that failed it.
impl Reroute for Shared {
    fn reroute(&self, conn: NewConn, except: &str) -> Result<(), Box<NewConn>> {
        hand_over(conn, Some(except), self)
    }
}

/// Counts, audits and resets a refused client. `(by, reason)`: what decided, and the metric
/// label and audit reason. No log line of its own: the audit record is one, and the audit
/// trail rate-limits refusals per source (a connect/reset loop must not flood the journal).
fn refuse(
    sock: impl Into<ClientSock>,
    peer: SocketAddr,
    ctx: &ListenerCtx,
    shared: &Shared,
    (by, reason): (&'static str, &'static str),
    detail: String,
) {
    shared.metrics.rejected(&ctx.connector, reason);
    shared.audit.record(
        Event::new(Action::Open, false)
            .by(by)
            .reason(reason)
            .connector(&ctx.connector)
            .source(peer)
            .detail(detail),
    );
    reject_client(sock.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_allowlist() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        assert!(allowed(&nets, "10.1.2.3".parse().expect("ip")));
        assert!(!allowed(&nets, "192.168.1.1".parse().expect("ip")));
        // IPv4-mapped IPv6 (dual-stack listener) counts as the IPv4 address.
        assert!(allowed(&nets, "::ffff:10.0.0.1".parse().expect("ip")));
        assert!(allowed(&[], "192.168.1.1".parse().expect("ip")));
    }
}
