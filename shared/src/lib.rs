//! The NowConnect wire protocol, with no I/O (sans-IO).
//!
//! This crate owns everything both the agent and the relay must agree on: the [`Frame`] model,
//! the two encodings (v1 JSON text frames of the reference system, v2 binary frames), subprotocol
//! negotiation, per-stream credit flow control, the size limits the decoders enforce, and the
//! stream rules: one state machine per stream ([`stream`]) and the tunnel reader's stream table
//! ([`demux`]), shared by the relay, the agent and anything else that relays streams.
//! It never touches a socket, a clock or a runtime, so every rule here is unit-testable, and
//! decoders never panic nor allocate more than [`Limits`] allow on hostile input.
#![forbid(unsafe_code)]

pub mod arena;
pub mod binary;
mod check;
pub mod demux;
pub mod error;
pub mod flow;
pub mod frame;
pub mod json;
pub mod limits;
pub mod queue;
pub mod sni;
pub mod status;
pub mod stream;
pub mod subprotocol;

pub use demux::{Demux, Dispatch};
pub use error::{DecodeError, EncodeError, FlowError};
pub use flow::{
    Drain, Lead, RecvWindow, SendCredit, DEFAULT_MAX_STREAM_WINDOW, DEFAULT_WINDOW, MAX_WINDOW,
    STREAM_WINDOW_RANGE,
};
pub use frame::{Dir, Forward, Frame, Hello, RstCode, StreamId};
pub use json::{V1Decoder, V1Encoder};
pub use limits::Limits;
pub use status::{Features, Status, TargetStatus};
pub use stream::{RecvHalf, Reset, Role, SendHalf, Stream, StreamParams};
pub use subprotocol::Version;
