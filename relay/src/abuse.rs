//! Abuse bookkeeping: per-source limits on `/tunnel`.
//!
//! Per source (an IPv4 address, or an IPv6 /64 since one host usually owns a whole /64):
//! - at most `max_pending_per_ip` attempts between the upgrade request and an accepted HELLO;
//! - `failure_limit` auth failures within `failure_window` start a cool-down during which
//!   every request from that source gets 429 without its token being looked at.
//!
//! (Audit records of refusals are rate-limited by the audit trail itself, per the same source
//! key: `crate::audit`.)
//!
//! Memory is bounded: at most [`MAX_SOURCES`] sources are tracked; idle entries are pruned when
//! the table fills, and a source that still finds no room is admitted untracked rather than
//! refused (a flood from many addresses must not lock out every agent).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::audit::{source_key, Action, Audit, Event};
use crate::config::AbuseConfig;

/// Sources tracked at once.
pub(crate) const MAX_SOURCES: usize = 16 * 1024;

#[derive(Debug)]
struct Source {
    pending: usize,
    window_start: Instant,
    failures: u32,
    cooldown_until: Option<Instant>,
}

impl Source {
    fn idle(&self, now: Instant, window: Duration) -> bool {
        self.pending == 0
            && self.cooldown_until.is_none_or(|t| t <= now)
            && (self.failures == 0 || now.duration_since(self.window_start) >= window)
    }
}

/// Why a source is refused before its token is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Too many failures: refused for this long still.
    Cooldown(Duration),
    /// Too many attempts in progress from this source.
    TooManyPending,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Cooldown(_) => "cooldown",
            Refusal::TooManyPending => "too_many_pending",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Gate {
    cfg: AbuseConfig,
    sources: Mutex<HashMap<IpAddr, Source>>,
}

impl Gate {
    pub fn new(cfg: AbuseConfig) -> Gate {
        Gate {
            cfg,
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Source>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for one attempt from `ip`, held until its HELLO is accepted or it fails.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<PendingSlot, Refusal> {
        let k = source_key(ip);
        let now = Instant::now();
        let mut map = self.lock();
        if !map.contains_key(&k) && map.len() >= MAX_SOURCES {
            let window = self.cfg.failure_window;
            map.retain(|_, s| !s.idle(now, window));
            if map.len() >= MAX_SOURCES {
                return Ok(PendingSlot {
                    gate: self.clone(),
                    key: None,
                });
            }
        }
        let s = map.entry(k).or_insert_with(|| Source {
            pending: 0,
            window_start: now,
            failures: 0,
            cooldown_until: None,
        });
        if let Some(until) = s.cooldown_until {
            if until > now {
                return Err(Refusal::Cooldown(until - now));
            }
            s.cooldown_until = None;
        }
        if s.pending >= self.cfg.max_pending_per_ip {
            return Err(Refusal::TooManyPending);
        }
        s.pending += 1;
        Ok(PendingSlot {
            gate: self.clone(),
            key: Some(k),
        })
    }

    /// Counts an auth failure; true when it starts a cool-down for the source.
    pub fn failed(&self, ip: IpAddr) -> bool {
        let k = source_key(ip);
        let now = Instant::now();
        let mut map = self.lock();
        let Some(s) = map.get_mut(&k) else {
            // Untracked (table full): nothing to count against.
            return false;
        };
        if now.duration_since(s.window_start) >= self.cfg.failure_window {
            s.window_start = now;
            s.failures = 0;
        }
        s.failures += 1;
        if s.failures >= self.cfg.failure_limit {
            s.failures = 0;
            s.window_start = now;
            s.cooldown_until = Some(now + self.cfg.cooldown);
            return true;
        }
        false
    }

    /// Counts one auth failure of `peer` against its cool-down; audits the start of one.
    pub fn note_failure(&self, peer: SocketAddr, audit: &Audit) {
        if self.failed(peer.ip()) {
            audit.record(
                Event::new(Action::SourceCooldown, false)
                    .reason("auth_failure_limit")
                    .source(peer.ip())
                    .detail(format!(
                        "refused for {} s after {} failures",
                        self.cfg.cooldown.as_secs(),
                        self.cfg.failure_limit
                    )),
            );
        }
    }

    /// Sources tracked now (for tests and the memory bound).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn release(&self, k: IpAddr) {
        let mut map = self.lock();
        let window = self.cfg.failure_window;
        let now = Instant::now();
        if let Some(s) = map.get_mut(&k) {
            s.pending = s.pending.saturating_sub(1);
            if s.idle(now, window) {
                map.remove(&k);
            }
        }
    }
}

/// One attempt in progress; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct PendingSlot {
    gate: Arc<Gate>,
    key: Option<IpAddr>,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            self.gate.release(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(pending: usize, limit: u32) -> Arc<Gate> {
        Arc::new(Gate::new(AbuseConfig {
            max_pending_per_ip: pending,
            failure_limit: limit,
            failure_window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn pending_cap_per_source() {
        let g = gate(2, 100);
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let a = g.admit(ip).expect("first");
        let _b = g.admit(ip).expect("second");
        assert_eq!(g.admit(ip).err(), Some(Refusal::TooManyPending));
        // Another source is unaffected; IPv6 hosts of one /64 share a slot count.
        assert!(g.admit("10.0.0.2".parse().expect("ip")).is_ok());
        let v6a = g.admit("2001:db8::1".parse().expect("ip")).expect("v6");
        let _v6b = g.admit("2001:db8::2".parse().expect("ip")).expect("v6");
        assert_eq!(
            g.admit("2001:db8::3".parse().expect("ip")).err(),
            Some(Refusal::TooManyPending)
        );
        assert!(g.admit("2001:db8:0:1::1".parse().expect("ip")).is_ok());
        drop(a);
        assert!(g.admit(ip).is_ok());
        drop(v6a);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_start_a_cooldown_that_ends() {
        let g = gate(100, 3);
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        for i in 0..3 {
            let _slot = g.admit(ip).expect("admitted");
            assert_eq!(g.failed(ip), i == 2);
        }
        match g.admit(ip) {
            Err(Refusal::Cooldown(left)) => assert!(left <= Duration::from_secs(30)),
            other => panic!("expected a cool-down, got {other:?}"),
        }
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(g.admit(ip).is_ok());
        // Failures spread wider than the window never add up to a cool-down.
        for _ in 0..10 {
            let _slot = g.admit(ip).expect("admitted");
            assert!(!g.failed(ip));
            tokio::time::advance(Duration::from_secs(40)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn table_is_bounded_and_idle_entries_leave() {
        let g = gate(4, 100);
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let slot = g.admit(ip).expect("admitted");
            g.failed(ip);
            drop(slot);
        }
        assert!(g.tracked() <= MAX_SOURCES);
        tokio::time::advance(Duration::from_secs(61)).await;
        let slot = g.admit("192.0.2.1".parse().expect("ip")).expect("admitted");
        drop(slot);
        assert!(g.tracked() <= 2, "expired entries pruned: {}", g.tracked());
    }
}
