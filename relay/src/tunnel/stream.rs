//! One client connection relayed through the tunnel: the stream task, a thin driver of the
//! stream's [`SendHalf`] (shared crate) and its client socket.
//!
//! The task authorizes the client, sends OPEN, then moves bytes with non-blocking socket calls
//! so a client that stops reading never stops us from reading it (and the reverse):
//! - c2a: on `readable()`, one read of at most [`SendHalf::read_budget`] bytes with the v2
//!   header in front, frozen and queued for the writer (arena reuse: see `ReadArena`).
//! - a2c: the session writes DATA straight into the socket while nothing of this stream waits;
//!   only what the socket did not take comes here ([`ToStream::Data`]), queued and written on
//!   `writable()`, each write reported back ([`StreamEvent::Drained`]) so the session's
//!   receive half can return credit.
//!
//! The session decides every inbound rule (its `RecvHalf`): it tells this task to shut the
//! write side, or aborts it (peer RST, or a reset the session already sent). Whatever the end,
//! the task leaves through one exit that reports it to the session and frees its slots.
//!
//! Until the agent answers on the stream, what the client sent is kept ([`Replay`]): an agent
//! that answers OPEN with `connect_failed` then does not cost the client its connection, the
//! task hands the client to another agent's tunnel ([`Reroute`]), whose stream task sends the
//! kept bytes first ([`Reopen`]). Once, and only while that is safe: see `crate::replay`.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nowconnect_shared::arena::{ReadArena, ARENA_IDLE};
use nowconnect_shared::queue::WriteQueue;
use nowconnect_shared::{Frame, Reset, RstCode, SendHalf, StreamId, Version};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::writer::Out;
use crate::authorize::{Authorizer, Request};
use crate::budget::{Budget, FRAME_COST};
use crate::conn::{reject_client, ClientSock, ConnGuard, ListenerCtx, NewConn, Reroute};
use crate::metrics::{CodeLabel, Metrics};
use crate::replay::{Chunk, Reopen, Replay, NOT_REPLAYABLE, NO_AGENT, REROUTED};
use crate::sessions::{SessionInfo, Sessions};

/// "Never" for timers: a year.
const FAR: Duration = Duration::from_secs(86_400 * 365);
/// How soon a stream the outbound budget refused tries again without a wake-up.
const STARVED_RETRY: Duration = Duration::from_millis(100);

/// From the session to a stream task.
#[derive(Debug)]
pub(super) enum ToStream {
    /// Agent bytes the socket did not take straight away (already charged to the window).
    Data(Bytes),
    /// Send credit (v2 WINDOW).
    Window(u32),
    /// Every byte before the agent's FIN is written: shut the client's write side.
    ShutWrite,
    /// The stream is over on the session's side; close the client at once, send nothing.
    Abort(Abort),
}

/// Why the session aborted a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Abort {
    /// The agent reset it.
    PeerReset(RstCode),
    /// The session reset it (and sent the RST).
    Reset(RstCode),
}

/// Names one stream task: its id, and a serial that tells it apart from a later stream that
/// reuses the id (ids wrap after 2^31 streams) while its last events are still queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key {
    pub id: StreamId,
    pub serial: u64,
}

/// From stream tasks to their session.
#[derive(Debug)]
pub(super) enum StreamEvent {
    /// OPEN is about to be queued: frames for this id are the agent's from now on.
    Opened(Key),
    /// `bytes` of agent data written to the client, finishing `frames` queued DATA frames.
    Drained {
        key: Key,
        bytes: usize,
        frames: usize,
    },
    /// The task ended.
    Closed(Key),
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Both directions finished with FIN.
    Done,
    /// Authorization said no (nothing was sent to the agent).
    Denied,
    /// The session aborted it.
    Aborted(Abort),
    /// The tunnel went away or the relay is stopping.
    TunnelGone,
    /// This task resets it: tell the agent.
    Local(Reset),
}

impl End {
    fn label(self) -> &'static str {
        match self {
            End::Done => "done",
            End::Denied => "denied",
            End::Aborted(Abort::PeerReset(code) | Abort::Reset(code)) => code.as_str(),
            End::TunnelGone => "tunnel_gone",
            End::Local(r) => r.code.as_str(),
        }
    }
}

