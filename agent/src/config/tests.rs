use std::collections::HashMap;

use super::*;

const MINIMAL: &str = "
tunnel:
  url: wss://relay.example.com/tunnel
  agent_id: premise-01
  exported_connectors: [addomain]
targets:
  addomain: {host: 10.0.0.5, port: 389}
";

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn yaml_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nc-agent-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write yaml");
    p
}

#[test]
fn minimal_yaml_gets_defaults() {
    let c = AgentConfig::from_yaml_str(MINIMAL).expect("valid");
    assert_eq!(c.url.host, "relay.example.com");
    assert!(c.url.secure);
    assert_eq!(c.agent_id, "premise-01");
    assert_eq!(
        c.connectors().collect::<Vec<_>>(),
        vec!["addomain".to_string()]
    );
    assert_eq!(
        *c.target("addomain").expect("target"),
        Target {
            host: "10.0.0.5".into(),
            port: 389
        }
    );
    assert_eq!(c.health_addr().to_string(), "0.0.0.0:8090");
    assert_eq!(c.protocol, ProtocolChoice::Auto);
    assert_eq!(c.limits.connect_timeout, Duration::from_millis(5000));
    assert_eq!(c.keepalive.ping_interval, Duration::from_secs(20));
    assert_eq!(c.keepalive.ping_timeout, Duration::from_secs(20));
    assert_eq!(c.log_format, LogFormat::Plain);
    assert!(!c.allow_insecure_ws);
    assert!(c.token_file.is_none());
}

#[test]
fn full_yaml_is_read() {
    let c = AgentConfig::from_yaml_str(
        "
tunnel:
  url: ws://127.0.0.1:9/tunnel
  agent_id: a1
  exported_connectors: [x, y]
  auth: {token_file: /run/tok}
  protocol: v1
  allow_insecure_ws: true
  ping_interval_sec: 5
  ping_timeout_sec: 7
targets:
  x: {host: h1, port: 1}
  y: {host: h2, port: 2}
limits: {connect_timeout_ms: 250, queue_depth_per_cid: 8, handshake_timeout_ms: 900,
         reconnect_initial_ms: 10, reconnect_max_ms: 100}
proxy: {ca_bundle: /etc/ca.pem}
health: {host: 127.0.0.1, port: 0}
logging: {level: WARNING, format: json}
",
    )
    .expect("valid");
    assert_eq!(c.protocol, ProtocolChoice::V1);
    assert_eq!(
        c.token_file.as_deref(),
        Some(std::path::Path::new("/run/tok"))
    );
    assert_eq!(
        c.tls.ca_bundle.as_deref(),
        Some(std::path::Path::new("/etc/ca.pem"))
    );
    assert_eq!(c.health_addr().to_string(), "127.0.0.1:0");
    assert_eq!(c.limits.queue_depth_per_cid, 8);
    assert_eq!(c.limits.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.limits.reconnect_max, Duration::from_millis(100));
    assert_eq!(c.keepalive.ping_timeout, Duration::from_secs(7));
    assert_eq!(c.log_level, "warn");
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(
        c.connectors().collect::<Vec<_>>(),
        vec!["x".to_string(), "y".to_string()]
    );
}

#[test]
fn connectors_default_to_the_targets() {
    let c = AgentConfig::from_yaml_str(
        "tunnel: {url: 'wss://r/t', agent_id: a}\ntargets: {b: {host: h, port: 2}, a: {host: h, port: 1}}",
    )
    .expect("valid");
    assert_eq!(
        c.connectors().collect::<Vec<_>>(),
        vec!["a".to_string(), "b".to_string()]
    );
}

#[test]
fn every_problem_is_reported_at_once_naming_the_key() {
    let e = AgentConfig::from_yaml_str(
        "
tunnel:
  agent_id: ''
  exported_connectors: [ad, ad, db]
  protocol: v3
targets:
  ad: {host: h}
limits: {connect_timeout_ms: 0}
health: {host: not-an-ip}
logging: {format: xml}
",
    )
    .expect_err("invalid");
    let keys: Vec<&str> = e.problems().iter().map(|p| p.key.as_str()).collect();
    for want in [
        "tunnel.url",
        "tunnel.agent_id",
        "tunnel.exported_connectors",
        "targets.ad.port",
        "targets.db.host",
        "targets.db.port",
        "tunnel.protocol",
        "limits.connect_timeout_ms",
        "health.host",
        "logging.format",
    ] {
        assert!(
            keys.iter().any(|k| k.starts_with(want)),
            "no problem for {want}: {keys:?}"
        );
    }
    let line = e.to_string();
    assert!(!line.contains('\n'), "one line: {line}");
    assert!(line.starts_with("invalid configuration: "), "{line}");
}

