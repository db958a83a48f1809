//! The bearer token: read from `NC_TOKEN_FILE` at every connect, masked everywhere, and its
//! `exp` claim read (not verified: the relay verifies) so the agent can reconnect with a fresh
//! token before the one in use expires.
//!
//! This module never logs or formats the token text; [`Token`] prints as `MASKED`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

/// Longest token file we read (JWTs with many claims stay well below this).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The latest `exp` the agent schedules a refresh for: 9999-12-31T23:59:59Z. A later one
/// (`u64::MAX`, `i64::MAX`, `1e300`) cannot be a real expiry and overflows clock arithmetic, so
/// such a token is used as one without `exp` (the relay accepts it and never times it).
pub const MAX_EXP: u64 = 253_402_300_799;

/// A bearer token with its expiry, if it is a JWT with `exp`. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    value: String,
    /// `exp` as seconds since the Unix epoch, at most [`MAX_EXP`].
    exp: Option<u64>,
    /// An `exp` beyond [`MAX_EXP`], ignored (see [`Token::ignored_exp`]).
    ignored_exp: Option<u64>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

impl Token {
    /// Checks the text (visible ASCII only: it goes into a header) and reads `exp` if present.
    pub fn parse(text: &str) -> Result<Token, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("file is empty".into());
        }
        if t.len() > MAX_TOKEN_LEN {
            return Err(format!("token is longer than {MAX_TOKEN_LEN} bytes"));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("token contains spaces, control or non-ASCII characters".into());
        }
        let exp = jwt_exp(t);
        let (exp, ignored_exp) = match exp {
            Some(s) if s > MAX_EXP => (None, Some(s)),
            other => (other, None),
        };
        Ok(Token {
            value: t.to_owned(),
            exp,
            ignored_exp,
        })
    }

    /// An `exp` claim too far ahead to be an expiry (beyond [`MAX_EXP`]): the token is used as
    /// one without `exp`, so no refresh is scheduled for it.
    pub fn ignored_exp(&self) -> Option<u64> {
        self.ignored_exp
    }

    /// The text for the Authorization header. Callers must not log it.
    pub fn secret(&self) -> &str {
        &self.value
    }

    /// When the token expires (`exp`), if it says.
    pub fn expires_at(&self) -> Option<SystemTime> {
        UNIX_EPOCH.checked_add(Duration::from_secs(self.exp?))
    }

    /// How long until `exp` from `now`: `Ok(left)`, or `Err(ago)` once expired.
    pub fn time_left(&self, now: SystemTime) -> Option<Result<Duration, Duration>> {
        let at = self.expires_at()?;
        Some(match at.duration_since(now) {
            Ok(left) if !left.is_zero() => Ok(left),
            Ok(_) => Err(Duration::ZERO),
            Err(e) => Err(e.duration()),
        })
    }
}

/// Why the token file could not be used. Messages never contain the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot use token file {path}: {message}")]
    Unreadable { path: PathBuf, message: String },
    #[error("the token in {path} expired {} s ago; put a fresh token in the file", .ago.as_secs())]
    Expired { path: PathBuf, ago: Duration },
}

/// Reads the token file now (it may have been rotated since the last connect). An expired JWT is
/// an error: the relay would refuse it, and the operator should hear why.
pub async fn read(path: &Path) -> Result<Token, TokenError> {
    let token = read_any(path).await?;
    if let Some(exp) = token.ignored_exp() {
        tracing::warn!(
            token_file = %path.display(),
            exp,
            "the token's exp is beyond the year 9999; using it as a token without expiry (no refresh before exp)"
        );
    }
    if let Some(Err(ago)) = token.time_left(SystemTime::now()) {
        return Err(TokenError::Expired {
            path: path.to_owned(),
            ago,
        });
    }
    Ok(token)
}

/// Reads the token file without judging `exp` (the refresh check compares tokens).
pub async fn read_any(path: &Path) -> Result<Token, TokenError> {
    let err = |message: String| TokenError::Unreadable {
        path: path.to_owned(),
        message,
    };
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| err(e.to_string()))?;
    // Bound the read before allocating: a misconfigured path could name a huge file.
    if meta.len() > (MAX_TOKEN_LEN as u64) * 2 {
        return Err(err(format!(
            "file is {} bytes, a token is at most {MAX_TOKEN_LEN}",
            meta.len()
        )));
    }
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| err(e.to_string()))?;
    Token::parse(&text).map_err(err)
}

