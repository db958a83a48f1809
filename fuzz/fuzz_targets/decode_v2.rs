//! v2 binary decoder on arbitrary bytes: must never panic; what decodes must re-encode to the
//! same bytes' meaning.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use nowconnect_shared::{binary, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(frame) = binary::decode(&Bytes::copy_from_slice(data), &limits) {
        let again = binary::encode_to_bytes(&frame, &limits).expect("a decoded frame re-encodes");
        assert_eq!(binary::decode(&again, &limits).as_ref(), Ok(&frame));
    }
});
