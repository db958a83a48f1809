//! One agent tunnel (an upgraded `/tunnel` WebSocket): HELLO, frame dispatch, keepalive.
//!
//! The session task owns the stream table (id -> channel into the stream's task) and the read
//! half of the WebSocket; it never waits on a single stream (stream channels are unbounded, and
//! each stream bounds what it holds: credit in v2, `queue_depth_per_cid` in v1). A separate
//! writer task owns the write half, batches queued frames (feed, flush when the queue drains)
//! and sends pings. The session is also where listeners hand over new client connections
//! ([`TunnelCmd::Open`]), so the stream table has exactly one owner. The session waits on the
//! writer queue only for HELLO_ACK and its own close frame, never per stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use nowconnect_shared::binary;
use nowconnect_shared::{DecodeError, Frame, Hello, Limits, RstCode, StreamId, V1Codec, Version};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::abuse::PendingSlot;
use crate::audit::{Action, Audit, Event};
use crate::auth::{Grants, Identity};
use crate::listener::{ConnGuard, ListenerCtx};
use crate::metrics::{CodeLabel, DirLabel, ReasonLabel, VersionLabel};
use crate::pdp::Pdp;
use crate::registry::{AgentHandle, Sessions, TunnelInfo};
use crate::state::State;
use crate::stream::{self, Inbound, StreamCtx};
use crate::Shared;

/// Frames queued for the writer. Bounded: a slow tunnel slows every stream's reads (not its
/// writes to clients), which is the backpressure we want. 256 x 64 KiB caps it at 16 MiB.
const OUT_QUEUE: usize = 256;
/// Most frames fed to the WebSocket before a flush, so a busy queue still flushes regularly.
const MAX_BATCH: usize = 64;
/// The agent must send HELLO this soon after the upgrade.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// "Never" for timers: a year.
const FAR: Duration = Duration::from_secs(86_400 * 365);
/// Largest stream id (ids stay below 2^31; v1 cids of the peer's own use the upper half).
const MAX_STREAM_ID: StreamId = (1 << 31) - 1;

/// What listeners and streams ask of a tunnel session.
#[derive(Debug)]
pub(crate) enum TunnelCmd {
    /// A client connected to a listener of a connector this agent serves.
    Open {
        sock: TcpStream,
        peer: SocketAddr,
        listener: Arc<ListenerCtx>,
        guard: ConnGuard,
    },
    /// A stream task ended; forget its id.
    Closed(StreamId),
}

/// Items for the writer task.
#[derive(Debug)]
pub(crate) enum Out {
    /// An already encoded v2 frame (DATA read straight after a reserved header).
    Raw(Bytes),
    /// A frame to encode in the tunnel's version.
    Frame(Frame),
    /// v1: drop the outgoing `seq` state of a finished stream.
    Forget(StreamId),
    /// Send this close frame, then stop.
    Close(CloseFrame),
}

/// What the upgrade established about a tunnel before its HELLO.
#[derive(Debug)]
pub(crate) struct Admission {
    /// Who the token says the agent is; `None` under the dev bypass.
    pub identity: Option<Identity>,
    /// The source's pending-attempt slot, released once HELLO is accepted (or refused).
    pub slot: PendingSlot,
}

/// What every stream of one tunnel shares.
#[derive(Debug)]
pub(crate) struct TunnelShared {
    pub version: Version,
    pub agent_id: Arc<str>,
    pub tunnel_id: u64,
    /// Connectors the token grants, checked again on every OPEN; `None` when
    /// `require_connector_scopes` is off (or under the dev bypass).
    pub grants: Option<Arc<Grants>>,
    pub pdp: Option<Arc<Pdp>>,
    pub audit: Arc<Audit>,
    pub out: mpsc::Sender<Out>,
    pub cmd: mpsc::UnboundedSender<TunnelCmd>,
    /// Cancelled when the tunnel ends (or the relay stops): streams close at once.
    pub token: CancellationToken,
    /// Open streams on this tunnel (read by the registry's least-streams pick).
    pub active: Arc<AtomicUsize>,
    pub max_payload: usize,
    pub idle_timeout: Option<Duration>,
    pub queue_depth: usize,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Policies (read per stream: PDP on/off).
    pub state: Arc<State>,
    /// Live streams, for the portal.
    pub sessions: Arc<Sessions>,
    pub info: Arc<TunnelInfo>,
}

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;
type Source<S> = SplitStream<WebSocketStream<S>>;

