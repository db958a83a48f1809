//! The tunnel reader's side of the protocol, sans-IO: decode, the handshake, and the stream table.
//!
//! One [`Demux`] per tunnel turns each received WebSocket message into one [`Dispatch`]: it
//! decodes it (v2 binary or v1 text; the other message kind is a tunnel error), enforces the
//! handshake (HELLO first on the relay, HELLO_ACK first on the agent), and routes stream frames
//! to the stream's [`RecvHalf`], which decides DATA, FIN, RST and WINDOW. Tunnel-wide rules live
//! here, once, for the relay, the agent and anything else that relays streams:
//! - frames for an unknown or finished id are ignored (they may cross an RST) and never
//!   answered; only OPEN on a live id is an error, and it resets that stream;
//! - an undecodable frame resets the stream it names when that stream is live (the v2 header's
//!   id, the v1 seq error's id); otherwise it is counted and dropped;
//! - only the relay opens streams; the table is bounded; ids are never reused while live;
//! - v1 decoder state (seq, peer cids) starts when a stream is added and goes when it leaves;
//! - v1 has no credit, so while a stream's queue is full ([`Demux::full`]) the driver stops
//!   reading the tunnel (backpressure, as TCP would), until the stream drains; a stream that
//!   stays full too long (the driver's clock: [`Demux::overflow`]) is reset `queue_overflow`.
//!
//! The driver's own per-stream value (`H`: a channel to the stream task, a socket) rides in the
//! table next to the receive half, so one lookup serves both.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;

use crate::binary;
use crate::error::DecodeError;
use crate::flow::Drain;
use crate::frame::{Frame, Hello, RstCode, StreamId};
use crate::json::V1Decoder;
use crate::limits::Limits;
use crate::status::Status;
use crate::stream::{Inbound, RecvHalf, Reset, Role, SendHalf, StreamParams, Written};
use crate::subprotocol::Version;

/// Largest stream id the relay allocates (v1 cids the peer mints use the upper half).
pub const MAX_STREAM_ID: StreamId = (1 << 31) - 1;

/// A live stream: its receive half and the driver's handle.
#[derive(Debug)]
pub struct Slot<H> {
    pub recv: RecvHalf,
    pub handle: H,
    /// Relay: OPEN has gone (or is going) out. Until then the agent cannot know the id, and
    /// frames for it are ignored like those for any unknown id.
    announced: bool,
}

