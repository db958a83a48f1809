//! A client connection between its listener and its tunnel: the types both hand each other.
//!
//! A leaf: the listener makes a [`NewConn`], the registry routes it to a tunnel, the tunnel's
//! stream task owns it; none of them needs to import another for these types.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ipnet::IpNet;
use tokio::net::TcpStream;

use crate::metrics::ConnectorMetrics;

/// What streams need to know about the listener that accepted them.
#[derive(Debug)]
pub(crate) struct ListenerCtx {
    pub name: String,
    pub connector: String,
    pub allow_cidrs: Vec<IpNet>,
    pub metrics: ConnectorMetrics,
    /// Connections start with a PROXY header (`listeners[].proxy_protocol`).
    pub proxy_protocol: bool,
    /// Connections waiting for their PROXY header now (capped at `limits.max_conn_total`).
    pub proxy_pending: Arc<AtomicUsize>,
}

/// A slot of `limits.max_conn_total`, released on drop.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    count: Arc<AtomicUsize>,
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
            })
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
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
}
