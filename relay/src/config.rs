//! Relay configuration: YAML (`config/cloud.yaml`) -> env overrides -> `validate()` -> [`RelayConfig`].
//!
//! Parsing is strict (`deny_unknown_fields`) except for keys that later issues implement
//! (`security.fapi_mode`, `ha`): those are accepted and produce a warning, so an operator's
//! existing reference config loads. Validation reports every problem at once, each naming its
//! key. This module never reads the process environment itself: callers pass an [`Env`].

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
    #[serde(default)]
    pdp: RawPdp,
    #[serde(default)]
    portal: RawPortal,
    #[serde(default)]
    audit: RawAudit,
    /// Where the relay keeps state across restarts (policies, block list, default audit file).
    state_dir: Option<PathBuf>,
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
    max_streams_per_agent: Option<usize>,
    shutdown_grace_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    dev_bypass: Option<bool>,
    allow_cidrs: Option<Vec<String>>,
    tunnel_allow_cidrs: Option<Vec<String>>,
    jwks_url: Option<String>,
    audience: Option<String>,
    issuer: Option<String>,
    require_connector_scopes: Option<bool>,
    leeway_sec: Option<u64>,
    jwks_refresh_sec: Option<u64>,
    jwks_min_refresh_sec: Option<u64>,
    ca_file: Option<PathBuf>,
    max_pending_upgrades_per_ip: Option<usize>,
    auth_failure_limit: Option<u32>,
    auth_failure_window_sec: Option<u64>,
    auth_cooldown_sec: Option<u64>,
    /// Later issue: accepted, ignored with a warning.
    fapi_mode: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPdp {
    url: Option<String>,
    cache_ttl_sec: Option<u64>,
    timeout_ms: Option<u64>,
    fail_open: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortal {
    bind: Option<String>,
    jwks_url: Option<String>,
    audience: Option<String>,
    issuer: Option<String>,
    admin_role: Option<String>,
    mfa_required: Option<bool>,
    pdp_enforce: Option<bool>,
    cidr_allowlists: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    file: Option<PathBuf>,
    max_file_bytes: Option<u64>,
    keep_files: Option<usize>,
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
    /// Per-stream authorization; `None`: every OPEN that passes the CIDR checks is allowed.
    pub pdp: Option<PdpConfig>,
    pub observability: ObservabilityConfig,
    /// The `/api/v1` portal API.
    pub portal: PortalConfig,
    /// The audit trail's file; `None`: records live in memory and the log only.
    pub audit_file: Option<crate::audit::AuditFileConfig>,
    /// Where policies and the block list persist; `None`: they last until the relay stops.
    pub state_dir: Option<PathBuf>,
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
    /// Streams open at once on one agent tunnel; more clients for it are closed at once.
    pub max_streams_per_agent: usize,
    /// How long open streams may run on after SIGTERM / `shutdown()`.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// Accept agents without authentication (local development only; loopback binds only;
    /// refused together with `jwt`).
    pub dev_bypass: bool,
    /// Client addresses allowed on every listener (each listener's own list applies too).
    /// Empty: no global restriction.
    pub allow_cidrs: Vec<IpNet>,
    /// Agent source addresses allowed on `/tunnel`. Empty: agents may connect from anywhere.
    pub tunnel_allow_cidrs: Vec<IpNet>,
    /// JWT validation of agents; `None` without `jwks_url` (then only the dev bypass admits).
    pub jwt: Option<JwtConfig>,
    /// Every connector in HELLO must be granted by the token (`connectors`, `scp`, `scope`).
    pub require_connector_scopes: bool,
    pub abuse: AbuseConfig,
}

/// How agent tokens are checked.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub jwks: JwksSource,
    /// Required `aud` (default `nowconnect`).
    pub audience: String,
    /// Required `iss` when set.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Periodic JWKS refresh.
    pub refresh: Duration,
    /// A token with an unknown `kid` refreshes the JWKS only if the last fetch is older than this.
    pub min_refresh: Duration,
    /// Extra PEM roots for https JWKS and PDP URLs (a private CA).
    pub ca_file: Option<PathBuf>,
}

/// Where the IdP's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `http://` or `https://` URL.
    Url(String),
    /// `file:///path`: a JWKS document on disk (air-gapped sites), re-read on refresh.
    File(PathBuf),
}

