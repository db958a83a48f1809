//! The one frame model both encodings map to.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub(crate) use crate::check::{check_name, check_text};
use crate::error::DecodeError;
use crate::limits::Limits;
use crate::status::Status;

/// Identifies one stream (one client TCP connection) inside a tunnel. The relay allocates them.
/// Id 0 is the connection itself (HELLO, HELLO_ACK, STATUS) and is never a stream.
pub type StreamId = u32;

/// One protocol message, whichever encoding carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Agent -> relay, first frame of a tunnel.
    Hello(Hello),
    /// Relay -> agent: the HELLO is accepted; the agent is READY.
    HelloAck,
    /// Relay -> agent: a client connected to `connector`; dial its target.
    Open {
        id: StreamId,
        connector: String,
        /// Client address for audit (v2 only; v1 has no field for it).
        client_addr: Option<String>,
    },
    /// Bytes of one stream, in either direction.
    Data { id: StreamId, payload: Bytes },
    /// The sender of `dir` will send no more bytes (half-close).
    Fin { id: StreamId, dir: Dir },
    /// The stream is aborted; both sides drop it at once.
    Rst {
        id: StreamId,
        code: RstCode,
        /// Short human reason (v2 only, or the `err` text of an unknown v1 code).
        reason: String,
    },
    /// The receiver drained `credit` more bytes: the sender may send that many more (v2 only).
    Window { id: StreamId, credit: u32 },
    /// Agent -> relay (v2 only, stream id 0): the health of the agent's targets; sent only to
    /// a relay whose HELLO_ACK announced it ([`crate::status`]).
    Status(Box<Status>),
    /// Relay -> relay over the mesh (v2 only): open a stream to the agent `agent_id` this relay
    /// owns, for a client that reached the origin relay. Never sent on an agent tunnel.
    Forward(Box<Forward>),
}

/// What a stream forwarded between relays needs beyond an OPEN: whose agent, under which
/// claim (the owner refuses a stale `epoch`), and for whom (the owner authorizes and audits
/// the real client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub id: StreamId,
    pub connector: String,
    /// The agent the origin believes owns the connector on the receiving relay.
    pub agent_id: String,
    /// The owner's claim on `agent_id` as the directory showed it (fencing token).
    pub epoch: u64,
    /// The client's address (after any PROXY header), for authorization and audit.
    pub client_addr: String,
    /// The origin relay's `replica_id`.
    pub origin: String,
}

impl Forward {
    /// Checks every field against `limits`; the v2 codec calls this both ways.
    pub fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        check_name("connector", &self.connector, limits.max_connector_len)?;
        check_name("agent_id", &self.agent_id, limits.max_agent_id_len)?;
        check_text("client_addr", &self.client_addr, limits.max_short_text_len)?;
        check_name("origin", &self.origin, limits.max_agent_id_len)?;
        Ok(())
    }
}

impl Frame {
    /// The stream this frame belongs to (0 for HELLO and HELLO_ACK).
    pub fn stream_id(&self) -> StreamId {
        match self {
            Frame::Hello(_) | Frame::HelloAck | Frame::Status(_) => 0,
            Frame::Open { id, .. }
            | Frame::Data { id, .. }
            | Frame::Fin { id, .. }
            | Frame::Rst { id, .. }
            | Frame::Window { id, .. } => *id,
            Frame::Forward(f) => f.id,
        }
    }

    /// Short upper-case name as on the wire (`t` in v1), for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "HELLO",
            Frame::HelloAck => "HELLO_ACK",
            Frame::Open { .. } => "OPEN",
            Frame::Data { .. } => "DATA",
            Frame::Fin { .. } => "FIN",
            Frame::Rst { .. } => "RST",
            Frame::Window { .. } => "WINDOW",
            Frame::Status(_) => "STATUS",
            Frame::Forward(_) => "FORWARD",
        }
    }
}

