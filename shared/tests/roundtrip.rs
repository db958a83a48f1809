//! Property tests: any valid frame survives v2, v1, and v2 -> v1 -> v2 unchanged (up to what v1
//! cannot carry), and hostile bytes never panic either decoder.

use bytes::Bytes;
use nowconnect_shared::binary;
use nowconnect_shared::status::{self, Status, TargetStatus};
use nowconnect_shared::{
    Dir, Forward, Frame, Hello, Limits, RstCode, V1Decoder, V1Encoder, MAX_WINDOW,
};
use proptest::prelude::*;

fn name(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9_.:é-]{{1,{}}}", max / 2)).expect("regex")
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[ -~ü]{{0,{}}}", max / 2)).expect("regex")
}

fn stream_id() -> impl Strategy<Value = u32> {
    // Our relay allocates ids below 2^31.
    1..0x8000_0000u32
}

fn frame() -> impl Strategy<Value = Frame> {
    let l = Limits::default();
    prop_oneof![
        (
            name(l.max_agent_id_len),
            prop::collection::vec(name(l.max_connector_len), 0..8),
            text(16)
        )
            .prop_map(|(agent_id, connectors, ver)| Frame::Hello(Hello {
                agent_id,
                connectors,
                ver
            })),
        Just(Frame::HelloAck),
        (
            stream_id(),
            name(l.max_connector_len),
            prop::option::of(text(l.max_short_text_len))
        )
            .prop_map(|(id, connector, client_addr)| Frame::Open {
                id,
                connector,
                client_addr
            }),
        (stream_id(), prop::collection::vec(any::<u8>(), 0..4096)).prop_map(|(id, p)| {
            Frame::Data {
                id,
                payload: Bytes::from(p),
            }
        }),
        (stream_id(), prop_oneof![Just(Dir::C2a), Just(Dir::A2c)])
            .prop_map(|(id, dir)| Frame::Fin { id, dir }),
        (
            stream_id(),
            prop::sample::select(RstCode::ALL),
            text(l.max_short_text_len)
        )
            .prop_map(|(id, code, reason)| Frame::Rst { id, code, reason }),
        (stream_id(), 1..=MAX_WINDOW).prop_map(|(id, credit)| Frame::Window { id, credit }),
    ]
}

/// What v1 can carry of a frame: no client address, RST reason only for `Other`.
fn v1_view(f: &Frame) -> Frame {
    match f.clone() {
        Frame::Open { id, connector, .. } => Frame::Open {
            id,
            connector,
            client_addr: None,
        },
        Frame::Rst {
            id,
            code: RstCode::Other,
            reason,
        } if !reason.is_empty() => {
            // The text travels as `err`; a known code's name parses back as that code.
            match RstCode::parse(&reason) {
                Some(code) => Frame::Rst {
                    id,
                    code,
                    reason: String::new(),
                },
                None => Frame::Rst {
                    id,
                    code: RstCode::Other,
                    reason,
                },
            }
        }
        Frame::Rst {
            id,
            code: RstCode::Other,
            ..
        } => Frame::Rst {
            id,
            code: RstCode::Other,
            reason: "other".into(),
        },
        Frame::Rst { id, code, .. } => Frame::Rst {
            id,
            code,
            reason: String::new(),
        },
        other => other,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn v2_round_trip(f in frame()) {
        let l = Limits::default();
        let wire = binary::encode_to_bytes(&f, &l).expect("valid frames encode");
        prop_assert_eq!(binary::decode(&wire, &l), Ok(f));
    }

    #[test]
    fn v1_round_trip(f in frame().prop_filter("no v1 WINDOW", |f| !matches!(f, Frame::Window { .. }))) {
        let l = Limits::default();
        let text = V1Encoder::new(l).encode(&f).expect("valid frames encode");
        prop_assert_eq!(V1Decoder::new(l).decode(&text), Ok(v1_view(&f)));
    }

    #[test]
    fn across_codecs(f in frame().prop_filter("no v1 WINDOW", |f| !matches!(f, Frame::Window { .. }))) {
        // A relay bridging a v2 agent and a v1 peer: v2 -> Frame -> v1 -> Frame -> v2 -> Frame.
        let l = Limits::default();
        let from_v2 = binary::decode(&binary::encode_to_bytes(&f, &l).expect("encodes"), &l).expect("decodes");
        let text = V1Encoder::new(l).encode(&from_v2).expect("encodes");
        let from_v1 = V1Decoder::new(l).decode(&text).expect("decodes");
        let back = binary::decode(&binary::encode_to_bytes(&from_v1, &l).expect("encodes"), &l).expect("decodes");
        prop_assert_eq!(back, v1_view(&f));
    }

    #[test]
    fn v1_seq_stream_round_trips(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..50)) {
        let l = Limits::default();
        let (mut tx, mut rx) = (V1Encoder::new(l), V1Decoder::new(l));
        rx.open(3).expect("room");
        for p in payloads {
            let f = Frame::Data { id: 3, payload: Bytes::from(p) };
            let text = tx.encode(&f).expect("encodes");
            prop_assert_eq!(rx.decode(&text), Ok(f));
        }
    }

    #[test]
    fn v2_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256), ty in 0u8..10) {
        let mut b = bytes;
        if let Some(first) = b.first_mut() { *first = ty; }
        let _ = binary::decode(&Bytes::from(b), &Limits::default());
    }

    #[test]
    fn v1_decoder_never_panics(text in ".{0,256}") {
        let _ = V1Decoder::new(Limits::default()).decode(&text);
    }

    #[test]
    fn v1_decoder_never_panics_on_near_valid_frames(
        t in prop::sample::select(vec!["HELLO", "HELLO_ACK", "OPEN", "DATA", "FIN", "RST", "X"]),
        cid in ".{0,40}", seq in any::<i64>(), b64 in "[A-Za-z0-9+/=@]{0,40}", dir in ".{0,4}",
    ) {
        let text = serde_json::json!({"t": t, "cid": cid, "seq": seq, "b64": b64, "dir": dir,
            "connector": cid, "agent_id": cid, "connectors": [cid], "err": dir}).to_string();
        let _ = V1Decoder::new(Limits::default()).decode(&text);
    }
}

