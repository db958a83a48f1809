//! `route_by: sni` listeners.

use super::*;

const SNI: &str = "
listeners:
  - name: ldaps
    bind: 0.0.0.0:636
    route_by: sni
    routes:
      DC1.corp.local.: ldaps_dc1
      dc2.corp.local: ldaps_dc2
      '*.lab.corp.local': ldaps_lab
    default: ldaps_dc1
    sni_peek_timeout_ms: 2500
  - name: ldap
    bind: 0.0.0.0:389
    connector: addomain
";

#[test]
fn an_sni_listener_loads_normalized() {
    let cfg = RelayConfig::from_yaml_str(SNI).expect("valid");
    let Routing::Sni(t) = &cfg.listeners[0].routing else {
        panic!("not sni: {:?}", cfg.listeners[0].routing);
    };
    let names: Vec<&str> = t.routes.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["*.lab.corp.local", "dc1.corp.local", "dc2.corp.local"]
    );
    assert_eq!(t.default.as_deref(), Some("ldaps_dc1"));
    assert_eq!(t.peek_timeout, Duration::from_millis(2500));
    assert_eq!(
        cfg.listeners[0].connectors(),
        ["ldaps_dc1", "ldaps_dc2", "ldaps_lab"]
    );
    assert_eq!(cfg.listeners[0].label(), "ldaps");
    assert_eq!(
        cfg.listeners[1].routing,
        Routing::Connector("addomain".into())
    );
    let plain = "listeners:\n  - name: a\n    bind: 127.0.0.1:0\n    route_by: sni\n    \
                 routes: {x.y: c}\n";
    let cfg = RelayConfig::from_yaml_str(plain).expect("valid");
    let Routing::Sni(t) = &cfg.listeners[0].routing else {
        panic!("not sni");
    };
    assert_eq!(t.default, None);
    assert_eq!(
        t.peek_timeout,
        Duration::from_millis(DEFAULT_SNI_PEEK_TIMEOUT_MS)
    );
}

#[test]
fn every_sni_problem_is_reported_with_its_key() {
    let yaml = "
listeners:
  - name: both
    bind: 127.0.0.1:1
    connector: x
    route_by: sni
    routes: {'bad name': a, 'A.b': c, 'a.b.': d, 'ok.b': ''}
    default: ''
    sni_peek_timeout_ms: 0
  - name: none
    bind: 127.0.0.1:2
    route_by: sni
  - name: stray
    bind: 127.0.0.1:3
    connector: y
    routes: {a.b: c}
    default: c
  - name: what
    bind: 127.0.0.1:4
    route_by: port
";
    let err = RelayConfig::from_yaml_str(yaml).expect_err("invalid");
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    for k in [
        "listeners[0].connector",
        "listeners[0].routes.bad name",
        "listeners[0].routes.ok.b",
        "listeners[0].default",
        "listeners[0].sni_peek_timeout_ms",
        "listeners[1].routes",
        "listeners[2].routes",
        "listeners[2].default",
        "listeners[3].route_by",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
    // `A.b` and `a.b.` are one name: one of them is reported as routed twice.
    assert!(
        err.problems()
            .iter()
            .any(|p| p.message.contains("routed twice")),
        "{err}"
    );
    let many: String = (0..=MAX_SNI_ROUTES)
        .map(|i| format!("      h{i}.corp: c\n"))
        .collect();
    let yaml = format!(
        "listeners:\n  - name: a\n    bind: 127.0.0.1:0\n    route_by: sni\n    routes:\n{many}"
    );
    let err = RelayConfig::from_yaml_str(&yaml).expect_err("too many");
    assert_eq!(err.problems()[0].key, "listeners[0].routes", "{err}");
}

#[test]
fn shipped_sni_example_loads() {
    let cfg = RelayConfig::from_yaml_str(include_str!("../../../config/ldaps-sni.example.yaml"))
        .expect("example config is valid");
    assert_eq!(cfg.listeners[0].connectors(), ["ldaps_dc1", "ldaps_dc2"]);
    assert!(matches!(cfg.listeners[0].routing, Routing::Sni(_)));
}
