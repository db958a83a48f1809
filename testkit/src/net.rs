//! Sockets on loopback: listeners on `127.0.0.1:0`, a port held across a server restart, and
//! connections from another loopback address. Never "bind port 0, read the port, close, let
//! someone else bind it": another test can take the port in between.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// 127.0.0.1 port 0: the kernel picks a free port.
pub const LOOPBACK_ANY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// A listener on 127.0.0.1 with a port the kernel chose.
pub async fn bind() -> TcpListener {
    TcpListener::bind(LOOPBACK_ANY)
        .await
        .expect("bind 127.0.0.1:0")
}

/// The bound address of `l`.
pub fn addr(l: &TcpListener) -> SocketAddr {
    l.local_addr().expect("local address of a bound listener")
}

/// Connects to `addr` with `TCP_NODELAY` set, as the relay and the agent set it on theirs.
///
/// Without it, Nagle's algorithm holds a small write while the previous one is unacknowledged,
/// and the kernel's delayed ACK releases it only after up to 40 ms of real time: nothing on a
/// running clock, but on a paused clock tokio meanwhile advances virtual time by many seconds.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_nodelay(true).expect("TCP_NODELAY");
    s
}

/// A listening port held by the test for as long as this lives, to be served by one server after
/// another (a relay restarted on the same port). Each [`listener`](Reserved::listener) shares the
/// one socket, so the port never becomes free: between two servers, connections wait in the
/// listen backlog and the next server accepts them.
#[derive(Debug)]
pub struct Reserved {
    socket: std::net::TcpListener,
    addr: SocketAddr,
}

impl Reserved {
    /// Binds 127.0.0.1:0 and listens.
    pub fn new() -> Reserved {
        let socket = std::net::TcpListener::bind(LOOPBACK_ANY).expect("bind 127.0.0.1:0");
        // Shared by every listener made from it (they are descriptors of the same socket).
        socket.set_nonblocking(true).expect("non-blocking listener");
        let addr = socket.local_addr().expect("local address");
        Reserved { socket, addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A tokio listener on the reserved socket for the next server (call inside a runtime).
    /// Dropping it leaves the port reserved.
    pub fn listener(&self) -> TcpListener {
        let dup = self
            .socket
            .try_clone()
            .expect("duplicate the listening socket");
        TcpListener::from_std(dup).expect("register the listener with tokio")
    }
}

impl Default for Reserved {
    fn default() -> Self {
        Reserved::new()
    }
}

/// Connects to `addr` from loopback address `from` (e.g. 127.0.0.2), port chosen by the kernel,
/// with `TCP_NODELAY` (see [`connect`]).
pub async fn connect_from(from: IpAddr, addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(from, 0))
        .unwrap_or_else(|e| panic!("bind {from}:0: {e}"));
    let s = sock
        .connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {from} -> {addr}: {e}"));
    s.set_nodelay(true).expect("TCP_NODELAY");
    s
}

/// 127.0.0.2: a second loopback source address (Linux routes all of 127.0.0.0/8 to `lo`).
pub fn other_loopback() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
}

/// Whether `[::1]` can be bound here (some containers have no IPv6 loopback).
pub async fn has_ipv6_loopback() -> bool {
    TcpListener::bind("[::1]:0").await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_reserved_port_is_served_by_one_listener_after_another() {
        let port = Reserved::new();
        // Connected while nobody accepts: waits in the backlog.
        let mut early = TcpStream::connect(port.addr()).await.expect("connect");
        early.write_all(b"x").await.expect("write");
        for _ in 0..2 {
            let l = port.listener();
            assert_eq!(addr(&l), port.addr());
            drop(l);
        }
        let l = port.listener();
        let (mut s, _) = l.accept().await.expect("accept from the backlog");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("read");
        assert_eq!(&b, b"x");
        // Nobody else can bind it meanwhile.
        assert!(std::net::TcpListener::bind(port.addr()).is_err());
    }

    #[tokio::test]
    async fn connect_from_uses_the_source_address() {
        let l = bind().await;
        let _c = connect_from(other_loopback(), addr(&l)).await;
        let (_, peer) = l.accept().await.expect("accept");
        assert_eq!(peer.ip(), other_loopback());
    }
}
