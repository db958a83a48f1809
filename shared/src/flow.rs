//! Per-stream credit flow control (v2).
//!
//! Each direction of a stream has a window (default [`DEFAULT_WINDOW`]). The sender holds a
//! [`SendCredit`] and spends it on every DATA byte; the receiver holds a [`RecvWindow`], checks
//! that the peer stays within what it granted, and grants credit back with WINDOW once it has
//! *written* the bytes to the TCP socket. Credit goes back in batches: once half the window
//! has drained (as h2 does), so a steady stream costs one WINDOW frame per half window.
//! Memory per stream is therefore bounded by the window, whatever the peer does.

use std::time::{Duration, Instant};

use crate::error::FlowError;

/// Initial credit of every stream in each direction, in bytes.
pub const DEFAULT_WINDOW: u32 = 256 * 1024;

/// Largest window or credit total, as in HTTP/2: keeps all arithmetic inside `u32`/`i32`.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Default for how far autotuning may grow a stream's receive window
/// (`limits.max_stream_window_bytes`): 4 MiB carries 200 Mbit/s over a 100 ms round trip.
pub const DEFAULT_MAX_STREAM_WINDOW: u32 = 4 << 20;

/// The configurable range of `limits.max_stream_window_bytes`: from the initial window (no
/// growth) to 64 MiB.
pub const STREAM_WINDOW_RANGE: std::ops::RangeInclusive<u32> = DEFAULT_WINDOW..=64 << 20;

/// How many bytes we may still send on a stream. Never negative: `consume` refuses to go below 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendCredit {
    /// Bytes the peer has allowed and we have not sent yet. `0..=MAX_WINDOW`.
    available: u32,
}

impl SendCredit {
    pub fn new(initial: u32) -> SendCredit {
        SendCredit {
            available: initial.min(MAX_WINDOW),
        }
    }

    pub fn available(&self) -> u32 {
        self.available
    }

    /// Spends credit for `len` bytes about to be sent. Fails (and spends nothing) if short.
    pub fn consume(&mut self, len: usize) -> Result<(), FlowError> {
        match u32::try_from(len)
            .ok()
            .and_then(|n| self.available.checked_sub(n))
        {
            Some(rest) => {
                self.available = rest;
                Ok(())
            }
            None => Err(FlowError::NoCredit {
                len,
                available: self.available,
            }),
        }
    }

    /// Adds a WINDOW increment from the peer. Growing past [`MAX_WINDOW`] is the peer's error.
    pub fn grant(&mut self, increment: u32) -> Result<(), FlowError> {
        match self
            .available
            .checked_add(increment)
            .filter(|&v| v <= MAX_WINDOW)
        {
            Some(v) => {
                self.available = v;
                Ok(())
            }
            None => Err(FlowError::Overflow {
                current: self.available,
                increment,
            }),
        }
    }
}

/// When a drain happened, and how much more window the driver's memory may back.
///
/// The receive window grows only with both: the clock tells a window that limits the stream
/// (its credit comes back faster than a round trip) from one that does not, and `room` is what
/// the driver's byte budget can still take on should the socket stop draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub now: Instant,
    /// Bytes the window may grow by on this drain (0: hold it where it is).
    pub room: u32,
    /// The largest window another stream of the tunnel grew to: a stream that returns credit
    /// takes it up too (within `room`), so streams that share a tunnel share it fairly (with
    /// unequal windows, the stream with the larger one would take the larger part of the pipe).
    pub lead: u32,
}

impl Drain {
    pub fn at(now: Instant, room: u32) -> Drain {
        Drain { now, room, lead: 0 }
    }

    /// The same drain, with the tunnel's leading window.
    pub fn with_lead(self, lead: u32) -> Drain {
        Drain { lead, ..self }
    }
}

/// The largest receive window among one tunnel's active streams ([`Drain::lead`]): kept by the
/// driver, updated after each drain. It belongs to the stream that set it, follows that stream as
/// it shrinks, and lapses [`IDLE_SHRINK`] after that stream's last drain (it went idle or away).
/// A stream is never offered its own lead, so the leader can shrink back when idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lead {
    window: u32,
    owner: u32,
    at: Option<Instant>,
}

