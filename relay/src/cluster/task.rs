//! The registry task (HA shadow or active): claims this relay's agents in the directory on
//! HELLO and stores the epoch in their tunnels, refreshes presence at a third of the TTL,
//! releases on tunnel loss, loads the directory into the [`View`] every [`LOAD_EVERY`] and
//! sweeps what dead relays left once per TTL.
//!
//! The local registry is the truth about which agents are here: on every wake (a tunnel
//! registered or ended) and every heartbeat the task compares it with the claims it holds, so
//! a missed wake or an operation that failed while the directory was down is made good on the
//! next tick. A directory that lost its data (Redis restarted empty) finds every entry gone at
//! the next heartbeat; the task claims again (with a new, larger epoch) and announces itself:
//! the registry is republished without a restart. Never on the data path: listeners only read
//! the [`View`].

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::directory::{ClaimKind, ClaimReq, DirError, Directory, Listing, RelayEntry};
use super::view::{PeerInfo, Remote, Snapshot};
use crate::metrics::RegistryOpLabels;
use crate::sessions::TunnelInfo;
use crate::Shared;

/// How often the directory is read into the view.
pub(crate) const LOAD_EVERY: Duration = Duration::from_millis(500);

/// One agent as this relay holds it.
#[derive(Debug)]
struct Held {
    /// The claim's epoch; 0 while unclaimed (the directory was down at HELLO).
    epoch: u64,
    /// Another relay claimed the agent after us: keep trying (`Keep`) without refreshing.
    superseded: bool,
    connectors: Vec<String>,
}

pub(crate) struct Registrar {
    shared: Arc<Shared>,
    dir: Arc<dyn Directory>,
    me: RelayEntry,
    ttl: Duration,
    held: HashMap<Arc<str>, Held>,
}

impl Registrar {
    pub fn new(shared: Arc<Shared>, dir: Arc<dyn Directory>, mesh_url: String) -> Registrar {
        let ttl = shared.cfg().ha.presence_ttl;
        let me = RelayEntry {
            replica_id: shared.cfg().ha.replica_id.clone(),
            mesh_url,
        };
        Registrar {
            shared,
            dir,
            me,
            ttl,
            held: HashMap::new(),
        }
    }

    /// Counts one operation and keeps `registry_up` / [`super::Health`] current.
    fn note<T>(&self, op: &'static str, r: Result<T, DirError>) -> Option<T> {
        let m = &self.shared.metrics;
        let result = if r.is_ok() { "ok" } else { "error" };
        m.registry_ops
            .get_or_create(&RegistryOpLabels { op, result })
            .inc();
        let up = r.is_ok();
        let was = self.shared.cluster.health.set_registry_up(up);
        m.registry_up.set(i64::from(up));
        match r {
            Ok(v) => {
                if !was {
                    info!(replica_id = %self.me.replica_id, "registry reachable");
                }
                Some(v)
            }
            Err(e) => {
                if was {
                    warn!(op, error = %e, "registry operation failed; local agents keep working");
                } else {
                    debug!(op, error = %e, "registry still unreachable");
                }
                None
            }
        }
    }

    /// Local tunnels by agent.
    fn local(&self) -> HashMap<Arc<str>, Vec<Arc<TunnelInfo>>> {
        let mut by: HashMap<Arc<str>, Vec<Arc<TunnelInfo>>> = HashMap::new();
        for t in self.shared.registry.tunnels() {
            by.entry(t.agent_id.clone()).or_default().push(t);
        }
        by
    }

    fn req(&self, agent: &str, connectors: &[String], kind: ClaimKind) -> ClaimReq {
        ClaimReq {
            agent_id: agent.to_owned(),
            relay_id: self.me.replica_id.clone(),
            connectors: connectors.to_vec(),
            ttl: self.ttl,
            kind,
        }
    }

