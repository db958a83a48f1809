//! Passive health of a connector's hosts: a pure state machine, the clock passed in.
//!
//! A host that refused, timed out or did not resolve is *down*: an OPEN tries it only after
//! the healthy hosts until its backoff has passed (1 s, doubling per consecutive failure, at
//! most 30 s). Then one OPEN probes it in its place in the order; the OPENs that start while
//! that probe runs still put it last (the probe claims the slot by pushing the retry time
//! out). A successful connect makes it *up* again and resets the backoff. A host is never
//! left out: when every host is down, all are still tried, the down ones last.
//!
//! Nothing here sleeps, dials or reads a clock; `dial` feeds it outcomes with `Instant`s.

use std::time::{Duration, Instant};

use super::strategy::Strategy;

/// Most hosts one connector may list (one byte per index in an [`Order`]).
pub const MAX_HOSTS: usize = 16;
/// Backoff after the first failure.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Backoff cap.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One host's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHealth {
    /// False from a failed attempt until the next successful connect.
    pub up: bool,
    /// When `up` last changed (or the set was made).
    pub since: Instant,
    /// Consecutive failed attempts; sizes the backoff; 0 after a success.
    pub streak: u32,
    /// Failed attempts in all (never reset: the per-target counter).
    pub failures: u64,
    /// While down: not tried before the healthy hosts until then.
    retry_at: Option<Instant>,
}

/// The health of every host of one connector, and the round-robin cursor.
#[derive(Debug, Clone)]
pub struct Health {
    hosts: heapless::Vec<HostHealth, MAX_HOSTS>,
    /// Where the next round-robin order starts.
    cursor: usize,
}

/// A change worth one log line (and a STATUS report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Down,
    Up,
}

/// Host indexes in the order to try them. Fixed size: computing one allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    idx: [u8; MAX_HOSTS],
    len: u8,
}

