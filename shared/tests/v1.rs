//! v1 JSON codec: every frame type, the reference documentation's frames, and every rejection.

use bytes::Bytes;
use nowconnect_shared::json::cid_for;
use nowconnect_shared::{
    DecodeError, Dir, EncodeError, Frame, Hello, Limits, RstCode, V1Decoder, V1Encoder,
};

fn dec() -> V1Decoder {
    V1Decoder::new(Limits::default())
}

fn enc() -> V1Encoder {
    V1Encoder::new(Limits::default())
}

fn hello() -> Hello {
    Hello {
        agent_id: "premise-01".into(),
        connectors: vec!["addomain".into(), "devdomain1".into()],
        ver: "1.5".into(),
    }
}

#[test]
fn reference_frames_decode() {
    // Copied from the reference system's documentation (DESIGN.md, "v1").
    let mut c = dec();
    assert_eq!(
        c.decode(r#"{"t":"HELLO","agent_id":"premise-01","connectors":["addomain","devdomain1"],"ver":"1.5"}"#),
        Ok(Frame::Hello(hello()))
    );
    assert_eq!(c.decode(r#"{"t":"HELLO_ACK"}"#), Ok(Frame::HelloAck));

    // A reference hub mints random UUID cids: they get ids from the codec's table.
    let cid = "6f1c2a8e-3b7d-4c1e-9f2a-0b1c2d3e4f50";
    let open = c.decode(&format!(
        r#"{{"t":"OPEN","cid":"{cid}","connector":"addomain"}}"#
    ));
    let Ok(Frame::Open {
        id,
        connector,
        client_addr: None,
    }) = open
    else {
        panic!("OPEN did not decode: {open:?}")
    };
    assert_eq!(connector, "addomain");
    c.open(id).expect("room");
    assert_eq!(
        c.decode(&format!(
            r#"{{"t":"DATA","cid":"{cid}","seq":123,"b64":"aGVsbG8="}}"#
        )),
        Ok(Frame::Data {
            id,
            payload: Bytes::from_static(b"hello")
        })
    );
    assert_eq!(
        c.decode(&format!(r#"{{"t":"FIN","cid":"{cid}","dir":"c2a"}}"#)),
        Ok(Frame::Fin { id, dir: Dir::C2a })
    );
    assert_eq!(
        c.decode(&format!(r#"{{"t":"FIN","cid":"{cid}","dir":"a2c"}}"#)),
        Ok(Frame::Fin { id, dir: Dir::A2c })
    );
    for err in ["connect_failed", "ws_broken", "queue_overflow"] {
        let code = RstCode::parse(err).expect("known code");
        assert_eq!(
            c.decode(&format!(r#"{{"t":"RST","cid":"{cid}","err":"{err}"}}"#)),
            Ok(Frame::Rst {
                id,
                code,
                reason: String::new()
            })
        );
    }
    // And we answer with the hub's own cid, which the decoder hands to the encoder.
    let mut e = enc();
    e.bind(id, c.foreign_cid(id).expect("hub cid"))
        .expect("room");
    let reply = e.encode(&Frame::Data {
        id,
        payload: Bytes::from_static(b"hi"),
    });
    assert_eq!(
        reply,
        Ok(format!(
            r#"{{"t":"DATA","cid":"{cid}","seq":0,"b64":"aGk="}}"#
        ))
    );
}

#[test]
fn encoding_is_byte_identical_to_reference() {
    let mut c = enc();
    let cid = cid_for(7);
    assert_eq!(cid, "00000000-0000-4000-8000-000000000007");
    let cases: Vec<(Frame, String)> = vec![
        (
            Frame::Hello(hello()),
            r#"{"t":"HELLO","agent_id":"premise-01","connectors":["addomain","devdomain1"],"ver":"1.5"}"#.into(),
        ),
        (Frame::HelloAck, r#"{"t":"HELLO_ACK"}"#.into()),
        (
            Frame::Open { id: 7, connector: "addomain".into(), client_addr: Some("10.0.0.1:5".into()) },
            format!(r#"{{"t":"OPEN","cid":"{cid}","connector":"addomain"}}"#),
        ),
        (
            Frame::Data { id: 7, payload: Bytes::from_static(b"hello") },
            format!(r#"{{"t":"DATA","cid":"{cid}","seq":0,"b64":"aGVsbG8="}}"#),
        ),
        (
            Frame::Data { id: 7, payload: Bytes::new() },
            format!(r#"{{"t":"DATA","cid":"{cid}","seq":1,"b64":""}}"#),
        ),
        (Frame::Fin { id: 7, dir: Dir::C2a }, format!(r#"{{"t":"FIN","cid":"{cid}","dir":"c2a"}}"#)),
        (Frame::Fin { id: 7, dir: Dir::A2c }, format!(r#"{{"t":"FIN","cid":"{cid}","dir":"a2c"}}"#)),
        (
            Frame::Rst { id: 7, code: RstCode::ConnectFailed, reason: "refused".into() },
            format!(r#"{{"t":"RST","cid":"{cid}","err":"connect_failed"}}"#),
        ),
        (
            Frame::Rst { id: 7, code: RstCode::Other, reason: "target_gone".into() },
            format!(r#"{{"t":"RST","cid":"{cid}","err":"target_gone"}}"#),
        ),
    ];
    for (frame, text) in cases {
        assert_eq!(c.encode(&frame).as_ref(), Ok(&text), "{frame:?}");
    }
}

#[test]
fn window_has_no_v1_form() {
    assert_eq!(
        enc().encode(&Frame::Window { id: 1, credit: 5 }),
        Err(EncodeError::NotInV1("WINDOW"))
    );
}

#[test]
fn seq_must_grow_by_one_per_cid() {
    let mut tx = enc();
    let mut rx = dec();
    rx.open(1).expect("room");
    rx.open(2).expect("room");
    for i in 0..3u8 {
        let text = tx
            .encode(&Frame::Data {
                id: 1,
                payload: Bytes::from(vec![i]),
            })
            .expect("encodes");
        assert!(rx.decode(&text).is_ok());
    }
    let cid = cid_for(1);
    // Repeat of seq 2.
    let repeat = format!(r#"{{"t":"DATA","cid":"{cid}","seq":2,"b64":""}}"#);
    assert_eq!(
        rx.decode(&repeat),
        Err(DecodeError::Seq {
            id: 1,
            expected: 3,
            got: 2
        })
    );
    // Gap.
    let gap = format!(r#"{{"t":"DATA","cid":"{cid}","seq":5,"b64":""}}"#);
    assert_eq!(
        rx.decode(&gap),
        Err(DecodeError::Seq {
            id: 1,
            expected: 3,
            got: 5
        })
    );
    // Another stream has its own counter; forgetting a stream resets its counter.
    let other = format!(r#"{{"t":"DATA","cid":"{}","seq":40,"b64":""}}"#, cid_for(2));
    assert!(rx.decode(&other).is_ok());
    rx.forget(1);
    assert!(
        rx.decode(&gap).is_ok(),
        "a forgotten stream is not checked (the stream table ignores it)"
    );
    rx.open(1).expect("room");
    assert!(
        rx.decode(&gap).is_ok(),
        "a reopened stream starts a new baseline"
    );
    assert!(rx.decode(&repeat).is_err());
}

#[test]
fn forget_releases_all_state() {
    let mut c = dec();
    let mut e = enc();
    let open = r#"{"t":"OPEN","cid":"abc","connector":"x"}"#;
    let Ok(Frame::Open { id, .. }) = c.decode(open) else {
        panic!("OPEN decodes")
    };
    c.open(id).expect("room");
    assert!(c
        .decode(r#"{"t":"DATA","cid":"abc","seq":1,"b64":""}"#)
        .is_ok());
    e.bind(id, c.foreign_cid(id).expect("minted"))
        .expect("room");
    assert!(e
        .encode(&Frame::Data {
            id,
            payload: Bytes::new()
        })
        .is_ok());
    assert_eq!(c.tracked_streams(), 1);
    assert_eq!(e.tracked_streams(), 1);
    c.forget(id);
    e.forget(id);
    assert_eq!(c.tracked_streams(), 0);
    assert_eq!(e.tracked_streams(), 0);
    assert_eq!(
        c.decode(r#"{"t":"FIN","cid":"abc","dir":"c2a"}"#),
        Err(DecodeError::BadCid)
    );
}

#[test]
fn untracked_streams_keep_no_state() {
    // DATA for a stream nobody opened (a late frame after its end) decodes without seq state,
    // so the caller need not forget anything after ignoring it.
    let mut c = dec();
    let late = format!(r#"{{"t":"DATA","cid":"{}","seq":9,"b64":""}}"#, cid_for(3));
    assert!(c.decode(&late).is_ok());
    assert_eq!(c.tracked_streams(), 0);
}

#[test]
fn encoder_and_decoder_state_is_bounded() {
    let limits = Limits {
        max_v1_streams: 2,
        ..Limits::default()
    };
    let mut e = V1Encoder::new(limits);
    for id in 1..=2 {
        e.encode(&Frame::Data {
            id,
            payload: Bytes::new(),
        })
        .expect("room");
    }
    assert_eq!(
        e.encode(&Frame::Data {
            id: 3,
            payload: Bytes::new()
        }),
        Err(EncodeError::TooManyStreams { max: 2 })
    );
    assert_eq!(e.bind(1, "a"), Ok(()));
    assert_eq!(e.bind(2, "b"), Ok(()));
    assert_eq!(e.bind(3, "c"), Err(EncodeError::TooManyStreams { max: 2 }));
    let mut d = V1Decoder::new(limits);
    d.open(1).expect("room");
    d.open(2).expect("room");
    assert_eq!(d.open(3), Err(DecodeError::TooManyStreams { max: 2 }));
}

#[test]
fn foreign_cid_table_is_bounded() {
    let limits = Limits {
        max_v1_streams: 2,
        ..Limits::default()
    };
    let mut c = V1Decoder::new(limits);
    assert!(c
        .decode(r#"{"t":"OPEN","cid":"a","connector":"x"}"#)
        .is_ok());
    assert!(c
        .decode(r#"{"t":"OPEN","cid":"b","connector":"x"}"#)
        .is_ok());
    assert_eq!(
        c.decode(r#"{"t":"OPEN","cid":"c","connector":"x"}"#),
        Err(DecodeError::TooManyStreams { max: 2 })
    );
}

#[test]
fn malformed_frames_are_typed_errors() {
    let limits = Limits::default();
    let long_connector = "x".repeat(limits.max_connector_len + 1);
    let cid = cid_for(1);
    let cases: Vec<(String, DecodeError)> = vec![
        (
            "{not json".into(),
            DecodeError::Json {
                category: "syntax error",
                column: 2,
            },
        ),
        ("[1,2]".into(), DecodeError::NotAnObject),
        ("{}".into(), DecodeError::MissingField("t")),
        (
            r#"{"t":"PING"}"#.into(),
            DecodeError::UnknownTag("PING".into()),
        ),
        (
            r#"{"t":"HELLO","connectors":[]}"#.into(),
            DecodeError::MissingField("agent_id"),
        ),
        (
            r#"{"t":"HELLO","agent_id":"a"}"#.into(),
            DecodeError::MissingField("connectors"),
        ),
        (
            r#"{"t":"HELLO","agent_id":"","connectors":[]}"#.into(),
            DecodeError::Empty { field: "agent_id" },
        ),
        (
            r#"{"t":"HELLO","agent_id":"a","connectors":[""]}"#.into(),
            DecodeError::Empty { field: "connector" },
        ),
        (
            r#"{"t":"HELLO","agent_id":"a","connectors":["ad\u0007"]}"#.into(),
            DecodeError::ControlChar { field: "connector" },
        ),
        (
            r#"{"t":"HELLO","agent_id":"a\nb","connectors":[]}"#.into(),
            DecodeError::ControlChar { field: "agent_id" },
        ),
        (
            format!(r#"{{"t":"OPEN","cid":"{cid}","connector":"{long_connector}"}}"#),
            DecodeError::TooLong {
                field: "connector",
                len: long_connector.len(),
                max: 64,
            },
        ),
        (
            r#"{"t":"OPEN","connector":"x"}"#.into(),
            DecodeError::MissingField("cid"),
        ),
        (
            format!(r#"{{"t":"OPEN","cid":"{cid}"}}"#),
            DecodeError::MissingField("connector"),
        ),
        (
            format!(r#"{{"t":"DATA","cid":"{cid}","b64":""}}"#),
            DecodeError::MissingField("seq"),
        ),
        (
            format!(r#"{{"t":"DATA","cid":"{cid}","seq":0}}"#),
            DecodeError::MissingField("b64"),
        ),
        (
            format!(r#"{{"t":"DATA","cid":"{cid}","seq":0,"b64":"@@@@"}}"#),
            DecodeError::BadBase64,
        ),
        (
            format!(r#"{{"t":"FIN","cid":"{cid}","dir":"up"}}"#),
            DecodeError::BadDir,
        ),
        (
            format!(r#"{{"t":"FIN","cid":"{cid}"}}"#),
            DecodeError::MissingField("dir"),
        ),
        (
            r#"{"t":"FIN","cid":"never-opened","dir":"c2a"}"#.into(),
            DecodeError::BadCid,
        ),
        (
            r#"{"t":"DATA","cid":"","seq":0,"b64":""}"#.into(),
            DecodeError::Empty { field: "cid" },
        ),
        (
            format!(r#"{{"t":"DATA","cid":"{cid}","seq":"0","b64":""}}"#),
            DecodeError::Json {
                category: "wrong type or shape",
                column: 66,
            },
        ),
    ];
    for (text, want) in cases {
        assert_eq!(dec().decode(&text), Err(want), "{text}");
    }
}

#[test]
fn oversized_frames_are_refused_before_parsing() {
    let limits = Limits::default();
    let huge = format!(
        r#"{{"t":"DATA","cid":"{}","seq":0,"b64":"{}"}}"#,
        cid_for(1),
        "A".repeat(limits.max_v1_text_len())
    );
    assert!(matches!(
        dec().decode(&huge),
        Err(DecodeError::Oversized { .. })
    ));
    // A payload one byte over the limit, inside a frame the text bound still allows.
    let payload = vec![0u8; limits.max_payload + 1];
    let b64 = base64_encode(&payload);
    let text = format!(
        r#"{{"t":"DATA","cid":"{}","seq":0,"b64":"{b64}"}}"#,
        cid_for(1)
    );
    assert!(matches!(
        dec().decode(&text),
        Err(DecodeError::Oversized { .. })
    ));
    // Exactly the limit is fine.
    let payload = vec![7u8; limits.max_payload];
    let frame = Frame::Data {
        id: 1,
        payload: Bytes::from(payload),
    };
    let text = enc().encode(&frame).expect("max payload encodes");
    assert_eq!(dec().decode(&text), Ok(frame));
}

#[test]
fn hello_limits_enforced() {
    let limits = Limits::default();
    let names: Vec<String> = (0..=limits.max_connectors)
        .map(|i| format!("c{i}"))
        .collect();
    let text = serde_json_hello("a", &names);
    assert_eq!(
        dec().decode(&text),
        Err(DecodeError::TooMany {
            field: "connectors",
            count: names.len(),
            max: limits.max_connectors
        })
    );
    let long_id = "a".repeat(limits.max_agent_id_len + 1);
    assert!(matches!(
        dec().decode(&serde_json_hello(&long_id, &[])),
        Err(DecodeError::TooLong {
            field: "agent_id",
            ..
        })
    ));
}

#[test]
fn unknown_fields_are_ignored_like_the_reference() {
    let text = r#"{"t":"HELLO_ACK","relay":"r1","x":[1,{"y":null}]}"#;
    assert_eq!(dec().decode(text), Ok(Frame::HelloAck));
}

#[test]
fn error_messages_never_echo_payload() {
    let secret = "c2VjcmV0LXRva2Vu"; // base64 of "secret-token"
    let text = format!(
        r#"{{"t":"DATA","cid":"{}","seq":"{secret}","b64":"{secret}"}}"#,
        cid_for(1)
    );
    let err = dec().decode(&text).expect_err("seq is a string");
    assert!(!err.to_string().contains(secret), "{err}");
}

fn serde_json_hello(agent_id: &str, connectors: &[String]) -> String {
    let list: Vec<String> = connectors.iter().map(|c| format!("\"{c}\"")).collect();
    format!(
        r#"{{"t":"HELLO","agent_id":"{agent_id}","connectors":[{}],"ver":"1"}}"#,
        list.join(",")
    )
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
