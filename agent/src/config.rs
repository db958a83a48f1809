//! Agent configuration: clap flags > environment > YAML (`premise.yaml`) > defaults.
//!
//! Every source is first read into a [`Layer`] of optional values; the layers are merged by
//! precedence and then [`validate`](Layer::validate)d into an [`AgentConfig`], which has no
//! `Option` left that a caller would have to unwrap. Validation reports every problem at once,
//! each naming the YAML key (and the environment variable or flag that sets it).
//! The environment is read through the [`Env`] trait so tests never touch the process env.
//! This module never opens a socket and never reads the token file (only its path).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nowconnect_shared::Limits;
use serde::Deserialize;

use crate::no_proxy::NoProxy;
use crate::proxy::ProxyUrl;
use crate::tls::{ClientCert, RootSource, TlsSettings};
use crate::url::RelayUrl;

/// Default health listener, as in the reference agent.
pub const DEFAULT_HEALTH_HOST: &str = "0.0.0.0";
pub const DEFAULT_HEALTH_PORT: u16 = 8090;
/// Default time before the token's `exp` at which the agent reconnects with the file's token.
pub const DEFAULT_TOKEN_REFRESH_SEC: u64 = 60;

/// Proxy variables honored with `NC_TRUST_ENV=true`, in order of preference (lower case first,
/// as curl and Python do).
pub const PROXY_ENV_VARS: [&str; 4] = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];
pub const NO_PROXY_ENV_VARS: [&str; 2] = ["no_proxy", "NO_PROXY"];

/// Read-only view of environment variables.
pub trait Env {
    fn get(&self, key: &str) -> Option<String>;
}

/// The real process environment (used by `main` only).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).cloned()
    }
}

/// Which tunnel protocol the agent offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolChoice {
    /// Offer v2 and v1; the relay picks (v2 on our relay, v1 on a reference hub).
    Auto,
    /// Offer only v1 (JSON text frames).
    V1,
    /// Offer only v2 (binary frames with flow control).
    V2,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Longest `tunnel.agent_id`, in bytes (the protocol's `Limits::max_agent_id_len`).
pub const MAX_AGENT_ID_LEN: usize = 128;
/// Longest connector name, in bytes (the protocol's `Limits::max_connector_len`).
pub const MAX_CONNECTOR_LEN: usize = 64;
/// Most exported connectors (the protocol's `Limits::max_connectors`; a power of two, as the
/// fixed-capacity target table needs).
pub const MAX_CONNECTORS: usize = 64;

/// `tunnel.agent_id`: fixed capacity, validated to fit.
pub type AgentId = heapless::String<MAX_AGENT_ID_LEN>;
/// A connector name: fixed capacity, validated to fit.
pub type ConnectorName = heapless::String<MAX_CONNECTOR_LEN>;
/// Exported connectors and their targets, in HELLO order. Fixed capacity: the table is sized
/// once by validation and cannot grow afterwards. Targets are shared with the stream tasks
/// (`Arc`: opening a stream copies no host name).
pub type Targets = heapless::FnvIndexMap<ConnectorName, Arc<Target>, MAX_CONNECTORS>;

/// Where one connector's streams go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP address of the on-premise service.
    pub host: String,
    pub port: u16,
}

/// Timeouts and bounds of the data path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLimits {
    /// Time allowed to dial a target after OPEN; then RST connect_failed.
    pub connect_timeout: Duration,
    /// v1 only: DATA frames queued per stream before RST queue_overflow.
    pub queue_depth_per_cid: usize,
    /// Time allowed from the TCP dial to HELLO_ACK; then the attempt counts as failed.
    pub handshake_timeout: Duration,
    /// Upper bound of the first reconnect delay (full jitter: the delay is random below it).
    pub reconnect_initial: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_max: Duration,
    /// Frame size limits shared with the relay.
    pub protocol: Limits,
}

