//! Per-stream credit flow control (v2).
//!
//! Each direction of a stream has a window (default [`DEFAULT_WINDOW`]). The sender holds a
//! [`SendCredit`] and spends it on every DATA byte; the receiver holds a [`RecvWindow`], checks
//! that the peer stays within what it granted, and grants credit back with WINDOW once it has
//! *written* the bytes to the TCP socket. Credit goes back in batches: once half the window
//! has drained (as h2 does), so a steady stream costs one WINDOW frame per half window.
//! Memory per stream is therefore bounded by the window, whatever the peer does.

use crate::error::FlowError;

/// Initial credit of every stream in each direction, in bytes.
pub const DEFAULT_WINDOW: u32 = 256 * 1024;

/// Largest window or credit total, as in HTTP/2: keeps all arithmetic inside `u32`/`i32`.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

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

/// Receive side of one stream direction.
///
/// Invariant: `remaining + buffered + pending == window`, where `buffered` bytes were received
/// but not yet written out, and `pending` bytes were written but their credit not yet returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWindow {
    /// The full window this side granted at stream start.
    window: u32,
    /// Bytes the peer may still send before it must wait for WINDOW.
    remaining: u32,
    /// Bytes received and not yet drained to the socket.
    buffered: u32,
    /// Bytes drained whose credit has not been returned yet.
    pending: u32,
}

impl RecvWindow {
    pub fn new(window: u32) -> RecvWindow {
        let window = window.clamp(1, MAX_WINDOW);
        RecvWindow {
            window,
            remaining: window,
            buffered: 0,
            pending: 0,
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

    /// Accounts `len` bytes written to the socket. Returns the WINDOW increment to send, if the
    /// returned-credit threshold (half the window) is reached.
    pub fn on_drained(&mut self, len: usize) -> Result<Option<u32>, FlowError> {
        let n = u32::try_from(len)
            .ok()
            .filter(|&n| n <= self.buffered)
            .ok_or(FlowError::DrainedTooMuch {
                len,
                buffered: self.buffered,
            })?;
        self.buffered -= n;
        self.pending += n;
        if self.pending >= self.threshold() {
            let increment = self.pending;
            self.remaining += increment;
            self.pending = 0;
            Ok(Some(increment))
        } else {
            Ok(None)
        }
    }

    /// Bytes received and not yet drained (what this stream holds in memory).
    pub fn buffered(&self) -> u32 {
        self.buffered
    }

    /// Credit the peer still has.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Credit is returned once this many drained bytes have accumulated.
    pub fn threshold(&self) -> u32 {
        self.window.div_ceil(2)
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
}
