//! `tunnel.preauth`: limits on HTTP connections that have not authenticated yet.
//!
//! They apply to every HTTP server of the relay (the `/tunnel` port, `observability.metrics_port`,
//! `portal.bind`), each counting its own connections. A connection leaves the count when it is
//! upgraded to an authenticated tunnel or closed.

use std::time::Duration;

use super::collector::Collector;
use super::raw::RawPreauth;

/// Smallest `max_header_bytes`: hyper's read buffer cannot be smaller.
const MIN_HEADER_BYTES: usize = 8 * 1024;
const MAX_HEADER_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreauthConfig {
    /// Connections not yet authenticated, per HTTP server; more are closed at accept.
    pub max_total: usize,
    /// Of those, from one source (an IPv4 address or an IPv6 /64; the address a trusted PROXY
    /// header names, where that applies); more from it are closed at once.
    pub max_per_source: usize,
    /// From accept until the first request head is complete, PROXY header and TLS handshake
    /// included.
    pub head_timeout: Duration,
    /// After a response, the next request head must be complete this soon: an idle keep-alive
    /// connection is closed then. Also bounds the first head's wait after the TLS handshake.
    pub idle_timeout: Duration,
    /// Largest request head (request line plus headers), in bytes; bigger gets 431. Also the
    /// most a connection buffers while reading.
    pub max_header_bytes: usize,
    /// Most header fields in one request; more gets 431.
    pub max_headers: usize,
}

impl Default for PreauthConfig {
    fn default() -> Self {
        PreauthConfig {
            max_total: 2048,
            max_per_source: 64,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            // A Bearer token may be 16 KiB (auth::MAX_TOKEN_LEN) next to the other headers.
            max_header_bytes: 32 * 1024,
            max_headers: 64,
        }
    }
}

fn millis(c: &mut Collector, key: &str, v: u64, min: u64, max: u64) -> Duration {
    if v < min || v > max {
        c.bad(
            key,
            format!("must be between {min} and {max} milliseconds, got {v}"),
        );
    }
    Duration::from_millis(v)
}

fn count(c: &mut Collector, key: &str, v: usize, min: usize, max: usize) -> usize {
    if v < min || v > max {
        c.bad(key, format!("must be between {min} and {max}, got {v}"));
    }
    v
}

pub(super) fn validate_preauth(c: &mut Collector, p: RawPreauth) -> PreauthConfig {
    let d = PreauthConfig::default();
    let max_total = count(
        c,
        "tunnel.preauth.max_total",
        p.max_total.unwrap_or(d.max_total),
        1,
        1_000_000,
    );
    let max_per_source = count(
        c,
        "tunnel.preauth.max_per_source",
        p.max_per_source.unwrap_or(d.max_per_source.min(max_total)),
        1,
        max_total.max(1),
    );
    let head_timeout = millis(
        c,
        "tunnel.preauth.head_timeout_ms",
        p.head_timeout_ms
            .unwrap_or(d.head_timeout.as_millis() as u64),
        100,
        300_000,
    );
    let idle_timeout = millis(
        c,
        "tunnel.preauth.idle_timeout_ms",
        p.idle_timeout_ms
            .unwrap_or(d.idle_timeout.as_millis() as u64),
        100,
        3_600_000,
    );
    let max_header_bytes = count(
        c,
        "tunnel.preauth.max_header_bytes",
        p.max_header_bytes.unwrap_or(d.max_header_bytes),
        MIN_HEADER_BYTES,
        MAX_HEADER_BYTES,
    );
    let max_headers = count(
        c,
        "tunnel.preauth.max_headers",
        p.max_headers.unwrap_or(d.max_headers),
        8,
        1024,
    );
    PreauthConfig {
        max_total,
        max_per_source,
        head_timeout,
        idle_timeout,
        max_header_bytes,
        max_headers,
    }
}
