//! Agent authentication: the Bearer JWT on the `/tunnel` upgrade, checked against the JWKS.
//!
//! Accepts RS256, PS256, ES256 and EdDSA, each only with a key of the matching type; refuses
//! `alg: none`, every HMAC algorithm and anything else before a key is even looked up. `aud`
//! and `exp` are required, `nbf` and `iss` checked, with `security.leeway_sec`. The `agent_id`
//! claim is required. Connector grants come from `connectors` and `scp`/`scope`.
//!
//! Never logs or returns the token; errors carry only a reason.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hyper::header::{HeaderMap, AUTHORIZATION};
use hyper::StatusCode;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use thiserror::Error;

use crate::config::JwtConfig;
use crate::jwks::{Jwks, Lookup};

/// Tokens longer than this are refused unread.
pub(crate) const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why an agent was refused. `reason()` is the metric label and the audit reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub(crate) enum AuthError {
    #[error("agent authentication not configured")]
    NotConfigured,
    #[error("missing bearer token")]
    MissingToken,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm not allowed")]
    AlgNotAllowed,
    #[error("token algorithm does not match the key type")]
    AlgMismatch,
    #[error("token has no kid")]
    MissingKid,
    #[error("unknown signing key (kid)")]
    UnknownKid,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid (nbf)")]
    NotYetValid,
    #[error("wrong token audience")]
    WrongAudience,
    #[error("wrong token issuer")]
    WrongIssuer,
    #[error("token lacks a required claim")]
    MissingClaim,
    #[error("token has no agent_id claim")]
    MissingAgentId,
    #[error("signing keys not available")]
    KeysUnavailable,
}

impl AuthError {
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::NotConfigured => "not_configured",
            AuthError::MissingToken => "missing_token",
            AuthError::Malformed => "malformed_token",
            AuthError::AlgNotAllowed => "alg_not_allowed",
            AuthError::AlgMismatch => "alg_mismatch",
            AuthError::MissingKid => "missing_kid",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::MissingClaim => "missing_claim",
            AuthError::MissingAgentId => "missing_agent_id",
            AuthError::KeysUnavailable => "jwks_unavailable",
        }
    }

    /// 401: no usable token; 403: a valid token that may not open a tunnel; 503: our side.
    pub fn status(self) -> StatusCode {
        match self {
            AuthError::MissingAgentId => StatusCode::FORBIDDEN,
            AuthError::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Connector names a token grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Grants(HashSet<String>);

/// What a `scp`/`scope` entry starts with when it grants a connector.
pub(crate) const SCOPE_PREFIXES: [&str; 2] = ["nowconnect:connector:", "connector:"];

impl Grants {
    pub fn allows(&self, connector: &str) -> bool {
        self.0.contains(connector)
    }

    /// From the `connectors` claim (array of names, each `name` or `connector:name`) and
    /// `scp`/`scope` (array, or one space-separated string), where only entries with an explicit
    /// prefix grant: `nowconnect:connector:name` or `connector:name`. A plain scope word
    /// (`openid`, `profile`) never grants a connector of that name.
    fn from_claims(claims: &Claims) -> Grants {
        let mut out = HashSet::new();
        let claims = [
            (&claims.connectors, false),
            (&claims.scp, true),
            (&claims.scope, true),
        ];
        for (claim, prefixed_only) in claims {
            let Some(claim) = claim else { continue };
            let mut add = |s: &str| {
                let name = match SCOPE_PREFIXES.iter().find_map(|p| s.strip_prefix(p)) {
                    Some(name) => name,
                    None if prefixed_only => return,
                    None => s,
                };
                if !name.is_empty() && out.len() < 1024 {
                    out.insert(name.to_owned());
                }
            };
            match claim {
                serde_json::Value::String(s) => s.split_ascii_whitespace().for_each(&mut add),
                serde_json::Value::Array(items) => items
                    .iter()
                    .filter_map(serde_json::Value::as_str)
                    .for_each(&mut add),
                _ => {}
            }
        }
        Grants(out)
    }
}

/// Who an accepted token says the agent is.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub agent_id: String,
    /// The token's `sub`, for the audit trail.
    pub subject: Option<String>,
    pub grants: Arc<Grants>,
    /// `exp` (Unix seconds).
    pub expires_at: u64,
    /// The token's `jti`, for `limits.max_tunnels_per_jti` (`None`: not counted).
    pub jti: Option<String>,
}

impl Identity {
    /// How long the tunnel may live on this token (until `exp` + leeway).
    pub fn remaining(&self, leeway: Duration) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Duration::from_secs(
            self.expires_at
                .saturating_add(leeway.as_secs())
                .saturating_sub(now),
        )
    }
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    agent_id: Option<serde_json::Value>,
    #[serde(default)]
    sub: Option<serde_json::Value>,
    #[serde(default)]
    exp: Option<serde_json::Value>,
    #[serde(default)]
    jti: Option<serde_json::Value>,
    #[serde(default)]
    connectors: Option<serde_json::Value>,
    #[serde(default)]
    scp: Option<serde_json::Value>,
    #[serde(default)]
    scope: Option<serde_json::Value>,
}

