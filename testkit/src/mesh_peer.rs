//! A raw mesh peer for relay-mesh tests: a WebSocket client on a relay's `/mesh` that claims a
//! `replica_id` (header `x-nowconnect-replica-id`), over plain TCP or TLS with any client
//! certificate or none, then sends and reads v2 frames (FORWARD among them) one by one.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use nowconnect_shared::{binary, Frame, Limits};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::mock_agent::RECV_TIMEOUT;
use crate::pki::server_name;
use crate::wait::within;

/// How an upgrade to `/mesh` ended.
#[derive(Debug)]
pub enum Outcome<S> {
    /// 101: linked.
    Linked(Box<MeshPeer<S>>),
    /// The relay answered with this HTTP status.
    Refused(u16),
    /// TLS or the connection failed before an HTTP answer (e.g. a certificate refused).
    Failed(String),
}

impl<S> Outcome<S> {
    pub fn is_linked(&self) -> bool {
        matches!(self, Outcome::Linked(_))
    }
}

/// A linked raw peer.
#[derive(Debug)]
pub struct MeshPeer<S> {
    pub ws: WebSocketStream<S>,
}

async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    sock: S,
    url: &str,
    replica_id: &str,
) -> Outcome<S> {
    let mut req = url.into_client_request().expect("a ws:// or wss:// URL");
    req.headers_mut().insert(
        "x-nowconnect-replica-id",
        HeaderValue::from_str(replica_id).expect("header value"),
    );
    match within(
        "the /mesh upgrade",
        RECV_TIMEOUT,
        tokio_tungstenite::client_async(req, sock),
    )
    .await
    {
        Ok((ws, _)) => Outcome::Linked(Box::new(MeshPeer { ws })),
        Err(WsError::Http(resp)) => Outcome::Refused(resp.status().as_u16()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// `ws://addr/mesh` as `replica_id`.
pub async fn plain(addr: SocketAddr, replica_id: &str) -> Outcome<TcpStream> {
    let sock = crate::net::connect(addr).await;
    upgrade(sock, &format!("ws://{addr}/mesh"), replica_id).await
}

/// `wss://addr/mesh` as `replica_id`, verifying the relay as `server` with `tls` (which holds
/// the client certificate, if any).
pub async fn tls(
    addr: SocketAddr,
    server: &str,
    tls: ClientConfig,
    replica_id: &str,
) -> Outcome<tokio_rustls::client::TlsStream<TcpStream>> {
    let sock = crate::net::connect(addr).await;
    let connector = TlsConnector::from(Arc::new(tls));
    let stream = match within(
        "the mesh TLS handshake",
        RECV_TIMEOUT,
        connector.connect(server_name(server), sock),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    // A client certificate the server refuses surfaces at the first read, i.e. here.
    upgrade(stream, &format!("wss://{addr}/mesh"), replica_id).await
}

impl<S: AsyncRead + AsyncWrite + Unpin> MeshPeer<S> {
    pub async fn send(&mut self, f: &Frame) {
        let b = binary::encode_to_bytes(f, &Limits::default()).expect("frame encodes");
        self.ws.send(Message::Binary(b)).await.expect("mesh send");
    }

    /// The next frame within [`RECV_TIMEOUT`] (pings skipped); `None` when the link closed.
    pub async fn recv(&mut self) -> Option<Frame> {
        within("a frame from the relay's mesh", RECV_TIMEOUT, async {
            loop {
                match self.ws.next().await? {
                    Ok(Message::Binary(b)) => {
                        return Some(binary::decode(&b, &Limits::default()).expect("a v2 frame"))
                    }
                    Ok(Message::Close(_)) | Err(_) => return None,
                    Ok(_) => continue,
                }
            }
        })
        .await
    }
}