/// The agent's introduction: who it is and which connectors it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hello {
    pub agent_id: String,
    pub connectors: Vec<String>,
    /// Agent software version; informational, may be empty.
    pub ver: String,
}

impl Hello {
    /// Checks every field against `limits`; decoders call this, senders may too.
    pub fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        check_name("agent_id", &self.agent_id, limits.max_agent_id_len)?;
        check_text("ver", &self.ver, limits.max_short_text_len)?;
        if self.connectors.len() > limits.max_connectors {
            return Err(DecodeError::TooMany {
                field: "connectors",
                count: self.connectors.len(),
                max: limits.max_connectors,
            });
        }
        for c in &self.connectors {
            check_name("connector", c, limits.max_connector_len)?;
        }
        Ok(())
    }
}

/// HELLO fields as they arrive, before presence and limits are checked.
#[derive(Debug, Deserialize)]
pub(crate) struct RawHello {
    pub agent_id: Option<String>,
    pub connectors: Option<Vec<String>>,
    pub ver: Option<String>,
}

impl RawHello {
    pub(crate) fn into_hello(self, limits: &Limits) -> Result<Hello, DecodeError> {
        let hello = Hello {
            agent_id: self.agent_id.ok_or(DecodeError::MissingField("agent_id"))?,
            connectors: self
                .connectors
                .ok_or(DecodeError::MissingField("connectors"))?,
            ver: self.ver.unwrap_or_default(),
        };
        hello.validate(limits)?;
        Ok(hello)
    }
}

/// Direction of a half-close: client-to-agent or agent-to-client, as in v1 `dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Client -> agent (the relay's client closed its write side).
    C2a,
    /// Agent -> client (the target closed its write side).
    A2c,
}

impl Dir {
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::C2a => "c2a",
            Dir::A2c => "a2c",
        }
    }

    pub fn parse(s: &str) -> Option<Dir> {
        match s {
            "c2a" => Some(Dir::C2a),
            "a2c" => Some(Dir::A2c),
            _ => None,
        }
    }

    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Dir::C2a => 0,
            Dir::A2c => 1,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Dir> {
        match b {
            0 => Some(Dir::C2a),
            1 => Some(Dir::A2c),
            _ => None,
        }
    }
}

macro_rules! rst_codes {
    ($($variant:ident = $byte:literal, $text:literal;)*) => {
        /// Why a stream was reset. The text form is the v1 `err` value and a metric label.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum RstCode {
            $($variant,)*
            /// A code this version does not know; the text travels in the RST reason.
            Other,
        }

        impl RstCode {
            /// Every known code, for tests and metric pre-registration.
            pub const ALL: &'static [RstCode] = &[$(RstCode::$variant,)* RstCode::Other];

            pub fn as_str(self) -> &'static str {
                match self { $(RstCode::$variant => $text,)* RstCode::Other => "other" }
            }

            pub fn to_byte(self) -> u8 {
                match self { $(RstCode::$variant => $byte,)* RstCode::Other => 255 }
            }

            /// Unknown bytes map to `Other`: a newer peer may know more codes.
            pub fn from_byte(b: u8) -> RstCode {
                match b { $($byte => RstCode::$variant,)* _ => RstCode::Other }
            }

            /// `None` for text that is not a known code.
            pub fn parse(s: &str) -> Option<RstCode> {
                match s { $($text => Some(RstCode::$variant),)* _ => None }
            }
        }
    };
}

rst_codes! {
    ConnectFailed = 1, "connect_failed";
    WsBroken = 2, "ws_broken";
    QueueOverflow = 3, "queue_overflow";
    UnknownConnector = 4, "unknown_connector";
    Protocol = 5, "protocol_error";
    IdleTimeout = 6, "idle_timeout";
    Shutdown = 7, "shutdown";
    FlowControl = 8, "flow_control";
    Denied = 9, "denied";
    Io = 10, "io_error";
}
