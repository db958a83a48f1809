//! The `listeners` section: TCP listeners, each for one connector or routing by TLS server
//! name (`route_by: sni`, table in [`super::sni_routes`]), checked into [`ListenerConfig`]s.

use std::net::SocketAddr;

use ipnet::IpNet;

use super::collector::Collector;
use super::raw::RawListener;
use super::sni_routes::{validate_sni, Routing};

/// One TCP listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Operator's name for the listener (`RelayHandle::listener_addr` looks it up).
    pub name: String,
    pub bind: SocketAddr,
    /// Where its clients go: one connector, or by the TLS server name they ask for.
    pub routing: Routing,
    /// Empty: every client address is allowed.
    pub allow_cidrs: Vec<IpNet>,
    /// Every connection starts with a PROXY protocol v1/v2 header from one of
    /// `security.trusted_proxies`; the address in it is the client's (allowlists, PDP, audit).
    pub proxy_protocol: bool,
    /// Client connections open at once on this listener from one source address (IPv4-mapped
    /// IPv6 counts as IPv4): `max_conn_per_source`, else `limits.max_conn_per_source`.
    pub max_conn_per_source: usize,
}

impl ListenerConfig {
    /// Every connector a client of this listener may be routed to.
    pub fn connectors(&self) -> Vec<&str> {
        match &self.routing {
            Routing::Connector(c) => vec![c.as_str()],
            Routing::Sni(t) => t.connectors().into_iter().collect(),
        }
    }

    /// How clients are routed: `connector` (one) or `sni` (by the ClientHello's server name).
    pub fn route_by(&self) -> &'static str {
        match &self.routing {
            Routing::Connector(_) => "connector",
            Routing::Sni(_) => "sni",
        }
    }

    /// The `connector` label of what happens before a client is routed (allowlist, caps,
    /// PROXY header, accept errors): the connector, or an sni listener's own name.
    pub fn label(&self) -> &str {
        match &self.routing {
            Routing::Connector(c) => c,
            Routing::Sni(_) => &self.name,
        }
    }
}

/// Checks a connector name at `key` (as `connector:`, a route's target or `default`).
fn connector_name(c: &mut Collector, key: String, raw: &str) -> Option<String> {
    let limits = nowconnect_shared::Limits::default();
    let n = raw.trim();
    if n.is_empty() {
        c.bad(key, "is required");
        return None;
    }
    if n.len() > limits.max_connector_len || n.chars().any(char::is_control) {
        c.bad(
            key,
            format!(
                "must be at most {} bytes without control characters",
                limits.max_connector_len
            ),
        );
    }
    Some(n.to_owned())
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
    for (i, mut l) in raw.into_iter().enumerate() {
        let key = format!("listeners[{i}]");
        let name = match l.name.take().map(|s| s.trim().to_owned()) {
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
        let routing = routing(c, &key, &mut l);
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
        if let (Some(name), Some(bind), Some(routing)) = (name, bind, routing) {
            listeners.push(ListenerConfig {
                name,
                bind,
                routing,
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

/// `connector`, or `route_by: sni` with its `routes`, `default` and `sni_peek_timeout_ms`.
fn routing(c: &mut Collector, key: &str, l: &mut RawListener) -> Option<Routing> {
    let sni_keys = [
        ("routes", l.routes.is_some()),
        ("default", l.default.is_some()),
        ("sni_peek_timeout_ms", l.sni_peek_timeout_ms.is_some()),
    ];
    match l.route_by.as_deref().map(str::trim) {
        None | Some("connector") => {
            for (k, set) in sni_keys {
                if set {
                    c.bad(format!("{key}.{k}"), "is only read with route_by: sni");
                }
            }
            match l.connector.take() {
                Some(n) => {
                    connector_name(c, format!("{key}.connector"), &n).map(Routing::Connector)
                }
                None => {
                    c.bad(format!("{key}.connector"), "is required");
                    None
                }
            }
        }
        Some("sni") => {
            if l.connector.is_some() {
                c.bad(
                    format!("{key}.connector"),
                    "and route_by: sni are exclusive: name the connectors in `routes` (and `default`)",
                );
            }
            let raw = (l.routes.take(), l.default.take(), l.sni_peek_timeout_ms);
            validate_sni(c, key, raw, &connector_name).map(Routing::Sni)
        }
        Some(other) => {
            c.bad(
                format!("{key}.route_by"),
                format!("`{other}` is not one of: connector, sni"),
            );
            None
        }
    }
}