/// A close frame; the reason is cut to the 123 bytes a WebSocket close frame can carry.
fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: reason[..end].into(),
    }
}

/// Runs one tunnel until it ends. Never returns an error: every ending is logged and counted.
pub(crate) async fn run<S>(
    ws: WebSocketStream<S>,
    version: Version,
    peer: SocketAddr,
    shared: Arc<Shared>,
    admission: Admission,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tunnel_id = shared.next_tunnel_id.fetch_add(1, Ordering::Relaxed);
    let token = shared.root.child_token();
    let (sink, mut source) = ws.split();
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let writer = shared.tasks.spawn(writer(
        sink,
        out_rx,
        version,
        token.clone(),
        shared.cfg.tunnel.ping_interval,
    ));
    let mut codec = V1Codec::new(Limits::default());

    let hello =
        match tokio::time::timeout(HELLO_TIMEOUT, read_hello(&mut source, version, &mut codec))
            .await
        {
            Ok(Ok(hello)) => hello,
            Ok(Err(why)) => {
                warn!(event = "hello_refused", %peer, reason = %why, "agent tunnel refused");
                refuse_hello(
                    &shared,
                    peer,
                    tunnel_id,
                    &admission,
                    "bad_hello",
                    None,
                    why.clone(),
                );
                close_and_stop(
                    &out_tx,
                    writer,
                    &token,
                    close_frame(CloseCode::Policy, &why),
                )
                .await;
                return;
            }
            Err(_) => {
                warn!(event = "hello_timeout", %peer, "agent sent no HELLO in time");
                refuse_hello(
                    &shared,
                    peer,
                    tunnel_id,
                    &admission,
                    "hello_timeout",
                    None,
                    "no HELLO in time".into(),
                );
                close_and_stop(
                    &out_tx,
                    writer,
                    &token,
                    close_frame(CloseCode::Policy, "HELLO expected"),
                )
                .await;
                return;
            }
        };

    // An operator blocked this agent_id (checked here too for the dev bypass and for a block
    // that landed between the upgrade and HELLO); then HELLO reconciliation: the token names the
    // agent and may limit its connectors.
    let refusal = if shared.state.is_blocked(&hello.agent_id) {
        Some((
            "agent_blocked",
            format!("agent_id `{}` is blocked", hello.agent_id),
        ))
    } else if let Some(id) = &admission.identity {
        if hello.agent_id != id.agent_id {
            Some((
                "agent_id_mismatch",
                format!(
                    "agent_id `{}` in HELLO does not match the token's `{}`",
                    hello.agent_id, id.agent_id
                ),
            ))
        } else if shared.state.connector_scopes() {
            hello
                .connectors
                .iter()
                .find(|c| !id.grants.allows(c))
                .map(|c| {
                    (
                        "connector_not_granted",
                        format!("connector `{c}` is not granted by the token"),
                    )
                })
        } else {
            None
        }
    } else {
        None
    };
    if let Some((reason, why)) = refusal {
        warn!(event = "hello_refused", %peer, agent_id = %hello.agent_id, reason, "{why}");
        refuse_hello(
            &shared,
            peer,
            tunnel_id,
            &admission,
            reason,
            Some(&hello.agent_id),
            why.clone(),
        );
        close_and_stop(
            &out_tx,
            writer,
            &token,
            close_frame(CloseCode::Policy, &why),
        )
        .await;
        return;
    }
    let Admission { identity, slot } = admission;

    // HELLO_ACK goes into the writer queue before the agent is registered, so it precedes
    // every OPEN on the wire.
    if out_tx.send(Out::Frame(Frame::HelloAck)).await.is_err() {
        token.cancel();
        return;
    }
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
    let active = Arc::new(AtomicUsize::new(0));
    let agent_id: Arc<str> = Arc::from(hello.agent_id.as_str());
    let info = Arc::new(TunnelInfo {
        tunnel_id,
        agent_id: agent_id.clone(),
        connectors: hello.connectors.clone(),
        peer,
        since_ms: crate::unix_ms(),
        protocol: version.name(),
        agent_version: hello.ver.clone(),
        active: active.clone(),
        closed_c2a: Default::default(),
        closed_a2c: Default::default(),
        kick: CancellationToken::new(),
    });
    let handle = AgentHandle {
        tunnel_id,
        agent_id: agent_id.clone(),
        cmd: cmd_tx.clone(),
        active: active.clone(),
        info: info.clone(),
    };
    let superseded = shared.registry.register(&handle, &hello.connectors);
    // An accepted HELLO ends the unauthenticated phase for the source's pending count.
    drop(slot);
    let mut event = Event::new(Action::Hello, true)
        .agent(&agent_id)
        .source(peer)
        .tunnel(tunnel_id)
        .detail(format!("connectors={}", hello.connectors.join(",")));
    if identity.is_none() {
        event = event.reason("dev_bypass");
    }
    if !superseded.is_empty() {
        event = event.detail(format!(
            "connectors={}; superseded tunnels {:?} get no new streams",
            hello.connectors.join(","),
            superseded
        ));
    }
    shared.audit.record(event);
    let m = &shared.metrics;
    m.agent_connects
        .get_or_create(&VersionLabel {
            version: version.name(),
        })
        .inc();
    m.agents_connected.inc();
    info!(
        event = "agent_connected",
        agent_id = %agent_id,
        connectors = ?hello.connectors,
        ver = %hello.ver,
        protocol = version.name(),
        %peer,
        tunnel_id,
        "agent tunnel registered"
    );
    if !superseded.is_empty() {
        warn!(agent_id = %agent_id, ?superseded, "agent_id connected again; older tunnels get no new streams");
    }

    let grants = identity
        .as_ref()
        .filter(|_| shared.state.connector_scopes())
        .map(|id| id.grants.clone());
    // A tunnel lives as long as its token (plus leeway); the agent reconnects before `exp`.
    // Tokens valid for more than a year are not timed (and cannot overflow the clock).
    let expires = match (&identity, &shared.auth) {
        (Some(id), Some(auth)) => Some(id.remaining(auth.leeway()))
            .filter(|d| *d <= FAR)
            .map(|d| Instant::now() + d),
        _ => None,
    };
    let ctx = Arc::new(TunnelShared {
        version,
        agent_id: agent_id.clone(),
        tunnel_id,
        grants,
        pdp: shared.pdp.clone(),
        audit: shared.audit.clone(),
        out: out_tx.clone(),
        cmd: cmd_tx,
        token: token.clone(),
        active,
        max_payload: shared.cfg.tunnel.max_ws_payload,
        idle_timeout: shared.cfg.limits.idle_timeout,
        queue_depth: shared.cfg.limits.queue_depth_per_cid,
        metrics: shared.metrics.clone(),
        state: shared.state.clone(),
        sessions: shared.sessions.clone(),
        info: info.clone(),
    });
    let mut session = Session {
        ctx,
        shared: shared.clone(),
        streams: HashMap::new(),
        next_id: 1,
        codec,
        limits: Limits::default(),
    };

    let dead_after = shared.cfg.tunnel.ping_interval + shared.cfg.tunnel.ping_timeout;
    let mut last_rx = Instant::now();
    let keepalive = tokio::time::sleep(dead_after);
    tokio::pin!(keepalive);
    let token_expiry = tokio::time::sleep_until(expires.unwrap_or_else(|| Instant::now() + FAR));
    tokio::pin!(token_expiry);
    let reason: &'static str = loop {
        tokio::select! {
            biased;
            _ = token.cancelled() => break "shutdown",
            _ = info.kick.cancelled() => {
                info!(agent_id = %agent_id, tunnel_id, "agent disconnected by an operator");
                let _ = out_tx
                    .send(Out::Close(close_frame(CloseCode::Policy, "disconnected by operator")))
                    .await;
                break "admin_disconnect";
            }
            () = &mut token_expiry => {
                info!(agent_id = %agent_id, tunnel_id, "agent token expired; closing the tunnel");
                let _ = out_tx
                    .send(Out::Close(close_frame(CloseCode::Policy, "token expired")))
                    .await;
                break "token_expired";
            }
            Some(cmd) = cmd_rx.recv() => match cmd {
                TunnelCmd::Open { sock, peer, listener, guard } => {
                    session.open(sock, peer, listener, guard);
                }
                TunnelCmd::Closed(id) => session.forget(id),
            },
            msg = source.next() => {
                last_rx = Instant::now();
                match msg {
                    None => break "closed",
                    Some(Err(e)) => {
                        debug!(agent_id = %agent_id, error = %e, "tunnel read failed");
                        break "ws_error";
                    }
                    Some(Ok(msg)) => match session.on_message(msg).await {
                        Ok(()) => {}
                        Err(Stop::Closed) => break "agent_closed",
                        Err(Stop::Protocol(why)) => {
                            warn!(agent_id = %agent_id, reason = why, "tunnel protocol error");
                            let _ = out_tx
                                .send(Out::Close(close_frame(CloseCode::Protocol, why)))
                                .await;
                            break "protocol_error";
                        }
                    },
                }
            }
            () = &mut keepalive => {
                if last_rx.elapsed() >= dead_after {
                    break "ping_timeout";
                }
                keepalive.as_mut().reset(last_rx + dead_after);
            }
        }
    };

    // Teardown: no new streams, then every stream of this tunnel closes its client at once.
    shared.registry.unregister(tunnel_id);
    if matches!(
        reason,
        "protocol_error" | "token_expired" | "admin_disconnect"
    ) {
        // Let the writer send the close frame before everything stops.
        let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    }
    token.cancel();
    let open = session.streams.len();
    drop(session);
    m.agents_connected.dec();
    m.agent_disconnects
        .get_or_create(&ReasonLabel { reason })
        .inc();
    info!(event = "agent_disconnected", agent_id = %agent_id, tunnel_id, reason, open_streams = open, "agent tunnel ended");
    shared.audit.record(
        Event::new(Action::AgentDisconnected, true)
            .agent(&agent_id)
            .source(peer)
            .tunnel(tunnel_id)
            .reason(reason)
            .detail(format!("open_streams={open}")),
    );
}

