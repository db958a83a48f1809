//! A test identity provider: signing keys generated at run time (RSA, EC P-256, Ed25519), their
//! JWKS served over HTTP from 127.0.0.1:0 (changeable while the test runs) or written to a file,
//! tokens minted with jsonwebtoken, hand-made tokens (forged headers, no signature), and the
//! claims the relay expects of agent and portal tokens.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

use crate::http::{Reply, TestServer};

/// The issuer of every token minted here.
pub const ISSUER: &str = "https://idp.test";
/// Audience of agent tokens (the relay's default).
pub const AGENT_AUDIENCE: &str = "nowconnect";
/// Audience of portal tokens (the relay's default).
pub const PORTAL_AUDIENCE: &str = "nowconnect-portal";

/// base64url without padding, as in JWTs and JWKs.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Now as Unix seconds (wall clock: tokens carry wall-clock times).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A signing key and its public JWK.
#[derive(Clone)]
pub struct Key {
    pub kid: String,
    pub alg: Algorithm,
    pub enc: EncodingKey,
    pub jwk: Value,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// The same key published (and used) under another kid.
    pub fn with_kid(&self, kid: &str) -> Key {
        let mut k = self.clone();
        k.kid = kid.to_owned();
        k.jwk["kid"] = json!(kid);
        k
    }

    /// The same key signing with another algorithm of its family (RS256 -> PS256).
    pub fn with_alg(&self, alg: Algorithm) -> Key {
        Key {
            alg,
            ..self.clone()
        }
    }
}

/// One 2048-bit RSA key per test process, generated at first use. The `openssl` command does it
/// in milliseconds; the pure-Rust fallback takes 10+ s in an unoptimised test build.
fn rsa_private() -> &'static rsa::RsaPrivateKey {
    use rsa::pkcs8::DecodePrivateKey;
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA"])
            .args(["-pkeyopt", "rsa_keygen_bits:2048", "-outform", "DER"])
            .stderr(std::process::Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {
                // PKCS#8 or PKCS#1 DER, depending on the OpenSSL version.
                rsa::RsaPrivateKey::from_pkcs8_der(&o.stdout)
                    .or_else(|_| {
                        use rsa::pkcs1::DecodeRsaPrivateKey;
                        rsa::RsaPrivateKey::from_pkcs1_der(&o.stdout)
                    })
                    .expect("openssl made an RSA key")
            }
            _ => rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("RSA key generation"),
        }
    })
}

/// RSA key for `alg` (RS256 or PS256); the JWK carries no `alg`, so either may use it.
pub fn rsa_key(kid: &str, alg: Algorithm) -> Key {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let private = rsa_private();
    let der = private.to_pkcs1_der().expect("pkcs1 der");
    Key {
        kid: kid.to_owned(),
        alg,
        enc: EncodingKey::from_rsa_der(der.as_bytes()),
        jwk: json!({
            "kty": "RSA", "use": "sig", "kid": kid,
            "n": b64(&private.n().to_bytes_be()),
            "e": b64(&private.e().to_bytes_be()),
        }),
    }
}

/// The RSA public key as PEM: what an attacker would use as an HMAC secret.
pub fn rsa_public_pem() -> String {
    use rsa::pkcs8::EncodePublicKey;
    rsa_private()
        .to_public_key()
        .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
        .expect("pem")
}

/// A fresh EC P-256 key (ES256).
pub fn ec_key(kid: &str) -> Key {
    use p256::pkcs8::EncodePrivateKey;
    let sk = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let point = sk.verifying_key().to_encoded_point(false);
    Key {
        kid: kid.to_owned(),
        alg: Algorithm::ES256,
        enc: EncodingKey::from_ec_der(sk.to_pkcs8_der().expect("pkcs8").as_bytes()),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "kid": kid,
            "x": b64(point.x().expect("x")),
            "y": b64(point.y().expect("y")),
        }),
    }
}

/// A fresh Ed25519 key (EdDSA).
pub fn ed_key(kid: &str) -> Key {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let sk = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    Key {
        kid: kid.to_owned(),
        alg: Algorithm::EdDSA,
        enc: EncodingKey::from_ed_der(sk.to_pkcs8_der().expect("pkcs8").as_bytes()),
        jwk: json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "kid": kid,
            "x": b64(sk.verifying_key().as_bytes()),
        }),
    }
}

