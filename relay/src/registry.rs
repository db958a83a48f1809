//! Which connected agent tunnels serve which connector (local to this relay; Redis for HA later),
//! and which tunnels each `agent_id` and each token (`jti`) holds.
//!
//! New streams go to the agent with the fewest open streams, ties broken round-robin, among the
//! tunnels that look alive ([`Liveness`]: neither keepalive-overdue nor write-slow); only when
//! none does, among all of them (a tunnel that merely looks slow may still work, and refusing
//! the client would be certain failure). A tunnel removes itself before it stops reading its
//! command channel, so a stream is never handed to a tunnel that already went away (a send to
//! it fails and the listener picks again).
//!
//! Per `agent_id` exactly one registered tunnel *serves* (is listed under its connectors and so
//! gets new streams); the others stay registered (the portal lists them, the caps count them)
//! but get none. A tunnel from the serving one's source address supersedes it: that is a
//! reconnect (the old one is most likely dead) or a token refresh. From another address it is a
//! duplicate, and [`DuplicatePolicy`] decides: the newcomer serves (`newest_wins`), waits as a
//! standby (`oldest_wins`) or is refused (`refuse`). When the serving tunnel ends, the newest
//! remaining one serves (the oldest under `oldest_wins`). The caps ([`Rules`]) are checked in the
//! same critical section as the insertion, so concurrent HELLOs cannot overshoot them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use tokio::time::Instant;

use crate::config::DuplicatePolicy;
use crate::conn::NewConn;
use crate::liveness::Liveness;
use crate::sessions::TunnelInfo;

/// What the registry holds for one tunnel.
#[derive(Debug, Clone)]
pub(crate) struct AgentHandle {
    pub tunnel_id: u64,
    pub agent_id: Arc<str>,
    /// Where the listener hands this tunnel a new client.
    pub conns: mpsc::UnboundedSender<Box<NewConn>>,
    /// Open streams on this tunnel (for least-streams picking).
    pub active: Arc<AtomicUsize>,
    /// What the portal lists about this tunnel (its connectors and source address too).
    pub info: Arc<TunnelInfo>,
    /// Whether it looks alive now (picking prefers those that do).
    pub liveness: Arc<Liveness>,
}

/// How many tunnels an agent may hold, and what a duplicate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rules {
    /// `limits.max_tunnels_per_agent`.
    pub max_per_agent: usize,
    /// `limits.max_tunnels_per_jti` (tokens without `jti` are not counted).
    pub max_per_jti: usize,
    /// `security.duplicate_agent`.
    pub duplicates: DuplicatePolicy,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            max_per_agent: 3,
            max_per_jti: 2,
            duplicates: DuplicatePolicy::NewestWins,
        }
    }
}

/// Why a tunnel was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The agent_id holds `max_per_agent` tunnels already.
    AgentFull { limit: usize },
    /// The token (`jti`) holds `max_per_jti` tunnels already.
    TokenFull { limit: usize },
    /// Another address serves this agent_id and the policy is `refuse`.
    Duplicate,
}

/// Where a registered tunnel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placed {
    /// It gets new streams; `superseded` no longer does.
    Serving { superseded: Option<u64> },
    /// `oldest_wins`: it gets streams only once `behind` (and every older tunnel) has ended.
    Standby { behind: u64 },
}

/// The answer to [`Registry::register`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registration {
    /// The agent_id's other tunnels from a different source address (IP), with their addresses.
    pub elsewhere: Vec<(u64, SocketAddr)>,
    pub outcome: Result<Placed, Refused>,
}

/// One registered tunnel as the portal lists it.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub info: Arc<TunnelInfo>,
    /// It is the one its agent_id's new streams go to.
    pub serving: bool,
    /// Another tunnel of its agent_id is connected from a different address.
    pub duplicate: bool,
}

#[derive(Debug, Default)]
struct Entry {
    agents: Vec<AgentHandle>,
    /// Round-robin start for ties.
    next: usize,
}