    /// Claims new agents (and agents with a new tunnel: a HELLO takes the agent), releases
    /// agents whose last tunnel here ended.
    async fn reconcile(&mut self) {
        let local = self.local();
        let gone: Vec<Arc<str>> = self
            .held
            .keys()
            .filter(|a| !local.contains_key(*a))
            .cloned()
            .collect();
        for agent in gone {
            if let Some(h) = self.held.remove(&agent) {
                if h.epoch > 0 && !h.superseded {
                    let r = self.dir.release(&agent, &self.me.replica_id, h.epoch).await;
                    self.note("release", r);
                }
            }
        }
        for (agent, tunnels) in &local {
            let connectors: Vec<String> = tunnels
                .iter()
                .flat_map(|t| t.connectors.iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let fresh = tunnels.iter().any(|t| t.epoch.load(Ordering::Acquire) == 0);
            let held = self.held.get(agent);
            if !fresh && held.is_some_and(|h| h.connectors == connectors) {
                continue;
            }
            let floor = held
                .map_or(0, |h| h.epoch)
                .max(self.shared.cluster.epoch_of(agent).unwrap_or(0));
            let req = self.req(agent, &connectors, ClaimKind::Take { floor });
            let r = self.dir.claim(&req).await;
            let epoch = self.note("claim", r).flatten().unwrap_or(0);
            if epoch > 0 {
                for t in tunnels {
                    t.epoch.store(epoch, Ordering::Release);
                }
                debug!(agent_id = %agent, epoch, "agent claimed");
            }
            let entry = self.held.entry(agent.clone()).or_insert(Held {
                epoch: 0,
                superseded: false,
                connectors: Vec::new(),
            });
            if epoch > 0 {
                entry.epoch = epoch;
                entry.superseded = false;
            }
            entry.connectors = connectors;
        }
        self.shared.metrics.registry_claims.set(
            self.held
                .values()
                .filter(|h| h.epoch > 0 && !h.superseded)
                .count() as i64,
        );
    }

    /// Refreshes this relay's entry and its claims; re-claims what the directory lost.
    async fn heartbeat(&mut self) {
        let r = self.dir.announce(&self.me, self.ttl).await;
        self.note("announce", r);
        let local = self.local();
        let agents: Vec<Arc<str>> = self.held.keys().cloned().collect();
        for agent in agents {
            let Some(h) = self.held.get(&agent) else {
                continue;
            };
            let (epoch, superseded, connectors) = (h.epoch, h.superseded, h.connectors.clone());
            if epoch > 0 && !superseded {
                let r = self
                    .dir
                    .refresh(&agent, &self.me.replica_id, epoch, self.ttl)
                    .await;
                match self.note("refresh", r) {
                    Some(true) | None => continue,
                    Some(false) => {}
                }
            }
            let kind = if epoch > 0 {
                ClaimKind::Keep { held: epoch }
            } else {
                ClaimKind::Take {
                    floor: self.shared.cluster.epoch_of(&agent).unwrap_or(0),
                }
            };
            let req = self.req(&agent, &connectors, kind);
            let r = self.dir.claim(&req).await;
            let Some(answer) = self.note("claim", r) else {
                continue;
            };
            let Some(h) = self.held.get_mut(&agent) else {
                continue;
            };
            match answer {
                Some(e) => {
                    if e != epoch {
                        info!(agent_id = %agent, epoch = e, "agent claimed again (its entry was gone)");
                    }
                    h.epoch = e;
                    h.superseded = false;
                    for t in local.get(&agent).into_iter().flatten() {
                        t.epoch.store(e, Ordering::Release);
                    }
                }
                None => {
                    if !h.superseded {
                        info!(agent_id = %agent, "another relay claimed the agent after this one");
                    }
                    h.superseded = true;
                }
            }
        }
    }

    /// Reads the directory into the view (without this relay's own owner entries).
    async fn load(&self) {
        let r = self.dir.load().await;
        if let Some(listing) = self.note("load", r) {
            self.shared.cluster.set(self.snapshot(listing));
        }
    }

    fn snapshot(&self, l: Listing) -> Snapshot {
        let mut s = Snapshot::default();
        for o in l.owners {
            if o.relay_id == self.me.replica_id {
                continue;
            }
            let relay: Arc<str> = o.relay_id.into();
            let agent: Arc<str> = o.agent_id.into();
            for c in o.connectors {
                s.owners.entry(c).or_default().push(Remote {
                    relay_id: relay.clone(),
                    agent_id: agent.clone(),
                    epoch: o.epoch,
                });
            }
        }
        for v in s.owners.values_mut() {
            v.sort_by(|a, b| (&a.relay_id, &a.agent_id).cmp(&(&b.relay_id, &b.agent_id)));
        }
        s.epochs = l.epochs.into_iter().map(|(a, e)| (a.into(), e)).collect();
        for r in l.relays {
            if r.replica_id == self.me.replica_id || r.mesh_url.is_empty() {
                continue;
            }
            let id: Arc<str> = r.replica_id.into();
            s.peers.insert(
                id.clone(),
                PeerInfo {
                    replica_id: id,
                    url: r.mesh_url.into(),
                },
            );
        }
        // A static peer is what the operator wrote: it wins over what a peer published.
        for p in &self.shared.cfg().ha.mesh.peers {
            if p.replica_id == self.me.replica_id {
                continue;
            }
            let id: Arc<str> = p.replica_id.as_str().into();
            s.peers.insert(
                id.clone(),
                PeerInfo {
                    replica_id: id,
                    url: p.url.as_str().into(),
                },
            );
        }
        s
    }

    async fn sweep(&self) {
        let r = self.dir.sweep().await;
        if let Some(n) = self.note("sweep", r) {
            if n > 0 {
                info!(
                    cleared = n,
                    "registry sweep cleared entries of relays that stopped"
                );
            }
        }
    }

    /// On a stop: release every claim and withdraw this relay (best effort, bounded).
    async fn leave(&mut self) {
        let held: Vec<(Arc<str>, u64)> = self
            .held
            .drain()
            .filter(|(_, h)| h.epoch > 0 && !h.superseded)
            .map(|(a, h)| (a, h.epoch))
            .collect();
        let dir = self.dir.clone();
        let me = self.me.replica_id.clone();
        let all = async {
            for (agent, epoch) in held {
                let _ = dir.release(&agent, &me, epoch).await;
            }
            let _ = dir.withdraw(&me).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), all).await;
    }

    /// Runs until the relay stops.
    pub async fn run(mut self) {
        let shared = self.shared.clone();
        let beat = (self.ttl / 3).max(Duration::from_millis(100));
        let mut heartbeat = tokio::time::interval(beat);
        let mut load = tokio::time::interval(LOAD_EVERY);
        let mut sweep = tokio::time::interval(self.ttl);
        for t in [&mut heartbeat, &mut load, &mut sweep] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        info!(replica_id = %self.me.replica_id, mode = shared.cfg().ha.mode.name(), "registry task started");
        loop {
            tokio::select! {
                _ = shared.root.cancelled() => break,
                _ = shared.cluster.local_change() => self.reconcile().await,
                _ = heartbeat.tick() => {
                    let was_up = shared.cluster.health.registry_up();
                    self.heartbeat().await;
                    self.reconcile().await;
                    if !was_up && shared.cluster.health.registry_up() {
                        // Back after an outage: the view should not wait for the next tick.
                        self.load().await;
                    }
                }
                _ = load.tick() => self.load().await,
                _ = sweep.tick() => self.sweep().await,
            }
        }
        self.leave().await;
    }
}
