//! The origin side of a link: dial one peer's `/mesh` and keep the link up, with backoff.
//!
//! `wss://` peers are verified against the mesh CA under the peer's `replica_id` as server name
//! (not the URL's host: the certificate must name the replica), and see our certificate. The
//! upgrade carries our `replica_id` in [`REPLICA_HEADER`]; the peer checks it against our
//! certificate. The backoff doubles from [`FIRST_RETRY`] up to `connect_backoff_max` and starts
//! again after a link that stayed up for [`HEALTHY`].

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::link::{self, End, Params, Side};
use super::{Core, OpenReq, REPLICA_HEADER};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const HEALTHY: Duration = Duration::from_secs(5);
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps the link to `peer` up until the relay stops.
pub(super) async fn run(
    core: Arc<Core>,
    peer: Arc<str>,
    url: Arc<str>,
    mut opens: mpsc::Receiver<OpenReq>,
    up: Arc<AtomicBool>,
    root: CancellationToken,
) {
    let label = core.peer_label(&peer);
    let mut backoff = FIRST_RETRY;
    let mut linked_before = false;
    loop {
        core.set_state(&peer, "connecting");
        let attempt = tokio::select! {
            r = dial_and_run(&core, &peer, &url, &mut opens, &up, &root, linked_before) => r,
            _ = root.cancelled() => return,
        };
        match attempt {
            Ok((end, lasted)) => {
                linked_before = true;
                if lasted >= HEALTHY {
                    backoff = FIRST_RETRY;
                }
                if end == End::Stopped && root.is_cancelled() {
                    return;
                }
                if end.is_failure() {
                    core.metrics.mesh.link_errors.get_or_create(&label).inc();
                }
                warn!(peer = %peer, end = ?end, "mesh link lost; dialing again");
            }
            Err(e) => {
                core.metrics.mesh.link_errors.get_or_create(&label).inc();
                warn!(peer = %peer, %url, error = %e, retry_ms = backoff.as_millis() as u64, "mesh dial failed");
            }
        }
        core.set_state(&peer, "down");
        // Clients handed over while no link was up are refused now.
        while let Ok(req) = opens.try_recv() {
            core.drop_stream(&peer, "link_down");
            req.refuse();
        }
        // A client handed over just as the link went down is refused at once, not after the
        // backoff.
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                _ = root.cancelled() => return,
                Some(req) = opens.recv() => {
                    core.drop_stream(&peer, "link_down");
                    req.refuse();
                }
            }
        }
        backoff = (backoff * 2).min(core.cfg.connect_backoff_max);
    }
}

/// One dial; `Ok` once a link ran (how it ended, how long it lasted).
async fn dial_and_run(
    core: &Arc<Core>,
    peer: &Arc<str>,
    url: &str,
    opens: &mut mpsc::Receiver<OpenReq>,
    up: &Arc<AtomicBool>,
    root: &CancellationToken,
    reconnect: bool,
) -> Result<(End, Duration), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else {
        return Err("mesh URL must be ws:// or wss://".into());
    };
    // A discovered URL comes from Redis: with mTLS required, a plain one is never dialed (it
    // would carry clients' streams in clear to a host nobody authenticated).
    if !tls && core.cfg.require_mtls {
        return Err("ws:// peer refused: ha.mesh.require_mtls is on".into());
    }
    let authority = rest.split('/').next().unwrap_or(rest);
    let tcp = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(authority))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return upgrade(core, peer, url, tcp, opens, up, root, reconnect).await;
    }
    let crypto = core
        .crypto
        .as_ref()
        .ok_or("wss:// peer without ha.mesh.tls")?;
    let name =
        ServerName::try_from(peer.to_string()).map_err(|_| "replica_id is not a DNS name")?;
    let stream = tokio::time::timeout(DIAL_TIMEOUT, crypto.connector.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS: {e}"))?;
    upgrade(core, peer, url, stream, opens, up, root, reconnect).await
}

#[allow(clippy::too_many_arguments)]
async fn upgrade<S>(
    core: &Arc<Core>,
    peer: &Arc<str>,
    url: &str,
    io: S,
    opens: &mut mpsc::Receiver<OpenReq>,
    up: &Arc<AtomicBool>,
    root: &CancellationToken,
    reconnect: bool,
) -> Result<(End, Duration), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("mesh URL: {e}"))?;
    let me = HeaderValue::from_str(&core.replica_id).map_err(|_| "replica_id")?;
    req.headers_mut().insert(REPLICA_HEADER, me);
    let handshake = tokio_tungstenite::client_async_with_config(req, io, Some(super::ws_config()));
    let (ws, _) = tokio::time::timeout(DIAL_TIMEOUT, handshake)
        .await
        .map_err(|_| "upgrade timed out".to_owned())?
        .map_err(|e| format!("upgrade: {e}"))?;
    if reconnect {
        core.metrics
            .mesh
            .link_reconnects
            .get_or_create(&core.peer_label(peer))
            .inc();
    }
    core.set_state(peer, "up");
    info!(event = "mesh_link_up", peer = %peer, "mesh link up");
    let started = Instant::now();
    let p = Params {
        side: Side::Origin,
        peer: peer.clone(),
        core: core.clone(),
        up: up.clone(),
    };
    let end = link::run(ws, p, Some(opens), root).await;
    Ok((end, started.elapsed()))
}
