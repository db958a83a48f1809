//! Failover on one relay, with raw-frame agents: two agents for one connector share its
//! streams; a tunnel whose keepalive is overdue gets no new streams long before it is declared
//! dead; one that went away gets none at all; an OPEN answered `connect_failed` is reopened on
//! the other agent, the client's early bytes replayed byte for byte, once.

use std::net::SocketAddr;
use std::time::Duration;

use nowconnect_relay::{RelayConfig, RelayHandle};
use nowconnect_shared::{Dir, Frame, RstCode, Version};
use nowconnect_testkit::io::{random_bytes, read_to_close};
use nowconnect_testkit::mock_agent::{self, data, v2_agent, MockAgent};
use nowconnect_testkit::wait::{wait_for, within, Ticker, DEADLINE};
use nowconnect_testkit::yaml::{self, DEV};
use nowconnect_testkit::{log, net};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(5);

async fn relay(extra: &str) -> RelayHandle {
    log::init();
    let cfg = RelayConfig::from_yaml_str(&yaml::relay(&[("ldap", "addomain")], extra))
        .expect("valid relay config");
    nowconnect_relay::start(cfg).await.expect("relay starts")
}

fn ldap(relay: &RelayHandle) -> SocketAddr {
    relay.listener_addr("ldap").expect("listener ldap")
}

fn retries(relay: &RelayHandle, result: &str) -> u64 {
    nowconnect_testkit::metrics::value(
        &relay.metrics_text(),
        &format!("nowconnect_open_retries_total{{connector=\"addomain\",result=\"{result}\"}}"),
    )
}

/// `agent`'s DATA on stream `id` up to `len` bytes (a FIN or any other frame first fails).
async fn data_of(agent: &mut MockAgent<TcpStream>, id: u32, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        match agent.recv().await {
            Frame::Data { id: i, payload } if i == id => got.extend_from_slice(&payload),
            other => panic!("expected DATA on {id}, got {other:?}"),
        }
    }
    got
}

/// The OPEN goes to whichever agent the relay picks: the id and which one (0 or 1).
async fn open_on_either(
    a: &mut MockAgent<TcpStream>,
    b: &mut MockAgent<TcpStream>,
) -> (u32, usize) {
    tokio::select! {
        id = a.next_open("addomain") => (id, 0),
        id = b.next_open("addomain") => (id, 1),
    }
}

/// Two agents share the connector's streams; one that went away gets no new stream: every
/// client connected after the relay saw it go reaches the other.
#[tokio::test]
async fn streams_spread_over_two_agents_and_skip_one_that_went_away() {
    let relay = relay(DEV).await;
    let mut a = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut b = v2_agent(relay.tunnel_addr(), "b", &["addomain"]).await;
    let mut clients = Vec::new();
    let mut on = [0usize; 2];
    for _ in 0..6 {
        clients.push(net::connect(ldap(&relay)).await);
        let (_, which) = open_on_either(&mut a, &mut b).await;
        on[which] += 1;
    }
    assert_eq!(on, [3, 3], "least streams spreads open streams evenly");

    drop(a);
    wait_for("the relay to drop agent a", DEADLINE, || {
        relay.agents_for("addomain") == 1
    })
    .await;
    for _ in 0..5 {
        let mut c = net::connect(ldap(&relay)).await;
        let id = b.next_open("addomain").await;
        b.ping_pong(&mut c, id).await;
    }
}