/// Why a tunnel must close (WebSocket close 1002, or 1008 for a refused handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A text message on a v2 tunnel or a binary one on v1.
    WrongMessageType(Version),
    /// The relay's first frame from an agent was not HELLO.
    ExpectedHello(&'static str),
    /// The agent's HELLO did not decode.
    BadHello(DecodeError),
    /// The agent's first frame from the relay was not HELLO_ACK.
    ExpectedHelloAck(&'static str),
    /// HELLO or HELLO_ACK after the handshake.
    Repeated(&'static str),
}

impl Violation {
    /// Stable short name (metrics, logs).
    pub fn label(&self) -> &'static str {
        match self {
            Violation::WrongMessageType(_) => "wrong_message_type",
            Violation::ExpectedHello(_) => "expected_hello",
            Violation::BadHello(_) => "bad_hello",
            Violation::ExpectedHelloAck(_) => "expected_hello_ack",
            Violation::Repeated(_) => "repeated_handshake",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::WrongMessageType(Version::V2) => {
                f.write_str("nowconnect.v2 uses binary messages")
            }
            Violation::WrongMessageType(Version::V1) => {
                f.write_str("nowconnect.v1 uses text messages")
            }
            Violation::ExpectedHello(got) => write!(f, "expected HELLO, got {got}"),
            Violation::BadHello(e) => write!(f, "invalid HELLO: {e}"),
            Violation::ExpectedHelloAck(got) => write!(f, "{got} before HELLO_ACK"),
            Violation::Repeated(got) => write!(f, "{got} after the handshake"),
        }
    }
}

/// A frame dropped without an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// For an id that is not live (finished, reset, never opened): it may have crossed an RST.
    UnknownStream { kind: &'static str, id: StreamId },
    /// Did not decode and names no live stream.
    Undecodable(DecodeError),
}

/// What one received message asks of the driver.
#[derive(Debug)]
pub enum Dispatch<H> {
    /// Nothing to do.
    Nothing,
    /// Relay: the agent's HELLO (the first frame). Admit it or close the tunnel.
    Hello(Hello),
    /// Agent: the relay accepted our HELLO; the tunnel is READY.
    HelloAck,
    /// Relay: the agent's report of its targets' health (decoded and bounded; the driver
    /// keeps only the connectors this tunnel's HELLO exported).
    Status(Box<Status>),
    /// Agent: the relay opens a stream. Dial and [`Demux::accept`] (which refuses beyond the
    /// table's bound), or [`Demux::refuse`].
    /// `cid`: the peer's own v1 cid for it, for the encoder ([`crate::V1Encoder::bind`]).
    Open {
        id: StreamId,
        connector: String,
        client_addr: Option<String>,
        cid: Option<String>,
    },
    /// Bytes for stream `id`'s socket, already charged. `direct`: nothing of this stream waits
    /// to be written before them, so the driver may write them straight into the socket (and
    /// report it with [`Demux::on_written`]); otherwise they queue behind what waits.
    Data {
        id: StreamId,
        payload: Bytes,
        direct: bool,
    },
    /// The peer's FIN for stream `id`; `shutdown`: shut the socket's write side now.
    Fin { id: StreamId, shutdown: bool },
    /// Send credit for stream `id`'s [`SendHalf`].
    Window { id: StreamId, credit: u32 },
    /// The peer reset stream `id`; it left the table. Close its socket at once, send nothing.
    PeerReset {
        id: StreamId,
        code: RstCode,
        handle: H,
    },
    /// This side resets stream `id`: send `rst`. `handle`: the stream was live and left the
    /// table; close its socket at once.
    Reset {
        id: StreamId,
        rst: Frame,
        reason: Reset,
        handle: Option<H>,
    },
    /// Dropped without an answer; count it.
    Ignored(Ignored),
    /// The tunnel must close.
    Close(Violation),
}

/// The table is full (`max_streams` live streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// What a write report ([`Demux::on_written`]) asks of the driver.
#[derive(Debug)]
pub enum Drained<H> {
    /// The stream is no longer live; nothing to do.
    Unknown,
    /// Send the WINDOW if any; shut the write side if asked.
    Ok(Written),
    /// Accounting failed (a bug on this side): send `rst`, close the socket.
    Reset { rst: Frame, handle: H },
}

/// The tunnel reader's protocol state; see the module documentation.
#[derive(Debug)]
pub struct Demux<H> {
    role: Role,
    limits: Limits,
    params: StreamParams,
    /// v1 only: seq and cid state.
    v1: Option<V1Decoder>,
    slots: HashMap<StreamId, Slot<H>>,
    max_streams: usize,
    /// Relay: the next id to try.
    next_id: StreamId,
    /// HELLO (relay) or HELLO_ACK (agent) has been seen.
    handshake_done: bool,
    /// v1: the stream whose queue is full; the driver reads no frame while it is.
    full: Option<StreamId>,
}

impl<H> Demux<H> {
    /// A tunnel speaking `params.version` as `role`, with at most `max_streams` live streams.
    pub fn new(role: Role, params: StreamParams, limits: Limits, max_streams: usize) -> Demux<H> {
        Demux {
            role,
            limits,
            params,
            v1: (params.version == Version::V1).then(|| V1Decoder::new(limits)),
            slots: HashMap::new(),
            max_streams,
            next_id: 1,
            handshake_done: false,
            full: None,
        }
    }

    /// A link with no HELLO exchange of its own (the relay mesh: its peers are identified by
    /// TLS and the upgrade request): stream frames are taken from the first message on.
    pub fn without_handshake(mut self) -> Demux<H> {
        self.handshake_done = true;
        self
    }

    pub fn version(&self) -> Version {
        self.params.version
    }

    pub fn params(&self) -> &StreamParams {
        &self.params
    }

    /// Live streams.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get(&self, id: StreamId) -> Option<&Slot<H>> {
        self.slots.get(&id)
    }

    pub fn get_mut(&mut self, id: StreamId) -> Option<&mut Slot<H>> {
        self.slots.get_mut(&id)
    }

    /// Every live stream.
    pub fn iter(&self) -> impl Iterator<Item = (StreamId, &Slot<H>)> {
        self.slots.iter().map(|(id, s)| (*id, s))
    }

    /// Gives memory back after a burst: a table using under a quarter of its slots shrinks to
    /// twice its length (never below `min`).
    pub fn shrink(&mut self, min: usize) {
        let keep = (self.slots.len() * 2).max(min);
        if self.slots.capacity() > 2 * keep {
            self.slots.shrink_to(keep);
        }
    }

    /// Relay: a new stream, with the next free id; `make` builds its handle. Returns the id
    /// and the send half (for the stream task; the receive half stays here). Frames for it
    /// are ignored until [`Demux::announce`]. `make` is not called when the table is full.
    pub fn open<F>(&mut self, make: F) -> Result<(StreamId, SendHalf), Full>
    where
        F: FnOnce(StreamId) -> H,
    {
        if self.slots.len() >= self.max_streams {
            return Err(Full);
        }
        let id = loop {
            let id = self.next_id;
            self.next_id = if id >= MAX_STREAM_ID { 1 } else { id + 1 };
            if !self.slots.contains_key(&id) {
                break id;
            }
        };
        let send = self.insert(id, make(id), false)?;
        Ok((id, send))
    }

    /// Relay: OPEN for stream `id` is queued; from now on its frames are the agent's.
    pub fn announce(&mut self, id: StreamId) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.announced = true;
        }
    }

    /// Agent: takes the stream of a [`Dispatch::Open`]; returns its send half.
    pub fn accept(&mut self, id: StreamId, handle: H) -> Result<SendHalf, Full> {
        self.insert(id, handle, true)
    }

    /// Agent: turns down the stream of a [`Dispatch::Open`]: the RST to send.
    pub fn refuse(&mut self, id: StreamId, reset: Reset) -> Frame {
        if let Some(v1) = &mut self.v1 {
            v1.forget(id);
        }
        reset.frame(id)
    }

    fn insert(&mut self, id: StreamId, handle: H, announced: bool) -> Result<SendHalf, Full> {
        if self.slots.len() >= self.max_streams {
            return Err(Full);
        }
        if let Some(v1) = &mut self.v1 {
            v1.open(id).map_err(|_| Full)?;
        }
        let recv = RecvHalf::new(id, self.role, &self.params);
        self.slots.insert(
            id,
            Slot {
                recv,
                handle,
                announced,
            },
        );
        Ok(SendHalf::new(id, self.role, &self.params))
    }

    /// The stream's task ended: it leaves the table (and its v1 state goes).
    pub fn remove(&mut self, id: StreamId) -> Option<H> {
        let slot = self.slots.remove(&id)?;
        if let Some(v1) = &mut self.v1 {
            v1.forget(id);
        }
        self.refresh_full();
        Some(slot.handle)
    }

    /// v1 backpressure: `Some(id)` while stream `id`'s queue is full. Read no frame from the
    /// tunnel until this is `None` again (the stream drained, ended or was reset).
    pub fn full(&self) -> Option<StreamId> {
        self.full
    }

    /// v1: stream `id` stayed full for longer than the driver allows: reset it
    /// (`queue_overflow`), which lets the tunnel be read again.
    pub fn overflow(&mut self, id: StreamId) -> Dispatch<H> {
        let reset = Reset::new(RstCode::QueueOverflow, "queue full too long");
        self.reset_live(id, reset).unwrap_or(Dispatch::Nothing)
    }

    /// Resets live stream `id` as a [`Dispatch::Reset`]; `None` when it is not live.
    fn reset_live(&mut self, id: StreamId, reason: Reset) -> Option<Dispatch<H>> {
        let (rst, handle) = self.reset(id, reason)?;
        Some(Dispatch::Reset {
            id,
            rst,
            reason,
            handle: Some(handle),
        })
    }

    fn refresh_full(&mut self) {
        if let Some(id) = self.full {
            if !self.slots.get(&id).is_some_and(|s| s.recv.is_full()) {
                self.full = None;
            }
        }
    }

    /// Resets a live stream from this side: it leaves the table; returns the RST and handle.
    pub fn reset(&mut self, id: StreamId, reset: Reset) -> Option<(Frame, H)> {
        self.remove(id).map(|h| (reset.frame(id), h))
    }

    /// The driver wrote `bytes` of stream `id` to its socket, finishing `frames` DATA frames,
    /// at `at` (the clock and memory room the receive window autotunes with).
    pub fn on_written(
        &mut self,
        id: StreamId,
        bytes: usize,
        frames: usize,
        at: Drain,
    ) -> Drained<H> {
        let Some(slot) = self.slots.get_mut(&id) else {
            return Drained::Unknown;
        };
        match slot.recv.on_written(bytes, frames, at) {
            Ok(w) => {
                self.refresh_full();
                Drained::Ok(w)
            }
            Err(reset) => match self.reset(id, reset) {
                Some((rst, handle)) => Drained::Reset { rst, handle },
                None => Drained::Unknown,
            },
        }
    }

    /// One binary WebSocket message.
    pub fn on_binary(&mut self, msg: &Bytes) -> Dispatch<H> {
        if self.params.version != Version::V2 {
            return Dispatch::Close(Violation::WrongMessageType(Version::V1));
        }
        match binary::decode(msg, &self.limits) {
            Ok(frame) => self.on_frame(frame),
            Err(e) => {
                // The header names the stream even when the body is bad.
                let id = msg
                    .get(1..binary::HEADER_LEN)
                    .and_then(|s| <[u8; 4]>::try_from(s).ok())
                    .map_or(0, u32::from_be_bytes);
                self.undecodable(id, e)
            }
        }
    }

    /// One text WebSocket message.
    pub fn on_text(&mut self, msg: &str) -> Dispatch<H> {
        let Some(v1) = &mut self.v1 else {
            return Dispatch::Close(Violation::WrongMessageType(Version::V2));
        };
        match v1.decode(msg) {
            Ok(frame) => self.on_frame(frame),
            Err(DecodeError::BadCid) if self.handshake_done => {
                // A cid this side minted no id for, or forgot: the stream is gone.
                Dispatch::Ignored(Ignored::UnknownStream { kind: "v1", id: 0 })
            }
            Err(e) => {
                let id = match e {
                    DecodeError::Seq { id, .. } => id,
                    _ => 0,
                };
                self.undecodable(id, e)
            }
        }
    }

    fn undecodable(&mut self, id: StreamId, e: DecodeError) -> Dispatch<H> {
        if !self.handshake_done && self.role == Role::Relay {
            return Dispatch::Close(Violation::BadHello(e));
        }
        let reset = Reset::new(RstCode::Protocol, "undecodable frame");
        let live = self.slots.get(&id).is_some_and(|s| s.announced);
        match live.then(|| self.reset_live(id, reset)).flatten() {
            Some(d) => d,
            None => Dispatch::Ignored(Ignored::Undecodable(e)),
        }
    }

    /// One decoded frame (the driver may also feed frames it decoded itself).
    pub fn on_frame(&mut self, frame: Frame) -> Dispatch<H> {
        if !self.handshake_done {
            return self.handshake(frame);
        }
        let id = frame.stream_id();
        match frame {
            Frame::Hello(_) | Frame::HelloAck => Dispatch::Close(Violation::Repeated(frame.kind())),
            Frame::Open {
                id,
                connector,
                client_addr,
            } => {
                if self.role == Role::Relay {
                    return self.local_reset(id, Reset::new(RstCode::Protocol, "OPEN from agent"));
                }
                if self.slots.contains_key(&id) {
                    // The relay believes the id free; ours is stale: reset both.
                    return self.local_reset(id, Reset::new(RstCode::Protocol, "stream id in use"));
                }
                let cid = self
                    .v1
                    .as_ref()
                    .and_then(|v1| v1.foreign_cid(id))
                    .map(str::to_owned);
                Dispatch::Open {
                    id,
                    connector,
                    client_addr,
                    cid,
                }
            }
            // Only agents report; a relay's STATUS to an agent means nothing.
            Frame::Status(status) => match self.role {
                Role::Relay => Dispatch::Status(status),
                Role::Agent => Dispatch::Ignored(Ignored::UnknownStream { kind: "STATUS", id }),
            },
            // Only a relay mesh carries FORWARD, and its driver takes it before the demux.
            Frame::Forward(_) => self.local_reset(
                id,
                Reset::new(RstCode::Protocol, "FORWARD outside the mesh"),
            ),
            frame => {
                let kind = frame.kind();
                let Some(slot) = self.slots.get_mut(&id).filter(|s| s.announced) else {
                    return Dispatch::Ignored(Ignored::UnknownStream { kind, id });
                };
                match slot.recv.on_frame(frame) {
                    Ok(Inbound::Data(payload)) => {
                        let direct = slot.recv.buffered() == payload.len();
                        if slot.recv.is_full() {
                            self.full = Some(id);
                        }
                        Dispatch::Data {
                            id,
                            payload,
                            direct,
                        }
                    }
                    Ok(Inbound::Fin { shutdown }) => Dispatch::Fin { id, shutdown },
                    Ok(Inbound::Window(credit)) => Dispatch::Window { id, credit },
                    Ok(Inbound::PeerReset(code)) => match self.remove(id) {
                        Some(handle) => Dispatch::PeerReset { id, code, handle },
                        None => Dispatch::Nothing,
                    },
                    Err(reset) => self.local_reset(id, reset),
                }
            }
        }
    }

    /// Resets stream `id` from this side. A live, announced stream leaves the table; one whose
    /// OPEN has not gone out yet is not the peer's to name, so it stays (the RST then names an
    /// id the peer does not know, which it ignores).
    fn local_reset(&mut self, id: StreamId, reset: Reset) -> Dispatch<H> {
        let handle = match self.slots.get(&id).map(|s| s.announced) {
            Some(true) => self.remove(id),
            Some(false) => None,
            None => {
                if let Some(v1) = &mut self.v1 {
                    v1.forget(id);
                }
                None
            }
        };
        Dispatch::Reset {
            id,
            rst: reset.frame(id),
            reason: reset,
            handle,
        }
    }

    fn handshake(&mut self, frame: Frame) -> Dispatch<H> {
        match (self.role, frame) {
            (Role::Relay, Frame::Hello(hello)) => {
                self.handshake_done = true;
                Dispatch::Hello(hello)
            }
            (Role::Relay, other) => Dispatch::Close(Violation::ExpectedHello(other.kind())),
            (Role::Agent, Frame::HelloAck) => {
                self.handshake_done = true;
                Dispatch::HelloAck
            }
            (Role::Agent, other) => Dispatch::Close(Violation::ExpectedHelloAck(other.kind())),
        }
    }
}

#[cfg(test)]
mod tests;
