//! An HTTP CONNECT proxy written for the tests, on 127.0.0.1:0: optionally TLS in front (an
//! `https://` proxy), records every request head, then either answers a fixed response and
//! closes, or connects to `upstream` (whatever host was asked for, so relay names need not
//! resolve) and pipes bytes both ways.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::io::read_head;
use crate::net;

/// How long the proxy waits for a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A running proxy; dropping it stops it and its connections.
#[derive(Debug)]
pub struct FakeProxy {
    pub addr: SocketAddr,
    /// Every request head received, oldest first.
    pub heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl FakeProxy {
    /// Starts the proxy; `answer`: the fixed response (e.g. a 407), else tunnel to `upstream`.
    pub async fn start(
        tls: Option<TlsAcceptor>,
        upstream: SocketAddr,
        answer: Option<&'static str>,
    ) -> FakeProxy {
        let l = net::bind().await;
        let addr = net::addr(&l);
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((sock, _)) = l.accept().await {
                while conns.try_join_next().is_some() {}
                let (tls, h) = (tls.clone(), h.clone());
                conns.spawn(async move {
                    match tls {
                        None => serve(sock, upstream, answer, h).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(sock).await {
                                serve(s, upstream, answer, h).await
                            }
                        }
                    }
                });
            }
        });
        FakeProxy { addr, heads, task }
    }

    /// The request heads so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("heads").clone()
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    upstream: SocketAddr,
    answer: Option<&'static str>,
    heads: Arc<Mutex<Vec<String>>>,
) {
    let head = read_head(&mut io, HEAD_TIMEOUT).await;
    heads.lock().expect("heads").push(head);
    if let Some(a) = answer {
        let _ = io.write_all(a.as_bytes()).await;
        let _ = io.shutdown().await;
        return;
    }
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        let _ = io.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if io
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_ok()
    {
        let _ = tokio::io::copy_bidirectional(&mut io, &mut up).await;
    }
}
