//! v2 binary codec: one WebSocket binary message is one frame.
//!
//! ```text
//! type:u8 | stream_id:u32 BE | body
//! HELLO      (1) id 0   JSON object {agent_id, connectors, ver}; unknown fields ignored
//! HELLO_ACK  (2) id 0   empty, or a JSON object: `features` lists optional frames the relay
//!                       understands (`["status"]`); other fields ignored (room to grow)
//! OPEN       (3) id>0   len:u8 connector | [len:u8 client_addr]
//! DATA       (4) id>0   raw payload bytes
//! FIN        (5) id>0   dir:u8 (0 = c2a, 1 = a2c)
//! RST        (6) id>0   code:u8 | reason (UTF-8, rest of the frame)
//! WINDOW     (7) id>0   increment:u32 BE (1..=2^31-1)
//! FORWARD    (8) id>0   len:u8 connector | len:u8 agent_id | epoch:u64 BE
//!                       | len:u8 client_addr | len:u8 origin        (relay mesh only)
//! STATUS     (9) id 0   JSON object, at most 8 KiB (agent -> relay; see `status`)
//! ```
//! Decoding DATA slices the input buffer: no copy, no allocation.

use bytes::{BufMut, Bytes, BytesMut};

pub(crate) use crate::error::json_error;
use crate::error::{DecodeError, EncodeError};
use crate::flow::MAX_WINDOW;
use crate::frame::{check_name, check_text, Dir, Forward, Frame, RawHello, RstCode, StreamId};
use crate::limits::Limits;
use crate::status::{Features, Status};

/// Bytes before every body: the type byte and the big-endian stream id.
pub const HEADER_LEN: usize = 5;

/// Type byte of each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 1,
    HelloAck = 2,
    Open = 3,
    Data = 4,
    Fin = 5,
    Rst = 6,
    Window = 7,
    Forward = 8,
    Status = 9,
}

impl FrameType {
    fn from_byte(b: u8) -> Result<FrameType, DecodeError> {
        Ok(match b {
            1 => FrameType::Hello,
            2 => FrameType::HelloAck,
            3 => FrameType::Open,
            4 => FrameType::Data,
            5 => FrameType::Fin,
            6 => FrameType::Rst,
            7 => FrameType::Window,
            8 => FrameType::Forward,
            9 => FrameType::Status,
            other => return Err(DecodeError::UnknownType(other)),
        })
    }

    fn name(self) -> &'static str {
        match self {
            FrameType::Hello => "HELLO",
            FrameType::HelloAck => "HELLO_ACK",
            FrameType::Open => "OPEN",
            FrameType::Data => "DATA",
            FrameType::Fin => "FIN",
            FrameType::Rst => "RST",
            FrameType::Window => "WINDOW",
            FrameType::Forward => "FORWARD",
            FrameType::Status => "STATUS",
        }
    }
}

/// What a v2 HELLO_ACK message announces (none for any other message, or an older relay's
/// empty body).
pub fn hello_ack_features(buf: &[u8]) -> Features {
    match buf.split_first() {
        Some((&t, rest)) if t == FrameType::HelloAck as u8 && rest.len() >= HEADER_LEN - 1 => {
            Features::from_hello_ack_body(&rest[HEADER_LEN - 1..])
        }
        _ => Features::default(),
    }
}

