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
mod tests {
    use super::*;

    #[test]
    fn send_credit_never_negative() {
        let mut c = SendCredit::new(10);
        assert!(c.consume(4).is_ok());
        assert_eq!(c.available(), 6);
        assert_eq!(
            c.consume(7),
            Err(FlowError::NoCredit {
                len: 7,
                available: 6
            })
        );
        assert_eq!(c.available(), 6, "a refused consume spends nothing");
        assert!(c.consume(6).is_ok());
        assert_eq!(c.available(), 0);
        assert!(c.consume(usize::MAX).is_err());
    }

    #[test]
    fn send_credit_overflow_detected() {
        let mut c = SendCredit::new(MAX_WINDOW - 5);
        assert!(c.grant(5).is_ok());
        assert_eq!(
            c.grant(1),
            Err(FlowError::Overflow {
                current: MAX_WINDOW,
                increment: 1
            })
        );
        let mut c = SendCredit::new(1);
        assert!(c.grant(u32::MAX).is_err());
        assert_eq!(c.available(), 1);
    }

    #[test]
    fn window_update_sent_after_half_the_window_drains() {
        let mut w = RecvWindow::new(100);
        assert_eq!(w.threshold(), 50);
        w.on_data(100).expect("within window");
        assert_eq!(w.remaining(), 0);
        assert_eq!(w.on_drained(49), Ok(None), "49 < half: no WINDOW yet");
        assert_eq!(w.on_drained(1), Ok(Some(50)), "half drained: grant it back");
        assert_eq!(w.remaining(), 50);
        assert_eq!(w.on_drained(50), Ok(Some(50)));
        assert_eq!(w.remaining(), 100);
        assert_eq!(w.buffered(), 0);
    }

    #[test]
    fn peer_exceeding_credit_is_an_error() {
        let mut w = RecvWindow::new(10);
        w.on_data(8).expect("within window");
        assert_eq!(
            w.on_data(3),
            Err(FlowError::PeerExceeded {
                len: 3,
                available: 2
            })
        );
        assert_eq!(w.buffered(), 8, "refused data is not accounted");
    }

    #[test]
    fn draining_more_than_received_is_refused() {
        let mut w = RecvWindow::new(10);
        w.on_data(3).expect("within window");
        assert!(w.on_drained(4).is_err());
    }

    #[test]
    fn sender_and_receiver_stay_in_step() {
        // A sender that only sends within credit never trips the receiver, whatever the sizes.
        let mut tx = SendCredit::new(DEFAULT_WINDOW);
        let mut rx = RecvWindow::new(DEFAULT_WINDOW);
        let mut sent = 0usize;
        for i in 0..10_000usize {
            let len = (i * 7919) % 70_000 + 1;
            let len = len.min(tx.available() as usize);
            if len == 0 {
                panic!("deadlock: no credit while the receiver drained everything");
            }
            tx.consume(len).expect("credit was available");
            rx.on_data(len).expect("sender stayed within credit");
            sent += len;
            if let Some(inc) = rx.on_drained(len).expect("drained what was received") {
                tx.grant(inc).expect("no overflow");
            }
            assert_eq!(rx.remaining(), tx.available(), "both sides agree on credit");
        }
        assert!(sent > 10 * DEFAULT_WINDOW as usize);
    }

    /// A one-stream transfer over a link of `rate` bytes per second and a round trip of `rtt`,
    /// from `t0` for `secs` of simulated time, with a reader that drains every byte as it
    /// arrives: the sender sends 16 KiB frames while it has credit, WINDOW frames take half a
    /// round trip back. Then what is in flight lands. Returns the bytes delivered in time and
    /// the sender's credit, in step with `rx`.
    fn transfer(
        rx: &mut RecvWindow,
        t0: Instant,
        rate: u64,
        rtt: Duration,
        room: u32,
        secs: u64,
    ) -> (u64, SendCredit) {
        use std::collections::BTreeMap;
        const FRAME: u32 = 16 * 1024;
        let half = rtt / 2;
        let mut tx = SendCredit::new(rx.remaining());
        // Events by time: DATA arriving at the receiver, WINDOW arriving at the sender.
        let mut events: BTreeMap<(Duration, u64), Result<u32, u32>> = BTreeMap::new();
        let mut seq = 0u64;
        let mut link_free = Duration::ZERO;
        let mut now = Duration::ZERO;
        let mut delivered = 0u64;
        let end = Duration::from_secs(secs);
        let per_byte = Duration::from_secs(1).as_nanos() as u64 / rate.max(1);
        while let Some(((at, _), ev)) = events.pop_first().or_else(|| {
            // Nothing in flight: only at the start, when the sender has not sent yet.
            (now == Duration::ZERO && seq == 0).then_some(((Duration::ZERO, 0), Err(0)))
        }) {
            now = at;
            match ev {
                Ok(len) => {
                    rx.on_data(len as usize)
                        .expect("sender stayed within credit");
                    if now <= end {
                        delivered += u64::from(len);
                    }
                    let drain = Drain::at(t0 + now, room);
                    if let Some(inc) = rx.on_drained_at(len as usize, drain).expect("drained") {
                        seq += 1;
                        events.insert((now + half, seq), Err(inc));
                    }
                }
                Err(0) => {}
                Err(inc) => tx.grant(inc).expect("no overflow"),
            }
            // The sender sends what its credit allows, paced by the link, until the end.
            while tx.available() > 0 && now <= end {
                let len = tx.available().min(FRAME);
                tx.consume(len as usize).expect("within credit");
                link_free = link_free.max(now) + Duration::from_nanos(per_byte * u64::from(len));
                seq += 1;
                events.insert((link_free + half, seq), Ok(len));
            }
        }
        assert_eq!(rx.remaining(), tx.available(), "both sides agree on credit");
        (delivered, tx)
    }