fn forward() -> impl Strategy<Value = Frame> {
    let l = Limits::default();
    (
        stream_id(),
        name(l.max_connector_len),
        name(l.max_agent_id_len),
        any::<u64>(),
        text(l.max_short_text_len),
        name(l.max_agent_id_len),
    )
        .prop_map(|(id, connector, agent_id, epoch, client_addr, origin)| {
            Frame::Forward(Box::new(Forward {
                id,
                connector,
                agent_id,
                epoch,
                client_addr,
                origin,
            }))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn forward_round_trips_in_v2_and_is_refused_by_v1(f in forward()) {
        let l = Limits::default();
        let wire = binary::encode_to_bytes(&f, &l).expect("valid frames encode");
        prop_assert_eq!(binary::decode(&wire, &l), Ok(f.clone()));
        prop_assert_eq!(
            V1Encoder::new(l).encode(&f),
            Err(nowconnect_shared::EncodeError::NotInV1("FORWARD"))
        );
        // Every strict prefix is refused, never panics, never allocates past the frame.
        for cut in binary::HEADER_LEN..wire.len() {
            prop_assert!(binary::decode(&wire.slice(..cut), &l).is_err());
        }
    }
}

#[test]
fn forward_lengths_are_checked_before_copying() {
    let l = Limits::default();
    // FORWARD on stream 1 whose connector claims 200 bytes with 3 present.
    let wire = Bytes::from_static(&[8, 0, 0, 0, 1, 200, b'a', b'b', b'c']);
    assert!(matches!(
        binary::decode(&wire, &l),
        Err(nowconnect_shared::DecodeError::Truncated { need: 200, have: 3 })
    ));
    // An agent_id over the limit is refused by name.
    let long = "a".repeat(l.max_agent_id_len + 1);
    let f = Frame::Forward(Box::new(Forward {
        id: 1,
        connector: "db".into(),
        agent_id: long,
        epoch: 1,
        client_addr: "127.0.0.1:1".into(),
        origin: "b".into(),
    }));
    assert!(binary::encode_to_bytes(&f, &l).is_err());
}

fn status() -> impl Strategy<Value = Frame> {
    let target = (name(64), any::<bool>(), any::<u64>(), any::<u64>()).prop_map(
        |(target, up, since_ms, failures)| TargetStatus {
            target,
            up,
            since_ms,
            failures,
        },
    );
    prop::collection::btree_map(
        name(16),
        prop::collection::vec(target, 0..=status::MAX_STATUS_TARGETS),
        0..4,
    )
    .prop_map(|targets| Frame::Status(Box::new(Status { targets })))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn status_round_trips_in_v2_and_is_refused_by_v1(f in status()) {
        let l = Limits::default();
        let Ok(wire) = binary::encode_to_bytes(&f, &l) else {
            // Only a report longer than the limit is refused.
            let Frame::Status(s) = &f else { unreachable!() };
            prop_assert!(serde_json::to_vec(&**s).expect("json").len() > status::MAX_STATUS_LEN);
            return Ok(());
        };
        prop_assert!(wire.len() <= binary::HEADER_LEN + status::MAX_STATUS_LEN);
        prop_assert_eq!(binary::decode(&wire, &l), Ok(f.clone()));
        prop_assert_eq!(
            V1Encoder::new(l).encode(&f),
            Err(nowconnect_shared::EncodeError::NotInV1("STATUS"))
        );
        for cut in binary::HEADER_LEN..wire.len() {
            prop_assert!(binary::decode(&wire.slice(..cut), &l).is_err());
        }
    }

    #[test]
    fn status_decoder_never_panics(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut wire = vec![9, 0, 0, 0, 0];
        wire.extend_from_slice(&body);
        let _ = binary::decode(&Bytes::from(wire), &Limits::default());
    }
}

#[test]
fn status_is_a_connection_frame_and_hello_ack_announces_it() {
    let l = Limits::default();
    // On a stream id: refused.
    let wire = Bytes::from_static(b"\x09\0\0\0\x01{\"targets\":{}}");
    assert!(matches!(
        binary::decode(&wire, &l),
        Err(nowconnect_shared::DecodeError::ConnectionFrameOnStream {
            frame: "STATUS",
            id: 1
        })
    ));
    let ack = binary::encode_to_bytes(&Frame::HelloAck, &l).expect("encodes");
    assert!(binary::hello_ack_features(&ack).status);
    assert_eq!(binary::decode(&ack, &l), Ok(Frame::HelloAck));
    // An older relay's empty HELLO_ACK announces nothing.
    assert!(!binary::hello_ack_features(b"\x02\0\0\0\0").status);
    assert!(!binary::hello_ack_features(b"\x02\0\0\0\0{}").status);
    // Not a HELLO_ACK at all.
    assert!(!binary::hello_ack_features(b"\x04\0\0\0\x01{\"features\":[\"status\"]}").status);
}
