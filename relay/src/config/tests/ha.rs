//! The `ha` section.

use super::MINIMAL;
use crate::config::{HaMode, RelayConfig};

fn with_ha(ha: &str) -> String {
    format!("{MINIMAL}\nha:\n{ha}")
}

#[test]
fn ha_is_off_by_default_and_needs_nothing() {
    let cfg = RelayConfig::from_yaml_str(MINIMAL).expect("valid");
    assert_eq!(cfg.ha.mode, HaMode::Off);
    assert!(cfg.ha.redis_url.is_none());
}

#[test]
fn active_mode_needs_replica_redis_and_mesh_tls_and_names_each_key() {
    let err = RelayConfig::from_yaml_str(&with_ha("  mode: active\n")).expect_err("incomplete");
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"ha.replica_id"), "{err}");
    assert!(keys.contains(&"ha.redis_url"), "{err}");
    assert!(keys.contains(&"ha.mesh.tls"), "{err}");
}

#[test]
fn a_full_ha_section_loads() {
    let cfg = RelayConfig::from_yaml_str(&with_ha(
        "  enabled: true\n  replica_id: relay-a\n  redis_url: redis://127.0.0.1:6379/0\n  mesh:\n    peers:\n      - {replica_id: relay-b, url: \"wss://127.0.0.1:9443/mesh\"}\n    tls: {ca_bundle: /ca.pem, cert_file: /a.pem, key_file: /a.key}\n    send_queue_depth: 512\n    per_link_max_inflight_bytes: 1048576\n    connect_backoff_max_sec: 5\n",
    ))
    .expect("valid");
    assert_eq!(
        cfg.ha.mode,
        HaMode::Active,
        "enabled without mode is active"
    );
    assert_eq!(cfg.ha.replica_id, "relay-a");
    assert_eq!(cfg.ha.mesh.peers.len(), 1);
    assert_eq!(cfg.ha.mesh.send_queue_depth, 512);
    assert_eq!(cfg.ha.mesh.per_link_max_inflight_bytes, 1 << 20);
}

#[test]
fn bad_ha_values_are_named() {
    let err = RelayConfig::from_yaml_str(&with_ha(
        "  mode: sideways\n  replica_id: \"a b\"\n  redis_url: http://x\n  mesh:\n    listen: nowhere\n    send_queue_depth: 1\n    peers:\n      - {replica_id: b, url: \"http://b\"}\n",
    ))
    .expect_err("bad");
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    for k in [
        "ha.mode",
        "ha.replica_id",
        "ha.redis_url",
        "ha.mesh.listen",
        "ha.mesh.send_queue_depth",
        "ha.mesh.peers[0].url",
    ] {
        assert!(keys.contains(&k), "{k} missing in {err}");
    }
}

#[test]
fn enabled_false_wins_over_a_mode() {
    let cfg =
        RelayConfig::from_yaml_str(&with_ha("  enabled: false\n  mode: active\n")).expect("valid");
    assert_eq!(cfg.ha.mode, HaMode::Off);
    assert!(cfg.warnings.iter().any(|w| w.contains("ha.enabled")));
}

#[test]
fn advertise_url_and_cluster_urls_are_checked() {
    let base = "  mode: shadow\n  replica_id: relay-a\n  mesh:\n    require_mtls: false\n";
    let cfg = RelayConfig::from_yaml_str(&with_ha(&format!(
        "{base}    advertise_url: ws://10.0.0.5:8443/mesh\n  redis_url: redis+cluster://n1:6379,n2:6379\n"
    )))
    .expect("valid");
    assert_eq!(
        cfg.ha.mesh.advertise_url.as_deref(),
        Some("ws://10.0.0.5:8443/mesh")
    );
    for bad in ["http://x/mesh", "wss://", "wss:///mesh"] {
        let err = RelayConfig::from_yaml_str(&with_ha(&format!(
            "{base}    advertise_url: \"{bad}\"\n  redis_url: redis://r:6379\n"
        )))
        .expect_err(bad);
        assert!(
            err.problems()
                .iter()
                .any(|p| p.key == "ha.mesh.advertise_url"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_plain_advertise_url_is_refused_with_mtls() {
    let err = RelayConfig::from_yaml_str(&with_ha(
        "  mode: active\n  replica_id: relay-a\n  redis_url: redis://r:6379\n  mesh:\n    advertise_url: ws://10.0.0.5:8443/mesh\n    tls: {ca_bundle: /ca.pem, cert_file: /a.pem, key_file: /a.key}\n",
    ))
    .expect_err("ws:// with require_mtls");
    assert!(
        err.problems()
            .iter()
            .any(|p| p.key == "ha.mesh.advertise_url" && p.message.contains("require_mtls")),
        "{err}"
    );
}

#[test]
fn advertise_url_env_wins_over_the_yaml_and_is_checked() {
    let yaml = with_ha(
        "  mode: active\n  replica_id: relay-a\n  redis_url: redis://r:6379\n  mesh:\n    advertise_url: wss://relay-a.internal:9443/mesh\n    tls: {ca_bundle: /ca.pem, cert_file: /a.pem, key_file: /a.key}\n",
    );
    let pod = |k: &str| {
        (k == "NOWCONNECT_HA_MESH_ADVERTISE_URL").then(|| "wss://10.42.0.17:9443/mesh".to_owned())
    };
    let cfg = RelayConfig::from_yaml_str_with_env(&yaml, &pod).expect("valid");
    assert_eq!(
        cfg.ha.mesh.advertise_url.as_deref(),
        Some("wss://10.42.0.17:9443/mesh")
    );
    let plain = |k: &str| {
        (k == "NOWCONNECT_HA_MESH_ADVERTISE_URL").then(|| "ws://10.42.0.17/mesh".to_owned())
    };
    let err = RelayConfig::from_yaml_str_with_env(&yaml, &plain).expect_err("ws:// with mTLS");
    assert!(
        err.problems()
            .iter()
            .any(|p| p.key == "ha.mesh.advertise_url"),
        "{err}"
    );
}
