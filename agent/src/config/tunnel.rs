//! The `tunnel` section: the relay URL, the agent id, the protocol offered and the keepalive.
//! `tunnel.exported_connectors` is checked together with the `targets` it picks (module
//! `targets`), at its place in the section. `tunnel.auth` has its own module.

use std::time::Duration;

use super::check::{check_name, printable, secs_up_to_a_day};
use super::collector::Collector;
use super::layer::Layer;
use super::targets::{validate_targets, Targets};
use crate::url::RelayUrl;

/// Longest `tunnel.agent_id`, in bytes (the protocol's `Limits::max_agent_id_len`).
pub const MAX_AGENT_ID_LEN: usize = 128;

/// `tunnel.agent_id`: fixed capacity, validated to fit.
pub type AgentId = heapless::String<MAX_AGENT_ID_LEN>;

/// Which tunnel protocol the agent offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolChoice {
    /// Offer v2 and v1; the relay picks (v2 on our relay, v1 on a reference hub).
    Auto,
    /// Offer only v1 (JSON text frames).
    V1,
    /// Offer only v2 (binary frames with flow control).
    V2,
}

/// WebSocket keepalive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub ping_interval: Duration,
    /// No frame or pong for this long after a ping: the tunnel is dead.
    pub ping_timeout: Duration,
}

/// The checked `tunnel` keys; `url` is `None` only when a problem was reported for it.
pub(super) struct Tunnel {
    /// Empty only when a problem was reported for `tunnel.url`.
    pub(super) urls: Vec<RelayUrl>,
    /// 1, or up to `urls.len()` (never more than [`MAX_CONNECTIONS`]).
    pub(super) connections: usize,
    pub(super) agent_id: AgentId,
    pub(super) targets: Targets,
    pub(super) allow_insecure_ws: bool,
    pub(super) protocol: ProtocolChoice,
    pub(super) keepalive: Keepalive,
}

const URL: &str = "tunnel.url (NC_AGENT_URL, --url)";
/// Relays one agent may be given (`tunnel.url` and `tunnel.urls` together).
const MAX_URLS: usize = 8;
const CONNECTIONS: &str = "tunnel.connections (NC_AGENT_CONNECTIONS)";
/// Most tunnels one agent keeps at once (`tunnel.connections`).
pub const MAX_CONNECTIONS: usize = 2;
const AGENT_ID: &str = "tunnel.agent_id (NC_AGENT_ID, --agent-id)";
const INSECURE: &str = "tunnel.allow_insecure_ws (NC_ALLOW_INSECURE_WS, --allow-insecure-ws)";

pub(super) fn validate_tunnel(c: &mut Collector, l: &Layer) -> Tunnel {
    let allow_insecure_ws = l.allow_insecure_ws.unwrap_or(false);
    let mut urls = Vec::new();
    let raw = l.url.as_deref().map(str::trim).unwrap_or("");
    let entries: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        c.bad(URL, "required (e.g. wss://relay.example.com/tunnel)");
    } else if entries.len() > MAX_URLS {
        c.bad(
            URL,
            format!("at most {MAX_URLS} relays, got {}", entries.len()),
        );
    }
    for (i, entry) in entries.iter().take(MAX_URLS).enumerate() {
        // Name the entry when there are several: the operator sees which one is wrong.
        let key = if entries.len() > 1 {
            format!("{URL} entry {} (`{entry}`)", i + 1)
        } else {
            URL.to_owned()
        };
        match RelayUrl::parse(entry) {
            Ok(u) if !u.secure && !allow_insecure_ws => {
                c.bad(
                    &key,
                    format!(
                        "ws:// is not encrypted (token and traffic in clear); use wss:// or, \
                         for local development only, set {INSECURE} to true"
                    ),
                );
                urls.push(u);
            }
            Ok(u) => urls.push(u),
            Err(e) => c.bad(&key, e),
        }
    }
    if urls.len() != entries.len().min(MAX_URLS) {
        urls.clear();
    }
    let connections = match l.connections.unwrap_or(1) {
        0 => {
            c.bad(CONNECTIONS, "must be at least 1");
            1
        }
        n if n > MAX_CONNECTIONS => {
            c.bad(CONNECTIONS, format!("must be at most {MAX_CONNECTIONS}"));
            1
        }
        n if n > entries.len().max(1) => {
            c.bad(
                CONNECTIONS,
                format!(
                    "{n} tunnels need {n} relays in tunnel.url / tunnel.urls, got {}",
                    entries.len()
                ),
            );
            1
        }
        n => n,
    };

    let agent_id = l
        .agent_id
        .as_deref()
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let agent_id = match check_name(&agent_id, MAX_AGENT_ID_LEN) {
        // `check_name` bounded the length: the conversion cannot fail.
        Ok(()) => AgentId::try_from(agent_id.as_str()).unwrap_or_default(),
        Err(m) => {
            c.bad(AGENT_ID, m);
            AgentId::new()
        }
    };

    let targets = validate_targets(c, l);

    let protocol = match l.protocol.as_deref().map(|s| s.trim().to_ascii_lowercase()) {
        None => ProtocolChoice::Auto,
        Some(p) => match p.as_str() {
            "auto" | "" => ProtocolChoice::Auto,
            "v1" | "nowconnect.v1" => ProtocolChoice::V1,
            "v2" | "nowconnect.v2" => ProtocolChoice::V2,
            _ => {
                c.bad(
                    "tunnel.protocol (NC_PROTOCOL, --protocol)",
                    format!("`{}` is not one of auto, v1, v2", printable(&p)),
                );
                ProtocolChoice::Auto
            }
        },
    };

    let keepalive = Keepalive {
        ping_interval: secs_up_to_a_day(
            c,
            "tunnel.ping_interval_sec (NC_PING_INTERVAL_SEC)",
            l.ping_interval_sec,
            20,
        ),
        ping_timeout: secs_up_to_a_day(
            c,
            "tunnel.ping_timeout_sec (NC_PING_TIMEOUT_SEC)",
            l.ping_timeout_sec,
            20,
        ),
    };

    Tunnel {
        urls,
        connections,
        agent_id,
        targets,
        allow_insecure_ws,
        protocol,
        keepalive,
    }
}
