//! Shared by the portal and dashboard tests (`#[path]`-included: not a test target of its own).

use std::path::Path;

use nowconnect_relay::{RelayConfig, RelayHandle};
use nowconnect_testkit::idp::{agent_token, Idp, Key};
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::{upgrade, MockAgent};
use nowconnect_testkit::wait::{wait_for, DEADLINE};
use nowconnect_testkit::yaml;
use tokio::net::TcpStream;

/// A relay with JWT agents from `idp`, listeners `ldap` and `pg`, state in `state_dir`; ready
/// (keys loaded).
pub async fn portal_relay(idp: &Idp, state_dir: &Path, extra: &str) -> RelayHandle {
    log::init();
    let yaml = yaml::portal_relay(&idp.url(), state_dir, extra);
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid relay config");
    let r = nowconnect_relay::start(cfg).await.expect("relay starts");
    wait_for("JWKS loaded (/readyz)", DEADLINE, || r.is_ready()).await;
    r
}

/// An agent with a valid token for `agent_id`, serving `connectors`.
pub async fn agent(
    relay: &RelayHandle,
    key: &Key,
    agent_id: &str,
    connectors: &[&str],
) -> MockAgent<TcpStream> {
    let ws = upgrade(relay.tunnel_addr(), Some(&agent_token(key, agent_id)), None)
        .await
        .expect("upgrade accepted");
    let mut a = MockAgent::v2(ws);
    a.hello(agent_id, connectors).await;
    a
}
