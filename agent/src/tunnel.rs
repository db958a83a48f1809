//! The tunnel: one session per WebSocket connection, and the supervisor that keeps one up.
//!
//! A session dials the relay, sends HELLO, waits for HELLO_ACK (health READY), then reads
//! frames and dispatches them to stream tasks until the WebSocket closes, the keepalive fails
//! or the agent stops. The session task owns the stream table and every per-stream receive
//! window; stream tasks and the writer task live in `JoinSet`s owned by the session, so ending
//! (or dropping) the session closes every target socket at once.
//!
//! The reader never waits on anything but the WebSocket: frames for a stream go into that
//! stream's channel (bounded by the v2 window or the v1 queue depth, both enforced here), and
//! control frames go to the writer's unbounded control queue.
//!
//! Token refresh: when the token in use has `exp`, the supervisor re-reads the token file
//! `refresh_before_exp` ahead of it; if the file holds a new token it opens a second session
//! while the first stays READY, and once the new one is READY (the relay sends new streams to
//! the newest tunnel of an agent) the old one is retired: it closes when its last stream ends,
//! or at its token's expiry. Health therefore stays READY across a refresh.
//!
//! systemd: the supervisor alone speaks to it (see [`crate::notify`]): READY=1 with the first
//! HELLO_ACK, a STATUS line per state change (connecting, READY with the stream count,
//! reconnecting with the delay and the cause), WATCHDOG=1 from its loop, STOPPING=1 at the end.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use nowconnect_shared::subprotocol::Version;
use nowconnect_shared::{
    binary, DecodeError, Dir, Frame, Hello, RecvWindow, RstCode, StreamId, DEFAULT_WINDOW,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::{Id as TaskId, JoinSet};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{AgentConfig, ConnectorName};
use crate::health::{HealthState, ReadyGuard, StreamGauge};
use crate::notify::{Notifier, StatusLine};
use crate::stream::{self, Drained, StreamCtx, ToStream};
use crate::token::{self, Token};
use crate::transport::{DialError, Dialed, Dialer, Progress, Step};
use crate::writer::{self, Encoder, Outgoing};

/// A tunnel READY this long resets the reconnect backoff.
const HEALTHY_PERIOD: Duration = Duration::from_secs(30);
/// How long a graceful stop waits for the Close frame to go out.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Most streams one tunnel carries at once; more OPENs are reset (bounds agent memory).
///
/// The stream table stays a `HashMap` with this explicit cap rather than a heapless map: a
/// fixed-capacity table of 65,536 entries would take ~3 MiB up front, in every session,
/// whereas an idle agent needs a few entries. The cap bounds it; [`shrink_streams`] gives the
/// memory back after a burst.
const MAX_STREAMS: usize = 65_536;
/// The stream table keeps at least this many slots when it shrinks (no churn on small agents).
const STREAMS_MIN_CAPACITY: usize = 256;
/// A retired tunnel may keep its streams at least this long, even if its token has expired.
const MIN_DRAIN: Duration = Duration::from_secs(5);
/// How often systemd's STATUS line is refreshed while READY (its stream count changes without
/// waking the supervisor).
const STATUS_REFRESH: Duration = Duration::from_secs(5);

/// What the supervisor and its sessions share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: AgentConfig,
    pub dialer: Dialer,
    pub health: HealthState,
    /// systemd notifications (no-op without NOTIFY_SOCKET); sent by the supervisor only.
    pub notify: Notifier,
}

/// Why a session ended.
#[derive(Debug)]
pub(crate) enum End {
    Shutdown,
    Dial(DialError),
    /// The dial did not finish in time; says at which step.
    HandshakeTimeout(String),
    HelloTimeout,
    RelayClosed {
        code: u16,
        reason: String,
    },
    Broken(String),
    KeepaliveTimeout,
    Protocol(String),
    /// Replaced by a newer tunnel (token refresh) and drained.
    Retired,
}

