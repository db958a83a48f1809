//! The portal API under `/api/v1`: routing, authentication, JSON answers, request metrics.
//!
//! Served by the relay's HTTP server (the tunnel port unless `portal.bind` gives it its own).
//! Order per request: route (404) -> method (405 with `Allow`) -> Bearer token (401/403/503,
//! counted and audited) -> scope (admins everything; agent-scoped tokens only the three list
//! operations) -> handler. `GET /api/v1/openapi.json` needs no token.
//!
//! The portal stays off the data path: handlers read snapshots and atomics, and the only locks
//! they take are the per-tunnel/per-stream table locks, briefly, to clone `Arc`s.

pub(crate) mod api;
mod auth;
mod dashboard;
mod handlers;
pub(crate) mod history;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use time::format_description::well_known::Rfc3339;
use tracing::debug;

use crate::audit::{Action, Event};
use crate::metrics::PortalLabels;
use crate::Shared;
use auth::{Refusal, Scope};

type Body = Full<Bytes>;

/// Largest request body (PATCH) read.
const MAX_BODY: usize = 16 * 1024;
/// Time a client gets to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// An error answer: status, category, short reason.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    error: &'static str,
    reason: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error,
            reason: reason.into(),
        }
    }
    pub fn bad_request(reason: &str) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }
    pub fn not_found(reason: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", reason)
    }
    pub fn conflict(reason: &str) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", reason)
    }
    pub fn internal(reason: &str) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", reason)
    }
    pub fn internal_owned(reason: String) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", reason)
    }
}

/// The decoded query string (last value wins).
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Result<Query, ApiError> {
        let mut out = Vec::new();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = decode(k, true).ok_or_else(|| ApiError::bad_request("bad query encoding"))?;
            let v = decode(v, true).ok_or_else(|| ApiError::bad_request("bad query encoding"))?;
            if out.len() < 64 {
                out.push((k, v));
            }
        }
        Ok(Query(out))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `true`/`false` (also `1`/`0`); anything else is a 400.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(_) => Err(ApiError::bad_request(
                "boolean parameters take true or false",
            )),
        }
    }
}

/// Percent-decoding (`+` is a space in queries); `None` for bad escapes or non-UTF-8.
fn decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// What a handler gets.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub shared: &'a Arc<Shared>,
    pub caller: &'a auth::Caller,
    pub peer: SocketAddr,
    pub query: Query,
}

/// Unix ms as RFC 3339 (UTC, milliseconds).
pub(crate) fn rfc3339(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&Rfc3339).unwrap_or_default()
}

/// An RFC 3339 time as Unix ms (times before 1970 count as 0).
pub(crate) fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &Rfc3339).ok()?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    Some(u64::try_from(ms.max(0)).unwrap_or(u64::MAX))
}

