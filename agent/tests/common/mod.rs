//! Test support: a mock relay (WebSocket server speaking raw frames), targets, health probes.
#![allow(dead_code, clippy::result_large_err)]

pub mod edge;
pub mod pki;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nowconnect_shared::subprotocol::Version;
use nowconnect_shared::{binary, Frame, Limits, V1Decoder, V1Encoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const STEP: Duration = Duration::from_secs(10);

/// Awaits `f` or fails the test after `STEP`.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, f).await {
        Ok(t) => t,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Polls `cond` until it is true or the deadline passes.
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("condition never held: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the health port answers right now.
pub async fn health(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.expect("health connect");
    let mut out = String::new();
    within("health answer", s.read_to_string(&mut out))
        .await
        .expect("health read");
    out
}

/// A target that echoes every byte and half-closes when its client does.
pub async fn echo_target() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A port nobody listens on.
pub async fn refused_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

/// Which subprotocol the mock relay selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// As our relay: v2 if offered, else v1 if offered.
    Negotiate,
    /// As a reference hub: never answer with a subprotocol.
    Nothing,
}

/// A listening mock relay.
pub struct MockRelay {
    listener: TcpListener,
    pub addr: SocketAddr,
}

/// What the agent sent in its upgrade request.
#[derive(Debug, Default, Clone)]
pub struct Upgrade {
    pub offered: Option<String>,
    pub authorization: Option<String>,
    pub path: String,
}

pub struct MockConn {
    pub ws: WebSocketStream<TcpStream>,
    pub version: Version,
    pub upgrade: Upgrade,
    enc: V1Encoder,
    dec: V1Decoder,
    limits: Limits,
}

impl MockRelay {
    pub async fn bind() -> MockRelay {
        MockRelay::bind_on("127.0.0.1:0").await
    }

    /// Binds on `addr` (e.g. `[::1]:0`).
    pub async fn bind_on(addr: &str) -> MockRelay {
        let listener = TcpListener::bind(addr).await.expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        MockRelay { listener, addr }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/tunnel", self.addr)
    }

    /// Accepts one TCP connection (for tests that speak TLS or raw HTTP on it).
    pub async fn accept_tcp(&self) -> TcpStream {
        within("agent connection", self.listener.accept())
            .await
            .expect("accept")
            .0
    }

    /// Accepts one agent connection.
    pub async fn accept(&self, select: Select) -> MockConn {
        let (sock, _) = within("agent connection", self.listener.accept())
            .await
            .expect("accept");
        let (ws, version, upgrade) = upgrade(sock, select).await;
        MockConn {
            ws,
            version,
            upgrade,
            enc: V1Encoder::new(Limits::default()),
            dec: V1Decoder::new(Limits::default()),
            limits: Limits::default(),
        }
    }
}

/// Server side of the WebSocket upgrade on any stream (TCP or TLS): records what the agent sent
/// and selects a subprotocol as `select` says.
pub async fn upgrade<S>(sock: S, select: Select) -> (WebSocketStream<S>, Version, Upgrade)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut upgrade = Upgrade::default();
    let mut version = Version::V1;
    let cb = |req: &Request, mut resp: Response| {
        upgrade.path = req.uri().path().to_owned();
        upgrade.offered = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        upgrade.authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
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
        "WebSocket upgrade",
        tokio_tungstenite::accept_hdr_async(sock, cb),
    )
    .await
    .expect("upgrade");
    (ws, version, upgrade)
}

/// On a v2 tunnel over any stream: expects HELLO, answers HELLO_ACK; returns the HELLO's agent id.
pub async fn v2_hello_ack<S>(ws: &mut WebSocketStream<S>) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = Limits::default();
    loop {
        let msg = within("HELLO", ws.next())
            .await
            .expect("agent closed before HELLO")
            .expect("WebSocket message");
        if let Message::Binary(b) = msg {
            let Frame::Hello(h) = binary::decode(&b, &limits).expect("v2 frame") else {
                panic!("first frame must be HELLO");
            };
            let ack = binary::encode_to_bytes(&Frame::HelloAck, &limits).expect("encode");
            ws.send(Message::Binary(ack)).await.expect("send HELLO_ACK");
            return h.agent_id;
        }
    }
}

impl MockConn {
    pub async fn send(&mut self, f: Frame) {
        let msg = match self.version {
            Version::V2 => {
                Message::Binary(binary::encode_to_bytes(&f, &self.limits).expect("encode"))
            }
            Version::V1 => Message::text(self.enc.encode(&f).expect("encode")),
        };
        self.ws.send(msg).await.expect("relay send");
    }

    /// Next frame, skipping pings/pongs; `None` when the agent closed the WebSocket.
    pub async fn try_recv(&mut self) -> Option<Frame> {
        loop {
            let msg = within("a frame from the agent", self.ws.next()).await?;
            match msg.ok()? {
                Message::Binary(b) => {
                    assert_eq!(self.version, Version::V2, "binary frame on a v1 tunnel");
                    return Some(binary::decode(&b, &self.limits).expect("valid v2 frame"));
                }
                Message::Text(t) => {
                    assert_eq!(self.version, Version::V1, "text frame on a v2 tunnel");
                    return Some(self.dec.decode(t.as_str()).expect("valid v1 frame"));
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    pub async fn recv(&mut self) -> Frame {
        self.try_recv().await.expect("agent closed the tunnel")
    }
}

/// Minimal agent YAML for a mock relay at `url`.
pub fn agent_yaml(url: &str, protocol: &str, targets: &[(&str, SocketAddr)]) -> String {
    let mut y = format!(
        "tunnel:\n  url: {url}\n  agent_id: premise-01\n  allow_insecure_ws: true\n  protocol: {protocol}\n  exported_connectors: [{}]\n",
        targets.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    );
    y.push_str("targets:\n");
    for (name, addr) in targets {
        y.push_str(&format!(
            "  {name}: {{host: '{}', port: {}}}\n",
            addr.ip(),
            addr.port()
        ));
    }
    y.push_str("health: {host: 127.0.0.1, port: 0}\n");
    y.push_str(
        "limits: {connect_timeout_ms: 2000, reconnect_initial_ms: 50, reconnect_max_ms: 200}\n",
    );
    y
}
