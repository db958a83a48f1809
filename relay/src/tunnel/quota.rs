//! Rate limits a session applies to what an agent makes it do: frames it drops unanswered, the
//! target reports it parses and the warnings it logs. All run on tokio's clock, so tests can
//! move it.

use std::time::Duration;

use nowconnect_shared::binary::FrameType;
use tokio::time::Instant;

/// Frames for unknown (or already closed) streams an agent may send in a burst before the
/// tunnel is closed. A well-behaved agent sends some after every stream the relay ends (DATA
/// still in flight, a WINDOW): a burst of thousands of closes stays far below this.
pub(super) const IGNORED_BURST: u32 = 65_536;
/// ... and how fast that allowance comes back, per second.
pub(super) const IGNORED_PER_SEC: u32 = 16_384;
/// STATUS frames (target reports, valid or not) an agent may send in a burst before the tunnel
/// is closed, beyond one per second of the tunnel's keepalive allowance ([`Quotas::new`]). The
/// agent sends one when its session starts and then at most one a second (`MIN_INTERVAL` in the
/// agent's `tunnel/status.rs`), but reports it sent during a stall the relay waited out (up to
/// `ping_interval + ping_timeout` of silence) arrive together. A report is up to 8 KiB of JSON:
/// an agent that sent them as fast as it can write would spend its shard's CPU on the parser.
pub(super) const REPORTS_BURST: u32 = 16;
/// ... and how fast that allowance comes back, per second (twice the agent's pace).
pub(super) const REPORTS_PER_SEC: u32 = 2;
/// Warnings per agent tunnel per [`LOG_WINDOW`]; the rest are counted and reported once.
const LOG_BURST: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// A tunnel's rate limits.
#[derive(Debug)]
pub(super) struct Quotas {
    /// Frames for unknown streams the agent may still send.
    pub ignored: Bucket,
    /// STATUS frames the agent may still send.
    pub reports: Bucket,
    /// Every warning the agent can provoke.
    pub warnings: LogLimit,
}

impl Quotas {
    /// A tunnel's rate limits, fresh; `silence` is how long the tunnel may hear nothing from
    /// its agent before it is closed (`ping_interval + ping_timeout`).
    pub fn new(silence: Duration) -> Quotas {
        let now = Instant::now();
        Quotas {
            ignored: Bucket::new(IGNORED_BURST, IGNORED_PER_SEC, now),
            reports: Bucket::new(reports_burst(silence), REPORTS_PER_SEC, now),
            warnings: LogLimit::new(now),
        }
    }

    /// `false`: `msg` (a v2 binary message) is a STATUS past the allowance. Counted before the
    /// decoder parses the report, so a flood of them, valid or not, costs at most a burst of
    /// parses; other frames pass without a look at the clock.
    pub fn admits(&mut self, msg: &[u8]) -> bool {
        msg.first() != Some(&(FrameType::Status as u8)) || self.reports.take(Instant::now())
    }
}

/// [`REPORTS_BURST`] plus one report per second of `silence`.
fn reports_burst(silence: Duration) -> u32 {
    let stalled = u32::try_from(silence.as_secs()).unwrap_or(u32::MAX);
    REPORTS_BURST.saturating_add(stalled)
}

/// A token bucket: `capacity` tokens, refilled at `per_sec`.
#[derive(Debug)]
pub(super) struct Bucket {
    capacity: u32,
    per_sec: u32,
    tokens: u32,
    at: Instant,
}

impl Bucket {
    pub fn new(capacity: u32, per_sec: u32, now: Instant) -> Bucket {
        Bucket {
            capacity,
            per_sec,
            tokens: capacity,
            at: now,
        }
    }

    /// Takes one token; `false` when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at);
        let refill = elapsed.as_millis().saturating_mul(u128::from(self.per_sec)) / 1000;
        if refill > 0 {
            let refill = u32::try_from(refill).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(refill).min(self.capacity);
            self.at = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Lets [`LOG_BURST`] lines through per [`LOG_WINDOW`] and counts the rest.
#[derive(Debug)]
pub(super) struct LogLimit {
    start: Instant,
    used: u32,
    suppressed: u64,
}

impl LogLimit {
    pub fn new(now: Instant) -> LogLimit {
        LogLimit {
            start: now,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log this line, saying `n` earlier ones were suppressed. `None`: stay quiet.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.start) >= LOG_WINDOW {
            self.start = now;
            self.used = 0;
        }
        if self.used >= LOG_BURST {
            self.suppressed += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_empties_and_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3, 2, t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0), "empty after the burst");
        assert!(
            !b.take(t0 + Duration::from_millis(400)),
            "0.8 tokens is none"
        );
        assert!(b.take(t0 + Duration::from_millis(500)));
        assert!(!b.take(t0 + Duration::from_millis(500)));
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.take(later));
        }
        assert!(!b.take(later), "refill stops at the capacity");
    }

    #[tokio::test(start_paused = true)]
    async fn reports_held_back_by_a_stall_the_tunnel_survives_fit_the_burst() {
        // Defaults: 20 s ping interval + 20 s timeout. An agent paced at one report a second
        // whose link stalls 39 s (just short of being closed) delivers 40 at once, then one a
        // second: all are taken.
        let silence = Duration::from_secs(40);
        let t0 = Instant::now();
        let mut q = Quotas::new(silence);
        for _ in 0..40 {
            assert!(q.reports.take(t0));
        }
        for s in 1..=600 {
            assert!(
                q.reports.take(t0 + Duration::from_secs(s)),
                "paced report {s}"
            );
        }
        // A flood is cut a burst later.
        let t1 = t0 + Duration::from_secs(600);
        let taken = (0..1_000).take_while(|_| q.reports.take(t1)).count();
        assert_eq!(
            taken,
            REPORTS_BURST as usize + 40 - 1,
            "the burst, less the report just taken"
        );
        let status = [FrameType::Status as u8, 0, 0, 0, 0, b'{'];
        assert!(!q.admits(&status), "no report past the burst");
        let data = [FrameType::Data as u8, 0, 0, 0, 1, b'x'];
        assert!(q.admits(&data), "other frames are not reports");
        assert_eq!(reports_burst(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn log_limit_counts_what_it_suppresses() {
        let t0 = Instant::now();
        let mut l = LogLimit::new(t0);
        for _ in 0..LOG_BURST {
            assert_eq!(l.allow(t0), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(l.allow(t0), None);
        }
        assert_eq!(
            l.allow(t0 + LOG_WINDOW),
            Some(5),
            "the next window reports them"
        );
        assert_eq!(l.allow(t0 + LOG_WINDOW), Some(0));
    }
}
