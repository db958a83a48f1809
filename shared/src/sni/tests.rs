use proptest::prelude::*;

use super::*;

/// A ClientHello body with `exts` as its extension block (`None`: no block at all).
fn body(exts: Option<&[u8]>) -> Vec<u8> {
    let mut b = vec![3, 3];
    b.extend_from_slice(&[7; 32]);
    b.push(32);
    b.extend_from_slice(&[9; 32]);
    b.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
    b.extend_from_slice(&[1, 0]);
    if let Some(e) = exts {
        b.extend_from_slice(&u16::try_from(e.len()).expect("test size").to_be_bytes());
        b.extend_from_slice(e);
    }
    b
}

fn sni_ext(name: &[u8]) -> Vec<u8> {
    let n = u16::try_from(name.len()).expect("test size");
    let mut e = vec![0, 0];
    e.extend_from_slice(&(n + 5).to_be_bytes());
    e.extend_from_slice(&(n + 3).to_be_bytes());
    e.push(0);
    e.extend_from_slice(&n.to_be_bytes());
    e.extend_from_slice(name);
    e
}

/// The handshake message (header + body).
fn message(body: &[u8]) -> Vec<u8> {
    let n = u32::try_from(body.len()).expect("test size");
    let mut m = vec![1];
    m.extend_from_slice(&n.to_be_bytes()[1..]);
    m.extend_from_slice(body);
    m
}

/// `msg` in records of at most `frag` bytes each.
fn records(msg: &[u8], frag: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in msg.chunks(frag) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&u16::try_from(chunk.len()).expect("test size").to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn hello(name: &[u8]) -> Vec<u8> {
    let mut exts = vec![0, 10, 0, 4, 0, 2, 0, 29]; // supported_groups first
    exts.extend(sni_ext(name));
    records(&message(&body(Some(&exts))), MAX_RECORD_LEN)
}

/// Every strict prefix asks for more (and for more than it has); the whole gives `want`.
fn check_prefixes(bytes: &[u8], want: &ClientHello) {
    for cut in 0..bytes.len() {
        match parse_client_hello(&bytes[..cut]) {
            ClientHello::NeedMore(n) => {
                assert!(n > cut && n <= bytes.len(), "prefix {cut}: need {n}");
            }
            other => panic!("prefix {cut} of {}: {other:?}", bytes.len()),
        }
    }
    assert_eq!(&parse_client_hello(bytes), want);
}

#[test]
fn finds_the_name_lowercased_without_its_trailing_dot() {
    let want = ClientHello::Sni("dc1.corp.local".into());
    check_prefixes(&hello(b"DC1.Corp.Local."), &want);
    // Bytes after the hello (the client's next flight) are not looked at.
    let mut more = hello(b"dc1.corp.local");
    more.extend_from_slice(b"\x17\x03\x03garbage");
    assert_eq!(parse_client_hello(&more), want);
}

#[test]
fn a_hello_split_over_records_is_reassembled() {
    let mut exts = vec![0, 10, 0, 4, 0, 2, 0, 29];
    exts.extend(sni_ext(b"dc2.corp.local"));
    let msg = message(&body(Some(&exts)));
    for frag in [1, 3, 4, 5, 50] {
        let bytes = records(&msg, frag);
        if bytes.len() > MAX_PEEK_BYTES || msg.len().div_ceil(frag) * 5 + msg.len() > MAX_PEEK_BYTES
        {
            continue;
        }
        check_prefixes(&bytes, &ClientHello::Sni("dc2.corp.local".into()));
    }
}

#[test]
fn without_a_name_or_without_extensions_is_no_sni() {
    let exts = [0, 10, 0, 4, 0, 2, 0, 29];
    check_prefixes(
        &records(&message(&body(Some(&exts))), 100),
        &ClientHello::NoSni,
    );
    check_prefixes(&records(&message(&body(None)), 100), &ClientHello::NoSni);
}

#[test]
fn refuses_what_can_not_be_a_hello_as_early_as_possible() {
    use Invalid::*;
    let cases: &[(&[u8], Invalid)] = &[
        (b"G", NotHandshake),
        (b"GET / HTTP/1.1\r\n", NotHandshake),
        (&[22, 2], BadVersion),
        (&[22, 3, 9], BadVersion),
        (&[22, 3, 1, 0xff, 0xff], BadRecordLength),
        (&[22, 3, 1, 0, 0], BadRecordLength),
        (&[22, 3, 1, 0, 10, 2], NotClientHello),
        // A hello of 16 MiB announced in a full-size record.
        (&[22, 3, 1, 0x40, 0, 1, 0xff, 0xff, 0xff], TooLarge),
    ];
    for (bytes, why) in cases {
        assert_eq!(
            parse_client_hello(bytes),
            ClientHello::Invalid(*why),
            "{bytes:?}"
        );
    }
}

#[test]
fn lengths_that_do_not_fit_and_bad_names_are_invalid() {
    // An extension block longer than what follows.
    let mut b = body(Some(&sni_ext(b"a.b")));
    let at = b.len() - sni_ext(b"a.b").len() - 2;
    b[at + 1] += 1;
    let bytes = records(&message(&b), 1000);
    assert_eq!(
        parse_client_hello(&bytes),
        ClientHello::Invalid(Invalid::Malformed)
    );
    for name in [&b"a b"[..], b"", b"x\0y", b"."] {
        assert_eq!(
            parse_client_hello(&hello(name)),
            ClientHello::Invalid(Invalid::BadServerName),
            "{name:?}"
        );
    }
    let long = vec![b'a'; MAX_NAME_LEN + 1];
    assert_eq!(
        parse_client_hello(&hello(&long)),
        ClientHello::Invalid(Invalid::BadServerName)
    );
    // Two server_name extensions.
    let mut exts = sni_ext(b"a.b");
    exts.extend(sni_ext(b"c.d"));
    let bytes = records(&message(&body(Some(&exts))), 1000);
    assert_eq!(
        parse_client_hello(&bytes),
        ClientHello::Invalid(Invalid::Malformed)
    );
}

proptest! {
    #[test]
    fn never_panics_and_always_asks_for_progress(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let ClientHello::NeedMore(n) = parse_client_hello(&bytes) {
            prop_assert!(n > bytes.len() && n <= MAX_PEEK_BYTES);
        }
    }

    #[test]
    fn a_corrupted_hello_never_panics(name in "[a-z0-9]{1,20}(\\.[a-z0-9]{1,10}){0,3}", at in 0usize..200, byte in any::<u8>(), frag in 1usize..300) {
        let mut exts = vec![0, 10, 0, 4, 0, 2, 0, 29];
        exts.extend(sni_ext(name.as_bytes()));
        let msg = message(&body(Some(&exts)));
        let mut bytes = records(&msg, frag.max(msg.len().div_ceil(4)));
        prop_assert_eq!(parse_client_hello(&bytes), ClientHello::Sni(name.clone()));
        let at = at % bytes.len();
        bytes[at] = byte;
        if let ClientHello::NeedMore(n) = parse_client_hello(&bytes) {
            prop_assert!(n > bytes.len() || n <= MAX_PEEK_BYTES);
        }
    }
}

/// First flights of OpenSSL clients (Python's `ssl` over memory BIOs), kept as fuzz seeds.
#[test]
fn openssl_client_hellos_split_at_every_byte() {
    let with = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/seeds/client_hello/openssl_sni"
    ));
    let without = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/seeds/client_hello/openssl_no_sni"
    ));
    check_prefixes(with, &ClientHello::Sni("dc1.corp.local".into()));
    check_prefixes(without, &ClientHello::NoSni);
}
