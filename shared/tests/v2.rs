//! v2 binary codec: every frame type, exact layouts, and every rejection.

use bytes::{Bytes, BytesMut};
use nowconnect_shared::binary::{self, FrameType, HEADER_LEN};
use nowconnect_shared::{DecodeError, Dir, Frame, Hello, Limits, RstCode, MAX_WINDOW};

fn enc(frame: &Frame) -> Vec<u8> {
    binary::encode_to_bytes(frame, &Limits::default())
        .expect("encodes")
        .to_vec()
}

fn dec(bytes: &[u8]) -> Result<Frame, DecodeError> {
    binary::decode(&Bytes::copy_from_slice(bytes), &Limits::default())
}

#[test]
fn exact_layouts() {
    let hello = Frame::Hello(Hello {
        agent_id: "a1".into(),
        connectors: vec!["ad".into()],
        ver: "2".into(),
    });
    let mut want = vec![1, 0, 0, 0, 0];
    want.extend_from_slice(br#"{"agent_id":"a1","connectors":["ad"],"ver":"2"}"#);
    assert_eq!(enc(&hello), want);
    assert_eq!(
        enc(&Frame::HelloAck),
        b"\x02\0\0\0\0{\"features\":[\"status\"]}"
    );
    assert_eq!(
        enc(&Frame::Open {
            id: 0x0102_0304,
            connector: "ad".into(),
            client_addr: None
        }),
        b"\x03\x01\x02\x03\x04\x02ad"
    );
    assert_eq!(
        enc(&Frame::Open {
            id: 1,
            connector: "ad".into(),
            client_addr: Some("1.2.3.4:5".into())
        }),
        b"\x03\0\0\0\x01\x02ad\x091.2.3.4:5"
    );
    assert_eq!(
        enc(&Frame::Data {
            id: 9,
            payload: Bytes::from_static(b"xyz")
        }),
        b"\x04\0\0\0\x09xyz"
    );
    assert_eq!(
        enc(&Frame::Fin {
            id: 9,
            dir: Dir::C2a
        }),
        b"\x05\0\0\0\x09\x00"
    );
    assert_eq!(
        enc(&Frame::Fin {
            id: 9,
            dir: Dir::A2c
        }),
        b"\x05\0\0\0\x09\x01"
    );
    assert_eq!(
        enc(&Frame::Rst {
            id: 9,
            code: RstCode::ConnectFailed,
            reason: "no".into()
        }),
        b"\x06\0\0\0\x09\x01no"
    );
    assert_eq!(
        enc(&Frame::Window {
            id: 9,
            credit: 0x10000
        }),
        b"\x07\0\0\0\x09\x00\x01\x00\x00"
    );
}

#[test]
fn every_frame_type_round_trips() {
    let frames = vec![
        Frame::Hello(Hello {
            agent_id: "premise-01".into(),
            connectors: vec![],
            ver: String::new(),
        }),
        Frame::HelloAck,
        Frame::Open {
            id: 1,
            connector: "addomain".into(),
            client_addr: Some("[::1]:389".into()),
        },
        Frame::Open {
            id: u32::MAX,
            connector: "c".into(),
            client_addr: None,
        },
        Frame::Data {
            id: 2,
            payload: Bytes::new(),
        },
        Frame::Data {
            id: 2,
            payload: Bytes::from(vec![0xAB; Limits::default().max_payload]),
        },
        Frame::Fin {
            id: 3,
            dir: Dir::A2c,
        },
        Frame::Rst {
            id: 4,
            code: RstCode::QueueOverflow,
            reason: String::new(),
        },
        Frame::Window {
            id: 5,
            credit: MAX_WINDOW,
        },
    ];
    for f in frames {
        assert_eq!(dec(&enc(&f)), Ok(f.clone()), "{}", f.kind());
    }
    for &code in RstCode::ALL {
        let f = Frame::Rst {
            id: 1,
            code,
            reason: "r".into(),
        };
        assert_eq!(dec(&enc(&f)), Ok(f));
    }
}

#[test]
fn data_payload_shares_the_input_buffer() {
    let wire = Bytes::from(enc(&Frame::Data {
        id: 2,
        payload: Bytes::from_static(b"payload"),
    }));
    let Ok(Frame::Data { payload, .. }) = binary::decode(&wire, &Limits::default()) else {
        panic!("DATA")
    };
    assert_eq!(
        payload.as_ptr(),
        wire[HEADER_LEN..].as_ptr(),
        "decoding DATA must not copy"
    );
}

#[test]
fn header_reserved_then_filled_is_a_valid_data_frame() {
    let mut buf = BytesMut::with_capacity(64);
    binary::put_header(&mut buf, FrameType::Data, 77);
    buf.extend_from_slice(b"read straight from the socket");
    let f = binary::decode(&buf.freeze(), &Limits::default());
    assert_eq!(
        f,
        Ok(Frame::Data {
            id: 77,
            payload: Bytes::from_static(b"read straight from the socket")
        })
    );
}

#[test]
fn malformed_frames_are_typed_errors() {
    let max = Limits::default().max_payload;
    let mut oversized = vec![4, 0, 0, 0, 1];
    oversized.resize(HEADER_LEN + max + 1, 0);
    let cases: Vec<(Vec<u8>, DecodeError)> = vec![
        (vec![], DecodeError::Truncated { need: 5, have: 0 }),
        (
            vec![4, 0, 0, 1],
            DecodeError::Truncated { need: 5, have: 4 },
        ),
        (vec![0, 0, 0, 0, 1], DecodeError::UnknownType(0)),
        (vec![10, 0, 0, 0, 1], DecodeError::UnknownType(10)),
        (
            vec![9, 0, 0, 0, 1],
            DecodeError::ConnectionFrameOnStream {
                frame: "STATUS",
                id: 1,
            },
        ),
        (vec![8, 0, 0, 0, 1], DecodeError::MissingField("connector")),
        (vec![0xff, 0, 0, 0, 1], DecodeError::UnknownType(0xff)),
        (
            oversized,
            DecodeError::Oversized {
                len: HEADER_LEN + max + 1,
                max: HEADER_LEN + max,
            },
        ),
        (
            b"\x01\0\0\0\x01{}".to_vec(),
            DecodeError::ConnectionFrameOnStream {
                frame: "HELLO",
                id: 1,
            },
        ),
        (
            b"\x02\0\0\0\x02".to_vec(),
            DecodeError::ConnectionFrameOnStream {
                frame: "HELLO_ACK",
                id: 2,
            },
        ),
        (
            b"\x04\0\0\0\0x".to_vec(),
            DecodeError::StreamFrameOnConnection { frame: "DATA" },
        ),
        (
            b"\x01\0\0\0\0{\"agent_id\":".to_vec(),
            DecodeError::Json {
                category: "unexpected end",
                column: 12,
            },
        ),
        (
            b"\x01\0\0\0\0{\"connectors\":[]}".to_vec(),
            DecodeError::MissingField("agent_id"),
        ),
        (
            b"\x01\0\0\0\0{\"agent_id\":\"a\",\"connectors\":[\"\"]}".to_vec(),
            DecodeError::Empty { field: "connector" },
        ),
        (b"\x02\0\0\0\0[]".to_vec(), DecodeError::NotAnObject),
        (
            b"\x03\0\0\0\x01".to_vec(),
            DecodeError::MissingField("connector"),
        ),
        (
            b"\x03\0\0\0\x01\x00".to_vec(),
            DecodeError::Empty { field: "connector" },
        ),
        (
            b"\x03\0\0\0\x01\x05ad".to_vec(),
            DecodeError::Truncated { need: 5, have: 2 },
        ),
        (
            b"\x03\0\0\0\x01\x02a\x01".to_vec(),
            DecodeError::ControlChar { field: "connector" },
        ),
        (
            b"\x03\0\0\0\x01\x02\xff\xfe".to_vec(),
            DecodeError::NotUtf8 { field: "connector" },
        ),
        (
            b"\x03\0\0\0\x01\x01a\x01bX".to_vec(),
            DecodeError::TrailingBytes {
                frame: "OPEN",
                extra: 1,
            },
        ),
        (
            b"\x05\0\0\0\x01".to_vec(),
            DecodeError::Truncated { need: 6, have: 5 },
        ),
        (b"\x05\0\0\0\x01\x02".to_vec(), DecodeError::BadDir),
        (
            b"\x05\0\0\0\x01\x00\x00".to_vec(),
            DecodeError::TrailingBytes {
                frame: "FIN",
                extra: 1,
            },
        ),
        (
            b"\x06\0\0\0\x01".to_vec(),
            DecodeError::Truncated { need: 6, have: 5 },
        ),
        (
            b"\x06\0\0\0\x01\x01\xc3".to_vec(),
            DecodeError::NotUtf8 { field: "reason" },
        ),
        (
            b"\x06\0\0\0\x01\x01a\tb".to_vec(),
            DecodeError::ControlChar { field: "reason" },
        ),
        (
            b"\x07\0\0\0\x01\0\0\0".to_vec(),
            DecodeError::Truncated { need: 9, have: 8 },
        ),
        (
            b"\x07\0\0\0\x01\0\0\0\0".to_vec(),
            DecodeError::BadWindow(0),
        ),
        (
            b"\x07\0\0\0\x01\x80\0\0\0".to_vec(),
            DecodeError::BadWindow(0x8000_0000),
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            dec(&bytes),
            Err(want),
            "{:?}",
            &bytes[..bytes.len().min(16)]
        );
    }
    let long = "x".repeat(Limits::default().max_connector_len + 1);
    let mut open = b"\x03\0\0\0\x01".to_vec();
    open.push(long.len() as u8);
    open.extend_from_slice(long.as_bytes());
    assert!(matches!(
        dec(&open),
        Err(DecodeError::TooLong {
            field: "connector",
            ..
        })
    ));
}

#[test]
fn unknown_rst_codes_from_newer_peers_are_kept_as_other() {
    assert_eq!(
        dec(b"\x06\0\0\0\x01\xc8later"),
        Ok(Frame::Rst {
            id: 1,
            code: RstCode::Other,
            reason: "later".into()
        })
    );
}

#[test]
fn hello_ack_may_grow_fields() {
    assert_eq!(dec(b"\x02\0\0\0\0"), Ok(Frame::HelloAck));
    assert_eq!(
        dec(b"\x02\0\0\0\0{\"relay\":\"r1\",\"window\":1}"),
        Ok(Frame::HelloAck)
    );
}

#[test]
fn encoder_refuses_what_the_decoder_would() {
    let l = Limits::default();
    assert!(binary::encode_to_bytes(
        &Frame::Data {
            id: 0,
            payload: Bytes::new()
        },
        &l
    )
    .is_err());
    assert!(binary::encode_to_bytes(&Frame::Window { id: 1, credit: 0 }, &l).is_err());
    let big = Bytes::from(vec![0; l.max_payload + 1]);
    assert!(binary::encode_to_bytes(
        &Frame::Data {
            id: 1,
            payload: big
        },
        &l
    )
    .is_err());
    let open = Frame::Open {
        id: 1,
        connector: String::new(),
        client_addr: None,
    };
    assert!(binary::encode_to_bytes(&open, &l).is_err());
}
