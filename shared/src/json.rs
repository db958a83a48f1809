//! v1 codec: the reference system's JSON text frames, byte for byte.
//!
//! ```text
//! {"t":"HELLO","agent_id":"premise-01","connectors":["addomain"],"ver":"1.5"}
//! {"t":"HELLO_ACK"}
//! {"t":"OPEN","cid":"<uuid>","connector":"addomain"}
//! {"t":"DATA","cid":"<uuid>","seq":123,"b64":"<base64>"}
//! {"t":"FIN","cid":"<uuid>","dir":"c2a|a2c"}
//! {"t":"RST","cid":"<uuid>","err":"connect_failed"}
//! ```
//! v1 streams are named by a text `cid`; the [`Frame`] model uses numeric ids. Our relay writes
//! ids as UUID-shaped cids ([`cid_for`]) that map back without any table. A peer that mints its
//! own cids (the reference hub) gets ids from a bounded table, allocated on OPEN. The codec also
//! enforces the v1 rule that DATA `seq` grows by one per cid and direction, so it is stateful.
//!
//! State lifecycle (the caller's duty, since only it knows which streams are live):
//! - decoding the first DATA of an id starts its incoming seq state; encoding the first DATA of
//!   an id starts its outgoing seq state; both are bounded by `Limits::max_v1_streams`.
//! - call [`V1Codec::forget`] when a stream ends, *and* when you drop a decoded frame for an id
//!   you do not know (a late DATA crossing an RST would otherwise leave state behind).
//! - the incoming and outgoing halves never touch each other's state, so a reader task and a
//!   writer task may each own a separate `V1Codec` (each forgets its own half).

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::binary::json_error;
use crate::error::{DecodeError, EncodeError};
use crate::frame::{check_name, check_text, Dir, Frame, RawHello, RstCode, StreamId};
use crate::limits::Limits;

/// Ids at or above this were allocated for cids the peer minted; ours stay below.
const FOREIGN_ID_BASE: StreamId = 0x8000_0000;
const CID_PREFIX: &str = "00000000-0000-4000-8000-";

/// The cid text our side uses for stream `id`: a well-formed version-4 UUID carrying the id.
pub fn cid_for(id: StreamId) -> String {
    format!("{CID_PREFIX}{id:012x}")
}

fn parse_own_cid(cid: &str) -> Option<StreamId> {
    let hex = cid.strip_prefix(CID_PREFIX)?;
    if hex.len() != 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u64::from_str_radix(hex, 16).ok()?;
    StreamId::try_from(id)
        .ok()
        .filter(|&id| id != 0 && id < FOREIGN_ID_BASE)
}

/// Every field any v1 frame may carry; unknown fields are ignored as the reference does.
#[derive(Deserialize)]
struct Raw {
    t: Option<String>,
    cid: Option<String>,
    connector: Option<String>,
    seq: Option<u64>,
    b64: Option<String>,
    dir: Option<String>,
    err: Option<String>,
    agent_id: Option<String>,
    connectors: Option<Vec<String>>,
    ver: Option<String>,
}

/// Field order matches the reference frames, so our output is byte-identical to theirs.
#[derive(Serialize)]
struct Out<'a> {
    t: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connectors: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ver: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connector: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dir: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    err: Option<&'a str>,
}

impl<'a> Out<'a> {
    fn new(t: &'static str) -> Out<'a> {
        Out {
            t,
            agent_id: None,
            connectors: None,
            ver: None,
            cid: None,
            connector: None,
            seq: None,
            b64: None,
            dir: None,
            err: None,
        }
    }
}

/// Stateful v1 codec for one tunnel (one per peer).
#[derive(Debug, Default)]
pub struct V1Codec {
    limits: Limits,
    /// Next DATA seq we send, per stream.
    out_seq: HashMap<StreamId, u64>,
    /// Next DATA seq we expect, per stream; the first DATA sets the baseline.
    in_seq: HashMap<StreamId, u64>,
    /// cids the peer minted, both ways; bounded by `limits.max_v1_streams`.
    foreign: HashMap<String, StreamId>,
    foreign_rev: HashMap<StreamId, String>,
    next_foreign: StreamId,
}

impl V1Codec {
    pub fn new(limits: Limits) -> V1Codec {
        V1Codec {
            limits,
            next_foreign: FOREIGN_ID_BASE,
            ..V1Codec::default()
        }
    }

