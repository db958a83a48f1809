//! The shape of `premise.yaml` as serde reads it. Unknown keys are errors: a typo must not be
//! ignored silently. Nothing here checks a value; `Layer::from_yaml_str` takes it from here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::collector::ConfigError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct YamlFile {
    pub(super) tunnel: YamlTunnel,
    pub(super) targets: BTreeMap<String, YamlTarget>,
    pub(super) limits: YamlLimits,
    pub(super) proxy: YamlProxy,
    pub(super) health: YamlHealth,
    pub(super) metrics: YamlMetrics,
    pub(super) logging: YamlLogging,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct YamlTunnel {
    pub(super) url: Option<String>,
    /// More relays, tried in turn after `url` (several relays as one service).
    pub(super) urls: Option<Vec<String>>,
    /// Tunnels kept at once, each to another relay of the list.
    pub(super) connections: Option<usize>,
    pub(super) agent_id: Option<String>,
    pub(super) exported_connectors: Option<Vec<String>>,
    pub(super) auth: YamlAuth,
    pub(super) protocol: Option<String>,
    pub(super) allow_insecure_ws: Option<bool>,
    pub(super) ping_interval_sec: Option<u64>,
    pub(super) ping_timeout_sec: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct YamlAuth {
    pub(super) token_file: Option<PathBuf>,
    pub(super) refresh_before_exp_sec: Option<u64>,
    pub(super) client_cert_file: Option<PathBuf>,
    pub(super) client_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct YamlTarget {
    /// One host (the reference agent's key).
    pub(super) host: Option<String>,
    /// Several hosts behind one connector (not with `host`).
    pub(super) hosts: Option<Vec<String>>,
    pub(super) port: Option<u16>,
    /// `failover` (default) or `round_robin`.
    pub(super) strategy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct YamlLimits {
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) queue_depth_per_cid: Option<usize>,
    pub(super) queue_bytes_per_cid: Option<usize>,
    pub(super) max_stream_window_bytes: Option<u64>,
    pub(super) handshake_timeout_ms: Option<u64>,
    pub(super) reconnect_initial_ms: Option<u64>,
    pub(super) reconnect_max_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct YamlProxy {
    pub(super) https_proxy: Option<String>,
    pub(super) no_proxy: Option<String>,
    pub(super) ca_bundle: Option<PathBuf>,
    pub(super) ca_bundle_only: Option<bool>,
    pub(super) trust_env: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct YamlHealth {
    pub(super) host: Option<String>,
    pub(super) port: Option<u16>,
}

/// The Prometheus endpoint; same shape as `health`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct YamlMetrics {
    pub(super) host: Option<String>,
    pub(super) port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct YamlLogging {
    pub(super) level: Option<String>,
    pub(super) format: Option<String>,
}

impl YamlFile {
    /// Parses a document; an empty one (or `~`) sets nothing.
    pub(super) fn parse(text: &str, origin: &str) -> Result<YamlFile, ConfigError> {
        if text.trim().is_empty() {
            return Ok(YamlFile::default());
        }
        Ok(serde_yaml::from_str::<Option<YamlFile>>(text)
            .map_err(|e| ConfigError::Yaml {
                origin: origin.to_owned(),
                message: e.to_string(),
            })?
            .unwrap_or_default())
    }
}