/// Limits on agents that fail to authenticate.
#[derive(Debug, Clone)]
pub struct AbuseConfig {
    /// `/tunnel` attempts from one source (IPv4 address or IPv6 /64) that may be between the
    /// upgrade request and an accepted HELLO at once; more get 429.
    pub max_pending_per_ip: usize,
    /// This many auth failures from one source within `failure_window` start a cool-down.
    pub failure_limit: u32,
    pub failure_window: Duration,
    /// During a cool-down every `/tunnel` request from that source gets 429.
    pub cooldown: Duration,
}

/// OpenID AuthZEN-style policy decision point asked on every OPEN.
#[derive(Debug, Clone)]
pub struct PdpConfig {
    /// The access evaluation endpoint (`http://` or `https://`), POSTed to as is.
    pub url: String,
    /// How long an allow decision is reused; zero: never cached.
    pub cache_ttl: Duration,
    pub timeout: Duration,
    /// Allow when the PDP fails or times out (default: deny).
    pub fail_open: bool,
    /// Extra PEM roots (`security.ca_file`).
    pub ca_file: Option<PathBuf>,
}

/// The portal API: who may call it and the policies' start values.
#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// Separate address for `/api/v1` (then not served on the tunnel port).
    pub bind: Option<SocketAddr>,
    /// Keys for portal tokens; `None`: the agents' `security.jwks_url`.
    pub jwks: Option<JwksSource>,
    /// Required `aud` of portal tokens (default `nowconnect-portal`).
    pub audience: String,
    /// Required `iss` when set (default: `security.issuer`).
    pub issuer: Option<String>,
    /// The role (in `roles` or `role`) that makes a token an administrator.
    pub admin_role: String,
    /// Policy values used until an operator changes them (then the state file wins).
    pub defaults: PolicyDefaults,
}

/// Start values of the four policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyDefaults {
    pub mfa_required: bool,
    pub connector_scopes: bool,
    pub pdp_enforce: bool,
    pub cidr_allowlists: bool,
}

impl PolicyDefaults {
    fn new(connector_scopes: bool) -> PolicyDefaults {
        PolicyDefaults {
            mfa_required: true,
            connector_scopes,
            pdp_enforce: true,
            cidr_allowlists: true,
        }
    }
}

/// The portal tokens' default audience.
pub const DEFAULT_PORTAL_AUDIENCE: &str = "nowconnect-portal";
const DEFAULT_ADMIN_ROLE: &str = "admin";
const DEFAULT_AUDIT_MAX_BYTES: u64 = 8 * 1024 * 1024;
const DEFAULT_AUDIT_KEEP: usize = 3;

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
                max_streams_per_agent: DEFAULT_MAX_STREAMS_PER_AGENT,
                shutdown_grace: Duration::from_millis(DEFAULT_GRACE_MS),
            },
            security: SecurityConfig {
                dev_bypass: true,
                allow_cidrs: Vec::new(),
                tunnel_allow_cidrs: Vec::new(),
                jwt: None,
                require_connector_scopes: false,
                abuse: AbuseConfig::default(),
            },
            pdp: None,
            observability: ObservabilityConfig {
                metrics_port: None,
                log_level: "info".to_owned(),
            },
            portal: PortalConfig {
                bind: None,
                jwks: None,
                audience: DEFAULT_PORTAL_AUDIENCE.to_owned(),
                issuer: None,
                admin_role: DEFAULT_ADMIN_ROLE.to_owned(),
                defaults: PolicyDefaults::new(false),
            },
            audit_file: None,
            state_dir: None,
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
const DEFAULT_MAX_STREAMS_PER_AGENT: usize = 5_000;
/// The reference's audience.
pub const DEFAULT_AUDIENCE: &str = "nowconnect";
const DEFAULT_LEEWAY_SEC: u64 = 30;
const DEFAULT_JWKS_REFRESH_SEC: u64 = 300;
const DEFAULT_JWKS_MIN_REFRESH_SEC: u64 = 30;
const DEFAULT_PDP_CACHE_TTL_SEC: u64 = 30;
const DEFAULT_PDP_TIMEOUT_MS: u64 = 500;

