//! The relay mesh (`ha`): persistent WebSocket links to the other relays of the service, and
//! the streams forwarded over them when a client reaches a relay whose agent is elsewhere.
//!
//! Each relay dials every peer it knows (`ha.mesh.peers` and those the registry discovers)
//! and opens the streams of its own clients on that outgoing link ([`dial`]); the peer serves
//! them ([`accept`], [`owner`]). A pair of relays therefore holds two links, one per direction
//! of stream opening, which keeps each link's stream table owned by one side. Frames are the
//! v2 codec's plus FORWARD (the OPEN of a forwarded stream: connector, agent_id, epoch, client
//! address, origin), with the same per-stream credit as agent tunnels end to end: the client's
//! bytes on the origin wait for the owner's credit, and the owner's pipe into the agent's
//! tunnel waits for the agent's ([`bridge`]). See [`link`] for every bound.
//!
//! Only `ha.mode: active` forwards; `shadow` runs the links (observed in metrics) but
//! listeners use local agents only. Never logs payload bytes.

pub(crate) mod accept;
mod bridge;
mod ctx;
mod dial;
mod link;
mod owner;
mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use nowconnect_shared::{Forward, Frame, Limits, StreamId, DEFAULT_WINDOW};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub(crate) use tls::MeshCrypto;

use crate::cluster::{Remote, View};
use crate::config::{HaMode, MeshConfig, RelayConfig, MAX_MESH_PEERS};
use crate::conn::{reject_client, ListenerCtx, NewConn};
use crate::metrics::{LinkStateLabels, Metrics, PeerLabel};
use crate::Shared;

/// The upgrade header naming the dialing relay's `replica_id`.
pub(crate) const REPLICA_HEADER: &str = "x-nowconnect-replica-id";

/// Same rule as `ha.replica_id` (a DNS label-ish name the certificate must carry).
pub(crate) fn valid_replica_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
}

/// WebSocket settings of every mesh link: one v2 frame per message, no compression
/// (tungstenite offers none unless asked).
pub(crate) fn ws_config() -> WebSocketConfig {
    let max = Limits::default().max_v2_frame_len();
    WebSocketConfig::default()
        .read_buffer_size(64 * 1024)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .write_buffer_size(256 * 1024)
        .max_write_buffer_size(16 * 1024 * 1024)
}

/// A client handed to an outgoing link, for the agent `remote` names.
#[derive(Debug)]
pub(crate) struct OpenReq {
    pub conn: NewConn,
    pub remote: Remote,
}

impl OpenReq {
    fn forward(&self, id: StreamId, origin: &str) -> Frame {
        Frame::Forward(Box::new(Forward {
            id,
            connector: self.conn.listener.connector.clone(),
            agent_id: self.remote.agent_id.to_string(),
            epoch: self.remote.epoch,
            client_addr: self.conn.peer.to_string(),
            origin: origin.to_owned(),
        }))
    }

    /// The client is closed at once (reset).
    fn refuse(self) {
        reject_client(self.conn.sock);
    }
}

/// An outgoing link as the forwarder sees it.
#[derive(Debug, Clone)]
struct LinkHandle {
    opens: mpsc::Sender<OpenReq>,
    up: Arc<AtomicBool>,
}

/// The mesh of one relay.
#[derive(Debug)]
pub(crate) struct Core {
    pub shared: Weak<Shared>,
    pub cfg: MeshConfig,
    pub mode: HaMode,
    pub replica_id: Arc<str>,
    pub metrics: Arc<Metrics>,
    pub view: Arc<View>,
    pub crypto: Option<MeshCrypto>,
    pub max_payload: usize,
    pub window: u32,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    links: Mutex<HashMap<Arc<str>, LinkHandle>>,
    /// Per connector: what a forwarded stream's tunnel sees as its listener.
    listeners: Mutex<HashMap<String, Arc<ListenerCtx>>>,
    streams: tokio_util::task::TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Core {
    pub fn new(
        shared: Weak<Shared>,
        cfg: &RelayConfig,
        metrics: Arc<Metrics>,
        view: Arc<View>,
        crypto: Option<MeshCrypto>,
        streams: tokio_util::task::TaskTracker,
    ) -> Core {
        Core {
            shared,
            cfg: cfg.ha.mesh.clone(),
            mode: cfg.ha.mode,
            replica_id: cfg.ha.replica_id.as_str().into(),
            metrics,
            view,
            crypto,
            max_payload: cfg.tunnel.max_ws_payload.min(Limits::default().max_payload),
            window: DEFAULT_WINDOW,
            ping_interval: cfg.tunnel.ping_interval,
            ping_timeout: cfg.tunnel.ping_timeout,
            links: Mutex::default(),
            listeners: Mutex::default(),
            streams,
        }
    }

    pub(crate) fn spawn_stream<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.streams.spawn(f);
    }