/// What every stream of one tunnel shares.
#[derive(Debug)]
pub(super) struct TunnelCtx {
    pub version: Version,
    pub max_payload: usize,
    pub idle_timeout: Option<Duration>,
    /// Into the writer (OPEN, DATA, FIN, RST, v1 Forget).
    pub data: mpsc::Sender<Out>,
    /// Back to the session.
    pub events: mpsc::UnboundedSender<StreamEvent>,
    /// Cancelled when the tunnel ends (or the relay stops): streams close at once.
    pub token: CancellationToken,
    /// Open streams on this tunnel (read by the registry's least-streams pick).
    pub active: Arc<AtomicUsize>,
    pub authz: Authorizer,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<Sessions>,
    /// The relay-wide budget the session charged queued agent bytes to.
    pub buffered: Arc<Budget>,
    /// The relay-wide budget of client bytes on their way to agents, charged here per read.
    pub outbound: Arc<Budget>,
    /// Where a stream this tunnel's agent could not connect goes next.
    pub router: Arc<dyn Reroute>,
}

/// Agent bytes this stream holds, charged to the relay-wide budget by the session: released
/// as they are written, and whatever is left (queued here or still in the channel) when the
/// stream ends, on every path.
struct Held<'a> {
    budget: &'a Budget,
    /// Payload bytes queued, and the buffers holding them (each charged [`FRAME_COST`]).
    bytes: usize,
    frames: usize,
}

impl Held<'_> {
    fn add(&mut self, n: usize) {
        self.bytes += n;
        self.frames += 1;
    }

    /// `bytes` written, finishing `frames` whole buffers.
    fn written(&mut self, bytes: usize, frames: usize) {
        let bytes = bytes.min(self.bytes);
        let frames = frames.min(self.frames);
        self.bytes -= bytes;
        self.frames -= frames;
        self.budget.release(bytes + frames * FRAME_COST);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.budget.release(self.bytes + self.frames * FRAME_COST);
    }
}

/// When a stream last moved a byte either way: the idle timer's evidence. Shared by the
/// session (which writes agent bytes straight into the socket) and the stream task.
#[derive(Debug)]
pub(super) struct Activity {
    base: Instant,
    /// Milliseconds after `base` of the last byte moved.
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// A byte moved now.
    pub fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the last byte moved.
    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One stream as the session starts it.
#[derive(Debug)]
pub(super) struct StreamTask {
    pub key: Key,
    pub send: SendHalf,
    pub sock: Arc<ClientSock>,
    pub rx: mpsc::UnboundedReceiver<ToStream>,
    pub listener: Arc<ListenerCtx>,
    pub info: Arc<SessionInfo>,
    pub activity: Arc<Activity>,
    /// Holds a slot of `max_conn_total` until the stream ends (moves with a retry).
    pub guard: ConnGuard,
    /// What the client sent while the agent has not answered, for a retry.
    pub replay: Replay,
    /// This is a retry: send these bytes first.
    pub reopen: Option<Box<Reopen>>,
}

/// Reports the end to the session and frees the stream's place on the tunnel, on every path.
struct Departure<'a> {
    key: Key,
    t: &'a TunnelCtx,
}