impl Order {
    fn push(&mut self, i: usize) {
        if let (Some(slot), Ok(i)) = (self.idx.get_mut(usize::from(self.len)), u8::try_from(i)) {
            *slot = i;
            self.len += 1;
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.idx[..usize::from(self.len)]
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The backoff after `streak` consecutive failures.
pub fn backoff(streak: u32) -> Duration {
    let shift = streak.saturating_sub(1).min(16);
    BACKOFF_INITIAL
        .saturating_mul(1u32 << shift)
        .min(BACKOFF_MAX)
}

impl Health {
    /// `n` hosts (at most [`MAX_HOSTS`]), all up since `now`.
    pub fn new(n: usize, now: Instant) -> Health {
        let mut hosts = heapless::Vec::new();
        for _ in 0..n.min(MAX_HOSTS) {
            let _ = hosts.push(HostHealth {
                up: true,
                since: now,
                streak: 0,
                failures: 0,
                retry_at: None,
            });
        }
        Health { hosts, cursor: 0 }
    }

    pub fn hosts(&self) -> &[HostHealth] {
        &self.hosts
    }

    /// The order for one OPEN: hosts that are up, or down with their backoff passed (this OPEN
    /// then probes it), in strategy order; then the other down hosts, in the same order.
    /// Round robin moves the starting host by one per call.
    pub fn order(&mut self, strategy: Strategy, now: Instant) -> Order {
        let n = self.hosts.len();
        let mut order = Order {
            idx: [0; MAX_HOSTS],
            len: 0,
        };
        if n == 0 {
            return order;
        }
        let start = match strategy {
            Strategy::Failover => 0,
            Strategy::RoundRobin => {
                let s = self.cursor % n;
                self.cursor = (s + 1) % n;
                s
            }
        };
        let mut later = Order {
            idx: [0; MAX_HOSTS],
            len: 0,
        };
        for k in 0..n {
            let i = (start + k) % n;
            let h = &mut self.hosts[i];
            match h.retry_at {
                _ if h.up => order.push(i),
                Some(at) if at <= now => {
                    // This OPEN probes it; others meanwhile keep it last.
                    h.retry_at = Some(now + backoff(h.streak));
                    order.push(i);
                }
                _ => later.push(i),
            }
        }
        for &i in later.as_slice() {
            order.push(usize::from(i));
        }
        order
    }

    /// An attempt on host `i` failed (refused, timed out, did not resolve).
    pub fn failed(&mut self, i: usize, now: Instant) -> Option<Transition> {
        let h = self.hosts.get_mut(i)?;
        h.streak = h.streak.saturating_add(1);
        h.failures = h.failures.saturating_add(1);
        h.retry_at = Some(now + backoff(h.streak));
        if !h.up {
            return None;
        }
        h.up = false;
        h.since = now;
        Some(Transition::Down)
    }

    /// Host `i` accepted a connection.
    pub fn succeeded(&mut self, i: usize, now: Instant) -> Option<Transition> {
        let h = self.hosts.get_mut(i)?;
        h.streak = 0;
        h.retry_at = None;
        if h.up {
            return None;
        }
        h.up = true;
        h.since = now;
        Some(Transition::Up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(h: &mut Health, s: Strategy, now: Instant) -> Vec<u8> {
        h.order(s, now).as_slice().to_vec()
    }

    #[test]
    fn failover_is_list_order_and_round_robin_rotates() {
        let t0 = Instant::now();
        let mut h = Health::new(3, t0);
        assert_eq!(order(&mut h, Strategy::Failover, t0), [0, 1, 2]);
        assert_eq!(order(&mut h, Strategy::Failover, t0), [0, 1, 2]);
        let mut h = Health::new(3, t0);
        assert_eq!(order(&mut h, Strategy::RoundRobin, t0), [0, 1, 2]);
        assert_eq!(order(&mut h, Strategy::RoundRobin, t0), [1, 2, 0]);
        assert_eq!(order(&mut h, Strategy::RoundRobin, t0), [2, 0, 1]);
        assert_eq!(order(&mut h, Strategy::RoundRobin, t0), [0, 1, 2]);
    }

    #[test]
    fn a_down_host_goes_last_until_its_backoff_passed() {
        let t0 = Instant::now();
        let mut h = Health::new(2, t0);
        assert_eq!(h.failed(0, t0), Some(Transition::Down));
        assert!(!h.hosts()[0].up);
        assert_eq!(h.hosts()[0].since, t0);
        let t = t0 + Duration::from_millis(999);
        assert_eq!(
            order(&mut h, Strategy::Failover, t),
            [1, 0],
            "skipped first"
        );
        // Backoff over: one OPEN probes it in its place, the next ones keep it last.
        let t = t0 + BACKOFF_INITIAL;
        assert_eq!(order(&mut h, Strategy::Failover, t), [0, 1]);
        assert_eq!(order(&mut h, Strategy::Failover, t), [1, 0]);
        assert_eq!(h.succeeded(0, t), Some(Transition::Up));
        assert_eq!(h.succeeded(0, t), None, "logged once");
        assert_eq!(order(&mut h, Strategy::Failover, t), [0, 1]);
        assert_eq!(h.hosts()[0].failures, 1);
        assert_eq!(h.hosts()[0].streak, 0);
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_on_success() {
        let secs: Vec<u64> = (1..=7).map(|s| backoff(s).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
        let t0 = Instant::now();
        let mut h = Health::new(2, t0);
        assert_eq!(h.failed(0, t0), Some(Transition::Down));
        assert_eq!(h.failed(0, t0), None, "already down");
        assert_eq!(h.failed(0, t0), None);
        // Three failures: 4 s.
        let t = t0 + Duration::from_millis(3_999);
        assert_eq!(order(&mut h, Strategy::Failover, t), [1, 0]);
        let t = t0 + Duration::from_secs(4);
        assert_eq!(order(&mut h, Strategy::Failover, t), [0, 1]);
        h.succeeded(0, t);
        h.failed(0, t);
        let t2 = t + BACKOFF_INITIAL;
        assert_eq!(order(&mut h, Strategy::Failover, t2), [0, 1], "back to 1 s");
    }

    #[test]
    fn every_host_down_still_tries_them_all() {
        let t0 = Instant::now();
        let mut h = Health::new(3, t0);
        for i in 0..3 {
            h.failed(i, t0);
        }
        assert_eq!(order(&mut h, Strategy::Failover, t0), [0, 1, 2]);
        assert_eq!(order(&mut h, Strategy::RoundRobin, t0), [0, 1, 2]);
        assert_eq!(order(&mut h, Strategy::RoundRobin, t0), [1, 2, 0]);
    }

    #[test]
    fn round_robin_skips_a_down_host() {
        let t0 = Instant::now();
        let mut h = Health::new(3, t0);
        h.failed(1, t0);
        assert_eq!(order(&mut h, Strategy::RoundRobin, t0), [0, 2, 1]);
        assert_eq!(order(&mut h, Strategy::RoundRobin, t0), [2, 0, 1]);
        assert_eq!(order(&mut h, Strategy::RoundRobin, t0), [2, 0, 1]);
    }

    #[test]
    fn out_of_range_and_empty_are_harmless() {
        let t0 = Instant::now();
        let mut h = Health::new(0, t0);
        assert!(h.order(Strategy::RoundRobin, t0).is_empty());
        assert_eq!(h.failed(3, t0), None);
        assert_eq!(h.succeeded(3, t0), None);
        let mut h = Health::new(MAX_HOSTS + 5, t0);
        assert_eq!(h.order(Strategy::Failover, t0).len(), MAX_HOSTS);
    }
}
