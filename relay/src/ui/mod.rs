//! The operator dashboard under `/ui/`, on the portal's server (beside `/api/v1`).
//!
//! Serves the page's four assets, embedded in the binary from `relay/ui/` (no CDN, nothing to
//! install, works air-gapped), each with a strict Content-Security-Policy: scripts and styles
//! from this origin only, no inline code, no framing, reports to `/ui/csp-report` (counted in
//! `nowconnect_ui_csp_reports_total`). Three small endpoints serve the sign-in: the page's
//! settings (`/ui/config.json`), the OIDC code exchange (`/ui/token`, module [`oidc`]) and the
//! CSP reports. Everything the page shows comes from `/api/v1` with the signed-in bearer token;
//! nothing here touches the data path.

pub(crate) mod oidc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tracing::{debug, info};

use crate::audit::{Action, Event};
use crate::Shared;

type Body = Full<Bytes>;

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");
const FAVICON: &str = include_str!("../../ui/favicon.svg");

/// The page's policy: nothing but this origin's own script, style and images; `fetch` only to
/// this origin (the IdP is reached by navigation, the code exchange through the relay).
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'; report-uri /ui/csp-report";

/// Largest body read from the browser (a code grant or a CSP report).
const MAX_BODY: usize = 8 * 1024;
/// Time a browser gets to send it.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Adds the headers every `/ui/` answer carries.
fn harden(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    let set = |h: &mut hyper::HeaderMap, name: HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(
        h,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(h, header::CACHE_CONTROL, "no-store");
    r
}

fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    harden(r)
}

fn json_answer(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    answer(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

fn error(status: StatusCode, error: &str, reason: &str) -> Response<Body> {
    json_answer(status, &json!({"error": error, "reason": reason}))
}

/// Answers one request under `/ui`.
pub(crate) async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Response<Body> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let post = req.method() == Method::POST;
    match req.uri().path() {
        "/ui" if get => {
            let mut r = answer(StatusCode::PERMANENT_REDIRECT, "text/plain", "/ui/\n");
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/ui/"));
            r
        }
        "/ui/" | "/ui/index.html" if get => {
            answer(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML)
        }
        "/ui/app.js" if get => answer(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        "/ui/app.css" if get => answer(StatusCode::OK, "text/css; charset=utf-8", APP_CSS),
        "/ui/favicon.svg" if get => answer(StatusCode::OK, "image/svg+xml", FAVICON),
        "/ui/config.json" if get => config(&shared).await,
        "/ui/token" if post => token(req, peer, &shared).await,
        "/ui/csp-report" if post => csp_report(req, peer, &shared).await,
        p => match allowed(p) {
            Some(allow) => {
                let mut r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "method not allowed on this path",
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
            None => error(StatusCode::NOT_FOUND, "not_found", "no such dashboard path"),
        },
    }
}

/// The methods a dashboard path takes; `None`: no such path.
fn allowed(path: &str) -> Option<&'static str> {
    match path {
        "/ui/token" | "/ui/csp-report" => Some("POST"),
        "/ui" | "/ui/" | "/ui/index.html" | "/ui/app.js" | "/ui/app.css" | "/ui/favicon.svg"
        | "/ui/config.json" => Some("GET, HEAD"),
        _ => None,
    }
}

/// A client for the IdP, trusting what the relay's other IdP requests trust.
fn idp_client(shared: &Shared) -> Result<crate::httpc::HttpClient, String> {
    let cfg = shared.cfg();
    let ca = cfg
        .security
        .jwt
        .as_ref()
        .and_then(|j| j.ca_file.clone())
        .or_else(|| cfg.pdp.as_ref().and_then(|p| p.ca_file.clone()));
    crate::httpc::HttpClient::new(ca.as_deref())
}

/// `GET /ui/config.json`: the version and how to sign in.
async fn config(shared: &Arc<Shared>) -> Response<Body> {
    let cfg = shared.cfg();
    let (oidc, oidc_error) = match &cfg.portal.oidc {
        None => (serde_json::Value::Null, serde_json::Value::Null),
        Some(o) => match shared.oidc.endpoints(o, || idp_client(shared)).await {
            Ok((e, _)) => (
                json!({
                    "issuer": o.issuer,
                    "client_id": o.client_id,
                    "scopes": o.scopes.join(" "),
                    "authorization_endpoint": e.authorization_endpoint,
                }),
                serde_json::Value::Null,
            ),
            Err(e) => {
                debug!(error = %e, "dashboard sign-in unavailable");
                (serde_json::Value::Null, json!(e.to_string()))
            }
        },
    };
    json_answer(
        StatusCode::OK,
        &json!({
            "version": env!("CARGO_PKG_VERSION"),
            "oidc": oidc,
            "oidc_error": oidc_error,
        }),
    )
}

/// Reads a small body, or says why not.
async fn small_body(req: Request<Incoming>) -> Result<Bytes, &'static str> {
    let read = Limited::new(req.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(_)) => Err("request body unreadable or larger than 8 KiB"),
        Err(_) => Err("request body too slow"),
    }
}

