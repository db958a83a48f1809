//! The directory in Redis (plain server, Sentinel or Cluster), for `ha.mode` shadow and active.
//!
//! Keys (every script touches keys of one hash slot only, so Cluster works):
//! - `nowconnect:agent:{<agent_id>}:epoch`: the agent's newest epoch (INCR; no TTL: it never
//!   goes back while Redis keeps its data, and claims carry a floor for when it did not);
//! - `nowconnect:agent:{<agent_id>}:owner`: hash `relay`, `epoch`, `connectors` (JSON), with the
//!   presence TTL; claimed, refreshed and released by the scripts below;
//! - `nowconnect:agents`: sorted set of agent ids (score: Unix ms of the last claim or
//!   heartbeat), the index a load walks; a hint, healed by every heartbeat;
//! - `nowconnect:relays`: sorted set of replica ids, and `nowconnect:relay:{<replica_id>}`: hash
//!   `mesh_url` with the presence TTL (peer discovery).
//!
//! Connections: a [`ConnectionManager`] (reconnects by itself) for `redis://`, `rediss://` and
//! `unix://`; for `redis+sentinel://h1:port,h2:port/<master>` a manager on the master the
//! sentinels name, looked up again after failures; for `redis+cluster://h1:port,h2:port` the
//! crate's cluster connection (follows MOVED/ASK, reconnects). Nothing is dialed before the
//! first operation, so a relay starts while Redis is down.

use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use tokio::sync::Mutex;

use super::directory::{
    ClaimKind, ClaimReq, DirError, DirFuture, Directory, Listing, Owner, RelayEntry, MAX_LISTED,
};

/// How long one Redis operation may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
const AGENTS: &str = "nowconnect:agents";
const RELAYS: &str = "nowconnect:relays";

/// Unix ms: the index scores (for operators reading Redis; nothing compares them).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn epoch_key(agent: &str) -> String {
    format!("nowconnect:agent:{{{agent}}}:epoch")
}
fn owner_key(agent: &str) -> String {
    format!("nowconnect:agent:{{{agent}}}:owner")
}
fn relay_key(relay: &str) -> String {
    format!("nowconnect:relay:{{{relay}}}")
}

/// KEYS: epoch, owner. ARGV: relay, connectors (JSON), ttl_ms, mode (take|keep), floor/held.
/// Mirrors [`super::table::Table::claim`]. Returns the epoch, or 0 when `keep` finds another
/// relay holding the agent.
const CLAIM: &str = r#"
local floor = tonumber(ARGV[5])
if ARGV[4] == 'keep' then
  local o = redis.call('HMGET', KEYS[2], 'relay', 'epoch')
  if o[1] then
    if o[1] == ARGV[1] and tonumber(o[2]) == floor then
      redis.call('PEXPIRE', KEYS[2], ARGV[3])
      return floor
    end
    return 0
  end
end
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local e = cur
if floor > e then e = floor end
e = e + 1
redis.call('SET', KEYS[1], e)
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'relay', ARGV[1], 'epoch', e, 'connectors', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return e
"#;

/// KEYS: owner. ARGV: relay, epoch, ttl_ms. 1 when the entry still names them (TTL extended).
const REFRESH: &str = r#"
local o = redis.call('HMGET', KEYS[1], 'relay', 'epoch')
if o[1] == ARGV[1] and tonumber(o[2]) == tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"#;

/// KEYS: owner. ARGV: relay, epoch (empty: any epoch of that relay). 1 when removed.
const RELEASE: &str = r#"
local o = redis.call('HMGET', KEYS[1], 'relay', 'epoch')
if o[1] == ARGV[1] and (ARGV[2] == '' or tonumber(o[2]) == tonumber(ARGV[2])) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// One connection, whichever kind of deployment.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[allow(clippy::large_enum_variant)] // one per relay, made once
enum Target {
    Single(redis::Client),
    Sentinel(Box<SentinelClient>),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// The Redis directory. The URL (it may hold a password) is never logged.
pub(crate) struct RedisDirectory {
    target: Mutex<Target>,
    /// `None` until the first connection, and again after a failure of a sentinel's master
    /// or a cluster's first connection (then the next operation dials anew).
    conn: Mutex<Option<Conn>>,
    claim: Script,
    refresh: Script,
    release: Script,
}

impl std::fmt::Debug for RedisDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDirectory").finish_non_exhaustive()
    }
}

