//! The reload diff: targets added / removed / changed, the exported set, keys needing a restart,
//! the log line, and the configuration that results.

use super::*;

fn cfg(connectors: &str, targets: &str, extra: &str) -> AgentConfig {
    let yaml = format!(
        "tunnel:\n  url: wss://relay.example.com/tunnel\n  agent_id: premise-01\n  \
         exported_connectors: [{connectors}]\n{extra}targets:\n{targets}"
    );
    AgentConfig::from_yaml_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

const TWO: &str = "  addomain: {host: 10.0.0.5, port: 389}\n  ldap: {host: 10.0.0.6, port: 389}\n";

#[test]
fn the_same_configuration_changes_nothing() {
    let a = cfg("addomain, ldap", TWO, "");
    let c = diff(&a, &a.clone());
    assert_eq!(c, Changes::default());
    assert!(c.is_empty() && !c.reannounce());
    assert_eq!(c.to_string(), "no change");
}

#[test]
fn added_removed_and_changed_targets_and_connectors() {
    let old = cfg("addomain, ldap", TWO, "");
    let new = cfg(
        "addomain, ldap2",
        "  addomain: {host: 10.0.0.5, port: 636}\n  ldap: {host: 10.0.0.6, port: 389}\n  \
         ldap2: {host: 10.0.0.7, port: 389}\n",
        "",
    );
    let c = diff(&old, &new);
    assert_eq!(c.targets_added, ["ldap2"]);
    assert_eq!(c.targets_removed, ["ldap"]);
    assert_eq!(c.targets_changed, ["addomain"]);
    assert_eq!(c.connectors_added, ["ldap2"]);
    assert_eq!(c.connectors_removed, ["ldap"]);
    assert!(c.needs_restart.is_empty(), "{:?}", c.needs_restart);
    assert!(c.reannounce());
    assert_eq!(
        c.to_string(),
        "targets +ldap2 -ldap ~addomain, connectors +ldap2 -ldap"
    );
    // The example of the docs.
    let two = cfg(
        "addomain, ldap, ldap2",
        "  addomain: {host: addc.corp, port: 389}\n  ldap: {host: 10.0.0.6, port: 389}\n  \
         ldap2: {host: 10.0.0.7, port: 389}\n",
        "",
    );
    assert_eq!(
        diff(&old, &two).to_string(),
        "targets +ldap2 ~addomain, connectors +ldap2"
    );
}

#[test]
fn a_changed_host_alone_is_no_reannounce() {
    let old = cfg("addomain, ldap", TWO, "");
    let new = cfg(
        "ldap, addomain",
        "  addomain: {host: 10.0.0.9, port: 389}\n  ldap: {host: 10.0.0.6, port: 389}\n",
        "",
    );
    let c = diff(&old, &new);
    assert_eq!(c.targets_changed, ["addomain"]);
    assert!(!c.reannounce(), "same set in another order: {c:?}");
    assert!(same_connectors(&old, &new));
    assert_eq!(c.to_string(), "targets ~addomain");
    // A target configured but not exported is not part of the table.
    let unexported = cfg(
        "addomain, ldap",
        "  addomain: {host: 10.0.0.5, port: 389}\n  ldap: {host: 10.0.0.6, port: 389}\n  \
         spare: {host: 10.0.0.8, port: 1}\n",
        "",
    );
    assert!(diff(&old, &unexported).is_empty());
}

#[test]
fn keys_fixed_at_start_are_named_and_keep_their_running_value() {
    let old = cfg("addomain", "  addomain: {host: 10.0.0.5, port: 389}\n", "");
    let new = AgentConfig::from_yaml_str(
        "tunnel:\n  url: wss://relay2.example.com/tunnel\n  agent_id: premise-02\n  \
         exported_connectors: [addomain, ldap]\n  auth:\n    token_file: /etc/nowconnect/t2\n\
         health:\n  port: 9999\nlimits:\n  connect_timeout_ms: 1234\nlogging:\n  level: debug\n\
         targets:\n  addomain: {host: 10.0.0.5, port: 389}\n  ldap: {host: 10.0.0.6, port: 389}\n",
    )
    .expect("valid");
    let c = diff(&old, &new);
    assert_eq!(
        c.needs_restart,
        [
            "tunnel.url",
            "tunnel.agent_id",
            "tunnel.auth.token_file",
            "health.port",
            "limits.connect_timeout_ms",
            "logging.level",
        ]
    );
    assert_eq!(c.to_string(), "targets +ldap, connectors +ldap");
    let running = apply(&old, new.clone());
    assert_eq!(running.targets, new.targets, "the target table applies");
    assert_eq!(running.url, old.url);
    assert_eq!(running.agent_id, old.agent_id);
    assert_eq!(running.token_file, old.token_file);
    assert_eq!(running.health_port, old.health_port);
    assert_eq!(running.limits, old.limits);
    assert_eq!(running.log_level, old.log_level);
    // Applied once, the same file is no change any more, but the fixed keys still differ.
    let again = diff(&running, &new);
    assert!(again.is_empty());
    assert_eq!(again.needs_restart.len(), 6);
}

#[test]
fn the_log_line_names_no_host_or_secret() {
    let old = cfg("addomain", "  addomain: {host: 10.0.0.5, port: 389}\n", "");
    let new = cfg(
        "addomain",
        "  addomain: {host: secret-host.corp, port: 3389}\n",
        "proxy:\n  https_proxy: http://user:hunter2@proxy.corp:3128\n",
    );
    let c = diff(&old, &new);
    let line = format!("{c} {:?}", c.needs_restart);
    for secret in ["secret-host", "3389", "hunter2", "user", "proxy.corp"] {
        assert!(!line.contains(secret), "{secret} in {line}");
    }
    assert_eq!(c.needs_restart, ["proxy.https_proxy"]);
}
