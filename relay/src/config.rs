//! Relay configuration: YAML (`config/cloud.yaml`) -> env overrides -> `validate()` -> [`RelayConfig`].
//!
//! Parsing is strict (`deny_unknown_fields`) except for keys that later issues implement
//! (JWT, PDP, HA): those are accepted and produce a warning, so an operator's existing
//! reference config loads. Validation reports every problem at once, each naming its key.
//! This module never reads the process environment itself: callers pass an [`Env`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use thiserror::Error;

/// Where environment overrides come from; tests pass a closure instead of the real env.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// No overrides at all.
fn no_env(_: &str) -> Option<String> {
    None
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// YAML path (`listeners[0].bind`) or env var name.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration was refused. Always the operator's to fix.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid YAML for the relay: {0}")]
    Yaml(String),
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The problems found by validation (empty for read/parse errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            _ => &[],
        }
    }
}

// ---------- raw YAML shape ----------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listeners: Vec<RawListener>,
    #[serde(default)]
    tunnel: RawTunnel,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    security: RawSecurity,
    #[serde(default)]
    observability: RawObservability,
    /// Later issue (AuthZEN PDP): accepted, ignored with a warning.
    pdp: Option<serde_yaml::Value>,
    /// Later issue (HA with Redis and a mesh): accepted, ignored with a warning.
    ha: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Option<String>,
    bind: Option<String>,
    connector: Option<String>,
    #[serde(default)]
    allow_cidrs: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    host: Option<String>,
    port: Option<u16>,
    max_ws_payload: Option<usize>,
    ping_interval_sec: Option<u64>,
    ping_timeout_sec: Option<u64>,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    idle_timeout_ms: Option<u64>,
    queue_depth_per_cid: Option<usize>,
    max_conn_total: Option<usize>,
    shutdown_grace_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    dev_bypass: Option<bool>,
    allow_cidrs: Option<Vec<String>>,
    // JWT validation lands in a later issue; until then every upgrade needs the dev bypass.
    jwks_url: Option<serde_yaml::Value>,
    audience: Option<serde_yaml::Value>,
    issuer: Option<serde_yaml::Value>,
    require_connector_scopes: Option<serde_yaml::Value>,
    fapi_mode: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObservability {
    metrics_port: Option<u16>,
    log_level: Option<String>,
}

// ---------- validated types ----------

/// Default `/tunnel` port of the reference hub.
pub const DEFAULT_TUNNEL_PORT: u16 = 8765;

/// A validated relay configuration: every default filled in, nothing left to unwrap.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub listeners: Vec<ListenerConfig>,
    pub tunnel: TunnelConfig,
    pub limits: LimitsConfig,
    pub security: SecurityConfig,
    pub observability: ObservabilityConfig,
    /// Accepted-but-ignored keys and similar notes; logged at start-up.
    pub warnings: Vec<String>,
}

/// One per-connector TCP listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Operator's name for the listener (`RelayHandle::listener_addr` looks it up).
    pub name: String,
    pub bind: SocketAddr,
    pub connector: String,
    /// Empty: every client address is allowed.
    pub allow_cidrs: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// Host or IP the HTTP server (`/tunnel`, health, metrics) binds.
    pub host: String,
    pub port: u16,
    /// Largest DATA payload the relay sends (client reads are chunked to it).
    pub max_ws_payload: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, agents must present a client certificate issued by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// `None`: streams never time out for idleness (`idle_timeout_ms: 0`).
    pub idle_timeout: Option<Duration>,
    /// v1 only: DATA frames queued per stream before RST queue_overflow.
    pub queue_depth_per_cid: usize,
    /// Client connections open at once across all listeners.
    pub max_conn_total: usize,
    /// How long open streams may run on after SIGTERM / `shutdown()`.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// Accept agents without authentication (local development only; loopback binds only).
    pub dev_bypass: bool,
    /// Empty: agents may connect from anywhere.
    pub allow_cidrs: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct ObservabilityConfig {
    /// Separate port for `/healthz`, `/readyz`, `/metrics` on `tunnel.host`; `None`: same as `/tunnel`.
    pub metrics_port: Option<u16>,
    /// Default `tracing` filter (`NC_LOG_LEVEL` wins).
    pub log_level: String,
}

