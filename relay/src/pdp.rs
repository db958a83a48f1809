//! Per-stream authorization by a policy decision point (OpenID AuthZEN access evaluation).
//!
//! For each OPEN the relay POSTs to `pdp.url`:
//! `{"subject":{"type":"agent","id":AGENT_ID},"action":{"name":"connect"},
//!   "resource":{"type":"connector","id":CONNECTOR},
//!   "context":{"client_ip":IP,"client_port":PORT,"listener":NAME}}`
//! and reads `{"decision": true|false}`. Allow decisions are cached for `cache_ttl_sec` per
//! (agent_id, connector, client IP); denials never are. Concurrent OPENs with the same key share
//! one request. A failed or late answer denies, unless `fail_open`.
//!
//! Callers wait in their own stream task, so a slow PDP delays only the client being decided.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tracing::warn;

use crate::config::PdpConfig;
use crate::httpc::HttpClient;
use crate::metrics::Metrics;

/// Allow decisions remembered at once; past this, expired ones are dropped (or all of them).
const MAX_CACHE: usize = 10_000;
/// Largest PDP answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// What the PDP (or the lack of it) said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allow,
    Deny,
    Error,
    Timeout,
}

/// The decision for one OPEN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub allowed: bool,
    /// `allow`, `deny`, `cache_hit`, `error`, `timeout` (the audit reason).
    pub result: &'static str,
}

type Key = (Arc<str>, String, IpAddr);

#[derive(Debug)]
pub(crate) struct Pdp {
    cfg: PdpConfig,
    http: HttpClient,
    metrics: Arc<Metrics>,
    /// Allow decisions and when they expire.
    cache: Mutex<HashMap<Key, Instant>>,
    /// Requests in flight, shared by every OPEN with the same key.
    inflight: Mutex<HashMap<Key, Arc<OnceCell<Outcome>>>>,
}

#[derive(Deserialize)]
struct Answer {
    decision: bool,
}

impl Pdp {
    pub fn new(cfg: PdpConfig, http: HttpClient, metrics: Arc<Metrics>) -> Pdp {
        Pdp {
            cfg,
            http,
            metrics,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Decides whether `agent_id` may carry a stream for `client` on `connector`.
    pub async fn decide(
        &self,
        agent_id: &Arc<str>,
        connector: &str,
        client: SocketAddr,
        listener: &str,
    ) -> Decision {
        let key: Key = (
            agent_id.clone(),
            connector.to_owned(),
            client.ip().to_canonical(),
        );
        let now = Instant::now();
        let hit = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.get(&key).is_some_and(|until| *until > now)
        };
        if hit {
            self.metrics.pdp_allow.inc();
            self.metrics.pdp_cache_hits.inc();
            return Decision {
                allowed: true,
                result: "cache_hit",
            };
        }
        let cell = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if inflight.len() >= MAX_CACHE {
                // Only cells someone still waits on are worth keeping.
                inflight.retain(|_, c| Arc::strong_count(c) > 1);
            }
            inflight.entry(key.clone()).or_default().clone()
        };
        let outcome = *cell
            .get_or_init(|| self.evaluate(agent_id, connector, client, listener))
            .await;
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(&key);
            }
        }
        if outcome == Outcome::Allow && !self.cfg.cache_ttl.is_zero() {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= MAX_CACHE {
                let now = Instant::now();
                cache.retain(|_, until| *until > now);
                if cache.len() >= MAX_CACHE {
                    cache.clear();
                }
            }
            cache.insert(key, Instant::now() + self.cfg.cache_ttl);
        }
        self.count(outcome);
        match outcome {
            Outcome::Allow => Decision {
                allowed: true,
                result: "allow",
            },
            Outcome::Deny => Decision {
                allowed: false,
                result: "deny",
            },
            Outcome::Error => Decision {
                allowed: self.cfg.fail_open,
                result: "error",
            },
            Outcome::Timeout => Decision {
                allowed: self.cfg.fail_open,
                result: "timeout",
            },
        }
    }

    /// The catalog's three counters, plus our timeout count (a subset of the errors).
    fn count(&self, outcome: Outcome) {
        let m = &self.metrics;
        match outcome {
            Outcome::Allow => m.pdp_allow.inc(),
            Outcome::Deny => m.pdp_deny.inc(),
            Outcome::Error => m.pdp_errors.inc(),
            Outcome::Timeout => {
                m.pdp_errors.inc();
                m.pdp_timeouts.inc()
            }
        };
    }

    /// One request to the PDP.
    async fn evaluate(
        &self,
        agent_id: &str,
        connector: &str,
        client: SocketAddr,
        listener: &str,
    ) -> Outcome {
        let body = serde_json::json!({
            "subject": {"type": "agent", "id": agent_id},
            "action": {"name": "connect"},
            "resource": {"type": "connector", "id": connector},
            "context": {
                "client_ip": client.ip().to_canonical().to_string(),
                "client_port": client.port(),
                "listener": listener,
            },
        });
        let body = Bytes::from(body.to_string());
        match self
            .http
            .post_json(&self.cfg.url, body, MAX_ANSWER, self.cfg.timeout)
            .await
        {
            Ok(answer) => match serde_json::from_slice::<Answer>(&answer) {
                Ok(Answer { decision: true }) => Outcome::Allow,
                Ok(Answer { decision: false }) => Outcome::Deny,
                Err(e) => {
                    warn!(agent_id, connector, error = %e, "PDP answer has no boolean `decision`");
                    Outcome::Error
                }
            },
            Err(crate::httpc::HttpError::Timeout) => {
                warn!(
                    agent_id,
                    connector,
                    timeout_ms = self.cfg.timeout.as_millis() as u64,
                    "PDP timed out"
                );
                Outcome::Timeout
            }
            Err(e) => {
                warn!(agent_id, connector, error = %e, "PDP request failed");
                Outcome::Error
            }
        }
    }
}
