//! One stream: the agent's TCP connection to a target, owned by one task that drives the
//! stream's [`SendHalf`] (shared crate) and the target socket.
//!
//! The task dials the target (bytes that arrive meanwhile are queued, within the window), then
//! moves bytes both ways: it waits for the socket to be readable and reads at most
//! [`SendHalf::read_budget`] bytes, with the v2 header written in front so the frame goes out
//! without a copy. Reads land in a [`ReadArena`]: a small buffer per read while the target is
//! quiet or chatty, an arena reused across frames while it sends in bulk, nothing held once it
//! pauses. The session writes relay bytes straight into the socket while nothing of this
//! stream waits (it holds the socket once connected); only what the socket did not take comes
//! here, queued as the `Bytes` it arrived in and written with vectored writes, each write
//! reported back ([`Drained`]) so the session's receive half can return credit.
//!
//! Closing: the session decides every inbound rule. It tells this task to shut the target's
//! write side (the relay's FIN, once every byte before it is written), or aborts it (RST from
//! the relay, a reset it sent, tunnel loss: [`ToStream::Abort`] or a dropped channel); an
//! aborted stream closes its socket with a TCP reset (zero linger), so the target can tell a
//! cut stream from a finished one. Target EOF sends FIN a2c.

use std::future::poll_fn;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use nowconnect_shared::arena::{ReadArena, ARENA_IDLE};
use nowconnect_shared::queue::WriteQueue;
use nowconnect_shared::subprotocol::Version;
use nowconnect_shared::{Frame, RstCode, SendHalf, StreamId};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use crate::metrics::AgentMetrics;
use crate::targets::dial::{dial, DialCtx};
use crate::targets::TargetSet;
use crate::writer::Outgoing;

mod drain;
pub(crate) mod inbox;

use inbox::Receiver;

/// What the session forwards to a stream.
#[derive(Debug)]
pub(crate) enum ToStream {
    /// Client bytes (c2a) the socket did not take yet, already charged to the window / queue.
    Data(Bytes),
    /// Every byte before the client's FIN is written: shut the target's write side.
    ShutWrite,
    /// v2: the relay returned `credit` bytes of send credit.
    Window(u32),
    /// The stream is over on the session's side: close at once with a TCP reset, send nothing.
    Abort,
}

/// What a stream reports to the session.
#[derive(Debug)]
pub(crate) struct Drained {
    pub id: StreamId,
    /// Tells a stream apart from an earlier one that used the same id.
    pub serial: u64,
    /// Bytes written to the target by one write round.
    pub bytes: usize,
    /// Queued DATA frames fully written by it.
    pub frames: usize,
}

/// Everything a stream task needs besides its receiver.
#[derive(Debug)]
pub(crate) struct StreamCtx {
    pub serial: u64,
    pub connector: String,
    pub target: Arc<TargetSet>,
    pub connect_timeout: Duration,
    pub version: Version,
    pub max_payload: usize,
    /// The stream's send side (credit, FIN), handed over by the session's stream table.
    pub send: SendHalf,
    pub out: mpsc::Sender<Outgoing>,
    pub drained: mpsc::UnboundedSender<Drained>,
    /// The target socket, once connected: shared with the session, which writes DATA into it
    /// directly while nothing of this stream is queued.
    pub sock: Arc<OnceLock<Arc<TcpStream>>>,
    /// Bytes written to and read from the target, and failed dials, are counted here (the
    /// session counts what it writes into the socket itself).
    pub metrics: AgentMetrics,
    /// Bumped when a target goes down or up (the sessions report health to the relay).
    pub changed: Arc<tokio::sync::watch::Sender<u64>>,
}

/// Runs the stream to its end; returns its id and serial for the session's bookkeeping.
pub(crate) async fn run(ctx: StreamCtx, rx: Receiver<ToStream>) -> (StreamId, u64) {
    let (id, serial, version) = (ctx.send.id(), ctx.serial, ctx.version);
    let out = ctx.out.clone();
    Stream::new(ctx).run(rx).await;
    if version == Version::V1 {
        // After every frame this stream queued; a closed writer means the tunnel is gone anyway.
        let _ = out.send(Outgoing::Forget(id)).await;
    }
    (id, serial)
}

struct Stream {
    ctx: StreamCtx,
    /// Client bytes waiting for the target socket, oldest first (bounded by the receive half).
    queue: WriteQueue,
    /// Asked to shut the write side before the target was connected.
    shut_pending: bool,
    /// Where target reads land.
    reads: ReadArena,
}

