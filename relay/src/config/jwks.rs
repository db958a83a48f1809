//! [`JwksSource`]: where an IdP's signing keys come from, and reading it from a `jwks_url` key.
//!
//! Shared by `security` (agent tokens) and `portal` (portal tokens), so it lives below both.

use std::path::PathBuf;

use super::check::check_http_url;
use super::collector::Collector;

/// Where the IdP's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `http://` or `https://` URL.
    Url(String),
    /// `file:///path`: a JWKS document on disk (air-gapped sites), re-read on refresh.
    File(PathBuf),
}

/// `security.jwks_url`: http(s) or `file:///absolute/path` (plain http to a non-loopback host
/// only with `allow_insecure`, see [`check_http_url`]).
pub(super) fn jwks_source(
    c: &mut Collector,
    key: &str,
    url: &str,
    allow_insecure: bool,
) -> Option<JwksSource> {
    if let Some(path) = url.strip_prefix("file://") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            c.bad(
                key,
                "a file:// JWKS needs an absolute path (file:///etc/nowconnect/jwks.json)",
            );
            return None;
        }
        return Some(JwksSource::File(path));
    }
    check_http_url(c, key, url, allow_insecure).then(|| JwksSource::Url(url.to_owned()))
}
