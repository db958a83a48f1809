//! [`Layer`]: every setting as one source (flags, environment, YAML) gives it, how the YAML
//! file and the reference agent's `NC_*` variables are read into one, and how layers merge by
//! precedence. A layer holds raw values; `Layer::validate` (module `validate`) checks them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::collector::{Collector, ConfigError, Problem};
use super::env::{env_parse, env_str, parse_bool, parse_num, split_list, target_env_names, Env};
use super::yaml::YamlFile;

/// A target as far as one source knows it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartialTarget {
    /// `host:` (or one name in `NC_TARGET_<name>_HOST`).
    pub host: Option<String>,
    /// `hosts:` (or a comma-separated `NC_TARGET_<name>_HOST`). One source sets `host` or
    /// `hosts`; both from one source is reported by validation.
    pub hosts: Option<Vec<String>>,
    pub port: Option<u16>,
    /// Unparsed: validation names the key of a bad one.
    pub strategy: Option<String>,
}

/// Every setting as one source gives it; `None` = this source does not set it.
#[derive(Debug, Default, Clone)]
pub struct Layer {
    pub url: Option<String>,
    pub connections: Option<usize>,
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
    pub queue_bytes_per_cid: Option<usize>,
    pub max_stream_window_bytes: Option<u64>,
    pub handshake_timeout_ms: Option<u64>,
    pub reconnect_initial_ms: Option<u64>,
    pub reconnect_max_ms: Option<u64>,
    pub health_host: Option<String>,
    pub health_port: Option<u16>,
    pub metrics_host: Option<String>,
    pub metrics_port: Option<u16>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

impl Layer {
    /// Parses a YAML document (`premise.yaml`). An empty document sets nothing.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Layer, ConfigError> {
        let file = YamlFile::parse(text, origin)?;
        let YamlFile {
            tunnel,
            targets,
            limits,
            proxy,
            health,
            metrics,
            logging,
        } = file;
        // `url` and `urls` form one list, `url` first; the layer keeps it comma-separated like
        // NC_AGENT_URL.
        let url = match (tunnel.url, tunnel.urls) {
            (u, None) => u,
            (None, Some(list)) => Some(list.join(",")),
            (Some(u), Some(list)) => {
                Some(std::iter::once(u).chain(list).collect::<Vec<_>>().join(","))
            }
        };
        Ok(Layer {
            url,
            connections: tunnel.connections,
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
                            hosts: t.hosts,
                            port: t.port,
                            strategy: t.strategy,
                        },
                    )
                })
                .collect(),
            connect_timeout_ms: limits.connect_timeout_ms,
            queue_depth_per_cid: limits.queue_depth_per_cid,
            queue_bytes_per_cid: limits.queue_bytes_per_cid,
            max_stream_window_bytes: limits.max_stream_window_bytes,
            handshake_timeout_ms: limits.handshake_timeout_ms,
            reconnect_initial_ms: limits.reconnect_initial_ms,
            reconnect_max_ms: limits.reconnect_max_ms,
            health_host: health.host,
            health_port: health.port,
            metrics_host: metrics.host,
            metrics_port: metrics.port,
            log_level: logging.level,
            log_format: logging.format,
        })
    }

    /// Reads the reference agent's environment variables. `connector_names` are the names whose
    /// `NC_TARGET_<name>_HOST` / `_PORT` / `_STRATEGY` are looked up (exact name first, then upper case with
    /// `-` and `.` as `_`). Unparsable values are reported into `problems`.
    pub fn from_env(
        env: &dyn Env,
        connector_names: &[String],
        problems: &mut Vec<Problem>,
    ) -> Layer {
        let mut c = Collector::default();
        let mut l = Layer {
            url: env_str(env, "NC_AGENT_URL"),
            connections: env_parse(env, "NC_AGENT_CONNECTIONS", parse_num, &mut c),
            agent_id: env_str(env, "NC_AGENT_ID"),
            connectors: env_str(env, "NC_CONNECTORS").map(|s| split_list(&s)),
            token_file: env_str(env, "NC_TOKEN_FILE").map(PathBuf::from),
            token_refresh_sec: env_parse(env, "NC_TOKEN_REFRESH_SEC", parse_num, &mut c),
            client_cert_file: env_str(env, "NC_CLIENT_CERT").map(PathBuf::from),
            client_key_file: env_str(env, "NC_CLIENT_KEY").map(PathBuf::from),
            ca_bundle: env_str(env, "NC_CA_BUNDLE").map(PathBuf::from),
            ca_bundle_only: env_parse(env, "NC_CA_BUNDLE_ONLY", parse_bool, &mut c),
            trust_env: env_parse(env, "NC_TRUST_ENV", parse_bool, &mut c),
            allow_insecure_ws: env_parse(env, "NC_ALLOW_INSECURE_WS", parse_bool, &mut c),
            protocol: env_str(env, "NC_PROTOCOL"),
            ping_interval_sec: env_parse(env, "NC_PING_INTERVAL_SEC", parse_num, &mut c),
            ping_timeout_sec: env_parse(env, "NC_PING_TIMEOUT_SEC", parse_num, &mut c),
            connect_timeout_ms: env_parse(env, "NC_CONNECT_TIMEOUT_MS", parse_num, &mut c),
            max_stream_window_bytes: env_parse(
                env,
                "NC_MAX_STREAM_WINDOW_BYTES",
                parse_num,
                &mut c,
            ),
            health_host: env_str(env, "NC_HEALTH_HOST"),
            health_port: env_parse(env, "NC_HEALTH_PORT", parse_num, &mut c),
            metrics_host: env_str(env, "NC_METRICS_HOST"),
            metrics_port: env_parse(env, "NC_METRICS_PORT", parse_num, &mut c),
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
                if t.host.is_none() && t.hosts.is_none() {
                    // A comma-separated value lists several hosts.
                    match env_str(env, &format!("{var}_HOST")) {
                        Some(v) if v.contains(',') => t.hosts = Some(split_list(&v)),
                        v => t.host = v,
                    }
                }
                if t.strategy.is_none() {
                    t.strategy = env_str(env, &format!("{var}_STRATEGY"));
                }
                if t.port.is_none() {
                    t.port = env_parse(env, &format!("{var}_PORT"), parse_num, &mut c);
                }
            }
            if t != PartialTarget::default() {
                l.targets.insert(name.clone(), t);
            }
        }
        problems.extend(c.into_problems());
        l
    }

    /// `self` wins over `lower`, key by key (targets: field by field per connector).
    pub fn over(self, lower: Layer) -> Layer {
        let mut targets = lower.targets;
        for (name, t) in self.targets {
            let e = targets.entry(name).or_default();
            // `host` and `hosts` are one setting: the higher source's wins whole.
            if t.host.is_some() || t.hosts.is_some() {
                e.host = t.host;
                e.hosts = t.hosts;
            }
            e.port = t.port.or(e.port);
            e.strategy = t.strategy.or(e.strategy.take());
        }
        Layer {
            url: self.url.or(lower.url),
            connections: self.connections.or(lower.connections),
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
            queue_bytes_per_cid: self.queue_bytes_per_cid.or(lower.queue_bytes_per_cid),
            max_stream_window_bytes: self
                .max_stream_window_bytes
                .or(lower.max_stream_window_bytes),
            handshake_timeout_ms: self.handshake_timeout_ms.or(lower.handshake_timeout_ms),
            reconnect_initial_ms: self.reconnect_initial_ms.or(lower.reconnect_initial_ms),
            reconnect_max_ms: self.reconnect_max_ms.or(lower.reconnect_max_ms),
            health_host: self.health_host.or(lower.health_host),
            health_port: self.health_port.or(lower.health_port),
            metrics_host: self.metrics_host.or(lower.metrics_host),
            metrics_port: self.metrics_port.or(lower.metrics_port),
            log_level: self.log_level.or(lower.log_level),
            log_format: self.log_format.or(lower.log_format),
        }
    }
}
