//! TCP targets on 127.0.0.1:0 for the streams under test: an echo server (tagged or not), a port that refuses,
//! one that accepts and resets, one that accepts and stays silent (never reads), a firehose, one
//! that hands its sockets to the test, and any handler of the test's own.
//!
//! A [`Target`] owns its accept loop and every connection task: dropping it closes them all.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::net;

/// A running target. Dropping it stops accepting and closes its connections.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accept loop on 127.0.0.1:0 running `f` for every connection (TCP_NODELAY set).
pub async fn serve<F, Fut>(f: F) -> Target
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve_on("127.0.0.1:0", f).await
}

/// [`serve`] on another loopback address (e.g. `[::1]:0`).
pub async fn serve_on<F, Fut>(bind: &str, f: F) -> Target
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    try_serve_on(bind, f)
        .await
        .unwrap_or_else(|e| panic!("bind {bind}: {e}"))
}

/// [`serve_on`], or the bind error (an address in use, or not free again yet).
pub async fn try_serve_on<F, Fut>(bind: &str, f: F) -> std::io::Result<Target>
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind(bind).await?;
    let addr = net::addr(&l);
    let task = tokio::spawn(async move {
        // Owned here: aborting the loop drops the set, which aborts every connection.
        let mut conns = JoinSet::new();
        while let Ok((s, _)) = l.accept().await {
            while conns.try_join_next().is_some() {}
            let _ = s.set_nodelay(true);
            conns.spawn(f(s));
        }
    });
    Ok(Target { addr, task })
}

/// Writes back every byte, then half-closes after the client's EOF.
pub async fn echo() -> Target {
    echo_on("127.0.0.1:0").await
}

/// [`echo`] on another loopback address (e.g. `[::1]:0`).
pub async fn echo_on(bind: &str) -> Target {
    serve_on(bind, |mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Writes `tag` first, then echoes as [`echo`]: a test sees which of several targets a stream
/// reached (a reloaded target table, say).
pub async fn tagged_echo(tag: &'static [u8]) -> Target {
    try_tagged_echo_on("127.0.0.1:0", tag)
        .await
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"))
}

/// [`tagged_echo`] on `bind`, or the bind error (to bind a port again after its target was
/// dropped, say: retry until the old listener is gone).
pub async fn try_tagged_echo_on(bind: &str, tag: &'static [u8]) -> std::io::Result<Target> {
    try_serve_on(bind, move |mut s| async move {
        if s.write_all(tag).await.is_err() {
            return;
        }
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Two [`tagged_echo`] targets on one port: the first on 127.0.0.1, the second on
/// [`net::other_loopback`] (127.0.0.2), as one connector's two hosts. Panics if no port is free
/// on both after a few tries.
pub async fn tagged_echo_pair(a: &'static [u8], b: &'static [u8]) -> (Target, Target) {
    for _ in 0..20 {
        let first = tagged_echo(a).await;
        let other = format!("{}:{}", net::other_loopback(), first.addr.port());
        if let Ok(second) = try_tagged_echo_on(&other, b).await {
            return (first, second);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2 after 20 tries");
}

/// A port bound on 127.0.0.1 that never listens: every connect is refused (RST, `ECONNREFUSED`)
/// for as long as this lives, and nobody else can bind the port meanwhile (the socket holds it
/// without `SO_REUSEADDR`), unlike a port bound and then closed.
#[derive(Debug)]
pub struct Refused {
    pub addr: SocketAddr,
    _socket: TcpSocket,
}

pub fn refused() -> Refused {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(net::LOOPBACK_ANY).expect("bind 127.0.0.1:0");
    let addr = socket.local_addr().expect("local address");
    Refused {
        addr,
        _socket: socket,
    }
}

/// Accepts and closes at once with a reset (SO_LINGER 0): the connect succeeds, the first read
/// or write fails with `ECONNRESET`.
pub async fn resetting() -> Target {
    serve(|s| async move {
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        drop(s);
    })
    .await
}

/// Accepts and holds every connection without reading or writing (a target that never reads,
/// a proxy that never answers). `accepted` counts the connections.
#[derive(Debug)]
pub struct Silent {
    pub target: Target,
    pub accepted: Arc<AtomicUsize>,
}

impl Silent {
    pub fn addr(&self) -> SocketAddr {
        self.target.addr
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

pub async fn silent() -> Silent {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let target = serve(move |s| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            // Held open until the target is dropped.
            std::future::pending::<()>().await;
            drop(s);
        }
    })
    .await;
    Silent { target, accepted }
}

/// Writes as fast as it can (up to `cap` bytes per connection, counted together) and never
/// reads; the counter holds what the kernel accepted.
pub async fn firehose(cap: u64) -> (Target, Arc<AtomicU64>) {
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let target = serve(move |mut s| {
        let counter = counter.clone();
        async move {
            let chunk = vec![0x5au8; 64 * 1024];
            while counter.load(Ordering::Relaxed) < cap {
                match s.write(&chunk).await {
                    Ok(n) if n > 0 => {
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
        }
    })
    .await;
    (target, written)
}

/// An [`echo`] that counts the connections it accepted (which of several targets served).
pub async fn counted_echo() -> (Target, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let target = serve(move |mut s| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }
    })
    .await;
    (target, accepted)
}

/// Hands every accepted socket to the test, which then plays the target itself.
pub async fn handoff() -> (Target, mpsc::UnboundedReceiver<TcpStream>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let target = serve(move |s| {
        let _ = tx.send(s);
        async {}
    })
    .await;
    (target, rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn refused_refuses_and_holds_its_port() {
        let r = refused();
        let err = TcpStream::connect(r.addr).await.expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(
            std::net::TcpListener::bind(r.addr).is_err(),
            "the port is held"
        );
    }

    #[tokio::test]
    async fn resetting_resets() {
        let t = resetting().await;
        let mut s = TcpStream::connect(t.addr).await.expect("connect");
        let mut b = [0u8; 1];
        let r = s.read(&mut b).await;
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn echo_echoes_and_dropping_it_closes_connections() {
        let t = echo().await;
        let mut s = TcpStream::connect(t.addr).await.expect("connect");
        s.write_all(b"abc").await.expect("write");
        let mut b = [0u8; 3];
        s.read_exact(&mut b).await.expect("read");
        assert_eq!(&b, b"abc");
        drop(t);
        let n = s.read(&mut b).await.unwrap_or(0);
        assert_eq!(n, 0, "closed with the target");
    }

    #[tokio::test]
    async fn silent_counts_and_holds() {
        let t = silent().await;
        let _a = TcpStream::connect(t.addr()).await.expect("connect");
        let _b = TcpStream::connect(t.addr()).await.expect("connect");
        crate::wait::wait_for("two accepted", crate::wait::DEADLINE, || t.accepted() == 2).await;
    }
}
