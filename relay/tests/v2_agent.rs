//! The relay against a raw v2 (binary) agent written in the test.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use nowconnect_shared::{Dir, Frame, RstCode, DEFAULT_WINDOW};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn open_data_echo_and_half_close() {
    let relay = dev_relay().await;
    let mut agent = v2_agent(&relay, "premise-01", &["addomain"]).await;
    eventually("agent registered", || relay.agents_for("addomain") == 1).await;

    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    let id = agent.expect_open("addomain").await;
    client.write_all(b"hello relay").await.unwrap();
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
    tokio::time::timeout(T, client.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"HELLO CLIENT");

    // Client half-closes: FIN c2a reaches the agent; the agent can still answer.
    client.shutdown().await.unwrap();
    assert_eq!(agent.recv().await, Frame::Fin { id, dir: Dir::C2a });
    agent.send(&data(id, b"late answer")).await;
    agent.send(&Frame::Fin { id, dir: Dir::A2c }).await;
    let (rest, closed) = read_to_close(&mut client, T).await;
    assert!(closed);
    assert_eq!(rest, b"late answer");
    eventually("stream closed", || relay.open_connections() == 0).await;

    let (status, metrics) = http_get(relay.metrics_addr(), "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "nowconnect_tcp_connections_total{connector=\"addomain\"} 1",
        "nowconnect_tcp_bytes_total{direction=\"c2a\",connector=\"addomain\"} 11",
        "nowconnect_tcp_bytes_total{direction=\"a2c\",connector=\"addomain\"} 23",
        "nowconnect_fin_sent_total{dir=\"c2a\"} 1",
        "nowconnect_fin_received_total{dir=\"a2c\"} 1",
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
    let relay = dev_relay().await;
    let mut agent = v2_agent(&relay, "a", &["addomain"]).await;
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
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
    eventually("stream gone", || relay.open_connections() == 0).await;
    assert!(relay
        .metrics_text()
        .contains("nowconnect_rst_received_total{code=\"connect_failed\"} 1"));
}

#[tokio::test]
async fn no_agent_closes_client_at_once() {
    let relay = dev_relay().await;
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    let (_, closed) = read_to_close(&mut client, Duration::from_secs(1)).await;
    assert!(closed, "client not closed without an agent");
    assert!(relay.metrics_text().contains(
        "nowconnect_connections_rejected_total{connector=\"addomain\",reason=\"no_agent\"} 1"
    ));
}

#[tokio::test]
async fn flow_control_both_directions() {
    let relay = dev_relay().await;
    let mut agent = v2_agent(&relay, "a", &["addomain"]).await;
    let client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    let id = agent.expect_open("addomain").await;
    let total = 4 * DEFAULT_WINDOW as usize;

    // c2a: the relay never has more than the window unacknowledged.
    let payload: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let p2 = payload.clone();
    let (mut rd, mut wr) = client.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&p2).await.unwrap();
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
    let _wr = writer.await.unwrap();

    // a2c: the agent may send a full window, then must wait for WINDOW from the relay.
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; total];
        rd.read_exact(&mut got).await.unwrap();
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
    let got = tokio::time::timeout(T, reader).await.unwrap().unwrap();
    assert!(got == payload, "a2c bytes differ");
    assert!(windows >= 3, "relay returned credit {windows} times");
}

#[tokio::test]
async fn agent_exceeding_credit_gets_rst_flow_control() {
    let relay = dev_relay().await;
    let mut agent = v2_agent(&relay, "a", &["addomain"]).await;
    // The client never reads, so nothing drains and no credit comes back.
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
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
    let relay = dev_relay().await;
    let mut agent = v2_agent(&relay, "a", &["addomain"]).await;
    let addr = relay.listener_addr("ldap").unwrap();
    let _slow = TcpStream::connect(addr).await.unwrap();
    let slow_id = agent.expect_open("addomain").await;
    let mut fast = TcpStream::connect(addr).await.unwrap();
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
        tokio::time::timeout(T, fast.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, [round; 100]);
    }
    assert_eq!(relay.open_connections(), 2);
}

#[tokio::test]
async fn tunnel_loss_closes_clients_and_unregisters() {
    let relay = dev_relay().await;
    let mut agent = v2_agent(&relay, "a", &["addomain"]).await;
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    agent.expect_open("addomain").await;
    drop(agent);
    let (_, closed) = read_to_close(&mut client, Duration::from_secs(1)).await;
    assert!(closed, "client not closed after the tunnel dropped");
    eventually("agent unregistered", || relay.agents_for("addomain") == 0).await;
    assert!(relay
        .metrics_text()
        .contains("nowconnect_agents_connected 0"));
}

