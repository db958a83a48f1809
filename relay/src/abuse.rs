//! Abuse bookkeeping: per-source limits on `/tunnel`.
//!
//! Per source (an IPv4 address, or an IPv6 /64 since one host usually owns a whole /64):
//! - at most `max_pending_per_ip` attempts between the upgrade request and an accepted HELLO;
//! - `failure_limit` auth failures within `failure_window` start a cool-down during which
//!   every request from that source gets 429 without its token being looked at.
//!
//! A source in `security.shared_egress_cidrs` (many agents behind one address) counts failures
//! and cool-downs per (address, token subject) instead, the subject read from the token without
//! verifying it ([`SourceKey`]); pending attempts still count per address, and all subjects
//! together cool the address down at [`SHARED_EGRESS_FACTOR`] times the limit.
//!
//! (Audit records of refusals are rate-limited by the audit trail itself, per the same source
//! address: `crate::audit`.)
//!
//! Memory is bounded: at most [`MAX_SOURCES`] sources are tracked; idle entries are pruned when
//! the table fills, and a source that still finds no room is admitted untracked rather than
//! refused (a flood from many addresses must not lock out every agent).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

pub(crate) use crate::audit::source_key as source_net;
use crate::audit::{Action, Audit, Event};
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
    fn new(now: Instant) -> Source {
        Source {
            pending: 0,
            window_start: now,
            failures: 0,
            cooldown_until: None,
        }
    }

    fn idle(&self, now: Instant, window: Duration) -> bool {
        self.pending == 0
            && self.cooldown_until.is_none_or(|t| t <= now)
            && (self.failures == 0 || now.duration_since(self.window_start) >= window)
    }

    /// How long its cool-down lasts still; an ended one is cleared.
    fn cooling(&mut self, now: Instant) -> Option<Duration> {
        match self.cooldown_until {
            Some(until) if until > now => Some(until - now),
            Some(_) => {
                self.cooldown_until = None;
                None
            }
            None => None,
        }
    }

    /// Counts one failure; true when it starts a cool-down.
    fn fail(&mut self, now: Instant, limit: u32, window: Duration, cooldown: Duration) -> bool {
        if now.duration_since(self.window_start) >= window {
            self.window_start = now;
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures >= limit {
            self.failures = 0;
            self.window_start = now;
            self.cooldown_until = Some(now + cooldown);
            return true;
        }
        false
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

/// Longest token subject kept in a [`SourceKey`] (longer ones are cut): bounds the table.
pub(crate) const MAX_SUBJECT_LEN: usize = 128;

/// At a shared-egress address, the failures of all its subjects together start a cool-down of
/// the whole address at this many times `failure_limit`: a client that invents a new subject
/// for every bad token still meets a limit, while one user's storm (one subject) does not lock
/// out the others.
pub(crate) const SHARED_EGRESS_FACTOR: u32 = 10;

/// What a `/tunnel` attempt counts against: its source and, for a source in
/// `security.shared_egress_cidrs`, the subject its token claims. The subject is read without
/// verifying the token, so it separates users behind one address and proves nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SourceKey {
    /// [`source_net`] of the address.
    net: IpAddr,
    /// `None` outside shared egress; `-` when the request carries no readable subject.
    subject: Option<Box<str>>,
}

impl SourceKey {
    /// The key of the whole address (pending attempts always count here).
    fn address(&self) -> SourceKey {
        SourceKey {
            net: self.net,
            subject: None,
        }
    }
}

/// What a failure started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Started {
    /// A cool-down of the source (or of a whole shared-egress address).
    Source,
    /// A cool-down of one subject at a shared-egress address.
    Subject,
}

#[derive(Debug)]
pub(crate) struct Gate {
    cfg: AbuseConfig,
    sources: Mutex<HashMap<SourceKey, Source>>,
}

/// `subject` cut to [`MAX_SUBJECT_LEN`] bytes with control characters dropped (it ends up in
/// audit details); empty: `-`.
fn clean_subject(subject: Option<String>) -> Box<str> {
    let mut out = String::new();
    for ch in subject
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
    {
        if out.len() + ch.len_utf8() > MAX_SUBJECT_LEN {
            break;
        }
        out.push(ch);
    }
    if out.is_empty() {
        out.push('-');
    }
    out.into_boxed_str()
}

