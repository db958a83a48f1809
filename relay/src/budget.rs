//! The relay-wide budgets for buffered stream bytes (`limits.max_buffered_bytes`, half for
//! each direction).
//!
//! Each stream's window bounds its own share, but windows times streams times agents is no
//! bound at all: these are.
//! - Client-bound (a2c): agent bytes a client socket did not take at once wait in that stream's
//!   task. A charge that does not fit is refused and the session resets the stream
//!   (`queue_overflow`): the agent sent within credit, so nothing else can hold it back.
//! - Agent-bound (c2a): bytes read from clients wait in the tunnel's writer queue. A stream
//!   whose read does not fit just stops reading its client until bytes leave
//!   ([`Budget::freed`]): TCP pushes back on the client, nothing is reset.
//!
//! - Window growth (a2c): a stream's receive window grows past the initial one only into room
//!   here, and the growth stays reserved while the window is large ([`Budget::window_room`]),
//!   less the stream's bytes already queued (charged above): credit the relay granted is backed
//!   by the budget, and no byte counts twice.
//!
//! One direction filling up cannot starve the other. The count is the
//! `nowconnect_buffered_bytes{dir}` gauge itself.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::metrics::DirLabel;

/// The two budgets, each half of `limits.max_buffered_bytes`.
#[derive(Debug)]
pub(crate) struct Buffers {
    /// Agent bytes held for clients.
    pub a2c: Arc<Budget>,
    /// Client bytes held for agents.
    pub c2a: Arc<Budget>,
}

impl Buffers {
    pub fn new(max: usize, gauges: &Family<DirLabel, Gauge<i64, AtomicI64>>) -> Buffers {
        let half = max / 2;
        let gauge = |dir| gauges.get_or_create(&DirLabel { dir }).clone();
        Buffers {
            a2c: Arc::new(Budget::new(half, gauge("a2c"))),
            c2a: Arc::new(Budget::new(half, gauge("c2a"))),
        }
    }
}

/// What one queued buffer costs besides its bytes (its allocation's header and rounding, the
/// queue's slot): charged per frame, so a flood of 1-byte frames is charged what it holds.
pub(crate) const FRAME_COST: usize = 96;

/// The share of a direction's budget one tunnel may hold, as a divisor: one agent (with up to
/// `limits.max_tunnels_per_agent` tunnels) cannot take it all from the other sites.
pub(crate) const TUNNEL_SHARE: usize = 4;

/// A receive window grows only while it is at most this fraction of the free budget, as a
/// divisor.
const WINDOW_SHARE: usize = 4;

#[derive(Debug)]
pub(crate) struct Budget {
    max: i64,
    used: Gauge<i64, AtomicI64>,
    /// A tunnel's share is charged here first, then to the relay-wide budget.
    parent: Option<Arc<Budget>>,
    /// A charge was refused since the last release: someone may wait in [`Budget::freed`].
    starved: AtomicBool,
    freed: Notify,
}

impl Budget {
    pub fn new(max: usize, used: Gauge<i64, AtomicI64>) -> Budget {
        Budget {
            max: i64::try_from(max).unwrap_or(i64::MAX),
            used,
            parent: None,
            starved: AtomicBool::new(false),
            freed: Notify::new(),
        }
    }

    /// A tunnel's share: at most [`TUNNEL_SHARE`]th of this budget, charged to both.
    pub fn share(self: &Arc<Self>) -> Arc<Budget> {
        let max = usize::try_from(self.max).unwrap_or(usize::MAX) / TUNNEL_SHARE;
        Arc::new(Budget {
            parent: Some(self.clone()),
            ..Budget::new(max, Gauge::default())
        })
    }