#[derive(Debug)]
struct Held {
    handle: AgentHandle,
    jti: Option<Arc<str>>,
}

impl Held {
    fn ip(&self) -> IpAddr {
        self.handle.info.peer.ip().to_canonical()
    }
}

/// The tunnels of one agent_id.
#[derive(Debug)]
struct Agent {
    /// Oldest first.
    ids: Vec<u64>,
    serving: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Serving tunnels only.
    by_connector: HashMap<String, Entry>,
    /// Every registered tunnel.
    tunnels: HashMap<u64, Held>,
    by_agent: HashMap<Arc<str>, Agent>,
}

impl Inner {
    fn list(&mut self, handle: &AgentHandle) {
        for c in &handle.info.connectors {
            let entry = self.by_connector.entry(c.clone()).or_default();
            if !entry.agents.iter().any(|a| a.tunnel_id == handle.tunnel_id) {
                entry.agents.push(handle.clone());
            }
        }
    }

    fn unlist(&mut self, tunnel_id: u64) {
        for entry in self.by_connector.values_mut() {
            entry.agents.retain(|a| a.tunnel_id != tunnel_id);
        }
        self.by_connector.retain(|_, e| !e.agents.is_empty());
    }
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    rules: Rules,
    inner: Mutex<Inner>,
}

