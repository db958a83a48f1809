//! One stream's protocol state, sans-IO: credit, half-close, reset and the v1 queue budget.
//!
//! Every rule of docs/protocol.md ("Streams", "Flow control", "v1") that concerns one stream
//! lives here, once, for both roles ([`Role`]): the relay, whose inbound bytes go agent -> client
//! (`a2c`), and the agent, whose inbound bytes go client -> target (`c2a`). A stream has two
//! halves, each owned by the task that drives that side, so neither waits on the other:
//! - [`RecvHalf`], what the peer sends us: it admits DATA against the receive window (v2) or the
//!   queue budget (v1) *before* the driver queues a byte, takes FIN and RST, counts what the
//!   driver wrote to its socket, and says when to return credit (WINDOW) and when to shut the
//!   socket's write side. The tunnel reader owns it, inside [`crate::demux::Demux`].
//! - [`SendHalf`], what we send: it says how much the driver may read from its socket now (the
//!   send credit), turns EOF into FIN, takes the peer's WINDOW, and knows when the stream is
//!   finished. The stream task owns it.
//!
//! [`Stream`] holds both for a driver that owns a whole stream (and for the tests that pair a
//! relay-role stream with an agent-role one). Nothing here reads a clock or a socket; a driver
//! feeds events in and does what the return values say.

use bytes::Bytes;

use crate::flow::{Drain, RecvWindow, SendCredit, DEFAULT_WINDOW};
use crate::frame::{Dir, Frame, RstCode, StreamId};
use crate::subprotocol::Version;

/// Which end of the tunnel a state machine serves; decides which direction is inbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The relay: reads clients (sends `c2a`), writes what agents send (`a2c`).
    Relay,
    /// The agent: reads targets (sends `a2c`), writes what the relay sends (`c2a`).
    Agent,
}

impl Role {
    /// Direction of the bytes this side receives (and of the FIN it expects).
    pub fn inbound(self) -> Dir {
        match self {
            Role::Relay => Dir::A2c,
            Role::Agent => Dir::C2a,
        }
    }

    /// Direction of the bytes this side sends (and of the FIN it sends at EOF).
    pub fn outbound(self) -> Dir {
        match self {
            Role::Relay => Dir::C2a,
            Role::Agent => Dir::A2c,
        }
    }

    /// The other end.
    pub fn peer(self) -> Role {
        match self {
            Role::Relay => Role::Agent,
            Role::Agent => Role::Relay,
        }
    }
}

/// Why this side resets a stream: the RST it sends. `reason` is short and never holds payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset {
    pub code: RstCode,
    pub reason: &'static str,
}

impl Reset {
    pub const fn new(code: RstCode, reason: &'static str) -> Reset {
        Reset { code, reason }
    }

    /// The RST frame for stream `id`.
    pub fn frame(self, id: StreamId) -> Frame {
        Frame::Rst {
            id,
            code: self.code,
            reason: self.reason.to_owned(),
        }
    }
}

/// Default v1 queue budget per stream, in payload bytes (twice a v2 window).
pub const V1_QUEUE_BYTES: usize = 2 * DEFAULT_WINDOW as usize;

/// Budgets every stream of a tunnel starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamParams {
    /// v2 or v1: credit flow control, or the reference's bounded queue.
    pub version: Version,
    /// v2: credit each direction starts with (the peer's send credit = our receive window).
    pub window: u32,
    /// v2: largest receive window autotuning may grow to (`window`: a fixed window).
    pub max_window: u32,
    /// v1: DATA frames queued for the socket that make the queue full
    /// (`limits.queue_depth_per_cid`).
    pub v1_max_frames: usize,
    /// v1: payload bytes queued for the socket that make the queue full
    /// (`limits.queue_bytes_per_cid`). A stream holds at most this plus one frame.
    pub v1_max_bytes: usize,
}

impl StreamParams {
    /// The protocol's defaults for `version`: a 256 KiB window; v1 queues full at 256 frames
    /// or [`V1_QUEUE_BYTES`].
    pub fn new(version: Version) -> StreamParams {
        StreamParams {
            version,
            window: DEFAULT_WINDOW,
            max_window: DEFAULT_WINDOW,
            v1_max_frames: 256,
            v1_max_bytes: V1_QUEUE_BYTES,
        }
    }
}

/// How the receive side bounds what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// v2: the window we granted; the peer stays within it or the stream is reset.
    Window(RecvWindow),
    /// v1: no credit, so a bounded queue. While it is full the tunnel reader stops taking
    /// frames ([`RecvHalf::is_full`]); DATA that arrives anyway resets the stream
    /// (`queue_overflow`).
    Queue {
        /// DATA frames received and not yet fully written.
        frames: usize,
        /// Payload bytes received and not yet written.
        bytes: usize,
        max_frames: usize,
        max_bytes: usize,
    },
}

