//! Tests of the `portal` and `audit` sections and `state_dir`.

use std::net::SocketAddr;
use std::path::Path;

use super::MINIMAL;
use crate::config::{JwksSource, RelayConfig};

#[test]
fn portal_and_audit_keys() {
    let cfg = RelayConfig::from_yaml_str(MINIMAL).expect("valid");
    assert!(cfg.audit_file.is_none() && cfg.state_dir.is_none());
    assert!(cfg.portal.defaults.mfa_required);
    let yaml = MINIMAL.to_owned()
        + "state_dir: /tmp/nc
portal:
  bind: 127.0.0.1:0
  jwks_url: file:///etc/nc/ops.json
  \
               audience: ops
  issuer: https://ops
  admin_role: root
  mfa_required: false
  \
               pdp_enforce: false
  cidr_allowlists: false
";
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid");
    let p = &cfg.portal;
    assert_eq!(p.bind, Some(SocketAddr::from(([127, 0, 0, 1], 0))));
    assert_eq!(p.jwks, Some(JwksSource::File("/etc/nc/ops.json".into())));
    assert_eq!(
        (p.audience.as_str(), p.admin_role.as_str()),
        ("ops", "root")
    );
    assert_eq!(p.issuer.as_deref(), Some("https://ops"));
    assert!(!p.defaults.mfa_required && !p.defaults.pdp_enforce && !p.defaults.cidr_allowlists);
    assert!(cfg
        .warnings
        .iter()
        .any(|w| w.contains("portal.mfa_required")));
    let audit = cfg.audit_file.expect("defaults under state_dir");
    assert_eq!(audit.path, Path::new("/tmp/nc/audit.jsonl"));
    assert_eq!(cfg.audit_limits, crate::audit::RefusalLimits::default());
    assert_eq!(
        (cfg.audit_limits.per_source, cfg.audit_limits.total),
        (30, 300)
    );
    let yaml = MINIMAL.to_owned()
        + "audit:\n  max_refusals_per_source: 0\n  max_refusals_total: 50\n  refusal_window_sec: 5\n";
    let l = RelayConfig::from_yaml_str(&yaml)
        .expect("valid")
        .audit_limits;
    assert_eq!((l.per_source, l.total), (0, 50));
    assert_eq!(l.window, std::time::Duration::from_secs(5));

    let bad = MINIMAL.to_owned()
        + "portal:
  bind: nowhere
  audience: ''
  admin_role: ' '
  jwks_url: ftp://x
  \
               extra: 1
";
    assert!(RelayConfig::from_yaml_str(&bad).is_err(), "unknown key");
    let bad = MINIMAL.to_owned()
        + "portal:
  bind: nowhere
  audience: ''
  admin_role: ' '
  jwks_url: ftp://x
\
               audit:
  max_file_bytes: 10
  keep_files: 0
  max_refusals_per_source: 1000001
  refusal_window_sec: 0
";
    let err = RelayConfig::from_yaml_str(&bad).expect_err("invalid");
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    for k in [
        "portal.bind",
        "portal.audience",
        "portal.admin_role",
        "portal.jwks_url",
        "audit.max_file_bytes",
        "audit.keep_files",
        "audit.max_refusals_per_source",
        "audit.refusal_window_sec",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
}

#[test]
fn portal_and_agent_audiences_must_differ() {
    let jwt = super::JWT;
    // The same value written twice.
    let yaml = jwt.to_owned() + "  audience: shared\nportal:\n  audience: shared\n";
    let err = RelayConfig::from_yaml_str(&yaml).expect_err("same audience refused");
    assert_eq!(err.problems().len(), 1, "{err}");
    let line = err.problems()[0].to_string();
    assert!(line.starts_with("portal.audience: "), "{line}");
    assert!(
        line.contains("security.audience") && line.contains("`shared`"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "one line: {line}");
    // After defaults: the agents' audience set to the portal's default.
    let yaml = jwt.to_owned() + "  audience: nowconnect-portal\n";
    let err = RelayConfig::from_yaml_str(&yaml).expect_err("default portal audience");
    assert_eq!(err.problems()[0].key, "portal.audience");
    // After env overrides: NOWCONNECT_AUDIENCE equal to portal.audience.
    let yaml = jwt.to_owned() + "portal:\n  audience: ops\n";
    let env = |k: &str| (k == "NOWCONNECT_AUDIENCE").then(|| "ops".to_owned());
    let err = RelayConfig::from_yaml_str_with_env(&yaml, &env).expect_err("env audience");
    assert_eq!(err.problems()[0].key, "portal.audience");
    // Distinct (the defaults, or any two different values) is fine.
    assert!(RelayConfig::from_yaml_str(jwt).is_ok());
    assert!(RelayConfig::from_yaml_str_with_env(
        &(jwt.to_owned() + "portal:\n  audience: ops2\n"),
        &env
    )
    .is_ok());
}

#[test]
fn portal_oidc_sign_in() {
    let cfg = RelayConfig::from_yaml_str(MINIMAL).expect("valid");
    assert_eq!(cfg.portal.oidc, None, "no sign-in unless configured");
    let yaml = MINIMAL.to_owned()
        + "portal:\n  oidc:\n    issuer: https://login.example.com/realms/ops/\n    client_id: nc-dashboard\n    scopes: profile email\n";
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid");
    let o = cfg.portal.oidc.expect("oidc");
    assert_eq!(
        o.issuer, "https://login.example.com/realms/ops",
        "trailing / dropped"
    );
    assert_eq!(o.client_id, "nc-dashboard");
    assert_eq!(
        o.scopes,
        ["openid", "profile", "email"],
        "openid is always asked for"
    );
    let yaml = MINIMAL.to_owned()
        + "portal:\n  oidc:\n    issuer: http://127.0.0.1:9/\n    client_id: a\n    scopes: [openid, groups]\n";
    let o = RelayConfig::from_yaml_str(&yaml)
        .expect("loopback http is fine")
        .portal
        .oidc
        .expect("oidc");
    assert_eq!(o.scopes, ["openid", "groups"]);
    let bad = MINIMAL.to_owned()
        + "portal:\n  oidc:\n    issuer: http://idp.example.com\n    client_id: 'a b'\n    scopes: ['x\"y']\n";
    let err = RelayConfig::from_yaml_str(&bad)
        .expect_err("invalid")
        .to_string();
    for key in [
        "portal.oidc.issuer",
        "portal.oidc.client_id",
        "portal.oidc.scopes",
    ] {
        assert!(err.contains(key), "{key} named in: {err}");
    }
    let err = RelayConfig::from_yaml_str(&(MINIMAL.to_owned() + "portal:\n  oidc: {}\n"))
        .expect_err("empty")
        .to_string();
    assert!(
        err.contains("portal.oidc.issuer") && err.contains("portal.oidc.client_id"),
        "{err}"
    );
    let err =
        RelayConfig::from_yaml_str(&(MINIMAL.to_owned() + "portal:\n  oidc:\n    secret: x\n"))
            .expect_err("unknown key")
            .to_string();
    assert!(err.contains("secret"), "{err}");
}