/// An agent that stops answering (no pong, no frame) for 1.5 ping intervals gets no new
/// streams, although it is declared dead only after `ping_interval + ping_timeout`.
#[tokio::test(start_paused = true)]
async fn an_overdue_tunnel_gets_no_new_streams_before_it_is_declared_dead() {
    let _tick = Ticker::start();
    let relay = relay(&format!(
        "  ping_interval_sec: 2\n  ping_timeout_sec: 30\n{DEV}"
    ))
    .await;
    let mut a = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut b = v2_agent(relay.tunnel_addr(), "b", &["addomain"]).await;
    // Both answer: the streams alternate.
    let mut clients = Vec::new();
    let mut on = [0usize; 2];
    for _ in 0..2 {
        clients.push(net::connect(ldap(&relay)).await);
        on[open_on_either(&mut a, &mut b).await.1] += 1;
    }
    assert_eq!(on, [1, 1]);

    // From now on a reads nothing, so it answers no ping; b keeps reading (and ponging) for
    // four seconds: two ping intervals.
    assert_eq!(b.try_recv(Duration::from_secs(4)).await, None);
    for _ in 0..4 {
        let mut c = net::connect(ldap(&relay)).await;
        let id = b.next_open("addomain").await;
        b.ping_pong(&mut c, id).await;
        clients.push(c);
    }
    assert_eq!(
        relay.agents_for("addomain"),
        2,
        "a is not declared dead yet"
    );
    // a's next frame, if any, would be a new stream's OPEN.
    assert_eq!(a.try_recv(Duration::from_millis(100)).await, None);
    assert_eq!(relay.agents_for("addomain"), 2);
}

/// Agent a answers OPEN with connect_failed after the client has spoken first: the client is
/// reopened on b, which gets every byte a got, in order (here 100 KiB in several DATA frames),
/// and the client never sees the failure.
#[tokio::test]
async fn connect_failed_is_retried_on_another_agent_with_the_client_first_bytes() {
    let relay = relay(DEV).await;
    let mut a = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut client = net::connect(ldap(&relay)).await;
    let id_a = a.expect_open("addomain").await;
    let mut b = v2_agent(relay.tunnel_addr(), "b", &["addomain"]).await;

    let first = random_bytes(7, 100 * 1024);
    client.write_all(&first).await.expect("client write");
    assert_eq!(data_of(&mut a, id_a, first.len()).await, first);
    a.send(&Frame::Rst {
        id: id_a,
        code: RstCode::ConnectFailed,
        reason: "refused".into(),
    })
    .await;

    let id_b = b.expect_open("addomain").await;
    let replayed = data_of(&mut b, id_b, first.len()).await;
    assert!(replayed == first, "b got other bytes than the client sent");
    // The stream goes on through b, both ways.
    b.send(&data(id_b, b"bind response")).await;
    let mut got = [0u8; 13];
    within("b's answer at the client", T, client.read_exact(&mut got))
        .await
        .expect("client not reset");
    assert_eq!(&got, b"bind response");
    client.write_all(b"next").await.expect("client write");
    assert_eq!(data_of(&mut b, id_b, 4).await, b"next");
    assert_eq!(retries(&relay, "rerouted"), 1);
    assert_eq!(
        a.try_recv(Duration::from_millis(100)).await,
        None,
        "a gets nothing more"
    );
}

/// A client that spoke and shut down its side before the failure: b gets the bytes, then FIN.
#[tokio::test]
async fn a_retry_replays_the_client_eof_too() {
    let relay = relay(DEV).await;
    let mut a = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut client = net::connect(ldap(&relay)).await;
    let id_a = a.expect_open("addomain").await;
    let mut b = v2_agent(relay.tunnel_addr(), "b", &["addomain"]).await;
    client.write_all(b"query").await.expect("client write");
    client.shutdown().await.expect("client shutdown");
    assert_eq!(data_of(&mut a, id_a, 5).await, b"query");
    assert_eq!(
        a.recv().await,
        Frame::Fin {
            id: id_a,
            dir: Dir::C2a
        }
    );
    a.send(&Frame::Rst {
        id: id_a,
        code: RstCode::ConnectFailed,
        reason: String::new(),
    })
    .await;
    let id_b = b.expect_open("addomain").await;
    assert_eq!(data_of(&mut b, id_b, 5).await, b"query");
    assert_eq!(
        b.recv().await,
        Frame::Fin {
            id: id_b,
            dir: Dir::C2a
        }
    );
    b.send(&data(id_b, b"answer")).await;
    b.send(&Frame::Fin {
        id: id_b,
        dir: Dir::A2c,
    })
    .await;
    let mut back = Vec::new();
    within("the answer and EOF", T, client.read_to_end(&mut back))
        .await
        .expect("clean close");
    assert_eq!(back, b"answer");
}

