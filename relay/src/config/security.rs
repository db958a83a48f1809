//! The `security` section: how agents are admitted on `/tunnel` (JWT, dev bypass, source
//! CIDRs) and the limits on agents that fail to authenticate.
//!
//! The dev bypass admits agents without a token, so it is refused next to a JWKS and on a
//! non-loopback `tunnel.host`; both checks live here.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::check::{host_is_loopback, secs};
use super::collector::Collector;
use super::env::{env_str, parse_bool_env, Env};
use super::jwks::{jwks_source, JwksSource};
use super::raw::RawSecurity;

/// The reference's audience.
pub const DEFAULT_AUDIENCE: &str = "nowconnect";
const DEFAULT_LEEWAY_SEC: u64 = 30;
const DEFAULT_JWKS_REFRESH_SEC: u64 = 300;
const DEFAULT_JWKS_MIN_REFRESH_SEC: u64 = 30;

#[derive(Debug, Clone, PartialEq)]
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
    /// Plain `http://` JWKS and PDP URLs to non-loopback hosts are accepted (with a warning);
    /// off: refused at start-up.
    pub allow_insecure_http: bool,
    /// What a second tunnel of an agent_id from another source address gets.
    pub duplicate_agent: DuplicatePolicy,
    pub abuse: AbuseConfig,
    /// Peers whose PROXY protocol headers are believed (where `proxy_protocol` is on); a
    /// connection from any other peer there is closed.
    pub trusted_proxies: Vec<IpNet>,
}

/// `security.duplicate_agent`: what a tunnel gets whose agent_id is already served from another
/// source address (a reconnect from the same address always takes over).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DuplicatePolicy {
    /// The newcomer gets the agent's new streams (the older tunnel stays open, without new
    /// streams, until it ends). Default: an agent whose address changed reconnects at once.
    #[default]
    NewestWins,
    /// The newcomer is admitted on standby: no streams until every older tunnel has ended.
    OldestWins,
    /// The newcomer is refused at HELLO (`duplicate_agent`).
    Refuse,
}

