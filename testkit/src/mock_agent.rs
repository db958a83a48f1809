//! A raw-frame agent for relay tests: a WebSocket client on the relay's `/tunnel` that the test
//! drives frame by frame, v2 (binary frames) or v1 (JSON text frames), encoded and decoded by
//! nowconnect-shared; plus raw JSON for tests that pin the v1 wire format itself, the upgrade
//! with a Bearer token from a chosen loopback address, and reading a refusal.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use nowconnect_shared::{Frame, Hello, Version};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::frames::Codec;
use crate::wait::within;

/// How long a receive waits for the relay by default.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// What our agents offer.
pub const OFFER_BOTH: &str = "nowconnect.v2, nowconnect.v1";

pub type Ws<S> = WebSocketStream<S>;

/// Upgrades `sock` to a WebSocket on `url` with `Sec-WebSocket-Protocol: offer` (none when
/// `None`) and `Authorization: Bearer token` (when given). Returns the socket and the
/// subprotocol the server selected.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    sock: S,
    url: &str,
    offer: Option<&str>,
    token: Option<&str>,
) -> Result<(Ws<S>, Option<String>), WsError> {
    let mut req = url.into_client_request().expect("a ws:// or wss:// URL");
    if let Some(o) = offer {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(o).expect("header value"),
        );
    }
    if let Some(t) = token {
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {t}")).expect("header value"),
        );
    }
    let (ws, resp) = within(
        "the WebSocket upgrade",
        RECV_TIMEOUT,
        tokio_tungstenite::client_async(req, sock),
    )
    .await?;
    let selected = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((ws, selected))
}

/// Opens `ws://addr/tunnel` offering `offer` (TCP_NODELAY set, see [`crate::net::connect`]);
/// returns the socket and the selected subprotocol.
pub async fn connect(
    addr: SocketAddr,
    offer: Option<&str>,
) -> Result<(Ws<TcpStream>, Option<String>), WsError> {
    let sock = crate::net::connect(addr).await;
    handshake(sock, &format!("ws://{addr}/tunnel"), offer, None).await
}

/// Upgrades `/tunnel` offering v2 and v1, with a Bearer `token` when given, from loopback
/// address `from` when given.
pub async fn upgrade(
    addr: SocketAddr,
    token: Option<&str>,
    from: Option<IpAddr>,
) -> Result<Ws<TcpStream>, WsError> {
    let sock = match from {
        Some(ip) => crate::net::connect_from(ip, addr).await,
        None => crate::net::connect(addr).await,
    };
    let url = format!("ws://{addr}/tunnel");
    handshake(sock, &url, Some(OFFER_BOTH), token)
        .await
        .map(|(ws, _)| ws)
}

