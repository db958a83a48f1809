//! The tunnel-wide rules: handshake, unknown ids, OPEN, undecodable frames, message kinds, v1 state.

use super::*;

/// A drain now, with no room to grow the window.
fn now() -> Drain {
    Drain::at(std::time::Instant::now(), 0)
}
use crate::frame::Dir;
use crate::json::{cid_for, V1Encoder};

fn v2(role: Role) -> Demux<u32> {
    Demux::new(role, StreamParams::new(Version::V2), Limits::default(), 4)
}

fn v1(role: Role) -> Demux<u32> {
    Demux::new(role, StreamParams::new(Version::V1), Limits::default(), 4)
}

fn bin(f: &Frame) -> Bytes {
    binary::encode_to_bytes(f, &Limits::default()).expect("encodes")
}

fn hello() -> Frame {
    Frame::Hello(Hello {
        agent_id: "a".into(),
        connectors: vec!["ad".into()],
        ver: String::new(),
    })
}

fn ready(role: Role) -> Demux<u32> {
    let mut d = v2(role);
    match role {
        Role::Relay => assert!(matches!(d.on_binary(&bin(&hello())), Dispatch::Hello(_))),
        Role::Agent => assert!(matches!(
            d.on_binary(&bin(&Frame::HelloAck)),
            Dispatch::HelloAck
        )),
    }
    d
}

fn data(id: StreamId, n: usize) -> Bytes {
    bin(&Frame::Data {
        id,
        payload: Bytes::from(vec![1u8; n]),
    })
}

#[test]
fn the_handshake_comes_first() {
    let mut d = v2(Role::Relay);
    assert!(matches!(
        d.on_binary(&data(1, 1)),
        Dispatch::Close(Violation::ExpectedHello("DATA"))
    ));
    let mut d = v2(Role::Relay);
    assert!(matches!(
        d.on_binary(&Bytes::from_static(&[1, 0, 0, 0, 0, b'{'])),
        Dispatch::Close(Violation::BadHello(_))
    ));
    let mut d = v2(Role::Agent);
    assert!(matches!(
        d.on_binary(&data(1, 1)),
        Dispatch::Close(Violation::ExpectedHelloAck("DATA"))
    ));
    // Once is enough: a second HELLO or HELLO_ACK closes the tunnel.
    let mut d = ready(Role::Relay);
    assert!(matches!(
        d.on_binary(&bin(&hello())),
        Dispatch::Close(Violation::Repeated("HELLO"))
    ));
    let mut d = ready(Role::Agent);
    assert!(matches!(
        d.on_binary(&bin(&Frame::HelloAck)),
        Dispatch::Close(Violation::Repeated("HELLO_ACK"))
    ));
}