impl End {
    /// Short stable name of the cause.
    fn reason(&self) -> &'static str {
        match self {
            End::Shutdown => "shutdown",
            End::Dial(e) => e.reason(),
            End::HandshakeTimeout(_) => "timeout",
            End::HelloTimeout => "hello_timeout",
            End::RelayClosed { .. } => "relay_closed",
            End::Broken(_) => "broken",
            End::KeepaliveTimeout => "keepalive",
            End::Protocol(_) => "protocol",
            End::Retired => "retired",
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Shutdown => f.write_str("agent shutting down"),
            End::Dial(e) => write!(f, "{e}"),
            End::HandshakeTimeout(what) => write!(f, "timed out {what}"),
            End::HelloTimeout => f.write_str("relay did not acknowledge HELLO in time"),
            End::RelayClosed { code, reason } if reason.is_empty() => {
                write!(f, "relay closed the tunnel (code {code})")
            }
            End::RelayClosed { code, reason } => {
                write!(f, "relay closed the tunnel (code {code}: {reason})")
            }
            End::Broken(e) => write!(f, "tunnel broken: {e}"),
            End::KeepaliveTimeout => f.write_str("no pong or frame from the relay in time"),
            End::Protocol(e) => write!(f, "protocol error from the relay: {e}"),
            End::Retired => f.write_str("replaced by a newer tunnel"),
        }
    }
}

/// A session's HELLO_ACK, reported to the supervisor.
#[derive(Debug)]
struct Ready {
    id: TaskId,
    token: Option<Token>,
}

/// A session the supervisor started; `retire` asks it to drain and close.
#[derive(Debug)]
struct Tracked {
    id: TaskId,
    retire: CancellationToken,
    /// The token it connected with (set at READY).
    token: Option<Token>,
}

/// What a session task returns.
type SessionResult = (End, Option<Duration>);