/// Decodes one binary frame. DATA payloads share `buf`'s memory.
pub fn decode(buf: &Bytes, limits: &Limits) -> Result<Frame, DecodeError> {
    if buf.len() > limits.max_v2_frame_len() {
        return Err(DecodeError::Oversized {
            len: buf.len(),
            max: limits.max_v2_frame_len(),
        });
    }
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Truncated {
            need: HEADER_LEN,
            have: buf.len(),
        });
    }
    let ty = FrameType::from_byte(buf[0])?;
    let id = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let body = &buf[HEADER_LEN..];
    match ty {
        FrameType::Hello | FrameType::HelloAck | FrameType::Status if id != 0 => {
            return Err(DecodeError::ConnectionFrameOnStream {
                frame: ty.name(),
                id,
            })
        }
        FrameType::Hello | FrameType::HelloAck | FrameType::Status => {}
        _ if id == 0 => return Err(DecodeError::StreamFrameOnConnection { frame: ty.name() }),
        _ => {}
    }
    match ty {
        FrameType::Hello => {
            let raw: RawHello = serde_json::from_slice(body).map_err(json_error)?;
            Ok(Frame::Hello(raw.into_hello(limits)?))
        }
        FrameType::HelloAck => {
            if !body.is_empty() {
                // Only the shape is checked: later versions may add fields.
                let _: serde::de::IgnoredAny = serde_json::from_slice(body).map_err(json_error)?;
                if body.first() != Some(&b'{') {
                    return Err(DecodeError::NotAnObject);
                }
            }
            Ok(Frame::HelloAck)
        }
        FrameType::Status => Ok(Frame::Status(Box::new(Status::decode_body(body, limits)?))),
        FrameType::Open => {
            let (connector, rest) = take_short_str(body, "connector")?;
            check_name("connector", connector, limits.max_connector_len)?;
            let client_addr = if rest.is_empty() {
                None
            } else {
                let (addr, rest) = take_short_str(rest, "client_addr")?;
                check_text("client_addr", addr, limits.max_short_text_len)?;
                if !rest.is_empty() {
                    return Err(DecodeError::TrailingBytes {
                        frame: "OPEN",
                        extra: rest.len(),
                    });
                }
                Some(addr.to_owned())
            };
            Ok(Frame::Open {
                id,
                connector: connector.to_owned(),
                client_addr,
            })
        }
        FrameType::Data => {
            if body.len() > limits.max_payload {
                return Err(DecodeError::Oversized {
                    len: body.len(),
                    max: limits.max_payload,
                });
            }
            Ok(Frame::Data {
                id,
                payload: buf.slice(HEADER_LEN..),
            })
        }
        FrameType::Fin => {
            let [b] = exact::<1>(body, "FIN")?;
            let dir = Dir::from_byte(b).ok_or(DecodeError::BadDir)?;
            Ok(Frame::Fin { id, dir })
        }
        FrameType::Rst => {
            let (&code, reason) = body.split_first().ok_or(DecodeError::Truncated {
                need: HEADER_LEN + 1,
                have: buf.len(),
            })?;
            let reason = std::str::from_utf8(reason)
                .map_err(|_| DecodeError::NotUtf8 { field: "reason" })?;
            check_text("reason", reason, limits.max_short_text_len)?;
            Ok(Frame::Rst {
                id,
                code: RstCode::from_byte(code),
                reason: reason.to_owned(),
            })
        }
        FrameType::Window => {
            let credit = u32::from_be_bytes(exact::<4>(body, "WINDOW")?);
            if credit == 0 || credit > MAX_WINDOW {
                return Err(DecodeError::BadWindow(credit));
            }
            Ok(Frame::Window { id, credit })
        }
        FrameType::Forward => {
            // Every length is a u8 checked against what is left before anything is copied.
            let (connector, rest) = take_short_str(body, "connector")?;
            let (agent_id, rest) = take_short_str(rest, "agent_id")?;
            if rest.len() < 8 {
                return Err(DecodeError::Truncated {
                    need: 8,
                    have: rest.len(),
                });
            }
            let (epoch, rest) = rest.split_at(8);
            let epoch = u64::from_be_bytes(exact::<8>(epoch, "FORWARD")?);
            let (client_addr, rest) = take_short_str(rest, "client_addr")?;
            let (origin, rest) = take_short_str(rest, "origin")?;
            if !rest.is_empty() {
                return Err(DecodeError::TrailingBytes {
                    frame: "FORWARD",
                    extra: rest.len(),
                });
            }
            let f = Forward {
                id,
                connector: connector.to_owned(),
                agent_id: agent_id.to_owned(),
                epoch,
                client_addr: client_addr.to_owned(),
                origin: origin.to_owned(),
            };
            f.validate(limits)?;
            Ok(Frame::Forward(Box::new(f)))
        }
    }
}

