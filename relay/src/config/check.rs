//! Value checks that more than one section uses: loopback hosts, http(s) URLs, second ranges.
//!
//! Each check reports into the shared [`Collector`] under the key it is given.

use std::net::IpAddr;
use std::time::Duration;

use super::collector::Collector;

/// Whether `host` certainly names a loopback address.
pub(super) fn host_is_loopback(host: &str) -> bool {
    match host
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// Checks an `http(s)://host[:port]/path` URL. Plain http to a loopback host (127.0.0.0/8, ::1,
/// `localhost`) is accepted; to any other host it is refused unless `allow_insecure`
/// (`security.allow_insecure_http`), then accepted with a warning: keys or decisions fetched
/// over it can be forged by anyone on the path.
pub(super) fn check_http_url(
    c: &mut Collector,
    key: &str,
    url: &str,
    allow_insecure: bool,
) -> bool {
    let parsed = match url.parse::<hyper::Uri>() {
        Ok(u) => u,
        Err(_) => {
            c.bad(key, format!("`{url}` is not a URL"));
            return false;
        }
    };
    let Some(host) = parsed.host().filter(|h| !h.is_empty()) else {
        c.bad(key, format!("`{url}` has no host"));
        return false;
    };
    match parsed.scheme_str() {
        Some("https") => true,
        Some("http") if host_is_loopback(host) => true,
        Some("http") if allow_insecure => {
            c.warn(format!(
                "{key}: `{url}` is plain http (allowed by security.allow_insecure_http); use https"
            ));
            true
        }
        Some("http") => {
            c.bad(
                key,
                format!(
                    "`{url}` is plain http to a non-loopback host (anyone on the path could forge \
                     its answers); use https, or set security.allow_insecure_http: true"
                ),
            );
            false
        }
        _ => {
            c.bad(key, format!("`{url}` must start with http:// or https://"));
            false
        }
    }
}

/// A duration in whole seconds within `min..=max`.
pub(super) fn secs(c: &mut Collector, key: &str, v: u64, min: u64, max: u64) -> Duration {
    if v < min || v > max {
        c.bad(
            key,
            format!("must be between {min} and {max} seconds, got {v}"),
        );
    }
    Duration::from_secs(v)
}
