//! A tunnel's session loop: the one owner of its stream table.
//!
//! It reads the WebSocket and hands every message to the shared crate's [`Demux`], which
//! decides each protocol rule; this loop only does what the answer says: write DATA straight
//! into the client socket while nothing of that stream waits (the rest goes to the stream
//! task; the messages already read are handled in one go, so a run of one stream's frames is
//! one vectored write, see [`Run`]), pass WINDOW and write shutdowns on, queue RSTs and WINDOWs
//! for the writer. It also
//! takes new clients from listeners ([`NewConn`]) and the stream tasks' reports. It never waits
//! on a stream: what a stream holds is bounded by its receive half and by the relay-wide
//! [`Budget`](crate::budget::Budget). When the writer's control queue is full (the agent is not
//! reading), answers wait in a short local queue and the agent is not read until they are
//! handed over: an agent cannot make the relay queue answers faster than it takes them.
//!
//! What a hostile agent can make this loop do is bounded too: frames for unknown streams are
//! dropped unanswered, counted, and past a burst the tunnel is closed, as it is for too many target
//! reports; every warning an agent can provoke goes through one limit ([`Quotas`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitStream;
use futures_util::{FutureExt, StreamExt};
use nowconnect_shared::demux::{Demux, Dispatch, Ignored};
use nowconnect_shared::{Frame, Lead, RstCode, StreamId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::coalesce::Run;
use super::quota::Quotas;
use super::stream::{self, Abort, Activity, Key, StreamEvent, StreamTask, ToStream, TunnelCtx};
use super::writer::{close_frame, Out, Queues};
use crate::audit::{Action, Event};
use crate::budget::Charge;
use crate::config::RelayConfig;
use crate::conn::{reject_client, ClientSock, ListenerCtx, NewConn};
use crate::liveness::Liveness;
use crate::metrics::{CodeLabel, OverflowLabels};
use crate::replay::Replay;
use crate::sessions::{SessionInfo, TunnelInfo};
use crate::Shared;

/// "Never" for timers: a year.
const FAR: Duration = Duration::from_secs(86_400 * 365);
/// Most messages handled in one go before the session looks at its other inputs again.
const READ_BATCH: usize = 64;
/// The stream table keeps at least this many slots when it shrinks.
const TABLE_MIN_CAPACITY: usize = 64;

/// What the session keeps per live stream, next to its receive half.
#[derive(Debug)]
pub(super) struct Handle {
    serial: u64,
    pub(super) tx: mpsc::UnboundedSender<ToStream>,
    /// Shared with the stream task, for direct writes.
    pub(super) sock: Arc<ClientSock>,
    pub(super) info: Arc<SessionInfo>,
    pub(super) listener: Arc<ListenerCtx>,
    pub(super) activity: Arc<Activity>,
    /// The budget reserved for this stream's receive window beyond the initial one (autotuning).
    pub(super) grown: Charge,
}

/// Why a session ended; the label is the `agent_disconnects` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    Shutdown,
    /// The relay drains (graceful shutdown) and this tunnel carries no stream: closed with
    /// 1001 Going Away, so the agent moves on at once.
    GoingAway,
    AdminDisconnect,
    TokenExpired,
    /// The WebSocket ended without a close frame.
    Closed,
    WsError,
    /// The agent sent a close frame.
    AgentClosed,
    ProtocolError,
    PingTimeout,
    /// The agent took no bytes for `ping_timeout` while the writer had some to send.
    WriteStall,
}

impl End {
    pub fn label(self) -> &'static str {
        match self {
            End::Shutdown | End::GoingAway => "shutdown",
            End::AdminDisconnect => "admin_disconnect",
            End::TokenExpired => "token_expired",
            End::Closed => "closed",
            End::WsError => "ws_error",
            End::AgentClosed => "agent_closed",
            End::ProtocolError => "protocol_error",
            End::PingTimeout => "ping_timeout",
            End::WriteStall => "write_stall",
        }
    }

    /// A close frame was queued: give the writer a moment to send it.
    pub fn sent_close(self) -> bool {
        matches!(
            self,
            End::ProtocolError | End::TokenExpired | End::AdminDisconnect | End::GoingAway
        )
    }
}

