//! The relay YAML's shape as serde reads it: every key optional, unknown keys refused.
//!
//! Nothing here checks a value or fills a default; the section validators do that. The two
//! key that a later issue implements (`security.fapi_mode`) is accepted as any YAML value
//! so that an operator's existing reference config loads (it produces a warning).

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) listeners: Vec<RawListener>,
    #[serde(default)]
    pub(super) tunnel: RawTunnel,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) security: RawSecurity,
    #[serde(default)]
    pub(super) observability: RawObservability,
    #[serde(default)]
    pub(super) pdp: RawPdp,
    #[serde(default)]
    pub(super) portal: RawPortal,
    #[serde(default)]
    pub(super) audit: RawAudit,
    /// Where the relay keeps state across restarts (policies, block list, default audit file).
    pub(super) state_dir: Option<PathBuf>,
    /// Several relays as one service.
    pub(super) ha: Option<RawHa>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHa {
    pub(super) enabled: Option<bool>,
    pub(super) mode: Option<String>,
    pub(super) replica_id: Option<String>,
    pub(super) redis_url: Option<String>,
    pub(super) presence_ttl_sec: Option<u64>,
    pub(super) mesh: Option<RawMesh>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMesh {
    pub(super) listen: Option<String>,
    pub(super) advertise_url: Option<String>,
    #[serde(default)]
    pub(super) peers: Vec<RawMeshPeer>,
    pub(super) require_mtls: Option<bool>,
    pub(super) tls: Option<RawMeshTls>,
    pub(super) send_queue_depth: Option<usize>,
    pub(super) per_link_max_inflight_bytes: Option<usize>,
    pub(super) connect_backoff_max_sec: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMeshPeer {
    pub(super) replica_id: String,
    pub(super) url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMeshTls {
    pub(super) ca_bundle: Option<PathBuf>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: Option<String>,
    pub(super) bind: Option<String>,
    pub(super) connector: Option<String>,
    #[serde(default)]
    pub(super) allow_cidrs: Vec<String>,
    pub(super) proxy_protocol: Option<bool>,
    pub(super) max_conn_per_source: Option<usize>,
    /// `connector` (default) or `sni`.
    pub(super) route_by: Option<String>,
    /// With `route_by: sni`: server name (or `*.suffix`) -> connector.
    pub(super) routes: Option<std::collections::BTreeMap<String, String>>,
    /// With `route_by: sni`: the connector of a client without a name or with an unknown one.
    pub(super) default: Option<String>,
    pub(super) sni_peek_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTunnel {
    pub(super) host: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) max_ws_payload: Option<usize>,
    pub(super) ping_interval_sec: Option<u64>,
    pub(super) ping_timeout_sec: Option<u64>,
    pub(super) tls: Option<RawTls>,
    pub(super) proxy_protocol: Option<bool>,
    #[serde(default)]
    pub(super) preauth: RawPreauth,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPreauth {
    pub(super) max_total: Option<usize>,
    pub(super) max_per_source: Option<usize>,
    pub(super) head_timeout_ms: Option<u64>,
    pub(super) idle_timeout_ms: Option<u64>,
    pub(super) max_header_bytes: Option<usize>,
    pub(super) max_headers: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) client_ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) idle_timeout_ms: Option<u64>,
    pub(super) queue_depth_per_cid: Option<usize>,
    pub(super) queue_bytes_per_cid: Option<usize>,
    pub(super) max_conn_total: Option<usize>,
    pub(super) max_conn_per_source: Option<usize>,
    pub(super) max_streams_per_agent: Option<usize>,
    pub(super) shutdown_grace_ms: Option<u64>,
    pub(super) max_buffered_bytes: Option<usize>,
    pub(super) max_stream_window_bytes: Option<u64>,
    pub(super) max_tunnels_per_agent: Option<usize>,
    pub(super) max_tunnels_per_jti: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecurity {
    pub(super) dev_bypass: Option<bool>,
    pub(super) allow_cidrs: Option<Vec<String>>,
    pub(super) tunnel_allow_cidrs: Option<Vec<String>>,
    pub(super) jwks_url: Option<String>,
    pub(super) audience: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) require_connector_scopes: Option<bool>,
    pub(super) leeway_sec: Option<u64>,
    pub(super) jwks_refresh_sec: Option<u64>,
    pub(super) jwks_min_refresh_sec: Option<u64>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) allow_insecure_http: Option<bool>,
    pub(super) duplicate_agent: Option<String>,
    pub(super) max_pending_upgrades_per_ip: Option<usize>,
    pub(super) auth_failure_limit: Option<u32>,
    pub(super) auth_failure_window_sec: Option<u64>,
    pub(super) auth_cooldown_sec: Option<u64>,
    pub(super) shared_egress_cidrs: Option<Vec<String>>,
    pub(super) trusted_proxies: Option<Vec<String>>,
    /// Later issue: accepted, ignored with a warning.
    pub(super) fapi_mode: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPdp {
    pub(super) url: Option<String>,
    pub(super) cache_ttl_sec: Option<u64>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) fail_open: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPortal {
    pub(super) bind: Option<String>,
    pub(super) jwks_url: Option<String>,
    pub(super) audience: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) admin_role: Option<String>,
    pub(super) mfa_required: Option<bool>,
    pub(super) pdp_enforce: Option<bool>,
    pub(super) cidr_allowlists: Option<bool>,
    pub(super) oidc: Option<RawOidc>,
}

/// `portal.oidc`: the dashboard's sign-in.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    pub(super) issuer: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) scopes: Option<RawScopes>,
}

/// Scopes as a list or one space-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawScopes {
    List(Vec<String>),
    Line(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) file: Option<PathBuf>,
    pub(super) max_file_bytes: Option<u64>,
    pub(super) keep_files: Option<usize>,
    pub(super) max_refusals_per_source: Option<u32>,
    pub(super) max_refusals_total: Option<u32>,
    pub(super) refusal_window_sec: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObservability {
    pub(super) metrics_port: Option<u16>,
    pub(super) log_level: Option<String>,
}