/// Counts, audits and logs a refused HELLO (the caller closes the tunnel).
fn refuse_hello(
    shared: &Shared,
    peer: SocketAddr,
    tunnel_id: u64,
    admission: &Admission,
    reason: &'static str,
    hello_agent_id: Option<&str>,
    why: String,
) {
    shared
        .metrics
        .agent_auth_failures
        .get_or_create(&ReasonLabel { reason })
        .inc();
    let agent = admission
        .identity
        .as_ref()
        .map(|i| i.agent_id.as_str())
        .or(hello_agent_id);
    let mut event = Event::new(Action::Hello, false)
        .reason(reason)
        .source(peer)
        .tunnel(tunnel_id)
        .detail(why);
    if let Some(a) = agent {
        event = event.agent(a);
    }
    shared.audit.record(event);
    // Only identity failures count toward the source's cool-down; a HELLO that is late or
    // malformed says nothing about stolen or guessed tokens.
    if matches!(reason, "agent_id_mismatch" | "connector_not_granted") {
        crate::http::note_failure(shared, peer);
    }
}

/// Queues a close frame, gives the writer a moment to send it, then stops the tunnel.
async fn close_and_stop(
    out: &mpsc::Sender<Out>,
    writer: tokio::task::JoinHandle<()>,
    token: &CancellationToken,
    frame: CloseFrame,
) {
    if out.send(Out::Close(frame)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    }
    token.cancel();
}

