//! Tests of the whole relay config: defaults, every problem at once, unknown keys, the
//! shipped example, and the tunnel and limits sections. Per-section tests are in the
//! submodules; `MINIMAL` and `JWT` are the configs they start from.

use std::path::Path;
use std::time::Duration;

use super::*;

mod ha;
mod ingress;
mod portal;
mod security;
mod sni;

const MINIMAL: &str = "
listeners:
  - name: ldap
    bind: 127.0.0.1:0
    connector: addomain
tunnel:
  host: 127.0.0.1
  port: 0
security:
  dev_bypass: true
";

const JWT: &str = "
listeners:
  - name: ldap
    bind: 127.0.0.1:0
    connector: addomain
security:
  jwks_url: https://idp.example.com/jwks
";

#[test]
fn minimal_config_gets_defaults() {
    let cfg = RelayConfig::from_yaml_str(MINIMAL).expect("valid");
    assert_eq!(cfg.listeners.len(), 1);
    assert_eq!(cfg.listeners[0].connectors(), ["addomain"]);
    assert_eq!(cfg.tunnel.port, 0);
    assert_eq!(cfg.tunnel.max_ws_payload, 65536);
    assert_eq!(cfg.tunnel.ping_interval, Duration::from_secs(20));
    assert_eq!(cfg.limits.shutdown_grace, Duration::from_secs(10));
    assert!(cfg.security.dev_bypass);
    assert!(cfg.warnings.is_empty());
}

