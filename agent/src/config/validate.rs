//! [`Layer::validate`]: the merged layer, defaults applied and every value checked, into an
//! [`AgentConfig`]. Each section has its own validator; all report into one [`Collector`], in
//! the order below, so every problem is reported at once.

use super::auth::validate_auth;
use super::collector::{Collector, ConfigError};
use super::health::validate_health;
use super::layer::Layer;
use super::limits::validate_limits;
use super::logging::validate_logging;
use super::metrics::validate_metrics;
use super::proxy::validate_proxy;
use super::tunnel::validate_tunnel;
use super::AgentConfig;
use crate::tls::{RootSource, TlsSettings};

impl Layer {
    /// Applies defaults and checks every value, reporting all problems at once.
    pub fn validate(self) -> Result<AgentConfig, ConfigError> {
        let mut c = Collector::default();
        let config = agent_config(&mut c, &self);
        c.finish(config)
    }
}

/// `None` only when `tunnel.url` is missing or unparsable (a problem says so).
fn agent_config(c: &mut Collector, l: &Layer) -> Option<AgentConfig> {
    let tunnel = validate_tunnel(c, l);
    let limits = validate_limits(c, l);
    let (health_host, health_port) = validate_health(c, l);
    let metrics_addr = validate_metrics(c, l, (health_host, health_port));
    let proxy = validate_proxy(c, l);
    let auth = validate_auth(c, l);
    let (log_level, log_format) = validate_logging(c, l);
    Some(AgentConfig {
        url: tunnel.urls.first()?.clone(),
        urls: tunnel.urls,
        connections: tunnel.connections,
        agent_id: tunnel.agent_id,
        targets: tunnel.targets,
        token_file: auth.token_file,
        token_refresh_before: auth.token_refresh_before,
        tls: TlsSettings {
            ca_bundle: proxy.ca_bundle,
            ca_bundle_only: proxy.ca_bundle_only,
            client_cert: auth.client_cert,
            system_roots: RootSource::Native,
        },
        proxy: proxy.proxy,
        no_proxy: proxy.no_proxy,
        allow_insecure_ws: tunnel.allow_insecure_ws,
        protocol: tunnel.protocol,
        health_host,
        health_port,
        metrics_addr,
        limits,
        keepalive: tunnel.keepalive,
        log_level,
        log_format,
    })
}
