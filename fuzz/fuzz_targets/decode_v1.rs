//! v1 JSON decoder on arbitrary text, several frames per input through one stateful codec:
//! must never panic, and what decodes must re-encode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nowconnect_shared::{Frame, Limits, V1Decoder, V1Encoder};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut rx = V1Decoder::new(limits);
    let mut tx = V1Encoder::new(limits);
    for chunk in data.split(|&b| b == b'\n').take(16) {
        let Ok(text) = std::str::from_utf8(chunk) else { continue };
        if let Ok(frame) = rx.decode(text) {
            if let Frame::Open { id, .. } = &frame {
                // What a stream table does with a decoded OPEN: track it, bind the peer's cid.
                let _ = rx.open(*id);
                if let Some(cid) = rx.foreign_cid(*id) {
                    tx.bind(*id, cid).expect("bounded like the decoder");
                }
            }
            if !matches!(frame, Frame::Window { .. }) {
                tx.encode(&frame).expect("a decoded frame re-encodes");
            }
        }
    }
});
