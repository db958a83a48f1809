//! Relay configuration: YAML (`config/cloud.yaml`) -> env overrides -> `validate()` -> [`RelayConfig`].
//!
//! Parsing is strict (`deny_unknown_fields`, module `raw`) except for keys that later issues
//! implement (`security.fapi_mode`): it is accepted and produces a warning, so an
//! operator's existing reference config loads. Each YAML section has one validator in the file
//! named after it; all of them report into one `Collector`, so validation reports every problem
//! at once, each naming its key. This module never reads the process environment itself:
//! callers pass an [`Env`].

mod audit;
mod check;
mod collector;
mod env;
mod ha;
mod jwks;
mod limits;
mod listeners;
mod observability;
mod pdp;
mod portal;
mod preauth;
mod raw;
mod security;
mod sni_routes;
mod tunnel;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use collector::{ConfigError, Problem};
pub use env::{Env, ProcessEnv};
pub use ha::{HaConfig, HaMode, MeshConfig, MeshPeer, MeshTls, MAX_MESH_PEERS};
pub use jwks::JwksSource;
pub use limits::LimitsConfig;
pub use listeners::ListenerConfig;
pub use observability::ObservabilityConfig;
pub use pdp::PdpConfig;
pub use portal::{OidcConfig, PolicyDefaults, PortalConfig, DEFAULT_PORTAL_AUDIENCE};
pub use preauth::PreauthConfig;
pub use security::{AbuseConfig, DuplicatePolicy, JwtConfig, SecurityConfig, DEFAULT_AUDIENCE};
pub use sni_routes::{Routing, SniMatch, SniRoutes, DEFAULT_SNI_PEEK_TIMEOUT_MS, MAX_SNI_ROUTES};
pub use tunnel::{TlsConfig, TunnelConfig, DEFAULT_TUNNEL_PORT};

use collector::Collector;
use raw::RawConfig;

/// A validated relay configuration: every default filled in, nothing left to unwrap.
#[derive(Debug, Clone, PartialEq)]
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
    /// How many refusal records the audit trail writes before it aggregates.
    pub audit_limits: crate::audit::RefusalLimits,
    /// Where policies and the block list persist; `None`: they last until the relay stops.
    pub state_dir: Option<PathBuf>,
    /// Several relays as one service (`ha.mode: off` by default).
    pub ha: HaConfig,
    /// Accepted-but-ignored keys and similar notes; logged at start-up.
    pub warnings: Vec<String>,
}

impl RelayConfig {
    /// Parses and validates YAML. No environment overrides are applied (see
    /// [`RelayConfig::from_yaml_str_with_env`]), so tests are independent of the process env.
    pub fn from_yaml_str(yaml: &str) -> Result<RelayConfig, ConfigError> {
        Self::from_yaml_str_with_env(yaml, &env::no_env)
    }

    /// Parses YAML, applies `NOWCONNECT_*` overrides from `env`, validates.
    pub fn from_yaml_str_with_env(yaml: &str, env: &dyn Env) -> Result<RelayConfig, ConfigError> {
        // An empty document is an empty mapping: all defaults (and then "no listeners").
        let raw: RawConfig = if yaml.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(yaml).map_err(|e| ConfigError::Yaml(e.to_string()))?
        };
        validate(raw, env)
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
                    routing: Routing::Connector((*connector).to_owned()),
                    allow_cidrs: Vec::new(),
                    proxy_protocol: false,
                    max_conn_per_source: limits::default_per_source(limits::DEFAULT_MAX_CONN),
                })
                .collect(),
            tunnel: TunnelConfig {
                host: "127.0.0.1".to_owned(),
                port: 0,
                max_ws_payload: tunnel::DEFAULT_MAX_WS_PAYLOAD,
                ping_interval: Duration::from_secs(tunnel::DEFAULT_PING_SEC),
                ping_timeout: Duration::from_secs(tunnel::DEFAULT_PING_SEC),
                tls: None,
                proxy_protocol: false,
                preauth: PreauthConfig::default(),
            },
            limits: LimitsConfig {
                idle_timeout: Some(Duration::from_millis(limits::DEFAULT_IDLE_MS)),
                queue_depth_per_cid: limits::DEFAULT_QUEUE_DEPTH,
                queue_bytes_per_cid: limits::DEFAULT_QUEUE_BYTES,
                max_conn_total: limits::DEFAULT_MAX_CONN,
                max_conn_per_source: limits::default_per_source(limits::DEFAULT_MAX_CONN),
                max_streams_per_agent: limits::DEFAULT_MAX_STREAMS_PER_AGENT,
                shutdown_grace: Duration::from_millis(limits::DEFAULT_GRACE_MS),
                max_buffered_bytes: limits::DEFAULT_MAX_BUFFERED_BYTES,
                max_stream_window: nowconnect_shared::DEFAULT_MAX_STREAM_WINDOW,
                max_tunnels_per_agent: limits::DEFAULT_MAX_TUNNELS_PER_AGENT,
                max_tunnels_per_jti: limits::DEFAULT_MAX_TUNNELS_PER_JTI,
            },
            security: SecurityConfig {
                dev_bypass: true,
                allow_cidrs: Vec::new(),
                tunnel_allow_cidrs: Vec::new(),
                jwt: None,
                require_connector_scopes: false,
                allow_insecure_http: false,
                duplicate_agent: DuplicatePolicy::default(),
                abuse: AbuseConfig::default(),
                trusted_proxies: Vec::new(),
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
                admin_role: portal::DEFAULT_ADMIN_ROLE.to_owned(),
                defaults: PolicyDefaults::new(false),
                oidc: None,
            },
            audit_file: None,
            audit_limits: crate::audit::RefusalLimits::default(),
            state_dir: None,
            ha: HaConfig::off(),
            warnings: Vec::new(),
        }
    }
}