    const MIB: u32 = 1024 * 1024;

    #[test]
    fn a_window_that_limits_the_stream_grows_to_the_link() {
        // 200 Mbit/s, 50 ms: 1.25 MB in flight. The fixed window carries 256 KiB per round trip.
        let rate = 25_000_000;
        let rtt = Duration::from_millis(50);
        let t0 = Instant::now();
        let mut rx = RecvWindow::new(DEFAULT_WINDOW);
        let (fixed, _) = transfer(&mut rx, t0, rate, rtt, MIB * 64, 10);
        assert_eq!(rx.window(), DEFAULT_WINDOW);
        let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, 16 * MIB);
        let (tuned, _) = transfer(&mut rx, t0, rate, rtt, MIB * 64, 10);
        let w = rx.window();
        let link = rate * 10;
        assert!(fixed < link / 4, "fixed window: {fixed} of {link}");
        assert!(tuned > link * 9 / 10, "autotuned: {tuned} of {link}");
        // It stops between two and four bandwidth-delay products (1.25 MB), far below the cap.
        assert!((2_500_000..=5_000_000 + 2 * MIB).contains(&w), "window {w}");
    }

    #[test]
    fn a_window_the_link_fills_does_not_grow() {
        // 8 Mbit/s, 20 ms: 20 KB in flight, a tenth of the initial window. The first round
        // trips are timed behind the sender's own burst (at most a doubling), then no more.
        let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, 16 * MIB);
        let rtt = Duration::from_millis(20);
        let (delivered, _) = transfer(&mut rx, Instant::now(), 1_000_000, rtt, 64 * MIB, 10);
        assert!(rx.window() <= 2 * DEFAULT_WINDOW, "window {}", rx.window());
        assert!(delivered > 9_500_000, "the link stays full: {delivered}");
    }

    #[test]
    fn growth_stays_within_the_room_and_the_maximum() {
        let rate = 25_000_000;
        let rtt = Duration::from_millis(50);
        let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, 16 * MIB);
        transfer(&mut rx, Instant::now(), rate, rtt, 0, 5);
        assert_eq!(rx.window(), DEFAULT_WINDOW, "no room: no growth");
        let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, MIB);
        transfer(&mut rx, Instant::now(), rate, rtt, 64 * MIB, 5);
        assert_eq!(rx.window(), MIB, "capped at the maximum");
        // Room for 100 KiB at a time: each step grows by at most that much.
        let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, 16 * MIB);
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut tx = SendCredit::new(DEFAULT_WINDOW);
        let mut last = rx.window();
        for round in 0..20u64 {
            let n = tx.available() as usize;
            tx.consume(n).expect("credit");
            rx.on_data(n).expect("within window");
            // Half the window at once, then the other half 1 ms later: 50 ms after the last.
            let a = n / 2;
            for (len, t) in [(a, round * 50), (n - a, round * 50 + 1)] {
                if let Some(inc) = rx
                    .on_drained_at(len, Drain::at(ms(t), 100 * 1024))
                    .expect("drained")
                {
                    tx.grant(inc).expect("no overflow");
                }
            }
            assert!(
                rx.window() - last <= 100 * 1024,
                "grew by more than the room"
            );
            last = rx.window();
            assert_eq!(rx.remaining(), tx.available(), "both sides agree on credit");
        }
        assert!(rx.window() > DEFAULT_WINDOW, "it did grow: {}", rx.window());
    }

    #[test]
    fn an_idle_stream_shrinks_back_and_credit_stays_in_step() {
        let rate = 25_000_000;
        let rtt = Duration::from_millis(50);
        // Grow it first, with the sender's credit in step.
        let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, 16 * MIB);
        let t0 = Instant::now();
        let (_, mut tx) = transfer(&mut rx, t0, rate, rtt, 64 * MIB, 5);
        let mut t = Duration::from_secs(6);
        let grown = rx.window();
        assert!(grown >= 4 * DEFAULT_WINDOW, "grew: {grown}");
        // Two seconds of silence, then a slow trickle: credit is withheld until the window is
        // the initial one again, and it never returns more than drained meanwhile.
        t += Duration::from_secs(2);
        let mut returned = 0u64;
        let mut drained = 0u64;
        for _ in 0..2_000 {
            let n = (tx.available() as usize).min(4096);
            if n == 0 {
                break;
            }
            tx.consume(n).expect("credit");
            rx.on_data(n).expect("within window");
            t += Duration::from_millis(10);
            drained += n as u64;
            if let Some(inc) = rx.on_drained_at(n, Drain::at(t0 + t, 0)).expect("drained") {
                tx.grant(inc).expect("no overflow");
                returned += u64::from(inc);
            }
            assert_eq!(rx.remaining(), tx.available(), "both sides agree on credit");
            assert!(returned <= drained);
        }
        assert_eq!(rx.window(), DEFAULT_WINDOW, "back to the initial window");
        assert!(
            tx.available() > 0,
            "the sender is never left without credit"
        );
    }

    #[test]
    fn autotuned_sender_and_receiver_stay_in_step() {
        let mut tx = SendCredit::new(DEFAULT_WINDOW);
        let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, 8 * MIB);
        let t0 = Instant::now();
        let mut t = Duration::ZERO;
        for i in 0..20_000u64 {
            let len = ((i * 7919) % 70_000 + 1) as usize;
            let len = len.min(tx.available() as usize);
            assert!(
                len > 0,
                "deadlock: no credit while the receiver drained everything"
            );
            tx.consume(len).expect("credit was available");
            rx.on_data(len).expect("sender stayed within credit");
            // Bursts and pauses, some past the idle limit.
            t += Duration::from_micros((i * 104_729) % 3_000)
                + IDLE_SHRINK * u32::from(i % 997 == 0);
            let room = if i % 3 == 0 { 0 } else { 512 * 1024 };
            if let Some(inc) = rx
                .on_drained_at(len, Drain::at(t0 + t, room))
                .expect("drained what was received")
            {
                tx.grant(inc).expect("no overflow");
            }
            assert_eq!(rx.remaining(), tx.available(), "both sides agree on credit");
            assert!(rx.window() <= 8 * MIB);
            assert!(rx.window() >= DEFAULT_WINDOW);
        }
    }

    #[test]
    fn the_lead_is_offered_to_others_follows_its_owner_and_lapses() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut lead = Lead::default();
        assert_eq!(lead.offer(1, t0), 0, "no lead yet");
        lead.update(1, 4 * MIB, ms(0));
        assert_eq!(lead.offer(2, ms(10)), 4 * MIB);
        assert_eq!(lead.offer(1, ms(10)), 0, "never offered to its owner");
        // A smaller window elsewhere does not take it; the owner shrinking does.
        lead.update(2, MIB, ms(20));
        assert_eq!(lead.offer(3, ms(20)), 4 * MIB);
        lead.update(1, 2 * MIB, ms(30));
        assert_eq!(lead.offer(3, ms(30)), 2 * MIB);
        // The owner stops draining: the lead lapses, and the next drain sets a new one.
        assert_eq!(lead.offer(2, ms(30) + IDLE_SHRINK), 0);
        lead.update(2, MIB, ms(30) + IDLE_SHRINK);
        assert_eq!(lead.offer(3, ms(31) + IDLE_SHRINK), MIB);
    }

    #[test]
    fn an_idle_leader_shrinks_back_though_others_follow_it() {
        let mut rx = RecvWindow::autotuned(DEFAULT_WINDOW, 16 * MIB);
        let t0 = Instant::now();
        let (_, mut tx) = transfer(
            &mut rx,
            t0,
            25_000_000,
            Duration::from_millis(50),
            64 * MIB,
            5,
        );
        assert!(rx.window() > DEFAULT_WINDOW);
        let mut lead = Lead::default();
        lead.update(1, rx.window(), t0 + Duration::from_secs(6));
        let mut t = Duration::from_secs(8);
        for _ in 0..2_000 {
            let n = (tx.available() as usize).min(4096);
            tx.consume(n).expect("credit");
            rx.on_data(n).expect("within window");
            t += Duration::from_millis(10);
            let at = Drain::at(t0 + t, 64 * MIB).with_lead(lead.offer(1, t0 + t));
            if let Some(inc) = rx.on_drained_at(n, at).expect("drained") {
                tx.grant(inc).expect("no overflow");
            }
            lead.update(1, rx.window(), t0 + t);
        }
        assert_eq!(
            rx.window(),
            DEFAULT_WINDOW,
            "its own lead does not hold it up"
        );
    }
}