/// `exp` of a JWT (`header.payload.signature`, base64url), without verifying anything.
/// `None` for opaque tokens or a payload without a usable `exp`.
fn jwt_exp(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<serde_json::Number>,
    }
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.exp?;
    exp.as_u64()
        .or_else(|| exp.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An unsigned JWT-shaped token with these claims (the agent never checks signatures).
    pub(crate) fn jwt(claims: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.c2ln",
            b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            b64.encode(claims.as_bytes())
        )
    }

    #[test]
    fn exp_is_read_from_a_jwt_payload() {
        assert_eq!(
            jwt_exp(&jwt(r#"{"exp":1700000000,"sub":"a"}"#)),
            Some(1700000000)
        );
        assert_eq!(jwt_exp(&jwt(r#"{"exp":1700000000.5}"#)), Some(1700000000));
        assert_eq!(jwt_exp(&jwt(r#"{"sub":"a"}"#)), None);
        assert_eq!(jwt_exp(&jwt(r#"{"exp":"soon"}"#)), None);
        assert_eq!(jwt_exp(&jwt(r#"{"exp":-5}"#)), None);
        assert_eq!(jwt_exp("opaque-token"), None);
        assert_eq!(jwt_exp("a.b.c.d"), None);
        assert_eq!(jwt_exp("a.!!!.c"), None);
    }

    #[test]
    fn time_left_and_expiry() {
        let t = Token::parse(&jwt(r#"{"exp":1000}"#)).expect("token");
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(t.time_left(at(400)), Some(Ok(Duration::from_secs(600))));
        assert_eq!(t.time_left(at(1000)), Some(Err(Duration::ZERO)));
        assert_eq!(t.time_left(at(1060)), Some(Err(Duration::from_secs(60))));
        assert_eq!(
            Token::parse("opaque").expect("token").time_left(at(0)),
            None
        );
    }

    #[test]
    fn an_exp_beyond_any_clock_is_ignored_not_a_panic() {
        let now = SystemTime::now();
        for exp in [
            u64::MAX.to_string(),
            i64::MAX.to_string(),
            "1e300".to_owned(),
            (MAX_EXP + 1).to_string(),
        ] {
            let t = Token::parse(&jwt(&format!(r#"{{"exp":{exp}}}"#))).expect("token");
            assert_eq!(t.expires_at(), None, "exp {exp}");
            assert_eq!(t.time_left(now), None, "exp {exp}: no refresh is scheduled");
            assert!(t.ignored_exp().is_some_and(|e| e > MAX_EXP), "exp {exp}");
        }
        // The last representable expiry is still one.
        let t = Token::parse(&jwt(&format!(r#"{{"exp":{MAX_EXP}}}"#))).expect("token");
        assert_eq!(t.ignored_exp(), None);
        assert!(matches!(t.time_left(now), Some(Ok(d)) if d.as_secs() > 86_400 * 365 * 7_000));
    }

    #[tokio::test]
    async fn file_is_trimmed_checked_and_masked() {
        let dir = std::env::temp_dir().join(format!("nc-agent-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join("token");
        std::fs::write(&p, "abc.def.ghi\n").expect("write");
        let t = read(&p).await.expect("token");
        assert_eq!(t.secret(), "abc.def.ghi");
        assert_eq!(format!("{t:?}"), "MASKED");
        std::fs::write(&p, "  \n").expect("write");
        assert!(read(&p).await.is_err());
        std::fs::write(&p, "secret with space").expect("write");
        let e = read(&p).await.expect_err("bad token").to_string();
        assert!(!e.contains("secret"), "token text must not appear: {e}");
        std::fs::write(&p, "x".repeat(MAX_TOKEN_LEN * 3)).expect("write");
        assert!(read(&p).await.is_err(), "oversized file refused");

        let expired = jwt(r#"{"exp":1000000}"#);
        std::fs::write(&p, &expired).expect("write");
        let e = read(&p).await.expect_err("expired").to_string();
        assert!(e.contains("expired") && e.contains("s ago"), "{e}");
        assert!(!e.contains(&expired), "token text must not appear: {e}");
        assert!(read_any(&p).await.is_ok(), "read_any does not judge exp");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
