//! The `targets` section and `tunnel.exported_connectors`: which connectors the agent exports
//! and where each one's streams go, in a table sized once by validation.

use std::sync::Arc;
use std::time::Instant;

pub use crate::targets::{Strategy, Target, TargetSet, MAX_HOSTS};

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
/// once by validation and cannot grow afterwards. Target sets (with their health) are shared
/// with the stream tasks (`Arc`: opening a stream copies no host name).
pub type Targets = heapless::FnvIndexMap<ConnectorName, Arc<TargetSet>, MAX_CONNECTORS>;

/// Longest host name (DNS's limit).
const MAX_HOST_LEN: usize = 253;

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
        if let Some(target) = validate_target(c, name, &var, t) {
            // Both fit: `check_name` bounded the name and the count was checked above (past
            // the capacity the problem is already reported).
            if let Ok(key) = ConnectorName::try_from(name.as_str()) {
                let set = Arc::new(TargetSet::new(target, Instant::now()));
                let _ = targets.insert(key, set);
            }
        }
    }
    targets
}

/// One connector's target, or `None` with every problem reported.
fn validate_target(
    c: &mut Collector,
    name: &str,
    var: &str,
    t: super::layer::PartialTarget,
) -> Option<Target> {
    let host_key = format!("targets.{name}.host ({var}_HOST)");
    let hosts_key = format!("targets.{name}.hosts ({var}_HOST)");
    let port_key = format!("targets.{name}.port ({var}_PORT)");
    let strategy_key = format!("targets.{name}.strategy ({var}_STRATEGY)");
    let before = c.len();
    let (key, raw) = match (t.host, t.hosts) {
        (Some(_), Some(_)) => {
            c.bad(
                format!("targets.{name}.host / targets.{name}.hosts"),
                "set one of them, not both",
            );
            (hosts_key, Vec::new())
        }
        (Some(h), None) if !h.trim().is_empty() => (host_key, vec![h]),
        (None, Some(list)) if !list.is_empty() => (hosts_key, list),
        (_, Some(_)) => {
            c.bad(hosts_key.as_str(), "must list at least one host");
            (hosts_key, Vec::new())
        }
        (_, None) => {
            c.bad(host_key.as_str(), "required for an exported connector");
            (host_key, Vec::new())
        }
    };
    if raw.len() > MAX_HOSTS {
        c.bad(
            key.as_str(),
            format!("{} hosts, at most {MAX_HOSTS}", raw.len()),
        );
    }
    let mut hosts = Vec::with_capacity(raw.len().min(MAX_HOSTS));
    for h in raw.iter().take(MAX_HOSTS) {
        match normalize_host(h) {
            Err(m) => c.bad(key.as_str(), m),
            Ok(h) if hosts.iter().any(|o: &String| o.eq_ignore_ascii_case(&h)) => {
                c.bad(key.as_str(), format!("host `{h}` is listed twice"));
            }
            Ok(h) => hosts.push(h),
        }
    }
    match t.port {
        None => c.bad(port_key.as_str(), "required for an exported connector"),
        Some(0) => c.bad(port_key.as_str(), "must be between 1 and 65535"),
        Some(_) => {}
    }
    let strategy = match t.strategy.as_deref().map(Strategy::parse) {
        None => Strategy::Failover,
        Some(Ok(s)) => s,
        Some(Err(m)) => {
            c.bad(strategy_key.as_str(), m);
            Strategy::Failover
        }
    };
    (c.len() == before).then(|| Target {
        hosts,
        port: t.port.unwrap_or_default(),
        strategy,
    })
}

/// A host as dialed: trimmed, an IPv6 literal without the brackets a URL would have.
fn normalize_host(h: &str) -> Result<String, String> {
    let h = h.trim();
    let h = match h.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
        Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6,
        _ => h,
    };
    if h.is_empty() {
        return Err("a host must not be empty".into());
    }
    if h.len() > MAX_HOST_LEN {
        return Err(format!(
            "a host is {} bytes long, at most {MAX_HOST_LEN}",
            h.len()
        ));
    }
    if h.chars()
        .any(|ch| ch.is_control() || ch.is_whitespace() || ch == ',')
    {
        return Err(format!(
            "host `{}` must not contain spaces, commas or control characters",
            printable(h)
        ));
    }
    Ok(h.to_owned())
}
