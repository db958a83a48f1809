//! The `portal` section: who may call the `/api/v1` portal API and the policies' start values.

use std::net::SocketAddr;

use super::collector::Collector;
use super::jwks::{jwks_source, JwksSource};
use super::raw::RawPortal;
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
    PortalConfig {
        bind,
        jwks,
        audience,
        issuer,
        admin_role,
        defaults,
    }
}