/// Appends the encoding of `frame` to `out`. Fields are validated against `limits` so we never
/// send a frame our own decoder would refuse.
pub fn encode(frame: &Frame, limits: &Limits, out: &mut BytesMut) -> Result<(), EncodeError> {
    match frame {
        Frame::Hello(hello) => {
            hello.validate(limits)?;
            put_header(out, FrameType::Hello, 0);
            // Serialising a struct of strings into a Vec cannot fail.
            serde_json::to_writer(out.writer(), hello)
                .map_err(|_| EncodeError::Invalid(DecodeError::NotAnObject))?;
        }
        Frame::HelloAck => {
            put_header(out, FrameType::HelloAck, 0);
            // A relay built from this crate announces what it understands (an agent reads
            // it with `Features::from_hello_ack_body`).
            out.put_slice(Features::OURS.hello_ack_body());
        }
        Frame::Status(status) => {
            let mut body = Vec::new();
            status.encode_body(limits, &mut body)?;
            put_header(out, FrameType::Status, 0);
            out.put_slice(&body);
        }
        Frame::Open {
            id,
            connector,
            client_addr,
        } => {
            stream_id(*id, "OPEN")?;
            check_name("connector", connector, limits.max_connector_len)?;
            put_header(out, FrameType::Open, *id);
            put_short_str(out, connector, "connector")?;
            if let Some(addr) = client_addr {
                check_text("client_addr", addr, limits.max_short_text_len)?;
                put_short_str(out, addr, "client_addr")?;
            }
        }
        Frame::Data { id, payload } => {
            stream_id(*id, "DATA")?;
            if payload.len() > limits.max_payload {
                let e = DecodeError::Oversized {
                    len: payload.len(),
                    max: limits.max_payload,
                };
                return Err(e.into());
            }
            put_header(out, FrameType::Data, *id);
            out.put_slice(payload);
        }
        Frame::Fin { id, dir } => {
            stream_id(*id, "FIN")?;
            put_header(out, FrameType::Fin, *id);
            out.put_u8(dir.to_byte());
        }
        Frame::Rst { id, code, reason } => {
            stream_id(*id, "RST")?;
            check_text("reason", reason, limits.max_short_text_len)?;
            put_header(out, FrameType::Rst, *id);
            out.put_u8(code.to_byte());
            out.put_slice(reason.as_bytes());
        }
        Frame::Window { id, credit } => {
            stream_id(*id, "WINDOW")?;
            if *credit == 0 || *credit > MAX_WINDOW {
                return Err(DecodeError::BadWindow(*credit).into());
            }
            put_header(out, FrameType::Window, *id);
            out.put_u32(*credit);
        }
        Frame::Forward(f) => {
            stream_id(f.id, "FORWARD")?;
            f.validate(limits)?;
            put_header(out, FrameType::Forward, f.id);
            put_short_str(out, &f.connector, "connector")?;
            put_short_str(out, &f.agent_id, "agent_id")?;
            out.put_u64(f.epoch);
            put_short_str(out, &f.client_addr, "client_addr")?;
            put_short_str(out, &f.origin, "origin")?;
        }
    }
    Ok(())
}

/// Encodes `frame` into a fresh buffer.
pub fn encode_to_bytes(frame: &Frame, limits: &Limits) -> Result<Bytes, EncodeError> {
    let mut out = BytesMut::new();
    encode(frame, limits, &mut out)?;
    Ok(out.freeze())
}

/// Writes a header. For DATA, callers reserve it and then read socket bytes straight after it,
/// so the payload is never copied: `put_header(&mut buf, FrameType::Data, id)` then fill.
pub fn put_header(out: &mut BytesMut, ty: FrameType, id: StreamId) {
    out.reserve(HEADER_LEN);
    out.put_u8(ty as u8);
    out.put_u32(id);
}

fn stream_id(id: StreamId, frame: &'static str) -> Result<(), DecodeError> {
    if id == 0 {
        return Err(DecodeError::StreamFrameOnConnection { frame });
    }
    Ok(())
}

fn put_short_str(out: &mut BytesMut, s: &str, field: &'static str) -> Result<(), DecodeError> {
    let len = u8::try_from(s.len()).map_err(|_| DecodeError::TooLong {
        field,
        len: s.len(),
        max: u8::MAX as usize,
    })?;
    out.put_u8(len);
    out.put_slice(s.as_bytes());
    Ok(())
}

fn take_short_str<'a>(
    body: &'a [u8],
    field: &'static str,
) -> Result<(&'a str, &'a [u8]), DecodeError> {
    let (&len, rest) = body.split_first().ok_or(DecodeError::MissingField(field))?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(DecodeError::Truncated {
            need: len,
            have: rest.len(),
        });
    }
    let (s, rest) = rest.split_at(len);
    let s = std::str::from_utf8(s).map_err(|_| DecodeError::NotUtf8 { field })?;
    Ok((s, rest))
}

fn exact<const N: usize>(body: &[u8], frame: &'static str) -> Result<[u8; N], DecodeError> {
    match <[u8; N]>::try_from(body) {
        Ok(a) => Ok(a),
        Err(_) if body.len() < N => Err(DecodeError::Truncated {
            need: HEADER_LEN + N,
            have: HEADER_LEN + body.len(),
        }),
        Err(_) => Err(DecodeError::TrailingBytes {
            frame,
            extra: body.len() - N,
        }),
    }
}
