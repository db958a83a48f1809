//! The relay against a raw v2 (binary) agent written in the test. Keepalive, idle-timeout and
//! ping tests run on tokio's paused clock: their seconds pass in no real time.

use std::net::SocketAddr;
use std::time::Duration;

use nowconnect_relay::{RelayConfig, RelayHandle};
use nowconnect_shared::{Dir, Frame, RstCode, DEFAULT_WINDOW};
use nowconnect_testkit::http;
use nowconnect_testkit::io::read_to_close;
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::{self, data, v2_agent, MockAgent};
use nowconnect_testkit::net;
use nowconnect_testkit::wait::{wait_for, within, Ticker, DEADLINE};
use nowconnect_testkit::yaml::{self, DEV};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(5);

/// A relay with listener `ldap` (connector `addomain`) and `extra` config.
async fn relay(extra: &str) -> RelayHandle {
    log::init();
    let cfg = RelayConfig::from_yaml_str(&yaml::relay(&[("ldap", "addomain")], extra))
        .expect("valid relay config");
    nowconnect_relay::start(cfg).await.expect("relay starts")
}

fn ldap(relay: &RelayHandle) -> SocketAddr {
    relay.listener_addr("ldap").expect("listener ldap")
}

/// A client on the `ldap` listener.
async fn client(relay: &RelayHandle) -> TcpStream {
    net::connect(ldap(relay)).await
}

