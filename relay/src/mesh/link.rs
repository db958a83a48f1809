//! One mesh link: a WebSocket to a peer relay carrying forwarded streams, and its two tasks.
//!
//! The *core* (this module's [`run`]) owns the link's stream table (a [`Demux`] of the shared
//! crate, so credit, half-close and reset follow the same rules as an agent tunnel) and reads
//! the WebSocket: it routes each frame to the stream's bridge task ([`super::bridge`]), returns
//! credit when a bridge reports bytes written, and (on the origin side) opens new streams. The
//! *writer* owns the sink. Which side opens streams is fixed per link: the relay that dialed
//! is the origin (its clients' streams go out on its own link, [`Side::Origin`], demux role
//! `Relay`), the one that accepted serves them ([`Side::Owner`], role `Agent`). Two relays
//! therefore hold two links, one per direction of stream opening.
//!
//! Bounds: DATA, FIN and a bridge's RST go through the data queue (`send_queue_depth` frames;
//! a full queue makes bridges wait: backpressure). WINDOW, FORWARD and the core's RSTs go
//! through the control queue, bounded too ([`CTRL_QUEUE`]): a stream in the table has at most
//! a FORWARD, an RST and two WINDOWs outstanding, and what refused frames provoke (RSTs for
//! streams that never enter the table) fills the rest; a peer that fills it is not reading its
//! answers and the link ends.
//! Bytes in flight per link are capped by `per_link_max_inflight_bytes` (a semaphore the
//! bridges charge before they read and credit back when WINDOW comes), and every stream by its
//! window, so a slow client stalls only its own stream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use nowconnect_shared::binary;
use nowconnect_shared::demux::{Dispatch, Drained};
use nowconnect_shared::{Demux, Drain, Frame, Limits, Reset, Role, RstCode, StreamParams, Version};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::bridge::{self, Bridge};
use super::ctx::{Event, Handle, Key, LinkCtx, ToBridge};
use super::owner;
use super::{Core, OpenReq};
use crate::metrics::{MeshFrameLabels, PeerReasonLabels};

/// Live forwarded streams one link holds at most.
pub(super) const MAX_STREAMS_PER_LINK: usize = 16 * 1024;
/// Control frames a link queues: a FORWARD, an RST and two WINDOWs per stream the table can
/// hold, plus room for answers to refused frames; past it the peer is not reading (link ends).
const CTRL_QUEUE: usize = 4 * MAX_STREAMS_PER_LINK + 1024;
/// Frames the writer sends before it flushes, when more are ready.
const WRITE_BATCH: usize = 64;

/// Which end of the link this relay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// We dialed: we open streams for our clients.
    Origin,
    /// We accepted: we serve streams for our agents.
    Owner,
}

/// Why a link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum End {
    Stopped,
    Closed,
    Error(String),
    Silent,
    Protocol(String),
}

impl End {
    pub fn is_failure(&self) -> bool {
        !matches!(self, End::Stopped | End::Closed)
    }
}

pub(super) fn type_name(b: u8) -> &'static str {
    match b {
        3 => "open",
        4 => "data",
        5 => "fin",
        6 => "rst",
        7 => "window",
        8 => "forward",
        _ => "other",
    }
}

/// What one link needs to start.
pub(super) struct Params {
    pub side: Side,
    pub peer: Arc<str>,
    pub core: Arc<Core>,
    /// Set while the link runs (the origin's forwarder only uses a link that is up).
    pub up: Arc<AtomicBool>,
}

