use jsonwebtoken::{DecodingKey, Validation};

use super::*;
use crate::http::{request, Response};
use crate::idp::ec_key;

const CLIENT: &str = "nc-test";
const REDIRECT: &str = "http://127.0.0.1:1/ui/";
const VERIFIER: &str = "the-verifier-of-this-test-is-long-enough-for-rfc7636";

async fn provider() -> (Key, OidcProvider) {
    let key = ec_key("oidc");
    let p = OidcProvider::start(&key, CLIENT).await;
    (key, p)
}

fn authorize_path(client_id: &str, challenge: &str, method: &str) -> String {
    with_query(
        "/authorize",
        &[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT),
            ("scope", "openid profile"),
            ("state", "st/8+="),
            ("code_challenge", challenge),
            ("code_challenge_method", method),
        ],
    )
}

/// The query of the redirect's Location, which must go back to [`REDIRECT`].
fn redirected(r: &Response) -> HashMap<String, String> {
    assert_eq!(r.status, 302, "{}", r.text);
    let loc = r.header("location").expect("a Location");
    let q = loc
        .strip_prefix(&format!("{REDIRECT}?"))
        .unwrap_or_else(|| panic!("not back to the redirect URI: {loc}"));
    query(q)
}

async fn code(p: &OidcProvider) -> String {
    let path = authorize_path(CLIENT, &challenge_of(VERIFIER), "S256");
    let q = redirected(&request(p.server.addr, "GET", &path, None, None).await);
    assert_eq!(q.get("state").map(String::as_str), Some("st/8+="));
    q.get("code").expect("a code").clone()
}

async fn exchange(p: &OidcProvider, code: &str, verifier: &str) -> Response {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("client_id", CLIENT)
        .append_pair("code_verifier", verifier)
        .finish();
    request(p.server.addr, "POST", "/token", None, Some(&body)).await
}

fn verify(key: &Key, p: &OidcProvider, token: &str) -> Value {
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk.clone()).expect("jwk");
    let mut v = Validation::new(key.alg);
    v.set_audience(&[PORTAL_AUDIENCE]);
    v.set_issuer(&[p.issuer()]);
    let dk = DecodingKey::from_jwk(&jwk).expect("decoding key");
    jsonwebtoken::decode::<Value>(token, &dk, &v)
        .expect("a valid portal token")
        .claims
}

#[tokio::test]
async fn the_discovery_document_names_the_endpoints_and_the_jwks_has_the_key() {
    let (key, p) = provider().await;
    let iss = p.issuer();
    assert!(iss.starts_with("http://127.0.0.1:") && !iss.ends_with('/'));
    let d = request(
        p.server.addr,
        "GET",
        "/.well-known/openid-configuration",
        None,
        None,
    )
    .await;
    assert_eq!(d.status, 200);
    assert_eq!(d.body["issuer"], json!(iss));
    assert_eq!(
        d.body["authorization_endpoint"],
        json!(format!("{iss}/authorize"))
    );
    assert_eq!(d.body["token_endpoint"], json!(format!("{iss}/token")));
    assert_eq!(d.body["jwks_uri"], json!(p.jwks_url()));
    assert_eq!(d.body["code_challenge_methods_supported"], json!(["S256"]));
    let j = request(p.server.addr, "GET", "/jwks", None, None).await;
    assert_eq!(j.body["keys"][0]["kid"], json!(key.kid));
}

#[tokio::test]
async fn a_code_with_its_verifier_is_exchanged_once() {
    let (key, p) = provider().await;
    p.set_user(User::admin("alice", &["pwd", "otp"]));
    let c = code(&p).await;
    assert_eq!(p.authorizations(), 1);
    let r = exchange(&p, &c, VERIFIER).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 3600);
    let claims = verify(
        &key,
        &p,
        r.body["access_token"].as_str().expect("access_token"),
    );
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["amr"], json!(["pwd", "otp"]));
    assert_eq!(claims["roles"], json!(["viewer", "admin"]));
    assert!(r.body["id_token"]
        .as_str()
        .is_some_and(|t| t.split('.').count() == 3));
    assert_eq!((p.exchanges(), p.failed_exchanges()), (1, 0));

    let again = exchange(&p, &c, VERIFIER).await;
    assert_eq!(again.status, 400);
    assert_eq!(again.body["error"], "invalid_grant");
    assert_eq!((p.exchanges(), p.failed_exchanges()), (1, 1));
}

#[tokio::test]
async fn a_wrong_verifier_is_refused_and_burns_the_code() {
    let (_key, p) = provider().await;
    p.set_user(User::scoped("bob", "premise-01"));
    let c = code(&p).await;
    let r = exchange(&p, &c, &format!("{VERIFIER}x")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"], "invalid_grant");
    let r = exchange(&p, &c, VERIFIER).await;
    assert_eq!(r.status, 400, "a code presented once never works again");
    assert_eq!((p.exchanges(), p.failed_exchanges()), (0, 2));
}

#[tokio::test]
async fn scoped_users_carry_their_agent_and_are_not_admins() {
    let (key, p) = provider().await;
    let claims = verify(&key, &p, &p.mint(&User::scoped("bob", "premise-01")));
    assert_eq!(claims["agent_id"], "premise-01");
    assert_eq!(claims["roles"], json!(["viewer"]));
    assert_eq!(claims["amr"], json!(["pwd", "otp"]));
}

#[tokio::test]
async fn bad_authorization_requests_go_back_with_an_error_or_stop_at_the_idp() {
    let (_key, p) = provider().await;
    let path = authorize_path(CLIENT, &challenge_of(VERIFIER), "S256");
    let r = request(p.server.addr, "GET", &path, None, None).await;
    assert_eq!(r.status, 403);
    assert!(r.text.contains("nobody signed in"));

    p.set_user(User::admin("alice", &["otp"]));
    for path in [
        authorize_path("someone-else", &challenge_of(VERIFIER), "S256"),
        authorize_path(CLIENT, &challenge_of(VERIFIER), "plain"),
        authorize_path(CLIENT, "", "S256"),
    ] {
        let q = redirected(&request(p.server.addr, "GET", &path, None, None).await);
        assert_eq!(
            q.get("error").map(String::as_str),
            Some("invalid_request"),
            "{path}"
        );
        assert_eq!(q.get("state").map(String::as_str), Some("st/8+="));
        assert!(!q.contains_key("code"));
    }
    assert_eq!(p.authorizations(), 0);
    p.set_user(None);
    let r = request(p.server.addr, "GET", &path, None, None).await;
    assert_eq!(r.status, 403);
}
