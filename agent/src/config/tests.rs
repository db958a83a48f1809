//! Tests of the whole agent config: defaults, the full YAML, every problem at once, unknown
//! keys, the shipped example. Per-topic tests are in the submodules; `MINIMAL`, `env` and
//! `yaml_file` are what they start from.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

mod capacity;
mod metrics;
mod precedence;
mod proxy;
mod targets;

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
        Target::single("10.0.0.5", 389)
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
fn ipv6_targets_with_or_without_brackets() {
    let c = AgentConfig::from_yaml_str(
        "tunnel: {url: 'wss://[::1]:8443/t', agent_id: a}\ntargets: {a: {host: '[::1]', port: 1}, b: {host: 'fd00::5', port: 2}, c: {host: dc1.corp, port: 3}}",
    )
    .expect("valid");
    assert_eq!(c.url.host, "::1");
    assert_eq!(c.target("a").expect("target").hosts[0], "::1");
    assert_eq!(c.target("b").expect("target").hosts[0], "fd00::5");
    assert_eq!(c.target("c").expect("target").hosts[0], "dc1.corp");
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
fn shipped_example_is_valid() {
    let text = include_str!("../../premise.example.yaml");
    let c = AgentConfig::from_yaml_str(text).expect("example config is valid");
    assert_eq!(
        c.connectors().collect::<Vec<_>>(),
        vec!["addomain".to_string(), "devdomain1".to_string()]
    );
    assert_eq!(
        c.target("devdomain1").expect("target").hosts[0],
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
    assert_eq!(c.connections, 1);
    // Two relays, two tunnels.
    let two = text
        .replace("# urls:", "urls:")
        .replace("connections: 1 ", "connections: 2 ");
    let c = AgentConfig::from_yaml_str(&two).expect("example with two tunnels is valid");
    assert_eq!((c.urls.len(), c.connections), (2, 2));
}

#[test]
fn connections_are_one_or_two_and_at_most_the_relays_listed() {
    let t = "targets: {x: {host: h, port: 1}}";
    let one = AgentConfig::from_yaml_str(&format!(
        "tunnel:\n  url: wss://a.example/tunnel\n  agent_id: x\n{t}"
    ))
    .expect("default");
    assert_eq!(one.connections, 1);
    let from_env = AgentConfig::load(
        Layer::default(),
        None,
        &env(&[
            (
                "NC_AGENT_URL",
                "wss://a.example/tunnel, wss://b.example/tunnel",
            ),
            ("NC_AGENT_ID", "x"),
            ("NC_AGENT_CONNECTIONS", "2"),
            ("NC_TARGET_x_HOST", "h"),
            ("NC_TARGET_x_PORT", "1"),
            ("NC_CONNECTORS", "x"),
        ]),
    )
    .expect("two relays, two tunnels from the environment");
    assert_eq!(from_env.connections, 2);
    for (urls, n, why) in [
        ("url: wss://a.example/tunnel", 2, "2 tunnels need 2 relays"),
        (
            "urls: [wss://a.example/t, wss://b.example/t, wss://c.example/t]",
            3,
            "at most 2",
        ),
        ("url: wss://a.example/tunnel", 0, "at least 1"),
    ] {
        let e = AgentConfig::from_yaml_str(&format!(
            "tunnel:\n  {urls}\n  connections: {n}\n  agent_id: x\n{t}"
        ))
        .expect_err(why)
        .to_string();
        assert!(
            e.contains("tunnel.connections (NC_AGENT_CONNECTIONS)") && e.contains(why),
            "{e}"
        );
    }
}

#[test]
fn several_relays_from_url_and_urls_or_a_comma_list() {
    let t = "targets: {a: {host: h, port: 1}}\n";
    let c = AgentConfig::from_yaml_str(&format!(
        "tunnel:\n  url: wss://a.example/tunnel\n  urls: [wss://b.example/tunnel, 'wss://c.example:8443/t']\n  agent_id: x\n{t}"
    ))
    .expect("valid");
    let hosts: Vec<_> = c.urls.iter().map(|u| u.host.as_str()).collect();
    assert_eq!(hosts, ["a.example", "b.example", "c.example"]);
    assert_eq!(c.url.host, "a.example", "url is the first");
    // NC_AGENT_URL's form: one string, comma-separated (spaces allowed).
    let c = AgentConfig::from_yaml_str(&format!(
        "tunnel:\n  url: 'wss://a.example/tunnel, wss://b.example/tunnel'\n  agent_id: x\n{t}"
    ))
    .expect("valid");
    assert_eq!(c.urls.len(), 2);
    // A bad entry is named by its position and text; the others do not hide it.
    let err = AgentConfig::from_yaml_str(&format!(
        "tunnel:\n  urls: [wss://a.example/tunnel, 'ftp://b']\n  agent_id: x\n{t}"
    ))
    .expect_err("bad entry");
    let msg = err.to_string();
    assert!(msg.contains("entry 2 (`ftp://b`)"), "{msg}");
    let many = ["wss://r.example/t"; 9].join(",");
    let err = AgentConfig::from_yaml_str(&format!("tunnel:\n  url: '{many}'\n  agent_id: x\n{t}"))
        .expect_err("too many");
    assert!(err.to_string().contains("at most 8 relays"), "{err}");
}

#[test]
fn the_stream_window_cap_defaults_to_4_mib_and_is_checked() {
    let c = AgentConfig::from_yaml_str(MINIMAL).expect("valid");
    assert_eq!(c.limits.max_stream_window, 4 << 20);
    let yaml = format!("{MINIMAL}limits: {{max_stream_window_bytes: 262144}}\n");
    let c = AgentConfig::from_yaml_str(&yaml).expect("the initial window: no growth");
    assert_eq!(c.limits.max_stream_window, 262_144);
    let p = yaml_file("window.yaml", MINIMAL);
    let c = AgentConfig::load(
        Layer::default(),
        Some(&p),
        &env(&[("NC_MAX_STREAM_WINDOW_BYTES", "1048576")]),
    )
    .expect("set by env");
    assert_eq!(c.limits.max_stream_window, 1 << 20);
    for bad in ["1000", "67108865", "99999999999"] {
        let yaml = format!("{MINIMAL}limits: {{max_stream_window_bytes: {bad}}}\n");
        let e = AgentConfig::from_yaml_str(&yaml).expect_err("out of range");
        let line = e.to_string();
        assert!(
            line.contains("limits.max_stream_window_bytes") && line.contains("262144"),
            "{line}"
        );
    }
}
