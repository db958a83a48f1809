//! Who is calling the portal: the Bearer JWT checked with the same JWKS machinery as agent
//! tokens (`portal.jwks_url`, else `security.jwks_url`), audience `portal.audience`, issuer
//! `portal.issuer` (else `security.issuer`). Then the MFA policy, then the role:
//! `portal.admin_role` in `roles` (array or string) or `role` makes an administrator; otherwise
//! an `agent_id` claim gives a read-only view of that agent's rows; anything else is refused.
//!
//! Never logs or returns the token; refusals carry a short reason only.

use serde::Deserialize;
use serde_json::Value;

use crate::auth::{self, AuthError, Expect};
use crate::Shared;

/// RFC 8176 `amr` values that show a factor beyond a password: multi-factor or multi-channel
/// as such, possession (hardware/software key, one-time code, SMS/phone, smart card, proof of
/// possession) and inherence (biometrics). `pwd`, `pin` and `kba` are knowledge factors only.
pub(crate) const SECOND_FACTORS: &[&str] = &[
    "mfa", "mca", "hwk", "swk", "otp", "sms", "tel", "sc", "pop", "fpt", "face", "iris", "retina",
    "vbm",
];

/// Most `amr` entries and roles looked at.
const MAX_CLAIM_ITEMS: usize = 64;

/// Who an accepted portal token names.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The token's `sub` (for the audit trail as `portal:<sub>`).
    pub subject: String,
    pub scope: Scope,
}

impl Caller {
    pub fn actor(&self) -> String {
        format!("portal:{}", self.subject)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Everything, read and write.
    Admin,
    /// Read-only, only the rows of this agent.
    Agent(String),
}

/// Why a portal request was refused before any handler ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 401: no usable token.
    Token(AuthError),
    /// 503: our side (no keys yet, nothing configured).
    Unavailable(&'static str),
    /// 403: a valid token that may not do this.
    Forbidden {
        reason: &'static str,
        message: String,
    },
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Token(e) => e.reason(),
            Refusal::Unavailable(r) => r,
            Refusal::Forbidden { reason, .. } => reason,
        }
    }
}

#[derive(Debug, Deserialize)]
struct PortalClaims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    roles: Option<Value>,
    #[serde(default)]
    role: Option<Value>,
    #[serde(default)]
    amr: Option<Value>,
    #[serde(default)]
    agent_id: Option<Value>,
}

/// Strings of a claim that may be one string or an array of strings.
fn strings(v: &Option<Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .take(MAX_CLAIM_ITEMS)
            .filter_map(Value::as_str)
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether an `amr` list shows a second factor.
pub(crate) fn has_second_factor(amr: &[&str]) -> bool {
    amr.iter().any(|m| SECOND_FACTORS.contains(m))
}

/// Checks the request's Bearer token and decides the caller's scope.
pub(crate) async fn authenticate(
    shared: &Shared,
    headers: &hyper::HeaderMap,
) -> Result<Caller, Refusal> {
    let Some(jwks) = shared.checkers.portal_jwks.load_full() else {
        return Err(Refusal::Unavailable("portal_not_configured"));
    };
    let token = auth::bearer(headers).map_err(Refusal::Token)?;
    let cfg = shared.cfg();
    let pc = &cfg.portal;
    let leeway = cfg
        .security
        .jwt
        .as_ref()
        .map_or(std::time::Duration::from_secs(30), |j| j.leeway);
    let claims: PortalClaims = auth::verify(
        &jwks,
        token,
        &Expect {
            audience: &pc.audience,
            issuer: pc.issuer.as_deref(),
            leeway,
        },
    )
    .await
    .map_err(|e| match e {
        AuthError::KeysUnavailable => Refusal::Unavailable("jwks_unavailable"),
        e => Refusal::Token(e),
    })?;
    let subject = claims
        .sub
        .as_ref()
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control))
        .unwrap_or("unknown")
        .to_owned();
    if shared.state.mfa_required() {
        let amr = strings(&claims.amr);
        if !has_second_factor(&amr) {
            let shown = if amr.is_empty() {
                "no amr claim".to_owned()
            } else {
                format!("amr {amr:?}")
            };
            let message = if amr.iter().all(|m| *m == "pwd") && !amr.is_empty() {
                format!(
                    "pol-mfa-required: password-only token ({shown}); sign in with a second factor"
                )
            } else {
                format!("pol-mfa-required: the token shows no second factor ({shown})")
            };
            return Err(Refusal::Forbidden {
                reason: "mfa_required",
                message: cap(message),
            });
        }
    }
    let admin = &pc.admin_role;
    let is_admin = strings(&claims.roles)
        .into_iter()
        .chain(strings(&claims.role))
        .any(|r| r == admin);
    if is_admin {
        return Ok(Caller {
            subject,
            scope: Scope::Admin,
        });
    }
    let limits = nowconnect_shared::Limits::default();
    match &claims.agent_id {
        Some(Value::String(a))
            if !a.is_empty()
                && a.len() <= limits.max_agent_id_len
                && !a.chars().any(char::is_control) =>
        {
            Ok(Caller {
                subject,
                scope: Scope::Agent(a.clone()),
            })
        }
        _ => Err(Refusal::Forbidden {
            reason: "not_authorized",
            message: format!(
                "the token has neither the `{admin}` role (roles/role) nor an agent_id claim"
            ),
        }),
    }
}

/// Keeps refusal messages short (they may quote token claims).
fn cap(mut s: String) -> String {
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_factors_follow_rfc_8176() {
        assert!(has_second_factor(&["pwd", "otp"]));
        assert!(has_second_factor(&["mfa"]));
        assert!(has_second_factor(&["hwk"]));
        assert!(!has_second_factor(&["pwd"]));
        assert!(!has_second_factor(&["pwd", "pin", "kba"]));
        assert!(!has_second_factor(&[]));
        let v = Some(serde_json::json!(["pwd", 5, "otp"]));
        assert_eq!(strings(&v), vec!["pwd", "otp"]);
        assert_eq!(strings(&Some(serde_json::json!("admin"))), vec!["admin"]);
        assert!(strings(&Some(serde_json::json!({"a": 1}))).is_empty());
    }
}
