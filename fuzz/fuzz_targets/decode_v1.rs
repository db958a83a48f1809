//! v1 JSON decoder on arbitrary text, several frames per input through one stateful codec:
//! must never panic, and what decodes must re-encode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nowconnect_shared::{Frame, Limits, V1Codec};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut rx = V1Codec::new(limits);
    let mut tx = V1Codec::new(limits);
    for chunk in data.split(|&b| b == b'\n').take(16) {
        let Ok(text) = std::str::from_utf8(chunk) else { continue };
        if let Ok(frame) = rx.decode(text) {
            if !matches!(frame, Frame::Window { .. }) {
                tx.encode(&frame).expect("a decoded frame re-encodes");
            }
        }
    }
});