/// WebSocket keepalive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub ping_interval: Duration,
    /// No frame or pong for this long after a ping: the tunnel is dead.
    pub ping_timeout: Duration,
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `tunnel.url`: the relay's `/tunnel` endpoint.
    pub url: RelayUrl,
    /// `tunnel.agent_id`, sent in HELLO.
    pub agent_id: AgentId,
    /// `tunnel.exported_connectors` (in HELLO order) with their `targets`: every exported
    /// connector has a target, by construction. See [`AgentConfig::connectors`].
    pub targets: Targets,
    /// `tunnel.auth.token_file`: re-read at every connect; sent as a Bearer token.
    pub token_file: Option<PathBuf>,
    /// `tunnel.auth.refresh_before_exp_sec`: reconnect this long before the token's `exp`.
    pub token_refresh_before: Duration,
    /// Roots (`proxy.ca_bundle`, `proxy.ca_bundle_only`, the system store) and the client
    /// certificate (`tunnel.auth.client_cert_file` / `client_key_file`).
    pub tls: TlsSettings,
    /// `proxy.https_proxy` (or the environment's with `NC_TRUST_ENV`): HTTP CONNECT proxy.
    pub proxy: Option<ProxyUrl>,
    /// `proxy.no_proxy`: relay hosts dialed directly.
    pub no_proxy: NoProxy,
    /// `tunnel.allow_insecure_ws`: permit `ws://` (local development only).
    pub allow_insecure_ws: bool,
    /// `tunnel.protocol`.
    pub protocol: ProtocolChoice,
    /// `health.host` / `health.port` (port 0: any free port).
    pub health_host: IpAddr,
    pub health_port: u16,
    pub limits: AgentLimits,
    pub keepalive: Keepalive,
    /// `logging.level`: a tracing filter (`info`, `debug`, `nowconnect_agent=trace`, ...).
    pub log_level: String,
    pub log_format: LogFormat,
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The YAML key, with the env variable / flag that also sets it.
    pub key: String,
    pub message: String,
}

/// Why the configuration could not be loaded. Displayed as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid YAML in {origin}: {message}")]
    Yaml { origin: String, message: String },
    #[error("invalid configuration: {}", join_problems(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The individual problems (empty for read/parse errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            _ => &[],
        }
    }
}

fn join_problems(problems: &[Problem]) -> String {
    let mut s = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        s.push_str(&p.key);
        s.push_str(": ");
        s.push_str(&p.message);
    }
    s
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

