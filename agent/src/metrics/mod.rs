//! The agent's own metrics for its optional Prometheus endpoint (`metrics.port`): the counters
//! the tunnel and the streams bump ([`AgentMetrics`]), the page they render to ([`render`]),
//! and the tiny HTTP/1.1 server that answers `GET /metrics` ([`serve`]).
//!
//! Embedded-first: no metrics library, no HTTP server crate. The data path pays one relaxed
//! atomic add per read or write call (never per byte, never a lock); what changes rarely (a
//! target connect failure) takes a mutex. No label ever holds a payload, a token or a client
//! address: the labels are a fixed reason set, the direction, the configured connector names,
//! the configured target hosts (`host:port`, bounded by the configuration) and the version.

mod reason;
mod render;
mod serve;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub use reason::ReconnectReason;
pub use render::{render, Sample, TargetSample};
pub use serve::serve;

/// The agent's counters; clones share them. Tunnel state (READY, uptime, open streams) is the
/// [`crate::health::HealthState`]'s and is not repeated here.
#[derive(Debug, Clone, Default)]
pub struct AgentMetrics {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    /// Per [`ReconnectReason`], indexed by its discriminant.
    reconnects: [AtomicU64; ReconnectReason::ALL.len()],
    /// Bytes written to targets (client to premise).
    c2p: AtomicU64,
    /// Bytes read from targets (premise to client).
    p2c: AtomicU64,
    /// `exp` (Unix seconds) of the token the latest READY tunnel connected with; 0: none, or a
    /// token without `exp`.
    token_exp: AtomicU64,
    /// Target connect failures (refused, unreachable, timed out) by connector. Keys are
    /// exported connector names only (an OPEN for another one never dials), so the map is
    /// bounded by the configuration; a failure is rare next to the data path, hence a mutex.
    connect_failures: Mutex<BTreeMap<String, u64>>,
}

impl AgentMetrics {
    /// A tunnel ended (or an attempt failed) and the agent will dial again.
    pub fn reconnect(&self, reason: ReconnectReason) {
        self.inner.reconnects[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// One write call put `n` relay bytes into a target socket.
    pub fn wrote_to_target(&self, n: usize) {
        self.inner.c2p.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// One read call took `n` bytes from a target socket.
    pub fn read_from_target(&self, n: usize) {
        self.inner.p2c.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A tunnel became READY with a token expiring at `exp` (`None`: no token, or no `exp`).
    pub fn token_in_use(&self, exp: Option<SystemTime>) {
        let secs = exp
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        self.inner.token_exp.store(secs, Ordering::Relaxed);
    }

    /// Dialing `connector`'s target failed or timed out.
    pub fn target_connect_failed(&self, connector: &str) {
        let mut map = self.lock_failures();
        match map.get_mut(connector) {
            Some(n) => *n += 1,
            None => {
                map.insert(connector.to_owned(), 1);
            }
        }
    }

    /// Reconnects so far, per reason, in [`ReconnectReason::ALL`] order.
    pub fn reconnects(&self) -> [(ReconnectReason, u64); ReconnectReason::ALL.len()] {
        ReconnectReason::ALL.map(|r| (r, self.inner.reconnects[r.index()].load(Ordering::Relaxed)))
    }

    /// Bytes written to targets, bytes read from them.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.inner.c2p.load(Ordering::Relaxed),
            self.inner.p2c.load(Ordering::Relaxed),
        )
    }

    /// Seconds from `now` until the token in use expires (negative once expired); `None`
    /// without a token or `exp`.
    pub fn token_expiry(&self, now: SystemTime) -> Option<f64> {
        let exp = self.inner.token_exp.load(Ordering::Relaxed);
        if exp == 0 {
            return None;
        }
        let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
        Some(exp as f64 - now)
    }

    /// Target connect failures by connector (only connectors that had one).
    pub fn connect_failures(&self) -> BTreeMap<String, u64> {
        self.lock_failures().clone()
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        // Nothing panics while holding it; recover the map if something ever did.
        self.inner
            .connect_failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reasons_are_indexed_by_their_position() {
        for (i, r) in ReconnectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{}", r.as_str());
        }
    }

    #[test]
    fn counters_add_up() {
        let m = AgentMetrics::default();
        m.reconnect(ReconnectReason::Tls);
        m.reconnect(ReconnectReason::Tls);
        m.reconnect(ReconnectReason::Error);
        let r = m.reconnects();
        assert_eq!(r[1], (ReconnectReason::Tls, 2));
        assert_eq!(r[9], (ReconnectReason::Error, 1));
        m.wrote_to_target(10);
        m.read_from_target(3);
        m.wrote_to_target(5);
        assert_eq!(m.bytes(), (15, 3));
        m.target_connect_failed("ad");
        m.target_connect_failed("ad");
        m.target_connect_failed("db");
        assert_eq!(
            m.connect_failures().into_iter().collect::<Vec<_>>(),
            vec![("ad".to_string(), 2), ("db".to_string(), 1)]
        );
    }

    #[test]
    fn token_expiry_counts_down_and_is_absent_without_exp() {
        let m = AgentMetrics::default();
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(m.token_expiry(now), None);
        m.token_in_use(Some(UNIX_EPOCH + Duration::from_secs(1_600)));
        assert_eq!(m.token_expiry(now), Some(600.0));
        assert_eq!(m.token_expiry(now + Duration::from_secs(700)), Some(-100.0));
        m.token_in_use(None);
        assert_eq!(m.token_expiry(now), None);
    }
}