impl RelayConfig {
    /// Parses and validates YAML. No environment overrides are applied (see
    /// [`RelayConfig::from_yaml_str_with_env`]), so tests are independent of the process env.
    pub fn from_yaml_str(yaml: &str) -> Result<RelayConfig, ConfigError> {
        Self::from_yaml_str_with_env(yaml, &no_env)
    }

    /// Parses YAML, applies `NOWCONNECT_*` overrides from `env`, validates.
    pub fn from_yaml_str_with_env(yaml: &str, env: &dyn Env) -> Result<RelayConfig, ConfigError> {
        // An empty document is an empty mapping: all defaults (and then "no listeners").
        let raw: RawConfig = if yaml.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(yaml).map_err(|e| ConfigError::Yaml(e.to_string()))?
        };
        raw.validate(env)
    }

    /// Reads `path`, then as [`RelayConfig::from_yaml_str_with_env`].
    pub fn load(path: &Path, env: &dyn Env) -> Result<RelayConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_str_with_env(&text, env)
    }

    /// A minimal loopback development config: `/tunnel` on 127.0.0.1:0 with the dev bypass.
    pub fn dev_loopback(listeners: &[(&str, &str)]) -> RelayConfig {
        RelayConfig {
            listeners: listeners
                .iter()
                .map(|(name, connector)| ListenerConfig {
                    name: (*name).to_owned(),
                    bind: SocketAddr::from(([127, 0, 0, 1], 0)),
                    connector: (*connector).to_owned(),
                    allow_cidrs: Vec::new(),
                })
                .collect(),
            tunnel: TunnelConfig {
                host: "127.0.0.1".to_owned(),
                port: 0,
                max_ws_payload: DEFAULT_MAX_WS_PAYLOAD,
                ping_interval: Duration::from_secs(DEFAULT_PING_SEC),
                ping_timeout: Duration::from_secs(DEFAULT_PING_SEC),
                tls: None,
            },
            limits: LimitsConfig {
                idle_timeout: Some(Duration::from_millis(DEFAULT_IDLE_MS)),
                queue_depth_per_cid: DEFAULT_QUEUE_DEPTH,
                max_conn_total: DEFAULT_MAX_CONN,
                shutdown_grace: Duration::from_millis(DEFAULT_GRACE_MS),
            },
            security: SecurityConfig {
                dev_bypass: true,
                allow_cidrs: Vec::new(),
            },
            observability: ObservabilityConfig {
                metrics_port: None,
                log_level: "info".to_owned(),
            },
            warnings: Vec::new(),
        }
    }
}

const DEFAULT_MAX_WS_PAYLOAD: usize = 64 * 1024;
const DEFAULT_PING_SEC: u64 = 20;
const DEFAULT_IDLE_MS: u64 = 300_000;
const DEFAULT_QUEUE_DEPTH: usize = 256;
const DEFAULT_MAX_CONN: usize = 10_000;
const DEFAULT_GRACE_MS: u64 = 10_000;

/// Whether `host` certainly names a loopback address.
pub(crate) fn host_is_loopback(host: &str) -> bool {
    match host
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

struct Collector {
    problems: Vec<Problem>,
}

impl Collector {
    fn bad(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn cidrs(&mut self, key: &str, raw: &[String]) -> Vec<IpNet> {
        let mut out = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            let s = s.trim();
            // A bare address means a single host.
            let parsed = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => out.push(net),
                Err(_) => self.bad(
                    format!("{key}[{i}]"),
                    format!("`{s}` is not a CIDR (e.g. 10.0.0.0/8) or an IP address"),
                ),
            }
        }
        out
    }
}

fn parse_bool_env(c: &mut Collector, env: &dyn Env, name: &str) -> Option<bool> {
    let v = env.var(name)?;
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => {
            c.bad(name, format!("`{v}` is not a boolean (true/false)"));
            None
        }
    }
}

