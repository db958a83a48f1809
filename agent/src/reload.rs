//! Configuration reload (SIGHUP): what differs between the running configuration and a newly
//! loaded one ([`diff`]), and the configuration the agent runs with afterwards ([`apply`]).
//!
//! Pure: no I/O, no clock. The caller loads the new configuration exactly as at start-up
//! (flags > env > `premise.yaml` > defaults); an invalid one never reaches this module, so a
//! refused reload changes nothing.
//!
//! What a reload applies: the target table (`targets`, `tunnel.exported_connectors`). New streams
//! look their target up in the new table; streams already open keep their socket. A change of the
//! exported set is announced by the tunnel supervisor with a new HELLO on a new tunnel, opened
//! before the old one is retired (the token refresh's make-before-break). Everything else (relay
//! URLs, proxy, TLS, token file, health and metrics addresses, limits, keepalive, logging) is
//! fixed at start: a change is reported as needing a restart, by key, and the running value
//! stays, so nothing is half-applied.

use std::fmt;

use crate::config::AgentConfig;

/// What a reload changes, by connector name and by key (never a value: no host, no secret).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Connectors whose target is new (`targets +name`).
    pub targets_added: Vec<String>,
    /// Connectors whose target is gone (`targets -name`).
    pub targets_removed: Vec<String>,
    /// Connectors whose host or port changed (`targets ~name`).
    pub targets_changed: Vec<String>,
    /// Connectors newly exported: announced with a new HELLO (`connectors +name`).
    pub connectors_added: Vec<String>,
    /// Connectors no longer exported (`connectors -name`).
    pub connectors_removed: Vec<String>,
    /// Keys whose new value is ignored until a restart, in check order.
    pub needs_restart: Vec<&'static str>,
}

impl Changes {
    /// True when the exported set changed, so the relay must get a new HELLO.
    pub fn reannounce(&self) -> bool {
        !self.connectors_added.is_empty() || !self.connectors_removed.is_empty()
    }

    /// True when the reload applies nothing (keys needing a restart aside).
    pub fn is_empty(&self) -> bool {
        self.targets_added.is_empty()
            && self.targets_removed.is_empty()
            && self.targets_changed.is_empty()
            && !self.reannounce()
    }
}

/// `targets +ldap2 ~addomain, connectors +ldap2`, or `no change`.
impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no change");
        }
        let part = |f: &mut fmt::Formatter<'_>,
                    first: &mut bool,
                    what: &str,
                    lists: [(&str, &[String]); 3]|
         -> fmt::Result {
            if lists.iter().all(|(_, l)| l.is_empty()) {
                return Ok(());
            }
            if !*first {
                f.write_str(", ")?;
            }
            *first = false;
            f.write_str(what)?;
            for (sign, names) in lists {
                for n in names {
                    write!(f, " {sign}{n}")?;
                }
            }
            Ok(())
        };
        let mut first = true;
        part(
            f,
            &mut first,
            "targets",
            [
                ("+", &self.targets_added),
                ("-", &self.targets_removed),
                ("~", &self.targets_changed),
            ],
        )?;
        part(
            f,
            &mut first,
            "connectors",
            [
                ("+", &self.connectors_added),
                ("-", &self.connectors_removed),
                ("", &[]),
            ],
        )
    }
}

/// What changes from `old` to `new`.
pub fn diff(old: &AgentConfig, new: &AgentConfig) -> Changes {
    let mut c = Changes::default();
    for (name, t) in &new.targets {
        match old.targets.get(name) {
            None => c.targets_added.push(name.to_string()),
            Some(o) if o != t => c.targets_changed.push(name.to_string()),
            Some(_) => {}
        }
    }
    for name in old.targets.keys() {
        if !new.targets.contains_key(name) {
            c.targets_removed.push(name.to_string());
        }
    }
    // The target table holds exactly the exported connectors.
    c.connectors_added = c.targets_added.clone();
    c.connectors_removed = c.targets_removed.clone();
    c.needs_restart = fixed_keys(old, new);
    c
}