/// The token from `Authorization: Bearer <token>`.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::MissingToken)?;
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    Ok(token)
}

/// Checks tokens. One per relay.
#[derive(Debug)]
pub(crate) struct Authenticator {
    cfg: JwtConfig,
    jwks: Arc<Jwks>,
    /// Longest agent_id a HELLO may carry; a longer claim can never match.
    max_agent_id_len: usize,
}

impl Authenticator {
    pub fn new(cfg: JwtConfig, jwks: Arc<Jwks>) -> Authenticator {
        Authenticator {
            cfg,
            jwks,
            max_agent_id_len: nowconnect_shared::Limits::default().max_agent_id_len,
        }
    }

    pub fn leeway(&self) -> Duration {
        self.cfg.leeway
    }

    /// Validates `token` and returns who it names.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let claims: Claims = verify(
            &self.jwks,
            token,
            &Expect {
                audience: &self.cfg.audience,
                issuer: self.cfg.issuer.as_deref(),
                leeway: self.cfg.leeway,
            },
        )
        .await?;
        let agent_id = match &claims.agent_id {
            Some(serde_json::Value::String(s))
                if !s.is_empty()
                    && s.len() <= self.max_agent_id_len
                    && !s.chars().any(char::is_control) =>
            {
                s.clone()
            }
            _ => return Err(AuthError::MissingAgentId),
        };
        let expires_at = claims
            .exp
            .as_ref()
            .and_then(serde_json::Value::as_f64)
            .filter(|e| e.is_finite() && *e >= 0.0)
            .map(|e| e as u64)
            .ok_or(AuthError::MissingClaim)?;
        Ok(Identity {
            agent_id,
            subject: claims
                .sub
                .as_ref()
                .and_then(|s| s.as_str())
                .map(str::to_owned),
            grants: Arc::new(Grants::from_claims(&claims)),
            expires_at,
            // A string per RFC 7519; anything else names no token to count.
            jti: claims
                .jti
                .as_ref()
                .and_then(serde_json::Value::as_str)
                .filter(|j| !j.is_empty())
                .map(str::to_owned),
        })
    }
}

/// What a token must carry besides a good signature.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect<'a> {
    pub audience: &'a str,
    pub issuer: Option<&'a str>,
    pub leeway: Duration,
}

/// Checks a compact JWS against `jwks` (algorithm, key, signature, `aud`, `exp`/`nbf`, `iss`)
/// and returns its claims as `C`. Shared by agent tokens and portal tokens.
pub(crate) async fn verify<C: serde::de::DeserializeOwned>(
    jwks: &Jwks,
    token: &str,
    expect: &Expect<'_>,
) -> Result<C, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed);
    }
    let header = parse_header(token)?;
    if header.crit.is_some() {
        // We implement no JWS extensions, so a token that requires one is refused.
        return Err(AuthError::Malformed);
    }
    let alg = allowed_alg(&header.alg)?;
    let key = match jwks.lookup(header.kid.as_deref()).await {
        Lookup::Found(k) => k,
        Lookup::NoKeys => return Err(AuthError::KeysUnavailable),
        Lookup::Unknown if header.kid.is_none() => return Err(AuthError::MissingKid),
        Lookup::Unknown => return Err(AuthError::UnknownKid),
    };
    if !key.algs.contains(&alg) {
        return Err(AuthError::AlgMismatch);
    }
    let mut v = Validation::new(alg);
    v.leeway = expect.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_audience(&[expect.audience]);
    let mut required = vec!["exp", "aud"];
    if let Some(iss) = expect.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    let data = jsonwebtoken::decode::<C>(token, &key.key, &v).map_err(map_error)?;
    Ok(data.claims)
}