fn err(e: redis::RedisError) -> DirError {
    DirError::Unreachable(e.to_string())
}

/// `a:1,b:2/rest` after the scheme -> the hosts and what follows the first `/`; userinfo
/// (`user:pass@`) before the hosts is kept for each host.
fn split_hosts(rest: &str) -> (Vec<String>, String) {
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (auth, hosts) = match hosts.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), hosts),
    };
    (
        hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("{auth}{h}"))
            .collect(),
        path.to_owned(),
    )
}

impl RedisDirectory {
    /// Parses the URL (nothing is dialed yet).
    pub fn new(url: &str) -> Result<RedisDirectory, String> {
        let target = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let (hosts, master) = split_hosts(rest);
            if hosts.is_empty() || master.is_empty() {
                return Err(
                    "redis+sentinel:// needs host:port[,host:port...]/<master name>".into(),
                );
            }
            let nodes: Vec<String> = hosts.iter().map(|h| format!("redis://{h}")).collect();
            let client = SentinelClient::build(nodes, master, None, SentinelServerType::Master)
                .map_err(|e| format!("redis+sentinel: {e}"))?;
            Target::Sentinel(Box::new(client))
        } else if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let (hosts, _) = split_hosts(rest);
            if hosts.is_empty() {
                return Err("redis+cluster:// needs host:port[,host:port...]".into());
            }
            let nodes: Vec<String> = hosts.iter().map(|h| format!("redis://{h}")).collect();
            let client = redis::cluster::ClusterClient::builder(nodes)
                .connection_timeout(OP_TIMEOUT)
                .response_timeout(OP_TIMEOUT)
                .build()
                .map_err(|e| format!("redis+cluster: {e}"))?;
            Target::Cluster(Box::new(client))
        } else {
            Target::Single(redis::Client::open(url).map_err(|e| e.to_string())?)
        };
        Ok(RedisDirectory {
            target: Mutex::new(target),
            conn: Mutex::new(None),
            claim: Script::new(CLAIM),
            refresh: Script::new(REFRESH),
            release: Script::new(RELEASE),
        })
    }

    fn manager_config() -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500))
    }

    async fn conn(&self) -> Result<Conn, DirError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let mut target = self.target.lock().await;
        let c = match &mut *target {
            Target::Single(client) => Conn::Single(
                ConnectionManager::new_lazy_with_config(client.clone(), Self::manager_config())
                    .map_err(err)?,
            ),
            Target::Sentinel(s) => {
                let client = s.async_get_client().await.map_err(err)?;
                Conn::Single(
                    ConnectionManager::new_lazy_with_config(client, Self::manager_config())
                        .map_err(err)?,
                )
            }
            Target::Cluster(client) => {
                Conn::Cluster(client.get_async_connection().await.map_err(err)?)
            }
        };
        *slot = Some(c.clone());
        Ok(c)
    }

    /// After a failed operation: a sentinel's master may have moved, so ask again next time.
    async fn failed(&self) {
        if matches!(*self.target.lock().await, Target::Sentinel(_)) {
            *self.conn.lock().await = None;
        }
    }

    /// Runs `f` on a connection within [`OP_TIMEOUT`].
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, DirError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let r = tokio::time::timeout(OP_TIMEOUT * 2, async {
            let c = self.conn().await?;
            f(c).await.map_err(err)
        })
        .await
        .unwrap_or_else(|_| Err(DirError::Unreachable("timed out".into())));
        if r.is_err() {
            self.failed().await;
        }
        r
    }

    async fn index_agent(mut c: Conn, agent: &str) -> redis::RedisResult<()> {
        redis::cmd("ZADD")
            .arg(AGENTS)
            .arg(now_ms())
            .arg(agent)
            .query_async::<()>(&mut c)
            .await
    }
}

