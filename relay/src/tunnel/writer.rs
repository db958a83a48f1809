//! The tunnel's only writer: owns the WebSocket's write half, batches queued frames, sends pings.
//!
//! Two queues feed it, control first. `ctrl` ([`CTRL_QUEUE`] small frames) carries what the
//! session produces in answer to the agent (HELLO_ACK, WINDOW, RST, close): when it is full the
//! session stops reading the agent until it has room, so an agent that does not read cannot
//! make the relay queue answers without bound. `data` ([`DATA_QUEUE`] frames of at most one
//! payload) carries what stream tasks read from clients (OPEN, DATA, FIN, their own RST, v1
//! `Forget`): when the tunnel is slower than the clients, stream tasks wait here instead of
//! buffering without bound. Frames are fed as long as more are ready and flushed when the
//! queues drain, so several share a TLS record.
//!
//! Liveness: an agent that takes nothing for `stall_limit` (the tunnel's `ping_timeout`) while
//! the writer has something to send is dead. While a write waits, the socket's byte count
//! ([`Written`]) is checked every half `stall_limit`: no byte taken in one half marks the tunnel
//! write-slow ([`Liveness`]: the registry stops giving it new streams), in two halves in a row
//! [`Stall`]ed, which cancels it; a slow link that keeps taking bytes is never cut.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use nowconnect_shared::{binary, Frame, Limits, StreamId, V1Encoder, Version};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::progress::Written;
use crate::budget::Charge;
use crate::liveness::Liveness;

/// Capacity of the data queue in frames. 256 x 64 KiB caps it at 16 MiB per tunnel.
pub(super) const DATA_QUEUE: usize = 256;
/// Capacity of the control queue in frames (each a few dozen bytes: 1,024 are < 64 KiB).
pub(super) const CTRL_QUEUE: usize = 1024;
/// Most frames fed to the WebSocket before a flush, so a busy queue still flushes regularly.
const MAX_BATCH: usize = 64;

/// Items for the writer task.
#[derive(Debug)]
pub(crate) enum Out {
    /// An already encoded v2 frame (DATA read straight after a reserved header), its bytes
    /// charged to the relay-wide budget until written.
    Raw(Bytes, Charge),
    /// A DATA frame to encode in the tunnel's version (v1; a reopened stream's first bytes),
    /// charged likewise.
    Data(StreamId, Bytes, Charge),
    /// A frame to encode in the tunnel's version. Boxed, as every item of a tokio channel's
    /// block of 32 slots is as large as the largest variant, and each tunnel's two queues hold
    /// one such block for as long as it lives (issue 20: memory per idle tunnel).
    Frame(Box<Frame>),
    /// v1: drop the outgoing `seq` state of a finished stream (queued behind its last frame).
    Forget(StreamId),
    /// Send this close frame, then stop.
    Close(CloseFrame),
}

// Every idle tunnel holds one channel block of 32 items per queue: 32 x 56 bytes, not 32 x 88.
const _: () = assert!(std::mem::size_of::<Out>() <= 56);

impl Out {
    /// [`Out::Frame`] of `frame`.
    pub fn frame(frame: Frame) -> Self {
        Out::Frame(Box::new(frame))
    }
}

/// Set by the writer when the agent stopped taking bytes: why the tunnel was cancelled.
#[derive(Debug, Clone, Default)]
pub(super) struct Stall(Arc<AtomicBool>);

impl Stall {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The two ways into the writer.
#[derive(Debug, Clone)]
pub(super) struct Queues {
    pub ctrl: mpsc::Sender<Out>,
    pub data: mpsc::Sender<Out>,
    pub stall: Stall,
}

/// The receiving ends, for [`run`].
#[derive(Debug)]
pub(super) struct Inputs {
    ctrl: mpsc::Receiver<Out>,
    data: mpsc::Receiver<Out>,
    stall: Stall,
}

pub(super) fn queues() -> (Queues, Inputs) {
    let (ctrl_tx, ctrl) = mpsc::channel(CTRL_QUEUE);
    let (data_tx, data) = mpsc::channel(DATA_QUEUE);
    let stall = Stall::default();
    (
        Queues {
            ctrl: ctrl_tx,
            data: data_tx,
            stall: stall.clone(),
        },
        Inputs { ctrl, data, stall },
    )
}

/// Timing of the writer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub ping_interval: Duration,
    /// Longest one write to the WebSocket may wait for the agent to take bytes.
    pub stall_limit: Duration,
}

/// What a write to the WebSocket needs besides the write itself.
struct Watch<'a> {
    limit: Duration,
    stall: &'a Stall,
    written: &'a Written,
    token: &'a CancellationToken,
    liveness: &'a Liveness,
}

impl Watch<'_> {
    /// Runs one write; `false` when it failed, the tunnel was cancelled meanwhile, or the
    /// socket took no byte at all for `limit` (then the tunnel is marked stalled). A slow agent
    /// that keeps taking bytes is never cut, however long one write lasts. Half of `limit`
    /// without a byte marks the tunnel write-slow until a byte moves or the write ends.
    async fn write<E>(&self, op: impl Future<Output = Result<(), E>>) -> bool {
        tokio::pin!(op);
        let half = self.limit / 2;
        let mut seen = self.written.get();
        // Halves in a row without a byte taken.
        let mut quiet = 0u8;
        let done = loop {
            tokio::select! {
                r = &mut op => break r.is_ok(),
                _ = self.token.cancelled() => break false,
                () = tokio::time::sleep(half) => {
                    let now = self.written.get();
                    if now != seen {
                        seen = now;
                        if quiet > 0 {
                            quiet = 0;
                            self.liveness.set_write_slow(false);
                        }
                        continue;
                    }
                    quiet += 1;
                    if quiet >= 2 {
                        // Stays write-slow: the tunnel is cancelled and leaves the registry.
                        self.stall.set();
                        return false;
                    }
                    self.liveness.set_write_slow(true);
                }
            }
        };
        if quiet > 0 {
            self.liveness.set_write_slow(false);
        }
        done
    }
}