    /// A label for `peer`: its id when it is a known peer (bounded), else `other`.
    pub(crate) fn peer_label(&self, peer: &str) -> PeerLabel {
        let known = lock(&self.links).contains_key(peer)
            || self.cfg.peers.iter().any(|p| p.replica_id == peer)
            || self.view.peer(peer).is_some();
        PeerLabel {
            peer: if known {
                peer.to_owned()
            } else {
                "other".to_owned()
            },
        }
    }

    /// Sets `nowconnect_mesh_links{peer,state}` and tells `/readyz` (the view's `health`)
    /// whether the link is up.
    pub(crate) fn set_state(&self, peer: &str, state: &'static str) {
        self.view.health.set_mesh_link_down(peer, state != "up");
        for s in ["up", "connecting", "down"] {
            self.metrics
                .mesh
                .links
                .get_or_create(&LinkStateLabels {
                    peer: peer.to_owned(),
                    state: s,
                })
                .set(i64::from(s == state));
        }
    }

    /// Starts dialing every peer known now that has no link yet (static ones, then the
    /// view's), up to [`MAX_MESH_PEERS`].
    pub fn sync_peers(
        self: &Arc<Self>,
        root: &CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) {
        let mut wanted: Vec<(Arc<str>, Arc<str>)> = self
            .cfg
            .peers
            .iter()
            .map(|p| (p.replica_id.as_str().into(), p.url.as_str().into()))
            .collect();
        wanted.extend(
            self.view
                .snapshot()
                .peers
                .values()
                .map(|p| (p.replica_id.clone(), p.url.clone())),
        );
        let mut links = lock(&self.links);
        for (id, url) in wanted {
            if *id == *self.replica_id || links.contains_key(&id) {
                continue;
            }
            if links.len() >= MAX_MESH_PEERS {
                break;
            }
            let (tx, rx) = mpsc::channel(self.cfg.send_queue_depth);
            let up = Arc::new(AtomicBool::new(false));
            links.insert(
                id.clone(),
                LinkHandle {
                    opens: tx,
                    up: up.clone(),
                },
            );
            debug!(peer = %id, %url, "mesh peer added");
            tasks.spawn(dial::run(self.clone(), id, url, rx, up, root.clone()));
        }
    }

    /// Hands `conn` to the relay that owns an agent for its connector, over an up link
    /// (`ha.mode: active` only). `Some` gives the client back: nobody can take it.
    pub fn forward(&self, mut conn: NewConn) -> Option<NewConn> {
        if self.mode != HaMode::Active {
            return Some(conn);
        }
        let mut tried: Vec<Remote> = Vec::new();
        while let Some(remote) = self.view.pick_remote(&conn.listener.connector, &tried) {
            let link = lock(&self.links).get(&*remote.relay_id).cloned();
            if let Some(link) = link.filter(|l| l.up.load(Ordering::Acquire)) {
                match link.opens.try_send(OpenReq {
                    conn,
                    remote: remote.clone(),
                }) {
                    Ok(()) => return None,
                    Err(mpsc::error::TrySendError::Full(req)) => {
                        self.drop_stream(&remote.relay_id, "queue_full");
                        conn = req.conn;
                    }
                    Err(mpsc::error::TrySendError::Closed(req)) => conn = req.conn,
                }
            }
            tried.push(remote);
            if tried.len() >= MAX_MESH_PEERS {
                break;
            }
        }
        Some(conn)
    }

    /// Outgoing links up now.
    pub fn links_up(&self) -> usize {
        lock(&self.links)
            .values()
            .filter(|l| l.up.load(Ordering::Acquire))
            .count()
    }

    /// Drops the listener settings remembered per connector (a reload changed the listeners).
    pub fn forget_listeners(&self) {
        lock(&self.listeners).clear();
    }

    /// What a forwarded stream's tunnel sees as its listener: this relay's listener for the
    /// connector when it has one (its name for grants and audit), else `mesh`.
    fn listener_for(&self, shared: &Shared, connector: &str) -> Arc<ListenerCtx> {
        let mut map = lock(&self.listeners);
        if let Some(l) = map.get(connector) {
            return l.clone();
        }
        let name = shared
            .listeners
            .bound()
            .into_iter()
            .find(|l| l.connectors.iter().any(|c| c == connector))
            .map_or_else(|| "mesh".to_owned(), |l| l.name.clone());
        let ctx = Arc::new(ListenerCtx {
            name,
            connector: connector.to_owned(),
            allow_cidrs: Vec::new(),
            max_conn_per_source: usize::MAX,
            sources: Default::default(),
            metrics: shared.metrics.connector(connector),
            proxy_protocol: false,
            proxy_pending: Default::default(),
            sni: None,
        });
        // Bounded: only connectors a local agent serves get here (checked by the caller).
        map.insert(connector.to_owned(), ctx.clone());
        ctx
    }
}