// ---------------------------------------------------------------------------------------------
// YAML file shape (premise.yaml). Unknown keys are errors: a typo must not be ignored silently.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct YamlFile {
    tunnel: YamlTunnel,
    targets: BTreeMap<String, YamlTarget>,
    limits: YamlLimits,
    proxy: YamlProxy,
    health: YamlHealth,
    logging: YamlLogging,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct YamlTunnel {
    url: Option<String>,
    agent_id: Option<String>,
    exported_connectors: Option<Vec<String>>,
    auth: YamlAuth,
    protocol: Option<String>,
    allow_insecure_ws: Option<bool>,
    ping_interval_sec: Option<u64>,
    ping_timeout_sec: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct YamlAuth {
    token_file: Option<PathBuf>,
    refresh_before_exp_sec: Option<u64>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct YamlTarget {
    host: Option<String>,
    port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct YamlLimits {
    connect_timeout_ms: Option<u64>,
    queue_depth_per_cid: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    reconnect_initial_ms: Option<u64>,
    reconnect_max_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct YamlProxy {
    https_proxy: Option<String>,
    no_proxy: Option<String>,
    ca_bundle: Option<PathBuf>,
    ca_bundle_only: Option<bool>,
    trust_env: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct YamlHealth {
    host: Option<String>,
    port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct YamlLogging {
    level: Option<String>,
    format: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Layers

/// A target as far as one source knows it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartialTarget {
    pub host: Option<String>,
    pub port: Option<u16>,
}

/// Every setting as one source gives it; `None` = this source does not set it.
#[derive(Debug, Default, Clone)]
pub struct Layer {
    pub url: Option<String>,
    pub agent_id: Option<String>,
    pub connectors: Option<Vec<String>>,
    pub token_file: Option<PathBuf>,
    pub token_refresh_sec: Option<u64>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub ca_bundle: Option<PathBuf>,
    pub ca_bundle_only: Option<bool>,
    pub https_proxy: Option<String>,
    pub no_proxy: Option<String>,
    pub trust_env: Option<bool>,
    pub allow_insecure_ws: Option<bool>,
    pub protocol: Option<String>,
    pub ping_interval_sec: Option<u64>,
    pub ping_timeout_sec: Option<u64>,
    pub targets: BTreeMap<String, PartialTarget>,
    pub connect_timeout_ms: Option<u64>,
    pub queue_depth_per_cid: Option<usize>,
    pub handshake_timeout_ms: Option<u64>,
    pub reconnect_initial_ms: Option<u64>,
    pub reconnect_max_ms: Option<u64>,
    pub health_host: Option<String>,
    pub health_port: Option<u16>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

impl Layer {
    /// Parses a YAML document (`premise.yaml`). An empty document sets nothing.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Layer, ConfigError> {
        let file: YamlFile = if text.trim().is_empty() {
            YamlFile::default()
        } else {
            serde_yaml::from_str::<Option<YamlFile>>(text)
                .map_err(|e| ConfigError::Yaml {
                    origin: origin.to_owned(),
                    message: e.to_string(),
                })?
                .unwrap_or_default()
        };
        let YamlFile {
            tunnel,
            targets,
            limits,
            proxy,
            health,
            logging,
        } = file;
        Ok(Layer {
            url: tunnel.url,
            agent_id: tunnel.agent_id,
            connectors: tunnel.exported_connectors,
            token_file: tunnel.auth.token_file,
            token_refresh_sec: tunnel.auth.refresh_before_exp_sec,
            client_cert_file: tunnel.auth.client_cert_file,
            client_key_file: tunnel.auth.client_key_file,
            ca_bundle: proxy.ca_bundle,
            ca_bundle_only: proxy.ca_bundle_only,
            https_proxy: proxy.https_proxy,
            no_proxy: proxy.no_proxy,
            trust_env: proxy.trust_env,
            allow_insecure_ws: tunnel.allow_insecure_ws,
            protocol: tunnel.protocol,
            ping_interval_sec: tunnel.ping_interval_sec,
            ping_timeout_sec: tunnel.ping_timeout_sec,
            targets: targets
                .into_iter()
                .map(|(k, t)| {
                    (
                        k,
                        PartialTarget {
                            host: t.host,
                            port: t.port,
                        },
                    )
                })
                .collect(),
            connect_timeout_ms: limits.connect_timeout_ms,
            queue_depth_per_cid: limits.queue_depth_per_cid,
            handshake_timeout_ms: limits.handshake_timeout_ms,
            reconnect_initial_ms: limits.reconnect_initial_ms,
            reconnect_max_ms: limits.reconnect_max_ms,
            health_host: health.host,
            health_port: health.port,
            log_level: logging.level,
            log_format: logging.format,
        })
    }

    /// Reads the reference agent's environment variables. `connector_names` are the names whose
    /// `NC_TARGET_<name>_HOST` / `_PORT` are looked up (exact name first, then upper case with
    /// `-` and `.` as `_`). Unparsable values are reported into `problems`.
    pub fn from_env(
        env: &dyn Env,
        connector_names: &[String],
        problems: &mut Vec<Problem>,
    ) -> Layer {
        let mut l = Layer {
            url: env_str(env, "NC_AGENT_URL"),
            agent_id: env_str(env, "NC_AGENT_ID"),
            connectors: env_str(env, "NC_CONNECTORS").map(|s| split_list(&s)),
            token_file: env_str(env, "NC_TOKEN_FILE").map(PathBuf::from),
            token_refresh_sec: env_parse(env, "NC_TOKEN_REFRESH_SEC", parse_num, problems),
            client_cert_file: env_str(env, "NC_CLIENT_CERT").map(PathBuf::from),
            client_key_file: env_str(env, "NC_CLIENT_KEY").map(PathBuf::from),
            ca_bundle: env_str(env, "NC_CA_BUNDLE").map(PathBuf::from),
            ca_bundle_only: env_parse(env, "NC_CA_BUNDLE_ONLY", parse_bool, problems),
            trust_env: env_parse(env, "NC_TRUST_ENV", parse_bool, problems),
            allow_insecure_ws: env_parse(env, "NC_ALLOW_INSECURE_WS", parse_bool, problems),
            protocol: env_str(env, "NC_PROTOCOL"),
            ping_interval_sec: env_parse(env, "NC_PING_INTERVAL_SEC", parse_num, problems),
            ping_timeout_sec: env_parse(env, "NC_PING_TIMEOUT_SEC", parse_num, problems),
            connect_timeout_ms: env_parse(env, "NC_CONNECT_TIMEOUT_MS", parse_num, problems),
            health_host: env_str(env, "NC_HEALTH_HOST"),
            health_port: env_parse(env, "NC_HEALTH_PORT", parse_num, problems),
            log_level: env_str(env, "NC_LOG_LEVEL"),
            log_format: env_str(env, "NC_LOG_FORMAT"),
            ..Layer::default()
        };
        let names = l.connectors.clone().unwrap_or_default();
        for name in names.iter().chain(connector_names) {
            if l.targets.contains_key(name) {
                continue;
            }
            let mut t = PartialTarget::default();
            for var in target_env_names(name) {
                if t.host.is_none() {
                    t.host = env_str(env, &format!("{var}_HOST"));
                }
                if t.port.is_none() {
                    t.port = env_parse(env, &format!("{var}_PORT"), parse_num, problems);
                }
            }
            if t != PartialTarget::default() {
                l.targets.insert(name.clone(), t);
            }
        }
        l
    }

    /// `self` wins over `lower`, key by key (targets: field by field per connector).
    pub fn over(self, lower: Layer) -> Layer {
        let mut targets = lower.targets;
        for (name, t) in self.targets {
            let e = targets.entry(name).or_default();
            e.host = t.host.or(e.host.take());
            e.port = t.port.or(e.port);
        }
        Layer {
            url: self.url.or(lower.url),
            agent_id: self.agent_id.or(lower.agent_id),
            connectors: self.connectors.or(lower.connectors),
            token_file: self.token_file.or(lower.token_file),
            token_refresh_sec: self.token_refresh_sec.or(lower.token_refresh_sec),
            client_cert_file: self.client_cert_file.or(lower.client_cert_file),
            client_key_file: self.client_key_file.or(lower.client_key_file),
            ca_bundle: self.ca_bundle.or(lower.ca_bundle),
            ca_bundle_only: self.ca_bundle_only.or(lower.ca_bundle_only),
            https_proxy: self.https_proxy.or(lower.https_proxy),
            no_proxy: self.no_proxy.or(lower.no_proxy),
            trust_env: self.trust_env.or(lower.trust_env),
            allow_insecure_ws: self.allow_insecure_ws.or(lower.allow_insecure_ws),
            protocol: self.protocol.or(lower.protocol),
            ping_interval_sec: self.ping_interval_sec.or(lower.ping_interval_sec),
            ping_timeout_sec: self.ping_timeout_sec.or(lower.ping_timeout_sec),
            targets,
            connect_timeout_ms: self.connect_timeout_ms.or(lower.connect_timeout_ms),
            queue_depth_per_cid: self.queue_depth_per_cid.or(lower.queue_depth_per_cid),
            handshake_timeout_ms: self.handshake_timeout_ms.or(lower.handshake_timeout_ms),
            reconnect_initial_ms: self.reconnect_initial_ms.or(lower.reconnect_initial_ms),
            reconnect_max_ms: self.reconnect_max_ms.or(lower.reconnect_max_ms),
            health_host: self.health_host.or(lower.health_host),
            health_port: self.health_port.or(lower.health_port),
            log_level: self.log_level.or(lower.log_level),
            log_format: self.log_format.or(lower.log_format),
        }
    }

    /// Applies defaults and checks every value, reporting all problems at once.
    pub fn validate(self) -> Result<AgentConfig, ConfigError> {
        let mut problems = Vec::new();
        self.validate_into(&mut problems)
            .filter(|_| problems.is_empty())
            .ok_or(ConfigError::Invalid(problems))
    }

    fn validate_into(self, problems: &mut Vec<Problem>) -> Option<AgentConfig> {
        let limits = Limits::default();
        let mut bad = |key: &str, message: String| {
            problems.push(Problem {
                key: key.to_owned(),
                message,
            })
        };
        const URL: &str = "tunnel.url (NC_AGENT_URL, --url)";
        const AGENT_ID: &str = "tunnel.agent_id (NC_AGENT_ID, --agent-id)";
        const CONNECTORS: &str = "tunnel.exported_connectors (NC_CONNECTORS, --connectors)";
        const INSECURE: &str =
            "tunnel.allow_insecure_ws (NC_ALLOW_INSECURE_WS, --allow-insecure-ws)";

        let allow_insecure_ws = self.allow_insecure_ws.unwrap_or(false);
        let url = match self.url.as_deref().map(str::trim) {
            None | Some("") => {
                bad(URL, "required (e.g. wss://relay.example.com/tunnel)".into());
                None
            }
            Some(raw) => match RelayUrl::parse(raw) {
                Ok(u) if !u.secure && !allow_insecure_ws => {
                    bad(
                        URL,
                        format!(
                            "ws:// is not encrypted (token and traffic in clear); use wss:// or, \
                             for local development only, set {INSECURE} to true"
                        ),
                    );
                    Some(u)
                }
                Ok(u) => Some(u),
                Err(e) => {
                    bad(URL, e);
                    None
                }
            },
        };

        let agent_id = self
            .agent_id
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let agent_id = match check_name(&agent_id, MAX_AGENT_ID_LEN) {
            // `check_name` bounded the length: the conversion cannot fail.
            Ok(()) => AgentId::try_from(agent_id.as_str()).unwrap_or_default(),
            Err(m) => {
                bad(AGENT_ID, m);
                AgentId::new()
            }
        };

        // Without an explicit list every configured target is exported.
        let connectors = self
            .connectors
            .unwrap_or_else(|| self.targets.keys().cloned().collect());
        if connectors.is_empty() {
            bad(CONNECTORS, "at least one connector is required".into());
        }
        if connectors.len() > MAX_CONNECTORS {
            bad(
                CONNECTORS,
                format!("{} connectors, at most {MAX_CONNECTORS}", connectors.len()),
            );
        }
        let mut targets = Targets::new();
        for (i, name) in connectors.iter().enumerate() {
            if let Err(m) = check_name(name, MAX_CONNECTOR_LEN) {
                bad(CONNECTORS, format!("connector `{}`: {m}", printable(name)));
                continue;
            }
            if connectors[..i].contains(name) {
                bad(CONNECTORS, format!("connector `{name}` is listed twice"));
                continue;
            }
            let t = self.targets.get(name).cloned().unwrap_or_default();
            let var = target_env_names(name)
                .into_iter()
                .last()
                .unwrap_or_default();
            // An IPv6 literal may be written in brackets, as in a URL.
            let host = t
                .host
                .map(|h| {
                    let h = h.trim();
                    match h.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
                        Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6.to_owned(),
                        _ => h.to_owned(),
                    }
                })
                .filter(|h| !h.is_empty());
            match (host, t.port) {
                (Some(host), Some(port)) if port != 0 => {
                    // Both fit: `check_name` bounded the name and the count was checked
                    // above (past the capacity the problem is already reported).
                    if let Ok(key) = ConnectorName::try_from(name.as_str()) {
                        let _ = targets.insert(key, Arc::new(Target { host, port }));
                    }
                }
                (host, port) => {
                    if host.is_none() {
                        bad(
                            &format!("targets.{name}.host ({var}_HOST)"),
                            "required for an exported connector".into(),
                        );
                    }
                    match port {
                        None => bad(
                            &format!("targets.{name}.port ({var}_PORT)"),
                            "required for an exported connector".into(),
                        ),
                        Some(0) => bad(
                            &format!("targets.{name}.port ({var}_PORT)"),
                            "must be between 1 and 65535".into(),
                        ),
                        Some(_) => {}
                    }
                }
            }
        }

        let protocol = match self
            .protocol
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
        {
            None => ProtocolChoice::Auto,
            Some(p) => match p.as_str() {
                "auto" | "" => ProtocolChoice::Auto,
                "v1" | "nowconnect.v1" => ProtocolChoice::V1,
                "v2" | "nowconnect.v2" => ProtocolChoice::V2,
                _ => {
                    bad(
                        "tunnel.protocol (NC_PROTOCOL, --protocol)",
                        format!("`{}` is not one of auto, v1, v2", printable(&p)),
                    );
                    ProtocolChoice::Auto
                }
            },
        };

        let nonzero_secs =
            |v: Option<u64>, default: u64, key: &str, bad: &mut dyn FnMut(&str, String)| match v
                .unwrap_or(default)
            {
                0 => {
                    bad(key, "must be at least 1".into());
                    Duration::from_secs(default)
                }
                s if s > 86_400 => {
                    bad(key, "must be at most 86400 (one day)".into());
                    Duration::from_secs(default)
                }
                s => Duration::from_secs(s),
            };
        let ping_interval = nonzero_secs(
            self.ping_interval_sec,
            20,
            "tunnel.ping_interval_sec (NC_PING_INTERVAL_SEC)",
            &mut bad,
        );
        let ping_timeout = nonzero_secs(
            self.ping_timeout_sec,
            20,
            "tunnel.ping_timeout_sec (NC_PING_TIMEOUT_SEC)",
            &mut bad,
        );
        let ms =
            |v: Option<u64>, default: u64, key: &str, bad: &mut dyn FnMut(&str, String)| match v
                .unwrap_or(default)
            {
                0 => {
                    bad(key, "must be at least 1".into());
                    Duration::from_millis(default)
                }
                m if m > 3_600_000 => {
                    bad(key, "must be at most 3600000 (one hour)".into());
                    Duration::from_millis(default)
                }
                m => Duration::from_millis(m),
            };
        let connect_timeout = ms(
            self.connect_timeout_ms,
            5_000,
            "limits.connect_timeout_ms (NC_CONNECT_TIMEOUT_MS)",
            &mut bad,
        );
        let handshake_timeout = ms(
            self.handshake_timeout_ms,
            15_000,
            "limits.handshake_timeout_ms",
            &mut bad,
        );
        let reconnect_initial = ms(
            self.reconnect_initial_ms,
            500,
            "limits.reconnect_initial_ms",
            &mut bad,
        );
        let reconnect_max = ms(
            self.reconnect_max_ms,
            30_000,
            "limits.reconnect_max_ms",
            &mut bad,
        );
        if reconnect_initial > reconnect_max {
            bad(
                "limits.reconnect_initial_ms",
                "must not exceed limits.reconnect_max_ms".into(),
            );
        }
        let queue_depth_per_cid = match self.queue_depth_per_cid.unwrap_or(256) {
            0 => {
                bad("limits.queue_depth_per_cid", "must be at least 1".into());
                1
            }
            n if n > 65_536 => {
                bad("limits.queue_depth_per_cid", "must be at most 65536".into());
                n
            }
            n => n,
        };

        let health_host = match self.health_host.as_deref().map(str::trim) {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(h) => match h
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                Ok(ip) => ip,
                Err(_) => {
                    bad(
                        "health.host (NC_HEALTH_HOST, --health-host)",
                        format!("`{}` is not an IP address", printable(h)),
                    );
                    IpAddr::from([0, 0, 0, 0])
                }
            },
        };
        let health_port = self.health_port.unwrap_or(DEFAULT_HEALTH_PORT);

        let proxy = match self.https_proxy.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => match ProxyUrl::parse(raw) {
                Ok(p) => Some(p),
                Err(m) => {
                    // Never echo the value: it may carry a password.
                    bad(
                        "proxy.https_proxy (--https-proxy; HTTPS_PROXY/ALL_PROXY with NC_TRUST_ENV)",
                        m,
                    );
                    None
                }
            },
        };
        let no_proxy = match NoProxy::parse(self.no_proxy.as_deref().unwrap_or("")) {
            Ok(n) => n,
            Err(m) => {
                bad("proxy.no_proxy (--no-proxy; NO_PROXY with NC_TRUST_ENV)", m);
                NoProxy::default()
            }
        };
        let ca_bundle = self.ca_bundle.filter(|p| !p.as_os_str().is_empty());
        let ca_bundle_only = self.ca_bundle_only.unwrap_or(false);
        if ca_bundle_only && ca_bundle.is_none() {
            bad(
                "proxy.ca_bundle_only (NC_CA_BUNDLE_ONLY, --ca-bundle-only)",
                "needs proxy.ca_bundle (NC_CA_BUNDLE, --ca-bundle): nothing would be trusted"
                    .into(),
            );
        }
        let cert = self.client_cert_file.filter(|p| !p.as_os_str().is_empty());
        let key = self.client_key_file.filter(|p| !p.as_os_str().is_empty());
        let client_cert = match (cert, key) {
            (Some(cert_file), Some(key_file)) => Some(ClientCert {
                cert_file,
                key_file,
            }),
            (None, None) => None,
            (Some(_), None) => {
                bad(
                    "tunnel.auth.client_key_file (NC_CLIENT_KEY, --client-key)",
                    "required with tunnel.auth.client_cert_file".into(),
                );
                None
            }
            (None, Some(_)) => {
                bad(
                    "tunnel.auth.client_cert_file (NC_CLIENT_CERT, --client-cert)",
                    "required with tunnel.auth.client_key_file".into(),
                );
                None
            }
        };
        let token_refresh_before = match self.token_refresh_sec.unwrap_or(DEFAULT_TOKEN_REFRESH_SEC)
        {
            0 => {
                bad(
                    "tunnel.auth.refresh_before_exp_sec (NC_TOKEN_REFRESH_SEC)",
                    "must be at least 1".into(),
                );
                Duration::from_secs(DEFAULT_TOKEN_REFRESH_SEC)
            }
            s if s > 86_400 => {
                bad(
                    "tunnel.auth.refresh_before_exp_sec (NC_TOKEN_REFRESH_SEC)",
                    "must be at most 86400 (one day)".into(),
                );
                Duration::from_secs(DEFAULT_TOKEN_REFRESH_SEC)
            }
            s => Duration::from_secs(s),
        };

        let log_level = normalise_level(self.log_level.as_deref().unwrap_or("info"));
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            bad(
                "logging.level (NC_LOG_LEVEL, --log-level)",
                format!("`{}` is not a log level or filter", printable(&log_level)),
            );
        }
        let log_format = match self
            .log_format
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("plain") | Some("text") | Some("") => LogFormat::Plain,
            Some("json") => LogFormat::Json,
            Some(other) => {
                bad(
                    "logging.format (NC_LOG_FORMAT, --log-format)",
                    format!("`{}` is not one of plain, json", printable(other)),
                );
                LogFormat::Plain
            }
        };

        let token_file = self.token_file.filter(|p| !p.as_os_str().is_empty());

        Some(AgentConfig {
            url: url?,
            agent_id,
            targets,
            token_file,
            token_refresh_before,
            tls: TlsSettings {
                ca_bundle,
                ca_bundle_only,
                client_cert,
                system_roots: RootSource::Native,
            },
            proxy,
            no_proxy,
            allow_insecure_ws,
            protocol,
            health_host,
            health_port,
            limits: AgentLimits {
                connect_timeout,
                queue_depth_per_cid,
                handshake_timeout,
                reconnect_initial,
                reconnect_max,
                protocol: limits,
            },
            keepalive: Keepalive {
                ping_interval,
                ping_timeout,
            },
            log_level,
            log_format,
        })
    }
}

impl AgentConfig {
    /// Configuration from a YAML document alone (no environment, no flags), with defaults.
    pub fn from_yaml_str(text: &str) -> Result<AgentConfig, ConfigError> {
        Layer::from_yaml_str(text, "YAML")?.validate()
    }

    /// The full precedence chain: `flags` > `env` > the YAML file named by `config_path` > defaults.
    pub fn load(
        flags: Layer,
        config_path: Option<&std::path::Path>,
        env: &dyn Env,
    ) -> Result<AgentConfig, ConfigError> {
        let yaml = match config_path {
            None => Layer::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Layer::from_yaml_str(&text, &path.display().to_string())?
            }
        };
        let mut problems = Vec::new();
        let mut names: Vec<String> = yaml.targets.keys().cloned().collect();
        names.extend(flags.connectors.iter().flatten().cloned());
        names.extend(yaml.connectors.iter().flatten().cloned());
        let mut env_layer = Layer::from_env(env, &names, &mut problems);
        // The standard proxy variables count only when trusted (flag, NC_TRUST_ENV or YAML).
        let trust_env = flags
            .trust_env
            .or(env_layer.trust_env)
            .or(yaml.trust_env)
            .unwrap_or(false);
        if trust_env {
            env_layer.https_proxy = PROXY_ENV_VARS.iter().find_map(|k| env_str(env, k));
            env_layer.no_proxy = NO_PROXY_ENV_VARS.iter().find_map(|k| env_str(env, k));
        }
        let merged = flags.over(env_layer).over(yaml);
        match merged.validate() {
            Ok(cfg) if problems.is_empty() => Ok(cfg),
            Ok(_) => Err(ConfigError::Invalid(problems)),
            Err(ConfigError::Invalid(more)) => {
                problems.extend(more);
                Err(ConfigError::Invalid(problems))
            }
            Err(e) => Err(e),
        }
    }

    /// The exported connectors, in HELLO order.
    pub fn connectors(&self) -> impl Iterator<Item = &str> + '_ {
        self.targets.keys().map(|k| k.as_str())
    }

    /// The target of connector `name`, if this agent exports it.
    pub fn target(&self, name: &str) -> Option<&Target> {
        // A name longer than any exported one cannot be exported.
        let key = ConnectorName::try_from(name).ok()?;
        self.targets.get(&key).map(Arc::as_ref)
    }

    /// The socket address of the health listener.
    pub fn health_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.health_host, self.health_port)
    }
}

