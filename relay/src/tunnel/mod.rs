//! One agent tunnel (an upgraded `/tunnel` WebSocket), from its HELLO to its end.
//!
//! Top to bottom: [`admission`] reads and reconciles the HELLO; the tunnel is then registered
//! (listeners may route clients to it) and [`session`] runs its loop, which owns the stream
//! table; each client becomes a [`stream`] task; one [`writer`] task owns the WebSocket's write
//! half. The protocol rules themselves live in the shared crate (`Demux`, `RecvHalf`,
//! `SendHalf`); these modules only drive them.

mod admission;
mod coalesce;
mod deliver;
mod progress;
mod quota;
mod session;
mod stream;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use nowconnect_shared::demux::Demux;
use nowconnect_shared::{Frame, Limits, Role, StreamParams, Version};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub(crate) use admission::Admission;
pub(crate) use progress::{Counted, Written};

use crate::audit::{Action, Event};
use crate::authorize::Authorizer;
use crate::config::RelayConfig;
use crate::liveness::Liveness;
use crate::metrics::{ReasonLabel, VersionLabel};
use crate::registry::{AgentHandle, Placed};
use crate::sessions::TunnelInfo;
use crate::Shared;
use session::Session;
use stream::TunnelCtx;
use writer::{close_frame, Out};

/// Tokens valid for longer than this are not timed (and cannot overflow the clock).
const FAR: Duration = Duration::from_secs(86_400 * 365);

/// The budgets every stream of a tunnel speaking `version` starts with.
fn stream_params(cfg: &RelayConfig, version: Version) -> StreamParams {
    let limits = &cfg.limits;
    StreamParams {
        v1_max_frames: limits.queue_depth_per_cid,
        v1_max_bytes: limits.queue_bytes_per_cid,
        max_window: limits.max_stream_window,
        ..StreamParams::new(version)
    }
}

/// Runs one tunnel until it ends. Never returns an error: every ending is logged and counted.
/// `written` counts the bytes `ws`'s socket accepted ([`Counted`] under it).
///
/// The admission runs in a future of its own on the heap, freed once the HELLO is answered:
/// what only it needs (the WebSocket before its split, the admission, the demux before the
/// session owns it) would otherwise stay in this future, which every tunnel keeps for as long
/// as it lives (issue 20: memory per idle tunnel).
pub(crate) fn run<S>(
    ws: WebSocketStream<S>,
    version: Version,
    peer: SocketAddr,
    shared: Arc<Shared>,
    admission: Admission,
    written: Written,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let admit = Box::pin(admit(ws, version, peer, shared, admission, written));
    async move {
        if let Some(tunnel) = admit.await {
            tunnel.serve().await;
        }
    }
}

/// A tunnel whose HELLO was accepted and answered, registered and ready for streams. Boxed,
/// so the futures it passes through hold a pointer, not three copies of it.
struct Serving<S> {
    session: Session,
    source: futures_util::stream::SplitStream<WebSocketStream<S>>,
    writer: JoinHandle<()>,
    token: CancellationToken,
    shared: Arc<Shared>,
    agent_id: Arc<str>,
    tunnel_id: u64,
    peer: SocketAddr,
}