/// Reads until the first protocol frame, which must be a valid HELLO.
async fn read_hello<S>(
    source: &mut Source<S>,
    version: Version,
    codec: &mut V1Codec,
) -> Result<Hello, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = Limits::default();
    loop {
        let msg = match source.next().await {
            None => return Err("connection closed before HELLO".into()),
            Some(Err(e)) => return Err(format!("read failed before HELLO: {e}")),
            Some(Ok(m)) => m,
        };
        let frame = match (version, msg) {
            (Version::V2, Message::Binary(b)) => binary::decode(&b, &limits),
            (Version::V1, Message::Text(t)) => codec.decode(t.as_str()),
            (_, Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            (_, Message::Close(_)) => return Err("connection closed before HELLO".into()),
            (Version::V2, _) => return Err("nowconnect.v2 uses binary messages".into()),
            (Version::V1, _) => return Err("nowconnect.v1 uses text messages".into()),
        };
        return match frame {
            Ok(Frame::Hello(hello)) => Ok(hello),
            Ok(other) => Err(format!("expected HELLO, got {}", other.kind())),
            Err(e) => Err(format!("invalid HELLO: {e}")),
        };
    }
}

enum Stop {
    /// The agent closed the WebSocket.
    Closed,
    /// Tunnel-level protocol violation: close with 1002.
    Protocol(&'static str),
}

/// The session's state: the stream table and the decoder.
struct Session {
    ctx: Arc<TunnelShared>,
    shared: Arc<Shared>,
    /// Live streams. An entry leaves on RST from the agent or when its task reports `Closed`.
    streams: HashMap<StreamId, mpsc::UnboundedSender<Inbound>>,
    next_id: StreamId,
    /// v1 decoder (incoming seq per stream); the writer has its own for outgoing seq.
    codec: V1Codec,
    limits: Limits,
}

impl Session {
    fn alloc_id(&mut self) -> StreamId {
        loop {
            let id = self.next_id;
            self.next_id = if id >= MAX_STREAM_ID { 1 } else { id + 1 };
            if !self.streams.contains_key(&id) {
                return id;
            }
        }
    }