/// A frame the receive side accepted, and what the driver does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Bytes for the socket, already charged against the budget. Empty payloads carry nothing.
    Data(Bytes),
    /// The peer will send no more. `shutdown`: every earlier byte is written; shut the socket's
    /// write side now (and tell the [`SendHalf`] with [`SendHalf::on_write_shut`]).
    Fin { shutdown: bool },
    /// Send credit for the [`SendHalf`] (v2).
    Window(u32),
    /// The peer reset the stream: close the socket at once, send nothing.
    PeerReset(RstCode),
}

/// What a write to the socket released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// A WINDOW to send (v2, once half the window has drained).
    pub window: Option<Frame>,
    /// The peer's FIN is in and now every byte before it is written: shut the write side.
    pub shutdown: bool,
}

/// The receive side of one stream; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvHalf {
    id: StreamId,
    role: Role,
    budget: Budget,
    /// The peer's FIN arrived: nothing more may follow.
    fin: bool,
    /// The driver was told to shut the write side (exactly once).
    shut: bool,
}

impl RecvHalf {
    pub fn new(id: StreamId, role: Role, params: &StreamParams) -> RecvHalf {
        let budget = match params.version {
            Version::V2 => Budget::Window(RecvWindow::autotuned(params.window, params.max_window)),
            Version::V1 => Budget::Queue {
                frames: 0,
                bytes: 0,
                max_frames: params.v1_max_frames.max(1),
                max_bytes: params.v1_max_bytes.max(1),
            },
        };
        RecvHalf {
            id,
            role,
            budget,
            fin: false,
            shut: false,
        }
    }

    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Bytes received and not yet written: what this stream holds for its socket.
    pub fn buffered(&self) -> usize {
        match self.budget {
            Budget::Window(w) => w.buffered() as usize,
            Budget::Queue { bytes, .. } => bytes,
        }
    }

    /// v2: the receive window now (what the peer may have in flight or in our buffers; grows
    /// and shrinks with autotuning). 0 in v1.
    pub fn window(&self) -> u32 {
        match self.budget {
            Budget::Window(w) => w.window(),
            Budget::Queue { .. } => 0,
        }
    }

    /// The peer's FIN has arrived.
    pub fn fin_received(&self) -> bool {
        self.fin
    }

    /// The write side was shut: nothing more comes in.
    pub fn is_done(&self) -> bool {
        self.shut
    }

