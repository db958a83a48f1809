//! Two real agents for one connector on one relay: streams spread over both; one agent
//! killed, new streams go to the other at once; a target that refuses behind one agent is
//! reached through the other (the relay reopens the stream there, client-first bytes and all).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use nowconnect_agent::AgentHandle;
use nowconnect_relay::RelayHandle;
use nowconnect_testkit::health::wait_health;
use nowconnect_testkit::io::random_bytes;
use nowconnect_testkit::target;
use nowconnect_testkit::wait::{wait_for, within, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{agent_yaml, listener, relay, start_agent};

/// An agent `agent_id` serving connector `echo` with `target`, READY.
async fn agent(relay: &RelayHandle, agent_id: &str, target: SocketAddr) -> AgentHandle {
    let yaml = agent_yaml(relay.tunnel_addr(), "v2", &[("echo", target)])
        .replace("agent_id: premise-01", &format!("agent_id: {agent_id}"));
    let agent = start_agent(&yaml).await;
    wait_health(agent.health_addr(), "READY\n", DEADLINE).await;
    agent
}

/// Writes `payload` first (as an LDAP client does), then reads it back, keeping the stream open.
async fn echo_open(addr: SocketAddr, payload: &[u8]) -> TcpStream {
    let mut s = nowconnect_testkit::net::connect(addr).await;
    s.write_all(payload).await.expect("write");
    let mut back = vec![0u8; payload.len()];
    within("the echo", DEADLINE, s.read_exact(&mut back))
        .await
        .expect("echo read (client not reset)");
    assert!(back == payload, "echoed bytes differ");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_spread_over_two_agents_and_move_to_the_other_when_one_is_killed() {
    let (echo_a, on_a) = target::counted_echo().await;
    let (echo_b, on_b) = target::counted_echo().await;
    let relay = relay(&["echo"]).await;
    let a = agent(&relay, "premise-a", echo_a.addr).await;
    let _b = agent(&relay, "premise-b", echo_b.addr).await;
    wait_for("both agents registered", DEADLINE, || {
        relay.agents_for("echo") == 2
    })
    .await;
    let addr = listener(&relay, "echo");

    let mut open = Vec::new();
    for i in 0..10 {
        open.push(echo_open(addr, format!("spread {i}").as_bytes()).await);
    }
    let (sa, sb) = (on_a.load(Ordering::SeqCst), on_b.load(Ordering::SeqCst));
    assert_eq!((sa, sb), (5, 5), "open streams are spread evenly");

    drop(a); // like kill -9
    wait_for("the relay to drop the killed agent", DEADLINE, || {
        relay.agents_for("echo") == 1
    })
    .await;
    for i in 0..10 {
        let payload = random_bytes(i, 4096);
        drop(echo_open(addr, &payload).await);
    }
    assert_eq!(
        on_b.load(Ordering::SeqCst),
        sb + 10,
        "every new stream went to b"
    );
    assert_eq!(on_a.load(Ordering::SeqCst), sa);
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_refuses_behind_one_agent_is_reached_through_the_other() {
    let refused = target::refused();
    let (echo, served) = target::counted_echo().await;
    let relay = relay(&["echo"]).await;
    let _a = agent(&relay, "premise-a", refused.addr).await;
    let _b = agent(&relay, "premise-b", echo.addr).await;
    wait_for("both agents registered", DEADLINE, || {
        relay.agents_for("echo") == 2
    })
    .await;
    let addr = listener(&relay, "echo");
    // One at a time: about half start on a (ties go round-robin), and a reroutes them to b.
    for i in 0..10 {
        let payload = random_bytes(100 + i, 32 * 1024);
        drop(echo_open(addr, &payload).await);
    }
    assert_eq!(served.load(Ordering::SeqCst), 10);
    let rerouted = nowconnect_testkit::metrics::value(
        &relay.metrics_text(),
        "nowconnect_open_retries_total{connector=\"echo\",result=\"rerouted\"}",
    );
    assert!(rerouted >= 1, "no stream started on the refusing agent");
    assert_eq!(
        nowconnect_testkit::metrics::value(
            &relay.metrics_text(),
            "nowconnect_open_retries_total{connector=\"echo\",result=\"no_agent\"}",
        ),
        0
    );
}
