//! One connection to the relay, from dial to close: HELLO, READY, and the stream table.
//!
//! The session dials, sends HELLO, waits for HELLO_ACK (health READY), then reads the WebSocket
//! and hands every message to the shared crate's [`Demux`], which decides each protocol rule;
//! the session only does what the answer says: dial a target for OPEN (a stream task), write
//! DATA straight into the target socket while nothing of that stream waits (the rest goes to
//! the stream task), pass WINDOW and write shutdowns on, queue RSTs and WINDOWs for the writer.
//!
//! It never waits on anything but the WebSocket: control frames go to the writer's unbounded
//! queue, and what a stream holds is bounded by its receive half. Stream tasks and the writer
//! live in `JoinSet`s owned by the session, so ending (or dropping) the session closes every
//! target socket at once.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use nowconnect_shared::demux::{Demux, Dispatch, Drained as Written, Ignored};
use nowconnect_shared::status::Features;
use nowconnect_shared::{
    binary, Drain, Frame, Hello, Lead, Limits, Reset, Role, RstCode, StreamId, StreamParams,
    Version,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::{Id as TaskId, JoinSet};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::context::{End, Ready, SessionResult, Shared, Slot, CLOSE_GRACE, MIN_DRAIN};
use super::growth::{Grown, Growth};
use super::status::{self, Pacer};
use crate::config::{AgentConfig, ConnectorName};
use crate::health::{ReadyGuard, StreamGauge};
use crate::stream::{self, Drained, StreamCtx, ToStream};
use crate::token::Token;
use crate::transport::{Dialed, Progress, Step};
use crate::writer::{self, Encoder, Outgoing};

/// Most streams one tunnel carries at once; more OPENs are reset (bounds agent memory).
///
/// The table is a `HashMap` with this explicit cap rather than a heapless map: a fixed-capacity
/// table of 65,536 entries would take ~3 MiB up front, in every session, whereas an idle agent
/// needs a few entries. The cap bounds it; `Demux::shrink` gives the memory back after a burst.
const MAX_STREAMS: usize = 65_536;
/// The stream table keeps at least this many slots when it shrinks (no churn on small agents).
const STREAMS_MIN_CAPACITY: usize = 256;

/// What the session keeps per live stream, next to its receive half.
#[derive(Debug)]
struct Entry {
    tx: stream::inbox::Sender<ToStream>,
    /// Tells this stream apart from an earlier one that used the same id.
    serial: u64,
    /// The target socket once the stream task has connected it (for direct writes).
    sock: Arc<OnceLock<Arc<TcpStream>>>,
    /// What this stream's receive window grew by, counted in the tunnel's [`Growth`].
    grown: Grown,
}

/// One connection to the relay, from dial to close. Returns why it ended and how long it was
/// READY.
pub(super) async fn run(
    shared: Arc<Shared>,
    cfg: Arc<AgentConfig>,
    slot: Arc<Slot>,
    cancel: CancellationToken,
    retire: CancellationToken,
    ready_tx: mpsc::UnboundedSender<Ready>,
) -> SessionResult {
    let deadline = Instant::now() + cfg.limits.handshake_timeout;
    let progress = Progress::default();
    let dialed = tokio::select! {
        _ = cancel.cancelled() => return (End::Shutdown, None),
        r = tokio::time::timeout_at(deadline, slot.dialer.connect(&progress)) => r,
    };
    let Dialed { ws, version, token } = match dialed {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return (End::Dial(e), None),
        Err(_) => {
            let what = format!(
                "after {} ms {}",
                cfg.limits.handshake_timeout.as_millis(),
                slot.dialer.describe(progress.get())
            );
            return (End::HandshakeTimeout(what), None);
        }
    };
    progress.set(Step::Hello);
    let tls = ws.get_ref().relay_tls();
    tracing::info!(
        relay = %slot.dialer.url(),
        protocol = version.name(),
        tls = tls.as_deref().unwrap_or("none"),
        "connected; sending HELLO"
    );
    let (sink, reader) = ws.split();
    let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
    let (data_tx, data_rx) = mpsc::channel(writer::DATA_QUEUE);
    let limits = cfg.limits.protocol;
    let mut writer_task = JoinSet::new();
    writer_task.spawn(writer::run(
        sink,
        ctrl_rx,
        data_rx,
        Encoder::new(version, limits),
    ));
    let hello = Hello {
        agent_id: cfg.agent_id.as_str().to_owned(),
        connectors: cfg.connectors().map(str::to_owned).collect(),
        ver: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let _ = ctrl_tx.send(Outgoing::Frame(Frame::Hello(hello)));
    let (drained_tx, drained_rx) = mpsc::unbounded_channel();
    let params = StreamParams {
        v1_max_frames: cfg.limits.queue_depth_per_cid,
        v1_max_bytes: cfg.limits.queue_bytes_per_cid,
        max_window: cfg.limits.max_stream_window,
        ..StreamParams::new(version)
    };
    let mut t = Session {
        shared: &shared,
        cfg: &cfg,
        demux: Demux::new(Role::Agent, params, Limits::default(), MAX_STREAMS),
        ctrl: ctrl_tx,
        data: data_tx,
        drained_tx,
        tasks: JoinSet::new(),
        task_streams: HashMap::new(),
        next_serial: 0,
        gauge: shared.health.stream_gauge(),
        ready_at: None,
        ready_guard: None,
        ready_tx,
        token,
        features: Features::default(),
        report_status: false,
        pacer: Pacer::default(),
        growth: Growth::default(),
        lead: Lead::default(),
    };
    let end = t
        .run(
            reader,
            drained_rx,
            &mut writer_task,
            &cancel,
            &retire,
            deadline,
        )
        .await;
    let ready_for = t.ready_at.map(|at| at.elapsed());
    if matches!(end, End::Protocol(_)) {
        // A Close with the reason is queued: give the writer a moment to send it.
        drop(t);
        let _ = tokio::time::timeout(CLOSE_GRACE, writer_task.join_next()).await;
    }
    // Dropping `t` aborts every stream task (target sockets close at once) and `writer_task`
    // aborts the writer, closing the WebSocket.
    (end, ready_for)
}

struct Session<'a> {
    shared: &'a Shared,
    /// The configuration this tunnel announced in HELLO (targets: see `on_open`).
    cfg: &'a AgentConfig,
    demux: Demux<Entry>,
    ctrl: mpsc::UnboundedSender<Outgoing>,
    data: mpsc::Sender<Outgoing>,
    drained_tx: mpsc::UnboundedSender<Drained>,
    tasks: JoinSet<(StreamId, u64)>,
    /// Which stream each task drives, so even a task that failed leaves the table.
    task_streams: HashMap<TaskId, (StreamId, u64)>,
    next_serial: u64,
    /// Live streams, counted into the agent's total (systemd STATUS).
    gauge: StreamGauge,
    ready_at: Option<Instant>,
    /// Held from HELLO_ACK to the end of the session: health READY.
    ready_guard: Option<ReadyGuard>,
    ready_tx: mpsc::UnboundedSender<Ready>,
    /// The token this tunnel was opened with (handed to the supervisor at READY).
    token: Option<Token>,
    /// What the relay's HELLO_ACK announced (read from the message before the demux sees it).
    features: Features,
    /// STATUS reports go to this relay (it announced them, v2, a multi-host connector).
    report_status: bool,
    pacer: Pacer,
    /// Receive-window growth of all streams, within [`super::growth::GROWTH_BUDGET`].
    growth: Growth,
    /// The largest receive window of this tunnel's active streams (see [`Drain::lead`]).
    lead: Lead,
}

type Reader = futures_util::stream::SplitStream<crate::transport::WsStream>;

impl Session<'_> {
    async fn run(
        &mut self,
        mut reader: Reader,
        mut drained_rx: mpsc::UnboundedReceiver<Drained>,
        writer_task: &mut JoinSet<Result<(), String>>,
        cancel: &CancellationToken,
        retire: &CancellationToken,
        hello_deadline: Instant,
    ) -> End {
        let ka = self.cfg.keepalive;
        let mut last_seen = Instant::now();
        // `Some(t)`: a ping went out at `t` and nothing has been checked since.
        let mut ping_sent: Option<Instant> = None;
        let keepalive = tokio::time::sleep(ka.ping_interval);
        tokio::pin!(keepalive);
        let hello_timer = sleep_until(hello_deadline);
        tokio::pin!(hello_timer);
        // Set once retired: the latest moment to close even if streams are still open.
        let mut drain_until: Option<Instant> = None;
        let drain_timer = sleep_until(hello_deadline);
        tokio::pin!(drain_timer);
        // v1 backpressure: the stream whose full queue stops the reader, and since when.
        let stall = sleep_until(hello_deadline);
        tokio::pin!(stall);
        // Target health changes (any connector, any tunnel), and when the next STATUS is due.
        let mut targets_changed = self.shared.targets_changed.subscribe();
        let status_timer = sleep_until(hello_deadline);
        tokio::pin!(status_timer);
        let mut stalled: Option<StreamId> = None;
        loop {
            self.gauge.set(self.demux.len());
            let full = self.demux.full();
            if full != stalled {
                stalled = full;
                if full.is_some() {
                    stall.as_mut().reset(Instant::now() + ka.ping_timeout);
                }
            }
            if let Some(due) = self.pacer.due().filter(|d| *d != status_timer.deadline()) {
                status_timer.as_mut().reset(due);
            }
            if drain_until.is_some() && self.demux.is_empty() {
                return self.close_retired(writer_task).await;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    let _ = self.ctrl.send(Outgoing::Close { code: 1001, reason: "agent shutting down".into() });
                    let _ = tokio::time::timeout(CLOSE_GRACE, writer_task.join_next()).await;
                    return End::Shutdown;
                }
                _ = retire.cancelled(), if drain_until.is_none() => {
                    let until = self.drain_deadline();
                    tracing::info!(streams = self.demux.len(), "tunnel replaced; draining its streams");
                    drain_until = Some(until);
                    drain_timer.as_mut().reset(until);
                }
                _ = &mut drain_timer, if drain_until.is_some() => {
                    tracing::info!(streams = self.demux.len(), "closing the replaced tunnel with streams still open");
                    return self.close_retired(writer_task).await;
                }
                r = writer_task.join_next() => {
                    return match r {
                        Some(Ok(Err(e))) => End::Broken(e),
                        _ => End::Broken("writer stopped".into()),
                    };
                }
                _ = &mut hello_timer, if self.ready_at.is_none() => return End::HelloTimeout,
                r = targets_changed.changed(), if self.report_status => {
                    if r.is_ok() {
                        let _ = self.pacer.changed(Instant::now());
                    }
                }
                () = &mut status_timer, if self.pacer.due().is_some() => self.send_status(),
                () = &mut stall, if stalled.is_some() => {
                    // A v1 target that has not read for `ping_timeout`: give up on it.
                    if let Some(id) = stalled {
                        let d = self.demux.overflow(id);
                        if let Some(end) = self.dispatch(d) {
                            return end;
                        }
                    }
                }
                _ = &mut keepalive => {
                    let now = Instant::now();
                    if stalled.is_some() {
                        // Not reading the tunnel (v1 backpressure) is not the relay's silence;
                        // our pings still go out, so the relay sees us alive.
                        last_seen = now;
                    }
                    match ping_sent {
                        Some(t) if last_seen < t => return End::KeepaliveTimeout,
                        Some(t) => {
                            ping_sent = None;
                            keepalive.as_mut().reset(t + ka.ping_interval);
                        }
                        None => {
                            let _ = self.ctrl.send(Outgoing::Ping);
                            ping_sent = Some(now);
                            keepalive.as_mut().reset(now + ka.ping_timeout);
                        }
                    }
                }
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    let task = match &done {
                        Ok((task, _)) => *task,
                        Err(e) => {
                            tracing::error!(error = %e, "stream task failed");
                            e.id()
                        }
                    };
                    if let Some((id, serial)) = self.task_streams.remove(&task) {
                        if self.demux.get(id).is_some_and(|s| s.handle.serial == serial) {
                            self.demux.remove(id);
                        }
                    }
                    self.demux.shrink(STREAMS_MIN_CAPACITY);
                }
                Some(d) = drained_rx.recv() => {
                    if self.demux.get(d.id).is_some_and(|s| s.handle.serial == d.serial) {
                        self.on_written(d.id, d.bytes, d.frames);
                    }
                }
                msg = reader.next(), if stalled.is_none() => {
                    last_seen = Instant::now();
                    let dispatch = match msg {
                        None => return End::Broken("connection closed".into()),
                        Some(Err(e)) => return End::Broken(e.to_string()),
                        Some(Ok(Message::Binary(b))) => {
                            if self.ready_at.is_none() {
                                self.features = binary::hello_ack_features(&b);
                            }
                            self.demux.on_binary(&b)
                        }
                        Some(Ok(Message::Text(t))) => self.demux.on_text(t.as_str()),
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), printable(f.reason.as_str(), 120)))
                                .unwrap_or((1005, String::new()));
                            return End::RelayClosed { code, reason };
                        }
                        // Pings are answered by tungstenite; pings and pongs only prove liveness.
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    };
                    if let Some(end) = self.dispatch(dispatch) {
                        return end;
                    }
                }
            }
        }
    }

    /// The latest close of a retired tunnel: its token's expiry, but never less than
    /// [`MIN_DRAIN`] from now. A token without `exp` (only a reload retires such a tunnel: a
    /// refresh needs `exp`) sets no deadline: the streams run to their end.
    fn drain_deadline(&self) -> Instant {
        let min = Instant::now() + MIN_DRAIN;
        match self
            .token
            .as_ref()
            .and_then(|t| t.time_left(SystemTime::now()))
        {
            // Bounded by `token::MAX_EXP`, yet an Instant that far may not exist: a year then.
            Some(Ok(left)) => Instant::now()
                .checked_add(left)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
                .max(min),
            Some(Err(_)) => min,
            None => Instant::now() + Duration::from_secs(86_400 * 365),
        }
    }

    /// Sends a normal Close (the relay drops this tunnel; the agent's newer one stays).
    async fn close_retired(&mut self, writer_task: &mut JoinSet<Result<(), String>>) -> End {
        let _ = self.ctrl.send(Outgoing::Close {
            code: 1000,
            reason: "replaced by a newer tunnel".into(),
        });
        let _ = tokio::time::timeout(CLOSE_GRACE, writer_task.join_next()).await;
        End::Retired
    }

    /// Sends the health of this session's multi-host connectors (see [`status`]).
    fn send_status(&mut self) {
        self.pacer.sent(Instant::now());
        let current = self.shared.cfg();
        if let Some(report) = status::report(self.cfg, &current, Instant::now().into_std()) {
            self.send_ctrl(Frame::Status(Box::new(report)));
        }
    }

    fn send_ctrl(&self, frame: Frame) {
        let _ = self.ctrl.send(Outgoing::Frame(frame));
    }

    /// Does what one received message asks. `Some`: the session ends.
    fn dispatch(&mut self, d: Dispatch<Entry>) -> Option<End> {
        match d {
            Dispatch::HelloAck => {
                self.ready_at = Some(Instant::now());
                self.ready_guard = Some(self.shared.health.ready_guard());
                let exp = self.token.as_ref().and_then(|t| t.expires_at());
                self.shared.metrics.token_in_use(exp);
                let _ = self.ready_tx.send(Ready {
                    id: tokio::task::id(),
                    token: self.token.clone(),
                });
                tracing::info!(
                    event = "tunnel_connected",
                    agent_id = %self.cfg.agent_id,
                    connectors = self.cfg.targets.len(),
                    "HELLO_ACK received; READY"
                );
                let has_multi = self.cfg.targets.values().any(|t| t.hosts.len() > 1);
                self.report_status =
                    self.features.status && self.demux.version() == Version::V2 && has_multi;
                if self.report_status {
                    // The first report right after READY; later ones on change.
                    let _ = self.pacer.changed(Instant::now());
                }
            }
            // Only a relay receives STATUS.
            Dispatch::Status(_) => {}
            Dispatch::Open {
                id, connector, cid, ..
            } => self.on_open(id, connector, cid),
            Dispatch::Data {
                id,
                payload,
                direct,
            } => self.deliver(id, payload, direct),
            Dispatch::Fin { id, shutdown } => {
                if shutdown {
                    self.tell(id, ToStream::ShutWrite);
                }
            }
            Dispatch::Window { id, credit } => self.tell(id, ToStream::Window(credit)),
            Dispatch::PeerReset { id, code, handle } => {
                tracing::debug!(id, code = code.as_str(), "stream reset by the relay");
                let _ = handle.tx.send(ToStream::Abort);
            }
            Dispatch::Reset {
                id,
                rst,
                reason,
                handle,
            } => {
                tracing::warn!(
                    id,
                    code = reason.code.as_str(),
                    reason = reason.reason,
                    "resetting stream"
                );
                self.send_ctrl(rst);
                if let Some(h) = handle {
                    let _ = h.tx.send(ToStream::Abort);
                }
            }
            Dispatch::Ignored(Ignored::UnknownStream { kind, id }) => {
                tracing::debug!(id, frame = kind, "frame for an unknown stream ignored");
            }
            Dispatch::Ignored(Ignored::Undecodable(e)) => {
                tracing::warn!(error = %e, "invalid frame from the relay ignored");
            }
            Dispatch::Close(v) => {
                let _ = self.ctrl.send(Outgoing::Close {
                    code: 1002,
                    reason: v.to_string(),
                });
                return Some(End::Protocol(v.to_string()));
            }
            // The relay role's HELLO never reaches an agent's demux.
            Dispatch::Nothing | Dispatch::Hello(_) => {}
        }
        None
    }

    fn tell(&self, id: StreamId, msg: ToStream) {
        if let Some(slot) = self.demux.get(id) {
            let _ = slot.handle.tx.send(msg);
        }
    }

    fn on_written(&mut self, id: StreamId, bytes: usize, frames: usize) {
        // Each window grows up to `limits.max_stream_window_bytes`, all of them together
        // within the tunnel's growth budget.
        let now = Instant::now().into_std();
        let at = Drain::at(now, self.growth.room()).with_lead(self.lead.offer(id, now));
        let base = self.demux.params().window;
        match self.demux.on_written(id, bytes, frames, at) {
            Written::Unknown => {}
            Written::Ok(w) => {
                if let Some(slot) = self.demux.get_mut(id) {
                    let window = slot.recv.window();
                    self.lead.update(id, window, now);
                    let grown = window.saturating_sub(base);
                    slot.handle.grown.set(grown as usize);
                }
                if let Some(window) = w.window {
                    self.send_ctrl(window);
                }
                if w.shutdown {
                    self.tell(id, ToStream::ShutWrite);
                }
            }
            Written::Reset { rst, handle } => {
                tracing::error!(id, "stream accounting failed; resetting it");
                self.send_ctrl(rst);
                let _ = handle.tx.send(ToStream::Abort);
            }
        }
    }

    /// Relay bytes for a target: straight into the socket while nothing of the stream waits
    /// (saves a task hand-off per frame, and the frame is dropped at once, so the WebSocket
    /// reader reuses its buffer), the rest to the stream task behind what it holds.
    fn deliver(&mut self, id: StreamId, payload: Bytes, direct: bool) {
        let Some(slot) = self.demux.get(id) else {
            return;
        };
        let mut rest = payload;
        if direct {
            if let Some(sock) = slot.handle.sock.get() {
                // Would block, or an error the stream task will meet on its own write: queue.
                let n = sock.try_write(&rest).unwrap_or(0);
                if n > 0 {
                    self.shared.metrics.wrote_to_target(n);
                    let whole = usize::from(n == rest.len());
                    rest = rest.slice(n..);
                    self.on_written(id, n, whole);
                }
            }
        }
        if !rest.is_empty() {
            self.tell(id, ToStream::Data(rest));
        }
    }

    fn on_open(&mut self, id: StreamId, connector: String, cid: Option<String>) {
        if let Some(cid) = cid {
            // v1: our frames for this stream carry the relay's own cid.
            let _ = self.ctrl.send(Outgoing::Bind(id, cid));
        }
        // The running table, not the one of this tunnel's HELLO: after a reload new streams go
        // to the new target (and a removed connector is refused) on every tunnel.
        let current = self.shared.cfg();
        // A name too long for the table cannot be one we export.
        let found = ConnectorName::try_from(connector.as_str())
            .ok()
            .and_then(|name| current.targets.get(&name).cloned());
        let Some(target) = found else {
            tracing::info!(id, connector = %printable(&connector, 64), "OPEN for a connector this agent does not export");
            let reset = Reset::new(
                RstCode::UnknownConnector,
                "connector not exported by this agent",
            );
            let rst = self.demux.refuse(id, reset);
            self.send_ctrl(rst);
            let _ = self.ctrl.send(Outgoing::Forget(id));
            return;
        };
        let (tx, rx) = stream::inbox::inbox();
        let sock = Arc::new(OnceLock::new());
        self.next_serial += 1;
        let entry = Entry {
            tx,
            serial: self.next_serial,
            sock: sock.clone(),
            grown: self.growth.share(),
        };
        let send = match self.demux.accept(id, entry) {
            Ok(send) => send,
            Err(_) => {
                tracing::warn!(id, connector = %connector, "stream limit reached");
                let reset = Reset::new(RstCode::Other, "agent stream limit reached");
                let rst = self.demux.refuse(id, reset);
                self.send_ctrl(rst);
                let _ = self.ctrl.send(Outgoing::Forget(id));
                return;
            }
        };
        tracing::debug!(id, connector = %connector, "OPEN");
        let ctx = StreamCtx {
            serial: self.next_serial,
            connector,
            target,
            connect_timeout: self.cfg.limits.connect_timeout,
            version: self.demux.version(),
            max_payload: self.cfg.limits.protocol.max_payload,
            send,
            out: self.data.clone(),
            drained: self.drained_tx.clone(),
            sock,
            metrics: self.shared.metrics.clone(),
            changed: self.shared.targets_changed.clone(),
        };
        let task = self.tasks.spawn(stream::run(ctx, rx));
        self.task_streams.insert(task.id(), (id, self.next_serial));
    }
}

/// At most `max` printable characters of `s` (names and reasons from the relay, for logs).
fn printable(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}
