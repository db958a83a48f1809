//! The IdP's signing keys: fetched from `security.jwks_url` (http/https or `file://`) at start-up
//! and every `jwks_refresh_sec`, cached, and looked up by `kid`.
//!
//! Rules this module owns:
//! - Only asymmetric signature keys are kept: RSA (>= 2048 bits; RS256/PS256), EC P-256 (ES256)
//!   and OKP Ed25519 (EdDSA). Symmetric (`oct`) keys, encryption keys and other curves are
//!   skipped, so an HMAC token can never verify against a public key.
//! - A failed fetch, or a document without a usable key, keeps the cached keys: an IdP outage
//!   does not lock out agents whose keys are known.
//! - An unknown `kid` refreshes at most once per `jwks_min_refresh_sec`: fetches are
//!   single-flight (one async mutex) and rate-limited by the time of the last attempt, so a
//!   storm of forged kids costs at most one request to the IdP per interval.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::JwksSource;
use crate::httpc::HttpClient;
use crate::metrics::{JwksRefreshLabels, Metrics};

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Keys taken from one document; the rest are ignored.
const MAX_KEYS: usize = 64;
/// One fetch may take this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed periodic refresh, try again this soon (or at the refresh interval if shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// A verification key and the algorithms its type allows.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    pub algs: &'static [Algorithm],
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .finish_non_exhaustive()
    }
}

/// The keys of one JWKS document.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    /// Keys published without a `kid`.
    anonymous: Vec<Arc<VerifyKey>>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key for `kid`; a token without a kid only matches a set of exactly one key.
    fn find(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None if self.len() == 1 => self
                .by_kid
                .values()
                .next()
                .or_else(|| self.anonymous.first())
                .cloned(),
            None => None,
        }
    }
}

const RSA_ALGS: &[Algorithm] = &[Algorithm::RS256, Algorithm::PS256];
const RS256: &[Algorithm] = &[Algorithm::RS256];
const PS256: &[Algorithm] = &[Algorithm::PS256];
const ES256: &[Algorithm] = &[Algorithm::ES256];
const EDDSA: &[Algorithm] = &[Algorithm::EdDSA];

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS document. Unusable keys are skipped (and named in the returned notes); a
/// document with no usable key is an error.
pub(crate) fn parse_jwks(bytes: &[u8]) -> Result<(KeySet, Vec<String>), String> {
    let raw: RawJwks = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a JWKS document (expected {{\"keys\": [...]}}): {e}"))?;
    let mut set = KeySet::default();
    let mut notes = Vec::new();
    if raw.keys.len() > MAX_KEYS {
        notes.push(format!(
            "{} keys published; only the first {MAX_KEYS} are used",
            raw.keys.len()
        ));
    }
    for (i, value) in raw.keys.into_iter().take(MAX_KEYS).enumerate() {
        match parse_key(value) {
            Ok(k) => match k.kid.clone() {
                Some(kid) => match set.by_kid.entry(kid) {
                    Entry::Occupied(e) => {
                        notes.push(format!(
                            "keys[{i}]: kid `{}` repeated; first one kept",
                            e.key()
                        ));
                    }
                    Entry::Vacant(e) => {
                        e.insert(Arc::new(k));
                    }
                },
                None => set.anonymous.push(Arc::new(k)),
            },
            Err(why) => notes.push(format!("keys[{i}] skipped: {why}")),
        }
    }
    if set.is_empty() {
        return Err(format!(
            "no usable signing key in the JWKS ({})",
            notes.join("; ")
        ));
    }
    Ok((set, notes))
}

fn parse_key(value: serde_json::Value) -> Result<VerifyKey, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
    let kid = jwk.common.key_id.clone();
    if let Some(u) = &jwk.common.public_key_use {
        if *u != PublicKeyUse::Signature {
            return Err("not a signature key (use != sig)".into());
        }
    }
    let declared = jwk.common.key_algorithm;
    let algs = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = base64_len(&p.n)?;
            if n < 256 {
                return Err(format!(
                    "RSA key of {} bits; at least 2048 are required",
                    n * 8
                ));
            }
            match declared {
                None => RSA_ALGS,
                Some(KeyAlgorithm::RS256) => RS256,
                Some(KeyAlgorithm::PS256) => PS256,
                Some(other) => return Err(format!("RSA key for unsupported alg {other:?}")),
            }
        }
        AlgorithmParameters::EllipticCurve(p) => match (&p.curve, declared) {
            (EllipticCurve::P256, None | Some(KeyAlgorithm::ES256)) => ES256,
            (curve, alg) => return Err(format!("EC key {curve:?}/{alg:?} not supported")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match (&p.curve, declared) {
            (EllipticCurve::Ed25519, None | Some(KeyAlgorithm::EdDSA)) => EDDSA,
            (curve, alg) => return Err(format!("OKP key {curve:?}/{alg:?} not supported")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are never used".into());
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
    // Building a verifier checks the key material (e.g. that an EC point is on the curve):
    // an error here means a broken key, while a plain "does not verify" means a usable one.
    jsonwebtoken::crypto::verify("AA", b"probe", &key, algs[0])
        .map_err(|e| format!("invalid key material: {e}"))?;
    Ok(VerifyKey { kid, key, algs })
}

/// Decoded length of a base64url value, without leading zero bytes.
fn base64_len(b64: &str) -> Result<usize, String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .map_err(|_| "bad base64 in key".to_owned())?;
    Ok(bytes.iter().skip_while(|b| **b == 0).count())
}

/// Keys read and checked, not in use yet (see [`Jwks::stage_file`]).
#[derive(Debug)]
pub(crate) struct Staged(KeySet);

/// What a fetch was for (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    Startup,
    Periodic,
    UnknownKid,
    /// A configuration reload re-reads a JWKS file.
    Reload,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Periodic => "periodic",
            Trigger::UnknownKid => "unknown_kid",
            Trigger::Reload => "reload",
        }
    }
}

