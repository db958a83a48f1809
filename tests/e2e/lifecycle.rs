//! Processes going away: the agent killed mid-transfer, then restarted; the relay restarted.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn echo_once(addr: std::net::SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(payload).await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut back))
        .await
        .expect("echo in time")
        .expect("read");
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_closes_clients_and_a_restarted_agent_serves() {
    let (hose, _written) = firehose(u64::MAX).await;
    let (echo, _t) = echo_server().await;
    let relay = relay(&["hose", "echo"]).await;
    let targets = [("hose", hose), ("echo", echo)];
    let agent = ready_agent(&relay, "v2", &targets).await;

    // Mid-transfer: the client is receiving a never-ending stream.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(listener(&relay, "hose"))
            .await
            .expect("connect");
        let mut first = [0u8; 1024];
        s.read_exact(&mut first).await.expect("data flows");
        clients.push(s);
    }
    drop(agent); // like kill -9: no goodbye on the tunnel
    for s in &mut clients {
        let waited = wait_closed(s, Duration::from_secs(10)).await;
        assert!(
            waited < Duration::from_secs(5),
            "client closed after {waited:?}"
        );
    }

    let agent = ready_agent(&relay, "v2", &targets).await;
    assert_eq!(
        echo_once(listener(&relay, "echo"), b"after restart").await,
        b"after restart"
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_to_a_restarted_relay() {
    let (echo, _t) = echo_server().await;
    let relay = relay(&["echo"]).await;
    let port = relay.tunnel_addr().port();
    let agent = ready_agent(&relay, "v2", &[("echo", echo)]).await;
    assert_eq!(echo_once(listener(&relay, "echo"), b"one").await, b"one");

    drop(relay);
    wait_health(agent.health_addr(), "OK\n").await;
    let relay = start_relay(&relay_yaml(port, &["echo"])).await;
    wait_health(agent.health_addr(), "READY\n").await;
    assert_eq!(echo_once(listener(&relay, "echo"), b"two").await, b"two");
}
