//! One test per stream rule of docs/protocol.md, for each role where the rule is per role.

use super::*;

/// A drain now, with no room to grow the window.
fn now() -> Drain {
    Drain::at(std::time::Instant::now(), 0)
}

fn v2() -> StreamParams {
    StreamParams {
        window: 100,
        ..StreamParams::new(Version::V2)
    }
}

fn v1(frames: usize, bytes: usize) -> StreamParams {
    StreamParams {
        v1_max_frames: frames,
        v1_max_bytes: bytes,
        ..StreamParams::new(Version::V1)
    }
}

fn data(n: usize) -> Frame {
    Frame::Data {
        id: 1,
        payload: Bytes::from(vec![0u8; n]),
    }
}

fn fin(dir: Dir) -> Frame {
    Frame::Fin { id: 1, dir }
}

#[test]
fn roles_decide_the_directions() {
    assert_eq!(Role::Relay.inbound(), Dir::A2c);
    assert_eq!(Role::Relay.outbound(), Dir::C2a);
    assert_eq!(Role::Agent.inbound(), Dir::C2a);
    assert_eq!(Role::Agent.outbound(), Dir::A2c);
    assert_eq!(Role::Relay.peer(), Role::Agent);
}

#[test]
fn data_within_the_window_is_admitted_beyond_it_flow_control() {
    for role in [Role::Relay, Role::Agent] {
        let mut r = RecvHalf::new(1, role, &v2());
        assert_eq!(
            r.on_frame(data(60)),
            Ok(Inbound::Data(Bytes::from(vec![0u8; 60])))
        );
        assert_eq!(r.buffered(), 60);
        assert_eq!(
            r.on_frame(data(41)),
            Err(Reset::new(RstCode::FlowControl, "window exceeded"))
        );
        assert_eq!(r.buffered(), 60, "a refused frame is not charged");
        assert!(r.on_data(40).is_ok(), "exactly the window is fine");
    }
}

#[test]
fn v1_queue_fills_at_its_frame_or_byte_budget_and_overflows_past_it() {
    let mut r = RecvHalf::new(1, Role::Relay, &v1(2, 1000));
    assert!(r.on_data(10).is_ok());
    assert!(!r.is_full());
    assert!(r.on_data(10).is_ok());
    assert!(r.is_full(), "two frames fill a depth of 2");
    assert_eq!(
        r.on_data(1),
        Err(Reset::new(RstCode::QueueOverflow, "queue overflow")),
        "DATA into a full queue"
    );
    let mut r = RecvHalf::new(1, Role::Agent, &v1(100, 1000));
    assert!(r.on_data(600).is_ok());
    assert!(
        r.on_data(600).is_ok(),
        "not full yet: the frame that fills it is taken"
    );
    assert!(r.is_full(), "1200 bytes fill a 1000-byte budget");
    assert_eq!(
        r.on_data(1).map_err(|e| e.code),
        Err(RstCode::QueueOverflow)
    );
    // Written bytes and frames make room again.
    let w = r.on_written(600, 1, now()).expect("accounted");
    assert_eq!(w.window, None, "v1 has no WINDOW");
    assert!(!r.is_full());
    assert!(r.on_data(600).is_ok());
    assert!(r.on_data(0).is_ok(), "empty DATA costs nothing");
    // v2 is never full: credit bounds the peer.
    let mut r = RecvHalf::new(1, Role::Agent, &v2());
    r.on_data(100).expect("window");
    assert!(!r.is_full());
}

#[test]
fn credit_returns_once_half_the_window_is_written() {
    let mut r = RecvHalf::new(7, Role::Relay, &v2());
    r.on_data(100).expect("window");
    assert_eq!(r.on_written(49, 0, now()).expect("ok").window, None);
    assert_eq!(
        r.on_written(1, 0, now()).expect("ok").window,
        Some(Frame::Window { id: 7, credit: 50 })
    );
    assert!(r.on_data(50).is_ok(), "the peer may send what came back");
}

