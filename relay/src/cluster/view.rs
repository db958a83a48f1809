//! The cluster as this relay last saw it: connector -> remote owners, peers' mesh URLs.
//!
//! Written by the registry task (a whole snapshot at a time), read by listeners on every
//! client without waiting: a lookup is one short lock and a clone of an `Arc`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::health::Health;

/// An agent connected to another relay, as the directory names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Remote {
    /// The owner relay's `ha.replica_id`.
    pub relay_id: Arc<str>,
    pub agent_id: Arc<str>,
    /// The fencing token of the owner's claim: the owner refuses a stream with any other.
    pub epoch: u64,
}

/// Another relay of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerInfo {
    pub replica_id: Arc<str>,
    /// `wss://host:port/mesh`.
    pub url: Arc<str>,
}

/// One snapshot of the directory, without this relay's own entries.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    /// Connector -> agents serving it on other relays.
    pub owners: HashMap<String, Vec<Remote>>,
    /// Every agent's current epoch (this relay's too): a tunnel whose claim is older than the
    /// directory's newest for its agent_id has been superseded elsewhere.
    pub epochs: HashMap<Arc<str>, u64>,
    /// Other relays, by `replica_id`.
    pub peers: HashMap<Arc<str>, PeerInfo>,
}

#[derive(Debug, Default)]
pub(crate) struct View {
    snap: Mutex<Arc<Snapshot>>,
    /// Round-robin start among a connector's remote owners.
    next: AtomicUsize,
    /// Registry and mesh link state, for `/readyz`.
    pub health: Health,
    /// Woken when a local tunnel registers or ends (the registry task claims or releases).
    local: Notify,
}

impl View {
    fn lock(&self) -> MutexGuard<'_, Arc<Snapshot>> {
        self.snap.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A local tunnel registered or ended: the registry task reconciles its claims.
    pub fn local_changed(&self) {
        self.local.notify_one();
    }

    /// Resolves after [`View::local_changed`] (a call before the wait counts too).
    pub async fn local_change(&self) {
        self.local.notified().await;
    }

    /// Replaces the whole view.
    pub fn set(&self, snap: Snapshot) {
        *self.lock() = Arc::new(snap);
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.lock().clone()
    }

    /// A remote owner for a new stream on `connector` (round robin), skipping `except`.
    pub fn pick_remote(&self, connector: &str, except: &[Remote]) -> Option<Remote> {
        let snap = self.snapshot();
        let owners = snap.owners.get(connector)?;
        let n = owners.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &owners[(start + i) % n])
            .find(|r| !except.contains(r))
            .cloned()
    }

    /// The directory's newest epoch for `agent_id`, if it knows the agent.
    pub fn epoch_of(&self, agent_id: &str) -> Option<u64> {
        self.snapshot().epochs.get(agent_id).copied()
    }

    /// Where the relay `replica_id` serves `/mesh`, if it is known.
    pub fn peer(&self, replica_id: &str) -> Option<PeerInfo> {
        self.snapshot().peers.get(replica_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(relay: &str, agent: &str, epoch: u64) -> Remote {
        Remote {
            relay_id: relay.into(),
            agent_id: agent.into(),
            epoch,
        }
    }

    #[test]
    fn an_empty_view_has_no_owner_and_picks_rotate() {
        let v = View::default();
        assert!(v.pick_remote("db", &[]).is_none());
        let mut snap = Snapshot::default();
        snap.owners.insert(
            "db".into(),
            vec![remote("b", "a1", 3), remote("c", "a2", 7)],
        );
        v.set(snap);
        let first = v.pick_remote("db", &[]).expect("owner");
        let second = v.pick_remote("db", &[]).expect("owner");
        assert_ne!(first, second, "round robin");
        assert_eq!(
            v.pick_remote("db", std::slice::from_ref(&first)),
            Some(second.clone())
        );
        assert!(v.pick_remote("db", &[first, second]).is_none());
    }
}
