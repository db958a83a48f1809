//! Typed errors of the protocol crate. Messages name what was wrong, never echo payload bytes.

use thiserror::Error;

/// Why an incoming frame was rejected. The peer caused every one of these.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("frame is {len} bytes, limit is {max}")]
    Oversized { len: usize, max: usize },
    #[error("invalid JSON ({category} at column {column})")]
    Json {
        category: &'static str,
        column: usize,
    },
    #[error("frame is a JSON value but not an object with a string `t`")]
    NotAnObject,
    #[error("unknown frame type `{0}`")]
    UnknownTag(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}` is {len} bytes, limit is {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("field `{field}` is empty")]
    Empty { field: &'static str },
    #[error("field `{field}` contains a control character")]
    ControlChar { field: &'static str },
    #[error("field `{field}` has {count} entries, limit is {max}")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("field `{field}` is not valid UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("DATA payload is not valid base64")]
    BadBase64,
    #[error("`dir` must be `c2a` or `a2c`")]
    BadDir,
    #[error("invalid `cid`")]
    BadCid,
    #[error("frame truncated: {need} bytes needed, {have} present")]
    Truncated { need: usize, have: usize },
    #[error("{extra} unexpected bytes after the {frame} body")]
    TrailingBytes { frame: &'static str, extra: usize },
    #[error("unknown frame type byte 0x{0:02x}")]
    UnknownType(u8),
    #[error("{frame} must use stream id 0, got {id}")]
    ConnectionFrameOnStream { frame: &'static str, id: u32 },
    #[error("{frame} must not use stream id 0")]
    StreamFrameOnConnection { frame: &'static str },
    #[error("WINDOW increment must be between 1 and 2^31-1, got {0}")]
    BadWindow(u32),
    #[error("DATA seq {got} on stream {id}, expected {expected}")]
    Seq { id: u32, expected: u64, got: u64 },
    #[error("more than {max} v1 streams tracked at once")]
    TooManyStreams { max: usize },
}

/// Why a frame could not be encoded. We caused every one of these.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("{0} frames do not exist in protocol v1")]
    NotInV1(&'static str),
    #[error("invalid frame: {0}")]
    Invalid(#[from] DecodeError),
    #[error("more than {max} v1 streams tracked at once")]
    TooManyStreams { max: usize },
}

/// Flow-control violations. `PeerExceeded` is the peer's fault; the others are ours.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FlowError {
    #[error("peer sent {len} bytes with only {available} bytes of credit")]
    PeerExceeded { len: usize, available: u32 },
    #[error("tried to send {len} bytes with only {available} bytes of credit")]
    NoCredit { len: usize, available: u32 },
    #[error("credit would grow past 2^31-1 ({current} + {increment})")]
    Overflow { current: u32, increment: u32 },
    #[error("drained {len} bytes but only {buffered} were received and not yet drained")]
    DrainedTooMuch { len: usize, buffered: u32 },
}

/// A serde_json error as a [`DecodeError`]: only the category and position, since serde's text
/// could quote bytes of the frame.
pub(crate) fn json_error(e: serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    let category = match e.classify() {
        Category::Io => "io",
        Category::Syntax => "syntax error",
        Category::Data => "wrong type or shape",
        Category::Eof => "unexpected end",
    };
    DecodeError::Json {
        category,
        column: e.column(),
    }
}
