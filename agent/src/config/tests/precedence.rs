//! Tests of the precedence chain: flags over environment over YAML over defaults, and the
//! environment and flags read into layers.

use super::{env, yaml_file};
use crate::config::{AgentConfig, Layer, LogFormat, ProtocolChoice};

#[test]
fn precedence_flags_over_env_over_yaml_over_defaults() {
    let p = yaml_file(
        "prec.yaml",
        "
tunnel: {url: 'wss://yaml/t', agent_id: yaml-id, exported_connectors: [ad]}
targets: {ad: {host: yaml-host, port: 1}}
health: {port: 1111}
logging: {level: debug}
",
    );
    let e = env(&[
        ("NC_AGENT_ID", "env-id"),
        ("NC_TARGET_ad_HOST", "env-host"),
        ("NC_HEALTH_PORT", "2222"),
        ("NC_LOG_LEVEL", "warn"),
    ]);
    let flags = Layer {
        health_port: Some(3333),
        ..Layer::default()
    };
    let c = AgentConfig::load(flags, Some(&p), &e).expect("valid");
    assert_eq!(c.url.host, "yaml", "yaml when nothing overrides it");
    assert_eq!(c.agent_id, "env-id", "env over yaml");
    assert_eq!(
        c.target("ad").expect("target").hosts[0],
        "env-host",
        "env over yaml, per field"
    );
    assert_eq!(c.target("ad").expect("target").port, 1, "yaml port kept");
    assert_eq!(c.health_port, 3333, "flag over env");
    assert_eq!(c.log_level, "warn");
    assert_eq!(c.health_host.to_string(), "0.0.0.0", "default");
}

#[test]
fn env_alone_is_enough() {
    let e = env(&[
        ("NC_AGENT_URL", "wss://relay:8443/tunnel"),
        ("NC_AGENT_ID", "premise-01"),
        ("NC_CONNECTORS", "addomain, devdomain1"),
        ("NC_TARGET_addomain_HOST", "10.1.1.1"),
        ("NC_TARGET_addomain_PORT", "636"),
        // Upper-case spelling, '-' and '.' as '_', is accepted too.
        ("NC_TARGET_DEVDOMAIN1_HOST", "10.1.1.2"),
        ("NC_TARGET_DEVDOMAIN1_PORT", "389"),
        ("NC_TOKEN_FILE", "/run/secrets/token"),
        ("NC_LOG_FORMAT", "json"),
    ]);
    let c = AgentConfig::load(Layer::default(), None, &e).expect("valid");
    assert_eq!(c.url.port, 8443);
    assert_eq!(
        c.connectors().collect::<Vec<_>>(),
        vec!["addomain".to_string(), "devdomain1".to_string()]
    );
    assert_eq!(c.target("devdomain1").expect("target").port, 389);
    assert_eq!(c.target("addomain").expect("target").port, 636);
    assert_eq!(c.log_format, LogFormat::Json);
}

#[test]
fn bad_env_values_name_the_variable() {
    let e = env(&[
        ("NC_AGENT_URL", "wss://relay/tunnel"),
        ("NC_AGENT_ID", "a"),
        ("NC_CONNECTORS", "ad"),
        ("NC_TARGET_ad_HOST", "h"),
        ("NC_TARGET_ad_PORT", "http"),
        ("NC_HEALTH_PORT", "99999"),
        ("NC_ALLOW_INSECURE_WS", "maybe"),
    ]);
    let err = AgentConfig::load(Layer::default(), None, &e).expect_err("invalid");
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    for want in [
        "NC_TARGET_ad_PORT",
        "NC_HEALTH_PORT",
        "NC_ALLOW_INSECURE_WS",
    ] {
        assert!(keys.contains(&want), "{want} missing in {keys:?}");
    }
}

#[test]
fn cli_flags_parse_into_a_layer() {
    use clap::Parser;
    let cli = crate::cli::Cli::try_parse_from([
        "nowconnect-agent",
        "--url",
        "ws://127.0.0.1:1/t",
        "--allow-insecure-ws",
        "--agent-id",
        "cli",
        "--connectors",
        "a,b",
        "--target",
        "a=127.0.0.1:10",
        "--target",
        "b=[::1]:11",
        "--protocol",
        "v2",
        "--health-port",
        "0",
    ])
    .expect("parses");
    let c = cli.load(&env(&[("NC_AGENT_ID", "env")])).expect("valid");
    assert_eq!(c.agent_id, "cli");
    assert_eq!(c.protocol, ProtocolChoice::V2);
    assert_eq!(c.target("b").expect("target").hosts[0], "::1");
    assert_eq!(c.health_port, 0);
    let cli = crate::cli::Cli::try_parse_from([
        "nowconnect-agent",
        "--url",
        "wss://relay.example.com/t",
        "--agent-id",
        "a",
        "--target",
        "a=h:1",
        "--https-proxy",
        "https://u:p@proxy:8443",
        "--no-proxy",
        ".corp",
        "--ca-bundle",
        "/ca.pem",
        "--ca-bundle-only",
        "--client-cert",
        "/c.pem",
        "--client-key",
        "/k.pem",
    ])
    .expect("parses");
    // The flag beats the trusted environment.
    let c = cli
        .load(&env(&[
            ("NC_TRUST_ENV", "true"),
            ("HTTPS_PROXY", "http://env:1"),
        ]))
        .expect("valid");
    let p = c.proxy.expect("proxy");
    assert!(p.secure && p.host == "proxy" && p.port == 8443);
    assert!(c.no_proxy.matches("x.corp", 443));
    assert!(c.tls.ca_bundle_only && c.tls.client_cert.is_some());
    let trust = crate::cli::Cli::try_parse_from(["x", "--trust-env"]).expect("parses");
    assert_eq!(trust.layer(&mut Vec::new()).trust_env, Some(true));
    let bad = crate::cli::Cli::try_parse_from(["x", "--target", "nonsense"]).expect("parses");
    let e = bad.load(&env(&[])).expect_err("bad target");
    assert!(e.problems().iter().any(|p| p.key == "--target"), "{e}");
}
