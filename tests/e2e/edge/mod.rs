//! The agent's edge transport against the real relay: a real forward proxy (tinyproxy) with and
//! without Basic auth, NO_PROXY, the relay's in-process TLS with a private CA (bundle, bundle
//! only), mTLS with the relay's `client_ca`, token rotation with traffic flowing, and the relay
//! behind a real HAProxy sending PROXY protocol v2.
//!
//! The PKI, tinyproxy, HAProxy and the waits come from nowconnect-testkit; what is here builds and starts
//! relays and agents the way these tests configure them.

mod haproxy;
mod mtls;
mod proxy;
mod tls;
mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use nowconnect_agent::config::Layer;
use nowconnect_agent::{AgentConfig, AgentHandle};
use nowconnect_relay::RelayHandle;
use nowconnect_testkit::io;
use nowconnect_testkit::temp;
use nowconnect_testkit::wait::{wait_line, DEADLINE};
use nowconnect_testkit::yaml;

use crate::{listener, relay_yaml};

/// Relay YAML (dev bypass) with one listener per connector; `tls` adds `tunnel.tls` lines
/// (certificate, key and optional client CA files).
pub fn relay_yaml_tls(connectors: &[&str], tls: Option<(&Path, &Path, Option<&Path>)>) -> String {
    let y = relay_yaml(connectors);
    match tls {
        None => y,
        Some((cert, key, client_ca)) => {
            let mut t = format!(
                "  tls:\n    cert_file: '{}'\n    key_file: '{}'\n",
                cert.display(),
                key.display()
            );
            if let Some(ca) = client_ca {
                t.push_str(&format!("    client_ca: '{}'\n", ca.display()));
            }
            yaml::under(&y, "tunnel", &t)
        }
    }
}

/// Agent YAML for `url` (ws:// or wss://) with an echo connector; `extra` is appended.
pub fn agent_yaml_url(url: &str, echo: SocketAddr, extra: &str) -> String {
    yaml::agent_with(url, "v2", &[("echo", echo)], "", extra)
}

/// Loads agent config from YAML plus an environment given as pairs (never the process env).
pub fn agent_config(yaml: &str, env: &[(&str, &str)], dir: impl AsRef<Path>) -> AgentConfig {
    let path = temp::write(dir.as_ref(), "premise.yaml", yaml);
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    AgentConfig::load(Layer::default(), Some(&path), &env).expect("agent config")
}

pub async fn start(cfg: AgentConfig) -> AgentHandle {
    nowconnect_agent::start(cfg).await.expect("agent starts")
}

/// Waits until the agent's last error is one line containing every one of `parts`.
pub async fn wait_error(agent: &AgentHandle, parts: &[&str]) -> String {
    wait_line(DEADLINE, parts, || agent.last_error()).await
}

/// A client connection through the relay's listener `name` to the echo target: `data` must
/// come back byte-exact.
pub async fn echo_through(relay: &RelayHandle, name: &str, data: &[u8]) {
    io::echo_through(listener(relay, name), data, DEADLINE).await;
}
