//! Tests of the `metrics` section: off by default, NC_METRICS_PORT / NC_METRICS_HOST and the
//! flags over YAML, loopback by default, and bad values refused naming the key.

use super::{env, yaml_file, MINIMAL};
use crate::config::{AgentConfig, Layer};

#[test]
fn off_unless_a_port_is_given_and_loopback_by_default() {
    let c = AgentConfig::from_yaml_str(MINIMAL).expect("valid");
    assert_eq!(c.metrics_addr, None, "off by default");
    let c = AgentConfig::from_yaml_str(&format!("{MINIMAL}metrics: {{host: 127.0.0.1}}\n"))
        .expect("valid");
    assert_eq!(c.metrics_addr, None, "a host alone does not turn it on");
}

#[test]
fn port_from_yaml_env_and_flag() {
    let yaml = format!("{MINIMAL}metrics: {{port: 9464}}\n");
    let c = AgentConfig::from_yaml_str(&yaml).expect("valid");
    assert_eq!(
        c.metrics_addr.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9464")
    );
    let p = yaml_file("metrics.yaml", &yaml);
    let e = env(&[("NC_METRICS_PORT", "9500"), ("NC_METRICS_HOST", "0.0.0.0")]);
    let c = AgentConfig::load(Layer::default(), Some(&p), &e).expect("valid");
    assert_eq!(
        c.metrics_addr.map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:9500"),
        "env over yaml"
    );
    let flags = Layer {
        metrics_port: Some(0),
        metrics_host: Some("[::1]".into()),
        ..Layer::default()
    };
    let c = AgentConfig::load(flags, Some(&p), &e).expect("valid");
    assert_eq!(
        c.metrics_addr.map(|a| a.to_string()).as_deref(),
        Some("[::1]:0"),
        "flag over env; 0 = any port"
    );
    let cli = <crate::cli::Cli as clap::Parser>::try_parse_from([
        "nowconnect-agent",
        "--config",
        p.to_str().expect("utf-8 path"),
        "--metrics-port",
        "9600",
        "--metrics-host",
        "127.0.0.2",
    ])
    .expect("parses");
    let c = cli.load(&env(&[])).expect("valid");
    assert_eq!(
        c.metrics_addr.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.2:9600")
    );
}

#[test]
fn bad_values_are_refused_naming_the_key() {
    let p = yaml_file("metrics-bad.yaml", MINIMAL);
    for (k, v, key) in [
        ("NC_METRICS_PORT", "http", "NC_METRICS_PORT"),
        ("NC_METRICS_PORT", "70000", "NC_METRICS_PORT"),
        ("NC_METRICS_HOST", "localhost", "metrics.host"),
    ] {
        let e = AgentConfig::load(Layer::default(), Some(&p), &env(&[(k, v)]))
            .expect_err(&format!("{k}={v} is refused"));
        let line = e.to_string();
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(
            e.problems().iter().any(|p| p.key.starts_with(key)),
            "{k}={v}: no problem under {key}: {line}"
        );
    }
    let e = AgentConfig::from_yaml_str(&format!("{MINIMAL}metrics: {{port: 8090}}\n"))
        .expect_err("the health port is taken");
    assert!(
        e.to_string().contains("metrics.port (NC_METRICS_PORT"),
        "{e}"
    );
    let e = AgentConfig::from_yaml_str(&format!("{MINIMAL}metrics: {{port: -1}}\n"))
        .expect_err("not a port");
    assert!(e.to_string().contains("metrics"), "{e}");
    let e = AgentConfig::from_yaml_str(&format!("{MINIMAL}metrics: {{bind: 0.0.0.0}}\n"))
        .expect_err("unknown key");
    assert!(e.to_string().contains("bind"), "{e}");
}
