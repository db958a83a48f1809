//! A raw-frame relay for agent tests: a WebSocket server on 127.0.0.1:0 (or `[::1]:0`) that
//! accepts the agent's tunnel, records what the agent sent in its upgrade, selects a
//! subprotocol like our relay or like a reference hub, and speaks frames one by one (v2 binary or
//! v1 JSON, via nowconnect-shared).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use nowconnect_shared::{Frame, Version};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::frames::Codec;
use crate::wait::within;

/// How long the mock waits for the agent (a connection, a frame).
pub const STEP: Duration = Duration::from_secs(10);

/// Which subprotocol the mock selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// As our relay: v2 if offered, else v1 if offered.
    Negotiate,
    /// As a reference hub: never answer with a subprotocol.
    Nothing,
}

/// What the agent sent in its upgrade request.
#[derive(Debug, Default, Clone)]
pub struct Upgrade {
    pub offered: Option<String>,
    pub authorization: Option<String>,
    pub path: String,
}

/// A listening mock relay.
#[derive(Debug)]
pub struct MockRelay {
    listener: TcpListener,
    pub addr: SocketAddr,
}

impl MockRelay {
    pub async fn bind() -> MockRelay {
        MockRelay::bind_on("127.0.0.1:0").await
    }

    /// Binds on `addr` (e.g. `[::1]:0`).
    pub async fn bind_on(addr: &str) -> MockRelay {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().expect("local address");
        MockRelay { listener, addr }
    }

    /// `ws://<addr>/tunnel`.
    pub fn url(&self) -> String {
        format!("ws://{}/tunnel", self.addr)
    }

    /// Accepts one TCP connection (for tests that speak TLS or raw HTTP on it), with
    /// `TCP_NODELAY` set (see [`crate::net::connect`]).
    pub async fn accept_tcp(&self) -> TcpStream {
        self.accept_tcp_within(STEP).await
    }

    /// [`accept_tcp`](MockRelay::accept_tcp), waiting up to `timeout` for the agent.
    pub async fn accept_tcp_within(&self, timeout: Duration) -> TcpStream {
        let (s, _) = within("the agent's connection", timeout, self.listener.accept())
            .await
            .expect("accept");
        s.set_nodelay(true).expect("TCP_NODELAY");
        s
    }

    /// Accepts one agent connection and completes the upgrade.
    pub async fn accept(&self, select: Select) -> MockConn<TcpStream> {
        self.accept_within(STEP, select).await
    }

    /// [`accept`](MockRelay::accept), waiting up to `timeout` for the agent to connect.
    pub async fn accept_within(&self, timeout: Duration, select: Select) -> MockConn<TcpStream> {
        let sock = self.accept_tcp_within(timeout).await;
        let (ws, version, upgrade) = upgrade(sock, select).await;
        MockConn::new(ws, version, upgrade)
    }
}

/// Server side of the WebSocket upgrade on any stream (TCP or TLS): records what the agent sent
/// and selects a subprotocol as `select` says.
// The callback's error type is tungstenite's (an HTTP response), not ours to shrink.
#[allow(clippy::result_large_err)]
pub async fn upgrade<S>(sock: S, select: Select) -> (WebSocketStream<S>, Version, Upgrade)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut upgrade = Upgrade::default();
    let mut version = Version::V1;
    let cb = |req: &Request, mut resp: Response| {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        upgrade.path = req.uri().path().to_owned();
        upgrade.offered = header("sec-websocket-protocol");
        upgrade.authorization = header("authorization");
        if select == Select::Negotiate {
            let offered = upgrade.offered.clone().unwrap_or_default();
            let pick = if offered.contains("nowconnect.v2") {
                version = Version::V2;
                Some("nowconnect.v2")
            } else if offered.contains("nowconnect.v1") {
                Some("nowconnect.v1")
            } else {
                None
            };
            if let Some(p) = pick {
                resp.headers_mut()
                    .insert("sec-websocket-protocol", HeaderValue::from_static(p));
            }
        }
        Ok(resp)
    };
    let ws = within(
        "the WebSocket upgrade",
        STEP,
        tokio_tungstenite::accept_hdr_async(sock, cb),
    )
    .await
    .expect("upgrade");
    (ws, version, upgrade)
}

/// One accepted tunnel, speaking frames in the selected version.
pub struct MockConn<S> {
    pub ws: WebSocketStream<S>,
    pub version: Version,
    pub upgrade: Upgrade,
    codec: Codec,
}

impl<S> std::fmt::Debug for MockConn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockConn")
            .field("version", &self.version)
            .field("upgrade", &self.upgrade)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> MockConn<S> {
    pub fn new(ws: WebSocketStream<S>, version: Version, upgrade: Upgrade) -> Self {
        MockConn {
            ws,
            version,
            upgrade,
            codec: Codec::new(version),
        }
    }

    pub async fn send(&mut self, f: Frame) {
        let msg = self.codec.encode(&f);
        self.ws.send(msg).await.expect("send to the agent");
    }

    /// Sends a WebSocket Close with `code` (e.g. 1001 Going Away, as a relay that shuts down).
    pub async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        };
        self.ws
            .send(Message::Close(Some(frame)))
            .await
            .expect("close to the agent");
    }

    /// Next frame, skipping pings and pongs; `None` when the agent closed the WebSocket (or it
    /// failed). Panics after [`STEP`].
    pub async fn try_recv(&mut self) -> Option<Frame> {
        loop {
            let msg = within("a frame from the agent", STEP, self.ws.next()).await?;
            let msg = msg.ok()?;
            if let Some(f) = self.codec.decode(&msg) {
                return Some(f);
            }
            if let Message::Close(_) = msg {
                return None;
            }
        }
    }

    pub async fn recv(&mut self) -> Frame {
        self.try_recv().await.expect("agent closed the tunnel")
    }

    /// Expects HELLO, answers HELLO_ACK; returns the HELLO's agent id.
    pub async fn hello_ack(&mut self) -> String {
        let Frame::Hello(h) = self.recv().await else {
            panic!("the first frame must be HELLO");
        };
        self.send(Frame::HelloAck).await;
        h.agent_id
    }

    /// Sends `data` on stream `id` and waits for the same bytes back (an echo target behind
    /// the agent; a payload within one window). WINDOW frames are skipped.
    pub async fn echo_roundtrip(&mut self, id: u32, data: &[u8]) {
        self.send(Frame::Data {
            id,
            payload: Bytes::copy_from_slice(data),
        })
        .await;
        let mut got = Vec::new();
        while got.len() < data.len() {
            match self.recv().await {
                Frame::Data { id: i, payload } if i == id => got.extend_from_slice(&payload),
                Frame::Window { .. } => {}
                other => panic!("unexpected frame: {other:?}"),
            }
        }
        assert_eq!(got, data);
    }
}