impl Gate {
    pub fn new(cfg: AbuseConfig) -> Gate {
        Gate {
            cfg,
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SourceKey, Source>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of an attempt from `ip`; `subject` (the token's unverified `sub` or `agent_id`)
    /// is asked for only when `ip` is in `shared_egress_cidrs`.
    pub fn key(&self, ip: IpAddr, subject: impl FnOnce() -> Option<String>) -> SourceKey {
        let canonical = ip.to_canonical();
        let shared = self
            .cfg
            .shared_egress_cidrs
            .iter()
            .any(|n| n.contains(&canonical));
        SourceKey {
            net: source_net(ip),
            subject: shared.then(|| clean_subject(subject())),
        }
    }

    /// A slot for one attempt under `key`, held until its HELLO is accepted or it fails.
    pub fn admit(self: &Arc<Self>, key: &SourceKey) -> Result<PendingSlot, Refusal> {
        let addr = key.address();
        let now = Instant::now();
        let mut map = self.lock();
        let missing = usize::from(!map.contains_key(&addr))
            + usize::from(key.subject.is_some() && !map.contains_key(key));
        if missing > 0 && map.len() + missing > MAX_SOURCES {
            let window = self.cfg.failure_window;
            map.retain(|_, s| !s.idle(now, window));
            if map.len() + missing > MAX_SOURCES {
                return Ok(PendingSlot {
                    gate: self.clone(),
                    key: None,
                });
            }
        }
        let a = map.entry(addr.clone()).or_insert_with(|| Source::new(now));
        if let Some(left) = a.cooling(now) {
            return Err(Refusal::Cooldown(left));
        }
        if a.pending >= self.cfg.max_pending_per_ip {
            return Err(Refusal::TooManyPending);
        }
        a.pending += 1;
        if key.subject.is_some() {
            let s = map.entry(key.clone()).or_insert_with(|| Source::new(now));
            if let Some(left) = s.cooling(now) {
                if let Some(a) = map.get_mut(&addr) {
                    a.pending -= 1;
                }
                return Err(Refusal::Cooldown(left));
            }
        }
        Ok(PendingSlot {
            gate: self.clone(),
            key: Some(key.clone()),
        })
    }

    /// Counts an auth failure under `key`; says which cool-down it started, if any.
    pub fn failed(&self, key: &SourceKey) -> Option<Started> {
        let now = Instant::now();
        let (limit, window, cooldown) = (
            self.cfg.failure_limit,
            self.cfg.failure_window,
            self.cfg.cooldown,
        );
        let mut map = self.lock();
        // Untracked entries (table full): nothing to count against.
        let mut started = None;
        if key.subject.is_some() {
            if let Some(s) = map.get_mut(key) {
                if s.fail(now, limit, window, cooldown) {
                    started = Some(Started::Subject);
                }
            }
        }
        let addr_limit = if key.subject.is_some() {
            limit.saturating_mul(SHARED_EGRESS_FACTOR)
        } else {
            limit
        };
        if let Some(a) = map.get_mut(&key.address()) {
            if a.fail(now, addr_limit, window, cooldown) {
                started = Some(Started::Source);
            }
        }
        started
    }

    /// Counts one auth failure of `peer` (under `key`) against its cool-down; audits the start
    /// of one.
    pub fn note_failure(&self, key: &SourceKey, peer: SocketAddr, audit: &Audit) {
        let Some(started) = self.failed(key) else {
            return;
        };
        let mut detail = format!(
            "refused for {} s after {} failures",
            self.cfg.cooldown.as_secs(),
            self.cfg.failure_limit
        );
        match (started, &key.subject) {
            (Started::Subject, Some(sub)) => {
                detail.push_str(&format!("; shared egress, subject `{sub}` only"));
            }
            (Started::Source, Some(_)) => detail.push_str(&format!(
                "; shared egress: {} failures across its subjects",
                self.cfg.failure_limit.saturating_mul(SHARED_EGRESS_FACTOR)
            )),
            _ => {}
        }
        audit.record(
            Event::new(Action::SourceCooldown, false)
                .reason("auth_failure_limit")
                .source(peer.ip())
                .detail(detail),
        );
    }

    /// Entries tracked now (for tests and the memory bound).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn release(&self, key: &SourceKey) {
        let mut map = self.lock();
        let window = self.cfg.failure_window;
        let now = Instant::now();
        let addr = key.address();
        if let Some(a) = map.get_mut(&addr) {
            a.pending = a.pending.saturating_sub(1);
            if a.idle(now, window) {
                map.remove(&addr);
            }
        }
        if key.subject.is_some() && map.get(key).is_some_and(|s| s.idle(now, window)) {
            map.remove(key);
        }
    }
}

/// One attempt in progress; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct PendingSlot {
    gate: Arc<Gate>,
    /// `None`: admitted untracked (table full).
    key: Option<SourceKey>,
}

impl PendingSlot {
    /// Counts an auth failure of this attempt (from `peer`) under its key.
    pub fn note_failure(&self, peer: SocketAddr, audit: &Audit) {
        if let Some(k) = &self.key {
            self.gate.note_failure(k, peer, audit);
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        if let Some(k) = &self.key {
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
            shared_egress_cidrs: vec!["192.0.2.0/24".parse().expect("cidr")],
        }))
    }

    /// The key of `ip` with subject `sub` (used only inside the shared egress 192.0.2.0/24).
    fn k(g: &Gate, ip: &str, sub: Option<&str>) -> SourceKey {
        g.key(ip.parse().expect("ip"), || sub.map(str::to_owned))
    }