/// The routes, with their templates (the metric label) and methods.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Policies,
    Policy(String),
    Agents,
    Agent(String),
    AgentUnblock(String),
    Connectors,
    Sessions,
    Session(String),
    Audit,
    Me,
    Status,
    History,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let rest = path.strip_prefix("/api/v1/")?;
        let segs: Vec<&str> = rest.split('/').collect();
        let id = |s: &str| decode(s, false).filter(|d| !d.is_empty());
        Some(match segs.as_slice() {
            ["policies"] => Route::Policies,
            ["policies", p] => Route::Policy(id(p)?),
            ["agents"] => Route::Agents,
            ["agents", a] => Route::Agent(id(a)?),
            ["agents", a, "unblock"] => Route::AgentUnblock(id(a)?),
            ["connectors"] => Route::Connectors,
            ["sessions"] => Route::Sessions,
            ["sessions", c] => Route::Session(id(c)?),
            ["audit"] => Route::Audit,
            ["me"] => Route::Me,
            ["status"] => Route::Status,
            ["history"] => Route::History,
            _ => return None,
        })
    }

    fn template(&self) -> &'static str {
        match self {
            Route::Policies => "/api/v1/policies",
            Route::Policy(_) => "/api/v1/policies/{id}",
            Route::Agents => "/api/v1/agents",
            Route::Agent(_) => "/api/v1/agents/{id}",
            Route::AgentUnblock(_) => "/api/v1/agents/{id}/unblock",
            Route::Connectors => "/api/v1/connectors",
            Route::Sessions => "/api/v1/sessions",
            Route::Session(_) => "/api/v1/sessions/{cid}",
            Route::Audit => "/api/v1/audit",
            Route::Me => "/api/v1/me",
            Route::Status => "/api/v1/status",
            Route::History => "/api/v1/history",
        }
    }

    fn methods(&self) -> &'static [Method] {
        match self {
            Route::Policy(_) => &[Method::GET, Method::PATCH],
            Route::Agent(_) | Route::Session(_) => &[Method::DELETE],
            Route::AgentUnblock(_) => &[Method::POST],
            _ => &[Method::GET],
        }
    }

    /// Operations an agent-scoped token may call (read-only, filtered to its agent).
    fn scoped_ok(&self) -> bool {
        matches!(
            self,
            Route::Agents | Route::Sessions | Route::Audit | Route::Me
        )
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    let body = serde_json::to_vec(&api::ErrorBody {
        error: e.error.to_owned(),
        reason: e.reason.clone(),
    })
    .unwrap_or_default();
    json_response(e.status, body)
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Answers one `/api/v1` request.
pub(crate) async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (template, resp) = if path == "/api/v1/openapi.json" {
        let r = if method == Method::GET {
            static DOC: OnceLock<String> = OnceLock::new();
            let doc = DOC.get_or_init(api::openapi_json);
            json_response(StatusCode::OK, doc.clone().into_bytes())
        } else {
            not_allowed(&[Method::GET])
        };
        ("/api/v1/openapi.json", r)
    } else {
        match Route::parse(&path) {
            None => (
                "other",
                error_response(&ApiError::not_found("no such API path")),
            ),
            Some(route) => {
                let t = route.template();
                (t, dispatch(route, req, peer, &shared).await)
            }
        }
    };
    shared
        .metrics
        .portal_requests
        .get_or_create(&PortalLabels {
            method: method_label(&method),
            route: template,
            status: resp.status().as_u16(),
        })
        .inc();
    debug!(%peer, method = %method, route = template, status = resp.status().as_u16(), "portal request");
    resp
}

fn not_allowed(methods: &[Method]) -> Response<Body> {
    let mut r = error_response(&ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this path",
    ));
    let allow = methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(v) = HeaderValue::from_str(&allow) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

/// Counts, audits and answers a refused portal request.
fn refuse(
    shared: &Shared,
    peer: SocketAddr,
    template: &str,
    refusal: &Refusal,
    actor: Option<&str>,
) -> Response<Body> {
    let reason = refusal.reason();
    shared.metrics.portal_auth_failed(reason);
    let mut event = Event::new(Action::PortalAuth, false)
        .reason(reason)
        .resource(format!("portal:{template}"))
        .source(peer);
    if let Some(a) = actor {
        event = event.actor(a);
    }
    // Rate-limited per source by the audit trail (a token-less flood writes aggregates).
    shared.audit.record(event);
    match refusal {
        Refusal::Token(e) => {
            let mut r = error_response(&ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                format!("{reason}: {e}"),
            ));
            if let Ok(v) = HeaderValue::from_str(&format!(
                "Bearer error=\"invalid_token\", error_description=\"{reason}\""
            )) {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            r
        }
        Refusal::Unavailable(r) => error_response(&ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            match *r {
                "portal_not_configured" => {
                    "portal authentication is not configured (portal.jwks_url or security.jwks_url)"
                }
                _ => "signing keys are not available yet",
            },
        )),
        Refusal::Forbidden { reason, message } => error_response(&ApiError::new(
            StatusCode::FORBIDDEN,
            if *reason == "mfa_required" {
                "mfa_required"
            } else {
                "forbidden"
            },
            message.clone(),
        )),
    }
}