impl Registry {
    pub fn new(rules: Rules) -> Registry {
        Registry {
            rules,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Critical sections never panic; recover the map if one ever did.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `agent` (token `jti`, if it has one) under the caps and the duplicate policy.
    pub fn register(&self, agent: &AgentHandle, jti: Option<&str>) -> Registration {
        let rules = self.rules;
        let mut g = self.lock();
        let ip = agent.info.peer.ip().to_canonical();
        let (elsewhere, held, for_jti, serving_ip, serving) = match g.by_agent.get(&agent.agent_id)
        {
            None => (Vec::new(), 0, 0, None, None),
            Some(a) => {
                let mine: Vec<&Held> = a.ids.iter().filter_map(|id| g.tunnels.get(id)).collect();
                let elsewhere = mine
                    .iter()
                    .filter(|h| h.ip() != ip)
                    .map(|h| (h.handle.tunnel_id, h.handle.info.peer))
                    .collect();
                let for_jti = jti.map_or(0, |j| {
                    mine.iter().filter(|h| h.jti.as_deref() == Some(j)).count()
                });
                let serving_ip = g.tunnels.get(&a.serving).map(Held::ip);
                (elsewhere, mine.len(), for_jti, serving_ip, Some(a.serving))
            }
        };
        let moved = serving_ip.is_some_and(|s| s != ip);
        let outcome = if held >= rules.max_per_agent {
            Err(Refused::AgentFull {
                limit: rules.max_per_agent,
            })
        } else if for_jti >= rules.max_per_jti {
            Err(Refused::TokenFull {
                limit: rules.max_per_jti,
            })
        } else if moved && rules.duplicates == DuplicatePolicy::Refuse {
            Err(Refused::Duplicate)
        } else {
            g.tunnels.insert(
                agent.tunnel_id,
                Held {
                    handle: agent.clone(),
                    jti: jti.map(Arc::from),
                },
            );
            let placed = match serving {
                Some(behind) if moved && rules.duplicates == DuplicatePolicy::OldestWins => {
                    Placed::Standby { behind }
                }
                superseded => {
                    if let Some(old) = superseded {
                        g.unlist(old);
                    }
                    g.list(agent);
                    Placed::Serving { superseded }
                }
            };
            let a = g.by_agent.entry(agent.agent_id.clone()).or_insert(Agent {
                ids: Vec::new(),
                serving: agent.tunnel_id,
            });
            a.ids.push(agent.tunnel_id);
            if let Placed::Serving { .. } = placed {
                a.serving = agent.tunnel_id;
            }
            Ok(placed)
        };
        Registration { elsewhere, outcome }
    }

    /// Removes a tunnel. Returns the tunnel that serves its agent_id from now on, if the
    /// removed one served and another remains.
    pub fn unregister(&self, tunnel_id: u64) -> Option<u64> {
        let mut g = self.lock();
        let held = g.tunnels.remove(&tunnel_id)?;
        g.unlist(tunnel_id);
        let agent_id = held.handle.agent_id;
        let a = g.by_agent.get_mut(&agent_id)?;
        a.ids.retain(|id| *id != tunnel_id);
        if a.ids.is_empty() {
            g.by_agent.remove(&agent_id);
            return None;
        }
        if a.serving != tunnel_id {
            return None;
        }
        let next = if self.rules.duplicates == DuplicatePolicy::OldestWins {
            a.ids.first()
        } else {
            a.ids.last()
        };
        let next = *next?;
        a.serving = next;
        let handle = g.tunnels.get(&next).map(|h| h.handle.clone())?;
        g.list(&handle);
        Some(next)
    }

    /// The agent a new stream on `connector` should use, if any is connected, other than
    /// `except` (an agent_id: where a stream that agent could not connect is tried again).
    ///
    /// Healthy tunnels first (see the module doc), then the fewest open streams, ties taken in
    /// turn from a start that moves on at every pick without `except`.
    pub fn pick(&self, connector: &str, except: Option<&str>) -> Option<AgentHandle> {
        let now = Instant::now();
        let mut g = self.lock();
        let entry = g.by_connector.get_mut(connector)?;
        let n = entry.agents.len();
        if n == 0 {
            return None;
        }
        let start = entry.next % n;
        // A retry does not move the turn on: it would skew new streams toward the agent
        // that just failed one.
        if except.is_none() {
            entry.next = entry.next.wrapping_add(1);
        }
        let mut best: Option<((bool, usize), &AgentHandle)> = None;
        for i in 0..n {
            let a = &entry.agents[(start + i) % n];
            if except.is_some_and(|e| *a.agent_id == *e) {
                continue;
            }
            // `false` sorts first: healthy before unhealthy, then by load.
            let key = (
                !a.liveness.is_healthy(now),
                a.active.load(Ordering::Relaxed),
            );
            if best.is_none_or(|(k, _)| key < k) {
                best = Some((key, a));
            }
        }
        best.map(|(_, a)| a.clone())
    }

    /// Every registered tunnel, oldest first.
    /// The tunnel that serves `agent_id` now (the one its new streams go to), if any.
    pub fn serving(&self, agent_id: &str) -> Option<AgentHandle> {
        let inner = self.lock();
        let agent = inner.by_agent.get(agent_id)?;
        inner.tunnels.get(&agent.serving).map(|h| h.handle.clone())
    }

    pub fn tunnels(&self) -> Vec<Arc<TunnelInfo>> {
        self.rows().into_iter().map(|r| r.info).collect()
    }

    /// Every registered tunnel with its standing, oldest first.
    pub fn rows(&self) -> Vec<Row> {
        let g = self.lock();
        let mut v: Vec<Row> = g
            .tunnels
            .values()
            .map(|h| {
                let a = g.by_agent.get(&h.handle.agent_id);
                let ip = h.ip();
                Row {
                    info: h.handle.info.clone(),
                    serving: a.is_some_and(|a| a.serving == h.handle.tunnel_id),
                    duplicate: a.is_some_and(|a| {
                        a.ids
                            .iter()
                            .filter_map(|id| g.tunnels.get(id))
                            .any(|o| o.ip() != ip)
                    }),
                }
            })
            .collect();
        v.sort_by_key(|r| r.info.tunnel_id);
        v
    }

    /// Connectors with at least one agent, and the agent_ids serving each.
    pub fn agents_by_connector(&self) -> Vec<(String, Vec<String>)> {
        let g = self.lock();
        let mut v: Vec<_> = g
            .by_connector
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
        let g = self.lock();
        let mut v: Vec<_> = g
            .by_connector
            .iter()
            .map(|(k, e)| (k.clone(), e.agents.len()))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests;