/// The session's state.
pub(super) struct Session {
    pub shared: Arc<Shared>,
    /// The configuration as it was when the tunnel started (see `tunnel::run`).
    pub cfg: Arc<RelayConfig>,
    pub ctx: Arc<TunnelCtx>,
    pub info: Arc<TunnelInfo>,
    pub demux: Demux<Handle>,
    /// The largest receive window of this tunnel's active streams (see [`Drain::lead`]).
    pub lead: Lead,
    pub queues: Queues,
    pub events: mpsc::UnboundedReceiver<StreamEvent>,
    pub conns: mpsc::UnboundedReceiver<Box<NewConn>>,
    /// When the token expires (the tunnel closes then).
    pub expires: Option<Instant>,
    /// Serial of the last stream started.
    pub serial: u64,
    /// Control frames the writer's full queue had no room for yet, oldest first. While any
    /// wait, the agent is not read (what adds here is bounded by the streams' reports).
    pub backlog: VecDeque<Out>,
    /// Unanswered frames, target reports and warnings the agent may still cause.
    pub quota: Quotas,
    /// Stamped at every message from the agent (the registry's picking reads it).
    pub liveness: Arc<Liveness>,
    /// Agent bytes for one client, written once the messages already read are handled.
    pub run: Run,
}

impl Session {
    /// Live streams.
    pub fn streams(&self) -> usize {
        self.demux.len()
    }