/// How the stream ended, when it was not a clean close.
enum Abort {
    /// Reset by the relay, by the session, or the tunnel is gone: close silently (TCP reset).
    Dropped,
    /// We reset it: send RST with this code and reason.
    Reset(RstCode, String),
}

impl Stream {
    fn new(ctx: StreamCtx) -> Stream {
        let reads = ReadArena::new(ctx.max_payload);
        Stream {
            ctx,
            queue: WriteQueue::new(),
            shut_pending: false,
            reads,
        }
    }

    fn id(&self) -> StreamId {
        self.ctx.send.id()
    }

    async fn run(mut self, mut rx: Receiver<ToStream>) {
        let (sock, result) = match self.connect(&mut rx).await {
            Ok(sock) => {
                // Until the stream finishes cleanly, closing the socket sends a TCP reset: also
                // when the session drops this task at once (tunnel loss, agent stop).
                let _ = sock.set_zero_linger();
                let sock = Arc::new(sock);
                let _ = self.ctx.sock.set(sock.clone());
                let r = self.pump(&sock, &mut rx).await;
                (Some(sock), r)
            }
            Err(abort) => (None, Err(abort)),
        };
        drop(rx);
        let id = self.id();
        let connector = &self.ctx.connector;
        if let (Ok(()), Some(sock)) = (&result, &sock) {
            // Finished cleanly: an ordinary close. Any other end keeps the zero linger, so the
            // target sees a reset, not a clean end of its request.
            let _ = socket2::SockRef::from(&**sock).set_linger(None);
        }
        match result {
            Ok(()) => tracing::debug!(id, %connector, "stream closed"),
            Err(Abort::Dropped) => tracing::debug!(id, %connector, "stream reset"),
            Err(Abort::Reset(code, reason)) => {
                tracing::debug!(id, %connector, code = code.as_str(), %reason, "resetting stream");
                let rst = Frame::Rst { id, code, reason };
                let _ = self.ctx.out.send(Outgoing::Frame(rst)).await;
            }
        }
    }

    /// Dials the connector's targets (see [`crate::targets::dial`]), queueing what the relay
    /// sends meanwhile.
    async fn connect(&mut self, rx: &mut Receiver<ToStream>) -> Result<TcpStream, Abort> {
        let set = self.ctx.target.clone();
        let changed = self.ctx.changed.clone();
        let metrics = self.ctx.metrics.clone();
        // Lent to the dial (no copy per OPEN), put back below.
        let connector = std::mem::take(&mut self.ctx.connector);
        let budget = self.ctx.connect_timeout;
        let result = {
            // Boxed: the dial's state (several hosts, addresses, timers) lives on the heap only
            // while connecting, so an idle open stream's task does not carry it.
            let mut dial = Box::pin(async {
                let ctx = DialCtx {
                    connector: &connector,
                    metrics: &metrics,
                    changed: &changed,
                };
                dial(&set, budget, &ctx).await
            });
            loop {
                tokio::select! {
                    r = &mut dial => break Ok(r),
                    m = rx.recv() => match m {
                        Some(ToStream::ShutWrite) => self.shut_pending = true,
                        Some(m) => if let Err(e) = self.on_message(m) { break Err(e) },
                        None => break Err(Abort::Dropped),
                    },
                }
            }
        };
        self.ctx.connector = connector;
        let (id, connector) = (self.id(), &self.ctx.connector);
        match result? {
            Ok(sock) => {
                let _ = sock.set_nodelay(true);
                tracing::debug!(id, %connector, "target connected");
                Ok(sock)
            }
            Err(reason) => {
                tracing::info!(event = "target_connect_failed", id, %connector, error = %reason, "target connect failed");
                Err(Abort::Reset(RstCode::ConnectFailed, short(&reason)))
            }
        }
    }

    /// Data, credit and aborts (a write shutdown is the caller's: it needs the socket).
    fn on_message(&mut self, m: ToStream) -> Result<(), Abort> {
        match m {
            ToStream::Data(b) => self.queue.push(b),
            ToStream::Window(n) => self
                .ctx
                .send
                .on_window(n)
                .map_err(|r| Abort::Reset(r.code, r.reason.to_owned()))?,
            ToStream::Abort => return Err(Abort::Dropped),
            ToStream::ShutWrite => self.shut_pending = true,
        }
        Ok(())
    }

