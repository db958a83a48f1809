//! How alive a registered tunnel looks right now, for picking which tunnel gets a new stream.
//!
//! Two signals, each a relaxed atomic the data path sets cheaply and the registry reads under
//! its lock: when the agent last sent anything (any WebSocket message: frame, ping or pong;
//! stamped by the session loop), and whether the writer has bytes waiting that the socket took
//! none of for a while (set by the writer's watch). A tunnel is *overdue* once the agent has
//! been silent for [`OVERDUE_FACTOR`] ping intervals (the relay pings every `ping_interval`
//! and a live agent answers at once), and *write-slow* after half of the stall limit without
//! progress: both come well before the tunnel is declared dead (`ping_interval +
//! ping_timeout` of silence, or a whole `ping_timeout` without progress), so new streams stop
//! going to a dying tunnel early. Only a preference: this module never ends a tunnel.
//!
//! A tunnel the relay is not reading for a while (v1 backpressure, answers waiting for a full
//! writer queue) looks silent too: it is congested, so steering new streams away is right.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Silence of this many ping intervals makes a tunnel overdue, as a fraction (3/2 = 1.5).
pub(crate) const OVERDUE_FACTOR: (u32, u32) = (3, 2);

/// What the session and the writer tell the registry about one tunnel.
#[derive(Debug)]
pub(crate) struct Liveness {
    /// The tunnel's start; the stamps count milliseconds from here.
    base: Instant,
    /// Milliseconds after `base` of the last message from the agent.
    heard_ms: AtomicU64,
    /// The writer waits on a write the socket has taken no byte of for half the stall limit.
    write_slow: AtomicBool,
    /// Silence longer than this is overdue.
    overdue_after: Duration,
}

impl Liveness {
    /// A tunnel heard from now, pinged every `ping_interval`.
    pub fn new(ping_interval: Duration) -> Liveness {
        let (num, den) = OVERDUE_FACTOR;
        Liveness {
            base: Instant::now(),
            heard_ms: AtomicU64::new(0),
            write_slow: AtomicBool::new(false),
            overdue_after: ping_interval * num / den,
        }
    }

    /// The agent sent a message at `now`.
    pub fn heard(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.base).as_millis();
        self.heard_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The writer's current write has (or no longer has) gone without progress for a while.
    pub fn set_write_slow(&self, slow: bool) {
        self.write_slow.store(slow, Ordering::Relaxed);
    }

    /// Neither overdue nor write-slow at `now`.
    pub fn is_healthy(&self, now: Instant) -> bool {
        !self.write_slow.load(Ordering::Relaxed) && !self.is_overdue(now)
    }

    /// The agent has been silent for longer than [`OVERDUE_FACTOR`] ping intervals.
    pub fn is_overdue(&self, now: Instant) -> bool {
        let heard = self.base + Duration::from_millis(self.heard_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(heard) > self.overdue_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn overdue_after_one_and_a_half_ping_intervals_of_silence() {
        let l = Liveness::new(Duration::from_secs(2));
        let t0 = Instant::now();
        assert!(l.is_healthy(t0));
        assert!(
            l.is_healthy(t0 + Duration::from_millis(3000)),
            "exactly 1.5x"
        );
        assert!(!l.is_healthy(t0 + Duration::from_millis(3001)));
        // A message makes it healthy again, counted from that message.
        l.heard(t0 + Duration::from_secs(10));
        assert!(l.is_healthy(t0 + Duration::from_secs(12)));
        assert!(l.is_overdue(t0 + Duration::from_secs(14)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_writer_is_unhealthy_until_it_moves() {
        let l = Liveness::new(Duration::from_secs(20));
        let now = Instant::now();
        l.set_write_slow(true);
        assert!(!l.is_healthy(now));
        assert!(!l.is_overdue(now), "not silent, only slow");
        l.set_write_slow(false);
        assert!(l.is_healthy(now));
    }
}
