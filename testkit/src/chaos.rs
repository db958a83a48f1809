//! A TCP proxy for fault injection: passes traffic, stalls it (connections stay open, nothing
//! moves), or cuts it (every connection is closed and new ones are closed at once), switched
//! at run time. Loopback only; dropping the proxy stops it and its connections.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Nothing is read or written; connections stay open.
    Stall,
    /// Connections are closed; new ones are closed on accept.
    Cut,
}

/// A running chaos proxy to `upstream`.
#[derive(Debug)]
pub struct Chaos {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl Drop for Chaos {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Chaos {
    /// Switches every connection (and later ones) to `mode`.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }
}

/// Starts a proxy on 127.0.0.1:0 to `upstream`, passing traffic.
pub async fn proxy(upstream: SocketAddr) -> Chaos {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind chaos proxy");
    let addr = listener.local_addr().expect("chaos proxy address");
    let (tx, rx) = watch::channel(Mode::Pass);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            if *rx.borrow() == Mode::Cut {
                drop(client);
                continue;
            }
            let rx = rx.clone();
            conns.spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::select! {
                    () = pump(cr, sw, rx.clone()) => {}
                    () = pump(sr, cw, rx.clone()) => {}
                }
            });
            // Finished connections are reaped so the set stays small.
            while conns.try_join_next().is_some() {}
        }
    });
    Chaos {
        addr,
        mode: tx,
        task,
    }
}

/// Copies one direction while the mode allows; returns (closing both ends) on EOF, an error,
/// or a cut.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Mode::Cut => return,
            Mode::Stall => {
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Pass => {}
        }
        tokio::select! {
            r = r.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if w.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            changed = mode.changed() => if changed.is_err() { return },
        }
    }
}