impl Drop for Departure<'_> {
    fn drop(&mut self) {
        let _ = self.t.events.send(StreamEvent::Closed(self.key));
        self.t.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one stream to its end. `t.active` was counted up by the session for it.
pub(super) async fn run(t: Arc<TunnelCtx>, mut s: StreamTask) {
    let (id, key) = (s.send.id(), s.key);
    let _departure = Departure { key, t: &t };
    let req = Request {
        connector: &s.listener.connector,
        listener: &s.listener.name,
        client: s.info.client,
    };
    // Boxed: the PDP call (an HTTP request) is a large future; inline, its space would stay in
    // every stream's task for the stream's whole life.
    if !Box::pin(t.authz.decide(req, &t.token)).await {
        release_unread(&t, &mut s.rx);
        s.sock.reset();
        debug!(cid = id, connector = %s.listener.connector, end = End::Denied.label(), "stream closed");
        return;
    }
    let started = Instant::now();
    let _listed = t.sessions.insert(s.info.clone());
    let listener = s.listener.clone();
    let lm = &listener.metrics;
    lm.active.inc();
    let _ = t.events.send(StreamEvent::Opened(key));
    let open = Frame::Open {
        id,
        connector: s.listener.connector.clone(),
        client_addr: Some(s.info.client.to_string()),
    };
    let end = if !send_out(&t, Out::frame(open)).await {
        End::TunnelGone
    } else if let Err(end) = resend(&t, &mut s).await {
        end
    } else {
        pump(&t, &mut s).await
    };
    release_unread(&t, &mut s.rx);
    let reopen = retry_plan(&t, &mut s, end);
    if let End::Local(reset) = end {
        t.metrics
            .rst_sent
            .get_or_create(&CodeLabel {
                code: reset.code.as_str(),
            })
            .inc();
        send_out(&t, Out::frame(reset.frame(id))).await;
    }
    if end != End::Done && reopen.is_none() {
        // Abort, not a clean EOF: the client must not mistake a cut stream for a complete one.
        s.sock.reset();
    }
    if t.version == Version::V1 {
        send_out(&t, Out::Forget(id)).await;
    }
    lm.active.dec();
    let elapsed = started.elapsed();
    if reopen.is_none() {
        t.metrics.connection_duration.observe(elapsed.as_secs_f64());
    }
    debug!(
        cid = id,
        connector = %s.listener.connector,
        agent_id = %t.authz.agent_id,
        end = end.label(),
        retry = reopen.is_some(),
        bytes_c2a = s.info.bytes_c2a.load(Ordering::Relaxed),
        bytes_a2c = s.info.bytes_a2c.load(Ordering::Relaxed),
        duration_ms = elapsed.as_millis() as u64,
        "stream closed"
    );
    if let Some(reopen) = reopen {
        hand_off(&t, s, reopen);
    }
}

/// A retry: sends what the client sent the agent that could not connect, exactly as it was
/// read (in order, then FIN if the client had shut down), before reading the client again.
/// These bytes were counted in the listener's metrics when they were read.
async fn resend(t: &TunnelCtx, s: &mut StreamTask) -> Result<(), End> {
    let Some(reopen) = s.reopen.take() else {
        return Ok(());
    };
    let id = s.send.id();
    s.info
        .bytes_c2a
        .fetch_add(reopen.len() as u64, Ordering::Relaxed);
    let Reopen { chunks, eof } = *reopen;
    for Chunk { payload, charge } in chunks {
        s.send.on_read(payload.len()).map_err(End::Local)?;
        let data = Out::Data(id, payload, charge);
        if !send_out(t, data).await {
            return Err(End::TunnelGone);
        }
    }
    if eof {
        if let Some(fin) = s.send.on_eof() {
            t.metrics.fin_sent.inc();
            if !send_out(t, Out::frame(fin)).await {
                return Err(End::TunnelGone);
            }
        }
    }
    Ok(())
}

/// After the stream's end: the bytes to reopen it with elsewhere, when the agent answered
/// `connect_failed` and a retry is safe (see `crate::replay`); otherwise counts why not.
fn retry_plan(t: &TunnelCtx, s: &mut StreamTask, end: End) -> Option<Reopen> {
    if end != End::Aborted(Abort::PeerReset(RstCode::ConnectFailed)) {
        return None;
    }
    let replay = std::mem::replace(&mut s.replay, Replay::Off);
    // A stream forwarded by another relay was admitted for one agent and one epoch (the
    // owner's fence); another local agent was not checked against it: the origin's client is
    // reset instead.
    if matches!(*s.sock, ClientSock::Pipe(_)) {
        t.metrics.open_retry(&s.listener.connector, NOT_REPLAYABLE);
        return None;
    }
    let agent_sent = s.info.bytes_a2c.load(Ordering::Relaxed) > 0;
    match replay.verdict(Instant::now(), agent_sent) {
        Ok(reopen) => Some(reopen),
        Err(result) => {
            t.metrics.open_retry(&s.listener.connector, result);
            None
        }
    }
}

/// Hands the client to another agent's tunnel, or resets it when no other agent serves the
/// connector (as without retries).
fn hand_off(t: &TunnelCtx, s: StreamTask, reopen: Reopen) {
    let connector = s.listener.connector.clone();
    // The session let go of its share when the agent's RST came in (before telling us).
    let sock = match Arc::try_unwrap(s.sock) {
        Ok(sock) => sock,
        Err(shared) => {
            t.metrics.open_retry(&connector, NOT_REPLAYABLE);
            shared.reset();
            return;
        }
    };
    let conn = NewConn {
        sock,
        peer: s.info.client,
        listener: s.listener,
        guard: s.guard,
        reopen: Some(Box::new(reopen)),
    };
    match t.router.reroute(conn, &t.authz.agent_id) {
        Ok(()) => {
            t.metrics.open_retry(&connector, REROUTED);
            debug!(cid = s.info.cid, connector = %connector, agent_id = %t.authz.agent_id, "agent could not connect the stream; reopened on another agent");
        }
        Err(conn) => {
            t.metrics.open_retry(&connector, NO_AGENT);
            reject_client(conn.sock);
        }
    }
}

/// Gives back the budget of agent bytes the session sent that this task never took: after
/// `close`, the session's sends fail (and it releases those itself).
fn release_unread(t: &TunnelCtx, rx: &mut mpsc::UnboundedReceiver<ToStream>) {
    rx.close();
    while let Ok(item) = rx.try_recv() {
        if let ToStream::Data(b) = item {
            t.buffered.release(b.len() + FRAME_COST);
        }
    }
}

/// Queues a frame for the writer unless the tunnel is going away.
async fn send_out(t: &TunnelCtx, item: Out) -> bool {
    tokio::select! {
        r = t.data.send(item) => r.is_ok(),
        _ = t.token.cancelled() => false,
    }
}

async fn pump(t: &TunnelCtx, s: &mut StreamTask) -> End {
    let id = s.send.id();
    let lm = &s.listener.metrics;
    let sock = s.sock.clone();
    let v2 = t.version == Version::V2;
    let mut queue = WriteQueue::new();
    let mut held = Held {
        budget: &t.buffered,
        bytes: 0,
        frames: 0,
    };
    let mut reads = ReadArena::new(t.max_payload);
    // Idle: no byte either way for `idle_timeout` (the timer looks at the last byte's time).
    let idle = t.idle_timeout;
    s.activity.touch();
    let idle_timer = tokio::time::sleep(idle.unwrap_or(FAR));
    tokio::pin!(idle_timer);
    // Lets a burst's arena go once the client pauses (armed while one is held).
    let release = tokio::time::sleep(FAR);
    tokio::pin!(release);
    let mut release_armed = false;
    // The outbound budget refused a read: wait for bytes to leave (or retry on the timer,
    // in case that wake-up was missed) before reading the client again.
    let mut starved = false;
    let retry = tokio::time::sleep(FAR);
    tokio::pin!(retry);
    // A frame read from the client that the writer queue had no room for yet: nothing more is
    // read until it is queued (the queue is bounded; this task never waits on it elsewhere).
    let mut outbox: Option<Out> = None;

    loop {
        if let Some(item) = outbox.take() {
            match t.data.try_send(item) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(item)) => outbox = Some(item),
                Err(mpsc::error::TrySendError::Closed(_)) => return End::TunnelGone,
            }
        }
        if s.send.is_finished() && outbox.is_none() {
            return End::Done;
        }
        let budget = s.send.read_budget(t.max_payload);
        tokio::select! {
            biased;
            _ = t.token.cancelled() => return End::TunnelGone,
            _ = s.info.kill.cancelled() => {
                return End::Local(Reset::new(RstCode::Denied, "terminated by operator"));
            }
            item = s.rx.recv() => match item {
                None => return End::TunnelGone,
                Some(ToStream::Abort(a)) => return End::Aborted(a),
                Some(ToStream::Data(b)) => {
                    s.replay.confirm();
                    held.add(b.len());
                    queue.push(b);
                }
                Some(ToStream::Window(credit)) => {
                    s.replay.confirm();
                    if let Err(reset) = s.send.on_window(credit) {
                        return End::Local(reset);
                    }
                }
                Some(ToStream::ShutWrite) => {
                    s.replay.confirm();
                    if sock.shutdown_write().is_err() {
                        return End::Local(Reset::new(RstCode::Io, "client shutdown failed"));
                    }
                    s.send.on_write_shut();
                }
            },
            r = sock.writable(), if !queue.is_empty() => {
                if r.is_err() {
                    return End::Local(Reset::new(RstCode::Io, "client socket error"));
                }
                let written = match queue.write_with(|iov| sock.try_write_vectored(iov)) {
                    Ok(p) => p,
                    Err(_) => return End::Local(Reset::new(RstCode::Io, "client write failed")),
                };
                if written.bytes > 0 {
                    held.written(written.bytes, written.frames);
                    s.activity.touch();
                    s.info.bytes_a2c.fetch_add(written.bytes as u64, Ordering::Relaxed);
                    lm.bytes_a2c.inc_by(written.bytes as u64);
                    let _ = t.events.send(StreamEvent::Drained {
                        key: s.key,
                        bytes: written.bytes,
                        frames: written.frames,
                    });
                }
            }
            // The frame read last waits for room in the writer queue; meanwhile this task
            // still takes the session's messages and writes to the client.
            permit = t.data.reserve(), if outbox.is_some() => {
                let Ok(permit) = permit else { return End::TunnelGone };
                if let Some(item) = outbox.take() {
                    permit.send(item);
                }
            }
            () = t.outbound.freed(), if starved => starved = false,
            () = &mut retry, if starved => starved = false,
            r = sock.readable(), if budget > 0 && outbox.is_none() && !starved => {
                if r.is_err() {
                    return End::Local(Reset::new(RstCode::Io, "client socket error"));
                }
                let Some(mut charge) = t.outbound.try_take(budget) else {
                    starved = true;
                    retry.as_mut().reset(Instant::now() + STARVED_RETRY);
                    continue;
                };
                let header = v2.then_some(id);
                let now = Instant::now().into_std();
                match reads.read(budget, header, now, |b| sock.try_read_buf(b)) {
                    Ok(None) => {
                        s.replay.on_eof();
                        if let Some(fin) = s.send.on_eof() {
                            t.metrics.fin_sent.inc();
                            outbox = Some(Out::frame(fin));
                        }
                    }
                    Ok(Some((bytes, n))) => {
                        if !release_armed && reads.in_burst() {
                            release.as_mut().reset(Instant::now() + ARENA_IDLE);
                            release_armed = true;
                        }
                        if let Err(reset) = s.send.on_read(n) {
                            return End::Local(reset);
                        }
                        if s.replay.is_keeping() {
                            // Agent bytes written straight to the client confirm it too.
                            if s.info.bytes_a2c.load(Ordering::Relaxed) > 0 {
                                s.replay.confirm();
                            } else {
                                s.replay.on_read(&bytes[bytes.len() - n..], &t.outbound);
                            }
                        }
                        s.activity.touch();
                        s.info.bytes_c2a.fetch_add(n as u64, Ordering::Relaxed);
                        lm.bytes_c2a.inc_by(n as u64);
                        charge.shrink_to(n);
                        outbox = Some(if v2 {
                            Out::Raw(bytes, charge)
                        } else {
                            Out::Data(id, bytes, charge)
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return End::Local(Reset::new(RstCode::Io, "client read failed")),
                }
            }
            () = &mut release, if release_armed => {
                match reads.release_if_idle(Instant::now().into_std()) {
                    Some(at) => release.as_mut().reset(Instant::from_std(at)),
                    None => release_armed = false,
                }
            }
            () = &mut idle_timer, if idle.is_some() => {
                let due = s.activity.last() + idle.unwrap_or(FAR);
                if Instant::now() >= due {
                    return End::Local(Reset::new(RstCode::IdleTimeout, ""));
                }
                idle_timer.as_mut().reset(due);
            }
        }
    }
}

#[cfg(test)]
mod tests;
