//! The dashboard's OpenID Connect sign-in, relay side: the IdP's discovery document (fetched on
//! demand, cached) and the authorization-code exchange at its token endpoint.
//!
//! The browser runs the authorization code flow with PKCE (S256) against the IdP's
//! `authorization_endpoint` and hands the code and its verifier to `POST /ui/token`; the relay
//! posts them to the discovered `token_endpoint` (a public client: no secret) and returns the
//! access token (the bearer `/api/v1` checks: audience, role, `amr`). So the page's CSP can keep
//! `connect-src 'self'` and the IdP needs no CORS. The relay only ever posts to the endpoint the
//! configured issuer's own document names; it never logs codes, verifiers or tokens.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use thiserror::Error;

use crate::config::OidcConfig;
use crate::httpc::{HttpClient, HttpError};

/// How long a fetched discovery document is used.
const DOC_TTL: Duration = Duration::from_secs(15 * 60);
/// How long a failed fetch is remembered (page loads do not hammer a down IdP).
const FAILURE_TTL: Duration = Duration::from_secs(30);
/// Time for one request to the IdP.
const IDP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest discovery document or token answer read.
const MAX_IDP_BODY: usize = 64 * 1024;
/// Longest endpoint URL accepted from a discovery document.
const MAX_URL: usize = 2048;

/// Why sign-in cannot proceed. Messages are shown to the operator; they never quote tokens.
#[derive(Debug, Error)]
pub(crate) enum OidcError {
    #[error("the IdP's discovery document could not be fetched: {0}")]
    Discovery(String),
    #[error("the IdP's discovery document is not usable: {0}")]
    BadDocument(&'static str),
    #[error("the IdP's token endpoint could not be reached: {0}")]
    TokenEndpoint(HttpError),
    #[error("the IdP refused the code: {0}")]
    Refused(String),
    #[error("the IdP's token answer is not usable: {0}")]
    BadAnswer(&'static str),
}

/// What the page needs from the discovery document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoints {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
}

#[derive(Debug, Deserialize)]
struct Document {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

#[derive(Debug)]
struct Cached {
    cfg: OidcConfig,
    at: Instant,
    result: Result<(Endpoints, HttpClient), String>,
}

/// The cached discovery result (one fetch at a time; a reload with a new issuer refetches).
#[derive(Debug, Default)]
pub(crate) struct Oidc {
    cache: tokio::sync::Mutex<Option<Cached>>,
}

/// A URL an endpoint may have: https, or http to where the issuer itself is plain http.
fn usable_url(url: &str, issuer_is_http: bool) -> bool {
    url.len() <= MAX_URL
        && !url.chars().any(|c| c.is_control() || c.is_whitespace())
        && (url.starts_with("https://") || (issuer_is_http && url.starts_with("http://")))
}

impl Oidc {
    /// The IdP's endpoints for `cfg` and a client for it, from the cache or fetched now.
    pub async fn endpoints(
        &self,
        cfg: &OidcConfig,
        http: impl FnOnce() -> Result<HttpClient, String>,
    ) -> Result<(Endpoints, HttpClient), OidcError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref().filter(|c| c.cfg == *cfg) {
            let ttl = if c.result.is_ok() {
                DOC_TTL
            } else {
                FAILURE_TTL
            };
            if c.at.elapsed() < ttl {
                return c.result.clone().map_err(OidcError::Discovery);
            }
        }
        let fetched = fetch(cfg, http).await;
        let result = match &fetched {
            Ok(e) => Ok(e.clone()),
            Err(e) => Err(e.to_string()),
        };
        *cache = Some(Cached {
            cfg: cfg.clone(),
            at: Instant::now(),
            result,
        });
        fetched
    }
}

async fn fetch(
    cfg: &OidcConfig,
    http: impl FnOnce() -> Result<HttpClient, String>,
) -> Result<(Endpoints, HttpClient), OidcError> {
    let client = http().map_err(OidcError::Discovery)?;
    let url = format!("{}/.well-known/openid-configuration", cfg.issuer);
    let body = client
        .get(&url, MAX_IDP_BODY, IDP_TIMEOUT)
        .await
        .map_err(|e| OidcError::Discovery(e.to_string()))?;
    let doc: Document = serde_json::from_slice(&body)
        .map_err(|_| OidcError::BadDocument("not the JSON expected"))?;
    // OpenID Connect Discovery 1.0, section 4.3: the document must name the issuer asked for.
    if doc.issuer.trim_end_matches('/') != cfg.issuer {
        return Err(OidcError::BadDocument(
            "its issuer is not portal.oidc.issuer",
        ));
    }
    if doc
        .code_challenge_methods_supported
        .as_ref()
        .is_some_and(|m| !m.iter().any(|m| m == "S256"))
    {
        return Err(OidcError::BadDocument(
            "the IdP does not offer PKCE with S256",
        ));
    }
    let http_issuer = cfg.issuer.starts_with("http://");
    if !usable_url(&doc.authorization_endpoint, http_issuer)
        || !usable_url(&doc.token_endpoint, http_issuer)
    {
        return Err(OidcError::BadDocument("an endpoint is not an https URL"));
    }
    Ok((
        Endpoints {
            authorization_endpoint: doc.authorization_endpoint,
            token_endpoint: doc.token_endpoint,
        },
        client,
    ))
}

/// What the browser sends to `POST /ui/token`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CodeGrant {
    pub code: String,
    pub code_verifier: String,
    pub redirect_uri: String,
}

