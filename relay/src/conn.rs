//! A client connection between its listener and its tunnel: the types both hand each other.
//!
//! A leaf: the listener makes a [`NewConn`], the registry routes it to a tunnel, the tunnel's
//! stream task owns it (and, when its agent could not connect it, hands it back through
//! [`Reroute`]); none of them needs to import another for these types.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;
use tokio::net::TcpStream;

use crate::metrics::ConnectorMetrics;
use crate::replay::Reopen;

/// What streams need to know about the listener that accepted them.
#[derive(Debug)]
pub(crate) struct ListenerCtx {
    pub name: String,
    pub connector: String,
    pub allow_cidrs: Vec<IpNet>,
    /// Connections one source may hold open on this listener at once.
    pub max_conn_per_source: usize,
    /// Connections open now on this listener, per source.
    pub sources: Arc<SourceCounts>,
    pub metrics: ConnectorMetrics,
    /// Connections start with a PROXY header (`listeners[].proxy_protocol`).
    pub proxy_protocol: bool,
    /// Connections waiting for their PROXY header now (capped at `limits.max_conn_total`).
    pub proxy_pending: Arc<AtomicUsize>,
}

/// A slot of `limits.max_conn_total` (and, once [`ConnGuard::with_source`] added it, of the
/// listener's `max_conn_per_source`), released on drop.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    count: Arc<AtomicUsize>,
    /// Only its drop matters.
    _source: Option<SourceSlot>,
}

impl ConnGuard {
    /// Takes a slot unless `max` are in use.
    pub fn try_acquire(count: &Arc<AtomicUsize>, max: usize) -> Option<ConnGuard> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnGuard {
                count: count.clone(),
                _source: None,
            })
    }

    /// Also holds `slot` until the connection ends.
    pub fn with_source(mut self, slot: SourceSlot) -> ConnGuard {
        self._source = Some(slot);
        self
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Connections open now on one listener, per source address (for `max_conn_per_source`).
///
/// Bounded without a cap of its own: an entry exists only while a connection of that source
/// holds a [`SourceSlot`] and is removed when the last one ends, so there are never more
/// entries than open connections (at most `max_conn_total`, plus the one being checked).
#[derive(Debug, Default)]
pub(crate) struct SourceCounts {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceCounts {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for `ip` unless it holds `max` already. IPv4-mapped IPv6 counts as IPv4,
    /// so a dual-stack listener does not give one host two shares.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let ip = ip.to_canonical();
        let mut open = self.lock();
        let n = open.get(&ip).copied().unwrap_or(0);
        if n >= max {
            return None;
        }
        open.insert(ip, n + 1);
        Some(SourceSlot {
            counts: self.clone(),
            ip,
        })
    }

    /// Sources with a connection open now.
    #[cfg(test)]
    pub fn sources(&self) -> usize {
        self.lock().len()
    }

    fn release(&self, ip: IpAddr) {
        let mut open = self.lock();
        match open.get_mut(&ip) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                open.remove(&ip);
            }
        }
    }
}

/// One connection's place in its source's share of a listener; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct SourceSlot {
    counts: Arc<SourceCounts>,
    ip: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        self.counts.release(self.ip);
    }
}

/// A client a listener accepted and checked, on its way to a tunnel.
#[derive(Debug)]
pub(crate) struct NewConn {
    pub sock: TcpStream,
    pub peer: SocketAddr,
    pub listener: Arc<ListenerCtx>,
    /// Held until the stream ends.
    pub guard: ConnGuard,
    /// A retry: what the client sent the agent that answered `connect_failed`, to send first.
    pub reopen: Option<Box<Reopen>>,
}

/// Where a stream goes when its agent answered OPEN with `connect_failed` (the listener's
/// routing, minus that agent).
pub(crate) trait Reroute: Send + Sync + std::fmt::Debug {
    /// Hands `conn` to a tunnel of another agent than `except` (an agent_id) that serves its
    /// connector. `Err`: none does; the caller resets the client.
    fn reroute(&self, conn: NewConn, except: &str) -> Result<(), Box<NewConn>>;
}

/// Closes a client at once with a TCP reset: there is nothing behind this port right now, or
/// the stream was cut (a client must not mistake that for a complete response).
pub(crate) fn reject(sock: TcpStream) {
    let _ = sock.set_zero_linger();
    drop(sock);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_guard_caps_and_releases() {
        let count = Arc::new(AtomicUsize::new(0));
        let a = ConnGuard::try_acquire(&count, 2).expect("slot");
        let _b = ConnGuard::try_acquire(&count, 2).expect("slot");
        assert!(ConnGuard::try_acquire(&count, 2).is_none());
        drop(a);
        assert!(ConnGuard::try_acquire(&count, 2).is_some());
    }

    #[test]
    fn source_slots_cap_each_source_and_leave_no_entry_behind() {
        let counts = Arc::new(SourceCounts::default());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let first = counts.try_acquire(a, 2).expect("slot");
        let second = counts
            .try_acquire(mapped, 2)
            .expect("same source, second slot");
        assert!(counts.try_acquire(a, 2).is_none(), "a holds its share");
        assert!(counts.try_acquire(mapped, 2).is_none(), "mapped is a");
        let other = counts.try_acquire(b, 2).expect("another source");
        assert_eq!(counts.sources(), 2);
        // The slot follows its connection: inside a guard it is freed with it.
        let count = Arc::new(AtomicUsize::new(0));
        let guard = ConnGuard::try_acquire(&count, 10)
            .expect("slot")
            .with_source(first);
        assert!(counts.try_acquire(a, 2).is_none());
        drop(guard);
        assert_eq!(count.load(Ordering::Acquire), 0);
        let again = counts.try_acquire(a, 2).expect("freed by the guard");
        drop((again, second, other));
        assert_eq!(counts.sources(), 0, "entries removed at zero");
    }
}