    /// Takes `n` bytes if they fit.
    pub fn try_charge(&self, n: usize) -> bool {
        let mine = i64::try_from(n).is_ok_and(|n| {
            self.used
                .inner()
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                    u.checked_add(n).filter(|t| *t <= self.max)
                })
                .is_ok()
        });
        let ok = mine
            && match &self.parent {
                None => true,
                Some(p) if p.try_charge(n) => true,
                Some(_) => {
                    self.used.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
                    false
                }
            };
        if !ok {
            self.starved.store(true, Ordering::Release);
        }
        ok
    }

    /// [`Budget::try_charge`] as a [`Charge`] that gives the bytes back when dropped.
    pub fn try_take(self: &Arc<Self>, n: usize) -> Option<Charge> {
        self.try_charge(n).then(|| Charge {
            budget: self.clone(),
            bytes: n,
        })
    }

    /// Gives back `n` bytes taken by [`Budget::try_charge`].
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.used.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
        if let Some(p) = &self.parent {
            p.release(n);
        }
        // One waiter per release, not all of them: bytes leave a frame at a time, and every
        // waiter also retries on its own timer.
        if self.starved.load(Ordering::Acquire) && self.starved.swap(false, Ordering::AcqRel) {
            self.freed.notify_one();
        }
    }

    /// Resolves after a release that followed a refused charge (one waiter per release). A
    /// wake-up can be missed (a release between the refusal and this call, or a refusal by the
    /// relay-wide budget freed by another tunnel): waiters also retry on a timer.
    pub async fn freed(&self) {
        self.freed.notified().await;
    }

    /// Bytes that would still fit here and in the relay-wide budget above.
    pub fn room(&self) -> usize {
        let mine = usize::try_from(self.max.saturating_sub(self.used.get())).unwrap_or(0);
        match &self.parent {
            None => mine,
            Some(p) => mine.min(p.room()),
        }
    }

    /// How far a stream's receive window of `window` bytes may grow now: to a
    /// [`WINDOW_SHARE`]th of the room at most. The growth is then reserved here
    /// ([`Charge::resize`]), so what the relay promised the agent is backed by the budget, and
    /// the whole window would still fit several times over should the client stop reading.
    pub fn window_room(&self, window: u32) -> u32 {
        let most = u32::try_from(self.room() / WINDOW_SHARE).unwrap_or(u32::MAX);
        most.saturating_sub(window)
    }

    /// An empty [`Charge`] on this budget, to [`Charge::resize`] later.
    pub fn empty_charge(self: &Arc<Self>) -> Charge {
        Charge {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        usize::try_from(self.used.get()).unwrap_or(0)
    }
}

/// Bytes held against a [`Budget`], given back on drop (so a frame dropped anywhere, in a
/// queue of a tunnel that died, say, releases its bytes).
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Charge {
    /// Holds `n` bytes instead: a release when smaller, a charge when larger (refused, and
    /// nothing changes, if it does not fit).
    pub fn resize(&mut self, n: usize) -> bool {
        if n <= self.bytes {
            self.shrink_to(n);
            return true;
        }
        let more = n - self.bytes;
        if self.budget.try_charge(more) {
            self.bytes = n;
            return true;
        }
        false
    }

    /// Keeps only `n` of the bytes taken (what a read actually returned).
    pub fn shrink_to(&mut self, n: usize) {
        if n < self.bytes {
            self.budget.release(self.bytes - n);
            self.bytes = n;
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

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

    #[test]
    fn a_charge_gives_back_what_it_keeps_when_dropped() {
        let b = Arc::new(Budget::new(100, Gauge::default()));
        let mut c = b.try_take(80).expect("fits");
        assert!(b.try_take(30).is_none());
        c.shrink_to(10);
        assert_eq!(b.used(), 10);
        let d = b.try_take(90).expect("fits after the shrink");
        drop(c);
        drop(d);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_tunnel_share_is_charged_to_both_and_bounded_by_either() {
        let relay = Arc::new(Budget::new(400, Gauge::default()));
        let a = relay.share();
        let b = relay.share();
        assert!(a.try_charge(100));
        assert!(!a.try_charge(1), "a tunnel holds at most a quarter");
        assert!(b.try_charge(100));
        assert_eq!(relay.used(), 200);
        let c = relay.share();
        let d = relay.share();
        assert!(c.try_charge(100) && d.try_charge(100));
        let e = relay.share();
        assert!(!e.try_charge(1), "the relay-wide budget is full");
        assert_eq!(e.used(), 0, "a refused charge leaves the share as it was");
        a.release(100);
        assert!(e.try_charge(100));
        assert_eq!(relay.used(), 400);
    }

    #[tokio::test]
    async fn a_release_after_a_refusal_wakes_waiters() {
        let b = Arc::new(Budget::new(10, Gauge::default()));
        let held = b.try_take(10).expect("fits");
        assert!(b.try_take(1).is_none());
        // Polled once, the waiter is registered before the release.
        let mut waiter = Box::pin(b.freed());
        let parked = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(waiter.as_mut().poll(cx).is_pending())
        })
        .await;
        assert!(parked);
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken");
    }
}
