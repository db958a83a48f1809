//! One stream: the agent's TCP connection to a target, owned by one task.
//!
//! The task dials the target (bytes that arrive meanwhile are queued, within the window), then
//! moves bytes both ways: it waits for the socket to be readable and reads at most what it may
//! send, with the v2 header written in front so the frame goes out without a copy. Reads land in
//! a [`ReadArena`]: a small buffer per read while the target is quiet or chatty, an arena reused
//! across frames while it sends in bulk, nothing held once it pauses. Bytes from the relay are
//! queued as the `Bytes` they arrived in and written with vectored writes; every write is
//! reported to the tunnel so it can return credit (v2) or count the queue down (v1). In v2 the
//! tunnel task writes DATA into the socket itself while nothing of the stream is queued (it
//! holds the socket once connected); only what the socket does not take reaches this task.
//!
//! Closing: the tunnel drops its sender to reset the stream (RST from the relay, overflow,
//! tunnel loss); the task then closes the socket at once without flushing. Target EOF sends
//! FIN a2c; FIN c2a shuts down the target's write side once every earlier byte is written.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, Bytes};
use nowconnect_shared::arena::{ReadArena, ARENA_IDLE};
use nowconnect_shared::subprotocol::Version;
use nowconnect_shared::{Dir, Frame, RstCode, SendCredit, StreamId};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Target;
use crate::writer::Outgoing;

/// What the tunnel forwards to a stream.
#[derive(Debug)]
pub(crate) enum ToStream {
    /// Client bytes (c2a), already accounted against the window / queue depth.
    Data(Bytes),
    /// The client shut down its write side.
    Fin,
    /// v2: the relay returned `credit` bytes of send credit.
    Window(u32),
}

/// What a stream reports to the tunnel.
#[derive(Debug)]
pub(crate) struct Drained {
    pub id: StreamId,
    /// Tells a stream apart from an earlier one that used the same id.
    pub serial: u64,
    /// Bytes written to the target by one write.
    pub bytes: usize,
    /// DATA frames fully written by it.
    pub frames: usize,
}

/// Everything a stream task needs besides its receiver.
#[derive(Debug)]
pub(crate) struct StreamCtx {
    pub id: StreamId,
    pub serial: u64,
    pub connector: String,
    pub target: Arc<Target>,
    pub connect_timeout: Duration,
    pub version: Version,
    pub max_payload: usize,
    /// Initial send credit (v2).
    pub window: u32,
    pub out: mpsc::Sender<Outgoing>,
    pub drained: mpsc::UnboundedSender<Drained>,
    /// The target socket, once connected: shared with the tunnel task, which writes DATA into it
    /// directly while nothing of this stream is queued (see `tunnel::write_through`).
    pub sock: Arc<OnceLock<Arc<TcpStream>>>,
}

/// Buffers handed to one vectored write.
const MAX_IOV: usize = 16;

/// Runs the stream to its end; returns its id and serial for the tunnel's bookkeeping.
pub(crate) async fn run(ctx: StreamCtx, rx: mpsc::UnboundedReceiver<ToStream>) -> (StreamId, u64) {
    let (id, serial, version) = (ctx.id, ctx.serial, ctx.version);
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
    /// Client bytes waiting for the target socket, oldest first (bounded by the window / depth).
    queue: VecDeque<Bytes>,
    /// FIN c2a received: shut down the target's write side once `queue` is empty.
    fin_in: bool,
    /// The target's write side is shut down.
    shut_wr: bool,
    /// The target sent EOF and we sent FIN a2c.
    eof_out: bool,
    /// v2 send credit (unused in v1).
    credit: SendCredit,
    /// Where target reads land.
    reads: ReadArena,
}

/// How the stream ended, when it was not a clean close.
enum Abort {
    /// Reset by the relay or the tunnel is gone: close silently.
    Dropped,
    /// We reset it: send RST with this code and reason.
    Reset(RstCode, String),
}

