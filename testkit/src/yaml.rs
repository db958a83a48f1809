//! Configuration texts for the relays and agents the tests start, as YAML strings (this crate
//! does not depend on the relay or agent crates, so it cannot build their config types). Every
//! address is on loopback and every port is 0, except the targets' and the relay's the test owns.

use std::net::SocketAddr;
use std::path::Path;

/// The relay's dev bypass: agents on loopback connect without a token.
pub const DEV: &str = "security:\n  dev_bypass: true\n";

/// The agent's `limits` in [`agent`]: quick reconnects, so tests that drop a tunnel go on fast.
pub const AGENT_LIMITS: &str =
    "limits: {connect_timeout_ms: 2000, reconnect_initial_ms: 50, reconnect_max_ms: 200}\n";

/// Relay YAML: one listener per `(name, connector)` on 127.0.0.1:0, `/tunnel` on 127.0.0.1:0
/// as the last section, then `extra` (whose indented lines continue `tunnel:`).
pub fn relay(listeners: &[(&str, &str)], extra: &str) -> String {
    let mut y = String::from("listeners:\n");
    for (name, connector) in listeners {
        y.push_str(&format!(
            "  - name: {name}\n    bind: 127.0.0.1:0\n    connector: {connector}\n"
        ));
    }
    y.push_str("tunnel:\n  host: 127.0.0.1\n  port: 0\n");
    y.push_str(extra);
    y
}

/// Relay YAML of the portal tests: listeners `ldap` (connector `addomain`) and `pg` (connector
/// `db`), agents authenticated by JWTs from `jwks_url` with issuer [`crate::idp::ISSUER`] (no
/// cool-down), policies and the block list kept in `state_dir`, then `extra`.
pub fn portal_relay(jwks_url: &str, state_dir: &Path, extra: &str) -> String {
    relay(
        &[("ldap", "addomain"), ("pg", "db")],
        &format!(
            "security:\n  jwks_url: {jwks_url}\n  issuer: {}\n  auth_failure_limit: 100000\n\
             state_dir: {}\n{extra}",
            crate::idp::ISSUER,
            state_dir.display()
        ),
    )
}

/// Agent YAML for the relay at `url` (`ws://` allowed): agent id `premise-01`, `protocol`
/// (v1, v2, auto), one connector per target, health on 127.0.0.1:0, [`AGENT_LIMITS`].
pub fn agent(url: &str, protocol: &str, targets: &[(&str, SocketAddr)]) -> String {
    let names: Vec<&str> = targets.iter().map(|(n, _)| *n).collect();
    let mut y = format!(
        "tunnel:\n  url: {url}\n  agent_id: premise-01\n  allow_insecure_ws: true\n  protocol: {protocol}\n  exported_connectors: [{}]\n",
        names.join(", ")
    );
    y.push_str("targets:\n");
    for (name, addr) in targets {
        y.push_str(&format!(
            "  {name}: {{host: '{}', port: {}}}\n",
            addr.ip(),
            addr.port()
        ));
    }
    y.push_str("health: {host: 127.0.0.1, port: 0}\n");
    y.push_str(AGENT_LIMITS);
    y
}

/// [`agent`] with `tunnel_lines` at the top of `tunnel:` (indented by two spaces) and `extra`
/// (top-level sections) appended.
pub fn agent_with(
    url: &str,
    protocol: &str,
    targets: &[(&str, SocketAddr)],
    tunnel_lines: &str,
    extra: &str,
) -> String {
    let y = under(&agent(url, protocol, targets), "tunnel", tunnel_lines);
    format!("{y}{extra}")
}

/// [`agent`] YAML with connector `name`'s target replaced by several `hosts` on `port`, tried
/// by `strategy` (`failover`, `round_robin`). Panics if `yaml` has no target `name`.
pub fn with_hosts(
    yaml: &str,
    name: &str,
    hosts: &[std::net::IpAddr],
    port: u16,
    strategy: &str,
) -> String {
    let head = format!("  {name}: {{host: ");
    let start = yaml
        .find(&head)
        .unwrap_or_else(|| panic!("no target `{name}` in\n{yaml}"));
    let end = yaml[start..]
        .find('\n')
        .map_or(yaml.len(), |i| start + i + 1);
    let list: Vec<String> = hosts.iter().map(|h| format!("'{h}'")).collect();
    format!(
        "{}  {name}: {{hosts: [{}], port: {port}, strategy: {strategy}}}\n{}",
        &yaml[..start],
        list.join(", "),
        &yaml[end..]
    )
}

/// `yaml` with `lines` inserted at the top of section `section` (e.g. `"tunnel"`), whose lines
/// are indented by two spaces. Panics if there is no such section.
pub fn under(yaml: &str, section: &str, lines: &str) -> String {
    let head = format!("{section}:\n");
    let at = if yaml.starts_with(&head) {
        0
    } else {
        yaml.find(&format!("\n{head}"))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("no `{section}:` section in\n{yaml}"))
    };
    let split = at + head.len();
    format!("{}{lines}{}", &yaml[..split], &yaml[split..])
}

/// An `ha:` section for the HA tests: `mode` (shadow, active), this relay's `replica_id`, the
/// registry at `redis_url`, the shortest presence TTL (3 s), a mesh without mTLS (loopback),
/// and `mesh_lines` (indented by four spaces) added to `mesh:`.
pub fn ha(mode: &str, replica_id: &str, redis_url: &str, mesh_lines: &str) -> String {
    format!(
        "ha:\n  mode: {mode}\n  replica_id: {replica_id}\n  redis_url: \"{redis_url}\"\n  \
         presence_ttl_sec: 3\n  mesh:\n    require_mtls: false\n{mesh_lines}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_inserts_at_the_top_of_the_section() {
        let y = relay(&[("ldap", "addomain")], DEV);
        let t = under(&y, "tunnel", "  ping_interval_sec: 1\n");
        assert!(
            t.contains("tunnel:\n  ping_interval_sec: 1\n  host: 127.0.0.1\n"),
            "{t}"
        );
        let a = agent("ws://127.0.0.1:1/tunnel", "v2", &[]);
        assert!(under(&a, "tunnel", "  x: 1\n").starts_with("tunnel:\n  x: 1\n  url:"));
    }
}