/// Result of a key lookup.
#[derive(Debug)]
pub(crate) enum Lookup {
    Found(Arc<VerifyKey>),
    /// Keys are cached, but none matches.
    Unknown,
    /// No key has ever been loaded (IdP unreachable since start-up).
    NoKeys,
}

/// The key cache. One per relay.
#[derive(Debug)]
pub(crate) struct Jwks {
    source: JwksSource,
    http: Option<HttpClient>,
    keys: RwLock<Arc<KeySet>>,
    /// Held while fetching (single flight); holds the time of the last attempt.
    fetch: tokio::sync::Mutex<Option<Instant>>,
    refresh: Duration,
    min_refresh: Duration,
    metrics: Arc<Metrics>,
}

impl Jwks {
    pub fn new(
        source: JwksSource,
        http: Option<HttpClient>,
        refresh: Duration,
        min_refresh: Duration,
        metrics: Arc<Metrics>,
    ) -> Jwks {
        Jwks {
            source,
            http,
            keys: RwLock::new(Arc::new(KeySet::default())),
            fetch: tokio::sync::Mutex::new(None),
            refresh,
            min_refresh,
            metrics,
        }
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Keys are cached (what `/readyz` needs).
    pub fn has_keys(&self) -> bool {
        !self.current().is_empty()
    }

    /// Finds the key for `kid`, refreshing once (rate-limited) when it is not cached.
    pub async fn lookup(&self, kid: Option<&str>) -> Lookup {
        if let Some(k) = self.current().find(kid) {
            return Lookup::Found(k);
        }
        {
            let mut last = self.fetch.lock().await;
            // Another task may have fetched while we waited for the lock; the interval check
            // then skips a second fetch and the lookup below sees its keys.
            if last.is_none_or(|t| t.elapsed() >= self.min_refresh) {
                *last = Some(Instant::now());
                let _ = self.load(Trigger::UnknownKid).await;
            }
        }
        let set = self.current();
        match set.find(kid) {
            Some(k) => Lookup::Found(k),
            None if set.is_empty() => Lookup::NoKeys,
            None => Lookup::Unknown,
        }
    }

    /// Fetches now, regardless of the interval (start-up and periodic refresh).
    pub async fn refresh_now(&self, trigger: Trigger) -> Result<usize, String> {
        let mut last = self.fetch.lock().await;
        *last = Some(Instant::now());
        self.load(trigger).await
    }

    /// A configuration reload reads a JWKS file again without using it yet: `Some` keys to
    /// [`Jwks::install`] once the whole reload can be applied; `None` for an IdP URL (its
    /// refresher keeps it current). An error leaves the cached keys in use.
    pub async fn stage_file(&self) -> Result<Option<Staged>, String> {
        if !matches!(self.source, JwksSource::File(_)) {
            return Ok(None);
        }
        let result = match self.read_source().await {
            Ok(bytes) => parse_jwks(&bytes),
            Err(e) => Err(e),
        };
        match result {
            Ok((set, notes)) => {
                for n in &notes {
                    warn!(source = %self.describe(), "JWKS: {n}");
                }
                Ok(Some(Staged(set)))
            }
            Err(e) => {
                let label = JwksRefreshLabels {
                    trigger: Trigger::Reload.as_str(),
                    result: "error",
                };
                self.metrics.jwks_refreshes.get_or_create(&label).inc();
                Err(e)
            }
        }
    }

    /// Puts keys [`Jwks::stage_file`] read in place of the cached ones.
    pub fn install(&self, staged: Staged) {
        let n = staged.0.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(staged.0);
        self.metrics.jwks_keys.set(n as i64);
        let label = JwksRefreshLabels {
            trigger: Trigger::Reload.as_str(),
            result: "ok",
        };
        self.metrics.jwks_refreshes.get_or_create(&label).inc();
    }

    /// Fetches and installs the keys; on failure the cached keys stay.
    async fn load(&self, trigger: Trigger) -> Result<usize, String> {
        let result = match self.read_source().await {
            Ok(bytes) => parse_jwks(&bytes),
            Err(e) => Err(e),
        };
        let label = |result| JwksRefreshLabels {
            trigger: trigger.as_str(),
            result,
        };
        match result {
            Ok((set, notes)) => {
                for n in &notes {
                    warn!(source = %self.describe(), "JWKS: {n}");
                }
                let n = set.len();
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
                self.metrics.jwks_keys.set(n as i64);
                self.metrics
                    .jwks_refreshes
                    .get_or_create(&label("ok"))
                    .inc();
                debug!(source = %self.describe(), keys = n, trigger = trigger.as_str(), "JWKS loaded");
                Ok(n)
            }
            Err(e) => {
                self.metrics
                    .jwks_refreshes
                    .get_or_create(&label("error"))
                    .inc();
                warn!(
                    source = %self.describe(),
                    trigger = trigger.as_str(),
                    cached_keys = self.current().len(),
                    error = %e,
                    "JWKS refresh failed; keeping the cached keys"
                );
                Err(e)
            }
        }
    }

    fn describe(&self) -> String {
        match &self.source {
            JwksSource::Url(u) => u.clone(),
            JwksSource::File(p) => format!("file://{}", p.display()),
        }
    }

    async fn read_source(&self) -> Result<Vec<u8>, String> {
        match &self.source {
            JwksSource::File(path) => read_file(path).await,
            JwksSource::Url(url) => {
                let http = self
                    .http
                    .as_ref()
                    .ok_or_else(|| "no HTTP client".to_owned())?;
                http.get(url, MAX_JWKS_BYTES, FETCH_TIMEOUT)
                    .await
                    .map(|b| b.to_vec())
                    .map_err(|e| format!("GET failed: {e}"))
            }
        }
    }

    /// Refreshes every `refresh` (sooner after a failure) until `stop` is cancelled.
    /// The first fetch happens at once unless `loaded` says start-up already did it.
    pub async fn run_refresher(
        self: Arc<Self>,
        loaded: bool,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut ok = loaded;
        let mut first = !loaded;
        loop {
            let wait = if first {
                Duration::ZERO
            } else if ok {
                self.refresh
            } else {
                self.refresh.min(RETRY_AFTER_FAILURE)
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let trigger = if first {
                Trigger::Startup
            } else {
                Trigger::Periodic
            };
            first = false;
            ok = match self.refresh_now(trigger).await {
                Ok(n) => {
                    if trigger == Trigger::Startup {
                        info!(event = "jwks_loaded", source = %self.describe(), keys = n, "JWKS loaded");
                    }
                    true
                }
                Err(_) => false,
            };
        }
    }
}

async fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_JWKS_BYTES as u64 {
        return Err(format!(
            "{} is larger than {MAX_JWKS_BYTES} bytes",
            path.display()
        ));
    }
    tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn ed_jwk(kid: &str) -> serde_json::Value {
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": kid, "use": "sig"})
    }

    #[test]
    fn only_asymmetric_signature_keys_are_kept() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "tiny-rsa"},
            {"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "enc", "use": "enc"},
            {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "kid": "p384"},
            {"kty": "AKP", "kid": "future"},
            ed_jwk("ed"),
            ed_jwk("ed"),
        ]});
        let (set, notes) = parse_jwks(doc.to_string().as_bytes()).expect("one usable key");
        assert_eq!(set.len(), 1, "{notes:?}");
        let k = set.find(Some("ed")).expect("ed key");
        assert_eq!(k.algs, EDDSA);
        assert!(set.find(Some("hmac")).is_none());
        assert!(set.find(Some("tiny-rsa")).is_none());
        // No kid in the token: fine while exactly one key is published.
        assert!(set.find(None).is_some());
        assert_eq!(notes.len(), 6, "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("2048")));
        assert!(notes.iter().any(|n| n.contains("oct")));
    }

    #[test]
    fn documents_without_usable_keys_are_errors() {
        assert!(parse_jwks(b"not json").is_err());
        assert!(parse_jwks(b"{\"keys\": []}").is_err());
        assert!(parse_jwks(b"{\"keys\": [{\"kty\": \"oct\", \"k\": \"AA\"}]}").is_err());
        // A point that is not on the curve is refused when the key is loaded.
        let bad = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "bad",
             "x": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
             "y": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]});
        assert!(parse_jwks(bad.to_string().as_bytes()).is_err());
    }

    /// A file source whose reads are counted; `tokio::time::pause` drives the intervals.
    #[tokio::test(start_paused = true)]
    async fn unknown_kids_refresh_at_most_once_per_interval() {
        let dir = std::env::temp_dir().join(format!("nc-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("unknown_kids.json");
        let write = |kids: &[&str]| {
            let keys: Vec<_> = kids.iter().map(|k| ed_jwk(k)).collect();
            std::fs::write(&path, serde_json::json!({ "keys": keys }).to_string())
                .expect("write jwks");
        };
        write(&["a"]);
        let metrics = Arc::new(Metrics::new());
        let jwks = Arc::new(Jwks::new(
            JwksSource::File(path.clone()),
            None,
            Duration::from_secs(300),
            Duration::from_secs(30),
            metrics.clone(),
        ));
        jwks.refresh_now(Trigger::Startup).await.expect("loads");
        let fetches = || {
            let text = metrics.render();
            text.lines()
                .filter(|l| l.starts_with("nowconnect_jwks_refreshes_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
                .sum::<usize>()
        };
        assert_eq!(fetches(), 1);

        // A storm of forged kids right after start-up: no fetch at all (interval not over).
        let n = AtomicUsize::new(0);
        for i in 0..100 {
            if matches!(
                jwks.lookup(Some(&format!("forged-{i}"))).await,
                Lookup::Unknown
            ) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        assert_eq!(n.load(Ordering::Relaxed), 100);
        assert_eq!(fetches(), 1);

        // The IdP rotates; after the interval one unknown kid fetches once, and finds it.
        write(&["a", "b"]);
        tokio::time::advance(Duration::from_secs(31)).await;
        let storm: Vec<_> = (0..50)
            .map(|i| {
                let j = jwks.clone();
                tokio::spawn(async move { j.lookup(Some(&format!("x{i}"))).await })
            })
            .collect();
        for s in storm {
            assert!(matches!(s.await.expect("task"), Lookup::Unknown));
        }
        assert_eq!(fetches(), 2, "concurrent unknown kids share one fetch");
        assert!(matches!(jwks.lookup(Some("b")).await, Lookup::Found(_)));
        assert_eq!(fetches(), 2);

        // The source breaks: cached keys keep working.
        std::fs::write(&path, "garbage").expect("write");
        assert!(jwks.refresh_now(Trigger::Periodic).await.is_err());
        assert!(matches!(jwks.lookup(Some("a")).await, Lookup::Found(_)));
        assert!(jwks.has_keys());
        let _ = std::fs::remove_file(&path);
    }
}