#[test]
fn writing_more_than_was_received_is_our_bug() {
    let mut r = RecvHalf::new(1, Role::Relay, &v2());
    r.on_data(10).expect("window");
    assert_eq!(
        r.on_written(11, 0, now()).map_err(|e| e.code),
        Err(RstCode::Other)
    );
    let mut r = RecvHalf::new(1, Role::Relay, &v1(4, 100));
    r.on_data(10).expect("budget");
    assert!(
        r.on_written(10, 2, now()).is_err(),
        "two frames done of one"
    );
}

#[test]
fn data_after_the_peers_fin_is_a_protocol_error() {
    for role in [Role::Relay, Role::Agent] {
        for params in [v2(), v1(4, 100)] {
            let mut r = RecvHalf::new(1, role, &params);
            r.on_frame(fin(role.inbound())).expect("FIN");
            assert_eq!(
                r.on_frame(data(1)),
                Err(Reset::new(RstCode::Protocol, "DATA after FIN"))
            );
            assert_eq!(r.on_data(0).map_err(|e| e.code), Err(RstCode::Protocol));
        }
    }
}

#[test]
fn fin_only_in_the_peers_direction_and_once() {
    for role in [Role::Relay, Role::Agent] {
        let mut r = RecvHalf::new(1, role, &v2());
        assert_eq!(
            r.on_frame(fin(role.outbound())),
            Err(Reset::new(RstCode::Protocol, "FIN in the wrong direction"))
        );
        assert_eq!(
            r.on_frame(fin(role.inbound())),
            Ok(Inbound::Fin { shutdown: true })
        );
        assert_eq!(
            r.on_frame(fin(role.inbound())),
            Err(Reset::new(RstCode::Protocol, "second FIN"))
        );
    }
}

#[test]
fn write_side_shuts_after_every_byte_before_the_fin_is_written_exactly_once() {
    let mut r = RecvHalf::new(1, Role::Agent, &v2());
    r.on_data(30).expect("window");
    assert_eq!(
        r.on_frame(fin(Dir::C2a)),
        Ok(Inbound::Fin { shutdown: false }),
        "30 bytes still to write"
    );
    assert!(!r.on_written(20, 0, now()).expect("ok").shutdown);
    assert!(
        r.on_written(10, 0, now()).expect("ok").shutdown,
        "now everything is written"
    );
    assert!(r.is_done());
    assert!(
        !r.on_written(0, 0, now()).expect("ok").shutdown,
        "only once"
    );
}

#[test]
fn peer_rst_is_taken_and_never_answered() {
    let mut s = Stream::new(1, Role::Relay, &v2());
    let rst = Frame::Rst {
        id: 1,
        code: RstCode::ConnectFailed,
        reason: String::new(),
    };
    assert_eq!(
        s.on_frame(rst),
        Ok(Event::PeerReset(RstCode::ConnectFailed))
    );
    assert!(s.is_over() && !s.is_finished());
    // Frames that crossed the RST are ignored, not answered.
    assert_eq!(s.on_frame(data(1000)), Ok(Event::None));
    assert_eq!(s.read_budget(64), 0, "nothing more is read");
}

#[test]
fn read_budget_follows_credit_and_stops_at_eof() {
    let mut s = SendHalf::new(3, Role::Agent, &v2());
    assert_eq!(s.read_budget(64), 64, "capped by max_payload");
    s.on_read(64).expect("credit");
    assert_eq!(s.read_budget(64), 36, "capped by credit");
    s.on_read(36).expect("credit");
    assert_eq!(s.read_budget(64), 0, "no credit: stop reading");
    assert_eq!(
        s.on_read(1).map_err(|e| e.code),
        Err(RstCode::FlowControl),
        "reading past the credit is refused"
    );
    s.on_window(50).expect("grant");
    assert_eq!(s.read_budget(64), 50);
    assert_eq!(
        s.on_eof(),
        Some(Frame::Fin {
            id: 3,
            dir: Dir::A2c
        })
    );
    assert_eq!(s.read_budget(64), 0, "nothing is read after EOF");
    assert_eq!(s.on_eof(), None, "one FIN");
    // v1: no credit, only max_payload.
    let s = SendHalf::new(3, Role::Relay, &v1(4, 4));
    assert_eq!(s.read_budget(1 << 20), 1 << 20);
}