#[tokio::test]
async fn open_data_echo_and_half_close() {
    let relay = relay(DEV).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "premise-01", &["addomain"]).await;
    wait_for("agent registered", DEADLINE, || {
        relay.agents_for("addomain") == 1
    })
    .await;

    let mut client = client(&relay).await;
    let id = agent.expect_open("addomain").await;
    client
        .write_all(b"hello relay")
        .await
        .expect("client write");
    let mut got = Vec::new();
    while got.len() < 11 {
        match agent.recv().await {
            Frame::Data { id: i, payload } => {
                assert_eq!(i, id);
                got.extend_from_slice(&payload);
            }
            other => panic!("expected DATA, got {other:?}"),
        }
    }
    assert_eq!(got, b"hello relay");
    agent.send(&data(id, b"HELLO CLIENT")).await;
    let mut buf = [0u8; 12];
    within("the answer at the client", T, client.read_exact(&mut buf))
        .await
        .expect("client read");
    assert_eq!(&buf, b"HELLO CLIENT");

    // Client half-closes: FIN c2a reaches the agent; the agent can still answer.
    client.shutdown().await.expect("client half-close");
    assert_eq!(agent.recv().await, Frame::Fin { id, dir: Dir::C2a });
    agent.send(&data(id, b"late answer")).await;
    agent.send(&Frame::Fin { id, dir: Dir::A2c }).await;
    let (rest, closed) = read_to_close(&mut client, T).await;
    assert!(closed);
    assert_eq!(rest, b"late answer");
    wait_for("stream closed", DEADLINE, || relay.open_connections() == 0).await;

    let (status, metrics) = http::get(relay.metrics_addr(), "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "nowconnect_tcp_connections_total{connector=\"addomain\"} 1",
        "nowconnect_tcp_bytes_total{direction=\"c2p\",connector=\"addomain\"} 11",
        "nowconnect_tcp_bytes_total{direction=\"p2c\",connector=\"addomain\"} 23",
        "\nnowconnect_fin_sent 1\n",
        "\nnowconnect_fin_recv 1\n",
        "nowconnect_agents_connected 1",
        "nowconnect_agent_connects_total{version=\"nowconnect.v2\"} 1",
        "nowconnect_tcp_active_connections{connector=\"addomain\"} 0",
        "nowconnect_connection_duration_seconds_count 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

#[tokio::test]
async fn rst_connect_failed_closes_client_quickly() {
    let relay = relay(DEV).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut client = client(&relay).await;
    let id = agent.expect_open("addomain").await;
    let t0 = Instant::now();
    agent
        .send(&Frame::Rst {
            id,
            code: RstCode::ConnectFailed,
            reason: "connection refused".into(),
        })
        .await;
    let (bytes, closed) = read_to_close(&mut client, Duration::from_secs(1)).await;
    assert!(closed, "client socket still open 1 s after RST");
    assert!(bytes.is_empty());
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "took {:?}",
        t0.elapsed()
    );
    wait_for("stream gone", DEADLINE, || relay.open_connections() == 0).await;
    assert!(relay
        .metrics_text()
        .contains("nowconnect_rst_recv{code=\"connect_failed\"} 1"));
}

#[tokio::test]
async fn no_agent_closes_client_at_once() {
    let relay = relay(DEV).await;
    let mut client = client(&relay).await;
    let (_, closed) = read_to_close(&mut client, Duration::from_secs(1)).await;
    assert!(closed, "client not closed without an agent");
    assert!(relay.metrics_text().contains(
        "nowconnect_connections_rejected_total{connector=\"addomain\",reason=\"no_agent\"} 1"
    ));
}

#[tokio::test]
async fn flow_control_both_directions() {
    // A fixed window, so the WINDOW count below is the protocol's (autotuning, tested on its
    // own below, would grant the same bytes in fewer, larger WINDOWs).
    let relay = relay(&format!(
        "{DEV}limits:\n  max_stream_window_bytes: {DEFAULT_WINDOW}\n"
    ))
    .await;
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let client = client(&relay).await;
    let id = agent.expect_open("addomain").await;
    let total = 4 * DEFAULT_WINDOW as usize;

    // c2a: the relay never has more than the window unacknowledged.
    let payload: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let p2 = payload.clone();
    let (mut rd, mut wr) = client.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&p2).await.expect("client write");
        wr
    });
    let mut received = Vec::with_capacity(total);
    let mut unacked: usize = 0;
    while received.len() < total {
        match agent.recv().await {
            Frame::Data { id: i, payload } => {
                assert_eq!(i, id);
                assert!(payload.len() <= 64 * 1024);
                unacked += payload.len();
                assert!(unacked <= DEFAULT_WINDOW as usize, "relay exceeded credit");
                received.extend_from_slice(&payload);
                // Grant back once a quarter window is outstanding.
                if unacked >= DEFAULT_WINDOW as usize / 4 {
                    agent
                        .send(&Frame::Window {
                            id,
                            credit: unacked as u32,
                        })
                        .await;
                    unacked = 0;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(received == payload, "c2a bytes differ");
    let _wr = writer.await.expect("writer task");

    // a2c: the agent may send a full window, then must wait for WINDOW from the relay.
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; total];
        rd.read_exact(&mut got).await.expect("client read");
        got
    });
    let mut credit = DEFAULT_WINDOW as usize;
    let mut sent = 0;
    let mut windows = 0;
    while sent < total {
        while credit > 0 && sent < total {
            let n = (64 * 1024).min(credit).min(total - sent);
            agent.send(&data(id, &payload[sent..sent + n])).await;
            credit -= n;
            sent += n;
        }
        if sent < total {
            match agent.recv().await {
                Frame::Window { id: i, credit: c } => {
                    assert_eq!(i, id);
                    credit += c as usize;
                    windows += 1;
                }
                other => panic!("expected WINDOW, got {other:?}"),
            }
        }
    }
    let got = within("the a2c bytes", T, reader)
        .await
        .expect("reader task");
    assert!(got == payload, "a2c bytes differ");
    assert!(windows >= 3, "relay returned credit {windows} times");
}