    fn forget(&mut self, id: StreamId) {
        self.streams.remove(&id);
        if self.ctx.version == Version::V1 {
            self.codec.forget(id);
        }
    }

    /// Starts a stream for a new client. The stream task sends OPEN itself, so the session never
    /// waits on the writer queue here (and OPEN still precedes that stream's DATA).
    fn open(
        &mut self,
        sock: TcpStream,
        peer: SocketAddr,
        listener: Arc<ListenerCtx>,
        guard: ConnGuard,
    ) {
        let cap = self.shared.cfg.limits.max_streams_per_agent;
        if self.streams.len() >= cap {
            self.shared
                .metrics
                .rejected(&listener.connector, "max_streams_per_agent");
            self.ctx.audit.record(
                Event::new(Action::Open, false)
                    .by("stream_cap")
                    .reason("max_streams_per_agent")
                    .agent(&self.ctx.agent_id)
                    .connector(&listener.connector)
                    .source(peer)
                    .tunnel(self.ctx.tunnel_id)
                    .detail(format!("limits.max_streams_per_agent={cap}")),
            );
            crate::listener::reject(sock);
            drop(guard);
            return;
        }
        // Accepted on the listener's runtime: register the socket with this tunnel's shard, so
        // its readiness wakes this thread and the stream task never crosses threads.
        let sock = if self.shared.shards.is_some() {
            match sock.into_std().and_then(TcpStream::from_std) {
                Ok(s) => s,
                Err(e) => {
                    warn!(connector = %listener.connector, client = %peer, error = %e, "cannot move the client socket to the tunnel's shard; client closed");
                    return;
                }
            }
        } else {
            sock
        };
        let id = self.alloc_id();
        let (tx, rx) = mpsc::unbounded_channel();
        self.streams.insert(id, tx);
        self.ctx.active.fetch_add(1, Ordering::Relaxed);
        debug!(cid = id, connector = %listener.connector, agent_id = %self.ctx.agent_id, client = %peer, "stream opened");
        let info = Arc::new(crate::registry::SessionInfo {
            tunnel: self.ctx.info.clone(),
            cid: id,
            connector: listener.connector.clone(),
            client: peer,
            started_ms: crate::unix_ms(),
            bytes_c2a: Default::default(),
            bytes_a2c: Default::default(),
            kill: CancellationToken::new(),
        });
        let ctx = StreamCtx {
            id,
            peer,
            sock,
            rx,
            tunnel: self.ctx.clone(),
            listener,
            guard,
            info,
        };
        self.shared.streams.spawn(stream::run(ctx));
    }

