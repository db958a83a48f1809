//! End-to-end tests: a real relay, a real agent and real targets on loopback, in one process.
//! One test binary (modules below) so the workspace links it once.
//!
//! Waits, targets, PKI, IdP and fixtures come from nowconnect-testkit. Starting a relay and an
//! agent needs their crates, which the testkit must not depend on, so those few helpers live
//! here, at the root of this binary.

mod agent_auth;
mod agent_metrics;
mod agent_reload;
mod dashboard;
mod demo;
mod edge;
mod failover;
mod ha;
mod health;
mod ldap;
mod ldap_failover;
mod ldap_fixture;
mod ldaps;
mod ldaps_sni;
mod lifecycle;
mod mesh;
mod monitoring;
mod portal;
mod streams;
mod targets;
mod transfer;
mod two_tunnels;
mod v1_raw_agent;

use std::net::SocketAddr;

use nowconnect_agent::{AgentConfig, AgentHandle};
use nowconnect_relay::{Prebound, RelayConfig, RelayHandle};
use nowconnect_testkit::health::wait_health;
use nowconnect_testkit::wait::DEADLINE;
use nowconnect_testkit::yaml;

/// Relay YAML with dev bypass, `/tunnel` on 127.0.0.1:0, one listener per connector (listener
/// name = connector name), keepalive every 5 s.
pub fn relay_yaml(connectors: &[&str]) -> String {
    let listeners: Vec<(&str, &str)> = connectors.iter().map(|c| (*c, *c)).collect();
    yaml::relay(
        &listeners,
        &format!(
            "  ping_interval_sec: 5\n  ping_timeout_sec: 5\n{}",
            yaml::DEV
        ),
    )
}

/// Starts a relay as the binary runs it: tunnels on two shards of their own (so the e2e tests
/// cover moving connections and client sockets between runtimes).
pub async fn start_relay(yaml: &str) -> RelayHandle {
    start_relay_on(yaml, Prebound::default()).await
}

/// [`start_relay`] on listeners the test bound already.
pub async fn start_relay_on(yaml: &str, prebound: Prebound) -> RelayHandle {
    let cfg = RelayConfig::from_yaml_str(yaml).expect("relay test config is valid");
    let shards = nowconnect_relay::Shards::start(2).expect("relay shards start");
    nowconnect_relay::start_with(cfg, Some(shards), prebound)
        .await
        .expect("relay starts")
}

/// A relay exporting `connectors`.
pub async fn relay(connectors: &[&str]) -> RelayHandle {
    start_relay(&relay_yaml(connectors)).await
}

/// Agent YAML: ws:// to `tunnel`, keepalive every 5 s, one target per connector.
pub fn agent_yaml(tunnel: SocketAddr, protocol: &str, targets: &[(&str, SocketAddr)]) -> String {
    yaml::agent_with(
        &format!("ws://{tunnel}/tunnel"),
        protocol,
        targets,
        "  ping_interval_sec: 5\n  ping_timeout_sec: 5\n",
        "",
    )
}

pub async fn start_agent(yaml: &str) -> AgentHandle {
    let cfg = AgentConfig::from_yaml_str(yaml).expect("agent test config is valid");
    nowconnect_agent::start(cfg).await.expect("agent starts")
}

/// Starts an agent for `targets` against `relay` and waits until it is READY.
pub async fn ready_agent(
    relay: &RelayHandle,
    protocol: &str,
    targets: &[(&str, SocketAddr)],
) -> AgentHandle {
    let agent = start_agent(&agent_yaml(relay.tunnel_addr(), protocol, targets)).await;
    wait_health(agent.health_addr(), "READY\n", DEADLINE).await;
    agent
}

/// The bound address of the relay's listener `name`.
pub fn listener(relay: &RelayHandle, name: &str) -> SocketAddr {
    relay
        .listener_addr(name)
        .unwrap_or_else(|| panic!("relay has a listener named {name}"))
}
