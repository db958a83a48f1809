//! The agent against a mock relay written here: HELLO, health OK/READY, streams to a local
//! echo target, connect failures, unknown connectors, flow control, reconnects. The keepalive
//! test runs on tokio's paused clock.

use std::time::Duration;

use bytes::Bytes;
use nowconnect_agent::{AgentConfig, AgentHandle};
use nowconnect_shared::subprotocol::Version;
use nowconnect_shared::{Dir, Frame, RecvWindow, RstCode, StreamId, DEFAULT_WINDOW};
use nowconnect_testkit::health::probe as health;
use nowconnect_testkit::mock_relay::{MockConn, MockRelay, Select, STEP};
use nowconnect_testkit::net;
use nowconnect_testkit::target;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::{within, Ticker, DEADLINE};
use nowconnect_testkit::yaml::agent as agent_yaml;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

type Conn = MockConn<TcpStream>;

async fn start(yaml: &str) -> AgentHandle {
    let cfg = AgentConfig::from_yaml_str(yaml).expect("valid agent config");
    nowconnect_agent::start(cfg).await.expect("agent starts")
}

/// Waits until the agent's health port answers `want`.
async fn wait_health(agent: &AgentHandle, want: &str) {
    nowconnect_testkit::health::wait_health(agent.health_addr(), want, DEADLINE).await;
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The mock relay's flow-control state of one stream (v2), kept from OPEN on.
struct Flow {
    id: StreamId,
    /// Bytes we may still send to the agent.
    credit: usize,
    /// What we granted the agent.
    window: RecvWindow,
}

impl Flow {
    fn new(id: StreamId) -> Flow {
        Flow {
            id,
            credit: DEFAULT_WINDOW as usize,
            window: RecvWindow::new(DEFAULT_WINDOW),
        }
    }
}

/// Sends `payload` on the stream (within the agent's credit on v2), optionally FIN, and
/// collects what comes back until `expect` bytes arrived. Returns the bytes and whether FIN a2c
/// was seen.
async fn exchange(
    conn: &mut Conn,
    flow: &mut Flow,
    payload: &[u8],
    fin: bool,
    expect: usize,
) -> (Vec<u8>, bool) {
    let v2 = conn.version == Version::V2;
    let id = flow.id;
    let credit = &mut flow.credit;
    let window = &mut flow.window;
    if !v2 {
        *credit = usize::MAX;
    }
    let mut sent = 0;
    let mut fin_sent = false;
    let mut got = Vec::new();
    let mut fin_seen = false;
    loop {
        while sent < payload.len() && *credit > 0 {
            let n = (payload.len() - sent).min(*credit).min(64 * 1024);
            let chunk = Bytes::copy_from_slice(&payload[sent..sent + n]);
            conn.send(Frame::Data { id, payload: chunk }).await;
            sent += n;
            if v2 {
                *credit -= n;
            }
        }
        if fin && !fin_sent && sent == payload.len() {
            conn.send(Frame::Fin { id, dir: Dir::C2a }).await;
            fin_sent = true;
        }
        if got.len() >= expect && (!fin || fin_seen) && sent == payload.len() {
            return (got, fin_seen);
        }
        match conn.recv().await {
            Frame::Data { id: i, payload } if i == id => {
                got.extend_from_slice(&payload);
                if v2 {
                    window
                        .on_data(payload.len())
                        .expect("agent stayed within credit");
                    if let Some(inc) = window.on_drained(payload.len()).expect("drained") {
                        conn.send(Frame::Window { id, credit: inc }).await;
                    }
                }
            }
            Frame::Window { id: i, credit: c } if i == id => {
                assert!(v2, "WINDOW on a v1 tunnel");
                *credit += c as usize;
            }
            Frame::Fin {
                id: i,
                dir: Dir::A2c,
            } if i == id => fin_seen = true,
            other => panic!("unexpected frame on stream {id}: {other:?}"),
        }
    }
}

async fn expect_hello(conn: &mut Conn, connectors: &[&str]) {
    match conn.recv().await {
        Frame::Hello(h) => {
            assert_eq!(h.agent_id, "premise-01");
            assert_eq!(h.connectors, connectors);
        }
        other => panic!("first frame must be HELLO, got {other:?}"),
    }
}

async fn expect_rst(conn: &mut Conn, id: StreamId, code: RstCode) {
    match conn.recv().await {
        Frame::Rst { id: i, code: c, .. } => {
            assert_eq!((i, c), (id, code), "RST for stream {id}");
        }
        other => panic!("expected RST {code:?} for {id}, got {other:?}"),
    }
}

async fn full_session(protocol: &str, version: Version) {
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let refused = target::refused();
    let yaml = agent_yaml(
        &relay.url(),
        protocol,
        &[("echo", echo.addr), ("down", refused.addr)],
    );
    let agent = start(&yaml).await;
    let health_addr = agent.health_addr();
    assert_ne!(health_addr.port(), 0, "bound port reported");

    let mut conn = relay.accept(Select::Negotiate).await;
    assert_eq!(conn.version, version);
    assert_eq!(conn.upgrade.path, "/tunnel");
    assert!(
        conn.upgrade.authorization.is_none(),
        "no token file, no header"
    );
    expect_hello(&mut conn, &["echo", "down"]).await;
    assert_eq!(
        health(health_addr).await,
        "OK\n",
        "not READY before HELLO_ACK"
    );
    assert!(!agent.is_ready());

    conn.send(Frame::HelloAck).await;
    wait_health(&agent, "READY\n").await;

    // A stream to the echo target: bytes round-trip, more than one window each way (v2).
    conn.send(Frame::Open {
        id: 1,
        connector: "echo".into(),
        client_addr: Some("192.0.2.1:5000".into()),
    })
    .await;
    let mut s1 = Flow::new(1);
    let (got, _) = exchange(&mut conn, &mut s1, b"hello", false, 5).await;
    assert_eq!(got, b"hello");
    let big = pattern(600 * 1024, 7);
    let (got, fin_seen) = exchange(&mut conn, &mut s1, &big, true, big.len()).await;
    assert!(got == big, "600 KiB echoed byte-exact");
    assert!(fin_seen, "FIN c2a -> target EOF -> echo closes -> FIN a2c");

    // Target refuses: RST connect_failed. Unknown connector: RST unknown_connector.
    conn.send(Frame::Open {
        id: 3,
        connector: "down".into(),
        client_addr: None,
    })
    .await;
    expect_rst(&mut conn, 3, RstCode::ConnectFailed).await;
    conn.send(Frame::Open {
        id: 5,
        connector: "nope".into(),
        client_addr: None,
    })
    .await;
    expect_rst(&mut conn, 5, RstCode::UnknownConnector).await;

    // The agent is still fine: another stream works.
    conn.send(Frame::Open {
        id: 7,
        connector: "echo".into(),
        client_addr: None,
    })
    .await;
    let (got, _) = exchange(&mut conn, &mut Flow::new(7), b"still here", false, 10).await;
    assert_eq!(got, b"still here");

    // The relay goes away: health drops to OK, and the agent comes back with a new HELLO.
    drop(conn);
    wait_health(&agent, "OK\n").await;
    let mut conn = relay.accept(Select::Negotiate).await;
    expect_hello(&mut conn, &["echo", "down"]).await;
    conn.send(Frame::HelloAck).await;
    wait_health(&agent, "READY\n").await;
    conn.send(Frame::Open {
        id: 1,
        connector: "echo".into(),
        client_addr: None,
    })
    .await;
    let (got, _) = exchange(&mut conn, &mut Flow::new(1), b"after reconnect", false, 15).await;
    assert_eq!(got, b"after reconnect");

    agent.shutdown();
    // Graceful stop closes the WebSocket with a Close frame.
    assert!(conn.try_recv().await.is_none(), "tunnel closed on shutdown");
    within("agent stop", STEP, agent.wait()).await;
}

#[tokio::test]
async fn v2_session_end_to_end() {
    full_session("v2", Version::V2).await;
}

#[tokio::test]
async fn v1_session_end_to_end() {
    full_session("v1", Version::V1).await;
}

#[tokio::test]
async fn auto_offers_both_and_gets_v2() {
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let _agent = start(&agent_yaml(&relay.url(), "auto", &[("echo", echo.addr)])).await;
    let mut conn = relay.accept(Select::Negotiate).await;
    assert_eq!(
        conn.upgrade.offered.as_deref(),
        Some("nowconnect.v2, nowconnect.v1")
    );
    assert_eq!(conn.version, Version::V2);
    expect_hello(&mut conn, &["echo"]).await;
}

#[tokio::test]
async fn reference_hub_without_subprotocol_gets_v1() {
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let agent = start(&agent_yaml(&relay.url(), "auto", &[("echo", echo.addr)])).await;
    // First upgrade offers both; the hub answers with none, which tungstenite refuses.
    let first = relay.accept(Select::Nothing).await;
    assert!(first.upgrade.offered.is_some());
    // The agent dials again offering nothing and speaks v1.
    let mut conn = relay.accept(Select::Nothing).await;
    assert_eq!(conn.upgrade.offered, None);
    assert_eq!(conn.version, Version::V1);
    expect_hello(&mut conn, &["echo"]).await;
    conn.send(Frame::HelloAck).await;
    wait_health(&agent, "READY\n").await;
    conn.send(Frame::Open {
        id: 9,
        connector: "echo".into(),
        client_addr: None,
    })
    .await;
    let (got, _) = exchange(&mut conn, &mut Flow::new(9), b"legacy", false, 6).await;
    assert_eq!(got, b"legacy");
}

#[tokio::test]
async fn token_file_is_sent_as_bearer() {
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let dir = TempDir::new("agent-token");
    let tok = dir.write("token", "first.token.value\n");
    let yaml = agent_yaml(&relay.url(), "v2", &[("echo", echo.addr)]).replace(
        "tunnel:\n",
        &format!("tunnel:\n  auth: {{token_file: '{}'}}\n", tok.display()),
    );
    let _agent = start(&yaml).await;
    let conn = relay.accept(Select::Negotiate).await;
    assert_eq!(
        conn.upgrade.authorization.as_deref(),
        Some("Bearer first.token.value")
    );
    // Rotated file: the next connect sends the new token.
    std::fs::write(&tok, "second.token.value").expect("write");
    drop(conn);
    let conn = relay.accept(Select::Negotiate).await;
    assert_eq!(
        conn.upgrade.authorization.as_deref(),
        Some("Bearer second.token.value")
    );
}

/// A relay that stops answering (no pongs, no frames) is given up once a ping went unanswered
/// for `ping_timeout` after `ping_interval` of silence, and not before; then the agent
/// reconnects (paused clock: the seconds pass in no real time).
#[tokio::test(start_paused = true)]
async fn dead_relay_is_detected_by_keepalive() {
    let _tick = Ticker::start();
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let yaml = agent_yaml(&relay.url(), "v2", &[("echo", echo.addr)]).replace(
        "tunnel:\n",
        "tunnel:\n  ping_interval_sec: 10\n  ping_timeout_sec: 5\n",
    );
    let dead_after = Duration::from_secs(15);
    let agent = start(&yaml).await;
    let mut conn = relay.accept(Select::Negotiate).await;
    // The agent's session (and its keepalive) starts after this upgrade.
    let started = Instant::now();
    expect_hello(&mut conn, &["echo"]).await;
    conn.send(Frame::HelloAck).await;
    wait_health(&agent, "READY\n").await;
    // The relay stops reading (no pongs, no frames) but keeps the socket open.
    let mut again = relay.accept_within(dead_after * 2, Select::Negotiate).await;
    let took = started.elapsed();
    // Reconnect backoff is at most reconnect_max_ms (200 ms) on top.
    assert!(
        took >= dead_after && took < dead_after + Duration::from_secs(1),
        "reconnected after {took:?}; ping_interval + ping_timeout is {dead_after:?}"
    );
    expect_hello(&mut again, &["echo"]).await;
    drop(conn);
}

#[tokio::test]
async fn dropping_the_handle_closes_target_sockets_at_once() {
    let relay = MockRelay::bind().await;
    // A target that reports when its client goes away.
    let target = net::bind().await;
    let taddr = net::addr(&target);
    let agent = start(&agent_yaml(&relay.url(), "v2", &[("t", taddr)])).await;
    let mut conn = relay.accept(Select::Negotiate).await;
    expect_hello(&mut conn, &["t"]).await;
    conn.send(Frame::HelloAck).await;
    conn.send(Frame::Open {
        id: 1,
        connector: "t".into(),
        client_addr: None,
    })
    .await;
    let (mut sock, _) = within("target accept", STEP, target.accept())
        .await
        .expect("accept");
    sock.write_all(b"x").await.expect("write");
    match conn.recv().await {
        Frame::Data { id: 1, payload } => assert_eq!(&payload[..], b"x"),
        other => panic!("expected DATA, got {other:?}"),
    }
    drop(agent);
    let mut buf = [0u8; 8];
    let n = within("target socket closed", STEP, sock.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "target sees EOF/reset when the agent is dropped");
    assert!(conn.try_recv().await.is_none(), "tunnel closed too");
}

#[tokio::test]
async fn relay_rst_closes_the_target_socket() {
    let relay = MockRelay::bind().await;
    let target = net::bind().await;
    let taddr = net::addr(&target);
    let _agent = start(&agent_yaml(&relay.url(), "v1", &[("t", taddr)])).await;
    let mut conn = relay.accept(Select::Negotiate).await;
    expect_hello(&mut conn, &["t"]).await;
    conn.send(Frame::HelloAck).await;
    conn.send(Frame::Open {
        id: 2,
        connector: "t".into(),
        client_addr: None,
    })
    .await;
    let (mut sock, _) = within("target accept", STEP, target.accept())
        .await
        .expect("accept");
    conn.send(Frame::Rst {
        id: 2,
        code: RstCode::Shutdown,
        reason: String::new(),
    })
    .await;
    let mut buf = [0u8; 8];
    let n = within("target socket closed", STEP, sock.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
}

/// The agent reached the silent target.
async fn stuck_accepted(stuck: &target::Silent) {
    nowconnect_testkit::wait::wait_for("the agent connects to the stuck target", DEADLINE, || {
        stuck.accepted() == 1
    })
    .await;
}

/// A target that never reads: its stream must stall alone (v2), not the tunnel.
#[tokio::test]
async fn slow_target_stalls_only_its_own_stream() {
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let stuck = target::silent().await;
    let _agent = start(&agent_yaml(
        &relay.url(),
        "v2",
        &[("echo", echo.addr), ("stuck", stuck.addr())],
    ))
    .await;
    let mut conn = relay.accept(Select::Negotiate).await;
    expect_hello(&mut conn, &["echo", "stuck"]).await;
    conn.send(Frame::HelloAck).await;
    conn.send(Frame::Open {
        id: 1,
        connector: "stuck".into(),
        client_addr: None,
    })
    .await;
    stuck_accepted(&stuck).await;
    // Fill the stuck stream's whole window at once.
    for chunk in pattern(DEFAULT_WINDOW as usize, 3).chunks(64 * 1024) {
        conn.send(Frame::Data {
            id: 1,
            payload: Bytes::copy_from_slice(chunk),
        })
        .await;
    }
    // Another stream on the same tunnel moves 1 MiB both ways meanwhile.
    conn.send(Frame::Open {
        id: 2,
        connector: "echo".into(),
        client_addr: None,
    })
    .await;
    let data = pattern(1024 * 1024, 9);
    let mut flow = Flow::new(2);
    let (got, _) = exchange_ignoring(&mut conn, &mut flow, &data, 1).await;
    assert!(
        got == data,
        "second stream byte-exact while the first is stalled"
    );
}

/// Like `exchange`, but frames for stream `other` (WINDOW credit returned by a stalled stream
/// as the kernel absorbs its bytes) are tolerated.
async fn exchange_ignoring(
    conn: &mut Conn,
    flow: &mut Flow,
    payload: &[u8],
    other: StreamId,
) -> (Vec<u8>, bool) {
    let id = flow.id;
    let mut sent = 0;
    let mut got = Vec::new();
    while got.len() < payload.len() {
        while sent < payload.len() && flow.credit > 0 {
            let n = (payload.len() - sent).min(flow.credit).min(64 * 1024);
            conn.send(Frame::Data {
                id,
                payload: Bytes::copy_from_slice(&payload[sent..sent + n]),
            })
            .await;
            sent += n;
            flow.credit -= n;
        }
        match conn.recv().await {
            Frame::Data { id: i, payload } if i == id => {
                got.extend_from_slice(&payload);
                flow.window.on_data(payload.len()).expect("within credit");
                if let Some(inc) = flow.window.on_drained(payload.len()).expect("drained") {
                    conn.send(Frame::Window { id, credit: inc }).await;
                }
            }
            Frame::Window { id: i, credit } if i == id => flow.credit += credit as usize,
            Frame::Window { id: i, .. } if i == other => {}
            f => panic!("unexpected frame {f:?}"),
        }
    }
    (got, false)
}

/// v1 has no credit: a target that never reads fills its bounded queue, the agent stops
/// reading the tunnel, and after the ping timeout resets that stream (queue_overflow); the
/// tunnel carries on.
#[tokio::test]
async fn v1_queue_overflow_resets_only_that_stream() {
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let stuck = target::silent().await;
    let yaml = agent_yaml(
        &relay.url(),
        "v1",
        &[("echo", echo.addr), ("stuck", stuck.addr())],
    )
    .replace("limits: {", "limits: {queue_depth_per_cid: 4, ")
    // How long a full queue may stop the tunnel reader before its stream is reset.
    .replace("tunnel:\n", "tunnel:\n  ping_timeout_sec: 1\n");
    let _agent = start(&yaml).await;
    let mut conn = relay.accept(Select::Negotiate).await;
    expect_hello(&mut conn, &["echo", "stuck"]).await;
    conn.send(Frame::HelloAck).await;
    conn.send(Frame::Open {
        id: 1,
        connector: "stuck".into(),
        client_addr: None,
    })
    .await;
    stuck_accepted(&stuck).await;
    // Far more than the kernel buffers plus 4 queued frames can hold.
    let chunk = Bytes::from(pattern(64 * 1024, 1));
    for _ in 0..400 {
        conn.send(Frame::Data {
            id: 1,
            payload: chunk.clone(),
        })
        .await;
    }
    expect_rst(&mut conn, 1, RstCode::QueueOverflow).await;
    conn.send(Frame::Open {
        id: 2,
        connector: "echo".into(),
        client_addr: None,
    })
    .await;
    let (got, _) = exchange(&mut conn, &mut Flow::new(2), b"alive", false, 5).await;
    assert_eq!(got, b"alive");
}

/// Half-close: the client finishes sending; the target answers only after its EOF.
#[tokio::test]
async fn target_answers_after_client_half_close() {
    let relay = MockRelay::bind().await;
    let t = target::serve(|mut s| async move {
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all).await;
        let _ = s
            .write_all(format!("got {} bytes", all.len()).as_bytes())
            .await;
    })
    .await;
    let _agent = start(&agent_yaml(&relay.url(), "v2", &[("t", t.addr)])).await;
    let mut conn = relay.accept(Select::Negotiate).await;
    expect_hello(&mut conn, &["t"]).await;
    conn.send(Frame::HelloAck).await;
    conn.send(Frame::Open {
        id: 4,
        connector: "t".into(),
        client_addr: None,
    })
    .await;
    let data = pattern(100_000, 5);
    let (got, fin) = exchange(&mut conn, &mut Flow::new(4), &data, true, 15).await;
    assert_eq!(got, b"got 100000 bytes");
    assert!(fin, "FIN a2c after the answer");
}

/// A relay that breaks the protocol (OPEN before HELLO_ACK) gets a Close and a fresh HELLO.
#[tokio::test]
async fn frame_before_hello_ack_is_a_protocol_error() {
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let agent = start(&agent_yaml(&relay.url(), "v2", &[("echo", echo.addr)])).await;
    let mut conn = relay.accept(Select::Negotiate).await;
    expect_hello(&mut conn, &["echo"]).await;
    conn.send(Frame::Open {
        id: 1,
        connector: "echo".into(),
        client_addr: None,
    })
    .await;
    assert!(conn.try_recv().await.is_none(), "agent closes the tunnel");
    assert_eq!(health(agent.health_addr()).await, "OK\n");
    let mut again = relay.accept(Select::Negotiate).await;
    expect_hello(&mut again, &["echo"]).await;
}

/// An RST from the relay cuts the target with a TCP reset: the target reads ECONNRESET, not
/// the EOF a finished request would give; a clean half-close still reads as EOF.
#[tokio::test]
async fn relay_rst_resets_the_target_connection() {
    let relay = MockRelay::bind().await;
    let (target, mut accepted) = target::handoff().await;
    let _agent = start(&agent_yaml(&relay.url(), "v2", &[("t", target.addr)])).await;
    let mut conn = relay.accept(Select::Negotiate).await;
    expect_hello(&mut conn, &["t"]).await;
    conn.send(Frame::HelloAck).await;
    for id in [1, 2] {
        conn.send(Frame::Open {
            id,
            connector: "t".into(),
            client_addr: None,
        })
        .await;
    }
    let mut first = within("target accept", STEP, accepted.recv())
        .await
        .expect("accepted");
    let mut second = within("target accept", STEP, accepted.recv())
        .await
        .expect("accepted");
    // Bytes on both first, so each stream is up before it ends; which socket is which stream is
    // told by its byte.
    conn.send(Frame::Data {
        id: 1,
        payload: Bytes::from_static(b"1"),
    })
    .await;
    conn.send(Frame::Data {
        id: 2,
        payload: Bytes::from_static(b"2"),
    })
    .await;
    let mut b = [0u8; 1];
    within("first byte", STEP, first.read_exact(&mut b))
        .await
        .expect("read");
    if b[0] == b'2' {
        std::mem::swap(&mut first, &mut second);
        within("second byte", STEP, first.read_exact(&mut b))
            .await
            .expect("read");
    } else {
        within("second byte", STEP, second.read_exact(&mut b))
            .await
            .expect("read");
    }
    conn.send(Frame::Rst {
        id: 1,
        code: RstCode::Other,
        reason: String::new(),
    })
    .await;
    conn.send(Frame::Fin {
        id: 2,
        dir: Dir::C2a,
    })
    .await;
    let mut buf = [0u8; 16];
    let cut = within("the reset stream", STEP, first.read(&mut buf)).await;
    assert_eq!(
        cut.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "RST from the relay reaches the target as a TCP reset"
    );
    let eof = within("the half-closed stream", STEP, second.read(&mut buf)).await;
    assert_eq!(
        eof.expect("clean read"),
        0,
        "FIN c2a reaches the target as EOF"
    );
}

/// A tunnel that reached READY resets the reconnect backoff: after failed attempts grew the
/// delay's ceiling to a minute, a relay that drops a READY tunnel (a restart) is dialed again
/// within the first, short delay (paused clock: the minutes pass in no real time).
#[tokio::test(start_paused = true)]
async fn a_ready_tunnel_resets_the_reconnect_backoff() {
    let _tick = Ticker::start();
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let yaml = agent_yaml(&relay.url(), "v2", &[("echo", echo.addr)]).replace(
        nowconnect_testkit::yaml::AGENT_LIMITS,
        "limits: {connect_timeout_ms: 2000, reconnect_initial_ms: 1000, reconnect_max_ms: 60000}\n",
    );
    let agent = start(&yaml).await;
    let wait = Duration::from_secs(120);
    // Six attempts that fail before READY: the ceiling grows 1, 2, 4, ... to 60 s.
    for _ in 0..6 {
        drop(relay.accept_within(wait, Select::Negotiate).await);
    }
    let mut conn = relay.accept_within(wait, Select::Negotiate).await;
    expect_hello(&mut conn, &["echo"]).await;
    conn.send(Frame::HelloAck).await;
    wait_health(&agent, "READY\n").await;
    // The tunnel serves for a while (paused clock: no real time), past the flap guard (1 s),
    // then the relay restarts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dropped = Instant::now();
    drop(conn);
    let mut again = relay.accept_within(wait, Select::Negotiate).await;
    let took = dropped.elapsed();
    assert!(
        took <= Duration::from_millis(1500),
        "reconnected after {took:?}: the grown delay, not reconnect_initial_ms (1 s)"
    );
    expect_hello(&mut again, &["echo"]).await;
}

/// Several relays of one service: a relay that cannot be reached is skipped for the next one
/// in `tunnel.urls`, and the agent is READY there (paused clock).
#[tokio::test(start_paused = true)]
async fn an_unreachable_relay_is_skipped_for_the_next_in_the_list() {
    let _tick = Ticker::start();
    // Nothing listens here any more: connection refused.
    let dead = {
        let l = net::bind().await;
        net::addr(&l)
    };
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    let yaml = agent_yaml(&relay.url(), "v2", &[("echo", echo.addr)]).replace(
        &format!("  url: {}\n", relay.url()),
        &format!("  url: ws://{dead}/tunnel\n  urls: ['{}']\n", relay.url()),
    );
    assert!(yaml.contains("urls:"), "{yaml}");
    let agent = start(&yaml).await;
    let mut conn = relay
        .accept_within(Duration::from_secs(60), Select::Negotiate)
        .await;
    expect_hello(&mut conn, &["echo"]).await;
    conn.send(Frame::HelloAck).await;
    wait_health(&agent, "READY\n").await;
}

/// A READY tunnel closed by the relay with 1001 Going Away (the relay shuts down) is dialed
/// again at once, not after a backoff delay: ten shutdowns in a row cost the agent well under
/// what even the quick retries (up to 250 ms each, 125 ms on average) would (paused clock).
#[tokio::test(start_paused = true)]
async fn going_away_redials_at_once() {
    let _tick = Ticker::start();
    let relay = MockRelay::bind().await;
    let echo = target::echo().await;
    // Quick retries as shipped (reconnect_initial_ms above 250 ms).
    let yaml = agent_yaml(&relay.url(), "v2", &[("echo", echo.addr)]).replace(
        nowconnect_testkit::yaml::AGENT_LIMITS,
        "limits: {connect_timeout_ms: 2000, reconnect_initial_ms: 1000, reconnect_max_ms: 60000}\n",
    );
    let agent = start(&yaml).await;
    let mut conn = relay.accept(Select::Negotiate).await;
    let mut waited = Duration::ZERO;
    for round in 0..10 {
        expect_hello(&mut conn, &["echo"]).await;
        conn.send(Frame::HelloAck).await;
        wait_health(&agent, "READY\n").await;
        // Past the flap guard (1 s): a healthy tunnel.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let closed = Instant::now();
        conn.close(1001, "relay shutting down").await;
        conn = relay.accept(Select::Negotiate).await;
        let took = closed.elapsed();
        assert!(took < Duration::from_millis(500), "round {round}: {took:?}");
        waited += took;
    }
    assert!(
        waited < Duration::from_millis(300),
        "ten Going Away closes cost {waited:?}: a backoff delay was slept"
    );
}

/// With several relays, 1001 Going Away moves the agent to the next relay of the list at once
/// (the one going away is not dialed again first).
#[tokio::test(start_paused = true)]
async fn going_away_moves_to_the_next_relay() {
    let _tick = Ticker::start();
    let a = MockRelay::bind().await;
    let b = MockRelay::bind().await;
    let echo = target::echo().await;
    let yaml = agent_yaml(&a.url(), "v2", &[("echo", echo.addr)]).replace(
        &format!("  url: {}\n", a.url()),
        &format!("  url: {}\n  urls: ['{}']\n", a.url(), b.url()),
    );
    assert!(yaml.contains("urls:"), "{yaml}");
    let agent = start(&yaml).await;
    let mut on_a = a.accept(Select::Negotiate).await;
    expect_hello(&mut on_a, &["echo"]).await;
    on_a.send(Frame::HelloAck).await;
    wait_health(&agent, "READY\n").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    on_a.close(1001, "relay shutting down").await;
    let mut on_b = b
        .accept_within(Duration::from_millis(500), Select::Negotiate)
        .await;
    expect_hello(&mut on_b, &["echo"]).await;
    on_b.send(Frame::HelloAck).await;
    wait_health(&agent, "READY\n").await;
}

/// The one-way delay of the simulated link in [`most_credit_held`] (a 10 ms round trip, not a
/// wait for anything to settle).
const LINK_DELAY: Duration = Duration::from_millis(10);

/// A relay that sends whatever credit it has to a target that reads at once, over a link whose
/// WINDOWs arrive [`LINK_DELAY`] late (so the 256 KiB window limits the stream): the most
/// credit it ever held, after `total` bytes. `window_cap`: the agent's
/// `limits.max_stream_window_bytes`, if set.
async fn most_credit_held(window_cap: Option<u32>, total: usize) -> usize {
    let relay = MockRelay::bind().await;
    let (sink, mut got) = {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let t = target::serve(move |mut s: TcpStream| {
            let tx = tx.clone();
            async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    let _ = tx.send(n);
                }
            }
        })
        .await;
        (t, rx)
    };
    let mut yaml = agent_yaml(&relay.url(), "v2", &[("sink", sink.addr)]);
    if let Some(cap) = window_cap {
        yaml = yaml.replace(
            "limits: {",
            &format!("limits: {{max_stream_window_bytes: {cap}, "),
        );
    }
    let _agent = start(&yaml).await;
    let mut conn = relay.accept(Select::Negotiate).await;
    expect_hello(&mut conn, &["sink"]).await;
    conn.send(Frame::HelloAck).await;
    conn.send(Frame::Open {
        id: 1,
        connector: "sink".into(),
        client_addr: None,
    })
    .await;
    let chunk = Bytes::from(vec![7u8; 16 * 1024]);
    let (mut credit, mut most, mut sent) = (DEFAULT_WINDOW as usize, 0, 0);
    let window = |f: Frame| match f {
        Frame::Window { id: 1, credit: c } => c as usize,
        other => panic!("expected WINDOW, got {other:?}"),
    };
    while sent < total {
        most = most.max(credit);
        while credit > 0 && sent < total {
            let n = chunk.len().min(credit).min(total - sent);
            conn.send(Frame::Data {
                id: 1,
                payload: chunk.slice(..n),
            })
            .await;
            credit -= n;
            sent += n;
        }
        // Each WINDOW reaches the sender a simulated link delay after the agent sent it.
        if sent < total {
            credit += window(conn.recv().await);
            tokio::time::sleep(LINK_DELAY).await;
            while let Ok(f) = tokio::time::timeout(Duration::ZERO, conn.recv()).await {
                credit += window(f);
            }
        }
    }
    let mut received = 0;
    while received < total {
        received += within("the target's bytes", STEP, got.recv())
            .await
            .expect("sink open");
    }
    assert_eq!(received, total, "every byte reached the target");
    most
}

/// Autotuning on the agent: a window the stream outruns grows (the agent grants more than
/// drained), up to `limits.max_stream_window_bytes`; set to the initial window, it never grows.
#[tokio::test]
async fn the_receive_window_grows_when_it_limits_the_stream_and_not_past_its_cap() {
    let total = 64 * DEFAULT_WINDOW as usize;
    let most = most_credit_held(None, total).await;
    assert!(
        most > DEFAULT_WINDOW as usize,
        "the window grew past the initial {DEFAULT_WINDOW}: most credit held {most}"
    );
    assert!(most <= 4 << 20, "within the default cap: {most}");
    let most = most_credit_held(Some(524_288), total).await;
    assert!(most <= 524_288, "within the configured cap: {most}");
    let most = most_credit_held(Some(DEFAULT_WINDOW), total).await;
    assert_eq!(most, DEFAULT_WINDOW as usize, "a fixed window never grows");
}
