//! Tests of the `proxy` section, `NC_TRUST_ENV`, and the TLS keys (`proxy.ca_bundle*`,
//! `tunnel.auth.client_*`, the token refresh).

use std::path::PathBuf;
use std::time::Duration;

use super::{env, yaml_file, MINIMAL};
use crate::config::{AgentConfig, Layer};

#[test]
fn proxy_from_yaml() {
    let yaml = format!(
        "{MINIMAL}proxy: {{https_proxy: 'http://bob:s%3Acret@proxy.corp:3128', no_proxy: '.corp, 10.0.0.0/8'}}\n"
    );
    let c = AgentConfig::from_yaml_str(&yaml).expect("valid");
    let p = c.proxy.as_ref().expect("proxy");
    assert_eq!(
        (p.host.as_str(), p.port, p.user()),
        ("proxy.corp", 3128, Some("bob"))
    );
    assert!(c.no_proxy.matches("relay.corp", 443));
    assert!(c.no_proxy.matches("10.1.1.1", 443));
    assert!(!c.no_proxy.matches("relay.example.com", 443));
    assert!(!format!("{c:?}").contains("s%3Acret") && !format!("{c:?}").contains("s:cret"));
}

#[test]
fn proxy_env_counts_only_with_trust_env() {
    let p = yaml_file("proxy-env.yaml", MINIMAL);
    let vars = [
        ("HTTPS_PROXY", "http://upper:3128"),
        ("https_proxy", "http://lower:3128"),
        ("ALL_PROXY", "http://all:3128"),
        ("NO_PROXY", "relay.example.com"),
    ];
    let c = AgentConfig::load(Layer::default(), Some(&p), &env(&vars)).expect("valid");
    assert!(
        c.proxy.is_none(),
        "without NC_TRUST_ENV the variables are ignored"
    );

    let mut trusted = vars.to_vec();
    trusted.push(("NC_TRUST_ENV", "true"));
    let c = AgentConfig::load(Layer::default(), Some(&p), &env(&trusted)).expect("valid");
    assert_eq!(
        c.proxy.as_ref().expect("proxy").host,
        "lower",
        "lower case wins"
    );
    assert!(c.no_proxy.matches("relay.example.com", 443));

    let c = AgentConfig::load(
        Layer::default(),
        Some(&p),
        &env(&[("NC_TRUST_ENV", "1"), ("ALL_PROXY", "https://all:8443")]),
    )
    .expect("valid");
    let proxy = c.proxy.expect("ALL_PROXY");
    assert!(proxy.secure);
    assert_eq!((proxy.host.as_str(), proxy.port), ("all", 8443));

    // YAML trust_env works too, and the flag beats the environment.
    let p = yaml_file(
        "proxy-trust.yaml",
        &format!("{MINIMAL}proxy: {{trust_env: true}}\n"),
    );
    let flags = Layer {
        https_proxy: Some("http://flag:1".into()),
        ..Layer::default()
    };
    let c = AgentConfig::load(flags, Some(&p), &env(&vars)).expect("valid");
    assert_eq!(c.proxy.expect("proxy").host, "flag");
    let c = AgentConfig::load(Layer::default(), Some(&p), &env(&vars)).expect("valid");
    assert_eq!(c.proxy.expect("proxy").host, "lower");
}

#[test]
fn bad_proxy_settings_name_the_key_without_the_password() {
    let p = yaml_file("proxy-bad.yaml", MINIMAL);
    let e = AgentConfig::load(
        Layer::default(),
        Some(&p),
        &env(&[
            ("NC_TRUST_ENV", "true"),
            ("HTTPS_PROXY", "socks5://u:hunter2@p:1"),
            ("NO_PROXY", "ok, b@d"),
        ]),
    )
    .expect_err("invalid");
    let line = e.to_string();
    assert!(
        line.contains("proxy.https_proxy") && line.contains("HTTPS_PROXY"),
        "{line}"
    );
    assert!(
        line.contains("proxy.no_proxy") && line.contains("b@d"),
        "{line}"
    );
    assert!(!line.contains("hunter2"), "{line}");
}

#[test]
fn tls_settings_are_checked() {
    let yaml = format!("{MINIMAL}proxy: {{ca_bundle_only: true}}\n");
    let e = AgentConfig::from_yaml_str(&yaml).expect_err("only without bundle");
    assert!(e.to_string().contains("proxy.ca_bundle_only"), "{e}");

    let yaml = MINIMAL.replace(
        "  exported_connectors: [addomain]\n",
        "  exported_connectors: [addomain]\n  auth: {client_cert_file: /c.pem}\n",
    );
    let e = AgentConfig::from_yaml_str(&yaml).expect_err("cert without key");
    assert!(e.to_string().contains("tunnel.auth.client_key_file"), "{e}");

    let p = yaml_file("mtls.yaml", MINIMAL);
    let c = AgentConfig::load(
        Layer::default(),
        Some(&p),
        &env(&[
            ("NC_CLIENT_CERT", "/c.pem"),
            ("NC_CLIENT_KEY", "/k.pem"),
            ("NC_CA_BUNDLE", "/ca.pem"),
            ("NC_CA_BUNDLE_ONLY", "yes"),
            ("NC_TOKEN_REFRESH_SEC", "5"),
        ]),
    )
    .expect("valid");
    let cc = c.tls.client_cert.expect("client cert");
    assert_eq!(cc.key_file, PathBuf::from("/k.pem"));
    assert!(c.tls.ca_bundle_only);
    assert_eq!(c.token_refresh_before, Duration::from_secs(5));
    let d = AgentConfig::from_yaml_str(MINIMAL).expect("valid");
    assert_eq!(d.token_refresh_before, Duration::from_secs(60), "default");
}