impl RawConfig {
    fn validate(self, env: &dyn Env) -> Result<RelayConfig, ConfigError> {
        let mut c = Collector {
            problems: Vec::new(),
        };
        let mut warnings = Vec::new();

        // listeners
        if self.listeners.is_empty() {
            c.bad("listeners", "at least one listener is required");
        }
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for (i, l) in self.listeners.into_iter().enumerate() {
            let key = format!("listeners[{i}]");
            let name = match l.name.map(|s| s.trim().to_owned()) {
                Some(n) if !n.is_empty() => Some(n),
                _ => {
                    c.bad(format!("{key}.name"), "is required");
                    None
                }
            };
            if let Some(n) = &name {
                if listeners.iter().any(|x: &ListenerConfig| &x.name == n) {
                    c.bad(format!("{key}.name"), format!("`{n}` is used twice"));
                }
            }
            let bind = match l.bind.as_deref().map(str::trim) {
                None | Some("") => {
                    c.bad(format!("{key}.bind"), "is required (e.g. 0.0.0.0:389)");
                    None
                }
                Some(b) => match b.parse::<SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        c.bad(
                            format!("{key}.bind"),
                            format!("`{b}` is not an IP:port address (e.g. 0.0.0.0:389)"),
                        );
                        None
                    }
                },
            };
            let limits = nowconnect_shared::Limits::default();
            let connector = match l.connector.map(|s| s.trim().to_owned()) {
                Some(n) if !n.is_empty() => {
                    if n.len() > limits.max_connector_len || n.chars().any(char::is_control) {
                        c.bad(
                            format!("{key}.connector"),
                            format!(
                                "must be at most {} bytes without control characters",
                                limits.max_connector_len
                            ),
                        );
                    }
                    Some(n)
                }
                _ => {
                    c.bad(format!("{key}.connector"), "is required");
                    None
                }
            };
            let allow_cidrs = c.cidrs(&format!("{key}.allow_cidrs"), &l.allow_cidrs);
            if let (Some(name), Some(bind), Some(connector)) = (name, bind, connector) {
                listeners.push(ListenerConfig {
                    name,
                    bind,
                    connector,
                    allow_cidrs,
                });
            }
        }
        // Two listeners on the same fixed address cannot both bind.
        for (i, a) in listeners.iter().enumerate() {
            if a.bind.port() != 0 && listeners[..i].iter().any(|b| b.bind == a.bind) {
                c.bad(
                    format!("listeners[{i}].bind"),
                    format!("{} is bound by an earlier listener", a.bind),
                );
            }
        }

        // tunnel
        let t = self.tunnel;
        let host = t.host.unwrap_or_else(|| "0.0.0.0".to_owned());
        if host.trim().is_empty() {
            c.bad("tunnel.host", "must not be empty");
        }
        let max_payload_limit = nowconnect_shared::Limits::default().max_payload;
        let max_ws_payload = t.max_ws_payload.unwrap_or(DEFAULT_MAX_WS_PAYLOAD);
        if max_ws_payload == 0 || max_ws_payload > max_payload_limit {
            c.bad(
                "tunnel.max_ws_payload",
                format!("must be between 1 and {max_payload_limit} bytes, got {max_ws_payload}"),
            );
        }
        let ping_interval_sec = t.ping_interval_sec.unwrap_or(DEFAULT_PING_SEC);
        if ping_interval_sec == 0 || ping_interval_sec > 3600 {
            c.bad("tunnel.ping_interval_sec", "must be between 1 and 3600");
        }
        let ping_timeout_sec = t.ping_timeout_sec.unwrap_or(DEFAULT_PING_SEC);
        if ping_timeout_sec == 0 || ping_timeout_sec > 3600 {
            c.bad("tunnel.ping_timeout_sec", "must be between 1 and 3600");
        }
        let tls = t.tls.and_then(|tls| {
            let cert = tls.cert_file;
            let key = tls.key_file;
            if cert.is_none() {
                c.bad("tunnel.tls.cert_file", "is required when tunnel.tls is set");
            }
            if key.is_none() {
                c.bad("tunnel.tls.key_file", "is required when tunnel.tls is set");
            }
            Some(TlsConfig {
                cert_file: cert?,
                key_file: key?,
                client_ca: tls.client_ca,
            })
        });

        // limits
        let l = self.limits;
        let idle_ms = l.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_MS);
        let queue_depth_per_cid = l.queue_depth_per_cid.unwrap_or(DEFAULT_QUEUE_DEPTH);
        if queue_depth_per_cid == 0 || queue_depth_per_cid > 65_536 {
            c.bad("limits.queue_depth_per_cid", "must be between 1 and 65536");
        }
        let max_conn_total = l.max_conn_total.unwrap_or(DEFAULT_MAX_CONN);
        if max_conn_total == 0 {
            c.bad("limits.max_conn_total", "must be at least 1");
        }
        let grace_ms = l.shutdown_grace_ms.unwrap_or(DEFAULT_GRACE_MS);

        // security
        let s = self.security;
        let mut dev_bypass = s.dev_bypass.unwrap_or(false);
        if let Some(v) = parse_bool_env(&mut c, env, "NOWCONNECT_DEV_BYPASS") {
            dev_bypass = v;
        }
        let allow_cidrs = c.cidrs("security.allow_cidrs", &s.allow_cidrs.unwrap_or_default());
        for (key, present) in [
            ("security.jwks_url", s.jwks_url.is_some()),
            ("security.audience", s.audience.is_some()),
            ("security.issuer", s.issuer.is_some()),
            (
                "security.require_connector_scopes",
                s.require_connector_scopes.is_some(),
            ),
            ("security.fapi_mode", s.fapi_mode.is_some()),
            ("pdp", self.pdp.is_some()),
            ("ha", self.ha.is_some()),
        ] {
            if present {
                warnings.push(format!("{key} is not implemented yet and is ignored"));
            }
        }
        for var in [
            "NOWCONNECT_JWKS_URL",
            "NOWCONNECT_AUDIENCE",
            "NOWCONNECT_REQUIRE_CONNECTOR_SCOPES",
            "NOWCONNECT_PDP_URL",
            "NOWCONNECT_PDP_CACHE_TTL_SEC",
            "NOWCONNECT_PDP_TIMEOUT_MS",
            "NOWCONNECT_PDP_FAIL_OPEN",
        ] {
            if env.var(var).is_some() {
                warnings.push(format!("{var} is not implemented yet and is ignored"));
            }
        }
        if dev_bypass && !host_is_loopback(&host) {
            c.bad(
                "security.dev_bypass",
                format!(
                    "the dev bypass accepts agents without authentication and is refused unless \
                     tunnel.host is a loopback address (127.0.0.1, ::1, localhost); got `{host}`"
                ),
            );
        }

        // observability
        let o = self.observability;
        let log_level = o.log_level.unwrap_or_else(|| "info".to_owned());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            c.bad(
                "observability.log_level",
                format!("`{log_level}` is not a log level or filter (e.g. info, debug)"),
            );
        }
        if let (Some(mp), Some(tp)) = (o.metrics_port, t.port) {
            if mp != 0 && mp == tp {
                c.bad(
                    "observability.metrics_port",
                    "must differ from tunnel.port (omit it to serve metrics on the tunnel port)",
                );
            }
        }

        if !c.problems.is_empty() {
            return Err(ConfigError::Invalid(c.problems));
        }
        Ok(RelayConfig {
            listeners,
            tunnel: TunnelConfig {
                host,
                port: t.port.unwrap_or(DEFAULT_TUNNEL_PORT),
                max_ws_payload,
                ping_interval: Duration::from_secs(ping_interval_sec),
                ping_timeout: Duration::from_secs(ping_timeout_sec),
                tls,
            },
            limits: LimitsConfig {
                idle_timeout: (idle_ms > 0).then(|| Duration::from_millis(idle_ms)),
                queue_depth_per_cid,
                max_conn_total,
                shutdown_grace: Duration::from_millis(grace_ms),
            },
            security: SecurityConfig {
                dev_bypass,
                allow_cidrs,
            },
            observability: ObservabilityConfig {
                metrics_port: o.metrics_port,
                log_level,
            },
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
listeners:
  - name: ldap
    bind: 127.0.0.1:0
    connector: addomain
tunnel:
  host: 127.0.0.1
  port: 0
security:
  dev_bypass: true
";

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = RelayConfig::from_yaml_str(MINIMAL).expect("valid");
        assert_eq!(cfg.listeners.len(), 1);
        assert_eq!(cfg.listeners[0].connector, "addomain");
        assert_eq!(cfg.tunnel.port, 0);
        assert_eq!(cfg.tunnel.max_ws_payload, 65536);
        assert_eq!(cfg.tunnel.ping_interval, Duration::from_secs(20));
        assert_eq!(cfg.limits.shutdown_grace, Duration::from_secs(10));
        assert!(cfg.security.dev_bypass);
        assert!(cfg.warnings.is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_key() {
        let yaml = "
listeners:
  - name: a
    bind: not-an-address
    connector: x
  - bind: 127.0.0.1:1
    allow_cidrs: [10.0.0.0/8, banana]
tunnel:
  max_ws_payload: 0
  ping_interval_sec: 0
limits:
  queue_depth_per_cid: 0
  max_conn_total: 0
";
        let err = RelayConfig::from_yaml_str(yaml).expect_err("invalid");
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        for k in [
            "listeners[0].bind",
            "listeners[1].name",
            "listeners[1].connector",
            "listeners[1].allow_cidrs[1]",
            "tunnel.max_ws_payload",
            "tunnel.ping_interval_sec",
            "limits.queue_depth_per_cid",
            "limits.max_conn_total",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
        let text = err.to_string();
        assert!(text.contains("listeners[0].bind"), "{text}");
    }

    #[test]
    fn unknown_keys_are_refused_but_later_issue_keys_warn() {
        let err = RelayConfig::from_yaml_str(&format!("{MINIMAL}\nbogus: 1\n")).expect_err("x");
        assert!(err.to_string().contains("bogus"), "{err}");

        let yaml = MINIMAL.replace(
            "security:\n  dev_bypass: true",
            "security:\n  dev_bypass: true\n  jwks_url: https://idp/jwks\n  audience: nc",
        ) + "pdp:\n  url: http://pdp\nha:\n  enabled: false\n";
        let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid");
        assert_eq!(cfg.warnings.len(), 4, "{:?}", cfg.warnings);
        assert!(cfg.warnings[0].contains("security.jwks_url"));
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
    fn tls_needs_both_files_and_idle_zero_disables() {
        let yaml = MINIMAL.replace("port: 0", "port: 0\n  tls:\n    cert_file: /x.pem")
            + "limits:\n  idle_timeout_ms: 0\n";
        let err = RelayConfig::from_yaml_str(&yaml).expect_err("missing key_file");
        assert_eq!(err.problems()[0].key, "tunnel.tls.key_file");
        let yaml = MINIMAL.to_owned() + "limits:\n  idle_timeout_ms: 0\n";
        let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid");
        assert!(cfg.limits.idle_timeout.is_none());
    }

    #[test]
    fn shipped_example_config_loads() {
        let cfg = RelayConfig::from_yaml_str(include_str!("../config/cloud.example.yaml"))
            .expect("example config is valid");
        assert_eq!(cfg.listeners.len(), 2);
        assert_eq!(cfg.listeners[0].allow_cidrs.len(), 2);
        assert_eq!(cfg.tunnel.port, DEFAULT_TUNNEL_PORT);
        assert!(!cfg.security.dev_bypass);
        assert!(cfg.warnings.is_empty());
    }

    #[test]
    fn yaml_syntax_errors_do_not_panic() {
        assert!(matches!(
            RelayConfig::from_yaml_str("listeners: [ {"),
            Err(ConfigError::Yaml(_))
        ));
        assert!(matches!(
            RelayConfig::from_yaml_str("listeners: 5"),
            Err(ConfigError::Yaml(_))
        ));
        assert!(matches!(
            RelayConfig::from_yaml_str(""),
            Err(ConfigError::Invalid(_))
        ));
    }
}
