//! The `listeners` section: one TCP listener per connector, checked into [`ListenerConfig`]s.

use std::net::SocketAddr;

use ipnet::IpNet;

use super::collector::Collector;
use super::raw::RawListener;

/// One per-connector TCP listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Operator's name for the listener (`RelayHandle::listener_addr` looks it up).
    pub name: String,
    pub bind: SocketAddr,
    pub connector: String,
    /// Empty: every client address is allowed.
    pub allow_cidrs: Vec<IpNet>,
    /// Every connection starts with a PROXY protocol v1/v2 header from one of
    /// `security.trusted_proxies`; the address in it is the client's (allowlists, PDP, audit).
    pub proxy_protocol: bool,
    /// Client connections open at once on this listener from one source address (IPv4-mapped
    /// IPv6 counts as IPv4): `max_conn_per_source`, else `limits.max_conn_per_source`.
    pub max_conn_per_source: usize,
}

/// Every listener that is complete; each missing or bad key is reported into `c`. `caps` is
/// `limits`' `(max_conn_total, max_conn_per_source)`: the bound and the default of a listener's
/// own `max_conn_per_source`.
pub(super) fn validate_listeners(
    c: &mut Collector,
    raw: Vec<RawListener>,
    caps: (usize, usize),
) -> Vec<ListenerConfig> {
    let (max_conn_total, default_per_source) = caps;
    if raw.is_empty() {
        c.bad("listeners", "at least one listener is required");
    }
    let mut listeners = Vec::with_capacity(raw.len());
    for (i, l) in raw.into_iter().enumerate() {
        let key = format!("listeners[{i}]");
        let name = match l.name.map(|s| s.trim().to_owned()) {
            Some(n) if !n.is_empty() => Some(n),
            _ => {
                c.bad(format!("{key}.name"), "is required");
                None
            }
        };
        if let Some(n) = &name {
            if listeners.iter().any(|x: &ListenerConfig| &x.name == n) {
                c.bad(format!("{key}.name"), format!("`{n}` is used twice"));
            }
        }
        let bind = match l.bind.as_deref().map(str::trim) {
            None | Some("") => {
                c.bad(format!("{key}.bind"), "is required (e.g. 0.0.0.0:389)");
                None
            }
            Some(b) => match b.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    c.bad(
                        format!("{key}.bind"),
                        format!("`{b}` is not an IP:port address (e.g. 0.0.0.0:389)"),
                    );
                    None
                }
            },
        };
        let limits = nowconnect_shared::Limits::default();
        let connector = match l.connector.map(|s| s.trim().to_owned()) {
            Some(n) if !n.is_empty() => {
                if n.len() > limits.max_connector_len || n.chars().any(char::is_control) {
                    c.bad(
                        format!("{key}.connector"),
                        format!(
                            "must be at most {} bytes without control characters",
                            limits.max_connector_len
                        ),
                    );
                }
                Some(n)
            }
            _ => {
                c.bad(format!("{key}.connector"), "is required");
                None
            }
        };
        let allow_cidrs = c.cidrs(&format!("{key}.allow_cidrs"), &l.allow_cidrs);
        let max_conn_per_source = l.max_conn_per_source.unwrap_or(default_per_source);
        if l.max_conn_per_source.is_some()
            && (max_conn_per_source == 0 || max_conn_per_source > max_conn_total.max(1))
        {
            c.bad(
                format!("{key}.max_conn_per_source"),
                "must be between 1 and limits.max_conn_total",
            );
        }
        if let (Some(name), Some(bind), Some(connector)) = (name, bind, connector) {
            listeners.push(ListenerConfig {
                name,
                bind,
                connector,
                allow_cidrs,
                proxy_protocol: l.proxy_protocol.unwrap_or(false),
                max_conn_per_source,
            });
        }
    }
    // Two listeners on the same fixed address cannot both bind.
    for (i, a) in listeners.iter().enumerate() {
        if a.bind.port() != 0 && listeners[..i].iter().any(|b| b.bind == a.bind) {
            c.bad(
                format!("listeners[{i}].bind"),
                format!("{} is bound by an earlier listener", a.bind),
            );
        }
    }
    listeners
}