async fn dispatch(
    route: Route,
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Response<Body> {
    let template = route.template();
    if !route.methods().contains(req.method()) {
        return not_allowed(route.methods());
    }
    let caller = match auth::authenticate(shared, req.headers()).await {
        Ok(c) => c,
        Err(refusal) => return refuse(shared, peer, template, &refusal, None),
    };
    if let Scope::Agent(_) = caller.scope {
        if !route.scoped_ok() {
            let refusal = Refusal::Forbidden {
                reason: "read_only_scope",
                message:
                    "an agent-scoped token may only list its agent, sessions and audit records (and /me)"
                        .to_owned(),
            };
            return refuse(shared, peer, template, &refusal, Some(&caller.actor()));
        }
    }
    let query = match Query::parse(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return error_response(&e),
    };
    let is_patch = req.method() == Method::PATCH;
    let body = if is_patch {
        let read = Limited::new(req.into_body(), MAX_BODY).collect();
        match tokio::time::timeout(BODY_TIMEOUT, read).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(_)) => {
                return error_response(&ApiError::bad_request(
                    "request body unreadable or larger than 16 KiB",
                ))
            }
            Err(_) => return error_response(&ApiError::bad_request("request body too slow")),
        }
    } else {
        Bytes::new()
    };
    let ctx = Ctx {
        shared,
        caller: &caller,
        peer,
        query,
    };
    let result = match &route {
        Route::Policies => handlers::list_policies(&ctx),
        Route::Policy(id) if is_patch => handlers::patch_policy(&ctx, id, &body),
        Route::Policy(id) => handlers::get_policy(&ctx, id),
        Route::Agents => handlers::list_agents(&ctx),
        Route::Agent(id) => handlers::disconnect_agent(&ctx, id),
        Route::AgentUnblock(id) => handlers::unblock_agent(&ctx, id),
        Route::Connectors => handlers::list_connectors(&ctx),
        Route::Sessions => handlers::list_sessions(&ctx),
        Route::Session(cid) => handlers::terminate_session(&ctx, cid),
        Route::Audit => handlers::query_audit(&ctx),
        Route::Me => dashboard::me(&ctx),
        Route::Status => dashboard::status(&ctx),
        Route::History => dashboard::history(&ctx),
    };
    match result {
        Ok((status, body)) => json_response(status, body),
        Err(e) => error_response(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_queries() {
        assert_eq!(Route::parse("/api/v1/agents"), Some(Route::Agents));
        assert_eq!(
            Route::parse("/api/v1/agents/a%2Fb/unblock"),
            Some(Route::AgentUnblock("a/b".into()))
        );
        assert_eq!(Route::parse("/api/v1/agents/"), None);
        assert_eq!(Route::parse("/api/v1/nope"), None);
        assert_eq!(Route::parse("/api/v1/sessions/%zz"), None);
        let q =
            Query::parse(Some("success=false&action=tunnel_auth&agent_id=a+b%21&x")).expect("q");
        assert_eq!(q.bool("success").expect("bool"), Some(false));
        assert_eq!(q.get("agent_id"), Some("a b!"));
        assert_eq!(q.get("x"), Some(""));
        assert!(q.bool("action").is_err());
        assert!(Query::parse(Some("a=%ff")).is_err());
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        let t = rfc3339(1_700_000_000_123);
        assert_eq!(parse_rfc3339_ms(&t), Some(1_700_000_000_123));
        assert_eq!(
            parse_rfc3339_ms("2023-11-14T23:13:20+01:00"),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_rfc3339_ms("1960-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        // Forms JSON Schema's date-time allows (RFC 3339 section 5.6).
        for ok in [
            "2020-01-01t00:00:00z",
            "2016-12-31T23:59:60Z",
            "2020-01-01T00:00:00.123456789+05:30",
            "0001-01-01T00:00:00-23:59",
        ] {
            assert!(parse_rfc3339_ms(ok).is_some(), "{ok}");
        }
    }

    #[test]
    fn openapi_document_lists_every_operation() {
        let doc: serde_json::Value = serde_json::from_str(&api::openapi_json()).expect("json");
        let paths = doc["paths"].as_object().expect("paths");
        assert_eq!(paths.len(), 12, "{:?}", paths.keys());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let del = &doc["paths"]["/api/v1/sessions/{cid}"]["delete"]["responses"];
        for code in ["200", "400", "401", "403", "404", "500", "503"] {
            assert!(del.get(code).is_some(), "{code} missing in {del}");
        }
    }
}