    async fn pump(&mut self, sock: &TcpStream, rx: &mut Receiver<ToStream>) -> Result<(), Abort> {
        let io_err = |e: io::Error| Abort::Reset(RstCode::Io, short(&e.to_string()));
        // Lets a burst's read arena go once the target pauses: a timer only while one is held,
        // boxed (one allocation per burst) so that an idle stream's task does not carry it.
        let mut release: Option<Pin<Box<Sleep>>> = None;
        // A frame read from the target that the writer queue had no room for yet: nothing
        // more is read until it is queued; meanwhile relay bytes are still written.
        let mut outbox: Option<Outgoing> = None;
        let out = self.ctx.out.clone();
        loop {
            if let Some(item) = outbox.take() {
                match out.try_send(item) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(item)) => outbox = Some(item),
                    Err(mpsc::error::TrySendError::Closed(_)) => return Err(Abort::Dropped),
                }
            }
            if self.shut_pending {
                // Every byte before the FIN is written (the session said so): pass it on.
                // tokio's TcpStream shutdown needs `&mut`; the socket is shared with the session.
                socket2::SockRef::from(sock)
                    .shutdown(Shutdown::Write)
                    .map_err(io_err)?;
                self.shut_pending = false;
                self.ctx.send.on_write_shut();
            }
            if self.ctx.send.is_finished() && outbox.is_none() {
                return Ok(());
            }
            let budget = self.ctx.send.read_budget(self.ctx.max_payload);
            tokio::select! {
                biased;
                m = rx.recv() => match m {
                    Some(m) => self.on_message(m)?,
                    // The session is gone (tunnel loss): close at once.
                    None => return Err(Abort::Dropped),
                },
                // poll_*_ready rather than readable()/writable(): no waiter node in the task
                // (this task is the socket's only waiter; the session only try_writes).
                r = poll_fn(|cx| sock.poll_write_ready(cx)), if !self.queue.is_empty() => {
                    r.map_err(io_err)?;
                    self.write_some(sock).map_err(io_err)?;
                }
                permit = out.reserve(), if outbox.is_some() => {
                    let permit = permit.map_err(|_| Abort::Dropped)?;
                    if let Some(item) = outbox.take() {
                        permit.send(item);
                    }
                }
                r = poll_fn(|cx| sock.poll_read_ready(cx)), if budget > 0 && outbox.is_none() => {
                    r.map_err(io_err)?;
                    outbox = self.read_some(sock, budget)?;
                    if release.is_none() && self.reads.in_burst() {
                        release = Some(Box::pin(tokio::time::sleep(ARENA_IDLE)));
                    }
                }
                () = async {
                    if let Some(timer) = release.as_mut() {
                        timer.await;
                    }
                }, if release.is_some() => {
                    match self.reads.release_if_idle(Instant::now().into_std()) {
                        Some(at) => {
                            if let Some(timer) = release.as_mut() {
                                timer.as_mut().reset(Instant::from_std(at));
                            }
                        }
                        None => release = None,
                    }
                }
            }
        }
    }

    /// Writes what the socket takes of the queue; reports it to the session.
    fn write_some(&mut self, sock: &TcpStream) -> io::Result<()> {
        let p = self.queue.write_with(|iov| sock.try_write_vectored(iov))?;
        if p.bytes > 0 {
            self.ctx.metrics.wrote_to_target(p.bytes);
            let _ = self.ctx.drained.send(Drained {
                id: self.id(),
                serial: self.ctx.serial,
                bytes: p.bytes,
                frames: p.frames,
            });
        }
        Ok(())
    }

    /// One read of at most `budget` bytes from the target: the DATA (or, at EOF, FIN) to send.
    fn read_some(&mut self, sock: &TcpStream, budget: usize) -> Result<Option<Outgoing>, Abort> {
        let v2 = self.ctx.version == Version::V2;
        let id = self.id();
        let header = v2.then_some(id);
        let now = Instant::now().into_std();
        let (buf, n) = match self
            .reads
            .read(budget, header, now, |b| drain::try_read_buf(sock, b))
        {
            Ok(Some(read)) => read,
            Ok(None) => return Ok(self.ctx.send.on_eof().map(Outgoing::Frame)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(Abort::Reset(RstCode::Io, short(&e.to_string()))),
        };
        self.ctx.metrics.read_from_target(n);
        self.ctx
            .send
            .on_read(n)
            .map_err(|r| Abort::Reset(r.code, r.reason.to_owned()))?;
        Ok(Some(if v2 {
            Outgoing::Encoded(buf)
        } else {
            Outgoing::Frame(Frame::Data { id, payload: buf })
        }))
    }
}

/// An RST reason: printable and short enough for the protocol's text limit.
fn short(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}

#[cfg(test)]
mod tests;
