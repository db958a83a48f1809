//! A client connection between its listener and its tunnel: the types both hand each other.
//!
//! A leaf: the listener makes a [`NewConn`], the registry routes it to a tunnel, the tunnel's
//! stream task owns it (and, when its agent could not connect it, hands it back through
//! [`Reroute`]); none of them needs to import another for these types.
//!
//! A client is a [`ClientSock`]: a TCP socket accepted by a listener, or one end of an
//! in-process pipe whose other end the relay mesh bridges to a client on another relay. Both
//! move bytes with the same non-blocking calls, so the tunnel has one data path for both.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BufMut;
use ipnet::IpNet;
use tokio::net::{TcpStream, UnixStream};

use crate::config::SniRoutes;
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
    /// `route_by: sni`: the connector comes from each client's ClientHello. `None`: every
    /// client goes to `connector`. On an sni listener `connector` (and `metrics`) label what
    /// happens before a client is routed, with the listener's name.
    pub sni: Option<SniCtx>,
}

/// An sni listener's routes, each to the settings of the connector it names.
#[derive(Debug)]
pub(crate) struct SniCtx {
    pub table: SniRoutes,
    /// One per connector of `table`, with `sni: None`; they share the listener's per-source
    /// counts, so a client counts once whichever connector it is routed to.
    pub by_connector: HashMap<String, Arc<ListenerCtx>>,
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

/// A client socket: accepted TCP, or an in-process pipe end ([`ClientSock::pipe`]).
#[derive(Debug)]
pub(crate) enum ClientSock {
    Tcp(TcpStream),
    Pipe(Pipe),
}

/// One end of a Unix socket pair with an explicit reset: a Unix socket has no RST, so a reset
/// is a flag the other end reads before it believes an EOF (a cut stream must never look like
/// a complete one to the client on the far side).
#[derive(Debug)]
pub(crate) struct Pipe {
    sock: UnixStream,
    /// Set by this end's [`ClientSock::reset`].
    mine: Arc<AtomicBool>,
    /// Set by the other end's reset.
    theirs: Arc<AtomicBool>,
}

impl Pipe {
    fn peer_reset(&self) -> io::Result<()> {
        if self.theirs.load(Ordering::Acquire) {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        Ok(())
    }
}

impl From<TcpStream> for ClientSock {
    fn from(s: TcpStream) -> ClientSock {
        ClientSock::Tcp(s)
    }
}

impl ClientSock {
    /// Two connected pipe ends.
    pub fn pipe() -> io::Result<(ClientSock, ClientSock)> {
        let (a, b) = UnixStream::pair()?;
        let (fa, fb) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let end = |sock, mine: &Arc<AtomicBool>, theirs: &Arc<AtomicBool>| {
            ClientSock::Pipe(Pipe {
                sock,
                mine: mine.clone(),
                theirs: theirs.clone(),
            })
        };
        Ok((end(a, &fa, &fb), end(b, &fb, &fa)))
    }

    pub async fn readable(&self) -> io::Result<()> {
        match self {
            ClientSock::Tcp(s) => s.readable().await,
            ClientSock::Pipe(p) => p.sock.readable().await,
        }
    }

    pub async fn writable(&self) -> io::Result<()> {
        match self {
            ClientSock::Tcp(s) => s.writable().await,
            ClientSock::Pipe(p) => p.sock.writable().await,
        }
    }

    /// A pipe whose other end was reset reads an error, never an EOF.
    pub fn try_read_buf<B: BufMut>(&self, buf: &mut B) -> io::Result<usize> {
        match self {
            ClientSock::Tcp(s) => read_clearing(s, buf),
            ClientSock::Pipe(p) => {
                p.peer_reset()?;
                let n = p.sock.try_read_buf(buf)?;
                if n == 0 {
                    p.peer_reset()?;
                }
                Ok(n)
            }
        }
    }