    #[tokio::test(start_paused = true)]
    async fn pending_cap_per_source() {
        let g = gate(2, 100);
        let ip = k(&g, "10.0.0.1", None);
        let a = g.admit(&ip).expect("first");
        let _b = g.admit(&ip).expect("second");
        assert_eq!(g.admit(&ip).err(), Some(Refusal::TooManyPending));
        // Another source is unaffected; IPv6 hosts of one /64 share a slot count.
        assert!(g.admit(&k(&g, "10.0.0.2", None)).is_ok());
        let v6a = g.admit(&k(&g, "2001:db8::1", None)).expect("v6");
        let _v6b = g.admit(&k(&g, "2001:db8::2", None)).expect("v6");
        assert_eq!(
            g.admit(&k(&g, "2001:db8::3", None)).err(),
            Some(Refusal::TooManyPending)
        );
        assert!(g.admit(&k(&g, "2001:db8:0:1::1", None)).is_ok());
        drop(a);
        assert!(g.admit(&ip).is_ok());
        drop(v6a);
        // At a shared egress, pending attempts still count per address, whatever the subject.
        let _c = g.admit(&k(&g, "192.0.2.7", Some("alice"))).expect("first");
        let _d = g.admit(&k(&g, "192.0.2.7", Some("bob"))).expect("second");
        assert_eq!(
            g.admit(&k(&g, "192.0.2.7", Some("carol"))).err(),
            Some(Refusal::TooManyPending)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_start_a_cooldown_that_ends() {
        let g = gate(100, 3);
        let ip = k(&g, "10.0.0.1", None);
        for i in 0..3 {
            let _slot = g.admit(&ip).expect("admitted");
            assert_eq!(g.failed(&ip), (i == 2).then_some(Started::Source));
        }
        match g.admit(&ip) {
            Err(Refusal::Cooldown(left)) => assert!(left <= Duration::from_secs(30)),
            other => panic!("expected a cool-down, got {other:?}"),
        }
        // Outside the shared egress the subject plays no part.
        assert_eq!(k(&g, "10.0.0.1", Some("bob")), ip);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(g.admit(&ip).is_ok());
        // Failures spread wider than the window never add up to a cool-down.
        for _ in 0..10 {
            let _slot = g.admit(&ip).expect("admitted");
            assert_eq!(g.failed(&ip), None);
            tokio::time::advance(Duration::from_secs(40)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shared_egress_cools_down_one_subject_then_the_whole_address() {
        let g = gate(100, 3);
        let alice = k(&g, "192.0.2.7", Some("alice"));
        for i in 0..3 {
            let _slot = g.admit(&alice).expect("admitted");
            assert_eq!(g.failed(&alice), (i == 2).then_some(Started::Subject));
        }
        assert!(matches!(g.admit(&alice), Err(Refusal::Cooldown(_))));
        // Bob behind the same address, and a token without a subject, are still admitted.
        assert!(g.admit(&k(&g, "192.0.2.7", Some("bob"))).is_ok());
        assert!(g.admit(&k(&g, "192.0.2.7", None)).is_ok());
        assert_eq!(k(&g, "192.0.2.7", None).subject.as_deref(), Some("-"));
        // A new subject for every bad token: the address as a whole cools down at 10x the limit.
        let total = 3 * SHARED_EGRESS_FACTOR;
        let mut started = None;
        for i in 3..total {
            let key = k(&g, "192.0.2.7", Some(&format!("forged-{i}")));
            let _slot = g.admit(&key).expect("admitted");
            started = g.failed(&key);
        }
        assert_eq!(started, Some(Started::Source));
        assert!(matches!(
            g.admit(&k(&g, "192.0.2.7", Some("bob"))),
            Err(Refusal::Cooldown(_))
        ));
    }

    #[test]
    fn subjects_are_bounded_and_printable() {
        let g = gate(1, 1);
        let long = "é".repeat(200);
        let key = k(&g, "192.0.2.1", Some(&long));
        let sub = key.subject.expect("shared egress");
        assert!(sub.len() <= MAX_SUBJECT_LEN && sub.starts_with('é'));
        let key = k(&g, "192.0.2.1", Some("a\nb\u{7}"));
        assert_eq!(key.subject.as_deref(), Some("ab"));
    }

    #[tokio::test(start_paused = true)]
    async fn table_is_bounded_and_idle_entries_leave() {
        let g = gate(4, 100);
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let key = g.key(ip, || None);
            let slot = g.admit(&key).expect("admitted");
            g.failed(&key);
            drop(slot);
        }
        assert!(g.tracked() <= MAX_SOURCES);
        tokio::time::advance(Duration::from_secs(61)).await;
        let slot = g.admit(&k(&g, "198.51.100.1", None)).expect("admitted");
        drop(slot);
        assert!(g.tracked() <= 2, "expired entries pruned: {}", g.tracked());
    }
}