/// `POST /ui/token`: the browser's authorization code and PKCE verifier, exchanged at the IdP.
async fn token(req: Request<Incoming>, peer: SocketAddr, shared: &Arc<Shared>) -> Response<Body> {
    let cfg = shared.cfg();
    let Some(o) = &cfg.portal.oidc else {
        return error(
            StatusCode::NOT_FOUND,
            "not_configured",
            "sign-in with an IdP is not configured (portal.oidc); paste a token instead",
        );
    };
    let body = match small_body(req).await {
        Ok(b) => b,
        Err(why) => return error(StatusCode::BAD_REQUEST, "bad_request", why),
    };
    let grant: oidc::CodeGrant = match serde_json::from_slice(&body) {
        Ok(g) => g,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "body must be {\"code\", \"code_verifier\", \"redirect_uri\"}",
            )
        }
    };
    if let Err(why) = grant.check() {
        return error(StatusCode::BAD_REQUEST, "bad_request", why);
    }
    let issued = match shared.oidc.endpoints(o, || idp_client(shared)).await {
        Ok((endpoints, client)) => oidc::exchange(&client, o, &endpoints, &grant).await,
        Err(e) => Err(e),
    };
    match issued {
        Ok(t) => {
            info!(%peer, "dashboard sign-in: code exchanged at the IdP");
            json_answer(
                StatusCode::OK,
                &json!({"token": t.token, "expires_in": t.expires_in}),
            )
        }
        Err(e) => {
            shared.metrics.portal_auth_failed("oidc_exchange_failed");
            shared.audit.record(
                Event::new(Action::PortalAuth, false)
                    .reason("oidc_exchange_failed")
                    .resource("portal:/ui/token")
                    .source(peer),
            );
            info!(%peer, error = %e, "dashboard sign-in failed");
            let status = match e {
                oidc::OidcError::Refused(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::BAD_GATEWAY,
            };
            error(status, "sign_in_failed", &e.to_string())
        }
    }
}

/// `POST /ui/csp-report`: a browser saw the page break its policy (an injected script, a
/// tampered asset, a bug of ours). Counted; only the directive is logged.
async fn csp_report(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Response<Body> {
    shared.metrics.ui_csp_reports.inc();
    let directive = small_body(req)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            let r = &v["csp-report"];
            r["effective-directive"]
                .as_str()
                .or(r["violated-directive"].as_str())
                .map(|d| {
                    d.chars()
                        .filter(|c| c.is_ascii_graphic())
                        .take(64)
                        .collect::<String>()
                })
        })
        .unwrap_or_default();
    // A warning per report would let anyone fill the log; the counter is what to alert on.
    debug!(%peer, directive, "dashboard CSP violation reported");
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    harden(r)
}
