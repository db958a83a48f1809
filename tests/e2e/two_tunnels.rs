//! `tunnel.connections: 2`: one agent keeps tunnels to two relays of its list at once, both
//! serve streams, and losing one relay leaves the other serving while the lost tunnel comes
//! back (on a relay no other tunnel uses, or on the same one when it returns).

use std::net::SocketAddr;

use nowconnect_relay::{Prebound, RelayHandle};
use nowconnect_testkit::health::{probe, wait_health};
use nowconnect_testkit::net::{self, Reserved};
use nowconnect_testkit::target;
use nowconnect_testkit::wait::{wait_for, within, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{agent_yaml, listener, relay_yaml, start_agent, start_relay_on};

async fn echo_once(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = net::connect(addr).await;
    s.write_all(payload).await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    within("the echo", DEADLINE, s.read_to_end(&mut back))
        .await
        .expect("read");
    back
}

/// A relay exporting `echo` whose `/tunnel` port is `port`'s (held across restarts).
async fn relay_on(port: &Reserved) -> RelayHandle {
    let prebound = Prebound {
        tunnel: Some(port.listener()),
        ..Prebound::default()
    };
    start_relay_on(&relay_yaml(&["echo"]), prebound).await
}

/// Agent YAML for `urls` (first one as `url`, the rest as `urls`) with `connections`.
fn agent_for(urls: &[SocketAddr], connections: usize, echo: SocketAddr) -> String {
    let yaml = agent_yaml(urls[0], "v2", &[("echo", echo)]);
    let first = format!("  url: ws://{}/tunnel\n", urls[0]);
    let rest: Vec<String> = urls[1..]
        .iter()
        .map(|a| format!("'ws://{a}/tunnel'"))
        .collect();
    let out = yaml.replace(
        &first,
        &format!(
            "{first}  urls: [{}]\n  connections: {connections}\n",
            rest.join(", ")
        ),
    );
    assert!(out.contains("connections:"), "{out}");
    out
}

async fn wait_agents(relay: &RelayHandle, what: &str, n: usize) {
    wait_for(what, DEADLINE, || relay.agents_for("echo") == n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tunnels_serve_from_two_relays_and_one_survives_the_other() {
    let echo = target::echo().await;
    let (port_a, port_b) = (Reserved::new(), Reserved::new());
    let a = relay_on(&port_a).await;
    let b = relay_on(&port_b).await;
    let agent = start_agent(&agent_for(&[port_a.addr(), port_b.addr()], 2, echo.addr)).await;
    wait_agents(&a, "the agent on relay A", 1).await;
    wait_agents(&b, "the agent on relay B", 1).await;
    wait_health(agent.health_addr(), "READY\n", DEADLINE).await;
    // HELLO on both, and both serve streams.
    assert_eq!(echo_once(listener(&a, "echo"), b"via a").await, b"via a");
    assert_eq!(echo_once(listener(&b, "echo"), b"via b").await, b"via b");

    // Relay A dies (like kill -9). B keeps serving and the agent stays READY: one of two
    // tunnels is enough.
    let ready_lost = agent.ready_lost();
    drop(a);
    assert_eq!(probe(agent.health_addr()).await, "READY\n");
    assert_eq!(
        echo_once(listener(&b, "echo"), b"still b").await,
        b"still b"
    );
    assert_eq!(b.agents_for("echo"), 1);

    // A comes back on its port: the lost tunnel returns to it (B is taken by the other one).
    let a = relay_on(&port_a).await;
    wait_agents(&a, "the agent back on relay A", 1).await;
    assert_eq!(
        echo_once(listener(&a, "echo"), b"a again").await,
        b"a again"
    );
    assert_eq!(b.agents_for("echo"), 1, "B still holds exactly one tunnel");
    assert_eq!(
        agent.ready_lost(),
        ready_lost,
        "health never turned OK while B served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tunnel_moves_to_a_relay_no_other_tunnel_uses() {
    let echo = target::echo().await;
    let ports = [Reserved::new(), Reserved::new(), Reserved::new()];
    let a = relay_on(&ports[0]).await;
    let b = relay_on(&ports[1]).await;
    let c = relay_on(&ports[2]).await;
    let addrs: Vec<SocketAddr> = ports.iter().map(Reserved::addr).collect();
    let agent = start_agent(&agent_for(&addrs, 2, echo.addr)).await;
    // Slot 1 starts on the first relay, slot 2 on the second; the third is spare.
    wait_agents(&a, "a tunnel on relay A", 1).await;
    wait_agents(&b, "a tunnel on relay B", 1).await;
    assert_eq!(c.agents_for("echo"), 0);

    drop(a);
    // The lost tunnel skips B (the other tunnel's) for C.
    wait_agents(&c, "the lost tunnel on relay C", 1).await;
    assert_eq!(echo_once(listener(&c, "echo"), b"via c").await, b"via c");
    assert_eq!(b.agents_for("echo"), 1, "B holds one tunnel, not both");
    wait_health(agent.health_addr(), "READY\n", DEADLINE).await;
}
