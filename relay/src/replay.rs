//! Reopening a stream on another agent when the first answered its OPEN with RST
//! `connect_failed`: what the stream read from its client meanwhile, and whether a retry is
//! safe. No I/O here; the stream task feeds it and acts on [`Replay::verdict`].
//!
//! The protocol has no positive answer to OPEN: the relay sends OPEN and then DATA at once,
//! and the agent buffers that DATA until it has connected. `connect_failed` says the agent never
//! reached the target, so no byte of the stream was delivered anywhere and the same bytes may be
//! sent, in the same order, to another agent. Rules:
//! - Until the agent shows it is connected (any DATA, WINDOW or FIN from it on this stream),
//!   every byte read from the client is kept, in order, with the client's EOF if it came.
//!   Once it has, nothing more is kept and the stream is never retried.
//! - What is kept is bounded by [`REPLAY_MAX_BYTES`] (one v2 window: the most a v2 sender
//!   can send before the agent answers at all) and [`REPLAY_MAX_CHUNKS`] reads, and charged to
//!   the relay-wide client-to-agent budget; past either, or when the budget is full, nothing is
//!   kept and the stream will not be retried (`not_replayable`).
//! - A `connect_failed` later than [`RETRY_WITHIN`] after the stream started is not retried
//!   (`too_late`): the client has waited an agent's whole connect timeout already.
//! - A stream is retried once: the retry keeps nothing and is not retried again
//!   (`failed_again`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nowconnect_shared::DEFAULT_WINDOW;
use tokio::time::Instant;

use crate::budget::{Budget, Charge, FRAME_COST};

/// The most client bytes kept for a retry: one v2 window.
pub(crate) const REPLAY_MAX_BYTES: usize = DEFAULT_WINDOW as usize;
/// The most client reads kept for a retry (each costs a buffer).
pub(crate) const REPLAY_MAX_CHUNKS: usize = 256;
/// A `connect_failed` this soon after the stream started is retried: the agent's default
/// `limits.connect_timeout_ms` (5 s), so a retry never follows a connect that timed out there.
pub(crate) const RETRY_WITHIN: Duration = Duration::from_secs(5);

/// `nowconnect_open_retries_total{result}`: the stream went to another agent.
pub(crate) const REROUTED: &str = "rerouted";
/// No other agent serves the connector: the client is reset, as without retries.
pub(crate) const NO_AGENT: &str = "no_agent";
/// The client's bytes outgrew what is kept, or the agent had answered before failing.
pub(crate) const NOT_REPLAYABLE: &str = "not_replayable";
/// The failure came later than [`RETRY_WITHIN`].
pub(crate) const TOO_LATE: &str = "too_late";
/// The retry failed too; there is no second retry.
pub(crate) const FAILED_AGAIN: &str = "failed_again";

/// One client read kept for a retry, with its charge on the budget.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub payload: Bytes,
    pub charge: Charge,
}

/// What a retry sends to the next agent before reading the client again.
#[derive(Debug, Default)]
pub(crate) struct Reopen {
    /// Every byte read from the client, in order.
    pub chunks: Vec<Chunk>,
    /// The client's EOF came after them: send FIN.
    pub eof: bool,
}

impl Reopen {
    /// Payload bytes kept.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.payload.len()).sum()
    }
}

/// Where one stream stands for a retry.
#[derive(Debug)]
pub(crate) enum Replay {
    /// First attempt, not confirmed by the agent yet: everything read is kept.
    Keeping {
        kept: Reopen,
        bytes: usize,
        since: Instant,
    },
    /// First attempt, and no retry any more: the agent answered, or the bytes outgrew the bound.
    Off,
    /// This is the retry; it is not retried again.
    Retry,
}

impl Replay {
    /// A stream's first attempt, started at `now`.
    pub fn first(now: Instant) -> Replay {
        Replay::Keeping {
            kept: Reopen::default(),
            bytes: 0,
            since: now,
        }
    }

    /// The client sent `payload` (about to go to the agent as DATA).
    pub fn on_read(&mut self, payload: &[u8], budget: &Arc<Budget>) {
        let Replay::Keeping { kept, bytes, .. } = self else {
            return;
        };
        let fits =
            *bytes + payload.len() <= REPLAY_MAX_BYTES && kept.chunks.len() < REPLAY_MAX_CHUNKS;
        let charge = fits
            .then(|| budget.try_take(payload.len() + FRAME_COST))
            .flatten();
        match charge {
            Some(charge) => {
                *bytes += payload.len();
                kept.chunks.push(Chunk {
                    payload: Bytes::copy_from_slice(payload),
                    charge,
                });
            }
            // Dropping what was kept gives its budget back.
            None => *self = Replay::Off,
        }
    }

