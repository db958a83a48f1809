//! Reconnect delays: exponential backoff with full jitter ("AWS full jitter"): attempt n waits a
//! uniformly random time in `[0, min(cap, initial * 2^n)]`, so a fleet of agents that lost the
//! same relay does not come back in lock-step.
//!
//! After a healthy tunnel (READY for the flap guard, see the tunnel supervisor) the schedule
//! starts with [`QUICK_RETRIES`] quick retries, each jittered below [`QUICK_CEILING`] (or
//! `initial`, if lower), and only then grows from `initial`: a relay that restarts in a second
//! or two is found again within a quarter of a second of its start, while a relay that stays
//! down still gets the growing delay after about a second of quick tries.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Retries that stay quick after a healthy tunnel was lost.
pub const QUICK_RETRIES: u32 = 8;
/// Ceiling of a quick retry (full jitter below it: 125 ms on average).
pub const QUICK_CEILING: Duration = Duration::from_millis(250);

/// Backoff state of one supervisor.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    /// Failed attempts since the last reset, quick ones not counted; saturates.
    attempt: u32,
    /// Quick retries left (set by [`Backoff::healthy`]).
    quick: u32,
}

impl Backoff {
    pub fn new(initial: Duration, cap: Duration) -> Backoff {
        Backoff {
            initial,
            cap: cap.max(initial),
            attempt: 0,
            quick: 0,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        if self.quick > 0 {
            return QUICK_CEILING.min(self.initial);
        }
        let factor = 1u32 << self.attempt.min(20);
        self.initial.saturating_mul(factor).min(self.cap)
    }

    /// The next delay (random below the ceiling), and counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        if self.quick > 0 {
            self.quick -= 1;
        } else {
            self.attempt = self.attempt.saturating_add(1);
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        match nanos.checked_add(1) {
            Some(n) => Duration::from_nanos(random_u64() % n),
            None => ceiling,
        }
    }

    /// Back to the first, short delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.quick = 0;
    }

    /// A tunnel was healthy: reset, and start with the quick retries.
    pub fn healthy(&mut self) {
        self.attempt = 0;
        self.quick = QUICK_RETRIES;
    }
}

/// A random number from std's per-process randomly keyed SipHash: plenty for jitter, and it
/// spares the agent a random-number crate.
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let first = b.next_delay();
        assert!(first <= Duration::from_millis(500), "first retry under 1 s");
        let mut ceilings = vec![];
        for _ in 0..10 {
            ceilings.push(b.ceiling());
            let d = b.next_delay();
            assert!(d <= *ceilings.last().expect("pushed"));
        }
        assert_eq!(ceilings[0], Duration::from_secs(1));
        assert_eq!(ceilings[1], Duration::from_secs(2));
        assert_eq!(*ceilings.last().expect("pushed"), Duration::from_secs(30));
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(
            b.ceiling(),
            Duration::from_secs(30),
            "no overflow past the cap"
        );
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn a_healthy_tunnel_starts_with_quick_retries_then_grows() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        for _ in 0..5 {
            b.next_delay();
        }
        assert_eq!(
            b.ceiling(),
            Duration::from_secs(16),
            "grown by failed attempts"
        );
        b.healthy();
        for i in 0..QUICK_RETRIES {
            assert_eq!(b.ceiling(), QUICK_CEILING, "quick retry {i}");
            assert!(b.next_delay() <= QUICK_CEILING);
        }
        // Then the usual schedule, from `initial`.
        assert_eq!(b.ceiling(), Duration::from_millis(500));
        b.next_delay();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
        // A lower `initial` caps the quick retries too.
        let mut low = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        low.healthy();
        assert_eq!(low.ceiling(), Duration::from_millis(10));
        // `reset` (no healthy tunnel) has no quick phase.
        b.healthy();
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn delays_are_jittered() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let ds: Vec<_> = (0..20).map(|_| b.next_delay()).collect();
        let distinct = ds.iter().collect::<std::collections::BTreeSet<_>>().len();
        assert!(distinct > 10, "full jitter spreads delays: {ds:?}");
    }
}
