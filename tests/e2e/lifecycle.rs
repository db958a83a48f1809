//! Processes going away: the agent killed mid-transfer, then restarted; the relay restarted.

use std::time::Duration;

use nowconnect_relay::Prebound;
use nowconnect_testkit::health::wait_health;
use nowconnect_testkit::io::wait_closed;
use nowconnect_testkit::net::{self, Reserved};
use nowconnect_testkit::target;
use nowconnect_testkit::wait::{within, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{listener, ready_agent, relay, relay_yaml, start_relay_on};

async fn echo_once(addr: std::net::SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = net::connect(addr).await;
    s.write_all(payload).await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    within("the echo", DEADLINE, s.read_to_end(&mut back))
        .await
        .expect("read");
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_closes_clients_and_a_restarted_agent_serves() {
    let (hose, _written) = target::firehose(u64::MAX).await;
    let echo = target::echo().await;
    let relay = relay(&["hose", "echo"]).await;
    let targets = [("hose", hose.addr), ("echo", echo.addr)];
    let agent = ready_agent(&relay, "v2", &targets).await;

    // Mid-transfer: the client is receiving a never-ending stream.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut s = net::connect(listener(&relay, "hose")).await;
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
    let echo = target::echo().await;
    // The relay's /tunnel port, held by the test across the restart: no one else can take it
    // while no relay runs, and the second relay serves the same socket.
    let port = Reserved::new();
    let on_port = || Prebound {
        tunnel: Some(port.listener()),
        ..Prebound::default()
    };
    let relay = start_relay_on(&relay_yaml(&["echo"]), on_port()).await;
    let agent = ready_agent(&relay, "v2", &[("echo", echo.addr)]).await;
    assert_eq!(echo_once(listener(&relay, "echo"), b"one").await, b"one");

    drop(relay);
    wait_health(agent.health_addr(), "OK\n", DEADLINE).await;
    let relay = start_relay_on(&relay_yaml(&["echo"]), on_port()).await;
    assert_eq!(relay.tunnel_addr(), port.addr());
    wait_health(agent.health_addr(), "READY\n", DEADLINE).await;
    assert_eq!(echo_once(listener(&relay, "echo"), b"two").await, b"two");
}
