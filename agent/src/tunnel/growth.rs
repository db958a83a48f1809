//! The per-tunnel bound on receive-window growth (autotuning, `shared::flow`).
//!
//! Each stream's window may grow from 256 KiB up to `limits.max_stream_window_bytes`, and a
//! target that stops reading then holds up to that much. A frugal agent does not let every
//! stream do it at once: what the windows of one tunnel grew by, together, stays within
//! [`GROWTH_BUDGET`]. Each stream keeps its share in a [`Grown`], given back when it shrinks or
//! the stream leaves the table.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes the receive windows of one tunnel may grow by in total: 16 MiB, four streams at the
/// default 4 MiB cap (one stream on a 200 Mbit/s, 100 ms link needs about 2.5 MiB).
pub(super) const GROWTH_BUDGET: usize = 16 << 20;

/// The growth of all streams of one tunnel.
#[derive(Debug, Clone, Default)]
pub(super) struct Growth {
    total: Arc<AtomicUsize>,
}

impl Growth {
    /// How far one more window may grow now.
    pub fn room(&self) -> u32 {
        let used = self.total.load(Ordering::Relaxed);
        u32::try_from(GROWTH_BUDGET.saturating_sub(used)).unwrap_or(u32::MAX)
    }

    /// A stream's share, empty.
    pub fn share(&self) -> Grown {
        Grown {
            total: self.total.clone(),
            bytes: 0,
        }
    }
}

/// One stream's window growth, counted in its tunnel's [`Growth`] until dropped.
#[derive(Debug)]
pub(super) struct Grown {
    total: Arc<AtomicUsize>,
    bytes: usize,
}

impl Grown {
    /// The stream's window is now `n` bytes past the initial one.
    pub fn set(&mut self, n: usize) {
        if n > self.bytes {
            self.total.fetch_add(n - self.bytes, Ordering::Relaxed);
        } else {
            self.total.fetch_sub(self.bytes - n, Ordering::Relaxed);
        }
        self.bytes = n;
    }
}

impl Drop for Grown {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_come_back() {
        let g = Growth::default();
        let mut a = g.share();
        let mut b = g.share();
        a.set(10 << 20);
        b.set(4 << 20);
        assert_eq!(g.room() as usize, GROWTH_BUDGET - (14 << 20));
        a.set(1 << 20);
        assert_eq!(g.room() as usize, GROWTH_BUDGET - (5 << 20));
        drop(b);
        assert_eq!(g.room() as usize, GROWTH_BUDGET - (1 << 20));
        drop(a);
        assert_eq!(g.room() as usize, GROWTH_BUDGET);
        let mut c = g.share();
        c.set(GROWTH_BUDGET + 1);
        assert_eq!(g.room(), 0, "never below zero");
    }
}
