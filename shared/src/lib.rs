//! The NowConnect wire protocol, with no I/O (sans-IO).
//!
//! This crate owns everything both the agent and the relay must agree on: the [`Frame`] model,
//! the two encodings (v1 JSON text frames of the reference system, v2 binary frames), subprotocol
//! negotiation, per-stream credit flow control and the size limits the decoders enforce.
//! It never touches a socket, a clock or a runtime, so every rule here is unit-testable, and
//! decoders never panic nor allocate more than [`Limits`] allow on hostile input.
#![forbid(unsafe_code)]

pub mod arena;
pub mod binary;
pub mod error;
pub mod flow;
pub mod frame;
pub mod json;
pub mod limits;
pub mod subprotocol;

pub use error::{DecodeError, EncodeError, FlowError};
pub use flow::{RecvWindow, SendCredit, DEFAULT_WINDOW, MAX_WINDOW};
pub use frame::{Dir, Frame, Hello, RstCode, StreamId};
pub use json::V1Codec;
pub use limits::Limits;
pub use subprotocol::Version;