/// The `sub` (else `agent_id`) claim of a compact JWS, read WITHOUT verifying it: only to tell
/// users behind one shared-egress address apart for the cool-down, never to admit anyone.
/// `None` for anything that is not a readable token (or has neither claim).
pub(crate) fn unverified_subject(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Subject {
        sub: Option<serde_json::Value>,
        agent_id: Option<serde_json::Value>,
    }
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Subject = serde_json::from_slice(&bytes).ok()?;
    [claims.sub, claims.agent_id]
        .into_iter()
        .flatten()
        .find_map(|v| match v {
            serde_json::Value::String(s) if !s.is_empty() => Some(s),
            _ => None,
        })
}

/// The JOSE header of a compact JWS, parsed without trusting anything in it.
fn parse_header(token: &str) -> Result<Header, AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    if h.is_empty() || p.is_empty() {
        return Err(AuthError::Malformed);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

/// The four algorithms we accept; `none`, HS* and the rest are refused by name.
fn allowed_alg(alg: &str) -> Result<Algorithm, AuthError> {
    match alg {
        "RS256" => Ok(Algorithm::RS256),
        "PS256" => Ok(Algorithm::PS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        _ => Err(AuthError::AlgNotAllowed),
    }
}

fn map_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthError::AlgMismatch,
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn header_and_algorithm_checks() {
        let tok = |h: &str| format!("{}.{}.sig", b64(h), b64("{}"));
        assert_eq!(
            allowed_alg(&parse_header(&tok(r#"{"alg":"none"}"#)).expect("parses").alg),
            Err(AuthError::AlgNotAllowed)
        );
        for alg in ["HS256", "HS384", "HS512", "RS512", "ES384", "None", "NONE"] {
            assert_eq!(allowed_alg(alg), Err(AuthError::AlgNotAllowed), "{alg}");
        }
        for alg in ["RS256", "PS256", "ES256", "EdDSA"] {
            assert!(allowed_alg(alg).is_ok(), "{alg}");
        }
        assert_eq!(parse_header("a.b").err(), Some(AuthError::Malformed));
        assert_eq!(parse_header("a.b.c.d").err(), Some(AuthError::Malformed));
        assert_eq!(parse_header("!!.b.c").err(), Some(AuthError::Malformed));
        assert_eq!(
            parse_header(&tok(r#"{"alg":"RS256","kid":"k"}"#))
                .expect("parses")
                .kid
                .as_deref(),
            Some("k")
        );
        assert_eq!(
            parse_header(&tok(r#"{"alg":"RS256","kid":7}"#)).err(),
            Some(AuthError::Malformed)
        );
    }

    #[test]
    fn unverified_subject_reads_sub_then_agent_id() {
        let tok = |claims: &str| format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(claims));
        assert_eq!(
            unverified_subject(&tok(r#"{"sub":"alice","agent_id":"a1"}"#)).as_deref(),
            Some("alice")
        );
        assert_eq!(
            unverified_subject(&tok(r#"{"sub":"","agent_id":"a1"}"#)).as_deref(),
            Some("a1")
        );
        assert_eq!(unverified_subject(&tok(r#"{"sub":7}"#)), None);
        assert_eq!(unverified_subject(&tok("[]")), None);
        assert_eq!(unverified_subject("garbage"), None);
        assert_eq!(unverified_subject("a.!!.c"), None);
        let huge = tok(&format!(r#"{{"sub":"{}"}}"#, "x".repeat(MAX_TOKEN_LEN)));
        assert_eq!(unverified_subject(&huge), None);
    }

    #[test]
    fn bearer_header_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Err(AuthError::MissingToken));
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwdw=="),
        );
        assert_eq!(bearer(&h), Err(AuthError::MissingToken));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer(&h), Ok("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer"));
        assert_eq!(bearer(&h), Err(AuthError::Malformed));
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(bearer(&h), Err(AuthError::Malformed));
    }

    #[test]
    fn grants_accept_names_and_prefixed_scopes() {
        let claims: Claims = serde_json::from_value(serde_json::json!({
            "connectors": ["addomain", "connector:db"],
            "scp": ["connector:ssh", "openid", "nowconnect:connector:ldaps"],
            "scope": "connector:api   web profile",
        }))
        .expect("claims");
        let g = Grants::from_claims(&claims);
        for c in ["addomain", "db", "ssh", "ldaps", "api"] {
            assert!(g.allows(c), "{c}");
        }
        for plain in ["openid", "web", "profile"] {
            assert!(
                !g.allows(plain),
                "a plain scope word `{plain}` grants nothing"
            );
        }
        assert!(!g.allows("connector:db"));
        assert!(!g.allows("other"));
        let none: Claims = serde_json::from_value(serde_json::json!({"scope": 5})).expect("claims");
        assert_eq!(Grants::from_claims(&none), Grants::default());
    }
}
