//! The agent's health port: OK before HELLO_ACK, READY after, OK again when the relay goes away.

use nowconnect_relay::Prebound;
use nowconnect_testkit::health::{probe, wait_health};
use nowconnect_testkit::net::Reserved;
use nowconnect_testkit::target;
use nowconnect_testkit::wait::DEADLINE;

use crate::{agent_yaml, relay_yaml, start_agent, start_relay_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_tunnel() {
    let echo = target::echo().await;
    // The agent starts before any relay serves its port. The test holds the port meanwhile (the
    // agent's attempts wait in its listen backlog), and the relay starts on that very socket.
    let port = Reserved::new();
    let agent = start_agent(&agent_yaml(port.addr(), "v2", &[("echo", echo.addr)])).await;
    assert_eq!(probe(agent.health_addr()).await, "OK\n", "no relay yet: OK");

    let relay = start_relay_on(
        &relay_yaml(&["echo"]),
        Prebound {
            tunnel: Some(port.listener()),
            ..Prebound::default()
        },
    )
    .await;
    assert_eq!(relay.tunnel_addr(), port.addr());
    wait_health(agent.health_addr(), "READY\n", DEADLINE).await;

    drop(relay);
    wait_health(agent.health_addr(), "OK\n", DEADLINE).await;
}