    /// Takes one frame the peer sent on this stream. `Err`: reset the stream with that RST.
    ///
    /// Rules: DATA within the budget (v2 window: `flow_control`; v1 queue: `queue_overflow`);
    /// nothing after the peer's FIN (`protocol_error`); FIN only in the peer's direction and
    /// once; OPEN on a live stream is a protocol error; WINDOW only in v2.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Inbound, Reset> {
        match frame {
            Frame::Data { payload, .. } => {
                self.on_data(payload.len())?;
                Ok(Inbound::Data(payload))
            }
            Frame::Fin { dir, .. } => self.on_fin(dir).map(|shutdown| Inbound::Fin { shutdown }),
            Frame::Rst { code, .. } => Ok(Inbound::PeerReset(code)),
            Frame::Window { credit, .. } => match self.budget {
                Budget::Window(_) => Ok(Inbound::Window(credit)),
                Budget::Queue { .. } => Err(Reset::new(RstCode::Protocol, "WINDOW in v1")),
            },
            Frame::Open { .. } | Frame::Forward(_) => {
                Err(Reset::new(RstCode::Protocol, "OPEN for a live stream"))
            }
            Frame::Hello(_) | Frame::HelloAck | Frame::Status(_) => Err(Reset::new(
                RstCode::Protocol,
                "connection frame on a stream",
            )),
        }
    }

    /// v1: the queue is full. The tunnel reader must stop taking frames until the driver has
    /// written some of it (or give up on the stream: `queue_overflow`). Always false in v2,
    /// where credit bounds the peer instead.
    pub fn is_full(&self) -> bool {
        match self.budget {
            Budget::Window(_) => false,
            Budget::Queue {
                frames,
                bytes,
                max_frames,
                max_bytes,
            } => frames >= max_frames || bytes >= max_bytes,
        }
    }

    /// Charges `len` received payload bytes before the driver queues them.
    pub fn on_data(&mut self, len: usize) -> Result<(), Reset> {
        if self.fin {
            return Err(Reset::new(RstCode::Protocol, "DATA after FIN"));
        }
        match &mut self.budget {
            Budget::Window(w) => w
                .on_data(len)
                .map_err(|_| Reset::new(RstCode::FlowControl, "window exceeded")),
            Budget::Queue {
                frames,
                bytes,
                max_frames,
                max_bytes,
            } => {
                if len == 0 {
                    return Ok(());
                }
                // Full already: the reader should have stopped taking frames.
                if *frames >= *max_frames || *bytes >= *max_bytes {
                    return Err(Reset::new(RstCode::QueueOverflow, "queue overflow"));
                }
                *frames += 1;
                *bytes = bytes.saturating_add(len);
                Ok(())
            }
        }
    }

    /// The peer's FIN. `Ok(true)`: shut the write side now (nothing is left to write).
    pub fn on_fin(&mut self, dir: Dir) -> Result<bool, Reset> {
        if dir != self.role.inbound() {
            return Err(Reset::new(RstCode::Protocol, "FIN in the wrong direction"));
        }
        if self.fin {
            return Err(Reset::new(RstCode::Protocol, "second FIN"));
        }
        self.fin = true;
        Ok(self.shutdown_due())
    }

    /// The driver wrote `bytes` to its socket, finishing `frames` DATA frames (v1 counts them;
    /// v2 ignores it), at `at` (v2 autotunes the window with it). Returns the WINDOW to send, if
    /// any, and whether to shut the write side. `Err` only when the driver reports more than it
    /// was given (a bug on this side).
    pub fn on_written(&mut self, bytes: usize, frames: usize, at: Drain) -> Result<Written, Reset> {
        let accounting = Reset::new(RstCode::Other, "stream accounting");
        let window = match &mut self.budget {
            Budget::Window(w) => {
                w.on_drained_at(bytes, at)
                    .map_err(|_| accounting)?
                    .map(|credit| Frame::Window {
                        id: self.id,
                        credit,
                    })
            }
            Budget::Queue {
                frames: f,
                bytes: b,
                ..
            } => {
                if bytes > *b || frames > *f {
                    return Err(accounting);
                }
                *b -= bytes;
                *f -= frames;
                None
            }
        };
        Ok(Written {
            window,
            shutdown: self.shutdown_due(),
        })
    }

    /// True exactly once: after the peer's FIN, when every byte before it is written.
    fn shutdown_due(&mut self) -> bool {
        if self.fin && !self.shut && self.buffered() == 0 {
            self.shut = true;
            return true;
        }
        false
    }
}

/// The send side of one stream; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendHalf {
    id: StreamId,
    role: Role,
    /// v2 credit; `None` in v1 (no flow control: the peer's queue bounds it).
    credit: Option<SendCredit>,
    /// EOF was read and FIN sent: no more reads.
    fin_sent: bool,
    /// The write side was shut after the peer's FIN ([`SendHalf::on_write_shut`]).
    write_shut: bool,
}

impl SendHalf {
    pub fn new(id: StreamId, role: Role, params: &StreamParams) -> SendHalf {
        SendHalf {
            id,
            role,
            credit: match params.version {
                Version::V2 => Some(SendCredit::new(params.window)),
                Version::V1 => None,
            },
            fin_sent: false,
            write_shut: false,
        }
    }

    pub fn id(&self) -> StreamId {
        self.id
    }

    /// How many bytes the driver may read from its socket now: at most `max_payload`, at most
    /// the send credit (v2), nothing after EOF. 0: do not read (wait for WINDOW).
    pub fn read_budget(&self, max_payload: usize) -> usize {
        if self.fin_sent {
            return 0;
        }
        match self.credit {
            Some(c) => max_payload.min(c.available() as usize),
            None => max_payload,
        }
    }

    /// The driver read `n` bytes (at most [`SendHalf::read_budget`]) and sends them as DATA.
    pub fn on_read(&mut self, n: usize) -> Result<(), Reset> {
        if self.fin_sent {
            return Err(Reset::new(RstCode::Other, "read after EOF"));
        }
        match &mut self.credit {
            Some(c) => c
                .consume(n)
                .map_err(|_| Reset::new(RstCode::FlowControl, "read beyond credit")),
            None => Ok(()),
        }
    }

    /// The socket reached EOF: the FIN to send (once; `None` after that).
    pub fn on_eof(&mut self) -> Option<Frame> {
        if self.fin_sent {
            return None;
        }
        self.fin_sent = true;
        Some(Frame::Fin {
            id: self.id,
            dir: self.role.outbound(),
        })
    }