impl Lead {
    /// The window stream `id` may take up at `now` (0: none).
    pub fn offer(&self, id: u32, now: Instant) -> u32 {
        match self.at {
            Some(at) if id != self.owner && now.saturating_duration_since(at) < IDLE_SHRINK => {
                self.window
            }
            _ => 0,
        }
    }

    /// Stream `id` drained at `now` and its window is `window`.
    pub fn update(&mut self, id: u32, window: u32, now: Instant) {
        if self.offer(id, now) <= window || id == self.owner {
            *self = Lead {
                window,
                owner: id,
                at: Some(now),
            };
        }
    }
}

/// Half a window's credit returned within this many round trips of the previous return means
/// the window, not the link or the reader, limits the stream: grow it (the window converges
/// between two and four bandwidth-delay products, as in quiche's autotuning).
const GROW_WITHIN_RTTS: u32 = 1;

/// A stream that drained nothing for this long is idle: its window goes back to the initial
/// one, credit withheld as the next bytes drain.
pub const IDLE_SHRINK: Duration = Duration::from_secs(1);

/// Receive side of one stream direction.
///
/// Invariant: `remaining + buffered + pending == window`, where `buffered` bytes were received
/// but not yet written out, and `pending` bytes were written but their credit not yet returned.
///
/// Autotuning ([`RecvWindow::autotuned`]): the window starts at the protocol's initial credit
/// and doubles, up to `max`, while credit goes back faster than one round trip (the peer is
/// held back by the window, not by the link). The round trip is measured on the stream itself:
/// from a WINDOW sent while the peer had no credit left to the next bytes drained. Nothing
/// changes on the sender, which only ever sees larger increments. After [`IDLE_SHRINK`] without
/// a drain the window shrinks back: credit is withheld until it is the initial one again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWindow {
    /// What the peer may hold in flight or in our buffers: `remaining + buffered + pending`.
    window: u32,
    /// Where `window` is heading: it grows at once, and shrinks as credit is withheld.
    target: u32,
    /// The initial window (where an idle stream returns to).
    base: u32,
    /// Largest window autotuning may reach (`base`: a fixed window).
    max: u32,
    /// Bytes the peer may still send before it must wait for WINDOW.
    remaining: u32,
    /// Bytes received and not yet drained to the socket.
    buffered: u32,
    /// Bytes drained whose credit has not been returned yet.
    pending: u32,
    /// The growth check's measuring period: since when, and the credit returned since. It is
    /// judged once a whole window has come back, so a burst of frames drained at once does not
    /// read as a fast stream.
    epoch: Option<(Instant, u32)>,
    /// Bytes drained since the stream began.
    drained_total: u64,
    /// A WINDOW in flight: the first byte past `.0` (of all bytes drained) can only have been
    /// sent after that WINDOW reached the peer, so its drain, less `.1`, is at least a round
    /// trip (exactly one when the peer was waiting for it).
    probe: Option<(u64, Instant)>,
    /// When bytes last drained (idle detection).
    drained_at: Option<Instant>,
    /// The smallest round-trip sample: never below the real round trip (every sample is at
    /// least one). Kept across idle periods: a sample taken while the peer had credit to spare
    /// also counts the bytes queued ahead of the probe, so a fresh minimum would read high.
    rtt: Option<Duration>,
}

impl RecvWindow {
    /// A fixed window of `window` bytes.
    pub fn new(window: u32) -> RecvWindow {
        RecvWindow::autotuned(window, window)
    }

    /// A window that starts at `window` and may grow up to `max` (at least `window`).
    pub fn autotuned(window: u32, max: u32) -> RecvWindow {
        let window = window.clamp(1, MAX_WINDOW);
        RecvWindow {
            window,
            target: window,
            base: window,
            max: max.clamp(window, MAX_WINDOW),
            remaining: window,
            buffered: 0,
            pending: 0,
            epoch: None,
            drained_total: 0,
            probe: None,
            drained_at: None,
            rtt: None,
        }
    }

    /// Accounts `len` received bytes. Fails if the peer sent more than its credit.
    pub fn on_data(&mut self, len: usize) -> Result<(), FlowError> {
        match u32::try_from(len).ok().filter(|&n| n <= self.remaining) {
            Some(n) => {
                self.remaining -= n;
                self.buffered += n;
                Ok(())
            }
            None => Err(FlowError::PeerExceeded {
                len,
                available: self.remaining,
            }),
        }
    }