/// The refusal of an upgrade: (status, body, WWW-Authenticate); panics on any other error.
pub fn refusal(err: WsError) -> (u16, String, String) {
    match err {
        WsError::Http(resp) => {
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            let www = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (resp.status().as_u16(), body, www)
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

/// A DATA frame.
pub fn data(id: u32, bytes: &[u8]) -> Frame {
    Frame::Data {
        id,
        payload: Bytes::copy_from_slice(bytes),
    }
}

/// An agent driven frame by frame.
pub struct MockAgent<S> {
    /// The socket itself, for tests that read pings or close frames.
    pub ws: Ws<S>,
    pub version: Version,
    codec: Codec,
}

impl<S> std::fmt::Debug for MockAgent<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockAgent")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Connects as a dev-bypass v2 agent and says HELLO for `connectors`.
pub async fn v2_agent(
    tunnel: SocketAddr,
    agent_id: &str,
    connectors: &[&str],
) -> MockAgent<TcpStream> {
    let (ws, proto) = connect(tunnel, Some(OFFER_BOTH)).await.expect("upgrade");
    assert_eq!(proto.as_deref(), Some("nowconnect.v2"));
    let mut a = MockAgent::v2(ws);
    a.hello(agent_id, connectors).await;
    a
}

impl<S: AsyncRead + AsyncWrite + Unpin> MockAgent<S> {
    pub fn new(ws: Ws<S>, version: Version) -> Self {
        MockAgent {
            ws,
            version,
            codec: Codec::new(version),
        }
    }

    /// On a tunnel that selected v2.
    pub fn v2(ws: Ws<S>) -> Self {
        MockAgent::new(ws, Version::V2)
    }

    /// Sends one frame in the tunnel's encoding.
    pub async fn send(&mut self, f: &Frame) {
        let msg = self.codec.encode(f);
        self.ws.send(msg).await.expect("send to the relay");
    }

    /// Sends one frame without flushing, or `Err` once the relay is gone: a flood that must
    /// stop when the relay closes, or when it stops reading for `within`.
    pub async fn try_feed(&mut self, f: &Frame, within: Duration) -> Result<(), String> {
        let msg = self.codec.encode(f);
        self.try_feed_msg(msg, within).await
    }

    /// [`MockAgent::try_feed`] for a message as is (undecodable payloads).
    pub async fn try_feed_msg(&mut self, msg: Message, within: Duration) -> Result<(), String> {
        match tokio::time::timeout(within, self.ws.feed(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the relay stopped reading".into()),
        }
    }

    /// Flushes what [`MockAgent::try_feed`] queued.
    pub async fn try_flush(&mut self, within: Duration) -> Result<(), String> {
        match tokio::time::timeout(within, self.ws.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the relay stopped reading".into()),
        }
    }

    /// The next protocol frame (pings skipped); panics after [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> Frame {
        self.try_recv(RECV_TIMEOUT)
            .await
            .expect("a frame from the relay before the deadline")
    }

    /// The next protocol frame, or `None` when the tunnel closed, failed or `within` passed.
    pub async fn try_recv(&mut self, within: Duration) -> Option<Frame> {
        let deadline = Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            let msg = msg.ok()?;
            if let Some(f) = self.codec.decode(&msg) {
                return Some(f);
            }
            if let Message::Close(_) = msg {
                return None;
            }
        }
    }

    /// The close frame the relay sends (code and reason); panics on a protocol frame first,
    /// on a connection ending without one, or after [`RECV_TIMEOUT`].
    pub async fn closed_with(&mut self) -> (CloseCode, String) {
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a close frame before the deadline");
            match msg {
                Some(Ok(Message::Close(Some(f)))) => return (f.code, f.reason.to_string()),
                Some(Ok(Message::Binary(b))) => panic!("frame on a closing tunnel: {b:?}"),
                Some(Ok(Message::Text(t))) => panic!("frame on a closing tunnel: {t}"),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// The close code of the relay's close frame, or `None` if the connection ends without one.
    pub async fn close_code(&mut self) -> Option<u16> {
        within("the tunnel to close", RECV_TIMEOUT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            }
        })
        .await
    }

    /// Sends HELLO (version "test").
    pub async fn send_hello(&mut self, agent_id: &str, connectors: &[&str]) {
        self.send(&Frame::Hello(Hello {
            agent_id: agent_id.to_owned(),
            connectors: connectors.iter().map(|s| s.to_string()).collect(),
            ver: "test".to_owned(),
        }))
        .await;
    }

    /// HELLO, then expects HELLO_ACK.
    pub async fn hello(&mut self, agent_id: &str, connectors: &[&str]) {
        self.send_hello(agent_id, connectors).await;
        assert_eq!(self.recv().await, Frame::HelloAck);
    }

    /// HELLO, then the relay's answer: `Ok` for HELLO_ACK, the close frame's code and reason
    /// for a refusal; panics on any other frame, a connection ending without a close frame, or
    /// after [`RECV_TIMEOUT`].
    pub async fn hello_answer(
        &mut self,
        agent_id: &str,
        connectors: &[&str],
    ) -> Result<(), (CloseCode, String)> {
        self.send_hello(agent_id, connectors).await;
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("an answer to HELLO before the deadline");
            let msg = match msg {
                Some(Ok(Message::Close(Some(f)))) => return Err((f.code, f.reason.to_string())),
                Some(Ok(m)) => m,
                other => panic!("expected HELLO_ACK or a close frame, got {other:?}"),
            };
            match self.codec.decode(&msg) {
                Some(Frame::HelloAck) => return Ok(()),
                Some(other) => panic!("expected HELLO_ACK, got {other:?}"),
                None => continue,
            }
        }
    }

    /// Expects an OPEN for `connector` from a 127.0.0.1 client; returns its stream id.
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

    /// The next OPEN, which must be for `connector`, skipping what earlier (closed) streams
    /// left queued (FIN, RST, WINDOW); returns its id.
    pub async fn next_open(&mut self, connector: &str) -> u32 {
        loop {
            match self.recv().await {
                Frame::Open {
                    id, connector: c, ..
                } => {
                    assert_eq!(c, connector, "OPEN for another connector");
                    return id;
                }
                Frame::Fin { .. } | Frame::Rst { .. } | Frame::Window { .. } => continue,
                other => panic!("expected OPEN, got {other:?}"),
            }
        }
    }

    /// One round trip on stream `id`: `client` writes "ping", which must arrive as DATA; the
    /// agent answers "pong", which the client must read.
    pub async fn ping_pong(&mut self, client: &mut TcpStream, id: u32) {
        client.write_all(b"ping").await.expect("client write");
        match self.recv().await {
            Frame::Data { id: got, payload } => {
                assert_eq!((got, &payload[..]), (id, &b"ping"[..]));
            }
            other => panic!("expected DATA, got {other:?}"),
        }
        self.send(&data(id, b"pong")).await;
        let mut buf = [0u8; 4];
        within(
            "pong at the client",
            RECV_TIMEOUT,
            client.read_exact(&mut buf),
        )
        .await
        .expect("client read");
        assert_eq!(&buf, b"pong");
    }

    /// Sends a JSON text message as is (v1 wire-format tests).
    pub async fn send_json(&mut self, v: &Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send to the relay");
    }

    /// The next text message parsed as JSON (pings skipped); panics on anything else.
    pub async fn recv_json(&mut self) -> Value {
        loop {
            let msg = within("a JSON frame from the relay", RECV_TIMEOUT, self.ws.next())
                .await
                .expect("tunnel open")
                .expect("WebSocket message");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON text"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a JSON text message, got {other:?}"),
            }
        }
    }
}