/// Runs one link until it ends; `opens` (origin only) brings new streams.
pub(super) async fn run<S>(
    ws: S,
    p: Params,
    mut opens: Option<&mut mpsc::Receiver<OpenReq>>,
    parent: &CancellationToken,
) -> End
where
    S: Stream<Item = Result<Message, WsError>>
        + Sink<Message, Error = WsError>
        + Unpin
        + Send
        + 'static,
{
    let core = p.core.clone();
    let cfg = &core.cfg;
    let token = parent.child_token();
    let (sink, mut stream) = ws.split();
    let (data_tx, data_rx) = mpsc::channel(cfg.send_queue_depth);
    let (ctrl_tx, ctrl_rx) = mpsc::channel(CTRL_QUEUE);
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(LinkCtx {
        peer: p.peer.clone(),
        data: data_tx,
        ctrl: ctrl_tx,
        events: ev_tx,
        inflight: Arc::new(Semaphore::new(cfg.per_link_max_inflight_bytes)),
        token: token.clone(),
        max_payload: core.max_payload,
        core: core.clone(),
    });
    let started = Instant::now();
    let writer = tokio::spawn(write(
        sink,
        ctrl_rx,
        data_rx,
        token.clone(),
        core.clone(),
        started,
    ));
    let role = match p.side {
        Side::Origin => Role::Relay,
        Side::Owner => Role::Agent,
    };
    let mut params = StreamParams::new(Version::V2);
    params.window = core.window;
    params.max_window = core.window;
    let mut demux: Demux<Handle> =
        Demux::new(role, params, Limits::default(), MAX_STREAMS_PER_LINK).without_handshake();
    p.up.store(true, Ordering::Release);
    let mut serial = 0u64;
    // Anything from the peer (data or pong) within this long, or the link is dead.
    let silence = core.ping_interval + core.ping_timeout;
    let mut last_rx = Instant::now();
    let deadline = tokio::time::sleep(silence);
    tokio::pin!(deadline);
    let end = loop {
        tokio::select! {
            biased;
            _ = token.cancelled() => break End::Stopped,
            Some(ev) = ev_rx.recv() => on_event(&mut demux, &ctx, ev),
            msg = stream.next() => {
                last_rx = Instant::now();
                match msg {
                    Some(Ok(Message::Binary(b))) => {
                        count(&core, "rx", &b);
                        if let Some(end) = on_binary(&mut demux, &ctx, p.side, &mut serial, b) {
                            break end;
                        }
                    }
                    Some(Ok(Message::Pong(payload))) => {
                        if let Ok(sent) = <[u8; 8]>::try_from(&payload[..]) {
                            let sent = Duration::from_nanos(u64::from_be_bytes(sent));
                            let rtt = started.elapsed().saturating_sub(sent);
                            core.metrics.mesh.rtt.get_or_create(&core.peer_label(&p.peer)).observe(rtt.as_secs_f64());
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Text(_))) => break End::Protocol("text message on the mesh".into()),
                    Some(Ok(Message::Close(_))) | None => break End::Closed,
                    Some(Err(e)) => break End::Error(e.to_string()),
                }
            }
            req = next_open(&mut opens) => match req {
                Some(req) => open(&mut demux, &ctx, &mut serial, req),
                None => break End::Stopped,
            },
            () = &mut deadline => {
                let due = last_rx + silence;
                if Instant::now() >= due {
                    break End::Silent;
                }
                deadline.as_mut().reset(due);
            }
        }
    };
    p.up.store(false, Ordering::Release);
    token.cancel();
    // Streams still listed get their reset from their own token; the table goes with us.
    for (_, slot) in demux.iter() {
        let _ = slot.handle.tx.send(ToBridge::Abort);
    }
    if let Some(opens) = opens {
        // Clients handed over while the link went down: refused now, not left waiting.
        while let Ok(req) = opens.try_recv() {
            core.drop_stream(&p.peer, "link_down");
            req.refuse();
        }
    }
    let _ = writer.await;
    end
}

