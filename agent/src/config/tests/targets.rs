//! Tests of `targets`: one host or several, the strategy, their problems, and the env spelling.

use super::{env, yaml_file};
use crate::config::{AgentConfig, Layer, Strategy, MAX_HOSTS};

fn yaml(targets: &str) -> String {
    format!("tunnel: {{url: 'wss://r/t', agent_id: a}}\ntargets:\n{targets}")
}

fn problems(targets: &str) -> Vec<(String, String)> {
    match AgentConfig::from_yaml_str(&yaml(targets)) {
        Ok(_) => panic!("expected problems for {targets}"),
        Err(e) => e
            .problems()
            .iter()
            .map(|p| (p.key.clone(), p.message.clone()))
            .collect(),
    }
}

#[test]
fn several_hosts_with_a_strategy() {
    let c = AgentConfig::from_yaml_str(&yaml(
        "  addomain: {hosts: [dc1.corp.local, ' [fd00::5] ', 10.0.0.3], port: 636, strategy: round_robin}\n  one: {host: h, port: 1}\n",
    ))
    .expect("valid");
    let t = c.target("addomain").expect("target");
    assert_eq!(t.hosts, ["dc1.corp.local", "fd00::5", "10.0.0.3"]);
    assert_eq!((t.port, t.strategy), (636, Strategy::RoundRobin));
    let one = c.target("one").expect("target");
    assert_eq!((one.hosts.len(), one.strategy), (1, Strategy::Failover));
}

#[test]
fn host_and_hosts_together_and_bad_values_are_named() {
    let p = problems(
        "  a: {host: x, hosts: [y], port: 1}\n  b: {hosts: [], port: 1}\n  c: {hosts: [d1, D1, 'bad host', ''], port: 2, strategy: random}\n",
    );
    let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "targets.a.host / targets.a.hosts",
            "targets.b.hosts (NC_TARGET_B_HOST)",
            "targets.c.hosts (NC_TARGET_C_HOST)",
            "targets.c.hosts (NC_TARGET_C_HOST)",
            "targets.c.hosts (NC_TARGET_C_HOST)",
            "targets.c.strategy (NC_TARGET_C_STRATEGY)",
        ],
        "{p:?}"
    );
    assert!(p[0].1.contains("not both"), "{p:?}");
    assert!(p[2].1.contains("`D1` is listed twice"), "{p:?}");
    assert!(p[3].1.contains("`bad host`"), "{p:?}");
    assert!(p[4].1.contains("empty"), "{p:?}");
    assert!(p[5].1.contains("`random`"), "{p:?}");
}

#[test]
fn at_most_max_hosts() {
    let list = |n: usize| {
        (0..n)
            .map(|i| format!("h{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ok = format!("  a: {{hosts: [{}], port: 1}}\n", list(MAX_HOSTS));
    let c = AgentConfig::from_yaml_str(&yaml(&ok)).expect("valid");
    assert_eq!(c.target("a").expect("target").hosts.len(), MAX_HOSTS);
    let p = problems(&format!(
        "  a: {{hosts: [{}], port: 1}}\n",
        list(MAX_HOSTS + 1)
    ));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].1.contains("17 hosts, at most 16"), "{p:?}");
}

#[test]
fn env_lists_hosts_comma_separated_with_a_strategy() {
    let e = env(&[
        ("NC_AGENT_URL", "wss://relay/t"),
        ("NC_AGENT_ID", "p"),
        ("NC_CONNECTORS", "addomain"),
        (
            "NC_TARGET_addomain_HOST",
            " dc1.corp.local , dc2.corp.local,",
        ),
        ("NC_TARGET_addomain_PORT", "636"),
        ("NC_TARGET_addomain_STRATEGY", "round_robin"),
    ]);
    let c = AgentConfig::load(Layer::default(), None, &e).expect("valid");
    let t = c.target("addomain").expect("target");
    assert_eq!(t.hosts, ["dc1.corp.local", "dc2.corp.local"]);
    assert_eq!(t.strategy, Strategy::RoundRobin);
    let mut bad = e.clone();
    bad.insert("NC_TARGET_addomain_STRATEGY".into(), "fastest".into());
    let err = AgentConfig::load(Layer::default(), None, &bad).expect_err("bad strategy");
    let line = err.to_string();
    assert!(!line.contains('\n'), "one line: {line}");
    assert!(
        line.contains("NC_TARGET_ADDOMAIN_STRATEGY") && line.contains("`fastest`"),
        "{line}"
    );
}

#[test]
fn env_hosts_replace_yaml_host_and_yaml_strategy_stays() {
    let p = yaml_file(
        "targets-prec.yaml",
        "tunnel: {url: 'wss://r/t', agent_id: a}\ntargets: {ad: {host: yaml-host, port: 1, strategy: round_robin}}\n",
    );
    let e = env(&[("NC_TARGET_ad_HOST", "e1,e2")]);
    let c = AgentConfig::load(Layer::default(), Some(&p), &e).expect("valid: env wins whole");
    let t = c.target("ad").expect("target");
    assert_eq!(t.hosts, ["e1", "e2"]);
    assert_eq!(t.strategy, Strategy::RoundRobin);
}