/// The configuration after the reload: `old` with `new`'s target table (see the module docs).
pub fn apply(old: &AgentConfig, new: AgentConfig) -> AgentConfig {
    let mut targets = new.targets;
    // An unchanged target keeps its set, so its health (and the streams sharing it) carry on.
    for (name, set) in targets.iter_mut() {
        if let Some(o) = old.targets.get(name).filter(|o| *o == set) {
            *set = o.clone();
        }
    }
    AgentConfig {
        targets,
        ..old.clone()
    }
}

/// True when both export the same connectors (in any order).
pub(crate) fn same_connectors(a: &AgentConfig, b: &AgentConfig) -> bool {
    a.targets.len() == b.targets.len() && a.targets.keys().all(|k| b.targets.contains_key(k))
}

/// Keys fixed at start whose value differs.
fn fixed_keys(old: &AgentConfig, new: &AgentConfig) -> Vec<&'static str> {
    let (o, n) = (old, new);
    let (ol, nl) = (&o.limits, &n.limits);
    let checks: [(bool, &'static str); 26] = [
        (o.urls != n.urls || o.url != n.url, "tunnel.url"),
        (o.connections != n.connections, "tunnel.connections"),
        (o.agent_id != n.agent_id, "tunnel.agent_id"),
        (o.token_file != n.token_file, "tunnel.auth.token_file"),
        (
            o.token_refresh_before != n.token_refresh_before,
            "tunnel.auth.refresh_before_exp_sec",
        ),
        (
            o.tls.client_cert != n.tls.client_cert,
            "tunnel.auth.client_cert_file",
        ),
        (o.tls.ca_bundle != n.tls.ca_bundle, "proxy.ca_bundle"),
        (
            o.tls.ca_bundle_only != n.tls.ca_bundle_only,
            "proxy.ca_bundle_only",
        ),
        (o.proxy != n.proxy, "proxy.https_proxy"),
        (o.no_proxy != n.no_proxy, "proxy.no_proxy"),
        (
            o.allow_insecure_ws != n.allow_insecure_ws,
            "tunnel.allow_insecure_ws",
        ),
        (o.protocol != n.protocol, "tunnel.protocol"),
        (
            o.keepalive.ping_interval != n.keepalive.ping_interval,
            "tunnel.ping_interval_sec",
        ),
        (
            o.keepalive.ping_timeout != n.keepalive.ping_timeout,
            "tunnel.ping_timeout_sec",
        ),
        (o.health_host != n.health_host, "health.host"),
        (o.health_port != n.health_port, "health.port"),
        (
            o.metrics_addr.map(|a| a.ip()) != n.metrics_addr.map(|a| a.ip()),
            "metrics.host",
        ),
        (
            o.metrics_addr.map(|a| a.port()) != n.metrics_addr.map(|a| a.port()),
            "metrics.port",
        ),
        (
            ol.connect_timeout != nl.connect_timeout,
            "limits.connect_timeout_ms",
        ),
        (
            ol.handshake_timeout != nl.handshake_timeout,
            "limits.handshake_timeout_ms",
        ),
        (
            ol.queue_depth_per_cid != nl.queue_depth_per_cid,
            "limits.queue_depth_per_cid",
        ),
        (
            ol.queue_bytes_per_cid != nl.queue_bytes_per_cid,
            "limits.queue_bytes_per_cid",
        ),
        (
            ol.reconnect_initial != nl.reconnect_initial,
            "limits.reconnect_initial_ms",
        ),
        (
            ol.reconnect_max != nl.reconnect_max,
            "limits.reconnect_max_ms",
        ),
        (o.log_level != n.log_level, "logging.level"),
        (o.log_format != n.log_format, "logging.format"),
    ];
    checks
        .into_iter()
        .filter_map(|(changed, key)| changed.then_some(key))
        .collect()
}

#[cfg(test)]
mod tests;