impl Default for AbuseConfig {
    fn default() -> Self {
        AbuseConfig {
            max_pending_per_ip: 16,
            failure_limit: 20,
            failure_window: Duration::from_secs(60),
            cooldown: Duration::from_secs(60),
        }
    }
}

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

fn parse_u64_env(c: &mut Collector, env: &dyn Env, name: &str) -> Option<u64> {
    let v = env_str(env, name)?;
    match v.parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => {
            c.bad(name, format!("`{v}` is not a whole number"));
            None
        }
    }
}

/// A non-empty, trimmed env value (an empty variable counts as unset).
fn env_str(env: &dyn Env, name: &str) -> Option<String> {
    env.var(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Checks an `http(s)://host[:port]/path` URL. Plain http is accepted (with a warning unless the
/// host is loopback): keys or decisions fetched over it can be forged by anyone on the path.
fn check_http_url(c: &mut Collector, warnings: &mut Vec<String>, key: &str, url: &str) -> bool {
    let parsed = match url.parse::<hyper::Uri>() {
        Ok(u) => u,
        Err(_) => {
            c.bad(key, format!("`{url}` is not a URL"));
            return false;
        }
    };
    let Some(host) = parsed.host().filter(|h| !h.is_empty()) else {
        c.bad(key, format!("`{url}` has no host"));
        return false;
    };
    match parsed.scheme_str() {
        Some("https") => true,
        Some("http") => {
            if !host_is_loopback(host) {
                warnings.push(format!(
                    "{key}: `{url}` is plain http; use https outside local tests"
                ));
            }
            true
        }
        _ => {
            c.bad(key, format!("`{url}` must start with http:// or https://"));
            false
        }
    }
}

/// `security.jwks_url`: http(s) or `file:///absolute/path`.
fn jwks_source(
    c: &mut Collector,
    warnings: &mut Vec<String>,
    key: &str,
    url: &str,
) -> Option<JwksSource> {
    if let Some(path) = url.strip_prefix("file://") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            c.bad(
                key,
                "a file:// JWKS needs an absolute path (file:///etc/nowconnect/jwks.json)",
            );
            return None;
        }
        return Some(JwksSource::File(path));
    }
    check_http_url(c, warnings, key, url).then(|| JwksSource::Url(url.to_owned()))
}

/// A duration in whole seconds within `min..=max`.
fn secs(c: &mut Collector, key: &str, v: u64, min: u64, max: u64) -> Duration {
    if v < min || v > max {
        c.bad(
            key,
            format!("must be between {min} and {max} seconds, got {v}"),
        );
    }
    Duration::from_secs(v)
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
        let max_streams_per_agent = l
            .max_streams_per_agent
            .unwrap_or(DEFAULT_MAX_STREAMS_PER_AGENT);
        if max_streams_per_agent == 0 {
            c.bad("limits.max_streams_per_agent", "must be at least 1");
        }
        let grace_ms = l.shutdown_grace_ms.unwrap_or(DEFAULT_GRACE_MS);

        // security
        let s = self.security;
        let mut dev_bypass = s.dev_bypass.unwrap_or(false);
        if let Some(v) = parse_bool_env(&mut c, env, "NOWCONNECT_DEV_BYPASS") {
            dev_bypass = v;
        }
        let allow_cidrs = c.cidrs("security.allow_cidrs", &s.allow_cidrs.unwrap_or_default());
        let tunnel_allow_cidrs = c.cidrs(
            "security.tunnel_allow_cidrs",
            &s.tunnel_allow_cidrs.unwrap_or_default(),
        );
        for (key, present) in [
            ("security.fapi_mode", s.fapi_mode.is_some()),
            ("ha", self.ha.is_some()),
        ] {
            if present {
                warnings.push(format!("{key} is not implemented yet and is ignored"));
            }
        }
        let (jwks_key, jwks_url) = match env_str(env, "NOWCONNECT_JWKS_URL") {
            Some(v) => ("NOWCONNECT_JWKS_URL", Some(v)),
            None => (
                "security.jwks_url",
                s.jwks_url
                    .map(|u| u.trim().to_owned())
                    .filter(|u| !u.is_empty()),
            ),
        };
        let jwks = jwks_url.and_then(|u| jwks_source(&mut c, &mut warnings, jwks_key, &u));
        let (aud_key, audience) = match env_str(env, "NOWCONNECT_AUDIENCE") {
            Some(v) => ("NOWCONNECT_AUDIENCE", v),
            None => (
                "security.audience",
                s.audience.unwrap_or_else(|| DEFAULT_AUDIENCE.to_owned()),
            ),
        };
        if audience.trim().is_empty() {
            c.bad(aud_key, "must not be empty");
        }
        let issuer = s
            .issuer
            .map(|i| i.trim().to_owned())
            .filter(|i| !i.is_empty());
        let mut require_connector_scopes = s.require_connector_scopes.unwrap_or(false);
        if let Some(v) = parse_bool_env(&mut c, env, "NOWCONNECT_REQUIRE_CONNECTOR_SCOPES") {
            require_connector_scopes = v;
        }
        let leeway = secs(
            &mut c,
            "security.leeway_sec",
            s.leeway_sec.unwrap_or(DEFAULT_LEEWAY_SEC),
            0,
            300,
        );
        let refresh = secs(
            &mut c,
            "security.jwks_refresh_sec",
            s.jwks_refresh_sec.unwrap_or(DEFAULT_JWKS_REFRESH_SEC),
            1,
            86_400,
        );
        let min_refresh = secs(
            &mut c,
            "security.jwks_min_refresh_sec",
            s.jwks_min_refresh_sec
                .unwrap_or(DEFAULT_JWKS_MIN_REFRESH_SEC),
            1,
            86_400,
        );
        let ca_file = s.ca_file;
        if dev_bypass && jwks.is_some() {
            c.bad(
                "security.dev_bypass",
                format!(
                    "cannot be combined with {jwks_key}: the dev bypass admits agents without a \
                     token, so a relay with both would silently stop checking tokens; turn one off"
                ),
            );
        }
        if jwks.is_none() && !dev_bypass {
            warnings.push(
                "security.jwks_url is not set: every agent is refused (401) until it is".into(),
            );
        }
        if require_connector_scopes && jwks.is_none() {
            warnings.push(
                "security.require_connector_scopes has no effect without security.jwks_url".into(),
            );
        }
        let jwt = jwks.map(|jwks| JwtConfig {
            jwks,
            audience: audience.trim().to_owned(),
            issuer,
            leeway,
            refresh,
            min_refresh,
            ca_file: ca_file.clone(),
        });
        let d = AbuseConfig::default();
        let max_pending_per_ip = s
            .max_pending_upgrades_per_ip
            .unwrap_or(d.max_pending_per_ip);
        if max_pending_per_ip == 0 {
            c.bad("security.max_pending_upgrades_per_ip", "must be at least 1");
        }
        let failure_limit = s.auth_failure_limit.unwrap_or(d.failure_limit);
        if failure_limit == 0 {
            c.bad("security.auth_failure_limit", "must be at least 1");
        }
        let abuse = AbuseConfig {
            max_pending_per_ip,
            failure_limit,
            failure_window: secs(
                &mut c,
                "security.auth_failure_window_sec",
                s.auth_failure_window_sec
                    .unwrap_or(d.failure_window.as_secs()),
                1,
                86_400,
            ),
            cooldown: secs(
                &mut c,
                "security.auth_cooldown_sec",
                s.auth_cooldown_sec.unwrap_or(d.cooldown.as_secs()),
                1,
                86_400,
            ),
        };
        if dev_bypass && !host_is_loopback(&host) {
            c.bad(
                "security.dev_bypass",
                format!(
                    "the dev bypass accepts agents without authentication and is refused unless \
                     tunnel.host is a loopback address (127.0.0.1, ::1, localhost); got `{host}`"
                ),
            );
        }

        // pdp
        let p = self.pdp;
        let (pdp_key, pdp_url) = match env_str(env, "NOWCONNECT_PDP_URL") {
            Some(v) => ("NOWCONNECT_PDP_URL", Some(v)),
            None => (
                "pdp.url",
                p.url.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()),
            ),
        };
        let mut cache_ttl_sec = p.cache_ttl_sec.unwrap_or(DEFAULT_PDP_CACHE_TTL_SEC);
        if let Some(v) = parse_u64_env(&mut c, env, "NOWCONNECT_PDP_CACHE_TTL_SEC") {
            cache_ttl_sec = v;
        }
        if cache_ttl_sec > 86_400 {
            c.bad(
                "pdp.cache_ttl_sec",
                "must be at most 86400 (0 disables the cache)",
            );
        }
        let mut timeout_ms = p.timeout_ms.unwrap_or(DEFAULT_PDP_TIMEOUT_MS);
        if let Some(v) = parse_u64_env(&mut c, env, "NOWCONNECT_PDP_TIMEOUT_MS") {
            timeout_ms = v;
        }
        if timeout_ms == 0 || timeout_ms > 60_000 {
            c.bad("pdp.timeout_ms", "must be between 1 and 60000");
        }
        let mut fail_open = p.fail_open.unwrap_or(false);
        if let Some(v) = parse_bool_env(&mut c, env, "NOWCONNECT_PDP_FAIL_OPEN") {
            fail_open = v;
        }
        let pdp = match pdp_url {
            Some(url) if check_http_url(&mut c, &mut warnings, pdp_key, &url) => Some(PdpConfig {
                url,
                cache_ttl: Duration::from_secs(cache_ttl_sec),
                timeout: Duration::from_millis(timeout_ms),
                fail_open,
                ca_file,
            }),
            _ => None,
        };
        if pdp.as_ref().is_some_and(|p| p.fail_open) {
            warnings.push(
                "pdp.fail_open is on: streams are allowed whenever the PDP fails or times out"
                    .into(),
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

        // portal, audit, state_dir
        let state_dir = self.state_dir.filter(|d| !d.as_os_str().is_empty());
        let pt = self.portal;
        let portal_bind = pt.bind.as_deref().map(str::trim).and_then(|b| {
            b.parse::<SocketAddr>()
                .map_err(|_| {
                    c.bad(
                        "portal.bind",
                        format!("`{b}` is not an IP:port address (e.g. 127.0.0.1:8766)"),
                    )
                })
                .ok()
        });
        let portal_jwks = pt
            .jwks_url
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .and_then(|u| jwks_source(&mut c, &mut warnings, "portal.jwks_url", &u));
        let portal_audience = pt
            .audience
            .map(|a| a.trim().to_owned())
            .unwrap_or_else(|| DEFAULT_PORTAL_AUDIENCE.to_owned());
        if portal_audience.is_empty() {
            c.bad("portal.audience", "must not be empty");
        }
        let admin_role = pt
            .admin_role
            .map(|a| a.trim().to_owned())
            .unwrap_or_else(|| DEFAULT_ADMIN_ROLE.to_owned());
        if admin_role.is_empty() {
            c.bad("portal.admin_role", "must not be empty");
        }
        let portal_issuer = pt
            .issuer
            .map(|i| i.trim().to_owned())
            .filter(|i| !i.is_empty())
            .or_else(|| jwt.as_ref().and_then(|j| j.issuer.clone()));
        let mut defaults = PolicyDefaults::new(require_connector_scopes);
        defaults.mfa_required = pt.mfa_required.unwrap_or(true);
        defaults.pdp_enforce = pt.pdp_enforce.unwrap_or(true);
        defaults.cidr_allowlists = pt.cidr_allowlists.unwrap_or(true);
        if !defaults.mfa_required {
            warnings.push("portal.mfa_required is off: portal tokens need no second factor".into());
        }
        let au = self.audit;
        let max_bytes = au.max_file_bytes.unwrap_or(DEFAULT_AUDIT_MAX_BYTES);
        if max_bytes < 4096 {
            c.bad("audit.max_file_bytes", "must be at least 4096");
        }
        let keep = au.keep_files.unwrap_or(DEFAULT_AUDIT_KEEP);
        if keep == 0 || keep > 100 {
            c.bad("audit.keep_files", "must be between 1 and 100");
        }
        let audit_path = au
            .file
            .filter(|f| !f.as_os_str().is_empty())
            .or_else(|| state_dir.as_ref().map(|d| d.join("audit.jsonl")));
        let audit_file = audit_path.map(|path| crate::audit::AuditFileConfig {
            path,
            max_bytes,
            keep,
        });
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
                max_streams_per_agent,
                shutdown_grace: Duration::from_millis(grace_ms),
            },
            security: SecurityConfig {
                dev_bypass,
                allow_cidrs,
                tunnel_allow_cidrs,
                jwt,
                require_connector_scopes,
                abuse,
            },
            pdp,
            observability: ObservabilityConfig {
                metrics_port: o.metrics_port,
                log_level,
            },
            portal: PortalConfig {
                bind: portal_bind,
                jwks: portal_jwks,
                audience: portal_audience,
                issuer: portal_issuer,
                admin_role,
                defaults,
            },
            audit_file,
            state_dir,
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
            "security:\n  dev_bypass: true\n  fapi_mode: true",
        ) + "ha:\n  enabled: false\n";
        let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid");
        assert_eq!(cfg.warnings.len(), 2, "{:?}", cfg.warnings);
        assert!(cfg.warnings[0].contains("security.fapi_mode"));
        assert!(cfg.warnings[1].contains("ha"));
    }

    const JWT: &str = "
