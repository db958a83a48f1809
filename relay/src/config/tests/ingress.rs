//! Tests of the keys for a relay on the internet or behind an ingress: `tunnel.preauth`, the
//! PROXY protocol switches with `security.trusted_proxies`, `security.shared_egress_cidrs`.

use std::time::Duration;

use super::MINIMAL;
use crate::config::{PreauthConfig, RelayConfig};

fn with_tunnel(lines: &str) -> String {
    MINIMAL.replace("  port: 0\n", &format!("  port: 0\n{lines}"))
}

#[test]
fn preauth_defaults_and_keys() {
    let cfg = RelayConfig::from_yaml_str(MINIMAL).expect("valid");
    let p = &cfg.tunnel.preauth;
    assert_eq!(*p, PreauthConfig::default());
    assert_eq!((p.max_total, p.max_per_source), (2048, 64));
    assert_eq!(p.head_timeout, Duration::from_secs(10));
    assert_eq!(p.idle_timeout, Duration::from_secs(30));
    assert_eq!((p.max_header_bytes, p.max_headers), (32 * 1024, 64));
    assert!(!cfg.tunnel.proxy_protocol);

    let cfg = RelayConfig::from_yaml_str(&with_tunnel(
        "  preauth:\n    max_total: 100\n    max_per_source: 5\n    head_timeout_ms: 1500\n    \
         idle_timeout_ms: 2500\n    max_header_bytes: 16384\n    max_headers: 32\n",
    ))
    .expect("valid");
    let p = &cfg.tunnel.preauth;
    assert_eq!((p.max_total, p.max_per_source), (100, 5));
    assert_eq!(p.head_timeout, Duration::from_millis(1500));
    assert_eq!(p.idle_timeout, Duration::from_millis(2500));
    assert_eq!((p.max_header_bytes, p.max_headers), (16384, 32));

    // A small total alone is fine: the per-source default shrinks to it.
    let cfg =
        RelayConfig::from_yaml_str(&with_tunnel("  preauth: {max_total: 10}\n")).expect("valid");
    assert_eq!(cfg.tunnel.preauth.max_per_source, 10);
}

#[test]
fn bad_preauth_values_name_their_keys() {
    let err = RelayConfig::from_yaml_str(&with_tunnel(
        "  preauth:\n    max_total: 0\n    head_timeout_ms: 5\n    idle_timeout_ms: 0\n    \
         max_header_bytes: 1024\n    max_headers: 2\n",
    ))
    .expect_err("invalid");
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    for k in [
        "tunnel.preauth.max_total",
        "tunnel.preauth.head_timeout_ms",
        "tunnel.preauth.idle_timeout_ms",
        "tunnel.preauth.max_header_bytes",
        "tunnel.preauth.max_headers",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
    let err = RelayConfig::from_yaml_str(&with_tunnel(
        "  preauth: {max_total: 10, max_per_source: 11}\n",
    ))
    .expect_err("per source above total");
    assert_eq!(err.problems()[0].key, "tunnel.preauth.max_per_source");
    let err = RelayConfig::from_yaml_str(&with_tunnel("  preauth: {max_conns: 1}\n"))
        .expect_err("unknown key");
    assert!(err.to_string().contains("max_conns"), "{err}");
}

#[test]
fn proxy_protocol_needs_trusted_proxies() {
    let err = RelayConfig::from_yaml_str(&with_tunnel("  proxy_protocol: true\n"))
        .expect_err("no trusted proxies");
    let p = &err.problems()[0];
    assert_eq!(p.key, "security.trusted_proxies");
    assert!(p.message.contains("tunnel.proxy_protocol"), "{p}");

    let listener = MINIMAL.replace(
        "    connector: addomain\n",
        "    connector: addomain\n    proxy_protocol: true\n",
    );
    let err = RelayConfig::from_yaml_str(&listener).expect_err("no trusted proxies");
    assert!(
        err.problems()[0]
            .message
            .contains("listeners[0].proxy_protocol"),
        "{err}"
    );

    let ok = listener.replace(
        "  dev_bypass: true",
        "  dev_bypass: true\n  trusted_proxies: [10.0.0.0/8, 192.0.2.7]",
    );
    let cfg = RelayConfig::from_yaml_str(&ok).expect("valid");
    assert!(cfg.listeners[0].proxy_protocol);
    assert_eq!(cfg.security.trusted_proxies.len(), 2);
    let bad = ok.replace("192.0.2.7", "proxy.example");
    let err = RelayConfig::from_yaml_str(&bad).expect_err("not a CIDR");
    assert_eq!(err.problems()[0].key, "security.trusted_proxies[1]");
}

#[test]
fn shared_egress_cidrs() {
    let yaml = MINIMAL.replace(
        "  dev_bypass: true",
        "  dev_bypass: true\n  shared_egress_cidrs: [198.51.100.0/24, 2001:db8::/48]",
    );
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid");
    assert_eq!(cfg.security.abuse.shared_egress_cidrs.len(), 2);
    let err = RelayConfig::from_yaml_str(&yaml.replace("198.51.100.0/24", "corp-proxy"))
        .expect_err("not a CIDR");
    assert_eq!(err.problems()[0].key, "security.shared_egress_cidrs[0]");
}