    #[cfg(test)]
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientSock::Tcp(s) => s.try_write(buf),
            ClientSock::Pipe(p) => {
                p.peer_reset()?;
                p.sock.try_write(buf)
            }
        }
    }

    pub fn try_write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            ClientSock::Tcp(s) => s.try_write_vectored(iov),
            ClientSock::Pipe(p) => {
                p.peer_reset()?;
                p.sock.try_write_vectored(iov)
            }
        }
    }

    /// Half-close: no more bytes to the client (a TCP FIN, or EOF on the pipe).
    pub fn shutdown_write(&self) -> io::Result<()> {
        // tokio's shutdown needs `&mut`; the socket is shared between tasks.
        match self {
            ClientSock::Tcp(s) => socket2::SockRef::from(s).shutdown(Shutdown::Write),
            ClientSock::Pipe(p) => socket2::SockRef::from(&p.sock).shutdown(Shutdown::Write),
        }
    }

    /// Makes the close an abort: a TCP RST, or the pipe's reset flag (set before the end is
    /// dropped, so the other end sees it before it sees the EOF).
    pub fn reset(&self) {
        match self {
            ClientSock::Tcp(s) => {
                let _ = s.set_zero_linger();
            }
            ClientSock::Pipe(p) => p.mine.store(true, Ordering::Release),
        }
    }

    /// Registers the socket again with the current runtime (a tunnel on another shard).
    pub fn rehome(self) -> io::Result<ClientSock> {
        Ok(match self {
            ClientSock::Tcp(s) => ClientSock::Tcp(TcpStream::from_std(s.into_std()?)?),
            ClientSock::Pipe(Pipe { sock, mine, theirs }) => ClientSock::Pipe(Pipe {
                sock: UnixStream::from_std(sock.into_std()?)?,
                mine,
                theirs,
            }),
        })
    }
}

/// A client a listener accepted and checked, on its way to a tunnel.
#[derive(Debug)]
pub(crate) struct NewConn {
    pub sock: ClientSock,
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

/// [`reject`] for any client socket.
pub(crate) fn reject_client(sock: ClientSock) {
    sock.reset();
    drop(sock);
}

/// One non-blocking read that also tells tokio when it emptied the socket (the agent's target
/// reads do the same: `agent/src/stream/drain.rs`, which says why and tests it).
///
/// tokio forgets readiness only on `WouldBlock`, so a read that took all there was costs a
/// second read that finds nothing. A read shorter than its buffer's chunk emptied the socket:
/// it is reported to tokio as `WouldBlock` (which clears the readiness it started from, never a
/// newer one) and its byte count kept.
fn read_clearing<B: BufMut>(sock: &TcpStream, buf: &mut B) -> io::Result<usize> {
    let room = buf.chunk_mut().len();
    let mut short = None;
    let r = sock.try_io(tokio::io::Interest::READABLE, || {
        let n = sock.try_read_buf(buf)?;
        if n > 0 && n < room {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (r, short) {
        (_, Some(n)) => Ok(n),
        (r, None) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reset_pipe_end_reads_as_an_error_not_an_eof() {
        let (a, b) = ClientSock::pipe().expect("pipe");
        assert_eq!(a.try_write(b"x").expect("write"), 1);
        b.readable().await.expect("readable");
        let mut buf = Vec::with_capacity(8);
        assert_eq!(b.try_read_buf(&mut buf).expect("read"), 1);
        // A clean half-close reads as EOF.
        a.shutdown_write().expect("shutdown");
        b.readable().await.expect("readable");
        assert_eq!(b.try_read_buf(&mut buf).expect("eof"), 0);
        // A reset, then the drop: an error on the other end, also for writes.
        let (c, d) = ClientSock::pipe().expect("pipe");
        c.reset();
        drop(c);
        d.readable().await.expect("readable");
        let e = d.try_read_buf(&mut buf).expect_err("reset");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert!(d.try_write(b"y").is_err());
    }

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