/// With no other agent the client is reset, as without retries; and a stream is retried only
/// once: when the second agent fails too, the client is reset and nobody gets a third OPEN.
#[tokio::test]
async fn without_another_agent_or_after_one_retry_the_client_is_reset() {
    let relay = relay(DEV).await;
    let mut a = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let rst = |id| Frame::Rst {
        id,
        code: RstCode::ConnectFailed,
        reason: String::new(),
    };

    let mut client = net::connect(ldap(&relay)).await;
    let id = a.expect_open("addomain").await;
    a.send(&rst(id)).await;
    let (_, closed) = read_to_close(&mut client, T).await;
    assert!(closed, "the client is closed when nobody else serves");
    wait_for("the no_agent count", DEADLINE, || {
        retries(&relay, "no_agent") == 1
    })
    .await;

    let mut b = v2_agent(relay.tunnel_addr(), "b", &["addomain"]).await;
    let mut client = net::connect(ldap(&relay)).await;
    let (id, which) = open_on_either(&mut a, &mut b).await;
    let (first, second) = if which == 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    first.send(&rst(id)).await;
    let id2 = second.expect_open("addomain").await;
    second.send(&rst(id2)).await;
    let (_, closed) = read_to_close(&mut client, T).await;
    assert!(closed, "the client is closed after its one retry failed");
    wait_for("the failed_again count", DEADLINE, || {
        retries(&relay, "failed_again") == 1
    })
    .await;
    assert_eq!(retries(&relay, "rerouted"), 1);
    assert_eq!(
        first.try_recv(Duration::from_millis(200)).await,
        None,
        "no third OPEN"
    );
    assert_eq!(second.try_recv(Duration::from_millis(200)).await, None);
}

/// An agent that answered on the stream (its target is connected) and then says
/// connect_failed is not retried: bytes may have reached its target.
#[tokio::test]
async fn a_stream_the_agent_answered_is_not_retried() {
    let relay = relay(DEV).await;
    let mut a = v2_agent(relay.tunnel_addr(), "a", &["addomain"]).await;
    let mut client = net::connect(ldap(&relay)).await;
    let id = a.expect_open("addomain").await;
    let mut b = v2_agent(relay.tunnel_addr(), "b", &["addomain"]).await;
    a.send(&data(id, b"hello")).await;
    let mut got = [0u8; 5];
    within("a's bytes", T, client.read_exact(&mut got))
        .await
        .expect("read");
    a.send(&Frame::Rst {
        id,
        code: RstCode::ConnectFailed,
        reason: String::new(),
    })
    .await;
    let (_, closed) = read_to_close(&mut client, T).await;
    assert!(closed);
    wait_for("the not_replayable count", DEADLINE, || {
        retries(&relay, "not_replayable") == 1
    })
    .await;
    assert_eq!(
        b.try_recv(Duration::from_millis(200)).await,
        None,
        "b gets no OPEN"
    );
}

/// The retry crosses protocol versions: a v1 agent (the reference's) fails, a v2 one serves.
#[tokio::test]
async fn a_retry_from_a_v1_agent_to_a_v2_agent_is_byte_exact() {
    let relay = relay(DEV).await;
    let (ws, proto) = mock_agent::connect(relay.tunnel_addr(), Some("nowconnect.v1"))
        .await
        .expect("upgrade");
    assert_eq!(proto.as_deref(), Some("nowconnect.v1"));
    let mut a = MockAgent::new(ws, Version::V1);
    a.hello("a", &["addomain"]).await;
    let mut client = net::connect(ldap(&relay)).await;
    // v1's OPEN carries no client address.
    let id_a = a.next_open("addomain").await;
    let mut b = v2_agent(relay.tunnel_addr(), "b", &["addomain"]).await;
    let first = random_bytes(11, 20 * 1024);
    client.write_all(&first).await.expect("client write");
    assert_eq!(data_of(&mut a, id_a, first.len()).await, first);
    a.send(&Frame::Rst {
        id: id_a,
        code: RstCode::ConnectFailed,
        reason: String::new(),
    })
    .await;
    let id_b = b.expect_open("addomain").await;
    assert!(data_of(&mut b, id_b, first.len()).await == first);
    b.ping_pong(&mut client, id_b).await;
}