/// The JWKS document publishing `keys`.
pub fn jwks(keys: &[&Key]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// Writes the JWKS of `keys` to `dir/jwks.json`; returns its `file://` URL.
pub fn jwks_file(dir: &Path, keys: &[&Key]) -> String {
    let path: PathBuf = crate::temp::write(dir, "jwks.json", &jwks(keys));
    format!("file://{}", path.display())
}

/// The connectors a test agent token grants (the names the tests' HELLOs use): the relay
/// refuses connectors a token does not grant by default.
pub const GRANTED: [&str; 6] = ["addomain", "db", "echo", "t", "stuck", "down"];

/// Claims of a valid agent token for `agent_id` (10 minutes), granting [`GRANTED`].
pub fn claims(agent_id: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AGENT_AUDIENCE,
        "sub": format!("agent:{agent_id}"),
        "agent_id": agent_id,
        "connectors": GRANTED,
        "iat": now(),
        "exp": now() + 600,
    })
}

/// Claims of a portal token for `sub` with `amr`; `extra` is merged in (roles, agent_id, ...).
pub fn portal_claims(sub: &str, amr: &[&str], extra: Value) -> Value {
    let mut c = json!({
        "iss": ISSUER,
        "aud": PORTAL_AUDIENCE,
        "sub": sub,
        "amr": amr,
        "iat": now(),
        "exp": now() + 600,
    });
    if let (Some(obj), Value::Object(more)) = (c.as_object_mut(), extra) {
        obj.extend(more);
    }
    c
}

/// A portal token of `alice` with roles viewer and admin.
pub fn admin_token(key: &Key, amr: &[&str]) -> String {
    mint(
        key,
        &portal_claims("alice", amr, json!({"roles": ["viewer", "admin"]})),
    )
}

/// A valid agent token for `agent_id`.
pub fn agent_token(key: &Key, agent_id: &str) -> String {
    mint(key, &claims(agent_id))
}

/// Signs `claims` with `key` (header: its alg and kid).
pub fn mint(key: &Key, claims: &Value) -> String {
    let mut h = Header::new(key.alg);
    h.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&h, claims, &key.enc).expect("mint")
}

/// A token with an arbitrary header and signature bytes (alg none, forged headers).
pub fn raw_token(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(sig)
    )
}

/// A JWT-shaped token that nobody signed: what the agent reads (`exp`) without verifying.
pub fn unsigned(claims: &Value) -> String {
    raw_token(&json!({"alg": "RS256", "typ": "JWT"}), claims, b"signature")
}

/// An IdP serving a JWKS at `/jwks` that the test can change while it runs.
#[derive(Debug)]
pub struct Idp {
    pub server: TestServer,
    doc: Arc<Mutex<String>>,
}

impl Idp {
    pub async fn start(keys: &[&Key]) -> Idp {
        let doc = Arc::new(Mutex::new(jwks(keys)));
        let d = doc.clone();
        let server = TestServer::start(move |_, path, _| {
            if path == "/jwks" {
                Reply::ok(d.lock().expect("jwks").clone())
            } else {
                Reply::status(404)
            }
        })
        .await;
        Idp { server, doc }
    }

    /// Publishes `keys` from now on.
    pub fn publish(&self, keys: &[&Key]) {
        *self.doc.lock().expect("jwks") = jwks(keys);
    }

    pub fn url(&self) -> String {
        self.server.url("/jwks")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn minted_tokens_verify_against_their_jwk() {
        for key in [ec_key("e"), ed_key("d"), rsa_key("r", Algorithm::PS256)] {
            let token = mint(&key, &claims("a1"));
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk.clone()).expect("jwk");
            let dk = DecodingKey::from_jwk(&jwk).expect("decoding key");
            let mut v = Validation::new(key.alg);
            v.set_audience(&[AGENT_AUDIENCE]);
            v.set_issuer(&[ISSUER]);
            let data = jsonwebtoken::decode::<Value>(&token, &dk, &v).expect("valid token");
            assert_eq!(data.claims["agent_id"], "a1");
        }
    }

    #[test]
    fn unsigned_tokens_carry_their_claims() {
        let t = unsigned(&json!({"exp": 5}));
        let payload = t.split('.').nth(1).expect("payload");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("b64");
        assert_eq!(
            serde_json::from_slice::<Value>(&raw).expect("json"),
            json!({"exp": 5})
        );
    }
}
