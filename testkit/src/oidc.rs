//! A test OpenID Connect provider on 127.0.0.1:0 for the dashboard's sign-in: discovery, a JWKS,
//! an authorization endpoint that signs in whoever the test set (no login page: the browser is
//! redirected straight back with a code), and a token endpoint that checks PKCE (S256) and hands
//! out portal tokens signed with a [`Key`] made at run time.
//!
//! Codes are one-time and bound to the challenge, the redirect URI and the user signed in when
//! they were issued. It counts authorizations and exchanges so a test can tell the browser went
//! through the whole flow exactly once. It must never accept a code twice or a wrong verifier:
//! the tests that rely on it would then pass on a broken client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rand::Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::http::{Reply, TestServer};
use crate::idp::{self, b64, Key, PORTAL_AUDIENCE};

/// Lifetime of the tokens issued, in seconds.
pub const TOKEN_LIFETIME: u64 = 3600;

/// Who signs in: the claims their tokens carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub sub: String,
    /// RFC 8176 methods (`pwd`, `otp`, ...): the relay's MFA policy reads them.
    pub amr: Vec<String>,
    pub roles: Vec<String>,
    /// The agent a scoped (non-admin) operator may see.
    pub agent_id: Option<String>,
}

impl User {
    /// An administrator (roles viewer and admin, as [`idp::admin_token`] has) who used `amr`.
    pub fn admin(sub: &str, amr: &[&str]) -> User {
        User {
            sub: sub.to_owned(),
            amr: amr.iter().map(|m| (*m).to_owned()).collect(),
            roles: vec!["viewer".into(), "admin".into()],
            agent_id: None,
        }
    }

    /// A read-only operator of `agent_id` (role viewer only), signed in with password and OTP.
    pub fn scoped(sub: &str, agent_id: &str) -> User {
        User {
            sub: sub.to_owned(),
            amr: vec!["pwd".into(), "otp".into()],
            roles: vec!["viewer".into()],
            agent_id: Some(agent_id.to_owned()),
        }
    }

    /// Claims of this user's token from `issuer` for `aud`.
    fn claims(&self, issuer: &str, aud: &str) -> Value {
        let amr: Vec<&str> = self.amr.iter().map(String::as_str).collect();
        let mut extra = json!({ "roles": self.roles });
        if let Some(a) = &self.agent_id {
            extra["agent_id"] = json!(a);
        }
        let mut c = idp::portal_claims(&self.sub, &amr, extra);
        c["iss"] = json!(issuer);
        c["aud"] = json!(aud);
        c["exp"] = json!(idp::now() + TOKEN_LIFETIME);
        c
    }
}

/// A code handed out by `/authorize`, waiting for its exchange.
#[derive(Debug)]
struct Grant {
    challenge: String,
    redirect_uri: String,
    user: User,
}

#[derive(Debug, Default)]
struct State {
    /// Who signs in at the next `/authorize`; `None`: nobody (403).
    user: Option<User>,
    /// Codes not yet presented. A code is removed at its first presentation, right or wrong.
    codes: HashMap<String, Grant>,
    authorizations: usize,
    exchanges: usize,
    failed_exchanges: usize,
}

/// What the endpoints need, shared with the server's handler.
#[derive(Debug)]
struct Inner {
    key: Key,
    client_id: String,
    /// `http://127.0.0.1:PORT`, known once the server is bound.
    issuer: OnceLock<String>,
    state: Mutex<State>,
}

/// A test OpenID Connect provider; dropped, it stops serving.
#[derive(Debug)]
pub struct OidcProvider {
    pub server: TestServer,
    inner: Arc<Inner>,
}

impl OidcProvider {
    /// Serves on 127.0.0.1:0, signing with `key`, for the public client `client_id`. Nobody is
    /// signed in until [`set_user`](OidcProvider::set_user).
    pub async fn start(key: &Key, client_id: &str) -> OidcProvider {
        let inner = Arc::new(Inner {
            key: key.clone(),
            client_id: client_id.to_owned(),
            issuer: OnceLock::new(),
            state: Mutex::new(State::default()),
        });
        let i2 = inner.clone();
        let server =
            TestServer::start(move |method, path, body| i2.handle(method, path, body)).await;
        inner
            .issuer
            .set(format!("http://{}", server.addr))
            .expect("issuer set once");
        OidcProvider { server, inner }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn issuer(&self) -> String {
        self.inner.issuer().to_owned()
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.issuer())
    }

    /// Whoever is set signs in at the next authorization; `None`: nobody is signed in.
    pub fn set_user(&self, user: impl Into<Option<User>>) {
        self.inner.state().user = user.into();
    }

    /// A bearer token for `user`, as the token endpoint would issue (for API calls from a test).
    pub fn mint(&self, user: &User) -> String {
        self.inner.token(user, PORTAL_AUDIENCE)
    }

    /// Codes issued by `/authorize`.
    pub fn authorizations(&self) -> usize {
        self.inner.state().authorizations
    }