/// From the upgraded WebSocket to a registered tunnel: HELLO read, reconciled and answered.
/// `None`: refused (recorded, and the agent told why) or gone.
async fn admit<S>(
    ws: WebSocketStream<S>,
    version: Version,
    peer: SocketAddr,
    shared: Arc<Shared>,
    admission: Admission,
    written: Written,
) -> Option<Box<Serving<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // One configuration for the tunnel's whole life: a reload while it runs (even during its
    // HELLO) must not give its writer and its reader different ping settings.
    let cfg = shared.cfg();
    let tunnel_id = shared.next_tunnel_id.fetch_add(1, Ordering::Relaxed);
    let token = shared.root.child_token();
    let (sink, mut source) = ws.split();
    let (queues, inputs) = writer::queues();
    let liveness = Arc::new(Liveness::new(cfg.tunnel.ping_interval));
    let writer = shared.tasks.spawn(writer::run(
        sink,
        inputs,
        version,
        token.clone(),
        writer::Timing {
            ping_interval: cfg.tunnel.ping_interval,
            stall_limit: cfg.tunnel.ping_timeout,
        },
        written,
        liveness.clone(),
    ));
    let max_streams = cfg.limits.max_streams_per_agent;
    let mut demux = Demux::new(
        Role::Relay,
        stream_params(&cfg, version),
        Limits::default(),
        max_streams,
    );

    let hello = admission::read_hello(&mut source, &mut demux).await;
    let hello = match hello.and_then(|h| admission::reconcile(&h, &admission, &shared).map(|()| h))
    {
        Ok(h) => h,
        Err(refusal) => {
            let named = match &refusal {
                admission::Refusal::Blocked(a) => Some(a.clone()),
                admission::Refusal::AgentIdMismatch { hello, .. } => Some(hello.clone()),
                _ => None,
            };
            admission::record_refusal(
                &shared,
                peer,
                tunnel_id,
                &admission,
                &refusal,
                named.as_deref(),
            );
            let frame = close_frame(CloseCode::Policy, &refusal.close_reason());
            close_and_stop(&queues.ctrl, writer, &token, frame).await;
            return None;
        }
    };
    liveness.heard(Instant::now());
    let (conns_tx, conns_rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
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
        epoch: Default::default(),
        targets: Default::default(),
    });
    let handle = AgentHandle {
        tunnel_id,
        agent_id: agent_id.clone(),
        conns: conns_tx,
        active: active.clone(),
        info: info.clone(),
        liveness: liveness.clone(),
    };
    let placed = match admission::register(&shared, &handle, admission.identity.as_ref()) {
        Ok(placed) => placed,
        Err(refusal) => {
            let id = Some(hello.agent_id.as_str());
            admission::record_refusal(&shared, peer, tunnel_id, &admission, &refusal, id);
            let frame = close_frame(CloseCode::Policy, &refusal.close_reason());
            close_and_stop(&queues.ctrl, writer, &token, frame).await;
            return None;
        }
    };
    // The registry task claims the agent in the cluster directory (HA) and sets `info.epoch`.
    shared.cluster.local_changed();
    let Admission { identity, slot } = admission;
    // HELLO_ACK is queued before the session loop starts, and only that loop writes OPENs
    // (listeners just queue clients on `conns`), so it precedes every OPEN on the wire.
    if queues.ctrl.try_send(Out::frame(Frame::HelloAck)).is_err() {
        shared.registry.unregister(tunnel_id);
        shared.cluster.local_changed();
        token.cancel();
        return None;
    }
    // An accepted HELLO ends the unauthenticated phase for the source's pending count.
    drop(slot);
    let connectors = hello.connectors.join(",");
    let mut event = Event::new(Action::Hello, true)
        .agent(&agent_id)
        .source(peer)
        .tunnel(tunnel_id)
        .detail(format!("connectors={connectors}"));
    if identity.is_none() {
        event = event.reason("dev_bypass");
    }
    match placed {
        Placed::Serving {
            superseded: Some(old),
        } => {
            event = event.detail(format!(
                "connectors={connectors}; superseded tunnel {old} gets no new streams"
            ));
        }
        Placed::Standby { behind } => {
            event = event.detail(format!(
                "connectors={connectors}; standby: no streams until tunnel {behind} ends"
            ));
        }
        Placed::Serving { superseded: None } => {}
    }
    shared.audit.record(event);
    let m = &shared.metrics;
    m.agent_connects
        .get_or_create(&VersionLabel {
            version: version.name(),
        })
        .inc();
    m.agents_connected.inc();
    m.tunnels
        .opened(&agent_id, tunnel_id, std::time::Instant::now());
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
    if let Placed::Serving {
        superseded: Some(old),
    } = placed
    {
        info!(agent_id = %agent_id, superseded = old, "agent_id connected again; the older tunnel gets no new streams");
    }

    let grants = identity
        .as_ref()
        .filter(|_| shared.state.connector_scopes())
        .map(|id| id.grants.clone());
    // A tunnel lives as long as its token (plus leeway); the agent reconnects before `exp`.
    let expires = match (&identity, &shared.checkers.auth.load_full()) {
        (Some(id), Some(auth)) => Some(id.remaining(auth.leeway()))
            .filter(|d| *d <= FAR)
            .map(|d| Instant::now() + d),
        _ => None,
    };
    let ctx = Arc::new(TunnelCtx {
        version,
        max_payload: cfg.tunnel.max_ws_payload,
        idle_timeout: cfg.limits.idle_timeout,
        data: queues.data.clone(),
        events: events_tx,
        token: token.clone(),
        active,
        authz: Authorizer {
            agent_id: agent_id.clone(),
            tunnel_id,
            grants,
            pdp: shared.checkers.pdp.clone(),
            state: shared.state.clone(),
            audit: shared.audit.clone(),
            metrics: shared.metrics.clone(),
        },
        metrics: shared.metrics.clone(),
        sessions: shared.sessions.clone(),
        buffered: shared.buffered.a2c.share(),
        outbound: shared.buffered.c2a.share(),
        router: shared.clone(),
    });
    let quota = quota::Quotas::new(cfg.tunnel.ping_interval + cfg.tunnel.ping_timeout);
    let session = Session {
        shared: shared.clone(),
        cfg,
        ctx,
        info,
        demux,
        lead: Default::default(),
        queues,
        events: events_rx,
        conns: conns_rx,
        expires,
        serial: 0,
        backlog: Default::default(),
        quota,
        liveness,
        run: Default::default(),
    };
    Some(Box::new(Serving {
        session,
        source,
        writer,
        token,
        shared,
        agent_id,
        tunnel_id,
        peer,
    }))
}

impl<S> Serving<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Runs the session until the tunnel ends, then tears it down: no new streams, every
    /// stream's client closed, the ending logged, counted and audited.
    async fn serve(mut self: Box<Self>) {
        let this = &mut *self;
        let end = this.session.run(&mut this.source).await;
        let Serving {
            mut session,
            writer,
            token,
            shared,
            agent_id,
            tunnel_id,
            peer,
            ..
        } = *self;
        let m = &shared.metrics;

        // Teardown: no new streams, then every stream of this tunnel closes its client at once.
        let next = shared.registry.unregister(tunnel_id);
        shared.cluster.local_changed();
        if let Some(next) = next {
            info!(agent_id = %agent_id, tunnel_id = next, "the agent's new streams go to this tunnel now");
        }
        session.reject_pending();
        if end.sent_close() {
            let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
        }
        token.cancel();
        let open = session.streams();
        drop(session);
        let reason = end.label();
        m.agents_connected.dec();
        m.tunnels
            .closed(&agent_id, tunnel_id, reason, std::time::Instant::now());
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
}

/// Queues a close frame, gives the writer a moment to send it, then stops the tunnel.
async fn close_and_stop(
    ctrl: &mpsc::Sender<Out>,
    writer: JoinHandle<()>,
    token: &CancellationToken,
    frame: CloseFrame,
) {
    if ctrl.try_send(Out::Close(frame)).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    }
    token.cancel();
}
