//! The owner side of a link: `/mesh` upgrades from peer relays, and who they are.
//!
//! Checked before anything is upgraded: HA on, not draining, a WebSocket handshake, a valid
//! [`REPLICA_HEADER`] that is not our own id, and with `ha.mesh.require_mtls` a client
//! certificate chain of the mesh CA whose DNS SAN is that replica_id (whichever server the
//! request came through: a shared tunnel server only asks for the certificate, this checks
//! it). Refusals are counted in `nowconnect_mesh_link_errors_total{peer="unauthenticated"}`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

use super::link::{self, Params, Side};
use super::{valid_replica_id, REPLICA_HEADER};
use crate::metrics::PeerLabel;
use crate::Shared;

type Body = Full<Bytes>;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

/// The client certificate chain a TLS connection presented (leaf first), if any.
pub(crate) type PeerChain = Option<Arc<Vec<CertificateDer<'static>>>>;

fn has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Handles `GET /mesh`.
pub(crate) async fn upgrade(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    chain: PeerChain,
    shared: Arc<Shared>,
) -> Response<Body> {
    let Some(core) = shared.mesh.clone() else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    if shared.draining.is_cancelled() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "relay is shutting down\n");
    }
    let refused = |status: StatusCode, why: &'static str| {
        core.metrics
            .mesh
            .link_errors
            .get_or_create(&PeerLabel {
                peer: "unauthenticated".into(),
            })
            .inc();
        warn!(%peer, reason = why, "mesh peer refused");
        text(status, why)
    };
    let is_ws = has_token(&req, header::CONNECTION, "upgrade")
        && has_token(&req, header::UPGRADE, "websocket")
        && req.headers().get(header::SEC_WEBSOCKET_VERSION)
            == Some(&HeaderValue::from_static("13"));
    let Some(key) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| is_ws)
    else {
        return text(StatusCode::UPGRADE_REQUIRED, "WebSocket upgrade required\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let claimed = req
        .headers()
        .get(REPLICA_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_replica_id(v))
        .map(str::to_owned);
    let Some(claimed) = claimed else {
        return refused(StatusCode::BAD_REQUEST, "missing or invalid replica id\n");
    };
    if claimed == *core.replica_id {
        return refused(StatusCode::BAD_REQUEST, "a relay does not link to itself\n");
    }
    if core.cfg.require_mtls {
        let Some(crypto) = &core.crypto else {
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "mesh TLS is not configured\n",
            );
        };
        let chain = chain.as_deref().map_or(&[][..], |c| &c[..]);
        if let Err(why) = crypto.check_peer(chain, &claimed) {
            warn!(%peer, replica_id = %claimed, reason = why, "mesh peer certificate refused");
            return refused(StatusCode::FORBIDDEN, "client certificate refused\n");
        }
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let shared2 = shared.clone();
    shared.tasks.spawn(async move {
        let upgraded = tokio::select! {
            r = on_upgrade => r,
            _ = shared2.root.cancelled() => return,
        };
        let up = match upgraded {
            Ok(up) => up,
            Err(e) => return debug!(%peer, error = %e, "mesh upgrade failed"),
        };
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(up),
            Role::Server,
            Some(super::ws_config()),
        )
        .await;
        let peer_id: Arc<str> = claimed.into();
        info!(event = "mesh_link_up", %peer, replica_id = %peer_id, "mesh peer linked");
        let p = Params {
            side: Side::Owner,
            peer: peer_id.clone(),
            core: core.clone(),
            up: Arc::new(AtomicBool::new(false)),
        };
        let end = link::run(ws, p, None, &shared2.root).await;
        if end.is_failure() {
            core.metrics
                .mesh
                .link_errors
                .get_or_create(&core.peer_label(&peer_id))
                .inc();
        }
        info!(event = "mesh_link_down", replica_id = %peer_id, end = ?end, "mesh peer link ended");
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}