#[tokio::test]
async fn streams_spread_across_agents_and_skip_departed_ones() {
    let relay = dev_relay().await;
    let mut a = v2_agent(&relay, "a", &["addomain"]).await;
    let mut b = v2_agent(&relay, "b", &["addomain"]).await;
    eventually("both registered", || relay.agents_for("addomain") == 2).await;
    let addr = relay.listener_addr("ldap").unwrap();
    let mut clients = Vec::new();
    let (mut on_a, mut on_b) = (0, 0);
    for _ in 0..4 {
        clients.push(TcpStream::connect(addr).await.unwrap());
        tokio::select! {
            f = a.recv() => { assert!(matches!(f, Frame::Open { .. })); on_a += 1; }
            f = b.recv() => { assert!(matches!(f, Frame::Open { .. })); on_b += 1; }
        }
    }
    assert_eq!((on_a, on_b), (2, 2));
    drop(b);
    eventually("b unregistered", || relay.agents_for("addomain") == 1).await;
    for _ in 0..3 {
        clients.push(TcpStream::connect(addr).await.unwrap());
        a.expect_open("addomain").await;
    }
}

#[tokio::test]
async fn idle_streams_are_reset() {
    let relay = relay(&format!("{DEV}limits:\n  idle_timeout_ms: 150\n")).await;
    let mut agent = v2_agent(&relay, "a", &["addomain"]).await;
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    let id = agent.expect_open("addomain").await;
    match agent.recv().await {
        Frame::Rst { id: i, code, .. } => {
            assert_eq!(i, id);
            assert_eq!(code, RstCode::IdleTimeout);
        }
        other => panic!("expected RST idle_timeout, got {other:?}"),
    }
    let (_, closed) = read_to_close(&mut client, T).await;
    assert!(closed);
}

#[tokio::test]
async fn max_conn_total_is_enforced() {
    let relay = relay(&format!("{DEV}limits:\n  max_conn_total: 1\n")).await;
    let mut agent = v2_agent(&relay, "a", &["addomain"]).await;
    let addr = relay.listener_addr("ldap").unwrap();
    let _first = TcpStream::connect(addr).await.unwrap();
    agent.expect_open("addomain").await;
    let mut second = TcpStream::connect(addr).await.unwrap();
    let (_, closed) = read_to_close(&mut second, Duration::from_secs(1)).await;
    assert!(closed, "second connection over max_conn_total stayed open");
    assert!(agent.try_recv(Duration::from_millis(100)).await.is_none());
}

#[tokio::test]
async fn dead_tunnel_detected_by_keepalive() {
    let relay = relay(&format!(
        "  ping_interval_sec: 1\n  ping_timeout_sec: 1\n{DEV}"
    ))
    .await;
    let mut agent = v2_agent(&relay, "a", &["addomain"]).await;
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    agent.expect_open("addomain").await;
    // The agent stops reading (so it answers no ping) and sends nothing.
    let t0 = Instant::now();
    let (_, closed) = read_to_close(&mut client, Duration::from_secs(5)).await;
    assert!(closed, "client not closed after the tunnel went silent");
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "closed too early: {:?}",
        t0.elapsed()
    );
    eventually("agent unregistered", || relay.agents_for("addomain") == 0).await;
    drop(agent);
}

#[tokio::test]
async fn relay_pings_and_agent_traffic_keeps_tunnel_alive() {
    let relay = relay(&format!(
        "  ping_interval_sec: 1\n  ping_timeout_sec: 1\n{DEV}"
    ))
    .await;
    let mut agent = v2_agent(&relay, "a", &["addomain"]).await;
    use futures_util::StreamExt;
    let deadline = Instant::now() + Duration::from_millis(3500);
    let mut pings = 0;
    // Reading makes tungstenite answer each ping with a pong.
    while Instant::now() < deadline {
        if let Ok(Some(Ok(msg))) =
            tokio::time::timeout(Duration::from_millis(200), agent.ws.next()).await
        {
            if msg.is_ping() {
                pings += 1;
            }
        }
    }
    assert!(pings >= 2, "relay sent {pings} pings in 3.5 s");
    assert_eq!(
        relay.agents_for("addomain"),
        1,
        "a responsive agent was dropped"
    );
}

#[tokio::test]
async fn first_frame_must_be_hello() {
    let relay = dev_relay().await;
    let (ws, _) = ws_connect(relay.tunnel_addr(), Some("nowconnect.v2"))
        .await
        .unwrap();
    let mut agent = V2Agent::new(ws);
    agent.send(&data(1, b"too early")).await;
    use futures_util::StreamExt;
    let code = tokio::time::timeout(T, async {
        loop {
            match agent.ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                    return f.map(|f| u16::from(f.code));
                }
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1008));
    assert_eq!(relay.agents_for("addomain"), 0);
}
