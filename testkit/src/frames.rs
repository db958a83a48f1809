//! Frames to and from WebSocket messages for the mock peers, in either protocol version.
//!
//! What a real peer's stream table does with v1 state is done here too, so the mocks speak
//! v1 correctly: a stream's DATA seq is checked from its OPEN on (sent or received), and a cid
//! the other side minted in its OPEN is used for our frames of that stream.

use nowconnect_shared::{binary, Frame, Limits, V1Decoder, V1Encoder, Version};
use tokio_tungstenite::tungstenite::Message;

/// One mock peer's encoder and decoder.
#[derive(Debug)]
pub struct Codec {
    version: Version,
    limits: Limits,
    enc: V1Encoder,
    dec: V1Decoder,
}

impl Codec {
    pub fn new(version: Version) -> Codec {
        Codec {
            version,
            limits: Limits::default(),
            enc: V1Encoder::new(Limits::default()),
            dec: V1Decoder::new(Limits::default()),
        }
    }

    /// The message carrying `f`; panics on a frame our own codec refuses.
    pub fn encode(&mut self, f: &Frame) -> Message {
        match self.version {
            Version::V2 => {
                Message::Binary(binary::encode_to_bytes(f, &self.limits).expect("encode v2"))
            }
            Version::V1 => {
                if let Frame::Open { id, .. } = f {
                    self.dec.open(*id).expect("room for v1 state");
                }
                Message::text(self.enc.encode(f).expect("encode v1"))
            }
        }
    }

    /// The frame in a binary or text message (`None` for any other message); panics on a
    /// message of the wrong kind for the version, or one that does not decode.
    pub fn decode(&mut self, msg: &Message) -> Option<Frame> {
        match msg {
            Message::Binary(b) => {
                assert_eq!(self.version, Version::V2, "binary message on a v1 tunnel");
                Some(binary::decode(b, &self.limits).expect("valid v2 frame"))
            }
            Message::Text(t) => {
                assert_eq!(self.version, Version::V1, "text message on a v2 tunnel");
                let f = self.dec.decode(t.as_str()).expect("valid v1 frame");
                if let Frame::Open { id, .. } = &f {
                    self.dec.open(*id).expect("room for v1 state");
                    if let Some(cid) = self.dec.foreign_cid(*id) {
                        self.enc.bind(*id, cid).expect("room for v1 state");
                    }
                }
                Some(f)
            }
            _ => None,
        }
    }
}