impl CodeGrant {
    /// RFC 7636: a verifier is 43 to 128 unreserved characters; codes and redirect URIs are
    /// bounded so a request cannot make the relay post anything large.
    pub fn check(&self) -> Result<(), &'static str> {
        let unreserved = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~');
        if !(43..=128).contains(&self.code_verifier.len())
            || !self.code_verifier.chars().all(unreserved)
        {
            return Err("code_verifier must be 43 to 128 unreserved characters (RFC 7636)");
        }
        if self.code.is_empty() || self.code.len() > 2048 || self.code.chars().any(char::is_control)
        {
            return Err("code must be 1 to 2048 characters");
        }
        if !self.redirect_uri.ends_with("/ui/")
            || self.redirect_uri.len() > MAX_URL
            || !(self.redirect_uri.starts_with("https://")
                || self.redirect_uri.starts_with("http://"))
        {
            return Err("redirect_uri must be this dashboard's http(s)://.../ui/ address");
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// A token for `/api/v1` and how long it lives.
#[derive(Debug)]
pub(crate) struct Issued {
    pub token: String,
    pub expires_in: Option<u64>,
}

fn looks_like_jwt(t: &str) -> bool {
    t.len() <= 16 * 1024 && t.split('.').count() == 3 && t.chars().all(|c| c.is_ascii_graphic())
}

/// Short, printable, at most 200 characters of an IdP's explanation.
fn tidy(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Exchanges the browser's code at the token endpoint.
pub(crate) async fn exchange(
    client: &HttpClient,
    cfg: &OidcConfig,
    endpoints: &Endpoints,
    grant: &CodeGrant,
) -> Result<Issued, OidcError> {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", &grant.code)
        .append_pair("code_verifier", &grant.code_verifier)
        .append_pair("redirect_uri", &grant.redirect_uri)
        .append_pair("client_id", &cfg.client_id)
        .finish();
    let (status, answer) = client
        .post_form(
            &endpoints.token_endpoint,
            Bytes::from(body),
            MAX_IDP_BODY,
            IDP_TIMEOUT,
        )
        .await
        .map_err(OidcError::TokenEndpoint)?;
    let parsed: Option<TokenAnswer> = serde_json::from_slice(&answer).ok();
    if !status.is_success() {
        let why = parsed
            .map(|a| {
                let e = tidy(a.error.as_deref().unwrap_or("error"));
                match a.error_description {
                    Some(d) => format!("{e}: {}", tidy(&d)),
                    None => e,
                }
            })
            .unwrap_or_else(|| format!("HTTP status {status}"));
        return Err(OidcError::Refused(why));
    }
    let a = parsed.ok_or(OidcError::BadAnswer("not the JSON expected"))?;
    // The access token is what carries the portal audience; an IdP that issues opaque access
    // tokens can be set up with the dashboard's client id as the portal audience (id_token).
    let token = a
        .access_token
        .filter(|t| looks_like_jwt(t))
        .or(a.id_token.filter(|t| looks_like_jwt(t)))
        .ok_or(OidcError::BadAnswer(
            "it holds no JWT access_token or id_token",
        ))?;
    Ok(Issued {
        token,
        expires_in: a.expires_in,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_grant_is_checked_before_anything_is_posted() {
        let good = CodeGrant {
            code: "abc".into(),
            code_verifier: "a".repeat(43),
            redirect_uri: "https://relay.example.com:8766/ui/".into(),
        };
        assert!(good.check().is_ok());
        let short = CodeGrant {
            code_verifier: "a".repeat(42),
            ..good_clone(&good)
        };
        assert!(short.check().is_err());
        let bad_char = CodeGrant {
            code_verifier: format!("{}+", "a".repeat(43)),
            ..good_clone(&good)
        };
        assert!(bad_char.check().is_err());
        let elsewhere = CodeGrant {
            redirect_uri: "https://evil.example.com/cb".into(),
            ..good_clone(&good)
        };
        assert!(elsewhere.check().is_err());
        let huge = CodeGrant {
            code: "c".repeat(4096),
            ..good_clone(&good)
        };
        assert!(huge.check().is_err());
    }

    fn good_clone(g: &CodeGrant) -> CodeGrant {
        CodeGrant {
            code: g.code.clone(),
            code_verifier: g.code_verifier.clone(),
            redirect_uri: g.redirect_uri.clone(),
        }
    }

    #[test]
    fn endpoints_must_be_https_unless_the_issuer_is_plain_http() {
        assert!(usable_url("https://idp/authorize", false));
        assert!(!usable_url("http://idp/authorize", false));
        assert!(usable_url("http://127.0.0.1:9/authorize", true));
        assert!(!usable_url("javascript:alert(1)", true));
        assert!(!usable_url("https://idp/a b", false));
        assert!(looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt("opaque"));
        assert_eq!(tidy("bad\ncode"), "badcode");
    }
}
