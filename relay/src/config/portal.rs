//! The `portal` section: who may call the `/api/v1` portal API and the policies' start values.

use std::net::SocketAddr;

use super::check::check_http_url;
use super::collector::Collector;
use super::jwks::{jwks_source, JwksSource};
use super::raw::{RawOidc, RawPortal, RawScopes};
use super::security::SecurityConfig;

/// The portal tokens' default audience.
pub const DEFAULT_PORTAL_AUDIENCE: &str = "nowconnect-portal";
pub(super) const DEFAULT_ADMIN_ROLE: &str = "admin";

/// The portal API: who may call it and the policies' start values.
#[derive(Debug, Clone, PartialEq)]
pub struct PortalConfig {
    /// Separate address for `/api/v1` (then not served on the tunnel port).
    pub bind: Option<SocketAddr>,
    /// Keys for portal tokens; `None`: the agents' `security.jwks_url`.
    pub jwks: Option<JwksSource>,
    /// Required `aud` of portal tokens (default `nowconnect-portal`).
    pub audience: String,
    /// Required `iss` when set (default: `security.issuer`).
    pub issuer: Option<String>,
    /// The role (in `roles` or `role`) that makes a token an administrator.
    pub admin_role: String,
    /// Policy values used until an operator changes them (then the state file wins).
    pub defaults: PolicyDefaults,
    /// The dashboard's OpenID Connect sign-in; `None`: paste-a-token only.
    pub oidc: Option<OidcConfig>,
}

/// `portal.oidc`: the IdP the dashboard signs operators in with (authorization code + PKCE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The IdP's issuer URL, without a trailing `/`; the discovery document is
    /// `<issuer>/.well-known/openid-configuration` and must name this issuer.
    pub issuer: String,
    /// The dashboard's client (a public client: no secret).
    pub client_id: String,
    /// Requested scopes, `openid` first.
    pub scopes: Vec<String>,
}

/// Start values of the four policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyDefaults {
    pub mfa_required: bool,
    pub connector_scopes: bool,
    pub pdp_enforce: bool,
    pub cidr_allowlists: bool,
}

impl PolicyDefaults {
    pub(super) fn new(connector_scopes: bool) -> PolicyDefaults {
        PolicyDefaults {
            mfa_required: true,
            connector_scopes,
            pdp_enforce: true,
            cidr_allowlists: true,
        }
    }
}

/// `security` gives the defaults: the issuer and the connector-scopes policy.
pub(super) fn validate_portal(
    c: &mut Collector,
    pt: RawPortal,
    security: &SecurityConfig,
) -> PortalConfig {
    let bind = pt.bind.as_deref().map(str::trim).and_then(|b| {
        b.parse::<SocketAddr>()
            .map_err(|_| {
                c.bad(
                    "portal.bind",
                    format!("`{b}` is not an IP:port address (e.g. 127.0.0.1:8766)"),
                )
            })
            .ok()
    });
    let jwks = pt
        .jwks_url
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .and_then(|u| jwks_source(c, "portal.jwks_url", &u, security.allow_insecure_http));
    let audience = pt
        .audience
        .map(|a| a.trim().to_owned())
        .unwrap_or_else(|| DEFAULT_PORTAL_AUDIENCE.to_owned());
    if audience.is_empty() {
        c.bad("portal.audience", "must not be empty");
    }
    // One audience for both would let every agent token pass as a portal token's `aud` (and
    // portal tokens open tunnels): only the role claim would then stand between them.
    if let Some(j) = security.jwt.as_ref().filter(|j| j.audience == audience) {
        c.bad(
            "portal.audience",
            format!(
                "must differ from security.audience (or NOWCONNECT_AUDIENCE): both are `{}`, so \
                 agent tokens would be accepted as portal tokens' audience",
                j.audience
            ),
        );
    }
    let admin_role = pt
        .admin_role
        .map(|a| a.trim().to_owned())
        .unwrap_or_else(|| DEFAULT_ADMIN_ROLE.to_owned());
    if admin_role.is_empty() {
        c.bad("portal.admin_role", "must not be empty");
    }
    let issuer = pt
        .issuer
        .map(|i| i.trim().to_owned())
        .filter(|i| !i.is_empty())
        .or_else(|| security.jwt.as_ref().and_then(|j| j.issuer.clone()));
    let mut defaults = PolicyDefaults::new(security.require_connector_scopes);
    defaults.mfa_required = pt.mfa_required.unwrap_or(true);
    defaults.pdp_enforce = pt.pdp_enforce.unwrap_or(true);
    defaults.cidr_allowlists = pt.cidr_allowlists.unwrap_or(true);
    if !defaults.mfa_required {
        c.warn("portal.mfa_required is off: portal tokens need no second factor");
    }
    let oidc = pt
        .oidc
        .and_then(|o| validate_oidc(c, o, security.allow_insecure_http));
    PortalConfig {
        bind,
        jwks,
        audience,
        issuer,
        admin_role,
        defaults,
        oidc,
    }
}

/// Longest client id and scope list accepted (they travel in a URL).
const MAX_OIDC_FIELD: usize = 256;
const MAX_SCOPES: usize = 16;

fn validate_oidc(c: &mut Collector, o: RawOidc, allow_insecure: bool) -> Option<OidcConfig> {
    let issuer = o
        .issuer
        .map(|i| i.trim().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let client_id = o.client_id.map(|i| i.trim().to_owned()).unwrap_or_default();
    let mut ok = true;
    if issuer.is_empty() {
        c.bad(
            "portal.oidc.issuer",
            "is required (the IdP's issuer URL, e.g. https://login.example.com/realms/ops)",
        );
        ok = false;
    } else if !check_http_url(c, "portal.oidc.issuer", &issuer, allow_insecure) {
        ok = false;
    }
    let token_char = |ch: char| ch.is_ascii_graphic() && ch != '"' && ch != '\\';
    if client_id.is_empty() {
        c.bad(
            "portal.oidc.client_id",
            "is required (the dashboard's client id at the IdP)",
        );
        ok = false;
    } else if client_id.len() > MAX_OIDC_FIELD || !client_id.chars().all(token_char) {
        c.bad(
            "portal.oidc.client_id",
            "must be 1 to 256 printable ASCII characters without spaces or quotes",
        );
        ok = false;
    }
    let mut scopes: Vec<String> = match o.scopes {
        None => vec!["openid".to_owned()],
        Some(RawScopes::Line(l)) => l.split_whitespace().map(str::to_owned).collect(),
        Some(RawScopes::List(v)) => v.into_iter().map(|s| s.trim().to_owned()).collect(),
    };
    if scopes.len() > MAX_SCOPES
        || scopes
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_OIDC_FIELD || !s.chars().all(token_char))
    {
        c.bad(
            "portal.oidc.scopes",
            "takes at most 16 scopes, each printable ASCII without spaces or quotes",
        );
        ok = false;
    }
    if !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".to_owned());
    }
    ok.then_some(OidcConfig {
        issuer,
        client_id,
        scopes,
    })
}
