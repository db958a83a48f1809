//! What `/readyz` says about the cluster: whether the registry (Redis) answers, and which mesh
//! links this relay needs are down. The registry task sets the first, the mesh the second.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub(crate) struct Health {
    /// The last registry operation succeeded (false until the first one did).
    registry_up: AtomicBool,
    /// Peers (replica ids) whose mesh link is not up now; `/readyz` counts those the view names
    /// agents on ([`Health::needed_links_down`]).
    mesh_down: Mutex<BTreeSet<String>>,
}

impl Health {
    pub fn set_registry_up(&self, up: bool) -> bool {
        self.registry_up.swap(up, Ordering::AcqRel)
    }

    pub fn registry_up(&self) -> bool {
        self.registry_up.load(Ordering::Acquire)
    }

    /// The mesh reports its link to `peer` down (`true`) or up (`false`).
    pub fn set_mesh_link_down(&self, peer: &str, down: bool) {
        let mut m = self.mesh_down.lock().unwrap_or_else(|p| p.into_inner());
        if down {
            m.insert(peer.to_owned());
        } else {
            m.remove(peer);
        }
    }

    /// Mesh links that are down to a peer for which `needed` is true (it holds agents this
    /// relay may forward to), by peer.
    pub fn needed_links_down(&self, needed: impl Fn(&str) -> bool) -> Vec<String> {
        let m = self.mesh_down.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().filter(|p| needed(p)).cloned().collect()
    }
}