#[test]
fn unknown_yaml_keys_are_refused() {
    let e =
        AgentConfig::from_yaml_str("tunnel: {url: 'wss://r/t', agnet_id: a}").expect_err("typo");
    assert!(matches!(e, ConfigError::Yaml { .. }), "{e}");
    assert!(e.to_string().contains("agnet_id"), "{e}");
    let e = AgentConfig::from_yaml_str("- a\n- b").expect_err("not a map");
    assert!(matches!(e, ConfigError::Yaml { .. }), "{e}");
}

#[test]
fn ws_is_refused_unless_allowed() {
    let yaml = MINIMAL.replace("wss://relay.example.com", "ws://127.0.0.1:8765");
    let e = AgentConfig::from_yaml_str(&yaml).expect_err("ws:// refused");
    assert!(e.to_string().contains("ws:// is not encrypted"), "{e}");
    assert!(e.to_string().contains("allow_insecure_ws"), "{e}");
    let allowed = format!("{yaml}\n").replace("tunnel:\n", "tunnel:\n  allow_insecure_ws: true\n");
    let c = AgentConfig::from_yaml_str(&allowed).expect("allowed");
    assert!(!c.url.secure);
    // The env switch works too.
    let p = yaml_file("insecure.yaml", &yaml);
    let c = AgentConfig::load(
        Layer::default(),
        Some(&p),
        &env(&[("NC_ALLOW_INSECURE_WS", "true")]),
    )
    .expect("allowed by env");
    assert!(c.allow_insecure_ws);
}

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
        c.target("ad").expect("target").host,
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

#[test]
fn ipv6_targets_with_or_without_brackets() {
    let c = AgentConfig::from_yaml_str(
        "tunnel: {url: 'wss://[::1]:8443/t', agent_id: a}\ntargets: {a: {host: '[::1]', port: 1}, b: {host: 'fd00::5', port: 2}, c: {host: dc1.corp, port: 3}}",
    )
    .expect("valid");
    assert_eq!(c.url.host, "::1");
    assert_eq!(c.target("a").expect("target").host, "::1");
    assert_eq!(c.target("b").expect("target").host, "fd00::5");
    assert_eq!(c.target("c").expect("target").host, "dc1.corp");
}

#[test]
fn missing_config_file_is_one_clear_line() {
    let e = AgentConfig::load(
        Layer::default(),
        Some(std::path::Path::new("/nonexistent/premise.yaml")),
        &env(&[]),
    )
    .expect_err("missing");
    let s = e.to_string();
    assert!(
        s.contains("/nonexistent/premise.yaml") && !s.contains('\n'),
        "{s}"
    );
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
    assert_eq!(c.target("b").expect("target").host, "::1");
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

#[test]
fn shipped_example_is_valid() {
    let text = include_str!("../../premise.example.yaml");
    let c = AgentConfig::from_yaml_str(text).expect("example config is valid");
    assert_eq!(
        c.connectors().collect::<Vec<_>>(),
        vec!["addomain".to_string(), "devdomain1".to_string()]
    );
    assert_eq!(
        c.target("devdomain1").expect("target").host,
        "dc1.dev.local"
    );
    assert_eq!(c.health_port, 8090);
    assert_eq!(c.token_refresh_before, Duration::from_secs(60));
    let proxy = c.proxy.expect("example proxy");
    assert_eq!(
        (proxy.host.as_str(), proxy.port),
        ("proxy.corp.example", 3128)
    );
    assert!(c.no_proxy.matches("127.0.0.1", 443));
    assert!(c.no_proxy.matches("relay.internal.example", 443));
    assert!(!c.no_proxy.matches("relay.example.com", 443));
    assert!(!c.tls.ca_bundle_only && c.tls.client_cert.is_none());
    // The commented-out client certificate keys are valid when enabled.
    let mtls = text
        .replace("# client_cert_file", "client_cert_file")
        .replace("# client_key_file", "client_key_file");
    let c = AgentConfig::from_yaml_str(&mtls).expect("example with mTLS is valid");
    assert!(c.tls.client_cert.is_some());
}

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