#[test]
fn the_other_message_kind_closes_the_tunnel() {
    let mut d = ready(Role::Relay);
    assert!(matches!(
        d.on_text(r#"{"t":"HELLO_ACK"}"#),
        Dispatch::Close(Violation::WrongMessageType(Version::V2))
    ));
    let mut d = v1(Role::Agent);
    assert!(matches!(
        d.on_binary(&bin(&Frame::HelloAck)),
        Dispatch::Close(Violation::WrongMessageType(Version::V1))
    ));
}

#[test]
fn frames_for_unknown_ids_are_ignored_never_answered() {
    let mut d = ready(Role::Relay);
    for f in [
        Frame::Data {
            id: 9,
            payload: Bytes::from_static(b"x"),
        },
        Frame::Fin {
            id: 9,
            dir: Dir::A2c,
        },
        Frame::Window { id: 9, credit: 5 },
        Frame::Rst {
            id: 9,
            code: RstCode::Other,
            reason: String::new(),
        },
    ] {
        assert!(
            matches!(
                d.on_binary(&bin(&f)),
                Dispatch::Ignored(Ignored::UnknownStream { id: 9, .. })
            ),
            "{f:?}"
        );
    }
}

#[test]
fn relay_allocates_ids_and_bounds_the_table() {
    let mut d = ready(Role::Relay);
    let ids: Vec<_> = (0..4).map(|h| d.open(|_| h).expect("room").0).collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    assert_eq!(d.open(|_| 5).err(), Some(Full));
    assert_eq!(d.remove(2), Some(1));
    let (id, send) = d.open(|id| id).expect("room again");
    assert_eq!(id, 5, "ids move on; a freed id is not reused at once");
    assert_eq!(send.id(), 5);
}

#[test]
fn relay_ids_wrap_below_2_31_and_skip_live_ones() {
    let mut d = ready(Role::Relay);
    d.next_id = MAX_STREAM_ID;
    assert_eq!(d.open(|_| 0).expect("room").0, MAX_STREAM_ID);
    assert_eq!(d.open(|_| 0).expect("room").0, 1, "wraps to 1, never 0");
    d.next_id = MAX_STREAM_ID;
    assert_eq!(
        d.open(|_| 0).expect("room").0,
        2,
        "skips the live MAX and 1"
    );
}

#[test]
fn an_agent_open_never_takes_a_stream_before_its_open_went_out() {
    let mut d = ready(Role::Relay);
    let (id, _) = d.open(|_| 9).expect("room");
    let open = Frame::Open {
        id,
        connector: "ad".into(),
        client_addr: None,
    };
    assert!(matches!(
        d.on_binary(&bin(&open)),
        Dispatch::Reset { handle: None, .. }
    ));
    assert!(d.get(id).is_some(), "the stream being authorized stays");
}

#[test]
fn only_the_relay_opens_streams() {
    let mut d = ready(Role::Relay);
    let open = Frame::Open {
        id: 3,
        connector: "ad".into(),
        client_addr: None,
    };
    match d.on_binary(&bin(&open)) {
        Dispatch::Reset {
            id: 3,
            rst,
            handle: None,
            ..
        } => {
            assert!(matches!(
                rst,
                Frame::Rst {
                    code: RstCode::Protocol,
                    ..
                }
            ))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn agent_open_on_a_live_id_resets_that_stream() {
    let mut d = ready(Role::Agent);
    let open = bin(&Frame::Open {
        id: 3,
        connector: "ad".into(),
        client_addr: Some("10.0.0.1:5".into()),
    });
    let Dispatch::Open {
        id,
        connector,
        client_addr,
        cid,
    } = d.on_binary(&open)
    else {
        panic!("OPEN")
    };
    assert_eq!((id, connector.as_str(), cid), (3, "ad", None));
    assert_eq!(client_addr.as_deref(), Some("10.0.0.1:5"));
    d.accept(3, 30).expect("room");
    match d.on_binary(&open) {
        Dispatch::Reset {
            id: 3,
            handle: Some(30),
            reason,
            ..
        } => {
            assert_eq!(reason.code, RstCode::Protocol)
        }
        other => panic!("{other:?}"),
    }
    assert!(d.is_empty(), "the stale stream left the table");
}

#[test]
fn agent_refuses_opens_beyond_its_table() {
    let mut d = ready(Role::Agent);
    for id in 1..=4 {
        d.accept(id, id).expect("room");
    }
    let open = bin(&Frame::Open {
        id: 5,
        connector: "ad".into(),
        client_addr: None,
    });
    assert!(matches!(d.on_binary(&open), Dispatch::Open { id: 5, .. }));
    assert_eq!(d.accept(5, 5).err(), Some(Full), "the driver refuses it");
}

#[test]
fn stream_frames_reach_the_receive_half() {
    let mut d = ready(Role::Relay);
    let (id, _send) = d.open(|_| 7).expect("room");
    assert!(
        matches!(d.on_binary(&data(id, 10)), Dispatch::Ignored(_)),
        "nothing is taken before OPEN went out"
    );
    d.announce(id);
    assert!(matches!(
        d.on_binary(&data(id, 10)),
        Dispatch::Data { direct: true, .. }
    ));
    assert!(
        matches!(
            d.on_binary(&data(id, 10)),
            Dispatch::Data { direct: false, .. }
        ),
        "10 earlier bytes still wait"
    );
    assert!(matches!(
        d.on_written(id, 20, 0, now()),
        Drained::Ok(Written {
            window: None,
            shutdown: false
        })
    ));
    assert!(matches!(
        d.on_binary(&bin(&Frame::Window { id, credit: 9 })),
        Dispatch::Window { credit: 9, .. }
    ));
    assert!(matches!(
        d.on_binary(&bin(&Frame::Fin { id, dir: Dir::A2c })),
        Dispatch::Fin { shutdown: true, .. }
    ));
    // A violation resets the stream and hands back its handle.
    match d.on_binary(&data(id, 1)) {
        Dispatch::Reset {
            handle: Some(7),
            reason,
            ..
        } => {
            assert_eq!(reason, Reset::new(RstCode::Protocol, "DATA after FIN"))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(d.on_written(id, 1, 0, now()), Drained::Unknown));
}

#[test]
fn peer_reset_removes_the_stream() {
    let mut d = ready(Role::Relay);
    let (id, _) = d.open(|_| 7).expect("room");
    d.announce(id);
    let rst = bin(&Frame::Rst {
        id,
        code: RstCode::ConnectFailed,
        reason: "refused".into(),
    });
    assert!(matches!(
        d.on_binary(&rst),
        Dispatch::PeerReset {
            code: RstCode::ConnectFailed,
            handle: 7,
            ..
        }
    ));
    assert!(d.is_empty());
}

#[test]
fn an_undecodable_frame_resets_the_live_stream_its_header_names() {
    let mut d = ready(Role::Agent);
    d.accept(5, 50).expect("room");
    // FIN with a bad direction byte: decodes the header, not the body.
    let bad = Bytes::from_static(&[5, 0, 0, 0, 5, 9]);
    assert!(matches!(
        d.on_binary(&bad),
        Dispatch::Reset {
            id: 5,
            handle: Some(50),
            ..
        }
    ));
    // The same for an id that is not live: counted and dropped, no RST.
    assert!(matches!(
        d.on_binary(&bad),
        Dispatch::Ignored(Ignored::Undecodable(DecodeError::BadDir))
    ));
    assert!(matches!(
        d.on_binary(&Bytes::from_static(&[4, 0])),
        Dispatch::Ignored(Ignored::Undecodable(DecodeError::Truncated { .. }))
    ));
}

#[test]
fn v1_seq_errors_reset_their_stream_and_state_lives_with_the_table() {
    let mut d = v1(Role::Relay);
    assert!(matches!(
        d.on_text(r#"{"t":"HELLO","agent_id":"a","connectors":[]}"#),
        Dispatch::Hello(_)
    ));
    let (id, _) = d.open(|_| 1).expect("room");
    d.announce(id);
    let cid = cid_for(id);
    let frame = |seq: u64| format!(r#"{{"t":"DATA","cid":"{cid}","seq":{seq},"b64":"eA=="}}"#);
    assert!(matches!(d.on_text(&frame(0)), Dispatch::Data { .. }));
    assert!(matches!(d.on_text(&frame(1)), Dispatch::Data { .. }));
    assert!(matches!(
        d.on_text(&frame(5)),
        Dispatch::Reset {
            handle: Some(1),
            ..
        }
    ));
    assert_eq!(
        d.v1.as_ref().map(V1Decoder::tracked_streams),
        Some(0),
        "forgotten with the stream"
    );
    // A late frame for the finished stream leaves no state behind.
    assert!(matches!(d.on_text(&frame(6)), Dispatch::Ignored(_)));
    assert_eq!(d.v1.as_ref().map(V1Decoder::tracked_streams), Some(0));
}

#[test]
fn v1_peer_cids_pass_to_the_encoder_and_go_with_the_stream() {
    let mut d = v1(Role::Agent);
    assert!(matches!(
        d.on_text(r#"{"t":"HELLO_ACK"}"#),
        Dispatch::HelloAck
    ));
    let Dispatch::Open { id, cid, .. } =
        d.on_text(r#"{"t":"OPEN","cid":"hub-1","connector":"ad"}"#)
    else {
        panic!("OPEN")
    };
    let cid = cid.expect("the hub minted it");
    let mut enc = V1Encoder::new(Limits::default());
    enc.bind(id, &cid).expect("room");
    let fin = enc
        .encode(&Frame::Fin { id, dir: Dir::A2c })
        .expect("encodes");
    assert_eq!(fin, r#"{"t":"FIN","cid":"hub-1","dir":"a2c"}"#);
    // Refused: the decoder forgets the cid at once.
    let rst = d.refuse(id, Reset::new(RstCode::UnknownConnector, ""));
    assert!(matches!(
        rst,
        Frame::Rst {
            code: RstCode::UnknownConnector,
            ..
        }
    ));
    assert!(matches!(
        d.on_text(r#"{"t":"FIN","cid":"hub-1","dir":"c2a"}"#),
        Dispatch::Ignored(Ignored::UnknownStream { .. })
    ));
    assert_eq!(d.v1.as_ref().map(V1Decoder::tracked_streams), Some(0));
}

#[test]
fn a_full_v1_queue_stops_the_reader_until_it_drains_or_overflows() {
    let params = StreamParams {
        v1_max_frames: 100,
        v1_max_bytes: 8,
        ..StreamParams::new(Version::V1)
    };
    let mut d: Demux<u32> = Demux::new(Role::Relay, params, Limits::default(), 4);
    assert!(matches!(
        d.on_text(r#"{"t":"HELLO","agent_id":"a","connectors":[]}"#),
        Dispatch::Hello(_)
    ));
    let (id, _) = d.open(|_| 1).expect("room");
    d.announce(id);
    let cid = cid_for(id);
    let frame = |seq: u64| format!(r#"{{"t":"DATA","cid":"{cid}","seq":{seq},"b64":"eHh4eHh4"}}"#);
    assert!(matches!(d.on_text(&frame(0)), Dispatch::Data { .. }));
    assert_eq!(d.full(), None, "6 of 8 bytes");
    assert!(matches!(d.on_text(&frame(1)), Dispatch::Data { .. }));
    assert_eq!(d.full(), Some(id), "12 bytes: stop reading the tunnel");
    assert!(matches!(d.on_written(id, 6, 1, now()), Drained::Ok(_)));
    assert_eq!(d.full(), None, "drained below the budget: read again");
    assert!(matches!(d.on_text(&frame(2)), Dispatch::Data { .. }));
    assert_eq!(d.full(), Some(id));
    // Still full when the driver's patience ends: reset, and the tunnel is read again.
    match d.overflow(id) {
        Dispatch::Reset {
            handle: Some(1),
            reason,
            ..
        } => {
            assert_eq!(reason.code, RstCode::QueueOverflow)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(d.full(), None);
    assert!(d.is_empty());
}

#[test]
fn forward_outside_the_mesh_resets_and_a_mesh_demux_needs_no_handshake() {
    use crate::frame::Forward;
    // A relay mesh link (no HELLO): stream frames from the first message on.
    let mut d: Demux<()> = Demux::new(
        Role::Agent,
        StreamParams::new(Version::V2),
        Limits::default(),
        8,
    )
    .without_handshake();
    let f = Frame::Forward(Box::new(Forward {
        id: 3,
        connector: "db".into(),
        agent_id: "premise-01".into(),
        epoch: 1,
        client_addr: "127.0.0.1:1".into(),
        origin: "relay-b".into(),
    }));
    // The mesh driver takes FORWARD itself; one reaching the demux (an agent tunnel) is a
    // protocol error for that stream, never a new stream.
    match d.on_frame(f) {
        Dispatch::Reset { id, reason, .. } => {
            assert_eq!(id, 3);
            assert_eq!(reason.code, RstCode::Protocol);
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    assert!(d.is_empty());
}

#[test]
fn status_reaches_the_relay_driver_and_an_agent_ignores_it() {
    let report = Frame::Status(Box::default());
    let mut relay = ready(Role::Relay);
    assert!(matches!(
        relay.on_binary(&bin(&report)),
        Dispatch::Status(s) if s.targets.is_empty()
    ));
    let mut agent = ready(Role::Agent);
    assert!(matches!(
        agent.on_binary(&bin(&report)),
        Dispatch::Ignored(Ignored::UnknownStream {
            kind: "STATUS",
            id: 0
        })
    ));
    // Before HELLO it is not a HELLO: the relay closes.
    let mut fresh = v2(Role::Relay);
    assert!(matches!(
        fresh.on_binary(&bin(&report)),
        Dispatch::Close(Violation::ExpectedHello("STATUS"))
    ));
}
