//! The agent's health port: OK before HELLO_ACK, READY after, OK again when the relay goes away.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_tunnel() {
    let (echo, _t) = echo_server().await;
    // The agent starts before any relay exists on its port.
    let port = closed_port().await.port();
    let yaml = relay_yaml(port, &["echo"]);
    let agent_cfg = agent_yaml(
        ([127, 0, 0, 1], port).into(),
        "premise-01",
        "v2",
        &[("echo", echo)],
    );
    let agent = start_agent(&agent_cfg).await;
    assert_eq!(
        health(agent.health_addr()).await,
        "OK\n",
        "no relay yet: OK"
    );

    let relay = start_relay(&yaml).await;
    wait_health(agent.health_addr(), "READY\n").await;

    drop(relay);
    wait_health(agent.health_addr(), "OK\n").await;
}