/// Frames the relay reads in one go are written to each client in runs (one vectored write per
/// run of one stream): runs cut by another stream's frames, by a full run, and by a client whose
/// socket is full (the rest of the run waits in the relay, and later frames queue behind it) must
/// still deliver every byte once, in order.
#[tokio::test]
async fn small_frames_in_one_write_reach_each_client_whole_and_in_order() {
    let relay = relay(DEV).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut c1 = client(&relay).await;
    let id1 = agent.expect_open("addomain").await;
    let c2 = client(&relay).await;
    let id2 = agent.expect_open("addomain").await;
    let held = || {
        relay
            .metrics_text()
            .lines()
            .find_map(|l| l.strip_prefix("nowconnect_buffered_bytes{dir=\"a2c\"} "))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0)
    };
    // c1 reads all along; c2 starts reading only once its socket is full and the relay holds
    // the rest of its runs: frames that come then must queue behind what is held.
    let c1_reader = tokio::spawn(async move { read_to_close(&mut c1, T).await });
    let ids = [id1, id2];
    let mut credit = [DEFAULT_WINDOW as usize; 2];
    let mut want = [Vec::new(), Vec::new()];
    let mut frame = 0usize;
    let mut c2 = Some(c2);
    let mut c2_reader = None;
    let mut after_held = 20;
    // Batches of frames of 1 to 1,500 bytes in runs of 1 to 40 per stream, fed without a flush
    // so they arrive in few TCP reads; after c2's bytes are held, 20 more batches while c2
    // reads. Bounded: at most 400 batches.
    for _batch in 0..400 {
        if let Some(mut c2) = c2.take_if(|_| held() > 0) {
            c2_reader = Some(tokio::spawn(async move { read_to_close(&mut c2, T).await }));
        }
        if c2_reader.is_some() {
            if after_held == 0 {
                break;
            }
            after_held -= 1;
        }
        for run in 0..12usize {
            let s = usize::from(run % 3 != 2);
            for _ in 0..1 + (frame * 7 + run) % 40 {
                let payload: Vec<u8> = (0..1 + frame % 1500).map(|k| (frame + k) as u8).collect();
                if credit[s] < payload.len() {
                    break;
                }
                credit[s] -= payload.len();
                want[s].extend_from_slice(&payload);
                agent
                    .try_feed(&data(ids[s], &payload), T)
                    .await
                    .expect("feed a frame");
                frame += 1;
            }
        }
        agent.try_flush(T).await.expect("flush the frames");
        // Credit comes back as the relay writes into the sockets: wait for some when both
        // streams are out of it (c1 reads, so its credit always comes).
        loop {
            let out = credit.iter().all(|&c| c < 1500);
            let wait = if out { T } else { Duration::from_millis(1) };
            match agent.try_recv(wait).await {
                Some(Frame::Window { id, credit: c }) => {
                    credit[usize::from(id == id2)] += c as usize
                }
                Some(other) => panic!("expected WINDOW, got {other:?}"),
                None => break,
            }
        }
    }
    let c2_reader = c2_reader.expect("c2's socket never filled: no run was cut short");
    for id in ids {
        agent.send(&Frame::Fin { id, dir: Dir::A2c }).await;
    }
    let (got2, closed2) = c2_reader.await.expect("c2 reader");
    let (got1, closed1) = c1_reader.await.expect("c1 reader");
    assert!(closed1 && closed2, "both clients see the FIN");
    for (got, want) in [(got1, &want[0]), (got2, &want[1])] {
        assert_eq!(got.len(), want.len());
        assert!(&got == want, "bytes differ");
    }
}

