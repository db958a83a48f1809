//! v1 codec: the reference system's JSON text frames, byte for byte, as a decoder and an encoder.
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
//! own cids (the reference hub) gets ids from a bounded table, allocated when its OPEN is decoded.
//!
//! The two halves share no state, so a reader task may own the [`V1Decoder`] and a writer task
//! the [`V1Encoder`]. What the encoder must know of the decoder's state (the cid a peer minted
//! for a stream) is handed over explicitly: [`V1Decoder::foreign_cid`] then [`V1Encoder::bind`].
//! Each half keeps per-stream state bounded by `Limits::max_v1_streams` and drops it on
//! `forget(id)`, which the stream table calls when a stream ends (decoder) and the writer after
//! the stream's last frame (encoder):
//! - decoder: the DATA `seq` rule (it grows by one per cid; the first DATA sets the baseline)
//!   for streams the table [`open`](V1Decoder::open)ed, and the cids the peer minted. DATA for a
//!   stream that is not open is decoded without seq state (the table ignores it as unknown).
//! - encoder: the next DATA `seq` per stream, created by its first DATA, and bound peer cids.

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

/// Decoding half of the v1 codec (one per tunnel reader).
#[derive(Debug)]
pub struct V1Decoder {
    limits: Limits,
    /// Streams whose DATA seq is checked, and the next seq expected (`None` before their first
    /// DATA, which sets the baseline). Bounded by `limits.max_v1_streams`.
    in_seq: HashMap<StreamId, Option<u64>>,
    /// cids the peer minted, both ways; bounded by `limits.max_v1_streams`.
    foreign: HashMap<String, StreamId>,
    foreign_rev: HashMap<StreamId, String>,
    next_foreign: StreamId,
}

impl V1Decoder {
    pub fn new(limits: Limits) -> V1Decoder {
        V1Decoder {
            limits,
            in_seq: HashMap::new(),
            foreign: HashMap::new(),
            foreign_rev: HashMap::new(),
            next_foreign: FOREIGN_ID_BASE,
        }
    }

    /// Starts checking the DATA seq of stream `id` (the stream table calls this when a stream
    /// starts). Refused when `limits.max_v1_streams` streams are tracked already.
    pub fn open(&mut self, id: StreamId) -> Result<(), DecodeError> {
        if !self.in_seq.contains_key(&id) && self.in_seq.len() >= self.limits.max_v1_streams {
            return Err(DecodeError::TooManyStreams {
                max: self.limits.max_v1_streams,
            });
        }
        self.in_seq.insert(id, None);
        Ok(())
    }

    /// Drops the seq and cid state of a finished (or refused) stream.
    pub fn forget(&mut self, id: StreamId) {
        self.in_seq.remove(&id);
        if let Some(cid) = self.foreign_rev.remove(&id) {
            self.foreign.remove(&cid);
        }
    }

    /// The cid the peer minted for stream `id`, if it did (hand it to [`V1Encoder::bind`]).
    pub fn foreign_cid(&self, id: StreamId) -> Option<&str> {
        self.foreign_rev.get(&id).map(String::as_str)
    }

    /// Number of streams with state; for tests and leak checks.
    pub fn tracked_streams(&self) -> usize {
        self.in_seq.len().max(self.foreign.len())
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
            // Not open: the stream table ignores the frame; keep no state for it.
            None => Ok(()),
            Some(expected @ None) => {
                *expected = Some(seq.wrapping_add(1));
                Ok(())
            }
            Some(Some(expected)) if *expected == seq => {
                *expected = seq.wrapping_add(1);
                Ok(())
            }
            Some(Some(expected)) => Err(DecodeError::Seq {
                id,
                expected: *expected,
                got: seq,
            }),
        }
    }
}

/// Encoding half of the v1 codec (one per tunnel writer).
#[derive(Debug)]
pub struct V1Encoder {
    limits: Limits,
    /// Next DATA seq we send, per stream; created by its first DATA, bounded by
    /// `limits.max_v1_streams`.
    out_seq: HashMap<StreamId, u64>,
    /// cids the peer minted ([`V1Encoder::bind`]), bounded by `limits.max_v1_streams`.
    foreign: HashMap<StreamId, String>,
}

impl V1Encoder {
    pub fn new(limits: Limits) -> V1Encoder {
        V1Encoder {
            limits,
            out_seq: HashMap::new(),
            foreign: HashMap::new(),
        }
    }

    /// Frames of stream `id` go out under the peer's own `cid` (from [`V1Decoder::foreign_cid`]).
    pub fn bind(&mut self, id: StreamId, cid: &str) -> Result<(), EncodeError> {
        if !self.foreign.contains_key(&id) && self.foreign.len() >= self.limits.max_v1_streams {
            return Err(EncodeError::TooManyStreams {
                max: self.limits.max_v1_streams,
            });
        }
        self.foreign.insert(id, cid.to_owned());
        Ok(())
    }

    /// Drops the seq and cid state of a stream whose last frame was encoded.
    pub fn forget(&mut self, id: StreamId) {
        self.out_seq.remove(&id);
        self.foreign.remove(&id);
    }

    /// Number of streams with state; for tests and leak checks.
    pub fn tracked_streams(&self) -> usize {
        self.out_seq.len().max(self.foreign.len())
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
                if !self.out_seq.contains_key(id) && self.out_seq.len() >= limits.max_v1_streams {
                    return Err(EncodeError::TooManyStreams {
                        max: limits.max_v1_streams,
                    });
                }
                let seq = self.out_seq.entry(*id).or_insert(0);
                let this = *seq;
                *seq += 1;
                b64_text = B64.encode(payload);
                cid_text = self.cid_text(*id, "DATA")?;
                out = Out::new("DATA");
                out.seq = Some(this);
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
            Frame::Forward(_) => return Err(EncodeError::NotInV1("FORWARD")),
            Frame::Status(_) => return Err(EncodeError::NotInV1("STATUS")),
        }
        serde_json::to_string(&out).map_err(|_| EncodeError::Invalid(DecodeError::NotAnObject))
    }

    fn cid_text(
        &self,
        id: StreamId,
        frame: &'static str,
    ) -> Result<std::borrow::Cow<'_, str>, DecodeError> {
        if id == 0 {
            return Err(DecodeError::StreamFrameOnConnection { frame });
        }
        Ok(match self.foreign.get(&id) {
            Some(cid) => std::borrow::Cow::Borrowed(cid.as_str()),
            None => std::borrow::Cow::Owned(cid_for(id)),
        })
    }
}
