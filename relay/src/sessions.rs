//! What the portal lists about live tunnels and streams: [`TunnelInfo`], [`SessionInfo`] and
//! the table of live streams, [`Sessions`].
//!
//! Each table is touched once per tunnel or stream; byte counts are relaxed atomics the data
//! path bumps, and readers take snapshots (clones of `Arc`s).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nowconnect_shared::StreamId;
use tokio_util::sync::CancellationToken;

/// One registered tunnel as the portal sees it.
#[derive(Debug)]
pub(crate) struct TunnelInfo {
    pub tunnel_id: u64,
    pub agent_id: Arc<str>,
    pub connectors: Vec<String>,
    pub peer: SocketAddr,
    /// Unix ms of the accepted HELLO.
    pub since_ms: u64,
    /// `nowconnect.v2` or `nowconnect.v1`.
    pub protocol: &'static str,
    /// The agent's `ver` from HELLO.
    pub agent_version: String,
    pub active: Arc<AtomicUsize>,
    /// Bytes of this tunnel's streams that have ended (live ones are summed from [`Sessions`]).
    pub closed_c2a: AtomicU64,
    pub closed_a2c: AtomicU64,
    /// Cancelled by an operator: the tunnel closes (reason `admin_disconnect`).
    pub kick: CancellationToken,
    /// This relay's claim on the agent in the cluster directory (fencing token); 0 until the
    /// claim is made (with HA off, it stays 0 and nothing is forwarded to this relay).
    pub epoch: AtomicU64,
    /// The agent's latest STATUS: its multi-host connectors' target health.
    pub targets: crate::target_health::TargetHealth,
}

/// Key of a live stream: stream ids are per tunnel.
pub(crate) type SessionKey = (u64, StreamId);

/// One live stream as the portal sees it.
#[derive(Debug)]
pub(crate) struct SessionInfo {
    pub tunnel: Arc<TunnelInfo>,
    pub cid: StreamId,
    pub connector: String,
    pub client: SocketAddr,
    /// Unix ms of the OPEN.
    pub started_ms: u64,
    pub bytes_c2a: AtomicU64,
    pub bytes_a2c: AtomicU64,
    /// Cancelled by an operator: RST to the agent, the client socket closed at once.
    pub kill: CancellationToken,
}

impl SessionInfo {
    /// The relay-wide session id the portal uses: `<tunnel_id>-<cid>`.
    pub fn id(&self) -> String {
        format!("{}-{}", self.tunnel.tunnel_id, self.cid)
    }
}

/// Live streams, for the portal. A stream lists itself once its OPEN is decided and removes
/// itself (through [`Listed`]) when its task ends.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<SessionKey, Arc<SessionInfo>>>,
}

/// Removes its session from the table when dropped, adding its bytes to the tunnel's total.
#[derive(Debug)]
pub(crate) struct Listed {
    sessions: Arc<Sessions>,
    info: Arc<SessionInfo>,
}

impl Drop for Listed {
    fn drop(&mut self) {
        let i = &self.info;
        i.tunnel
            .closed_c2a
            .fetch_add(i.bytes_c2a.load(Ordering::Relaxed), Ordering::Relaxed);
        i.tunnel
            .closed_a2c
            .fetch_add(i.bytes_a2c.load(Ordering::Relaxed), Ordering::Relaxed);
        self.sessions.lock().remove(&(i.tunnel.tunnel_id, i.cid));
    }
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<SessionKey, Arc<SessionInfo>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(self: &Arc<Self>, info: Arc<SessionInfo>) -> Listed {
        self.lock()
            .insert((info.tunnel.tunnel_id, info.cid), info.clone());
        Listed {
            sessions: self.clone(),
            info,
        }
    }

    /// Every live stream, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<SessionInfo>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by_key(|s| (s.started_ms, s.tunnel.tunnel_id, s.cid));
        v
    }

    pub fn get(&self, key: SessionKey) -> Option<Arc<SessionInfo>> {
        self.lock().get(&key).cloned()
    }
}
