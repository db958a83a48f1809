//! Agent configuration: clap flags > environment > YAML (`premise.yaml`) > defaults.
//!
//! Every source is first read into a [`Layer`] of optional values (modules `layer`, `yaml`,
//! `env`); the layers are merged by precedence and then [`validate`](Layer::validate)d into an
//! [`AgentConfig`], which has no `Option` left that a caller would have to unwrap. Validation
//! (module `validate`, one validator per section) reports every problem at once, each naming
//! the YAML key (and the environment variable or flag that sets it).
//! The environment is read through the [`Env`] trait so tests never touch the process env.
//! This module never opens a socket and never reads the token file (only its path).

mod auth;
mod check;
mod collector;
mod env;
mod health;
mod layer;
mod limits;
mod logging;
mod metrics;
mod proxy;
mod targets;
mod tunnel;
mod validate;
mod yaml;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use auth::DEFAULT_TOKEN_REFRESH_SEC;
pub use collector::{ConfigError, Problem};
pub use env::{parse_bool, split_list, Env, ProcessEnv, NO_PROXY_ENV_VARS, PROXY_ENV_VARS};
pub use health::{DEFAULT_HEALTH_HOST, DEFAULT_HEALTH_PORT};
pub use layer::{Layer, PartialTarget};
pub use limits::AgentLimits;
pub use logging::{log_filter, LogFormat};
pub use metrics::DEFAULT_METRICS_HOST;
pub use targets::{
    ConnectorName, Strategy, Target, TargetSet, Targets, MAX_CONNECTORS, MAX_CONNECTOR_LEN,
    MAX_HOSTS,
};
pub use tunnel::{AgentId, Keepalive, ProtocolChoice, MAX_AGENT_ID_LEN, MAX_CONNECTIONS};

use crate::no_proxy::NoProxy;
use crate::proxy::ProxyUrl;
use crate::tls::TlsSettings;
use crate::url::RelayUrl;
use env::env_str;

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `tunnel.url`: the relay's `/tunnel` endpoint (the first of [`AgentConfig::urls`]).
    pub url: RelayUrl,
    /// `tunnel.url` and `tunnel.urls` (`NC_AGENT_URL` a comma-separated list): relays of one
    /// service, tried in turn when one cannot be reached. Never empty; `urls[0] == url`.
    pub urls: Vec<RelayUrl>,
    /// `tunnel.connections` (`NC_AGENT_CONNECTIONS`): tunnels kept at once, each to another
    /// relay of `urls`, each with its own reconnects; 1 (default) or 2, at most `urls.len()`.
    pub connections: usize,
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
    /// `metrics.host` / `metrics.port` (`NC_METRICS_HOST`, `NC_METRICS_PORT`): the Prometheus
    /// endpoint, `None` (the default) when no port is set; host 127.0.0.1 by default, port 0:
    /// any free port.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub limits: AgentLimits,
    pub keepalive: Keepalive,
    /// `logging.level`: a tracing filter (`info`, `debug`, `nowconnect_agent=trace`, ...).
    pub log_level: String,
    pub log_format: LogFormat,
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
        self.targets.get(&key).map(|s| &s.target)
    }

    /// The socket address of the health listener.
    pub fn health_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.health_host, self.health_port)
    }
}

#[cfg(test)]
mod tests;
