//! A test identity provider and PDP: keys generated at run time (RSA, EC P-256, Ed25519), a JWKS
//! served over HTTP from 127.0.0.1:0 with a request counter, tokens minted with jsonwebtoken,
//! and agents that upgrade with a Bearer token (optionally from another loopback address).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error as WsError;

use super::{Ws, T};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
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

impl Key {
    /// The same key published (and used) under another kid.
    pub fn with_kid(&self, kid: &str) -> Key {
        let mut k = self.clone();
        k.kid = kid.to_owned();
        k.jwk["kid"] = json!(kid);
        k
    }
}

/// One 2048-bit RSA key per test process, generated now. The `openssl` command does it in
/// milliseconds; the pure-Rust fallback takes 10+ s in an unoptimised test build.
fn rsa_private() -> &'static rsa::RsaPrivateKey {
    use rsa::pkcs8::DecodePrivateKey;
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .args(["-outform", "DER"])
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

pub fn jwks(keys: &[&Key]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// Claims of a valid agent token.
pub fn claims(agent_id: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": "nowconnect",
        "sub": format!("agent:{agent_id}"),
        "agent_id": agent_id,
        "iat": now(),
        "exp": now() + 600,
    })
}

pub const ISSUER: &str = "https://idp.test";

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

/// What a test HTTP server answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Reply {
        Reply {
            status: 200,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
}

type Handler = Arc<dyn Fn(&str, &str, &[u8]) -> Reply + Send + Sync>;

/// A one-request-per-connection HTTP/1.1 server on 127.0.0.1:0 that counts requests.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Bodies of the requests received, newest last (bounded by the test).
    pub bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start(
        handler: impl Fn(&str, &str, &[u8]) -> Reply + Send + Sync + 'static,
    ) -> TestServer {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (h2, b2) = (hits.clone(), bodies.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let (handler, hits, bodies) = (handler.clone(), h2.clone(), b2.clone());
                tokio::spawn(async move {
                    let _ = serve_one(sock, handler, hits, bodies).await;
                });
            }
        });
        TestServer {
            addr,
            hits,
            bodies,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting: later connections are refused (the IdP is down).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(
    mut sock: TcpStream,
    handler: Handler,
    hits: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..].to_vec();
    hits.fetch_add(1, Ordering::SeqCst);
    let reply = handler(&method, &path, &body);
    bodies.lock().unwrap().push(body);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let resp = format!(
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.status,
        reply.body.len(),
        reply.body
    );
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}

/// An IdP serving a JWKS it can change at run time.
pub struct Idp {
    pub server: TestServer,
    pub doc: Arc<Mutex<String>>,
}

impl Idp {
    pub async fn start(keys: &[&Key]) -> Idp {
        let doc = Arc::new(Mutex::new(jwks(keys)));
        let d = doc.clone();
        let server = TestServer::start(move |_, path, _| {
            if path == "/jwks" {
                Reply::ok(d.lock().unwrap().clone())
            } else {
                Reply {
                    status: 404,
                    body: String::new(),
                    delay: Duration::ZERO,
                }
            }
        })
        .await;
        Idp { server, doc }
    }

    pub fn publish(&self, keys: &[&Key]) {
        *self.doc.lock().unwrap() = jwks(keys);
    }

    pub fn url(&self) -> String {
        self.server.url("/jwks")
    }
}

/// Connects a TCP socket to `addr` from loopback address `from` (e.g. 127.0.0.2).
pub async fn connect_from(from: IpAddr, addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    sock.connect(addr).await.unwrap()
}

/// Upgrades `/tunnel` offering v2, with `Authorization: Bearer token` when given.
pub async fn upgrade(
    addr: SocketAddr,
    token: Option<&str>,
    from: Option<IpAddr>,
) -> Result<Ws<TcpStream>, WsError> {
    let mut req = format!("ws://{addr}/tunnel").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("nowconnect.v2, nowconnect.v1"),
    );
    if let Some(t) = token {
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
    }
    let sock = match from {
        Some(ip) => connect_from(ip, addr).await,
        None => TcpStream::connect(addr).await.unwrap(),
    };
    let (ws, _) = tokio::time::timeout(T, tokio_tungstenite::client_async(req, sock))
        .await
        .expect("upgrade answered in time")?;
    Ok(ws)
}

/// The refusal of an upgrade: (status, body, WWW-Authenticate).
pub fn refusal(err: WsError) -> (u16, String, String) {
    match err {
        WsError::Http(resp) => {
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            let www = resp
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body, www)
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}
