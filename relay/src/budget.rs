//! The relay-wide budget for buffered stream bytes (`limits.max_buffered_bytes`).
//!
//! Agent bytes a client socket did not take at once wait in that stream's task. Each stream's
//! receive window bounds its own share, but windows times streams times agents is no bound at
//! all: this one is. A charge that does not fit is refused and the caller resets the stream
//! (`queue_overflow`), so one site's non-reading clients cannot grow the relay for every tenant.
//! The count is the `nowconnect_buffered_bytes` gauge itself.

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::metrics::gauge::Gauge;

#[derive(Debug)]
pub(crate) struct Budget {
    max: i64,
    used: Gauge<i64, AtomicI64>,
}

impl Budget {
    pub fn new(max: usize, used: Gauge<i64, AtomicI64>) -> Budget {
        Budget {
            max: i64::try_from(max).unwrap_or(i64::MAX),
            used,
        }
    }

    /// Takes `n` bytes if they fit.
    pub fn try_charge(&self, n: usize) -> bool {
        let Ok(n) = i64::try_from(n) else {
            return false;
        };
        self.used
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.max)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken by [`Budget::try_charge`].
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.used.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        usize::try_from(self.used.get()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_or_are_refused_and_come_back() {
        let b = Budget::new(100, Gauge::default());
        assert!(b.try_charge(60));
        assert!(!b.try_charge(41), "over the budget");
        assert!(b.try_charge(40));
        assert_eq!(b.used(), 100);
        b.release(60);
        assert_eq!(b.used(), 40);
        assert!(!b.try_charge(usize::MAX));
        b.release(40);
        assert_eq!(b.used(), 0);
    }
}