    /// Codes exchanged for tokens.
    pub fn exchanges(&self) -> usize {
        self.inner.state().exchanges
    }

    /// Token requests refused.
    pub fn failed_exchanges(&self) -> usize {
        self.inner.state().failed_exchanges
    }
}

fn query(s: &str) -> HashMap<String, String> {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

/// `base` with `pairs` appended to its query.
fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{}", q.finish())
}

/// base64url(SHA-256(verifier)): the S256 challenge of RFC 7636.
pub fn challenge_of(verifier: &str) -> String {
    b64(&Sha256::digest(verifier.as_bytes()))
}

fn invalid_grant(why: &str) -> Reply {
    Reply {
        status: 400,
        ..Reply::ok(json!({"error": "invalid_grant", "error_description": why}).to_string())
    }
}

impl Inner {
    fn issuer(&self) -> &str {
        self.issuer.get().map(String::as_str).unwrap_or("")
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("oidc state")
    }

    fn token(&self, user: &User, aud: &str) -> String {
        idp::mint(&self.key, &user.claims(self.issuer(), aud))
    }

    fn handle(&self, method: &str, target: &str, body: &[u8]) -> Reply {
        let (path, q) = target.split_once('?').unwrap_or((target, ""));
        match (method, path) {
            ("GET", "/.well-known/openid-configuration") => Reply::ok(self.discovery().to_string()),
            ("GET", "/jwks") => Reply::ok(idp::jwks(&[&self.key])),
            ("GET", "/authorize") => self.authorize(&query(q)),
            ("POST", "/token") => self.exchange(&query(&String::from_utf8_lossy(body))),
            _ => Reply::status(404),
        }
    }

    fn discovery(&self) -> Value {
        let iss = self.issuer();
        json!({
            "issuer": iss,
            "authorization_endpoint": format!("{iss}/authorize"),
            "token_endpoint": format!("{iss}/token"),
            "jwks_uri": format!("{iss}/jwks"),
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [format!("{:?}", self.key.alg)],
        })
    }

    fn authorize(&self, q: &HashMap<String, String>) -> Reply {
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
        let redirect_uri = get("redirect_uri");
        if !(redirect_uri.starts_with("http://") || redirect_uri.starts_with("https://")) {
            return Reply {
                status: 400,
                ..Reply::html("<p>redirect_uri missing or not http(s)</p>")
            };
        }
        let mut st = self.state();
        let Some(user) = st.user.clone() else {
            return Reply {
                status: 403,
                ..Reply::html("<p>nobody signed in</p>")
            };
        };
        let state = get("state");
        let refuse = |why: &str| {
            Reply::redirect(with_query(
                redirect_uri,
                &[
                    ("error", "invalid_request"),
                    ("error_description", why),
                    ("state", state),
                ],
            ))
        };
        if get("response_type") != "code" {
            return refuse("response_type must be code");
        }
        if get("client_id") != self.client_id {
            return refuse("unknown client_id");
        }
        if get("code_challenge_method") != "S256" {
            return refuse("code_challenge_method must be S256");
        }
        let challenge = get("code_challenge");
        if challenge.is_empty() {
            return refuse("code_challenge missing");
        }
        let code = b64(&rand::rng().random::<[u8; 32]>());
        st.codes.insert(
            code.clone(),
            Grant {
                challenge: challenge.to_owned(),
                redirect_uri: redirect_uri.to_owned(),
                user,
            },
        );
        st.authorizations += 1;
        Reply::redirect(with_query(
            redirect_uri,
            &[("code", &code), ("state", state)],
        ))
    }

    fn exchange(&self, f: &HashMap<String, String>) -> Reply {
        let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        let mut st = self.state();
        // Removed at its first presentation: a code never works twice, even after a wrong try.
        let grant = st.codes.remove(get("code"));
        let refused = if get("grant_type") != "authorization_code" {
            Some("grant_type must be authorization_code")
        } else if f.get("client_id").is_some_and(|c| *c != self.client_id) {
            Some("the code was issued to another client")
        } else {
            match &grant {
                None => Some("unknown or already used code"),
                Some(g) if g.redirect_uri != get("redirect_uri") => {
                    Some("redirect_uri differs from the authorization request's")
                }
                Some(g) if challenge_of(get("code_verifier")) != g.challenge => {
                    Some("code_verifier does not match the code_challenge")
                }
                Some(_) => None,
            }
        };
        match (refused, grant) {
            (None, Some(g)) => {
                st.exchanges += 1;
                drop(st);
                Reply::ok(
                    json!({
                        "access_token": self.token(&g.user, PORTAL_AUDIENCE),
                        "id_token": self.token(&g.user, &self.client_id),
                        "token_type": "Bearer",
                        "expires_in": TOKEN_LIFETIME,
                    })
                    .to_string(),
                )
            }
            (why, _) => {
                st.failed_exchanges += 1;
                invalid_grant(why.unwrap_or("refused"))
            }
        }
    }
}

#[cfg(test)]
#[path = "oidc_tests.rs"]
mod tests;