impl Stream {
    fn new(ctx: StreamCtx) -> Stream {
        let credit = SendCredit::new(ctx.window);
        let reads = ReadArena::new(ctx.max_payload);
        Stream {
            ctx,
            queue: VecDeque::new(),
            fin_in: false,
            shut_wr: false,
            eof_out: false,
            credit,
            reads,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<ToStream>) {
        let result = match self.connect(&mut rx).await {
            Ok(sock) => {
                let sock = Arc::new(sock);
                let _ = self.ctx.sock.set(sock.clone());
                self.pump(&sock, &mut rx).await
            }
            Err(abort) => Err(abort),
        };
        drop(rx);
        match result {
            Ok(()) => {
                tracing::debug!(id = self.ctx.id, connector = %self.ctx.connector, "stream closed")
            }
            Err(Abort::Dropped) => {
                tracing::debug!(id = self.ctx.id, connector = %self.ctx.connector, "stream reset")
            }
            Err(Abort::Reset(code, reason)) => {
                tracing::debug!(id = self.ctx.id, connector = %self.ctx.connector, code = code.as_str(), %reason, "resetting stream");
                let rst = Frame::Rst {
                    id: self.ctx.id,
                    code,
                    reason,
                };
                let _ = self.ctx.out.send(Outgoing::Frame(rst)).await;
            }
        }
    }

    /// Dials the target, queueing what the relay sends meanwhile.
    async fn connect(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<ToStream>,
    ) -> Result<TcpStream, Abort> {
        let target = self.ctx.target.clone();
        let dial = tokio::time::timeout(
            self.ctx.connect_timeout,
            TcpStream::connect((target.host.as_str(), target.port)),
        );
        tokio::pin!(dial);
        let result = loop {
            tokio::select! {
                r = &mut dial => break r,
                m = rx.recv() => match m {
                    Some(m) if !rx.is_closed() => self.on_message(m)?,
                    _ => return Err(Abort::Dropped),
                },
            }
        };
        let timeout_ms = self.ctx.connect_timeout.as_millis();
        match result {
            Ok(Ok(sock)) => {
                let _ = sock.set_nodelay(true);
                tracing::debug!(id = self.ctx.id, connector = %self.ctx.connector, "target connected");
                Ok(sock)
            }
            Ok(Err(e)) => {
                tracing::info!(id = self.ctx.id, connector = %self.ctx.connector, error = %e, "target connect failed");
                Err(Abort::Reset(RstCode::ConnectFailed, short(&e.to_string())))
            }
            Err(_) => {
                tracing::info!(id = self.ctx.id, connector = %self.ctx.connector, timeout_ms, "target connect timed out");
                Err(Abort::Reset(
                    RstCode::ConnectFailed,
                    format!("timeout after {timeout_ms} ms"),
                ))
            }
        }
    }

    fn on_message(&mut self, m: ToStream) -> Result<(), Abort> {
        match m {
            // Bytes after FIN c2a break the protocol; the relay never sends them.
            ToStream::Data(b) if !self.fin_in => self.queue.push_back(b),
            ToStream::Data(_) => {}
            ToStream::Fin => self.fin_in = true,
            ToStream::Window(n) => self
                .credit
                .grant(n)
                .map_err(|e| Abort::Reset(RstCode::FlowControl, short(&e.to_string())))?,
        }
        Ok(())
    }

    async fn pump(
        &mut self,
        sock: &TcpStream,
        rx: &mut mpsc::UnboundedReceiver<ToStream>,
    ) -> Result<(), Abort> {
        let io_err = |e: io::Error| Abort::Reset(RstCode::Io, short(&e.to_string()));
        // Lets a burst's read arena go once the target pauses (armed while one is held).
        let release = tokio::time::sleep(Duration::from_secs(86_400 * 365));
        tokio::pin!(release);
        let mut release_armed = false;
        loop {
            if self.fin_in && self.queue.is_empty() && !self.shut_wr {
                // Every byte before the FIN is written: pass the half-close on.
                // tokio's TcpStream shutdown is shutdown(Write): reading goes on.
                socket2::SockRef::from(sock)
                    .shutdown(std::net::Shutdown::Write)
                    .map_err(io_err)?;
                self.shut_wr = true;
            }
            if self.shut_wr && self.eof_out {
                return Ok(());
            }
            let can_read =
                !self.eof_out && (self.ctx.version == Version::V1 || self.credit.available() > 0);
            tokio::select! {
                biased;
                m = rx.recv() => match m {
                    // A closed channel means reset: drop queued bytes, close at once.
                    Some(m) if !rx.is_closed() => self.on_message(m)?,
                    _ => return Err(Abort::Dropped),
                },
                r = sock.writable(), if !self.queue.is_empty() => {
                    r.map_err(io_err)?;
                    self.write_some(sock).map_err(io_err)?;
                }
                r = sock.readable(), if can_read => {
                    r.map_err(io_err)?;
                    self.read_some(sock).await?;
                    if !release_armed && self.reads.in_burst() {
                        release.as_mut().reset(Instant::now() + ARENA_IDLE);
                        release_armed = true;
                    }
                }
                () = &mut release, if release_armed => {
                    match self.reads.release_if_idle(Instant::now().into_std()) {
                        Some(at) => release.as_mut().reset(Instant::from_std(at)),
                        None => release_armed = false,
                    }
                }
            }
        }
    }

    /// One vectored write of the queued buffers; reports what was written.
    fn write_some(&mut self, sock: &TcpStream) -> io::Result<()> {
        let written = {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (slot, b) in iov.iter_mut().zip(self.queue.iter()) {
                *slot = IoSlice::new(b);
                n += 1;
            }
            match sock.try_write_vectored(&iov[..n]) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        };
        let mut left = written;
        let mut frames = 0;
        while left > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                self.queue.pop_front();
                frames += 1;
            } else {
                front.advance(left);
                left = 0;
            }
        }
        let _ = self.ctx.drained.send(Drained {
            id: self.ctx.id,
            serial: self.ctx.serial,
            bytes: written,
            frames,
        });
        Ok(())
    }

    /// One read from the target, sent as DATA (or FIN at EOF).
    async fn read_some(&mut self, sock: &TcpStream) -> Result<(), Abort> {
        let v2 = self.ctx.version == Version::V2;
        let cap = if v2 {
            self.ctx.max_payload.min(self.credit.available() as usize)
        } else {
            self.ctx.max_payload
        };
        if cap == 0 {
            return Ok(());
        }
        let header = v2.then_some(self.ctx.id);
        let now = Instant::now().into_std();
        let (buf, n) = match self.reads.read(cap, header, now, |b| sock.try_read_buf(b)) {
            Ok(Some(read)) => read,
            Ok(None) => {
                self.eof_out = true;
                let fin = Frame::Fin {
                    id: self.ctx.id,
                    dir: Dir::A2c,
                };
                return self.send(Outgoing::Frame(fin)).await;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(Abort::Reset(RstCode::Io, short(&e.to_string()))),
        };
        if v2 {
            // Cannot fail: we read at most the available credit.
            self.credit
                .consume(n)
                .map_err(|e| Abort::Reset(RstCode::FlowControl, short(&e.to_string())))?;
            self.send(Outgoing::Encoded(buf)).await
        } else {
            let data = Frame::Data {
                id: self.ctx.id,
                payload: buf,
            };
            self.send(Outgoing::Frame(data)).await
        }
    }

    async fn send(&self, item: Outgoing) -> Result<(), Abort> {
        self.ctx.out.send(item).await.map_err(|_| Abort::Dropped)
    }
}

/// An RST reason: printable and short enough for the protocol's text limit.
fn short(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}