#[tokio::test]
async fn agent_exceeding_credit_gets_rst_flow_control() {
    let relay = relay(DEV).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    // The client never reads, so nothing drains and no credit comes back.
    let mut client = client(&relay).await;
    let id = agent.expect_open("addomain").await;
    // Honour credit until it stops coming back: kernel buffers are full and the relay holds
    // a full window for this stream. Then one byte more is a violation.
    let chunk = vec![7u8; 64 * 1024];
    let mut credit = DEFAULT_WINDOW as usize;
    let mut sent = 0usize;
    loop {
        while credit > 0 {
            let n = chunk.len().min(credit);
            agent.send(&data(id, &chunk[..n])).await;
            credit -= n;
            sent += n;
        }
        match agent.try_recv(Duration::from_millis(500)).await {
            Some(Frame::Window { credit: c, .. }) => credit += c as usize,
            None => break,
            Some(other) => panic!("unexpected {other:?}"),
        }
        assert!(sent < 256 * 1024 * 1024, "credit never stopped coming back");
    }
    // Overshoot by a whole window: even a grant still in flight cannot cover that.
    for _ in 0..(DEFAULT_WINDOW as usize / chunk.len()) {
        agent.send(&data(id, &chunk)).await;
    }
    agent.send(&data(id, b"x")).await;
    loop {
        match agent.recv().await {
            Frame::Rst { id: i, code, .. } => {
                assert_eq!(i, id);
                assert_eq!(code, RstCode::FlowControl);
                break;
            }
            Frame::Window { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    let (_, closed) = read_to_close(&mut client, T).await;
    assert!(closed);
}

#[tokio::test]
async fn slow_reader_stalls_only_its_own_stream() {
    let relay = relay(DEV).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let addr = ldap(&relay);
    let _slow = TcpStream::connect(addr).await.expect("connect slow client");
    let slow_id = agent.expect_open("addomain").await;
    let mut fast = TcpStream::connect(addr).await.expect("connect fast client");
    let fast_id = agent.expect_open("addomain").await;

    // Fill the slow stream's window completely; its client never reads.
    let chunk = vec![1u8; 64 * 1024];
    for _ in 0..(DEFAULT_WINDOW as usize / chunk.len()) {
        agent.send(&data(slow_id, &chunk)).await;
    }
    // The other stream still flows both ways.
    for round in 0..20u8 {
        agent.send(&data(fast_id, &[round; 100])).await;
        let mut buf = [0u8; 100];
        within("the fast stream", T, fast.read_exact(&mut buf))
            .await
            .expect("fast client read");
        assert_eq!(buf, [round; 100]);
    }
    assert_eq!(relay.open_connections(), 2);
}

#[tokio::test]
async fn tunnel_loss_closes_clients_and_unregisters() {
    let relay = relay(DEV).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut client = client(&relay).await;
    agent.expect_open("addomain").await;
    drop(agent);
    let (_, closed) = read_to_close(&mut client, Duration::from_secs(1)).await;
    assert!(closed, "client not closed after the tunnel dropped");
    wait_for("agent unregistered", DEADLINE, || {
        relay.agents_for("addomain") == 0
    })
    .await;
    assert!(relay
        .metrics_text()
        .contains("nowconnect_agents_connected 0"));
}

#[tokio::test]
async fn streams_spread_across_agents_and_skip_departed_ones() {
    let relay = relay(DEV).await;
    let mut a = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut b = v2_agent(relay.tunnel_addr(), "b", &["addomain"]).await;
    wait_for("both registered", DEADLINE, || {
        relay.agents_for("addomain") == 2
    })
    .await;
    let addr = ldap(&relay);
    let mut clients = Vec::new();
    let (mut on_a, mut on_b) = (0, 0);
    for _ in 0..4 {
        clients.push(TcpStream::connect(addr).await.expect("connect"));
        tokio::select! {
            f = a.recv() => { assert!(matches!(f, Frame::Open { .. })); on_a += 1; }
            f = b.recv() => { assert!(matches!(f, Frame::Open { .. })); on_b += 1; }
        }
    }
    assert_eq!((on_a, on_b), (2, 2));
    drop(b);
    wait_for("b unregistered", DEADLINE, || {
        relay.agents_for("addomain") == 1
    })
    .await;
    for _ in 0..3 {
        clients.push(TcpStream::connect(addr).await.expect("connect"));
        a.expect_open("addomain").await;
    }
}

/// A stream without traffic either way for `idle_timeout` is reset; traffic in either
/// direction starts the count again.
#[tokio::test(start_paused = true)]
async fn idle_streams_are_reset() {
    let _tick = Ticker::start();
    let idle = Duration::from_secs(30);
    let relay = relay(&format!(
        "{DEV}limits:\n  idle_timeout_ms: {}\n",
        idle.as_millis()
    ))
    .await;
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut client = client(&relay).await;
    let id = agent.expect_open("addomain").await;

    // Most of the timeout passes, then the client sends: not idle.
    assert_eq!(agent.try_recv(idle * 3 / 4).await, None, "nothing yet");
    client.write_all(b"c2a").await.expect("client write");
    assert_eq!(agent.recv().await, data(id, b"c2a"));
    // Most of it again, then the agent sends: not idle either.
    assert_eq!(agent.try_recv(idle * 3 / 4).await, None, "still open");
    agent.send(&data(id, b"a2c")).await;
    let mut buf = [0u8; 3];
    within("a2c at the client", T, client.read_exact(&mut buf))
        .await
        .expect("client read");
    assert_eq!(&buf, b"a2c");

    // Now silence: the RST comes `idle` after the last traffic, not before.
    let quiet_from = Instant::now();
    match agent.try_recv(idle * 2).await {
        Some(Frame::Rst { id: i, code, .. }) => {
            assert_eq!((i, code), (id, RstCode::IdleTimeout));
        }
        other => panic!("expected RST idle_timeout, got {other:?}"),
    }
    let waited = quiet_from.elapsed();
    assert!(
        waited >= idle && waited < idle + Duration::from_secs(1),
        "reset after {waited:?} of silence, idle_timeout is {idle:?}"
    );
    let (_, closed) = read_to_close(&mut client, T).await;
    assert!(closed, "client closed with the stream");
}

#[tokio::test]
async fn max_conn_total_is_enforced() {
    let relay = relay(&format!("{DEV}limits:\n  max_conn_total: 1\n")).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let addr = ldap(&relay);
    let _first = TcpStream::connect(addr).await.expect("connect first");
    agent.expect_open("addomain").await;
    let mut second = TcpStream::connect(addr).await.expect("connect second");
    let (_, closed) = read_to_close(&mut second, Duration::from_secs(1)).await;
    assert!(closed, "second connection over max_conn_total stayed open");
    assert!(agent.try_recv(Duration::from_millis(100)).await.is_none());
}

/// An agent that answers nothing (no pongs, no frames) is dropped once `ping_interval +
/// ping_timeout` passed since its last frame, and not before.
#[tokio::test(start_paused = true)]
async fn dead_tunnel_detected_by_keepalive() {
    let _tick = Ticker::start();
    let relay = relay(&format!(
        "  ping_interval_sec: 10\n  ping_timeout_sec: 5\n{DEV}"
    ))
    .await;
    let dead_after = Duration::from_secs(15);
    // Before HELLO: the relay's last frame from the agent comes after this.
    let t0 = Instant::now();
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut client = client(&relay).await;
    agent.expect_open("addomain").await;
    // The agent stops reading (so it answers no ping) and sends nothing.
    let (_, closed) = read_to_close(&mut client, dead_after * 2).await;
    let waited = t0.elapsed();
    assert!(closed, "client not closed after the tunnel went silent");
    assert!(
        waited >= dead_after && waited < dead_after + Duration::from_secs(1),
        "tunnel dropped after {waited:?}; ping_interval + ping_timeout is {dead_after:?}"
    );
    wait_for("agent unregistered", DEADLINE, || {
        relay.agents_for("addomain") == 0
    })
    .await;
    drop(agent);
}

/// The relay pings every `ping_interval`; an agent that answers them (tungstenite pongs while
/// reading) stays registered for many keepalive periods.
#[tokio::test(start_paused = true)]
async fn relay_pings_and_agent_traffic_keeps_tunnel_alive() {
    let _tick = Ticker::start();
    let relay = relay(&format!(
        "  ping_interval_sec: 1\n  ping_timeout_sec: 1\n{DEV}"
    ))
    .await;
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    use futures_util::StreamExt;
    // Ten seconds: five times ping_interval + ping_timeout.
    let run = Duration::from_secs(10);
    let deadline = Instant::now() + run;
    let mut pings = 0;
    // Reading makes tungstenite answer each ping with a pong.
    loop {
        match tokio::time::timeout_at(deadline, agent.ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(msg))) if msg.is_ping() => pings += 1,
            Ok(Some(Ok(msg))) => panic!("unexpected message {msg:?}"),
            Ok(other) => panic!("tunnel ended: {other:?}"),
        }
    }
    assert!(pings >= 9, "relay sent {pings} pings in {run:?}");
    assert_eq!(
        relay.agents_for("addomain"),
        1,
        "a responsive agent was dropped"
    );
}

#[tokio::test]
async fn first_frame_must_be_hello() {
    let relay = relay(DEV).await;
    let (ws, _) = mock_agent::connect(relay.tunnel_addr(), Some("nowconnect.v2"))
        .await
        .expect("upgrade");
    let mut agent = MockAgent::v2(ws);
    agent.send(&data(1, b"too early")).await;
    assert_eq!(agent.close_code().await, Some(1008));
    assert_eq!(relay.agents_for("addomain"), 0);
}

/// The one-way delay of the simulated link in [`most_credit_held`] (a 10 ms round trip, not a
/// wait for anything to settle).
const LINK_DELAY: Duration = Duration::from_millis(10);

/// An agent that sends whatever credit it has and waits for WINDOW over a link with a round
/// trip of [`LINK_DELAY`] (so the 256 KiB window limits the stream), to a client that reads at
/// once: the most credit the agent ever held, after `total` bytes.
async fn most_credit_held(extra: &str, total: usize) -> usize {
    let relay = relay(extra).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut client = client(&relay).await;
    let id = agent.expect_open("addomain").await;
    let reader = tokio::spawn(async move {
        let mut got = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        while got < total {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        got
    });
    let chunk = vec![7u8; 16 * 1024];
    let (mut credit, mut most, mut sent) = (DEFAULT_WINDOW as usize, 0, 0);
    while sent < total {
        most = most.max(credit);
        while credit > 0 && sent < total {
            let n = chunk.len().min(credit).min(total - sent);
            agent.send(&data(id, &chunk[..n])).await;
            credit -= n;
            sent += n;
        }
        // Each WINDOW reaches the sender a simulated link delay after the relay sent it.
        if sent < total {
            match within("a WINDOW", T, agent.recv()).await {
                Frame::Window { id: i, credit: c } if i == id => credit += c as usize,
                other => panic!("expected WINDOW, got {other:?}"),
            }
            tokio::time::sleep(LINK_DELAY).await;
            while let Some(f) = agent.try_recv(Duration::ZERO).await {
                match f {
                    Frame::Window { id: i, credit: c } if i == id => credit += c as usize,
                    other => panic!("expected WINDOW, got {other:?}"),
                }
            }
        }
    }
    let got = within("the client's bytes", T, reader)
        .await
        .expect("reader task");
    assert_eq!(got, total, "every byte reached the client");
    most
}

/// Autotuning: a window the stream outruns grows (the relay grants more than drained), up to
/// `limits.max_stream_window_bytes`; set to the initial window, it never grows.
#[tokio::test]
async fn the_receive_window_grows_when_it_limits_the_stream_and_not_past_its_cap() {
    let total = 64 * DEFAULT_WINDOW as usize;
    let most = most_credit_held(DEV, total).await;
    assert!(
        most > DEFAULT_WINDOW as usize,
        "the window grew past the initial {DEFAULT_WINDOW}: most credit held {most}"
    );
    assert!(most <= 4 << 20, "within the default cap: {most}");
    let capped = format!("{DEV}limits:\n  max_stream_window_bytes: 524288\n");
    let most = most_credit_held(&capped, total).await;
    assert!(most <= 524_288, "within the configured cap: {most}");
    let fixed = format!("{DEV}limits:\n  max_stream_window_bytes: {DEFAULT_WINDOW}\n");
    let most = most_credit_held(&fixed, total).await;
    assert_eq!(most, DEFAULT_WINDOW as usize, "a fixed window never grows");
}

/// What the relay's buffer budget holds for clients, relay-wide (`nowconnect_buffered_bytes`).
fn a2c_held(relay: &RelayHandle) -> u64 {
    nowconnect_testkit::metrics::value(
        &relay.metrics_text(),
        "nowconnect_buffered_bytes{dir=\"a2c\"}",
    )
}

/// A barrier on the tunnel: `client2` writes "ping", which must reach the agent as DATA on
/// `id2`; the relay handles an agent's frames in order and sends its own in order, so by then
/// everything the agent sent before was handled and every WINDOW sent before was read. Returns
/// the credit those WINDOW frames gave stream `id`.
async fn barrier(
    agent: &mut MockAgent<TcpStream>,
    client2: &mut TcpStream,
    id2: u32,
    id: u32,
) -> usize {
    client2.write_all(b"ping").await.expect("client write");
    let mut credit = 0;
    loop {
        match agent.recv().await {
            Frame::Window { id: i, credit: c } if i == id => credit += c as usize,
            Frame::Data { id: i, payload } if i == id2 => {
                assert_eq!(&payload[..], b"ping");
                return credit;
            }
            other => panic!("expected WINDOW or the barrier's DATA, got {other:?}"),
        }
    }
}

/// A grown receive window is reserved on the relay's buffer budget (`a2c`), and the bytes that
/// wait for a client that stopped reading are charged there too: the two must not count the
/// same bytes twice, or a stalled stream holds up to twice its window and the streams beside it
/// are reset for `queue_overflow` with room to spare. One stream's window grows to its cap; its
/// client stops reading and the agent sends all its credit; then the client reads a part (each
/// drain reserves the growth again). The budget never holds more than the larger of the growth
/// and what waits, plus the per-frame cost. The window is 16 MiB and the client's receive
/// buffer 1 MiB, so most of a stalled window waits in the relay (the kernel's send buffer, up
/// to `tcp_wmem`'s 4 MiB, takes the rest).
#[tokio::test]
async fn a_stalled_stream_is_charged_its_window_once_not_growth_plus_queue() {
    const CAP: usize = 16 << 20;
    // `budget::FRAME_COST` (96) and some slack: what a queued frame costs besides its bytes.
    const PER_FRAME: u64 = 128;
    let base = DEFAULT_WINDOW as usize;
    let growth = (CAP - base) as u64;
    let relay = relay(&format!(
        "{DEV}limits:\n  max_stream_window_bytes: {CAP}\n  max_buffered_bytes: 1073741824\n"
    ))
    .await;
    let mut agent = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    // A small receive buffer: the kernel takes little of what the relay writes once this client
    // stops reading, so most of it waits in the relay.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(1 << 20).expect("SO_RCVBUF");
    let slow = sock.connect(ldap(&relay)).await.expect("connect");
    let id = agent.expect_open("addomain").await;
    let mut client2 = client(&relay).await;
    let id2 = agent.expect_open("addomain").await;

    // The client reads up to what `allow` says, and counts.
    let (allow, mut allowed) = tokio::sync::watch::channel(0usize);
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = got.clone();
    let reader = tokio::spawn(async move {
        let (mut rd, _wr) = slow.into_split();
        let mut buf = vec![0u8; 64 * 1024];
        let mut have = 0usize;
        loop {
            let Ok(limit) = allowed.wait_for(|a| *a > have).await.map(|a| *a) else {
                return have;
            };
            let n = buf.len().min(limit - have);
            match rd.read(&mut buf[..n]).await {
                Ok(0) | Err(_) => return have,
                Ok(n) => have += n,
            }
            count.store(have, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let chunk = vec![7u8; 16 * 1024];
    let read_all = |sent: usize| {
        let got = got.clone();
        async move {
            wait_for("the client read all it was sent", DEADLINE, || {
                got.load(std::sync::atomic::Ordering::SeqCst) == sent
            })
            .await;
        }
    };

    // Grow: send the credit, WINDOW frames a simulated link delay late, the client reading all,
    // until the whole growth is reserved with nothing waiting (the window is at its cap).
    let (mut credit, mut sent, mut grown) = (base, 0usize, 0u64);
    for _ in 0..256 {
        while credit > 0 {
            let n = chunk.len().min(credit);
            agent.send(&data(id, &chunk[..n])).await;
            credit -= n;
            sent += n;
        }
        allow.send_replace(sent);
        match within("a WINDOW", T, agent.recv()).await {
            Frame::Window { id: i, credit: c } if i == id => credit += c as usize,
            other => panic!("expected WINDOW, got {other:?}"),
        }
        tokio::time::sleep(LINK_DELAY).await;
        read_all(sent).await;
        credit += barrier(&mut agent, &mut client2, id2, id).await;
        grown = a2c_held(&relay);
        if grown == growth {
            break;
        }
    }
    // On a loaded machine the autotuning can stop short of the cap. A window of 8 MiB or more
    // still waits mostly in the relay behind the 1 MiB receive buffer, so counting its growth
    // and its queue both (what this guards against) would overshoot the bounds below.
    let window = base + grown as usize;
    assert!(
        window >= 8 << 20,
        "the window grew to {window} bytes, not to 8 MiB"
    );
    // What the relay holds back is credit for bytes drained since its last WINDOW.
    let withheld = window - credit;

    // Stall: the client reads nothing more; the agent sends all its credit.
    let stalled = credit;
    while credit > 0 {
        let n = chunk.len().min(credit);
        agent.send(&data(id, &chunk[..n])).await;
        credit -= n;
    }
    let frames = stalled.div_ceil(chunk.len()) as u64 + 2;
    credit += barrier(&mut agent, &mut client2, id2, id).await;
    let held = a2c_held(&relay);
    let most = grown.max(stalled as u64) + frames * PER_FRAME;
    assert!(
        held <= most,
        "stalled: the budget holds {held} bytes for a window of {window} ({grown} grown, {stalled} sent): over {most}"
    );

    // The client reads enough for the relay to return credit; the drain reserves the growth
    // again, less what still waits.
    let threshold = window.div_ceil(2);
    let part = threshold.saturating_sub(withheld).max(1);
    allow.send_replace(sent + part);
    if credit == 0 {
        match within("a WINDOW after the drain", T, agent.recv()).await {
            Frame::Window { id: i, .. } if i == id => {}
            other => panic!("expected WINDOW, got {other:?}"),
        }
    }
    let held = a2c_held(&relay);
    let waits = (stalled - part) as u64;
    let most = grown.max(waits) + frames * PER_FRAME;
    assert!(
        held <= most,
        "after a drain: the budget holds {held} bytes for {waits} waiting and {grown} grown: over {most}"
    );

    // Every byte arrives, and nothing was reset.
    allow.send_replace(sent + stalled);
    read_all(sent + stalled).await;
    drop(allow);
    assert_eq!(
        within("the reader", T, reader).await.expect("reader task"),
        sent + stalled
    );
    assert_eq!(
        nowconnect_testkit::metrics::value(
            &relay.metrics_text(),
            "nowconnect_queue_overflow_total"
        ),
        0
    );
}
