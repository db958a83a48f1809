//! Tests of the fixed capacities: agent id, connector names and the target table.

use nowconnect_shared::Limits;

use crate::config::{AgentConfig, MAX_AGENT_ID_LEN, MAX_CONNECTORS, MAX_CONNECTOR_LEN};

#[test]
fn fixed_capacities_match_the_protocol_limits() {
    let l = Limits::default();
    assert_eq!(MAX_AGENT_ID_LEN, l.max_agent_id_len);
    assert_eq!(MAX_CONNECTOR_LEN, l.max_connector_len);
    assert_eq!(MAX_CONNECTORS, l.max_connectors);
}

/// YAML with `n` connectors named by `name(i)`, each with a target.
fn yaml_with(agent_id: &str, n: usize, name: impl Fn(usize) -> String) -> String {
    let mut y = format!("tunnel: {{url: 'wss://r/t', agent_id: '{agent_id}'}}\ntargets:\n");
    for i in 0..n {
        y.push_str(&format!("  '{}': {{host: h, port: {}}}\n", name(i), i + 1));
    }
    y
}

#[test]
fn tables_fill_to_capacity_exactly() {
    let id = "a".repeat(MAX_AGENT_ID_LEN);
    let long = |i: usize| format!("{i:0>width$}", width = MAX_CONNECTOR_LEN);
    let c = AgentConfig::from_yaml_str(&yaml_with(&id, MAX_CONNECTORS, long)).expect("valid");
    assert_eq!(c.agent_id.as_str(), id);
    assert_eq!(c.connectors().count(), MAX_CONNECTORS);
    assert_eq!(c.target(&long(7)).expect("target").port, 8);
    // Longer than any exported name: not found, and no panic.
    assert!(c.target(&"x".repeat(MAX_CONNECTOR_LEN + 1)).is_none());
}

#[test]
fn exceeding_a_capacity_is_a_one_line_error_naming_the_key() {
    let cases = [
        (
            yaml_with(&"a".repeat(MAX_AGENT_ID_LEN + 1), 1, |i| format!("c{i}")),
            "tunnel.agent_id",
            "129 bytes long, at most 128",
        ),
        (
            yaml_with("a", 1, |_| "n".repeat(MAX_CONNECTOR_LEN + 1)),
            "tunnel.exported_connectors",
            "65 bytes long, at most 64",
        ),
        (
            yaml_with("a", MAX_CONNECTORS + 1, |i| format!("c{i}")),
            "tunnel.exported_connectors",
            "65 connectors, at most 64",
        ),
    ];
    for (yaml, key, message) in cases {
        let e = AgentConfig::from_yaml_str(&yaml).expect_err("over capacity");
        let line = e.to_string();
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(
            e.problems()
                .iter()
                .any(|p| p.key.starts_with(key) && p.message.contains(message)),
            "{key}: {message} in {line}"
        );
    }
}