    /// Queues a frame without making the session wait: when the writer queue is full, a small
    /// task waits instead. Only for rare frames (RST on protocol errors).
    fn send_nowait(&self, item: Out) {
        match self.ctx.out.try_send(item) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(item)) => {
                let out = self.ctx.out.clone();
                tokio::spawn(async move {
                    let _ = out.send(item).await;
                });
            }
        }
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), Stop> {
        let decoded = match (self.ctx.version, msg) {
            (Version::V2, Message::Binary(b)) => match binary::decode(&b, &self.limits) {
                Ok(f) => f,
                Err(e) => {
                    // The header names the stream when there is one: reset only that stream.
                    let id = if b.len() >= binary::HEADER_LEN {
                        u32::from_be_bytes([b[1], b[2], b[3], b[4]])
                    } else {
                        0
                    };
                    self.bad_frame(id, &e).await;
                    return Ok(());
                }
            },
            (Version::V1, Message::Text(t)) => match self.codec.decode(t.as_str()) {
                Ok(f) => f,
                Err(e) => {
                    let id = match e {
                        DecodeError::Seq { id, .. } => id,
                        _ => 0,
                    };
                    self.bad_frame(id, &e).await;
                    return Ok(());
                }
            },
            (_, Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => return Ok(()),
            (_, Message::Close(_)) => return Err(Stop::Closed),
            (Version::V2, _) => return Err(Stop::Protocol("nowconnect.v2 uses binary messages")),
            (Version::V1, _) => return Err(Stop::Protocol("nowconnect.v1 uses text messages")),
        };
        self.dispatch(decoded).await;
        Ok(())
    }

    /// A frame that did not decode. With a stream id, that stream is reset; otherwise the
    /// frame is dropped (a lost v1 DATA then shows up as a seq gap on that stream).
    async fn bad_frame(&mut self, id: StreamId, e: &DecodeError) {
        self.ctx.metrics.protocol_errors.inc();
        warn!(agent_id = %self.ctx.agent_id, cid = id, error = %e, "undecodable frame from agent");
        if id != 0 {
            self.reset(id, RstCode::Protocol, "undecodable frame");
        }
    }

    /// Resets a stream from the session: tell the agent, close the client.
    fn reset(&mut self, id: StreamId, code: RstCode, reason: &str) {
        if let Some(tx) = self.streams.remove(&id) {
            // The stream task closes its client without sending its own RST.
            let _ = tx.send(Inbound::Rst(code));
        }
        self.ctx
            .metrics
            .rst_sent
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
        let rst = Frame::Rst {
            id,
            code,
            reason: reason.to_owned(),
        };
        self.send_nowait(Out::Frame(rst));
        if self.ctx.version == Version::V1 {
            self.codec.forget(id);
        }
    }

    async fn dispatch(&mut self, frame: Frame) {
        let m = &self.ctx.metrics;
        match frame {
            Frame::Data { id, payload } => self.forward(id, Inbound::Data(payload)),
            Frame::Window { id, credit } => self.forward(id, Inbound::Window(credit)),
            Frame::Fin { id, dir } => {
                m.fin_received
                    .get_or_create(&DirLabel { dir: dir.as_str() })
                    .inc();
                self.forward(id, Inbound::Fin(dir));
            }
            Frame::Rst { id, code, .. } => {
                m.rst_received
                    .get_or_create(&CodeLabel {
                        code: code.as_str(),
                    })
                    .inc();
                if code == RstCode::QueueOverflow {
                    // The agent's own bounded queue overflowed (rare: one table lookup).
                    if let Some(s) = self.ctx.sessions.get((self.ctx.tunnel_id, id)) {
                        m.queue_overflow
                            .get_or_create(&crate::metrics::OverflowLabels {
                                side: "agent",
                                connector: s.connector.clone(),
                            })
                            .inc();
                    }
                }
                if let Some(tx) = self.streams.remove(&id) {
                    let _ = tx.send(Inbound::Rst(code));
                }
                if self.ctx.version == Version::V1 {
                    self.codec.forget(id);
                }
            }
            Frame::Open { id, .. } => {
                // Only the relay opens streams.
                m.protocol_errors.inc();
                warn!(agent_id = %self.ctx.agent_id, cid = id, "agent sent OPEN");
                self.reset(id, RstCode::Protocol, "OPEN from agent");
            }
            Frame::Hello(_) | Frame::HelloAck => {
                m.protocol_errors.inc();
                warn!(agent_id = %self.ctx.agent_id, "unexpected {} after HELLO; ignored", frame.kind());
            }
        }
    }

    /// Hands a frame to its stream; frames for unknown ids are ignored (they may cross an RST).
    fn forward(&mut self, id: StreamId, item: Inbound) {
        match self.streams.get(&id) {
            Some(tx) => {
                if tx.send(item).is_err() {
                    self.forget(id);
                }
            }
            None => {
                // v1: the decoder just created seq state for this id; drop it again.
                if self.ctx.version == Version::V1 {
                    self.codec.forget(id);
                }
            }
        }
    }
}