    /// Runs until the tunnel ends.
    pub async fn run<S>(&mut self, source: &mut SplitStream<WebSocketStream<S>>) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let token = self.ctx.token.clone();
        let kick = self.info.kick.clone();
        // Its own handle on the control queue: waiting for room must not borrow the session.
        let ctrl = self.queues.ctrl.clone();
        let cfg = &self.cfg.tunnel;
        let dead_after = cfg.ping_interval + cfg.ping_timeout;
        let stall_limit = cfg.ping_timeout;
        let mut last_rx = Instant::now();
        let keepalive = tokio::time::sleep(dead_after);
        tokio::pin!(keepalive);
        let expiry = tokio::time::sleep_until(self.expires.unwrap_or_else(|| Instant::now() + FAR));
        tokio::pin!(expiry);
        // v1 backpressure: the stream whose full queue stops the reader, and since when.
        let stall = tokio::time::sleep(FAR);
        tokio::pin!(stall);
        let mut stalled: Option<StreamId> = None;
        let draining = self.shared.draining.clone();
        loop {
            // Graceful shutdown: a tunnel without streams (none open, none about to open) is
            // told to go at once; one with streams once they are done (or, at the end of the
            // grace period, by the writer's own 1001).
            if draining.is_cancelled() && self.demux.is_empty() && self.conns.is_empty() {
                info!(agent_id = %self.info.agent_id, tunnel_id = self.info.tunnel_id, "relay shutting down; closing the idle tunnel (1001)");
                self.close(CloseCode::Away, "relay shutting down");
                return End::GoingAway;
            }
            let full = self.demux.full();
            if full != stalled {
                stalled = full;
                if full.is_some() {
                    stall.as_mut().reset(Instant::now() + stall_limit);
                }
            }
            tokio::select! {
                biased;
                // The relay stopping, or the writer failing (it cancels the tunnel).
                _ = token.cancelled() => {
                    return if self.shared.root.is_cancelled() {
                        End::Shutdown
                    } else if self.queues.stall.is_set() {
                        warn!(agent_id = %self.info.agent_id, tunnel_id = self.info.tunnel_id, "agent took no bytes for ping_timeout; closing the tunnel");
                        End::WriteStall
                    } else {
                        End::WsError
                    };
                }
                _ = draining.cancelled(), if !draining.is_cancelled() => {}
                _ = kick.cancelled() => {
                    info!(agent_id = %self.info.agent_id, tunnel_id = self.info.tunnel_id, "agent disconnected by an operator");
                    self.close(CloseCode::Policy, "disconnected by operator");
                    return End::AdminDisconnect;
                }
                () = &mut expiry => {
                    info!(agent_id = %self.info.agent_id, tunnel_id = self.info.tunnel_id, "agent token expired; closing the tunnel");
                    self.close(CloseCode::Policy, "token expired");
                    return End::TokenExpired;
                }
                // Before the WebSocket: a stream's `Opened` is always taken before any frame
                // the agent sends in answer to that stream's OPEN.
                Some(ev) = self.events.recv() => self.on_event(ev),
                Some(conn) = self.conns.recv() => self.open(*conn),
                permit = ctrl.reserve(), if !self.backlog.is_empty() => {
                    let Ok(permit) = permit else { return End::WsError };
                    if let Some(item) = self.backlog.pop_front() {
                        permit.send(item);
                    }
                    self.flush_backlog();
                }
                () = &mut stall, if stalled.is_some() => {
                    // A v1 client that has not read for `ping_timeout`: give up on it.
                    if let Some(id) = stalled {
                        let d = self.demux.overflow(id);
                        self.dispatch(d);
                    }
                }
                msg = source.next(), if stalled.is_none() && self.backlog.is_empty() => {
                    // Every message already read goes in one batch (bounded), so a string of
                    // DATA frames for one client is written with one syscall; the run is
                    // written out before anything else happens.
                    let mut msg = msg;
                    let mut batch = 0;
                    let end = loop {
                        last_rx = Instant::now();
                        self.liveness.heard(last_rx);
                        if let Some(end) = self.on_message(msg) {
                            break Some(end);
                        }
                        batch += 1;
                        if batch >= READ_BATCH || self.demux.full().is_some() || !self.backlog.is_empty() {
                            break None;
                        }
                        // Stream reports first, as the select's order has it (a stream's
                        // `Opened` before the agent's answer to its OPEN).
                        while let Ok(ev) = self.events.try_recv() {
                            self.write_run();
                            self.on_event(ev);
                        }
                        match source.next().now_or_never() {
                            Some(next) => msg = next,
                            None => break None,
                        }
                    };
                    self.write_run();
                    if let Some(end) = end {
                        return end;
                    }
                }
                () = &mut keepalive => {
                    self.run.shrink();
                    // Not reading (v1 backpressure, or answers waiting for the writer) is not
                    // the agent's silence.
                    if stalled.is_some() || !self.backlog.is_empty() {
                        last_rx = Instant::now();
                    }
                    if last_rx.elapsed() >= dead_after {
                        return End::PingTimeout;
                    }
                    keepalive.as_mut().reset(last_rx + dead_after);
                }
            }
        }
    }

    /// One message from the agent; `Some` ends the tunnel.
    fn on_message(&mut self, msg: Option<Result<Message, WsError>>) -> Option<End> {
        let dispatch = match msg {
            None => return Some(End::Closed),
            Some(Err(e)) => {
                debug!(agent_id = %self.info.agent_id, error = %e, "tunnel read failed");
                return Some(End::WsError);
            }
            Some(Ok(Message::Binary(b))) if !self.quota.admits(&b) => {
                return Some(self.flooded("target reports (STATUS)"));
            }
            Some(Ok(Message::Binary(b))) => self.demux.on_binary(&b),
            Some(Ok(Message::Text(t))) => self.demux.on_text(t.as_str()),
            Some(Ok(Message::Close(_))) => return Some(End::AgentClosed),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return None,
        };
        self.dispatch(dispatch)
    }

    /// Queues a close frame behind every answer still waiting.
    fn close(&mut self, code: CloseCode, reason: &str) {
        self.push_ctrl(Out::Close(close_frame(code, reason)));
    }

    pub(super) fn send_ctrl(&mut self, frame: Frame) {
        self.push_ctrl(Out::frame(frame));
    }

    /// Into the writer's control queue, or the backlog while it is full (order kept).
    fn push_ctrl(&mut self, item: Out) {
        if self.backlog.is_empty() {
            match self.queues.ctrl.try_send(item) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(item)) => self.backlog.push_back(item),
            }
        } else {
            self.backlog.push_back(item);
        }
    }

    /// Hands over as much of the backlog as the control queue takes now.
    fn flush_backlog(&mut self) {
        while let Some(item) = self.backlog.pop_front() {
            match self.queues.ctrl.try_send(item) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(item)) => {
                    self.backlog.push_front(item);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.backlog.clear();
                    return;
                }
            }
        }
    }

    /// `false`: the agent sent more frames nobody asked for than the tunnel allows.
    fn note_ignored(&mut self) -> bool {
        self.ctx.metrics.frames_ignored.inc();
        self.quota.ignored.take(Instant::now())
    }

    fn on_event(&mut self, ev: StreamEvent) {
        let live =
            |d: &Demux<Handle>, k: Key| d.get(k.id).is_some_and(|s| s.handle.serial == k.serial);
        match ev {
            StreamEvent::Opened(k) if live(&self.demux, k) => self.demux.announce(k.id),
            StreamEvent::Drained { key, bytes, frames } if live(&self.demux, key) => {
                self.on_written(key.id, bytes, frames)
            }
            StreamEvent::Closed(k) => {
                if live(&self.demux, k) {
                    self.demux.remove(k.id);
                }
                self.demux.shrink(TABLE_MIN_CAPACITY);
            }
            // An earlier stream of a reused id: its slot is gone already.
            StreamEvent::Opened(_) | StreamEvent::Drained { .. } => {}
        }
    }

    /// A stream this session reset: count, tell the agent, abort the stream task.
    pub(super) fn reset_sent(&mut self, rst: Frame, code: RstCode, handle: Handle) {
        self.count_rst_sent(code);
        self.send_ctrl(rst);
        let _ = handle.tx.send(ToStream::Abort(Abort::Reset(code)));
    }

    fn count_rst_sent(&self, code: RstCode) {
        self.ctx
            .metrics
            .rst_sent
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    /// Does what one received message asks. `Some`: the tunnel ends.
    fn dispatch(&mut self, d: Dispatch<Handle>) -> Option<End> {
        if let Dispatch::Data { id, payload, .. } = d {
            self.deliver(id, payload);
            return None;
        }
        // Whatever else the agent says comes after the bytes held for a client.
        self.write_run();
        let m = &self.ctx.metrics;
        match d {
            Dispatch::Data { .. } => {}
            Dispatch::Fin { id, shutdown } => {
                m.fin_recv.inc();
                if shutdown {
                    if let Some(slot) = self.demux.get(id) {
                        let _ = slot.handle.tx.send(ToStream::ShutWrite);
                    }
                }
            }
            Dispatch::Window { id, credit } => {
                if let Some(slot) = self.demux.get(id) {
                    let _ = slot.handle.tx.send(ToStream::Window(credit));
                }
            }
            Dispatch::PeerReset { code, handle, .. } => {
                m.rst_recv
                    .get_or_create(&CodeLabel {
                        code: code.as_str(),
                    })
                    .inc();
                if code == RstCode::QueueOverflow {
                    m.queue_overflow
                        .get_or_create(&OverflowLabels {
                            side: "agent",
                            connector: handle.listener.connector.clone(),
                        })
                        .inc();
                }
                // The handle (and its share of the client socket) goes first: a stream that
                // an agent could not connect takes the socket back whole, for a retry.
                let tx = handle.tx.clone();
                drop(handle);
                let _ = tx.send(ToStream::Abort(Abort::PeerReset(code)));
            }
            Dispatch::Reset {
                id,
                rst,
                reason,
                handle,
            } => {
                if reason.code == RstCode::Protocol {
                    m.protocol_errors.inc();
                }
                if let Some(suppressed) = self.quota.warnings.allow(Instant::now()) {
                    warn!(agent_id = %self.info.agent_id, cid = id, code = reason.code.as_str(), reason = reason.reason, suppressed, "resetting stream");
                }
                if handle.is_none() && !self.note_ignored() {
                    return Some(self.flooded("frames for unknown streams"));
                }
                match handle {
                    Some(h) => {
                        if reason.code == RstCode::QueueOverflow {
                            h.listener.metrics.queue_overflow.inc();
                        }
                        self.reset_sent(rst, reason.code, h);
                    }
                    None => {
                        self.count_rst_sent(reason.code);
                        self.send_ctrl(rst);
                    }
                }
            }
            Dispatch::Ignored(Ignored::UnknownStream { kind, id }) => {
                debug!(agent_id = %self.info.agent_id, cid = id, frame = kind, "frame for an unknown stream ignored");
                if !self.note_ignored() {
                    return Some(self.flooded("frames for unknown streams"));
                }
            }
            Dispatch::Ignored(Ignored::Undecodable(e)) => {
                m.protocol_errors.inc();
                if let Some(suppressed) = self.quota.warnings.allow(Instant::now()) {
                    warn!(agent_id = %self.info.agent_id, error = %e, suppressed, "undecodable frame from agent");
                }
                if !self.note_ignored() {
                    return Some(self.flooded("frames for unknown streams"));
                }
            }
            Dispatch::Close(v) => {
                m.protocol_errors.inc();
                warn!(agent_id = %self.info.agent_id, reason = %v, "tunnel protocol error");
                self.close(CloseCode::Protocol, &v.to_string());
                return Some(End::ProtocolError);
            }
            Dispatch::Status(status) => {
                // Bounded by the decoder (8 KiB); only this tunnel's exported connectors kept.
                debug!(agent_id = %self.info.agent_id, connectors = status.targets.len(), "target health report");
                let exported = &self.info.connectors;
                self.info
                    .targets
                    .update(*status, exported, crate::unix_ms());
            }
            // Handshake and OPEN answers exist only for the agent role or before HELLO.
            Dispatch::Nothing | Dispatch::Hello(_) | Dispatch::HelloAck | Dispatch::Open { .. } => {
            }
        }
        None
    }

    /// The agent sent more of `what` than its [`Quotas`] allow: close the tunnel.
    fn flooded(&mut self, what: &str) -> End {
        self.ctx.metrics.protocol_errors.inc();
        warn!(agent_id = %self.info.agent_id, tunnel_id = self.info.tunnel_id, "agent floods {what}; closing the tunnel");
        self.close(CloseCode::Protocol, &format!("too many {what}"));
        End::ProtocolError
    }

    /// Starts a stream for a new client. The stream task authorizes it and sends OPEN itself,
    /// so the session never waits here (and OPEN still precedes that stream's DATA).
    fn open(&mut self, conn: NewConn) {
        let NewConn {
            sock,
            peer,
            listener,
            guard,
            reopen,
        } = conn;
        // Accepted on the listener's runtime: register the socket with this tunnel's shard, so
        // its readiness wakes this thread and the stream task never crosses threads.
        let sock = if self.shared.shards.is_some() {
            match sock.rehome() {
                Ok(s) => s,
                Err(e) => {
                    warn!(connector = %listener.connector, client = %peer, error = %e, "cannot move the client socket to the tunnel's shard; client closed");
                    return;
                }
            }
        } else {
            sock
        };
        let sock = Arc::new(sock);
        let (tx, rx) = mpsc::unbounded_channel();
        let tunnel = self.info.clone();
        self.serial += 1;
        let serial = self.serial;
        let activity = Arc::new(Activity::new());
        let made = self.demux.open(|id| Handle {
            serial,
            tx,
            sock: sock.clone(),
            info: Arc::new(SessionInfo {
                tunnel,
                cid: id,
                connector: listener.connector.clone(),
                client: peer,
                started_ms: crate::unix_ms(),
                bytes_c2a: Default::default(),
                bytes_a2c: Default::default(),
                kill: CancellationToken::new(),
            }),
            listener: listener.clone(),
            activity: activity.clone(),
            grown: self.ctx.buffered.empty_charge(),
        });
        let Ok((id, send)) = made else {
            self.refuse_over_cap(&listener.connector, peer);
            if let Ok(sock) = Arc::try_unwrap(sock) {
                reject_client(sock);
            }
            drop(guard);
            return;
        };
        let Some(info) = self.demux.get(id).map(|s| s.handle.info.clone()) else {
            return;
        };
        self.ctx.active.fetch_add(1, Ordering::Relaxed);
        debug!(cid = id, connector = %listener.connector, agent_id = %self.info.agent_id, client = %peer, "stream opened");
        let task = StreamTask {
            key: Key { id, serial },
            send,
            sock,
            rx,
            listener,
            info,
            activity,
            guard,
            replay: match reopen {
                None => Replay::first(Instant::now()),
                Some(_) => Replay::Retry,
            },
            reopen,
        };
        self.shared
            .streams
            .spawn(stream::run(self.ctx.clone(), task));
    }

    /// The tunnel is over: clients a listener handed it meanwhile are closed (reset), not left
    /// to a normal close.
    pub fn reject_pending(&mut self) {
        self.conns.close();
        while let Ok(conn) = self.conns.try_recv() {
            reject_client(conn.sock);
        }
    }

    fn refuse_over_cap(&self, connector: &str, peer: SocketAddr) {
        let cap = self.cfg.limits.max_streams_per_agent;
        self.shared
            .metrics
            .rejected(connector, "max_streams_per_agent");
        self.shared.audit.record(
            Event::new(Action::Open, false)
                .by("stream_cap")
                .reason("max_streams_per_agent")
                .agent(&self.info.agent_id)
                .connector(connector)
                .source(peer)
                .tunnel(self.info.tunnel_id)
                .detail(format!("limits.max_streams_per_agent={cap}")),
        );
    }
}