    /// The client's EOF (FIN about to go to the agent).
    pub fn on_eof(&mut self) {
        if let Replay::Keeping { kept, .. } = self {
            kept.eof = true;
        }
    }

    /// The agent answered on this stream: it is connected, so no retry from now on.
    pub fn confirm(&mut self) {
        if let Replay::Keeping { .. } = self {
            *self = Replay::Off;
        }
    }

    /// Still keeping (the stream could be retried).
    pub fn is_keeping(&self) -> bool {
        matches!(self, Replay::Keeping { .. })
    }

    /// The agent answered OPEN with `connect_failed` at `now`; `agent_sent`: bytes of it
    /// reached the client. `Ok`: reopen the stream elsewhere with these bytes; `Err`: the
    /// `nowconnect_open_retries_total` result of not retrying.
    pub fn verdict(self, now: Instant, agent_sent: bool) -> Result<Reopen, &'static str> {
        match self {
            Replay::Retry => Err(FAILED_AGAIN),
            Replay::Off => Err(NOT_REPLAYABLE),
            Replay::Keeping { .. } if agent_sent => Err(NOT_REPLAYABLE),
            Replay::Keeping { since, .. }
                if now.saturating_duration_since(since) > RETRY_WITHIN =>
            {
                Err(TOO_LATE)
            }
            Replay::Keeping { kept, .. } => Ok(kept),
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::gauge::Gauge;

    use super::*;

    fn budget(max: usize) -> Arc<Budget> {
        Arc::new(Budget::new(max, Gauge::default()))
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_every_read_in_order_with_eof_until_confirmed() {
        let b = budget(1 << 20);
        let mut r = Replay::first(Instant::now());
        r.on_read(b"hello ", &b);
        r.on_read(b"world", &b);
        r.on_eof();
        assert_eq!(b.used(), 11 + 2 * FRAME_COST, "charged what it keeps");
        let kept = r.verdict(Instant::now(), false).expect("replayable");
        let all: Vec<u8> = kept
            .chunks
            .iter()
            .flat_map(|c| c.payload.to_vec())
            .collect();
        assert_eq!(all, b"hello world");
        assert!(kept.eof);
        assert_eq!(kept.len(), 11);
        drop(kept);
        assert_eq!(b.used(), 0, "given back with the bytes");

        let mut r = Replay::first(Instant::now());
        r.on_read(b"x", &b);
        r.confirm();
        r.on_read(b"y", &b);
        assert_eq!(b.used(), 0, "nothing kept once confirmed");
        assert_eq!(r.verdict(Instant::now(), false).err(), Some(NOT_REPLAYABLE));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_past_the_bounds_or_the_budget() {
        let b = budget(1 << 24);
        let mut r = Replay::first(Instant::now());
        let big = vec![7u8; REPLAY_MAX_BYTES];
        r.on_read(&big, &b);
        assert!(r.is_keeping(), "exactly one window fits");
        r.on_read(b"1", &b);
        assert!(!r.is_keeping());
        assert_eq!(b.used(), 0);

        let mut r = Replay::first(Instant::now());
        for _ in 0..REPLAY_MAX_CHUNKS {
            r.on_read(b"a", &b);
        }
        assert!(r.is_keeping());
        r.on_read(b"a", &b);
        assert!(!r.is_keeping(), "one read too many");

        let small = budget(FRAME_COST + 4);
        let mut r = Replay::first(Instant::now());
        r.on_read(b"12345", &small);
        assert_eq!(r.verdict(Instant::now(), false).err(), Some(NOT_REPLAYABLE));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_once_within_the_window_and_never_after_agent_bytes() {
        let t0 = Instant::now();
        let r = Replay::first(t0);
        assert_eq!(r.verdict(t0, true).err(), Some(NOT_REPLAYABLE));
        let r = Replay::first(t0);
        let late = t0 + RETRY_WITHIN + Duration::from_millis(1);
        assert_eq!(r.verdict(late, false).err(), Some(TOO_LATE));
        let r = Replay::first(t0);
        assert!(r.verdict(t0 + RETRY_WITHIN, false).is_ok());
        assert_eq!(Replay::Retry.verdict(t0, false).err(), Some(FAILED_AGAIN));
    }
}
