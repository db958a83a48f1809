//! Which connected agent tunnels serve which connector (local to this relay; Redis for HA later).
//!
//! New streams go to the agent with the fewest open streams, ties broken round-robin. A tunnel
//! removes itself before it stops reading its command channel, so a stream is never handed to a
//! tunnel that already went away (a send to it fails and the listener picks again).
//! An `agent_id` that registers again supersedes its older tunnels for new streams: the older one
//! is most likely a dead connection the agent has already replaced.
//!
//! It also keeps every registered tunnel's [`TunnelInfo`] for the portal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::conn::NewConn;
use crate::sessions::TunnelInfo;

/// What the registry holds for one tunnel.
#[derive(Debug, Clone)]
pub(crate) struct AgentHandle {
    pub tunnel_id: u64,
    pub agent_id: Arc<str>,
    /// Where the listener hands this tunnel a new client.
    pub conns: mpsc::UnboundedSender<NewConn>,
    /// Open streams on this tunnel (for least-streams picking).
    pub active: Arc<AtomicUsize>,
    /// What the portal lists about this tunnel.
    pub info: Arc<TunnelInfo>,
}

#[derive(Debug, Default)]
struct Entry {
    agents: Vec<AgentHandle>,
    /// Round-robin start for ties.
    next: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    by_connector: Mutex<HashMap<String, Entry>>,
    /// Every registered tunnel, superseded ones included until they end.
    tunnels: Mutex<HashMap<u64, Arc<TunnelInfo>>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Critical sections never panic; recover the map if one ever did.
        self.by_connector
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `agent` for each of `connectors`. Returns the tunnel ids it superseded.
    pub fn register(&self, agent: &AgentHandle, connectors: &[String]) -> Vec<u64> {
        self.tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent.tunnel_id, agent.info.clone());
        let mut map = self.lock();
        let mut superseded = Vec::new();
        for entry in map.values_mut() {
            entry.agents.retain(|a| {
                let old = a.agent_id == agent.agent_id && a.tunnel_id != agent.tunnel_id;
                if old && !superseded.contains(&a.tunnel_id) {
                    superseded.push(a.tunnel_id);
                }
                !old
            });
        }
        for c in connectors {
            let entry = map.entry(c.clone()).or_default();
            if !entry.agents.iter().any(|a| a.tunnel_id == agent.tunnel_id) {
                entry.agents.push(agent.clone());
            }
        }
        map.retain(|_, e| !e.agents.is_empty());
        superseded
    }

    /// Removes a tunnel from every connector.
    pub fn unregister(&self, tunnel_id: u64) {
        self.tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tunnel_id);
        let mut map = self.lock();
        for entry in map.values_mut() {
            entry.agents.retain(|a| a.tunnel_id != tunnel_id);
        }
        map.retain(|_, e| !e.agents.is_empty());
    }

    /// The agent a new stream on `connector` should use, if any is connected.
    pub fn pick(&self, connector: &str) -> Option<AgentHandle> {
        let mut map = self.lock();
        let entry = map.get_mut(connector)?;
        let n = entry.agents.len();
        if n == 0 {
            return None;
        }
        let start = entry.next % n;
        entry.next = entry.next.wrapping_add(1);
        let mut best: Option<(usize, &AgentHandle)> = None;
        for i in 0..n {
            let a = &entry.agents[(start + i) % n];
            let load = a.active.load(Ordering::Relaxed);
            if best.is_none_or(|(l, _)| load < l) {
                best = Some((load, a));
            }
        }
        best.map(|(_, a)| a.clone())
    }

    /// Every registered tunnel, oldest first.
    pub fn tunnels(&self) -> Vec<Arc<TunnelInfo>> {
        let mut v: Vec<_> = self
            .tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|t| t.tunnel_id);
        v
    }

    /// Connectors with at least one agent, and the agent_ids serving each.
    pub fn agents_by_connector(&self) -> Vec<(String, Vec<String>)> {
        let map = self.lock();
        let mut v: Vec<_> = map
            .iter()
            .map(|(k, e)| {
                (
                    k.clone(),
                    e.agents.iter().map(|a| a.agent_id.to_string()).collect(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Connectors with at least one agent, and how many agents each.
    pub fn snapshot(&self) -> Vec<(String, usize)> {
        let map = self.lock();
        let mut v: Vec<_> = map
            .iter()
            .map(|(k, e)| (k.clone(), e.agents.len()))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicU64;
    use tokio_util::sync::CancellationToken;

    fn agent(tunnel_id: u64, agent_id: &str) -> (AgentHandle, mpsc::UnboundedReceiver<NewConn>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let active = Arc::new(AtomicUsize::new(0));
        let info = Arc::new(TunnelInfo {
            tunnel_id,
            agent_id: Arc::from(agent_id),
            connectors: Vec::new(),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            since_ms: 0,
            protocol: "nowconnect.v2",
            agent_version: String::new(),
            active: active.clone(),
            closed_c2a: AtomicU64::new(0),
            closed_a2c: AtomicU64::new(0),
            kick: CancellationToken::new(),
        });
        (
            AgentHandle {
                tunnel_id,
                agent_id: Arc::from(agent_id),
                conns: tx,
                active,
                info,
            },
            rx,
        )
    }

    #[test]
    fn spreads_across_agents_and_forgets_departed_ones() {
        let r = Registry::default();
        let (a, _ra) = agent(1, "a");
        let (b, _rb) = agent(2, "b");
        r.register(&a, &["ad".to_owned()]);
        r.register(&b, &["ad".to_owned(), "db".to_owned()]);
        let mut seen = [0usize; 3];
        for _ in 0..10 {
            let p = r.pick("ad").expect("agent");
            seen[p.tunnel_id as usize] += 1;
        }
        assert_eq!(seen[1], 5, "round-robin when loads are equal");
        assert_eq!(seen[2], 5);
        // Least streams wins over round-robin.
        a.active.store(3, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(r.pick("ad").expect("agent").tunnel_id, 2);
        }
        r.unregister(2);
        assert_eq!(r.pick("ad").expect("agent").tunnel_id, 1);
        assert!(r.pick("db").is_none(), "b went away: db has no agent");
        assert!(r.pick("nope").is_none());
    }

    #[test]
    fn same_agent_id_supersedes_older_tunnel() {
        let r = Registry::default();
        let (old, _r1) = agent(1, "premise-01");
        let (new, _r2) = agent(2, "premise-01");
        r.register(&old, &["ad".to_owned()]);
        assert_eq!(r.register(&new, &["ad".to_owned()]), vec![1]);
        for _ in 0..3 {
            assert_eq!(r.pick("ad").expect("agent").tunnel_id, 2);
        }
        // The old tunnel ending later must not remove the new one.
        r.unregister(1);
        assert_eq!(r.pick("ad").expect("agent").tunnel_id, 2);
        assert_eq!(r.snapshot(), vec![("ad".to_owned(), 1)]);
    }
}
