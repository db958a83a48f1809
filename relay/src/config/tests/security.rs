//! Tests of the `security` and `pdp` sections and their `NOWCONNECT_*` overrides.

use std::time::Duration;

use super::{JWT, MINIMAL};
use crate::config::check::host_is_loopback;
use crate::config::{DuplicatePolicy, JwksSource, RelayConfig};

#[test]
fn jwt_defaults_and_keys() {
    let cfg = RelayConfig::from_yaml_str(JWT).expect("valid");
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    let j = cfg.security.jwt.expect("jwt on");
    assert_eq!(
        j.jwks,
        JwksSource::Url("https://idp.example.com/jwks".into())
    );
    assert_eq!(j.audience, "nowconnect");
    assert_eq!(j.issuer, None);
    assert_eq!(j.leeway, Duration::from_secs(30));
    assert!(cfg.security.require_connector_scopes, "secure by default");
    assert!(cfg.pdp.is_none());
    assert_eq!(cfg.limits.max_streams_per_agent, 5000);

    let yaml = JWT.to_owned()
        + "  audience: nc\n  issuer: https://idp\n  require_connector_scopes: false\n  \
               leeway_sec: 5\n  tunnel_allow_cidrs: [10.0.0.0/8]\n  allow_cidrs: [192.168.0.0/16]\n\
               pdp:\n  url: https://pdp/eval\n  cache_ttl_sec: 0\n  timeout_ms: 50\n  fail_open: true\n";
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid");
    let j = cfg.security.jwt.expect("jwt on");
    assert_eq!(j.audience, "nc");
    assert_eq!(j.issuer.as_deref(), Some("https://idp"));
    assert_eq!(j.leeway, Duration::from_secs(5));
    assert!(
        !cfg.security.require_connector_scopes,
        "an operator may turn it off"
    );
    assert_eq!(cfg.security.tunnel_allow_cidrs.len(), 1);
    assert_eq!(cfg.security.allow_cidrs.len(), 1);
    let p = cfg.pdp.expect("pdp on");
    assert_eq!(p.cache_ttl, Duration::ZERO);
    assert_eq!(p.timeout, Duration::from_millis(50));
    assert!(p.fail_open);
    assert!(cfg.warnings.iter().any(|w| w.contains("fail_open")));
}