    /// The peer returned credit. Growing it past 2^31-1 is the peer's error (`flow_control`).
    pub fn on_window(&mut self, credit: u32) -> Result<(), Reset> {
        match &mut self.credit {
            Some(c) => c
                .grant(credit)
                .map_err(|_| Reset::new(RstCode::FlowControl, "credit overflow")),
            None => Err(Reset::new(RstCode::Protocol, "WINDOW in v1")),
        }
    }

    /// The driver shut its socket's write side, as [`RecvHalf`] asked.
    pub fn on_write_shut(&mut self) {
        self.write_shut = true;
    }

    /// FIN went out.
    pub fn fin_sent(&self) -> bool {
        self.fin_sent
    }

    /// Both directions closed cleanly: our FIN is sent, the peer's received and every byte
    /// before it written (the write side shut). The stream is over; nothing needs a reset.
    pub fn is_finished(&self) -> bool {
        self.fin_sent && self.write_shut
    }
}

/// What [`Stream::on_frame`] asks of its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes for the socket (already charged).
    Data(Bytes),
    /// Shut the socket's write side now.
    ShutdownWrite,
    /// Nothing to do (a FIN with bytes still to write, a WINDOW).
    None,
    /// The peer reset the stream: close the socket at once.
    PeerReset(RstCode),
}

/// Both halves of one stream, for a driver that owns all of it. Once reset (either way) it
/// takes no more input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub recv: RecvHalf,
    pub send: SendHalf,
    reset: bool,
}

impl Stream {
    pub fn new(id: StreamId, role: Role, params: &StreamParams) -> Stream {
        Stream {
            recv: RecvHalf::new(id, role, params),
            send: SendHalf::new(id, role, params),
            reset: false,
        }
    }

    /// Takes one frame from the peer. `Err`: send that RST; the stream is over.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Event, Frame> {
        if self.reset {
            // Frames may cross an RST in flight; a finished stream ignores them.
            return Ok(Event::None);
        }
        let step = self.recv.on_frame(frame).and_then(|inbound| match inbound {
            Inbound::Data(b) => Ok(Event::Data(b)),
            Inbound::Fin { shutdown: true } => Ok(Event::ShutdownWrite),
            Inbound::Fin { shutdown: false } => Ok(Event::None),
            Inbound::Window(credit) => self.send.on_window(credit).map(|()| Event::None),
            Inbound::PeerReset(code) => Ok(Event::PeerReset(code)),
        });
        match step {
            Ok(Event::PeerReset(code)) => {
                self.reset = true;
                Ok(Event::PeerReset(code))
            }
            Ok(event) => Ok(event),
            Err(reset) => Err(self.reset(reset)),
        }
    }

    /// The driver wrote `bytes` (finishing `frames` DATA frames) to its socket at `at`.
    pub fn on_written(&mut self, bytes: usize, frames: usize, at: Drain) -> Result<Written, Frame> {
        self.recv
            .on_written(bytes, frames, at)
            .map_err(|r| self.reset(r))
    }

    /// The driver read `n` bytes from its socket: the DATA frame to send.
    pub fn on_read(&mut self, payload: Bytes) -> Result<Frame, Frame> {
        match self.send.on_read(payload.len()) {
            Ok(()) => Ok(Frame::Data {
                id: self.send.id(),
                payload,
            }),
            Err(r) => Err(self.reset(r)),
        }
    }

    /// The socket hit EOF: the FIN to send, once.
    pub fn on_eof(&mut self) -> Option<Frame> {
        self.send.on_eof()
    }

    /// The socket failed: the RST to send.
    pub fn on_error(&mut self) -> Frame {
        self.reset(Reset::new(RstCode::Io, "socket error"))
    }

    /// Resets the stream from this side (timeout, operator, error): the RST to send.
    pub fn reset(&mut self, reset: Reset) -> Frame {
        self.reset = true;
        reset.frame(self.recv.id())
    }

    /// How many bytes the driver may read now.
    pub fn read_budget(&self, max_payload: usize) -> usize {
        if self.reset {
            return 0;
        }
        self.send.read_budget(max_payload)
    }

    /// The write side was shut as asked.
    pub fn on_write_shut(&mut self) {
        self.send.on_write_shut();
    }

    /// Over: finished cleanly, or reset by either side.
    pub fn is_over(&self) -> bool {
        self.reset || self.send.is_finished()
    }

    /// Finished cleanly (both FINs, every byte written).
    pub fn is_finished(&self) -> bool {
        !self.reset && self.send.is_finished()
    }
}

#[cfg(test)]
mod tests;