#[test]
fn eof_sends_fin_in_this_sides_direction() {
    let mut relay = SendHalf::new(9, Role::Relay, &v2());
    assert_eq!(
        relay.on_eof(),
        Some(Frame::Fin {
            id: 9,
            dir: Dir::C2a
        })
    );
    let mut agent = SendHalf::new(9, Role::Agent, &v2());
    assert_eq!(
        agent.on_eof(),
        Some(Frame::Fin {
            id: 9,
            dir: Dir::A2c
        })
    );
}

#[test]
fn window_overflow_is_flow_control_and_v1_has_no_window() {
    let mut s = SendHalf::new(1, Role::Relay, &v2());
    assert_eq!(
        s.on_window(crate::MAX_WINDOW).map_err(|e| e.code),
        Err(RstCode::FlowControl)
    );
    let mut r = RecvHalf::new(1, Role::Relay, &v1(4, 100));
    let w = Frame::Window { id: 1, credit: 5 };
    assert_eq!(r.on_frame(w).map_err(|e| e.code), Err(RstCode::Protocol));
    let mut s = SendHalf::new(1, Role::Relay, &v1(4, 100));
    assert_eq!(s.on_window(5).map_err(|e| e.code), Err(RstCode::Protocol));
}

#[test]
fn open_or_a_connection_frame_on_a_live_stream_is_a_protocol_error() {
    let mut r = RecvHalf::new(1, Role::Agent, &v2());
    let open = Frame::Open {
        id: 1,
        connector: "ad".into(),
        client_addr: None,
    };
    assert_eq!(r.on_frame(open).map_err(|e| e.code), Err(RstCode::Protocol));
    assert_eq!(
        r.on_frame(Frame::HelloAck).map_err(|e| e.code),
        Err(RstCode::Protocol)
    );
}

#[test]
fn finished_after_both_fins_and_every_byte_written() {
    let mut s = Stream::new(1, Role::Relay, &v2());
    assert_eq!(
        s.on_frame(data(10)),
        Ok(Event::Data(Bytes::from(vec![0u8; 10])))
    );
    assert_eq!(s.on_frame(fin(Dir::A2c)), Ok(Event::None));
    assert!(s.on_eof().is_some());
    assert!(!s.is_over(), "10 bytes still to write");
    assert!(s.on_written(10, 0, now()).expect("ok").shutdown);
    s.on_write_shut();
    assert!(s.is_finished() && s.is_over());
}

#[test]
fn local_resets_carry_their_code() {
    let mut s = Stream::new(4, Role::Agent, &v2());
    assert_eq!(
        s.on_error(),
        Frame::Rst {
            id: 4,
            code: RstCode::Io,
            reason: "socket error".into()
        }
    );
    assert!(s.is_over());
    let mut s = Stream::new(4, Role::Relay, &v2());
    let rst = s.reset(Reset::new(RstCode::IdleTimeout, ""));
    assert_eq!(
        rst,
        Frame::Rst {
            id: 4,
            code: RstCode::IdleTimeout,
            reason: String::new()
        }
    );
    // A protocol violation seen by the composite resets it, and later frames are ignored.
    let mut s = Stream::new(4, Role::Relay, &v2());
    assert!(s.on_frame(data(101)).is_err());
    assert_eq!(s.on_frame(data(1)), Ok(Event::None));
}