/// Owns the WebSocket's write half: batches queued frames and sends pings.
async fn writer<S>(
    mut sink: Sink<S>,
    mut rx: mpsc::Receiver<Out>,
    version: Version,
    token: CancellationToken,
    ping_interval: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = Limits::default();
    let mut codec = V1Codec::new(limits);
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = token.cancelled() => {
                let bye = Message::Close(Some(close_frame(CloseCode::Away, "tunnel closed")));
                let _ = tokio::time::timeout(Duration::from_millis(250), sink.send(bye)).await;
                return;
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    token.cancel();
                    return;
                }
            }
            item = rx.recv() => {
                let Some(mut item) = item else { return };
                let mut fed = 0;
                loop {
                    let msg = match item {
                        Out::Raw(b) => Some(Message::Binary(b)),
                        Out::Frame(f) => encode(&f, version, &limits, &mut codec),
                        Out::Forget(id) => {
                            codec.forget(id);
                            None
                        }
                        Out::Close(frame) => {
                            let _ = sink.send(Message::Close(Some(frame))).await;
                            token.cancel();
                            return;
                        }
                    };
                    if let Some(msg) = msg {
                        if sink.feed(msg).await.is_err() {
                            token.cancel();
                            return;
                        }
                        fed += 1;
                    }
                    if fed >= MAX_BATCH {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(next) => item = next,
                        Err(_) => break,
                    }
                }
                if sink.flush().await.is_err() {
                    token.cancel();
                    return;
                }
            }
        }
    }
}

fn encode(
    frame: &Frame,
    version: Version,
    limits: &Limits,
    codec: &mut V1Codec,
) -> Option<Message> {
    let r = match version {
        Version::V2 => binary::encode_to_bytes(frame, limits).map(Message::Binary),
        Version::V1 => codec.encode(frame).map(|s| Message::Text(s.into())),
    };
    match r {
        Ok(m) => Some(m),
        Err(e) => {
            // Our own frame failed validation: a relay bug, never the peer's.
            warn!(frame = frame.kind(), cid = frame.stream_id(), error = %e, "cannot encode frame; dropped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reason_fits_a_close_frame() {
        let long = "é".repeat(100);
        let f = close_frame(CloseCode::Policy, &long);
        assert!(f.reason.len() <= 123);
        assert!(f.reason.as_str().chars().all(|c| c == 'é'));
        assert_eq!(
            close_frame(CloseCode::Policy, "short").reason.as_str(),
            "short"
        );
    }
}