    /// Drops the seq and cid state of a finished stream.
    pub fn forget(&mut self, id: StreamId) {
        self.out_seq.remove(&id);
        self.in_seq.remove(&id);
        if let Some(cid) = self.foreign_rev.remove(&id) {
            self.foreign.remove(&cid);
        }
    }

    /// Number of streams with state; for tests and leak checks.
    pub fn tracked_streams(&self) -> usize {
        self.out_seq
            .len()
            .max(self.in_seq.len())
            .max(self.foreign.len())
    }

    /// Parses one text frame, checks limits and the seq rule, and maps the cid to an id.
    pub fn decode(&mut self, text: &str) -> Result<Frame, DecodeError> {
        let max = self.limits.max_v1_text_len();
        if text.len() > max {
            return Err(DecodeError::Oversized {
                len: text.len(),
                max,
            });
        }
        if !text.trim_start().starts_with('{') {
            return Err(DecodeError::NotAnObject);
        }
        let raw: Raw = serde_json::from_str(text).map_err(json_error)?;
        let t = raw.t.as_deref().ok_or(DecodeError::MissingField("t"))?;
        match t {
            "HELLO" => {
                let hello = RawHello {
                    agent_id: raw.agent_id,
                    connectors: raw.connectors,
                    ver: raw.ver,
                };
                Ok(Frame::Hello(hello.into_hello(&self.limits)?))
            }
            "HELLO_ACK" => Ok(Frame::HelloAck),
            "OPEN" => {
                let connector = raw
                    .connector
                    .ok_or(DecodeError::MissingField("connector"))?;
                check_name("connector", &connector, self.limits.max_connector_len)?;
                let id = self.stream_id(raw.cid.as_deref(), true)?;
                Ok(Frame::Open {
                    id,
                    connector,
                    client_addr: None,
                })
            }
            "DATA" => {
                let seq = raw.seq.ok_or(DecodeError::MissingField("seq"))?;
                let b64 = raw.b64.ok_or(DecodeError::MissingField("b64"))?;
                let max = self.limits.max_payload.div_ceil(3) * 4;
                if b64.len() > max {
                    let len = b64.len() / 4 * 3;
                    return Err(DecodeError::Oversized {
                        len,
                        max: self.limits.max_payload,
                    });
                }
                let payload = B64
                    .decode(b64.as_bytes())
                    .map_err(|_| DecodeError::BadBase64)?;
                if payload.len() > self.limits.max_payload {
                    let e = DecodeError::Oversized {
                        len: payload.len(),
                        max: self.limits.max_payload,
                    };
                    return Err(e);
                }
                let id = self.stream_id(raw.cid.as_deref(), false)?;
                self.check_seq(id, seq)?;
                Ok(Frame::Data {
                    id,
                    payload: Bytes::from(payload),
                })
            }
            "FIN" => {
                let dir = raw.dir.ok_or(DecodeError::MissingField("dir"))?;
                let dir = Dir::parse(&dir).ok_or(DecodeError::BadDir)?;
                let id = self.stream_id(raw.cid.as_deref(), false)?;
                Ok(Frame::Fin { id, dir })
            }
            "RST" => {
                // The reference sends `err` on every RST; tolerate its absence as "other".
                let err = raw.err.unwrap_or_default();
                check_text("err", &err, self.limits.max_short_text_len)?;
                let id = self.stream_id(raw.cid.as_deref(), false)?;
                let (code, reason) = match RstCode::parse(&err) {
                    Some(code) => (code, String::new()),
                    None => (RstCode::Other, err),
                };
                Ok(Frame::Rst { id, code, reason })
            }
            other => {
                let mut tag: String = other.chars().take(32).collect();
                tag.retain(|c| !c.is_control());
                Err(DecodeError::UnknownTag(tag))
            }
        }
    }

