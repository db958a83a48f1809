//! An agent that really connects its streams: a [`MockAgent`] whose OPENs are dialed to TCP
//! targets by connector and whose DATA/FIN are pumped both ways, with TLS backends that present
//! their own certificate. For tests where the relay must carry a real protocol (a TLS handshake
//! end to end) but the real agent is not wanted. Small streams only: it never sends WINDOW, so
//! a stream may carry at most one credit window from the client.

use std::collections::HashMap;
use std::net::SocketAddr;

use nowconnect_shared::{Dir, Frame, RstCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::mock_agent::{data, MockAgent};
use crate::pki::Ca;

/// A running bridge; dropping it stops it (and its tunnel).
#[derive(Debug)]
pub struct Bridge {
    /// The connector of every OPEN, in order.
    pub opened: mpsc::UnboundedReceiver<String>,
    task: JoinHandle<()>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Bridge {
    /// The connector of the next OPEN (panics after `crate::wait::DEADLINE`).
    pub async fn next_open(&mut self) -> String {
        crate::wait::within(
            "an OPEN at the agent",
            crate::wait::DEADLINE,
            self.opened.recv(),
        )
        .await
        .expect("the bridge is running")
    }
}

/// Serves the streams of `agent` (after its HELLO_ACK): an OPEN for a connector in `targets`
/// is connected there, any other is answered with RST `connect_failed`.
pub fn bridge(mut agent: MockAgent<TcpStream>, targets: HashMap<String, SocketAddr>) -> Bridge {
    let (opened_tx, opened) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        // Bytes (or EOF: `None`) read from a target, by stream id.
        let (tx, mut rx) = mpsc::unbounded_channel::<(u32, Option<Vec<u8>>)>();
        let mut writers: HashMap<u32, OwnedWriteHalf> = HashMap::new();
        loop {
            tokio::select! {
                f = agent.recv() => match f {
                    Frame::Open { id, connector, .. } => {
                        let _ = opened_tx.send(connector.clone());
                        let sock = match targets.get(&connector) {
                            Some(addr) => TcpStream::connect(addr).await.ok(),
                            None => None,
                        };
                        let Some(sock) = sock else {
                            let rst = Frame::Rst { id, code: RstCode::ConnectFailed, reason: String::new() };
                            agent.send(&rst).await;
                            continue;
                        };
                        let (mut r, w) = sock.into_split();
                        writers.insert(id, w);
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 16 * 1024];
                            loop {
                                match r.read(&mut buf).await {
                                    Ok(0) | Err(_) => {
                                        let _ = tx.send((id, None));
                                        break;
                                    }
                                    Ok(n) => {
                                        let _ = tx.send((id, Some(buf[..n].to_vec())));
                                    }
                                }
                            }
                        });
                    }
                    Frame::Data { id, payload } => {
                        if let Some(w) = writers.get_mut(&id) {
                            let _ = w.write_all(&payload).await;
                        }
                    }
                    Frame::Fin { id, .. } => {
                        if let Some(w) = writers.get_mut(&id) {
                            let _ = w.shutdown().await;
                        }
                    }
                    Frame::Rst { id, .. } => {
                        writers.remove(&id);
                    }
                    _ => {}
                },
                Some((id, bytes)) = rx.recv() => match bytes {
                    Some(b) => agent.send(&data(id, &b)).await,
                    None => agent.send(&Frame::Fin { id, dir: Dir::A2c }).await,
                },
            }
        }
    });
    Bridge { opened, task }
}

/// A TLS server presenting a certificate from `ca` for `names`; on each connection it reads
/// until the client's first bytes arrive and answers `"<label>: <what it read>"`, then
/// closes (close_notify).
pub async fn tls_echo_target(ca: &Ca, names: &[&str], label: &str) -> (SocketAddr, JoinHandle<()>) {
    let acceptor = ca.acceptor(names, None);
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a TLS target");
    let addr = l.local_addr().expect("target address");
    let label = label.to_owned();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let (acceptor, label) = (acceptor.clone(), label.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let mut buf = [0u8; 256];
                let Ok(n) = tls.read(&mut buf).await else {
                    return;
                };
                let reply = format!("{label}: {}", String::from_utf8_lossy(&buf[..n]));
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, task)
}
