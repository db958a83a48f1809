//! Wiring the cluster into one relay: which directory it uses, the registry task, and what
//! `/readyz` says with HA on. Kept apart from the cluster's own types so that they do not
//! depend on the relay's shared state.

use std::net::SocketAddr;
use std::sync::Arc;

use super::directory::Directory;
use super::memory::MemoryDirectory;
use super::{redis, task};
use crate::config::{HaMode, RelayConfig};
use crate::Shared;

/// The directory this relay uses: the one a test handed in, else Redis (`ha.redis_url`);
/// `None` with HA off (nothing is dialed, no task runs).
pub(crate) fn directory(
    shared_cfg: &RelayConfig,
    given: Option<MemoryDirectory>,
) -> Result<Option<Arc<dyn Directory>>, String> {
    if shared_cfg.ha.mode == HaMode::Off {
        return Ok(None);
    }
    if let Some(d) = given {
        return Ok(Some(Arc::new(d)));
    }
    let url = shared_cfg
        .ha
        .redis_url
        .as_deref()
        .ok_or("ha.redis_url is required when ha.mode is shadow or active")?;
    let d = redis::RedisDirectory::new(url).map_err(|e| format!("ha.redis_url: {e}"))?;
    Ok(Some(Arc::new(d)))
}

/// The `/mesh` URL this relay publishes: `ha.mesh.advertise_url`, else derived from where
/// `/mesh` is served (`ha.mesh.listen`, else the tunnel address) when that is a specific
/// address; empty (not discoverable) for a wildcard address.
pub(crate) fn mesh_url(cfg: &RelayConfig, tunnel_addr: SocketAddr) -> String {
    if let Some(u) = &cfg.ha.mesh.advertise_url {
        return u.clone();
    }
    let (addr, tls) = match cfg.ha.mesh.listen {
        Some(l) => (l, cfg.ha.mesh.tls.is_some()),
        None => (tunnel_addr, cfg.tunnel.tls.is_some()),
    };
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return String::new();
    }
    let scheme = if tls { "wss" } else { "ws" };
    format!("{scheme}://{addr}/mesh")
}

/// Starts the registry task when this relay has a directory.
pub(crate) fn start(
    shared: &Arc<Shared>,
    dir: Option<Arc<dyn Directory>>,
    tunnel_addr: SocketAddr,
) {
    let Some(dir) = dir else {
        return;
    };
    let url = mesh_url(&shared.cfg(), tunnel_addr);
    if url.is_empty() {
        tracing::warn!(
            "ha.mesh.advertise_url is not set and /mesh is served on a wildcard address: other \
             relays reach this one only through their static ha.mesh.peers"
        );
    }
    let registrar = task::Registrar::new(shared.clone(), dir, url);
    shared.tasks.spawn(registrar.run());
}

/// `/readyz`'s JSON body with HA shadow or active (`None` with HA off: the plain text stays).
/// `status` is `not_ready` (503) when the relay itself is not ready, `degraded` (still 200:
/// local agents keep working) in active mode while the registry or a needed mesh link is down,
/// else `ready`; `reasons` says why.
pub(crate) fn readiness(shared: &Shared, ready: bool) -> Option<String> {
    let ha = &shared.cfg().ha;
    if ha.mode == HaMode::Off {
        return None;
    }
    let h = &shared.cluster.health;
    let registry_up = h.registry_up();
    let snap = shared.cluster.snapshot();
    let links_down = h.needed_links_down(|peer| {
        snap.owners
            .values()
            .any(|rs| rs.iter().any(|r| &*r.relay_id == peer))
    });
    let mut reasons = Vec::new();
    if !registry_up {
        reasons.push("registry_unreachable".to_owned());
    }
    for p in &links_down {
        reasons.push(format!("mesh_link_down:{p}"));
    }
    let status = if !ready {
        "not_ready"
    } else if ha.mode == HaMode::Active && !reasons.is_empty() {
        "degraded"
    } else {
        "ready"
    };
    let body = serde_json::json!({
        "status": status,
        "ha_mode": ha.mode.name(),
        "replica_id": ha.replica_id,
        "registry": if registry_up { "up" } else { "down" },
        "mesh_links_down": links_down,
        "reasons": reasons,
    });
    Some(format!("{body}\n"))
}
