//! The `tunnel` section: the HTTP server agents dial (`/tunnel`), its keepalive, its TLS, the
//! PROXY protocol switch and the pre-auth limits (`tunnel.preauth`, module `preauth`).

use std::path::PathBuf;
use std::time::Duration;

use super::collector::Collector;
use super::preauth::{validate_preauth, PreauthConfig};
use super::raw::RawTunnel;

/// Default `/tunnel` port of the reference hub.
pub const DEFAULT_TUNNEL_PORT: u16 = 8765;
pub(super) const DEFAULT_MAX_WS_PAYLOAD: usize = 64 * 1024;
pub(super) const DEFAULT_PING_SEC: u64 = 20;

#[derive(Debug, Clone, PartialEq)]
pub struct TunnelConfig {
    /// Host or IP the HTTP server (`/tunnel`, health, metrics) binds.
    pub host: String,
    pub port: u16,
    /// Largest DATA payload the relay sends (client reads are chunked to it).
    pub max_ws_payload: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub tls: Option<TlsConfig>,
    /// Every connection to this port starts with a PROXY protocol v1/v2 header from one of
    /// `security.trusted_proxies`; the address in it is the agent's (allowlists, cool-downs,
    /// audit, portal).
    pub proxy_protocol: bool,
    /// Limits on connections that have not authenticated yet (every HTTP server).
    pub preauth: PreauthConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, agents must present a client certificate issued by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

pub(super) fn validate_tunnel(c: &mut Collector, t: RawTunnel) -> TunnelConfig {
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
    TunnelConfig {
        host,
        port: t.port.unwrap_or(DEFAULT_TUNNEL_PORT),
        max_ws_payload,
        ping_interval: Duration::from_secs(ping_interval_sec),
        ping_timeout: Duration::from_secs(ping_timeout_sec),
        tls,
        proxy_protocol: t.proxy_protocol.unwrap_or(false),
        preauth: validate_preauth(c, t.preauth),
    }
}