    /// Accounts `len` bytes written to the socket, with no clock: the window stays as it is.
    /// Returns the WINDOW increment to send, if half the window has drained.
    pub fn on_drained(&mut self, len: usize) -> Result<Option<u32>, FlowError> {
        self.drain(len, None)
    }

    /// Accounts `len` bytes written to the socket at `at`, autotuning the window. Returns the
    /// WINDOW increment to send, if any.
    pub fn on_drained_at(&mut self, len: usize, at: Drain) -> Result<Option<u32>, FlowError> {
        self.drain(len, Some(at))
    }

    fn drain(&mut self, len: usize, at: Option<Drain>) -> Result<Option<u32>, FlowError> {
        let n = u32::try_from(len)
            .ok()
            .filter(|&n| n <= self.buffered)
            .ok_or(FlowError::DrainedTooMuch {
                len,
                buffered: self.buffered,
            })?;
        self.buffered -= n;
        self.pending += n;
        self.drained_total += u64::from(n);
        if let Some(at) = at.filter(|_| self.max > self.base) {
            self.observe(at.now);
        }
        if self.pending < self.threshold() {
            return Ok(None);
        }
        if let Some(at) = at.filter(|_| self.max > self.base) {
            self.maybe_grow(at);
            let lead = at
                .lead
                .min(self.max)
                .min(self.window.saturating_add(at.room));
            self.target = self.target.max(lead);
        }
        // Shrinking: credit the window no longer wants is withheld.
        let withheld = self.window.saturating_sub(self.target).min(self.pending);
        self.window -= withheld;
        let increment = self.pending - withheld;
        self.pending = 0;
        // Growing: the new room is credit on top of what drained.
        let grown = self.target.saturating_sub(self.window);
        self.window += grown;
        let increment = increment + grown;
        if increment == 0 {
            return Ok(None);
        }
        // Bytes past what the peer could send until now need this WINDOW.
        let limit = self.drained_total + u64::from(self.buffered) + u64::from(self.remaining);
        self.remaining += increment;
        if let Some(at) = at {
            if self.probe.is_none() {
                self.probe = Some((limit, at.now));
            }
        }
        Ok(Some(increment))
    }

    /// Round-trip samples and idle detection, on every timed drain.
    fn observe(&mut self, now: Instant) {
        let idle = self
            .drained_at
            .is_some_and(|t| now.saturating_duration_since(t) >= IDLE_SHRINK);
        if idle {
            self.target = self.base;
            self.epoch = None;
            self.probe = None;
        }
        if let Some((_, sent)) = self.probe.filter(|&(limit, _)| self.drained_total > limit) {
            let sample = now.saturating_duration_since(sent);
            self.rtt = Some(self.rtt.map_or(sample, |rtt| rtt.min(sample)));
            self.probe = None;
        }
        self.drained_at = Some(now);
    }

    /// Doubles the target when the stream drains more than half the window per round trip,
    /// judged over a whole window of returned credit: `bytes` since `start`, in less than
    /// `rtt * bytes / (target / 2)`.
    fn maybe_grow(&mut self, at: Drain) {
        let Some((start, returned)) = self.epoch else {
            self.epoch = Some((at.now, 0));
            return;
        };
        let bytes = returned.saturating_add(self.pending);
        if bytes < self.target {
            self.epoch = Some((start, bytes));
            return;
        }
        self.epoch = Some((at.now, 0));
        let Some(rtt) = self.rtt else {
            return;
        };
        let since = at.now.saturating_duration_since(start).as_nanos();
        let within = rtt.as_nanos() * u128::from(GROW_WITHIN_RTTS) * u128::from(bytes);
        if since * u128::from(self.threshold()) >= within {
            return;
        }
        let wanted = self
            .target
            .saturating_mul(2)
            .min(self.max)
            .min(self.window.saturating_add(at.room));
        self.target = self.target.max(wanted);
    }

    /// Bytes received and not yet drained (what this stream holds in memory).
    pub fn buffered(&self) -> u32 {
        self.buffered
    }

    /// Credit the peer still has.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// What the peer may have in flight or in our buffers now (the current window).
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Credit is returned once this many drained bytes have accumulated.
    pub fn threshold(&self) -> u32 {
        self.target.div_ceil(2)
    }
}

#[cfg(test)]
mod tests;