    /// Encodes one frame as v1 text. WINDOW has no v1 form; a v2-only RST reason is dropped
    /// unless the code is `Other`, whose text then goes in `err`.
    pub fn encode(&mut self, frame: &Frame) -> Result<String, EncodeError> {
        let limits = self.limits;
        let cid_text;
        let b64_text;
        let mut out;
        match frame {
            Frame::Hello(hello) => {
                hello.validate(&limits)?;
                out = Out::new("HELLO");
                out.agent_id = Some(&hello.agent_id);
                out.connectors = Some(&hello.connectors);
                out.ver = Some(&hello.ver);
            }
            Frame::HelloAck => out = Out::new("HELLO_ACK"),
            Frame::Open {
                id,
                connector,
                client_addr: _,
            } => {
                check_name("connector", connector, limits.max_connector_len)?;
                cid_text = self.cid_text(*id, "OPEN")?;
                out = Out::new("OPEN");
                out.cid = Some(&cid_text);
                out.connector = Some(connector);
            }
            Frame::Data { id, payload } => {
                if payload.len() > limits.max_payload {
                    let e = DecodeError::Oversized {
                        len: payload.len(),
                        max: limits.max_payload,
                    };
                    return Err(e.into());
                }
                cid_text = self.cid_text(*id, "DATA")?;
                let seq = self.out_seq.entry(*id).or_insert(0);
                out = Out::new("DATA");
                out.seq = Some(*seq);
                *seq += 1;
                b64_text = B64.encode(payload);
                out.cid = Some(&cid_text);
                out.b64 = Some(&b64_text);
            }
            Frame::Fin { id, dir } => {
                cid_text = self.cid_text(*id, "FIN")?;
                out = Out::new("FIN");
                out.cid = Some(&cid_text);
                out.dir = Some(dir.as_str());
            }
            Frame::Rst { id, code, reason } => {
                check_text("reason", reason, limits.max_short_text_len)?;
                cid_text = self.cid_text(*id, "RST")?;
                out = Out::new("RST");
                out.cid = Some(&cid_text);
                out.err = Some(match code {
                    RstCode::Other if !reason.is_empty() => reason,
                    code => code.as_str(),
                });
            }
            Frame::Window { .. } => return Err(EncodeError::NotInV1("WINDOW")),
        }
        serde_json::to_string(&out).map_err(|_| EncodeError::Invalid(DecodeError::NotAnObject))
    }

    fn cid_text(&self, id: StreamId, frame: &'static str) -> Result<String, DecodeError> {
        if id == 0 {
            return Err(DecodeError::StreamFrameOnConnection { frame });
        }
        match self.foreign_rev.get(&id) {
            Some(cid) => Ok(cid.clone()),
            None => Ok(cid_for(id)),
        }
    }

    fn stream_id(&mut self, cid: Option<&str>, open: bool) -> Result<StreamId, DecodeError> {
        let cid = cid.ok_or(DecodeError::MissingField("cid"))?;
        check_name("cid", cid, self.limits.max_short_text_len)?;
        if let Some(id) = parse_own_cid(cid) {
            return Ok(id);
        }
        if let Some(&id) = self.foreign.get(cid) {
            return Ok(id);
        }
        if !open {
            return Err(DecodeError::BadCid);
        }
        if self.foreign.len() >= self.limits.max_v1_streams {
            return Err(DecodeError::TooManyStreams {
                max: self.limits.max_v1_streams,
            });
        }
        let id = self.next_foreign;
        // Wraps within the foreign half; a live id is never reused because the table is bounded
        // far below 2^31 entries and we skip ids still in use.
        let mut next = id;
        loop {
            next = if next == StreamId::MAX {
                FOREIGN_ID_BASE
            } else {
                next + 1
            };
            if !self.foreign_rev.contains_key(&next) {
                break;
            }
        }
        self.next_foreign = next;
        self.foreign.insert(cid.to_owned(), id);
        self.foreign_rev.insert(id, cid.to_owned());
        Ok(id)
    }

    fn check_seq(&mut self, id: StreamId, seq: u64) -> Result<(), DecodeError> {
        match self.in_seq.get_mut(&id) {
            Some(expected) if *expected == seq => {
                *expected = seq.wrapping_add(1);
                Ok(())
            }
            Some(expected) => Err(DecodeError::Seq {
                id,
                expected: *expected,
                got: seq,
            }),
            None => {
                if self.in_seq.len() >= self.limits.max_v1_streams {
                    return Err(DecodeError::TooManyStreams {
                        max: self.limits.max_v1_streams,
                    });
                }
                self.in_seq.insert(id, seq.wrapping_add(1));
                Ok(())
            }
        }
    }
}