impl DuplicatePolicy {
    /// The YAML value, also the audit reason of a duplicate record.
    pub fn as_str(self) -> &'static str {
        match self {
            DuplicatePolicy::NewestWins => "newest_wins",
            DuplicatePolicy::OldestWins => "oldest_wins",
            DuplicatePolicy::Refuse => "refuse",
        }
    }

    fn parse(s: &str) -> Option<DuplicatePolicy> {
        [
            DuplicatePolicy::NewestWins,
            DuplicatePolicy::OldestWins,
            DuplicatePolicy::Refuse,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// How agent tokens are checked.
#[derive(Debug, Clone, PartialEq)]
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

/// Limits on agents that fail to authenticate.
#[derive(Debug, Clone, PartialEq)]
pub struct AbuseConfig {
    /// `/tunnel` attempts from one source (IPv4 address or IPv6 /64) that may be between the
    /// upgrade request and an accepted HELLO at once; more get 429.
    pub max_pending_per_ip: usize,
    /// This many auth failures from one source within `failure_window` start a cool-down.
    pub failure_limit: u32,
    pub failure_window: Duration,
    /// During a cool-down every `/tunnel` request from that source gets 429.
    pub cooldown: Duration,
    /// Sources many agents share (a corporate proxy, an ingress without PROXY protocol): there,
    /// failures and cool-downs count per (address, unverified token subject).
    pub shared_egress_cidrs: Vec<IpNet>,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        AbuseConfig {
            max_pending_per_ip: 16,
            failure_limit: 20,
            failure_window: Duration::from_secs(60),
            cooldown: Duration::from_secs(60),
            shared_egress_cidrs: Vec::new(),
        }
    }
}

/// `tunnel_host` is the validated `tunnel.host` (the dev bypass needs it to be loopback).
pub(super) fn validate_security(
    c: &mut Collector,
    env: &dyn Env,
    s: RawSecurity,
    tunnel_host: &str,
) -> SecurityConfig {
    let mut dev_bypass = s.dev_bypass.unwrap_or(false);
    if let Some(v) = parse_bool_env(c, env, "NOWCONNECT_DEV_BYPASS") {
        dev_bypass = v;
    }
    let allow_cidrs = c.cidrs("security.allow_cidrs", &s.allow_cidrs.unwrap_or_default());
    let tunnel_allow_cidrs = c.cidrs(
        "security.tunnel_allow_cidrs",
        &s.tunnel_allow_cidrs.unwrap_or_default(),
    );
    let (jwks_key, jwks_url) = match env_str(env, "NOWCONNECT_JWKS_URL") {
        Some(v) => ("NOWCONNECT_JWKS_URL", Some(v)),
        None => (
            "security.jwks_url",
            s.jwks_url
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty()),
        ),
    };
    let allow_insecure_http = s.allow_insecure_http.unwrap_or(false);
    let jwks = jwks_url.and_then(|u| jwks_source(c, jwks_key, &u, allow_insecure_http));
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
    // Secure by default: a token grants only the connectors it names.
    let mut scopes_asked = s.require_connector_scopes == Some(true);
    let mut require_connector_scopes = s.require_connector_scopes.unwrap_or(true);
    if let Some(v) = parse_bool_env(c, env, "NOWCONNECT_REQUIRE_CONNECTOR_SCOPES") {
        require_connector_scopes = v;
        scopes_asked = v;
    }
    let leeway = secs(
        c,
        "security.leeway_sec",
        s.leeway_sec.unwrap_or(DEFAULT_LEEWAY_SEC),
        0,
        300,
    );
    let refresh = secs(
        c,
        "security.jwks_refresh_sec",
        s.jwks_refresh_sec.unwrap_or(DEFAULT_JWKS_REFRESH_SEC),
        1,
        86_400,
    );
    let min_refresh = secs(
        c,
        "security.jwks_min_refresh_sec",
        s.jwks_min_refresh_sec
            .unwrap_or(DEFAULT_JWKS_MIN_REFRESH_SEC),
        1,
        86_400,
    );
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
        c.warn("security.jwks_url is not set: every agent is refused (401) until it is");
    }
    // Only when asked for explicitly: the default is on, and a dev-bypass relay has no tokens.
    if scopes_asked && jwks.is_none() {
        c.warn("security.require_connector_scopes has no effect without security.jwks_url");
    }
    let duplicate_agent = match s.duplicate_agent.as_deref().map(str::trim) {
        None => DuplicatePolicy::default(),
        Some(v) => DuplicatePolicy::parse(v).unwrap_or_else(|| {
            c.bad(
                "security.duplicate_agent",
                format!("`{v}` is not one of newest_wins, oldest_wins, refuse"),
            );
            DuplicatePolicy::default()
        }),
    };
    let mut abuse = validate_abuse(
        c,
        s.max_pending_upgrades_per_ip,
        s.auth_failure_limit,
        s.auth_failure_window_sec,
        s.auth_cooldown_sec,
    );
    abuse.shared_egress_cidrs = c.cidrs(
        "security.shared_egress_cidrs",
        &s.shared_egress_cidrs.unwrap_or_default(),
    );
    let trusted_proxies = c.cidrs(
        "security.trusted_proxies",
        &s.trusted_proxies.unwrap_or_default(),
    );
    let jwt = jwks.map(|jwks| JwtConfig {
        jwks,
        audience: audience.trim().to_owned(),
        issuer,
        leeway,
        refresh,
        min_refresh,
        ca_file: s.ca_file,
    });
    if dev_bypass && !host_is_loopback(tunnel_host) {
        c.bad(
            "security.dev_bypass",
            format!(
                "the dev bypass accepts agents without authentication and is refused unless \
                 tunnel.host is a loopback address (127.0.0.1, ::1, localhost); got `{tunnel_host}`"
            ),
        );
    }
    SecurityConfig {
        dev_bypass,
        allow_cidrs,
        tunnel_allow_cidrs,
        jwt,
        require_connector_scopes,
        allow_insecure_http,
        duplicate_agent,
        abuse,
        trusted_proxies,
    }
}

/// `security.max_pending_upgrades_per_ip` and the `security.auth_*` keys.
fn validate_abuse(
    c: &mut Collector,
    max_pending_upgrades_per_ip: Option<usize>,
    auth_failure_limit: Option<u32>,
    auth_failure_window_sec: Option<u64>,
    auth_cooldown_sec: Option<u64>,
) -> AbuseConfig {
    let d = AbuseConfig::default();
    let max_pending_per_ip = max_pending_upgrades_per_ip.unwrap_or(d.max_pending_per_ip);
    if max_pending_per_ip == 0 {
        c.bad("security.max_pending_upgrades_per_ip", "must be at least 1");
    }
    let failure_limit = auth_failure_limit.unwrap_or(d.failure_limit);
    if failure_limit == 0 {
        c.bad("security.auth_failure_limit", "must be at least 1");
    }
    AbuseConfig {
        max_pending_per_ip,
        failure_limit,
        failure_window: secs(
            c,
            "security.auth_failure_window_sec",
            auth_failure_window_sec.unwrap_or(d.failure_window.as_secs()),
            1,
            86_400,
        ),
        cooldown: secs(
            c,
            "security.auth_cooldown_sec",
            auth_cooldown_sec.unwrap_or(d.cooldown.as_secs()),
            1,
            86_400,
        ),
        shared_egress_cidrs: Vec::new(),
    }
}