#[test]
fn every_problem_is_reported_at_once_with_its_key() {
    let yaml = "
listeners:
  - name: a
    bind: not-an-address
    connector: x
  - bind: 127.0.0.1:1
    allow_cidrs: [10.0.0.0/8, banana]
tunnel:
  max_ws_payload: 0
  ping_interval_sec: 0
limits:
  queue_depth_per_cid: 0
  max_conn_total: 0
";
    let err = RelayConfig::from_yaml_str(yaml).expect_err("invalid");
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    for k in [
        "listeners[0].bind",
        "listeners[1].name",
        "listeners[1].connector",
        "listeners[1].allow_cidrs[1]",
        "tunnel.max_ws_payload",
        "tunnel.ping_interval_sec",
        "limits.queue_depth_per_cid",
        "limits.max_conn_total",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
    let text = err.to_string();
    assert!(text.contains("listeners[0].bind"), "{text}");
}

#[test]
fn unknown_keys_are_refused_but_later_issue_keys_warn() {
    let err = RelayConfig::from_yaml_str(&format!("{MINIMAL}\nbogus: 1\n")).expect_err("x");
    assert!(err.to_string().contains("bogus"), "{err}");

    let yaml = MINIMAL.replace(
        "security:\n  dev_bypass: true",
        "security:\n  dev_bypass: true\n  fapi_mode: true",
    ) + "ha:\n  enabled: false\n";
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid");
    assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
    assert!(cfg.warnings[0].contains("security.fapi_mode"));
    assert_eq!(cfg.ha.mode, crate::config::HaMode::Off);
}

#[test]
fn tls_needs_both_files_and_idle_zero_disables() {
    let yaml = MINIMAL.replace("port: 0", "port: 0\n  tls:\n    cert_file: /x.pem")
        + "limits:\n  idle_timeout_ms: 0\n";
    let err = RelayConfig::from_yaml_str(&yaml).expect_err("missing key_file");
    assert_eq!(err.problems()[0].key, "tunnel.tls.key_file");
    let yaml = MINIMAL.to_owned() + "limits:\n  idle_timeout_ms: 0\n";
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid");
    assert!(cfg.limits.idle_timeout.is_none());
}

#[test]
fn shipped_example_config_loads() {
    let cfg = RelayConfig::from_yaml_str(include_str!("../../config/cloud.example.yaml"))
        .expect("example config is valid");
    assert_eq!(cfg.listeners.len(), 2);
    assert_eq!(cfg.listeners[0].allow_cidrs.len(), 2);
    // Every `ha` key is shown, with HA off: the shipped relay is a single relay.
    assert_eq!(cfg.ha.mode, crate::config::HaMode::Off);
    assert_eq!(cfg.ha.replica_id, "relay-a");
    assert_eq!(cfg.ha.presence_ttl, std::time::Duration::from_secs(15));
    assert_eq!(
        cfg.ha.mesh.advertise_url.as_deref(),
        Some("wss://relay-a.internal:8443/mesh")
    );
    assert_eq!(cfg.ha.mesh.peers.len(), 1);
    assert!(cfg.ha.mesh.tls.is_some());
    assert_eq!(cfg.tunnel.port, DEFAULT_TUNNEL_PORT);
    assert!(!cfg.security.dev_bypass);
    let j = cfg.security.jwt.as_ref().expect("jwt configured");
    assert!(matches!(&j.jwks, JwksSource::Url(u) if u.starts_with("https://")));
    assert_eq!(j.audience, DEFAULT_AUDIENCE);
    assert!(j.issuer.is_some());
    assert!(cfg.security.require_connector_scopes);
    assert!(cfg.pdp.is_none(), "pdp.url is commented out");
    assert_eq!(cfg.limits.max_streams_per_agent, 5000);
    assert_eq!(
        cfg.state_dir.as_deref(),
        Some(Path::new("/var/lib/nowconnect"))
    );
    let p = &cfg.portal;
    assert_eq!(p.bind, None, "portal on the tunnel port");
    assert_eq!(p.jwks, None, "portal tokens use security.jwks_url");
    assert_eq!(p.audience, DEFAULT_PORTAL_AUDIENCE);
    assert_eq!(
        p.issuer, j.issuer,
        "portal issuer defaults to security.issuer"
    );
    assert_eq!(p.admin_role, "admin");
    assert_eq!(
        p.defaults,
        PolicyDefaults {
            mfa_required: true,
            connector_scopes: true,
            pdp_enforce: true,
            cidr_allowlists: true,
        }
    );
    let audit = cfg.audit_file.as_ref().expect("audit file");
    assert_eq!(audit.path, Path::new("/var/log/nowconnect/audit.jsonl"));
    assert_eq!((audit.max_bytes, audit.keep), (8 * 1024 * 1024, 3));
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn yaml_syntax_errors_do_not_panic() {
    assert!(matches!(
        RelayConfig::from_yaml_str("listeners: [ {"),
        Err(ConfigError::Yaml(_))
    ));
    assert!(matches!(
        RelayConfig::from_yaml_str("listeners: 5"),
        Err(ConfigError::Yaml(_))
    ));
    assert!(matches!(
        RelayConfig::from_yaml_str(""),
        Err(ConfigError::Invalid(_))
    ));
}

#[test]
fn per_source_connection_caps_default_to_a_tenth_and_listeners_may_override() {
    let cfg = RelayConfig::from_yaml_str(MINIMAL).expect("valid");
    assert_eq!(cfg.limits.max_conn_per_source, 1000, "a tenth of 10000");
    assert_eq!(cfg.listeners[0].max_conn_per_source, 1000);
    let yaml = MINIMAL.to_owned() + "limits:\n  max_conn_total: 5\n";
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid");
    assert_eq!(cfg.limits.max_conn_per_source, 1, "at least 1");
    let yaml = MINIMAL.replace(
        "connector: addomain\n",
        "connector: addomain\n    max_conn_per_source: 7\n",
    ) + "limits:\n  max_conn_total: 100\n  max_conn_per_source: 3\n";
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid");
    assert_eq!(cfg.limits.max_conn_per_source, 3);
    assert_eq!(
        cfg.listeners[0].max_conn_per_source, 7,
        "the listener's own"
    );
    let yaml = MINIMAL.replace(
        "connector: addomain\n",
        "connector: addomain\n    max_conn_per_source: 0\n",
    ) + "limits:\n  max_conn_total: 100\n  max_conn_per_source: 101\n";
    let err = RelayConfig::from_yaml_str(&yaml).expect_err("invalid");
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "listeners[0].max_conn_per_source",
            "limits.max_conn_per_source"
        ]
    );
    assert!(err
        .to_string()
        .contains("between 1 and limits.max_conn_total"));
}
