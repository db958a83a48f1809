//! Test helpers: start a relay on loopback port 0, and a raw agent speaking frames by hand.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use nowconnect_relay::{start, RelayConfig, RelayHandle};
use nowconnect_shared::{binary, Frame, Hello, Limits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub mod idp;
pub mod portal;

pub const T: Duration = Duration::from_secs(5);

/// Minimal config: one listener `ldap` for connector `addomain`, dev bypass on loopback.
pub fn yaml(extra: &str) -> String {
    format!(
        "listeners:\n  - name: ldap\n    bind: 127.0.0.1:0\n    connector: addomain\n\
         tunnel:\n  host: 127.0.0.1\n  port: 0\n{extra}"
    )
}

pub const DEV: &str = "security:\n  dev_bypass: true\n";

pub async fn relay(extra: &str) -> RelayHandle {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("NC_TEST_LOG").unwrap_or_else(|_| "off".into()),
        ))
        .with_test_writer()
        .try_init();
    let cfg = RelayConfig::from_yaml_str(&yaml(extra)).expect("valid config");
    start(cfg).await.expect("relay starts")
}

pub async fn dev_relay() -> RelayHandle {
    relay(DEV).await
}

/// Waits for `cond` with a deadline instead of sleeping a fixed time.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub type Ws<S> = WebSocketStream<S>;

/// Opens `/tunnel` with `Sec-WebSocket-Protocol: offer` (none when `None`).
pub async fn ws_connect(
    addr: SocketAddr,
    offer: Option<&str>,
) -> Result<
    (
        Ws<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
        Option<String>,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let mut req = format!("ws://{addr}/tunnel").into_client_request().unwrap();
    if let Some(o) = offer {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(o).unwrap());
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
    let proto = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    Ok((ws, proto))
}

/// A v2 agent driven frame by frame.
pub struct V2Agent<S> {
    pub ws: Ws<S>,
    limits: Limits,
}

impl<S: AsyncRead + AsyncWrite + Unpin> V2Agent<S> {
    pub fn new(ws: Ws<S>) -> Self {
        V2Agent {
            ws,
            limits: Limits::default(),
        }
    }

    pub async fn send(&mut self, f: &Frame) {
        let b = binary::encode_to_bytes(f, &self.limits).unwrap();
        self.ws.send(Message::Binary(b)).await.unwrap();
    }

    /// Next protocol frame (pings skipped); panics after the deadline.
    pub async fn recv(&mut self) -> Frame {
        self.try_recv(T).await.expect("a frame before the deadline")
    }

    pub async fn try_recv(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg.ok()? {
                Message::Binary(b) => return Some(binary::decode(&b, &self.limits).unwrap()),
                Message::Close(_) => return None,
                Message::Text(_) => panic!("text message on a v2 tunnel"),
                _ => continue,
            }
        }
    }

    pub async fn hello(&mut self, agent_id: &str, connectors: &[&str]) {
        self.send(&Frame::Hello(Hello {
            agent_id: agent_id.to_owned(),
            connectors: connectors.iter().map(|s| s.to_string()).collect(),
            ver: "test".to_owned(),
        }))
        .await;
        assert_eq!(self.recv().await, Frame::HelloAck);
    }

    /// Waits for an OPEN and returns its stream id.
    pub async fn expect_open(&mut self, connector: &str) -> u32 {
        match self.recv().await {
            Frame::Open {
                id,
                connector: c,
                client_addr,
            } => {
                assert_eq!(c, connector);
                assert!(client_addr.is_some_and(|a| a.starts_with("127.0.0.1:")));
                id
            }
            other => panic!("expected OPEN, got {other:?}"),
        }
    }
}

pub async fn v2_agent(
    relay: &RelayHandle,
    agent_id: &str,
    connectors: &[&str],
) -> V2Agent<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let (ws, proto) = ws_connect(relay.tunnel_addr(), Some("nowconnect.v2, nowconnect.v1"))
        .await
        .expect("upgrade");
    assert_eq!(proto.as_deref(), Some("nowconnect.v2"));
    let mut a = V2Agent::new(ws);
    a.hello(agent_id, connectors).await;
    a
}

pub fn data(id: u32, bytes: &[u8]) -> Frame {
    Frame::Data {
        id,
        payload: Bytes::copy_from_slice(bytes),
    }
}

/// Reads until EOF or error; returns the bytes and whether it ended (within the deadline).
pub async fn read_to_close(sock: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        buf.clear();
        match tokio::time::timeout_at(deadline, sock.read_buf(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(_)) => out.extend_from_slice(&buf),
        }
    }
}

/// Plain HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
