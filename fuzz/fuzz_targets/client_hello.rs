//! The relay's SNI peek parser on arbitrary bytes: must never panic, must always ask for more
//! than it has (within the bound) when it asks, and must not change its mind on a prefix that
//! it already judged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nowconnect_shared::sni::{parse_client_hello, ClientHello, MAX_PEEK_BYTES};

fuzz_target!(|data: &[u8]| {
    let whole = parse_client_hello(data);
    if let ClientHello::NeedMore(n) = whole {
        assert!(n > data.len() && n <= MAX_PEEK_BYTES);
    }
    // A prefix that was judged complete or invalid stays so with more bytes after it.
    for cut in [data.len() / 2, data.len().saturating_sub(1)] {
        let head = parse_client_hello(&data[..cut]);
        if !matches!(head, ClientHello::NeedMore(_)) {
            assert_eq!(head, whole);
        }
    }
});