#[test]
fn nowconnect_env_overrides_win() {
    let env = |k: &str| {
        Some(
            match k {
                "NOWCONNECT_JWKS_URL" => "file:///etc/nc/jwks.json",
                "NOWCONNECT_AUDIENCE" => "other",
                "NOWCONNECT_REQUIRE_CONNECTOR_SCOPES" => "false",
                "NOWCONNECT_PDP_URL" => "http://127.0.0.1:9/eval",
                "NOWCONNECT_PDP_CACHE_TTL_SEC" => "7",
                "NOWCONNECT_PDP_TIMEOUT_MS" => "250",
                "NOWCONNECT_PDP_FAIL_OPEN" => "yes",
                _ => return None,
            }
            .to_owned(),
        )
    };
    let cfg = RelayConfig::from_yaml_str_with_env(JWT, &env).expect("valid");
    let j = cfg.security.jwt.expect("jwt on");
    assert_eq!(j.jwks, JwksSource::File("/etc/nc/jwks.json".into()));
    assert_eq!(j.audience, "other");
    assert!(
        !cfg.security.require_connector_scopes,
        "the env turns the default off"
    );
    let p = cfg.pdp.expect("pdp on");
    assert_eq!(p.url, "http://127.0.0.1:9/eval");
    assert_eq!(p.cache_ttl, Duration::from_secs(7));
    assert_eq!(p.timeout, Duration::from_millis(250));
    assert!(p.fail_open);

    let bad = |k: &str| {
        Some(
            match k {
                "NOWCONNECT_JWKS_URL" => "ftp://idp/jwks",
                "NOWCONNECT_PDP_TIMEOUT_MS" => "soon",
                "NOWCONNECT_PDP_FAIL_OPEN" => "perhaps",
                _ => return None,
            }
            .to_owned(),
        )
    };
    let err = RelayConfig::from_yaml_str_with_env(JWT, &bad).expect_err("invalid");
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    for k in [
        "NOWCONNECT_JWKS_URL",
        "NOWCONNECT_PDP_TIMEOUT_MS",
        "NOWCONNECT_PDP_FAIL_OPEN",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
}

#[test]
fn jwks_url_forms() {
    let with =
        |url: &str| RelayConfig::from_yaml_str(&JWT.replace("https://idp.example.com/jwks", url));
    let cfg = with("http://127.0.0.1:8080/jwks").expect("loopback http");
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert!(with("http://[::1]:8080/jwks").is_ok(), "IPv6 loopback http");
    assert!(with("http://localhost:8080/jwks").is_ok(), "localhost http");
    assert!(with("http://127.9.9.9/jwks").is_ok(), "all of 127.0.0.0/8");
    assert!(with("file://relative/jwks.json").is_err());
    assert!(with("ftp://idp/jwks").is_err());
    assert!(with("https:///nohost").is_err());
}

#[test]
fn plain_http_to_a_remote_host_needs_allow_insecure_http() {
    let with =
        |yaml: &str, env: &dyn crate::config::Env| RelayConfig::from_yaml_str_with_env(yaml, env);
    let none = |_: &str| None;
    let remote_jwks = JWT.replace("https://idp.example.com/jwks", "http://idp.internal/jwks");
    let err = with(&remote_jwks, &none).expect_err("remote http JWKS refused");
    let line = err.problems()[0].to_string();
    assert!(line.starts_with("security.jwks_url: "), "{line}");
    assert!(line.contains("security.allow_insecure_http"), "{line}");
    assert_eq!(line.lines().count(), 1, "{line}");
    // The env override is checked the same way, under its own name.
    let env_url = |k: &str| (k == "NOWCONNECT_JWKS_URL").then(|| "http://10.0.0.5/jwks".to_owned());
    let err = with(JWT, &env_url).expect_err("remote http JWKS from env refused");
    assert_eq!(err.problems()[0].key, "NOWCONNECT_JWKS_URL");
    let remote_pdp = JWT.to_owned() + "pdp:\n  url: http://pdp.internal/eval\n";
    let err = with(&remote_pdp, &none).expect_err("remote http PDP refused");
    assert_eq!(err.problems()[0].key, "pdp.url");
    assert!(
        err.to_string().contains("security.allow_insecure_http"),
        "{err}"
    );
    let env_pdp = |k: &str| (k == "NOWCONNECT_PDP_URL").then(|| "http://pdp/eval".to_owned());
    assert_eq!(
        with(JWT, &env_pdp).expect_err("env pdp").problems()[0].key,
        "NOWCONNECT_PDP_URL"
    );
    let remote_portal = JWT.to_owned() + "portal:\n  jwks_url: http://ops.internal/jwks\n";
    let err = with(&remote_portal, &none).expect_err("remote http portal JWKS refused");
    assert_eq!(err.problems()[0].key, "portal.jwks_url");

    // The explicit key accepts all three, each with a warning naming its key.
    let all = remote_jwks.clone()
        + "  allow_insecure_http: true\npdp:\n  url: http://pdp.internal/eval\n\
           portal:\n  jwks_url: http://ops.internal/jwks\n";
    let cfg = with(&all, &none).expect("allowed explicitly");
    assert!(cfg.security.allow_insecure_http);
    for key in ["security.jwks_url", "pdp.url", "portal.jwks_url"] {
        assert!(
            cfg.warnings
                .iter()
                .any(|w| w.starts_with(key) && w.contains("plain http")),
            "{key}: {:?}",
            cfg.warnings
        );
    }
    assert!(cfg.pdp.is_some());
    let insecure = JWT.to_owned() + "  allow_insecure_http: false\n";
    assert!(
        !with(&insecure, &none)
            .expect("default off")
            .security
            .allow_insecure_http
    );
}

#[test]
fn dev_bypass_and_jwks_are_exclusive() {
    let yaml = JWT.replace(
        "security:\n",
        "tunnel:\n  host: 127.0.0.1\nsecurity:\n  dev_bypass: true\n",
    );
    let err = RelayConfig::from_yaml_str(&yaml).expect_err("refused");
    assert_eq!(err.problems()[0].key, "security.dev_bypass");
    assert!(err.to_string().contains("security.jwks_url"), "{err}");
    let on = |k: &str| (k == "NOWCONNECT_DEV_BYPASS").then(|| "true".to_owned());
    let yaml = JWT.replace("security:\n", "tunnel:\n  host: 127.0.0.1\nsecurity:\n");
    assert!(RelayConfig::from_yaml_str_with_env(&yaml, &on).is_err());
    // Neither configured: valid, with a warning that every agent will be refused.
    let yaml = MINIMAL.replace("dev_bypass: true", "dev_bypass: false");
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid");
    assert!(
        cfg.warnings[0].contains("every agent is refused"),
        "{:?}",
        cfg.warnings
    );
}

#[test]
fn dev_bypass_refused_on_non_loopback_host() {
    let yaml = MINIMAL.replace("host: 127.0.0.1", "host: 0.0.0.0");
    let err = RelayConfig::from_yaml_str(&yaml).expect_err("refused");
    assert_eq!(err.problems()[0].key, "security.dev_bypass");
    // Without the bypass the same host is fine (agents then get 401 until JWT lands).
    let yaml = yaml.replace("dev_bypass: true", "dev_bypass: false");
    assert!(RelayConfig::from_yaml_str(&yaml).is_ok());
    assert!(host_is_loopback("::1"));
    assert!(host_is_loopback("[::1]"));
    assert!(host_is_loopback("localhost"));
    assert!(!host_is_loopback("relay.example.com"));
}

#[test]
fn env_overrides_dev_bypass() {
    let yaml = MINIMAL.replace("dev_bypass: true", "dev_bypass: false");
    let on = |k: &str| (k == "NOWCONNECT_DEV_BYPASS").then(|| "true".to_owned());
    let cfg = RelayConfig::from_yaml_str_with_env(&yaml, &on).expect("valid");
    assert!(cfg.security.dev_bypass);
    let bad = |k: &str| (k == "NOWCONNECT_DEV_BYPASS").then(|| "maybe".to_owned());
    let err = RelayConfig::from_yaml_str_with_env(&yaml, &bad).expect_err("bad bool");
    assert_eq!(err.problems()[0].key, "NOWCONNECT_DEV_BYPASS");
}

#[test]
fn tunnel_caps_and_duplicate_policy() {
    let cfg = RelayConfig::from_yaml_str(JWT).expect("valid");
    assert_eq!(cfg.limits.max_tunnels_per_agent, 3);
    assert_eq!(cfg.limits.max_tunnels_per_jti, 2);
    assert_eq!(cfg.security.duplicate_agent, DuplicatePolicy::NewestWins);
    for (value, policy) in [
        ("newest_wins", DuplicatePolicy::NewestWins),
        ("oldest_wins", DuplicatePolicy::OldestWins),
        ("refuse", DuplicatePolicy::Refuse),
    ] {
        let yaml = JWT.to_owned() + &format!("  duplicate_agent: {value}\n");
        let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid");
        assert_eq!(cfg.security.duplicate_agent, policy);
        assert_eq!(policy.as_str(), value);
    }
    let yaml = JWT.to_owned()
        + "  duplicate_agent: first_come\nlimits:\n  max_tunnels_per_agent: 0\n  max_tunnels_per_jti: 5000\n";
    let err = RelayConfig::from_yaml_str(&yaml).expect_err("invalid");
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "limits.max_tunnels_per_agent",
            "limits.max_tunnels_per_jti",
            "security.duplicate_agent"
        ]
    );
    assert!(
        err.to_string().contains("newest_wins, oldest_wins, refuse"),
        "{err}"
    );
    let yaml = JWT.to_owned() + "limits:\n  max_tunnels_per_agent: 1\n  max_tunnels_per_jti: 1\n";
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid");
    assert_eq!(
        (
            cfg.limits.max_tunnels_per_agent,
            cfg.limits.max_tunnels_per_jti
        ),
        (1, 1)
    );
}

#[test]
fn the_stream_window_cap_defaults_to_4_mib_and_is_checked() {
    let cfg = RelayConfig::from_yaml_str(JWT).expect("valid");
    assert_eq!(cfg.limits.max_stream_window, 4 << 20);
    let yaml = JWT.to_owned() + "limits:\n  max_stream_window_bytes: 262144\n";
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("the initial window: no growth");
    assert_eq!(cfg.limits.max_stream_window, 262_144);
    for bad in ["1000", "67108865", "99999999999"] {
        let yaml = JWT.to_owned() + &format!("limits:\n  max_stream_window_bytes: {bad}\n");
        let err = RelayConfig::from_yaml_str(&yaml).expect_err("out of range");
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["limits.max_stream_window_bytes"]);
        assert!(err.to_string().contains("262144"), "{err}");
    }
}