/// Keeps a tunnel up until `cancel`: dial, READY, reconnect with backoff after a failure, and
/// refresh ahead of the token's expiry. See the module docs for the refresh overlap.
pub(crate) async fn supervise(shared: Arc<Shared>, cancel: CancellationToken) {
    let limits = &shared.cfg.limits;
    let margin = shared.cfg.token_refresh_before;
    // While the file still holds the expiring token, look again this often.
    let recheck = (margin / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut backoff = Backoff::new(limits.reconnect_initial, limits.reconnect_max);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Ready>();
    let mut sessions: JoinSet<SessionResult> = JoinSet::new();
    // The READY tunnel new streams use.
    let mut current: Option<Tracked> = None;
    // A session dialing or waiting for HELLO_ACK (first connect, reconnect or refresh).
    let mut pending: Option<Tracked> = None;
    let mut retry_at: Option<Instant> = Some(Instant::now());
    let mut refresh_at: Option<Instant> = None;
    let mut stale_warned = false;
    let far = || Instant::now() + Duration::from_secs(86_400);
    // systemd: STATUS while down (connecting / reconnecting), a note while a replacement
    // tunnel fails, and the watchdog, pinged from this loop only: if the loop wedges, the
    // pings stop and systemd restarts the agent.
    let relay = shared.dialer.url().origin();
    let mut status = StatusLine::new(shared.notify.clone());
    let mut down_status = format!("connecting to {relay}");
    let mut note: Option<String> = None;
    let ping_every = shared.notify.ping_every();
    let mut watchdog = tokio::time::interval(ping_every.unwrap_or(STATUS_REFRESH));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval(STATUS_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if status.notifier().is_enabled() {
            let ready = current.is_some();
            let text = if ready {
                ready_status(&relay, shared.health.streams(), note.as_deref())
            } else {
                down_status.clone()
            };
            status.publish(text, ready);
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = watchdog.tick(), if ping_every.is_some() => status.notifier().watchdog(),
            _ = refresh.tick(), if current.is_some() && status.notifier().is_enabled() => {}
            Some(ready) = ready_rx.recv() => {
                let Some(mut p) = pending.take_if(|p| p.id == ready.id) else { continue };
                refresh_at = refresh_deadline(ready.token.as_ref(), margin);
                stale_warned = false;
                note = None;
                p.token = ready.token;
                if let Some(old) = current.replace(p) {
                    tracing::info!("new tunnel READY; the previous one closes when its streams end");
                    old.retire.cancel();
                }
            }
            Some(joined) = sessions.join_next_with_id(), if !sessions.is_empty() => {
                let (id, end, ready_for) = match joined {
                    Ok((id, (end, ready_for))) => (id, end, ready_for),
                    Err(e) => (e.id(), End::Broken(format!("session task failed: {e}")), None),
                };
                if end.is_shutdown_or(&cancel) {
                    continue;
                }
                if pending.as_ref().is_some_and(|p| p.id == id) {
                    pending = None;
                    let delay = backoff.next_delay();
                    retry_at = Some(Instant::now() + delay);
                    shared.health.set_error(end.to_string());
                    let delay_ms = delay.as_millis() as u64;
                    let retry = format!("retrying in {}: {end}", seconds(delay));
                    if current.is_some() {
                        note = Some(format!("replacement tunnel failed, {retry}"));
                        tracing::warn!(relay = %shared.dialer.url(), reason = end.reason(), error = %end, delay_ms, "cannot open the replacement tunnel; the current one stays up; retrying");
                    } else {
                        down_status = format!("reconnecting in {}: {end}", seconds(delay));
                        tracing::warn!(relay = %shared.dialer.url(), reason = end.reason(), error = %end, delay_ms, "cannot connect to the relay; retrying");
                    }
                } else if current.as_ref().is_some_and(|c| c.id == id) {
                    current = None;
                    refresh_at = None;
                    if ready_for.is_some_and(|d| d >= HEALTHY_PERIOD) {
                        backoff.reset();
                    }
                    shared.health.set_error(end.to_string());
                    if pending.is_none() {
                        let delay = backoff.next_delay();
                        retry_at = Some(Instant::now() + delay);
                        down_status = format!("reconnecting in {}: {end}", seconds(delay));
                        let delay_ms = delay.as_millis() as u64;
                        tracing::warn!(relay = %shared.dialer.url(), reason = end.reason(), error = %end, delay_ms, "tunnel down; reconnecting");
                    } else {
                        down_status = format!("connecting to {relay} (tunnel down: {end})");
                        tracing::warn!(relay = %shared.dialer.url(), reason = end.reason(), error = %end, "tunnel down while its replacement is being opened");
                    }
                } else {
                    tracing::info!(reason = end.reason(), "previous tunnel closed: {end}");
                }
            }
            _ = sleep_until(retry_at.unwrap_or_else(far)), if retry_at.is_some() && pending.is_none() => {
                retry_at = None;
                if current.is_none() {
                    down_status = format!("connecting to {relay}");
                }
                pending = Some(spawn_session(&mut sessions, &shared, &cancel, &ready_tx));
            }
            _ = sleep_until(refresh_at.unwrap_or_else(far)),
                if refresh_at.is_some() && pending.is_none() && retry_at.is_none() => {
                refresh_at = None;
                let (Some(cur), Some(path)) = (&current, shared.dialer.token_file()) else { continue };
                match token::read_any(path).await {
                    Ok(t) if cur.token.as_ref() != Some(&t) => {
                        tracing::info!(token_file = %path.display(), "token file holds a new token; opening a new tunnel before the current token expires");
                        pending = Some(spawn_session(&mut sessions, &shared, &cancel, &ready_tx));
                    }
                    other => {
                        if !stale_warned {
                            stale_warned = true;
                            let left = cur
                                .token
                                .as_ref()
                                .and_then(|t| t.time_left(SystemTime::now()))
                                .map(|l| match l {
                                    Ok(d) => format!("expires in {} s", d.as_secs()),
                                    Err(d) => format!("expired {} s ago", d.as_secs()),
                                })
                                .unwrap_or_default();
                            match other {
                                Err(e) => tracing::warn!(error = %e, "the tunnel's token {left}; cannot read a new one yet"),
                                Ok(_) => tracing::warn!(token_file = %path.display(), "the tunnel's token {left} and the token file still holds it; waiting for a new token"),
                            }
                        }
                        refresh_at = Some(Instant::now() + recheck);
                    }
                }
            }
        }
    }
    status.notifier().stopping("stopping: closing the tunnel");
    // Every session watches `cancel`: each sends its Close and ends.
    while sessions.join_next().await.is_some() {}
    tracing::info!("tunnel stopped");
}

impl End {
    fn is_shutdown_or(&self, cancel: &CancellationToken) -> bool {
        matches!(self, End::Shutdown) || cancel.is_cancelled()
    }
}

/// systemd's STATUS while a tunnel is READY.
fn ready_status(relay: &str, streams: usize, note: Option<&str>) -> String {
    let s = if streams == 1 { "" } else { "s" };
    match note {
        Some(note) => format!("READY: tunnel to {relay} up, {streams} stream{s}; {note}"),
        None => format!("READY: tunnel to {relay} up, {streams} stream{s}"),
    }
}

/// A delay as `1.2s`.
fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// When to look for a new token: `margin` before `exp` (now, if that has passed).
fn refresh_deadline(token: Option<&Token>, margin: Duration) -> Option<Instant> {
    let left = match token?.time_left(SystemTime::now())? {
        Ok(left) => left,
        Err(_) => Duration::ZERO,
    };
    Some(Instant::now() + left.saturating_sub(margin))
}

fn spawn_session(
    sessions: &mut JoinSet<SessionResult>,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    ready_tx: &mpsc::UnboundedSender<Ready>,
) -> Tracked {
    let retire = CancellationToken::new();
    let handle = sessions.spawn(session(
        shared.clone(),
        cancel.clone(),
        retire.clone(),
        ready_tx.clone(),
    ));
    Tracked {
        id: handle.id(),
        retire,
        token: None,
    }
}

/// One connection to the relay, from dial to close. Returns why it ended and how long it was
/// READY.
async fn session(
    shared: Arc<Shared>,
    cancel: CancellationToken,
    retire: CancellationToken,
    ready_tx: mpsc::UnboundedSender<Ready>,
) -> SessionResult {
    let cfg = &shared.cfg;
    let deadline = Instant::now() + cfg.limits.handshake_timeout;
    let progress = Progress::default();
    let dialed = tokio::select! {
        _ = cancel.cancelled() => return (End::Shutdown, None),
        r = tokio::time::timeout_at(deadline, shared.dialer.connect(&progress)) => r,
    };
    let Dialed { ws, version, token } = match dialed {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return (End::Dial(e), None),
        Err(_) => {
            let what = format!(
                "after {} ms {}",
                cfg.limits.handshake_timeout.as_millis(),
                shared.dialer.describe(progress.get())
            );
            return (End::HandshakeTimeout(what), None);
        }
    };
    progress.set(Step::Hello);
    let tls = ws.get_ref().relay_tls();
    tracing::info!(
        relay = %shared.dialer.url(),
        protocol = version.name(),
        tls = tls.as_deref().unwrap_or("none"),
        "connected; sending HELLO"
    );
    let (sink, reader) = ws.split();
    let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
    let (data_tx, data_rx) = mpsc::channel(writer::DATA_QUEUE);
    let encoder = Encoder::new(version, cfg.limits.protocol);
    let mut writer_task = JoinSet::new();
    writer_task.spawn(writer::run(sink, ctrl_rx, data_rx, encoder.clone()));
    let hello = Hello {
        agent_id: cfg.agent_id.as_str().to_owned(),
        connectors: cfg.connectors().map(str::to_owned).collect(),
        ver: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let _ = ctrl_tx.send(Outgoing::Frame(Frame::Hello(hello)));
    let (drained_tx, drained_rx) = mpsc::unbounded_channel();
    let mut t = Session {
        shared: &shared,
        version,
        encoder,
        ctrl: ctrl_tx,
        data: data_tx,
        drained_tx,
        streams: HashMap::new(),
        tasks: JoinSet::new(),
        next_serial: 0,
        gauge: shared.health.stream_gauge(),
        ready_at: None,
        ready_guard: None,
        ready_tx,
        token,
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

/// Receive-side bookkeeping of one stream, owned by the session.
#[derive(Debug)]
struct Entry {
    tx: mpsc::UnboundedSender<ToStream>,
    serial: u64,
    recv: Recv,
    /// The target socket once the stream task has connected it.
    sock: Arc<OnceLock<Arc<TcpStream>>>,
    /// FIN c2a passed on: no more direct writes (the stream task shuts the socket down).
    fin: bool,
}

#[derive(Debug)]
enum Recv {
    /// v2: credit we granted and how much of it is buffered.
    Window(RecvWindow),
    /// v1: DATA frames queued and not yet written.
    Queued(usize),
}

struct Session<'a> {
    shared: &'a Shared,
    version: Version,
    encoder: Encoder,
    ctrl: mpsc::UnboundedSender<Outgoing>,
    data: mpsc::Sender<Outgoing>,
    drained_tx: mpsc::UnboundedSender<Drained>,
    streams: HashMap<StreamId, Entry>,
    tasks: JoinSet<(StreamId, u64)>,
    next_serial: u64,
    /// `streams.len()`, counted into the agent's total (systemd STATUS).
    gauge: StreamGauge,
    ready_at: Option<Instant>,
    /// Held from HELLO_ACK to the end of the session: health READY.
    ready_guard: Option<ReadyGuard>,
    ready_tx: mpsc::UnboundedSender<Ready>,
    /// The token this tunnel was opened with (handed to the supervisor at READY).
    token: Option<Token>,
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
        let ka = self.shared.cfg.keepalive;
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
        loop {
            self.gauge.set(self.streams.len());
            if drain_until.is_some() && self.streams.is_empty() {
                return self.close_retired(writer_task).await;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    let _ = self.ctrl.send(Outgoing::Close { code: 1001, reason: "agent shutting down" });
                    let _ = tokio::time::timeout(CLOSE_GRACE, writer_task.join_next()).await;
                    return End::Shutdown;
                }
                _ = retire.cancelled(), if drain_until.is_none() => {
                    let until = self.drain_deadline();
                    tracing::info!(streams = self.streams.len(), "tunnel replaced; draining its streams");
                    drain_until = Some(until);
                    drain_timer.as_mut().reset(until);
                }
                _ = &mut drain_timer, if drain_until.is_some() => {
                    tracing::info!(streams = self.streams.len(), "closing the replaced tunnel with streams still open");
                    return self.close_retired(writer_task).await;
                }
                r = writer_task.join_next() => {
                    return match r {
                        Some(Ok(Err(e))) => End::Broken(e),
                        _ => End::Broken("writer stopped".into()),
                    };
                }
                _ = &mut hello_timer, if self.ready_at.is_none() => return End::HelloTimeout,
                _ = &mut keepalive => {
                    let now = Instant::now();
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
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    match done {
                        Ok((id, serial)) => {
                            if self.streams.get(&id).is_some_and(|e| e.serial == serial) {
                                self.streams.remove(&id);
                            }
                            shrink_streams(&mut self.streams);
                        }
                        Err(e) => tracing::error!(error = %e, "stream task failed"),
                    }
                }
                Some(d) = drained_rx.recv() => self.on_drained(d),
                msg = reader.next() => {
                    last_seen = Instant::now();
                    let msg = match msg {
                        None => return End::Broken("connection closed".into()),
                        Some(Err(e)) => return End::Broken(e.to_string()),
                        Some(Ok(m)) => m,
                    };
                    if let Some(end) = self.on_message(msg) {
                        return end;
                    }
                }
            }
        }
    }

    /// The latest close of a retired tunnel: its token's expiry, but never less than
    /// [`MIN_DRAIN`] from now.
    fn drain_deadline(&self) -> Instant {
        let min = Instant::now() + MIN_DRAIN;
        match self
            .token
            .as_ref()
            .and_then(|t| t.time_left(SystemTime::now()))
        {
            Some(Ok(left)) => (Instant::now() + left).max(min),
            _ => min,
        }
    }

    /// Sends a normal Close (the relay drops this tunnel; the agent's newer one stays).
    async fn close_retired(&mut self, writer_task: &mut JoinSet<Result<(), String>>) -> End {
        let _ = self.ctrl.send(Outgoing::Close {
            code: 1000,
            reason: "replaced by a newer tunnel",
        });
        let _ = tokio::time::timeout(CLOSE_GRACE, writer_task.join_next()).await;
        End::Retired
    }

    /// Handles one WebSocket message; `Some` ends the session.
    fn on_message(&mut self, msg: Message) -> Option<End> {
        let decoded = match (msg, &self.encoder) {
            (Message::Binary(b), Encoder::V2(limits)) => match binary::decode(&b, limits) {
                Ok(f) => f,
                Err(e) => {
                    let id = b
                        .get(1..5)
                        .and_then(|s| <[u8; 4]>::try_from(s).ok())
                        .map(u32::from_be_bytes)
                        .unwrap_or(0);
                    self.on_decode_error(id, &e);
                    return None;
                }
            },
            (Message::Text(t), Encoder::V1(codec)) => {
                let r = writer::lock(codec).decode(t.as_str());
                match r {
                    Ok(f) => f,
                    Err(e) => {
                        let id = match e {
                            DecodeError::Seq { id, .. } => id,
                            _ => 0,
                        };
                        self.on_decode_error(id, &e);
                        return None;
                    }
                }
            }
            (Message::Binary(_), Encoder::V1(_)) | (Message::Text(_), Encoder::V2(_)) => {
                let _ = self.ctrl.send(Outgoing::Close {
                    code: 1002,
                    reason: "wrong message type",
                });
                return Some(End::Protocol(format!(
                    "{} tunnel received the other message type",
                    self.version.name()
                )));
            }
            (Message::Close(frame), _) => {
                let (code, reason) = frame
                    .map(|f| {
                        let reason: String = f
                            .reason
                            .as_str()
                            .chars()
                            .filter(|c| !c.is_control())
                            .take(120)
                            .collect();
                        (u16::from(f.code), reason)
                    })
                    .unwrap_or((1005, String::new()));
                return Some(End::RelayClosed { code, reason });
            }
            // Pings are answered by tungstenite; pings and pongs only prove liveness.
            (Message::Ping(_) | Message::Pong(_) | Message::Frame(_), _) => return None,
        };
        self.on_frame(decoded)
    }

    fn on_decode_error(&mut self, id: StreamId, e: &DecodeError) {
        if matches!(e, DecodeError::BadCid) {
            // v1 frame for a cid we already forgot (it crossed our RST): ignore.
            tracing::debug!("frame for an unknown cid ignored");
            return;
        }
        if id != 0 && self.streams.contains_key(&id) {
            tracing::warn!(id, error = %e, "invalid frame; resetting the stream");
            self.reset(id, RstCode::Protocol, "invalid frame");
        } else {
            tracing::warn!(error = %e, "invalid frame from the relay ignored");
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Option<End> {
        if self.ready_at.is_none() {
            return match frame {
                Frame::HelloAck => {
                    self.ready_at = Some(Instant::now());
                    self.ready_guard = Some(self.shared.health.ready_guard());
                    let _ = self.ready_tx.send(Ready {
                        id: tokio::task::id(),
                        token: self.token.clone(),
                    });
                    tracing::info!(
                        agent_id = %self.shared.cfg.agent_id,
                        connectors = self.shared.cfg.targets.len(),
                        "HELLO_ACK received; READY"
                    );
                    None
                }
                other => {
                    let _ = self.ctrl.send(Outgoing::Close {
                        code: 1002,
                        reason: "frame before HELLO_ACK",
                    });
                    Some(End::Protocol(format!("{} before HELLO_ACK", other.kind())))
                }
            };
        }
        match frame {
            Frame::Open { id, connector, .. } => self.on_open(id, connector),
            Frame::Data { id, payload } => {
                let len = payload.len();
                let Some(e) = self.streams.get_mut(&id) else {
                    if self.version == Version::V1 {
                        // Decoding it re-created seq state for the finished stream; drop it again.
                        let _ = self.data.try_send(Outgoing::Forget(id));
                    }
                    return None;
                };
                let depth = self.shared.cfg.limits.queue_depth_per_cid;
                let over = match &mut e.recv {
                    Recv::Window(w) => w
                        .on_data(len)
                        .err()
                        .map(|_| (RstCode::FlowControl, "credit exceeded")),
                    Recv::Queued(n) => {
                        *n += 1;
                        (*n > depth).then_some((RstCode::QueueOverflow, "queue overflow"))
                    }
                };
                match over {
                    Some((code, reason)) => {
                        tracing::warn!(id, code = code.as_str(), "resetting stream");
                        self.reset(id, code, reason);
                    }
                    None => {
                        let rest = write_through(e, payload);
                        if let Some(credit) = rest.credit {
                            let _ = self
                                .ctrl
                                .send(Outgoing::Frame(Frame::Window { id, credit }));
                        }
                        if let Some(rest) = rest.left {
                            let _ = e.tx.send(ToStream::Data(rest));
                        }
                    }
                }
            }
            Frame::Fin { id, dir: Dir::C2a } => {
                if let Some(e) = self.streams.get_mut(&id) {
                    e.fin = true;
                    let _ = e.tx.send(ToStream::Fin);
                }
            }
            Frame::Fin { id, dir: Dir::A2c } => {
                if self.streams.contains_key(&id) {
                    self.reset(id, RstCode::Protocol, "FIN a2c from the relay");
                }
            }
            Frame::Rst { id, code, .. } => {
                if self.streams.remove(&id).is_some() {
                    tracing::debug!(id, code = code.as_str(), "stream reset by the relay");
                }
            }
            Frame::Window { id, credit } => {
                if let Some(e) = self.streams.get(&id) {
                    let _ = e.tx.send(ToStream::Window(credit));
                }
            }
            Frame::Hello(_) | Frame::HelloAck => {
                tracing::debug!("unexpected connection frame ignored");
            }
        }
        None
    }

    fn on_open(&mut self, id: StreamId, connector: String) {
        if let Some(old) = self.streams.get(&id) {
            if !old.tx.is_closed() {
                tracing::warn!(id, "OPEN for a stream id in use");
                self.reset(id, RstCode::Protocol, "stream id in use");
                return;
            }
            // The old stream has finished and is only waiting to be reaped.
            self.streams.remove(&id);
        }
        let cfg = &self.shared.cfg;
        // A name too long for the table cannot be one we export.
        let found = ConnectorName::try_from(connector.as_str())
            .ok()
            .and_then(|name| cfg.targets.get(&name));
        let Some(target) = found else {
            tracing::info!(id, connector = %printable(&connector), "OPEN for a connector this agent does not export");
            self.send_rst(
                id,
                RstCode::UnknownConnector,
                "connector not exported by this agent",
            );
            return;
        };
        if self.streams.len() >= MAX_STREAMS {
            tracing::warn!(id, connector = %connector, "stream limit reached");
            self.send_rst(id, RstCode::Other, "agent stream limit reached");
            return;
        }
        tracing::debug!(id, connector = %connector, "OPEN");
        let (tx, rx) = mpsc::unbounded_channel();
        let sock = Arc::new(OnceLock::new());
        self.next_serial += 1;
        let ctx = StreamCtx {
            id,
            serial: self.next_serial,
            connector,
            target: target.clone(),
            connect_timeout: cfg.limits.connect_timeout,
            version: self.version,
            max_payload: cfg.limits.protocol.max_payload,
            window: DEFAULT_WINDOW,
            out: self.data.clone(),
            drained: self.drained_tx.clone(),
            sock: sock.clone(),
        };
        self.tasks.spawn(stream::run(ctx, rx));
        let recv = match self.version {
            Version::V2 => Recv::Window(RecvWindow::new(DEFAULT_WINDOW)),
            Version::V1 => Recv::Queued(0),
        };
        self.streams.insert(
            id,
            Entry {
                tx,
                serial: self.next_serial,
                recv,
                sock,
                fin: false,
            },
        );
    }

    fn on_drained(&mut self, d: Drained) {
        let Some(e) = self.streams.get_mut(&d.id).filter(|e| e.serial == d.serial) else {
            return;
        };
        match &mut e.recv {
            Recv::Window(w) => match w.on_drained(d.bytes) {
                Ok(Some(credit)) => {
                    let _ = self
                        .ctrl
                        .send(Outgoing::Frame(Frame::Window { id: d.id, credit }));
                }
                Ok(None) => {}
                Err(err) => tracing::error!(id = d.id, error = %err, "window accounting"),
            },
            Recv::Queued(n) => *n = n.saturating_sub(d.frames),
        }
    }

    /// Resets a live stream: RST to the relay, and the stream task closes its socket at once.
    fn reset(&mut self, id: StreamId, code: RstCode, reason: &str) {
        self.send_rst(id, code, reason);
        self.streams.remove(&id);
    }

    fn send_rst(&self, id: StreamId, code: RstCode, reason: &str) {
        let rst = Frame::Rst {
            id,
            code,
            reason: reason.to_owned(),
        };
        let _ = self.ctrl.send(Outgoing::Frame(rst));
    }
}

/// What [`write_through`] could not write, and the credit to return for what it wrote.
struct WriteThrough {
    left: Option<Bytes>,
    credit: Option<u32>,
}

/// v2 DATA for a stream with nothing else queued goes straight into its target socket, from
/// the tunnel task, as far as the socket takes it now; the rest goes to the stream task as usual.
/// Order holds: while anything of the stream is queued (received and not reported written),
/// everything goes through the queue. Writing here saves a task hand-off per frame and drops
/// the frame at once, so the WebSocket reader can reuse its buffer for the next one instead of
/// allocating a new one (what the static musl build pays most for).
fn write_through(e: &mut Entry, payload: Bytes) -> WriteThrough {
    let queued = |payload: Bytes| WriteThrough {
        left: Some(payload),
        credit: None,
    };
    let (Recv::Window(w), Some(sock)) = (&mut e.recv, e.sock.get()) else {
        return queued(payload);
    };
    if e.fin || payload.is_empty() || w.buffered() as usize != payload.len() {
        return queued(payload);
    }
    let n = match sock.try_write(&payload) {
        Ok(n) => n,
        // Would block, or an error the stream task will meet on its own write.
        Err(_) => return queued(payload),
    };
    let credit = match w.on_drained(n) {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(error = %err, "window accounting");
            None
        }
    };
    WriteThrough {
        left: (n < payload.len()).then(|| payload.slice(n..)),
        credit,
    }
}

/// Gives memory back once a burst of streams has ended: a table using under a quarter of its
/// slots shrinks to twice its length (never below [`STREAMS_MIN_CAPACITY`]).
fn shrink_streams<V>(streams: &mut HashMap<StreamId, V>) {
    let keep = (streams.len() * 2).max(STREAMS_MIN_CAPACITY);
    if streams.capacity() > 2 * keep {
        streams.shrink_to(keep);
    }
}

fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A v2 entry whose target socket is connected to the returned peer.
    async fn entry_with_target() -> (Entry, TcpStream, mpsc::UnboundedReceiver<ToStream>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (sock, peer) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (tx, rx) = mpsc::unbounded_channel();
        let e = Entry {
            tx,
            serial: 1,
            recv: Recv::Window(RecvWindow::new(DEFAULT_WINDOW)),
            sock: Arc::new(OnceLock::new()),
            fin: false,
        };
        let _ = e.sock.set(Arc::new(sock.expect("connect")));
        (e, peer.expect("accept").0, rx)
    }

    fn receive(e: &mut Entry, payload: &'static [u8]) -> WriteThrough {
        if let Recv::Window(w) = &mut e.recv {
            w.on_data(payload.len()).expect("within the window");
        }
        write_through(e, Bytes::from_static(payload))
    }

    #[tokio::test]
    async fn data_goes_straight_to_an_idle_target_and_returns_credit() {
        let (mut e, mut peer, mut rx) = entry_with_target().await;
        // A 2 KiB window returns credit once 1 KiB is written.
        e.recv = Recv::Window(RecvWindow::new(2048));
        let r = receive(&mut e, &[5u8; 1024]);
        assert!(r.left.is_none(), "an empty socket takes 1 KiB at once");
        assert_eq!(r.credit, Some(1024), "credit for what went straight out");
        let Recv::Window(w) = &e.recv else {
            unreachable!("v2 entry")
        };
        assert_eq!(w.buffered(), 0);
        assert!(
            rx.try_recv().is_err(),
            "nothing went through the stream task"
        );
        let mut got = vec![0u8; 1024];
        tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert!(got.iter().all(|&b| b == 5));
    }

    #[tokio::test]
    async fn data_queues_behind_queued_bytes_and_after_fin() {
        let (mut e, _peer, _rx) = entry_with_target().await;
        // Received and not reported written: the stream task holds it, so the next frame
        // must queue behind it.
        if let Recv::Window(w) = &mut e.recv {
            w.on_data(10).expect("window");
        }
        let r = receive(&mut e, b"after");
        assert_eq!(r.left.as_deref(), Some(&b"after"[..]));
        assert!(r.credit.is_none());

        let (mut e, _peer, _rx) = entry_with_target().await;
        e.fin = true;
        let r = receive(&mut e, b"late");
        assert_eq!(
            r.left.as_deref(),
            Some(&b"late"[..]),
            "never written after FIN"
        );

        let (mut e, _peer, _rx) = entry_with_target().await;
        e.sock = Arc::new(OnceLock::new());
        let r = receive(&mut e, b"early");
        assert_eq!(
            r.left.as_deref(),
            Some(&b"early"[..]),
            "queued until connected"
        );
    }

    #[tokio::test]
    async fn a_full_target_socket_leaves_the_rest_for_the_stream_task() {
        let (mut e, _peer, _rx) = entry_with_target().await;
        // The peer never reads: once the socket buffers are full, what is left must queue,
        // and the window must count exactly what the socket took.
        let chunk: &'static [u8] = &[9u8; 64 * 1024];
        let mut written = 0usize;
        let mut queued = false;
        for _ in 0..256 {
            if let Recv::Window(w) = &mut e.recv {
                if w.remaining() < chunk.len() as u32 {
                    // Pretend the relay got its credit back (it would, with WINDOW).
                    *w = RecvWindow::new(DEFAULT_WINDOW);
                }
            }
            let r = receive(&mut e, chunk);
            match r.left {
                None => written += chunk.len(),
                Some(rest) => {
                    written += chunk.len() - rest.len();
                    let Recv::Window(w) = &e.recv else {
                        unreachable!("v2 entry")
                    };
                    assert_eq!(w.buffered() as usize, rest.len());
                    queued = true;
                    break;
                }
            }
        }
        assert!(queued, "16 MiB into a socket nobody reads never filled it");
        assert!(written > 0);
    }

    #[test]
    fn stream_table_gives_memory_back_after_a_burst() {
        let mut t: HashMap<StreamId, ()> = HashMap::new();
        for id in 0..10_000 {
            t.insert(id, ());
        }
        let burst = t.capacity();
        shrink_streams(&mut t);
        assert_eq!(t.capacity(), burst, "a full table keeps its slots");
        t.retain(|id, _| *id < 10);
        shrink_streams(&mut t);
        assert!(t.capacity() >= STREAMS_MIN_CAPACITY);
        assert!(
            t.capacity() < 2 * 2 * STREAMS_MIN_CAPACITY,
            "{}",
            t.capacity()
        );
        assert_eq!(t.len(), 10);
    }
}