/// A close frame; the reason is cut to the 123 bytes a WebSocket close frame can carry.
pub(super) fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: reason[..end].into(),
    }
}

/// Runs until the tunnel is cancelled, a close frame went out, or the WebSocket fails (which
/// cancels the tunnel).
pub(super) async fn run<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut input: Inputs,
    version: Version,
    token: CancellationToken,
    timing: Timing,
    written: Written,
    liveness: Arc<Liveness>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = Limits::default();
    let mut v1 = V1Encoder::new(limits);
    let ping_interval = timing.ping_interval;
    let stall = input.stall.clone();
    let watch = Watch {
        limit: timing.stall_limit,
        stall: &stall,
        written: &written,
        token: &token,
        liveness: &liveness,
    };
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            biased;
            _ = token.cancelled() => {
                let bye = Message::Close(Some(close_frame(CloseCode::Away, "tunnel closed")));
                let _ = tokio::time::timeout(Duration::from_millis(250), sink.send(bye)).await;
                return;
            }
            _ = ping.tick() => {
                if !watch.write(sink.send(Message::Ping(Bytes::new()))).await {
                    token.cancel();
                    return;
                }
                continue;
            }
            Some(item) = input.ctrl.recv() => item,
            Some(item) = input.data.recv() => item,
            else => return,
        };
        let mut next = Some(first);
        let mut fed = 0;
        while let Some(item) = next.take() {
            // A budget charge is given back once its frame is handed to the WebSocket.
            let mut charge = None;
            let msg = match item {
                Out::Raw(b, c) => {
                    charge = Some(c);
                    Some(Message::Binary(b))
                }
                Out::Data(id, payload, c) => {
                    charge = Some(c);
                    encode(&Frame::Data { id, payload }, version, &limits, &mut v1)
                }
                Out::Frame(f) => encode(&f, version, &limits, &mut v1),
                Out::Forget(id) => {
                    v1.forget(id);
                    None
                }
                Out::Close(frame) => {
                    let _ = watch.write(sink.send(Message::Close(Some(frame)))).await;
                    token.cancel();
                    return;
                }
            };
            if let Some(msg) = msg {
                if !watch.write(sink.feed(msg)).await {
                    token.cancel();
                    return;
                }
                drop(charge);
                fed += 1;
            }
            if fed >= MAX_BATCH {
                break;
            }
            next = input
                .ctrl
                .try_recv()
                .ok()
                .or_else(|| input.data.try_recv().ok());
        }
        if !watch.write(sink.flush()).await {
            token.cancel();
            return;
        }
    }
}

fn encode(frame: &Frame, version: Version, limits: &Limits, v1: &mut V1Encoder) -> Option<Message> {
    let r = match version {
        Version::V2 => binary::encode_to_bytes(frame, limits).map(Message::Binary),
        Version::V1 => v1.encode(frame).map(|s| Message::Text(s.into())),
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
    use tokio::io::AsyncWriteExt;

    use super::super::progress::Counted;
    use super::*;

    /// A write the socket takes nothing of: write-slow from half the limit on (the registry
    /// stops picking the tunnel), stalled at the limit; a byte taken in between clears it.
    #[tokio::test(start_paused = true)]
    async fn a_write_without_progress_is_slow_at_half_the_limit_and_stalls_at_the_limit() {
        let (stall, written, token) = (
            Stall::default(),
            Written::default(),
            CancellationToken::new(),
        );
        let liveness = Liveness::new(Duration::from_secs(60));
        let watch = Watch {
            limit: Duration::from_secs(10),
            stall: &stall,
            written: &written,
            token: &token,
            liveness: &liveness,
        };
        let (pipe, _peer) = tokio::io::duplex(64);
        let mut sock = Counted::new(pipe, written.clone());
        let start = Instant::now();
        let write = watch.write(std::future::pending::<Result<(), ()>>());
        tokio::pin!(write);
        let run = |d: u64| tokio::time::sleep_until(start + Duration::from_millis(d));
        tokio::select! { _ = &mut write => panic!("ended"), () = run(4_900) => {} }
        assert!(liveness.is_healthy(Instant::now()));
        tokio::select! { _ = &mut write => panic!("ended"), () = run(5_100) => {} }
        assert!(
            !liveness.is_healthy(Instant::now()),
            "slow after half the limit"
        );
        // One byte taken: healthy again at the next check, and the stall count starts over.
        sock.write_all(b"x").await.expect("pipe has room");
        tokio::select! { _ = &mut write => panic!("ended"), () = run(10_100) => {} }
        assert!(liveness.is_healthy(Instant::now()));
        tokio::select! { _ = &mut write => panic!("ended"), () = run(15_100) => {} }
        assert!(!liveness.is_healthy(Instant::now()));
        assert!(!stall.is_set());
        assert!(!write.await, "stalled");
        assert!(stall.is_set());
        assert_eq!(start.elapsed(), Duration::from_secs(20));
        assert!(
            !liveness.is_healthy(Instant::now()),
            "stays slow while it is reaped"
        );
    }

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