/// Runs every section's validator, in YAML order, into one collector. A section that needs
/// another's result (the dev bypass needs `tunnel.host`, the portal `security`'s issuer) runs
/// after it and gets it as an argument.
fn validate(raw: RawConfig, env: &dyn Env) -> Result<RelayConfig, ConfigError> {
    let mut c = Collector::default();
    let tunnel_port = raw.tunnel.port;
    let ca_file = raw.security.ca_file.clone();
    let caps = limits::conn_caps(&raw.limits);
    let listeners = listeners::validate_listeners(&mut c, raw.listeners, caps);
    let tunnel = tunnel::validate_tunnel(&mut c, raw.tunnel);
    let limits = limits::validate_limits(&mut c, raw.limits);
    warn_unimplemented(&mut c, raw.security.fapi_mode.is_some());
    let security = security::validate_security(&mut c, env, raw.security, &tunnel.host);
    check_proxy_protocol(&mut c, &tunnel, &listeners, &security);
    let pdp = pdp::validate_pdp(&mut c, env, raw.pdp, ca_file, security.allow_insecure_http);
    let observability =
        observability::validate_observability(&mut c, raw.observability, tunnel_port);
    let state_dir = raw.state_dir.filter(|d| !d.as_os_str().is_empty());
    let portal = portal::validate_portal(&mut c, raw.portal, &security);
    let (audit_file, audit_limits) = audit::validate_audit(&mut c, raw.audit, state_dir.as_deref());
    let ha = ha::validate_ha(&mut c, env, raw.ha);
    let warnings = c.finish()?;
    Ok(RelayConfig {
        listeners,
        tunnel,
        limits,
        security,
        pdp,
        observability,
        portal,
        audit_file,
        audit_limits,
        state_dir,
        ha,
        warnings,
    })
}

/// A PROXY header is believed only from `security.trusted_proxies`: without any, every
/// connection to a port that expects one would be closed.
fn check_proxy_protocol(
    c: &mut Collector,
    tunnel: &TunnelConfig,
    listeners: &[ListenerConfig],
    security: &SecurityConfig,
) {
    if !security.trusted_proxies.is_empty() {
        return;
    }
    let on = tunnel
        .proxy_protocol
        .then(|| "tunnel.proxy_protocol".to_owned())
        .into_iter()
        .chain(
            listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| l.proxy_protocol)
                .map(|(i, _)| format!("listeners[{i}].proxy_protocol")),
        )
        .collect::<Vec<_>>();
    if !on.is_empty() {
        c.bad(
            "security.trusted_proxies",
            format!(
                "is required with {}: a PROXY header is believed only from these peers",
                on.join(", ")
            ),
        );
    }
}

/// A key of a later issue: accepted so an existing reference config loads, and warned about.
fn warn_unimplemented(c: &mut Collector, fapi_mode: bool) {
    if fapi_mode {
        c.warn("security.fapi_mode is not implemented yet and is ignored");
    }
}

#[cfg(test)]
mod tests;
