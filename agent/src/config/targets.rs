//! The `targets` section and `tunnel.exported_connectors`: which connectors the agent exports
//! and where each one's streams go, in a table sized once by validation.

use std::sync::Arc;

use super::check::{check_name, printable};
use super::collector::Collector;
use super::env::target_env_names;
use super::layer::Layer;

/// Longest connector name, in bytes (the protocol's `Limits::max_connector_len`).
pub const MAX_CONNECTOR_LEN: usize = 64;
/// Most exported connectors (the protocol's `Limits::max_connectors`; a power of two, as the
/// fixed-capacity target table needs).
pub const MAX_CONNECTORS: usize = 64;

/// A connector name: fixed capacity, validated to fit.
pub type ConnectorName = heapless::String<MAX_CONNECTOR_LEN>;
/// Exported connectors and their targets, in HELLO order. Fixed capacity: the table is sized
/// once by validation and cannot grow afterwards. Targets are shared with the stream tasks
/// (`Arc`: opening a stream copies no host name).
pub type Targets = heapless::FnvIndexMap<ConnectorName, Arc<Target>, MAX_CONNECTORS>;

/// Where one connector's streams go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP address of the on-premise service.
    pub host: String,
    pub port: u16,
}

const CONNECTORS: &str = "tunnel.exported_connectors (NC_CONNECTORS, --connectors)";

/// Every exported connector with a complete target; each gap is reported into `c`.
pub(super) fn validate_targets(c: &mut Collector, l: &Layer) -> Targets {
    // Without an explicit list every configured target is exported.
    let connectors = l
        .connectors
        .clone()
        .unwrap_or_else(|| l.targets.keys().cloned().collect());
    if connectors.is_empty() {
        c.bad(CONNECTORS, "at least one connector is required");
    }
    if connectors.len() > MAX_CONNECTORS {
        c.bad(
            CONNECTORS,
            format!("{} connectors, at most {MAX_CONNECTORS}", connectors.len()),
        );
    }
    let mut targets = Targets::new();
    for (i, name) in connectors.iter().enumerate() {
        if let Err(m) = check_name(name, MAX_CONNECTOR_LEN) {
            c.bad(CONNECTORS, format!("connector `{}`: {m}", printable(name)));
            continue;
        }
        if connectors[..i].contains(name) {
            c.bad(CONNECTORS, format!("connector `{name}` is listed twice"));
            continue;
        }
        let t = l.targets.get(name).cloned().unwrap_or_default();
        let var = target_env_names(name)
            .into_iter()
            .last()
            .unwrap_or_default();
        // An IPv6 literal may be written in brackets, as in a URL.
        let host = t
            .host
            .map(|h| {
                let h = h.trim();
                match h.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
                    Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6.to_owned(),
                    _ => h.to_owned(),
                }
            })
            .filter(|h| !h.is_empty());
        match (host, t.port) {
            (Some(host), Some(port)) if port != 0 => {
                // Both fit: `check_name` bounded the name and the count was checked
                // above (past the capacity the problem is already reported).
                if let Ok(key) = ConnectorName::try_from(name.as_str()) {
                    let _ = targets.insert(key, Arc::new(Target { host, port }));
                }
            }
            (host, port) => {
                if host.is_none() {
                    c.bad(
                        format!("targets.{name}.host ({var}_HOST)"),
                        "required for an exported connector",
                    );
                }
                match port {
                    None => c.bad(
                        format!("targets.{name}.port ({var}_PORT)"),
                        "required for an exported connector",
                    ),
                    Some(0) => c.bad(
                        format!("targets.{name}.port ({var}_PORT)"),
                        "must be between 1 and 65535",
                    ),
                    Some(_) => {}
                }
            }
        }
    }
    targets
}