/// `NC_TARGET_<name>` spellings tried for a connector, exact first.
fn target_env_names(name: &str) -> Vec<String> {
    let exact = format!("NC_TARGET_{name}");
    let upper = format!(
        "NC_TARGET_{}",
        name.chars()
            .map(|c| match c {
                '-' | '.' | ' ' => '_',
                c => c.to_ascii_uppercase(),
            })
            .collect::<String>()
    );
    if upper == exact {
        vec![exact]
    } else {
        vec![exact, upper]
    }
}

fn env_str(env: &dyn Env, key: &str) -> Option<String> {
    env.get(key).filter(|v| !v.trim().is_empty())
}

fn env_parse<T>(
    env: &dyn Env,
    key: &str,
    parse: fn(&str) -> Result<T, String>,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let v = env_str(env, key)?;
    match parse(v.trim()) {
        Ok(t) => Some(t),
        Err(m) => {
            problems.push(Problem {
                key: key.to_owned(),
                message: m,
            });
            None
        }
    }
}

/// `true/false`, `1/0`, `yes/no`, `on/off`, any case.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("`{}` is not true or false", printable(s))),
    }
}

fn parse_num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("`{}` is not a valid number here", printable(s)))
}

/// Comma-separated list, blanks dropped.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Python-style level names of the reference (`INFO`, `WARNING`, `CRITICAL`) as tracing levels.
fn normalise_level(s: &str) -> String {
    match s.trim().to_ascii_lowercase().as_str() {
        "warning" => "warn".into(),
        "critical" | "fatal" => "error".into(),
        "" => "info".into(),
        other => other.to_owned(),
    }
}

fn check_name(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err("required, must not be empty".into());
    }
    if s.len() > max {
        return Err(format!("{} bytes long, at most {max}", s.len()));
    }
    if s.chars().any(|c| c.is_control() || c == ',') {
        return Err("must not contain control characters or commas".into());
    }
    Ok(())
}

/// A value safe to echo in an error line: no control characters, bounded.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(80).collect()
}

#[cfg(test)]
mod tests;