listeners:
  - name: ldap
    bind: 127.0.0.1:0
    connector: addomain
security:
  jwks_url: https://idp.example.com/jwks
";

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
        assert!(!cfg.security.require_connector_scopes);
        assert!(cfg.pdp.is_none());
        assert_eq!(cfg.limits.max_streams_per_agent, 5000);

        let yaml = JWT.to_owned()
            + "  audience: nc\n  issuer: https://idp\n  require_connector_scopes: true\n  \
               leeway_sec: 5\n  tunnel_allow_cidrs: [10.0.0.0/8]\n  allow_cidrs: [192.168.0.0/16]\n\
               pdp:\n  url: https://pdp/eval\n  cache_ttl_sec: 0\n  timeout_ms: 50\n  fail_open: true\n";
        let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid");
        let j = cfg.security.jwt.expect("jwt on");
        assert_eq!(j.audience, "nc");
        assert_eq!(j.issuer.as_deref(), Some("https://idp"));
        assert_eq!(j.leeway, Duration::from_secs(5));
        assert!(cfg.security.require_connector_scopes);
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
                    "NOWCONNECT_REQUIRE_CONNECTOR_SCOPES" => "true",
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
        assert!(cfg.security.require_connector_scopes);
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
        let with = |url: &str| {
            RelayConfig::from_yaml_str(&JWT.replace("https://idp.example.com/jwks", url))
        };
        let cfg = with("http://127.0.0.1:8080/jwks").expect("loopback http");
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        let cfg = with("http://idp.internal/jwks").expect("remote http is allowed");
        assert!(cfg.warnings[0].contains("plain http"), "{:?}", cfg.warnings);
        assert!(with("file://relative/jwks.json").is_err());
        assert!(with("ftp://idp/jwks").is_err());
        assert!(with("https:///nohost").is_err());
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
        let j = cfg.security.jwt.as_ref().expect("jwt configured");
        assert!(matches!(&j.jwks, JwksSource::Url(u) if u.starts_with("https://")));
        assert_eq!(j.audience, DEFAULT_AUDIENCE);
        assert!(j.issuer.is_some());
        assert!(cfg.security.require_connector_scopes);
        assert!(cfg.pdp.is_none(), "pdp.url is commented out");
        assert_eq!(cfg.limits.max_streams_per_agent, 5000);
        assert_eq!(
            cfg.state_dir.as_deref(),
            Some(Path::new("/var/lib/nowconnect"))
        );
        let p = &cfg.portal;
        assert_eq!(p.bind, None, "portal on the tunnel port");
        assert_eq!(p.jwks, None, "portal tokens use security.jwks_url");
        assert_eq!(p.audience, DEFAULT_PORTAL_AUDIENCE);
        assert_eq!(
            p.issuer, j.issuer,
            "portal issuer defaults to security.issuer"
        );
        assert_eq!(p.admin_role, "admin");
        assert_eq!(
            p.defaults,
            PolicyDefaults {
                mfa_required: true,
                connector_scopes: true,
                pdp_enforce: true,
                cidr_allowlists: true,
            }
        );
        let audit = cfg.audit_file.as_ref().expect("audit file");
        assert_eq!(audit.path, Path::new("/var/log/nowconnect/audit.jsonl"));
        assert_eq!((audit.max_bytes, audit.keep), (8 * 1024 * 1024, 3));
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }

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
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
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
