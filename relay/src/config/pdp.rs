//! The `pdp` section: the optional policy decision point asked on every OPEN, with its
//! `NOWCONNECT_PDP_*` overrides.

use std::path::PathBuf;
use std::time::Duration;

use super::check::check_http_url;
use super::collector::Collector;
use super::env::{env_str, parse_bool_env, parse_u64_env, Env};
use super::raw::RawPdp;

const DEFAULT_PDP_CACHE_TTL_SEC: u64 = 30;
const DEFAULT_PDP_TIMEOUT_MS: u64 = 500;

/// OpenID AuthZEN-style policy decision point asked on every OPEN.
#[derive(Debug, Clone, PartialEq)]
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

/// `None` without a URL (every OPEN that passes the CIDR checks is allowed). `ca_file` is
/// `security.ca_file`; `allow_insecure_http` is `security.allow_insecure_http`.
pub(super) fn validate_pdp(
    c: &mut Collector,
    env: &dyn Env,
    p: RawPdp,
    ca_file: Option<PathBuf>,
    allow_insecure_http: bool,
) -> Option<PdpConfig> {
    let (pdp_key, pdp_url) = match env_str(env, "NOWCONNECT_PDP_URL") {
        Some(v) => ("NOWCONNECT_PDP_URL", Some(v)),
        None => (
            "pdp.url",
            p.url.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()),
        ),
    };
    let mut cache_ttl_sec = p.cache_ttl_sec.unwrap_or(DEFAULT_PDP_CACHE_TTL_SEC);
    if let Some(v) = parse_u64_env(c, env, "NOWCONNECT_PDP_CACHE_TTL_SEC") {
        cache_ttl_sec = v;
    }
    if cache_ttl_sec > 86_400 {
        c.bad(
            "pdp.cache_ttl_sec",
            "must be at most 86400 (0 disables the cache)",
        );
    }
    let mut timeout_ms = p.timeout_ms.unwrap_or(DEFAULT_PDP_TIMEOUT_MS);
    if let Some(v) = parse_u64_env(c, env, "NOWCONNECT_PDP_TIMEOUT_MS") {
        timeout_ms = v;
    }
    if timeout_ms == 0 || timeout_ms > 60_000 {
        c.bad("pdp.timeout_ms", "must be between 1 and 60000");
    }
    let mut fail_open = p.fail_open.unwrap_or(false);
    if let Some(v) = parse_bool_env(c, env, "NOWCONNECT_PDP_FAIL_OPEN") {
        fail_open = v;
    }
    let pdp = match pdp_url {
        Some(url) if check_http_url(c, pdp_key, &url, allow_insecure_http) => Some(PdpConfig {
            url,
            cache_ttl: Duration::from_secs(cache_ttl_sec),
            timeout: Duration::from_millis(timeout_ms),
            fail_open,
            ca_file,
        }),
        _ => None,
    };
    if pdp.as_ref().is_some_and(|p| p.fail_open) {
        c.warn("pdp.fail_open is on: streams are allowed whenever the PDP fails or times out");
    }
    pdp
}