fn owner_from(agent: &str, fields: Vec<(String, String)>) -> Option<Owner> {
    let mut relay = None;
    let mut epoch = None;
    let mut connectors = Vec::new();
    for (k, v) in fields {
        match k.as_str() {
            "relay" => relay = Some(v),
            "epoch" => epoch = v.parse().ok(),
            "connectors" => connectors = serde_json::from_str(&v).unwrap_or_default(),
            _ => {}
        }
    }
    Some(Owner {
        agent_id: agent.to_owned(),
        relay_id: relay?,
        epoch: epoch?,
        connectors,
    })
}

impl Directory for RedisDirectory {
    fn claim<'a>(&'a self, req: &'a ClaimReq) -> DirFuture<'a, Option<u64>> {
        Box::pin(async move {
            let (mode, n) = match req.kind {
                ClaimKind::Take { floor } => ("take", floor),
                ClaimKind::Keep { held } => ("keep", held),
            };
            let connectors = serde_json::to_string(&req.connectors)
                .map_err(|e| DirError::Protocol(e.to_string()))?;
            let ttl = req.ttl.as_millis().max(1) as u64;
            let e: u64 = self
                .run(|mut c| async move {
                    self.claim
                        .key(epoch_key(&req.agent_id))
                        .key(owner_key(&req.agent_id))
                        .arg(&req.relay_id)
                        .arg(connectors)
                        .arg(ttl)
                        .arg(mode)
                        .arg(n)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            if e == 0 {
                return Ok(None);
            }
            self.run(|c| Self::index_agent(c, &req.agent_id)).await?;
            Ok(Some(e))
        })
    }

    fn refresh<'a>(
        &'a self,
        agent_id: &'a str,
        relay_id: &'a str,
        epoch: u64,
        ttl: Duration,
    ) -> DirFuture<'a, bool> {
        Box::pin(async move {
            let ttl = ttl.as_millis().max(1) as u64;
            let ok: i64 = self
                .run(|mut c| async move {
                    self.refresh
                        .key(owner_key(agent_id))
                        .arg(relay_id)
                        .arg(epoch)
                        .arg(ttl)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            if ok == 1 {
                // Heals the index after a sweep raced a claim.
                self.run(|c| Self::index_agent(c, agent_id)).await?;
            }
            Ok(ok == 1)
        })
    }

    fn release<'a>(
        &'a self,
        agent_id: &'a str,
        relay_id: &'a str,
        epoch: u64,
    ) -> DirFuture<'a, bool> {
        Box::pin(async move {
            let ok: i64 = self
                .run(|mut c| async move {
                    self.release
                        .key(owner_key(agent_id))
                        .arg(relay_id)
                        .arg(epoch)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok(ok == 1)
        })
    }

    fn announce<'a>(&'a self, relay: &'a RelayEntry, ttl: Duration) -> DirFuture<'a, ()> {
        Box::pin(async move {
            let ttl = ttl.as_millis().max(1) as u64;
            let key = relay_key(&relay.replica_id);
            self.run(|mut c| async move {
                redis::pipe()
                    .cmd("HSET")
                    .arg(&key)
                    .arg("mesh_url")
                    .arg(&relay.mesh_url)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ttl)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
            self.run(|mut c| async move {
                redis::cmd("ZADD")
                    .arg(RELAYS)
                    .arg(now_ms())
                    .arg(&relay.replica_id)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
        })
    }

    fn withdraw<'a>(&'a self, relay_id: &'a str) -> DirFuture<'a, ()> {
        Box::pin(async move {
            self.run(|mut c| async move {
                redis::cmd("DEL")
                    .arg(relay_key(relay_id))
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
            self.run(|mut c| async move {
                redis::cmd("ZREM")
                    .arg(RELAYS)
                    .arg(relay_id)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
        })
    }

    fn load(&self) -> DirFuture<'_, Listing> {
        Box::pin(async move {
            let (agents, relays) = self.indexes().await?;
            let c = self.conn().await?;
            let owners = agents.iter().map(|a| {
                let mut c = c.clone();
                async move {
                    let fields: redis::RedisResult<Vec<(String, String)>> = redis::cmd("HGETALL")
                        .arg(owner_key(a))
                        .query_async(&mut c)
                        .await;
                    let epoch: redis::RedisResult<Option<u64>> = redis::cmd("GET")
                        .arg(epoch_key(a))
                        .query_async(&mut c)
                        .await;
                    (fields, epoch)
                }
            });
            let peers = relays.iter().map(|r| {
                let mut c = c.clone();
                async move {
                    let url: redis::RedisResult<Option<String>> = redis::cmd("HGET")
                        .arg(relay_key(r))
                        .arg("mesh_url")
                        .query_async(&mut c)
                        .await;
                    url
                }
            });
            let (owners, peers) = tokio::time::timeout(
                OP_TIMEOUT * 2,
                futures_util::future::join(join_all(owners), join_all(peers)),
            )
            .await
            .map_err(|_| DirError::Unreachable("timed out".into()))?;
            let mut listing = Listing::default();
            for (a, (fields, epoch)) in agents.iter().zip(owners) {
                if let Some(e) = epoch.map_err(err)? {
                    listing.epochs.push((a.clone(), e));
                }
                if let Some(o) = owner_from(a, fields.map_err(err)?) {
                    listing.owners.push(o);
                }
            }
            for (r, url) in relays.iter().zip(peers) {
                if let Some(url) = url.map_err(err)? {
                    listing.relays.push(RelayEntry {
                        replica_id: r.clone(),
                        mesh_url: url,
                    });
                }
            }
            Ok(listing)
        })
    }

    fn sweep(&self) -> DirFuture<'_, usize> {
        Box::pin(async move {
            let (agents, relays) = self.indexes().await?;
            let c = self.conn().await?;
            let mut live = std::collections::HashSet::new();
            let mut cleared = 0;
            for r in &relays {
                let mut c = c.clone();
                let exists: bool = redis::cmd("EXISTS")
                    .arg(relay_key(r))
                    .query_async(&mut c)
                    .await
                    .map_err(err)?;
                if exists {
                    live.insert(r.clone());
                } else {
                    redis::cmd("ZREM")
                        .arg(RELAYS)
                        .arg(r)
                        .query_async::<()>(&mut c)
                        .await
                        .map_err(err)?;
                    cleared += 1;
                }
            }
            for a in &agents {
                let mut c = c.clone();
                let relay: Option<String> = redis::cmd("HGET")
                    .arg(owner_key(a))
                    .arg("relay")
                    .query_async(&mut c)
                    .await
                    .map_err(err)?;
                match relay {
                    None => {
                        redis::cmd("ZREM")
                            .arg(AGENTS)
                            .arg(a)
                            .query_async::<()>(&mut c)
                            .await
                            .map_err(err)?;
                        cleared += 1;
                    }
                    Some(r) if !live.contains(&r) => {
                        // The relay may have announced itself after the listing above.
                        let back: bool = redis::cmd("EXISTS")
                            .arg(relay_key(&r))
                            .query_async(&mut c)
                            .await
                            .map_err(err)?;
                        if back {
                            continue;
                        }
                        let n: i64 = self
                            .release
                            .key(owner_key(a))
                            .arg(&r)
                            .arg("")
                            .invoke_async(&mut c)
                            .await
                            .map_err(err)?;
                        if n == 1 {
                            redis::cmd("ZREM")
                                .arg(AGENTS)
                                .arg(a)
                                .query_async::<()>(&mut c)
                                .await
                                .map_err(err)?;
                        }
                        cleared += n as usize;
                    }
                    Some(_) => {}
                }
            }
            Ok(cleared)
        })
    }
}

impl RedisDirectory {
    /// The agent and relay indexes (at most [`MAX_LISTED`] each).
    async fn indexes(&self) -> Result<(Vec<String>, Vec<String>), DirError> {
        let max = MAX_LISTED as i64 - 1;
        let range = |key: &'static str| {
            self.run(move |mut c| async move {
                redis::cmd("ZRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(max)
                    .query_async::<Vec<String>>(&mut c)
                    .await
            })
        };
        Ok((range(AGENTS).await?, range(RELAYS).await?))
    }
}

#[cfg(test)]
mod tests;