async fn next_open(opens: &mut Option<&mut mpsc::Receiver<OpenReq>>) -> Option<OpenReq> {
    match opens {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn count(core: &Core, dir: &'static str, b: &[u8]) {
    let r#type = type_name(b.first().copied().unwrap_or(0));
    core.metrics
        .mesh
        .frames
        .get_or_create(&MeshFrameLabels { dir, r#type })
        .inc();
}

/// Origin: a client of ours for an agent on the peer.
fn open(demux: &mut Demux<Handle>, ctx: &Arc<LinkCtx>, serial: &mut u64, req: OpenReq) {
    let (tx, rx) = mpsc::unbounded_channel();
    *serial += 1;
    let s = *serial;
    let Ok((id, send)) = demux.open(|_| Handle { serial: s, tx }) else {
        ctx.core.drop_stream(&ctx.peer, "table_full");
        req.refuse();
        return;
    };
    let forward = req.forward(id, &ctx.core.replica_id);
    // Queued before the bridge exists, so it precedes every DATA of the stream: the writer
    // always empties the control queue before it takes from the data queue.
    if !ctx.try_ctrl(&forward) {
        // A registry entry with fields over the frame's limits (an over-long agent_id, say):
        // the client is reset now instead of waiting for a stream that never opens.
        demux.remove(id);
        ctx.core.drop_stream(&ctx.peer, "bad_forward");
        req.refuse();
        return;
    }
    demux.announce(id);
    let b = Bridge {
        key: Key { id, serial: s },
        send,
        sock: Arc::new(req.conn.sock),
        rx,
        listener: Some(req.conn.listener),
        guard: Some(req.conn.guard),
    };
    ctx.core.spawn_stream(bridge::run(ctx.clone(), b));
}

fn on_event(demux: &mut Demux<Handle>, ctx: &LinkCtx, ev: Event) {
    match ev {
        Event::Drained { key, bytes, frames } => {
            if demux
                .get(key.id)
                .is_none_or(|s| s.handle.serial != key.serial)
            {
                return;
            }
            // Mesh links keep a fixed window (`params.max_window` is the initial one).
            let at = Drain::at(Instant::now().into_std(), 0);
            match demux.on_written(key.id, bytes, frames, at) {
                Drained::Unknown => {}
                Drained::Ok(w) => {
                    if let Some(window) = w.window {
                        ctx.ctrl(&window);
                    }
                    if w.shutdown {
                        tell(demux, key.id, ToBridge::ShutWrite);
                    }
                }
                Drained::Reset { rst, handle } => {
                    ctx.ctrl(&rst);
                    let _ = handle.tx.send(ToBridge::Abort);
                }
            }
        }
        Event::Closed(key) => {
            if demux
                .get(key.id)
                .is_some_and(|s| s.handle.serial == key.serial)
            {
                demux.remove(key.id);
            }
        }
    }
}

fn tell(demux: &Demux<Handle>, id: u32, msg: ToBridge) {
    if let Some(slot) = demux.get(id) {
        let _ = slot.handle.tx.send(msg);
    }
}

/// One binary message. `Some`: the link ends.
fn on_binary(
    demux: &mut Demux<Handle>,
    ctx: &Arc<LinkCtx>,
    side: Side,
    serial: &mut u64,
    b: Bytes,
) -> Option<End> {
    if b.first() == Some(&(binary::FrameType::Forward as u8)) {
        match (side, binary::decode(&b, &Limits::default())) {
            (Side::Owner, Ok(Frame::Forward(f))) => {
                if demux.get(f.id).is_some() {
                    // The same stream offered twice (a retry crossing the first): keep the
                    // live one, drop this one unanswered.
                    ctx.core.metrics.mesh.cid_dedup_dropped.inc();
                    debug!(peer = %ctx.peer, cid = f.id, "duplicate FORWARD dropped");
                    return None;
                }
                *serial += 1;
                owner::serve(demux, ctx, *serial, *f);
            }
            (_, Ok(f)) => ctx
                .ctrl(&Reset::new(RstCode::Protocol, "FORWARD to the origin").frame(f.stream_id())),
            (_, Err(e)) => {
                debug!(peer = %ctx.peer, error = %e, "undecodable FORWARD refused");
                let id = b
                    .get(1..5)
                    .and_then(|s| <[u8; 4]>::try_from(s).ok())
                    .map_or(0, u32::from_be_bytes);
                if id != 0 && demux.get(id).is_none() {
                    ctx.ctrl(&Reset::new(RstCode::Protocol, "undecodable FORWARD").frame(id));
                }
            }
        }
        return None;
    }
    match demux.on_binary(&b) {
        Dispatch::Data { id, payload, .. } => tell(demux, id, ToBridge::Data(payload)),
        Dispatch::Fin { id, shutdown } => {
            if shutdown {
                tell(demux, id, ToBridge::ShutWrite);
            }
        }
        Dispatch::Window { id, credit } => tell(demux, id, ToBridge::Window(credit)),
        Dispatch::PeerReset { handle, .. } => {
            let _ = handle.tx.send(ToBridge::Abort);
        }
        Dispatch::Reset { rst, handle, .. } => {
            ctx.ctrl(&rst);
            if let Some(h) = handle {
                let _ = h.tx.send(ToBridge::Abort);
            }
        }
        Dispatch::Open { id, .. } => {
            ctx.ctrl(
                &Reset::new(RstCode::Protocol, "OPEN on the mesh (FORWARD expected)").frame(id),
            );
        }
        Dispatch::Ignored(_) | Dispatch::Nothing => {}
        Dispatch::Hello(_) | Dispatch::HelloAck | Dispatch::Status(_) => {
            return Some(End::Protocol("connection frame on the mesh".into()))
        }
        Dispatch::Close(v) => return Some(End::Protocol(v.to_string())),
    }
    None
}

/// The writer: pings on the keepalive interval, control frames before data; several
/// frames per flush when they are ready together.
async fn write<K>(
    mut sink: K,
    mut ctrl: mpsc::Receiver<Bytes>,
    mut data: mpsc::Receiver<Bytes>,
    token: CancellationToken,
    core: Arc<Core>,
    started: Instant,
) where
    K: Sink<Message, Error = WsError> + Unpin,
{
    let mut ping = tokio::time::interval(core.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let work = async {
        loop {
            let first = tokio::select! {
                biased;
                // First: a busy data queue must not starve the keepalive (ready once a tick).
                _ = ping.tick() => {
                    let t = started.elapsed().as_nanos() as u64;
                    Message::Ping(Bytes::copy_from_slice(&t.to_be_bytes()))
                }
                Some(b) = ctrl.recv() => Message::Binary(b),
                Some(b) = data.recv() => Message::Binary(b),
                else => return,
            };
            let mut next = Some(first);
            let mut n = 0;
            while let Some(msg) = next.take() {
                if let Message::Binary(b) = &msg {
                    count(&core, "tx", b);
                }
                if sink.feed(msg).await.is_err() {
                    return;
                }
                n += 1;
                if n < WRITE_BATCH {
                    next = ctrl
                        .try_recv()
                        .or_else(|_| data.try_recv())
                        .ok()
                        .map(Message::Binary);
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = work => {}
        _ = token.cancelled() => {}
    }
    token.cancel();
    // A polite close when the peer still reads; never wait long for it.
    let _ = tokio::time::timeout(Duration::from_millis(200), sink.close()).await;
}

impl Core {
    /// Counts a stream or frame dropped at a bound.
    pub(super) fn drop_stream(&self, peer: &str, reason: &'static str) {
        self.metrics
            .mesh
            .backpressure_drops
            .get_or_create(&PeerReasonLabels {
                peer: peer.to_owned(),
                reason,
            })
            .inc();
    }
}
