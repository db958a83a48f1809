//! The `limits` section: idle timeout, v1 queue budgets, connection, stream and tunnel caps,
//! shutdown grace.

use std::time::Duration;

use super::collector::Collector;
use super::raw::RawLimits;

pub(super) const DEFAULT_IDLE_MS: u64 = 300_000;
pub(super) const DEFAULT_QUEUE_DEPTH: usize = 256;
pub(super) const DEFAULT_QUEUE_BYTES: usize = nowconnect_shared::stream::V1_QUEUE_BYTES;
/// Largest `queue_bytes_per_cid`: 64 MiB.
const MAX_QUEUE_BYTES: usize = 64 << 20;
pub(super) const DEFAULT_MAX_CONN: usize = 10_000;
pub(super) const DEFAULT_GRACE_MS: u64 = 10_000;
pub(super) const DEFAULT_MAX_STREAMS_PER_AGENT: usize = 5_000;
/// Default relay-wide budget for buffered stream bytes: 256 MiB, a quarter of the shipped
/// unit's `MemoryMax=1G`.
pub(super) const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 << 20;
/// Smallest `max_buffered_bytes`: 1 MiB.
const MIN_BUFFERED_BYTES: usize = 1 << 20;
/// One live tunnel, its replacement (a token refresh) and one dead tunnel keepalive has not
/// reaped yet.
pub(super) const DEFAULT_MAX_TUNNELS_PER_AGENT: usize = 3;
/// A reconnect with the same token while keepalive has not reaped the dead tunnel yet; a
/// refresh brings a new token.
pub(super) const DEFAULT_MAX_TUNNELS_PER_JTI: usize = 2;
/// Largest tunnel caps.
const MAX_TUNNEL_CAP: usize = 1_000;

#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// `None`: streams never time out for idleness (`idle_timeout_ms: 0`).
    pub idle_timeout: Option<Duration>,
    /// v1 only: DATA frames queued for one client that make its queue full (the tunnel is then
    /// not read until it drains; still full after `ping_timeout_sec`: RST queue_overflow).
    pub queue_depth_per_cid: usize,
    /// v1 only: payload bytes queued for one client that make its queue full (as above).
    pub queue_bytes_per_cid: usize,
    /// Client connections open at once across all listeners.
    pub max_conn_total: usize,
    /// Client connections open at once on one listener from one source address, unless the
    /// listener sets its own (default: a tenth of `max_conn_total`, at least 1).
    pub max_conn_per_source: usize,
    /// Streams open at once on one agent tunnel; more clients for it are closed at once.
    pub max_streams_per_agent: usize,
    /// How long open streams may run on after SIGTERM / `shutdown()`.
    pub shutdown_grace: Duration,
    /// Stream bytes held relay-wide, half for each direction (see `crate::budget`).
    pub max_buffered_bytes: usize,
    /// v2: how far autotuning may grow each stream's receive window (the initial 256 KiB: a
    /// fixed window), and only while the buffer budget has room for it.
    pub max_stream_window: u32,
    /// Tunnels one agent_id may hold at once (serving, superseded or standby); more are refused.
    pub max_tunnels_per_agent: usize,
    /// Tunnels one token (its `jti`) may hold at once; tokens without `jti` are not counted.
    pub max_tunnels_per_jti: usize,
}

/// `(max_conn_total, max_conn_per_source)` as configured or defaulted, unchecked (listeners
/// are validated before `limits` and need both; [`validate_limits`] reports bad values).
pub(super) fn conn_caps(l: &RawLimits) -> (usize, usize) {
    let total = l.max_conn_total.unwrap_or(DEFAULT_MAX_CONN);
    let per_source = l
        .max_conn_per_source
        .unwrap_or_else(|| default_per_source(total));
    (total, per_source)
}

/// A tenth of `total`, at least 1: ten sources can fill a relay, one cannot.
pub(super) fn default_per_source(total: usize) -> usize {
    (total / 10).max(1)
}

pub(super) fn validate_limits(c: &mut Collector, l: RawLimits) -> LimitsConfig {
    let idle_ms = l.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_MS);
    let queue_depth_per_cid = l.queue_depth_per_cid.unwrap_or(DEFAULT_QUEUE_DEPTH);
    if queue_depth_per_cid == 0 || queue_depth_per_cid > 65_536 {
        c.bad("limits.queue_depth_per_cid", "must be between 1 and 65536");
    }
    let queue_bytes_per_cid = l.queue_bytes_per_cid.unwrap_or(DEFAULT_QUEUE_BYTES);
    if !(1024..=MAX_QUEUE_BYTES).contains(&queue_bytes_per_cid) {
        c.bad(
            "limits.queue_bytes_per_cid",
            "must be between 1024 and 67108864 (64 MiB)",
        );
    }
    let (max_conn_total, max_conn_per_source) = conn_caps(&l);
    if max_conn_total == 0 {
        c.bad("limits.max_conn_total", "must be at least 1");
    }
    if max_conn_per_source == 0 || max_conn_per_source > max_conn_total.max(1) {
        c.bad(
            "limits.max_conn_per_source",
            "must be between 1 and limits.max_conn_total",
        );
    }
    let max_streams_per_agent = l
        .max_streams_per_agent
        .unwrap_or(DEFAULT_MAX_STREAMS_PER_AGENT);
    if max_streams_per_agent == 0 {
        c.bad("limits.max_streams_per_agent", "must be at least 1");
    }
    let grace_ms = l.shutdown_grace_ms.unwrap_or(DEFAULT_GRACE_MS);
    let max_buffered_bytes = l.max_buffered_bytes.unwrap_or(DEFAULT_MAX_BUFFERED_BYTES);
    if max_buffered_bytes < MIN_BUFFERED_BYTES {
        c.bad(
            "limits.max_buffered_bytes",
            "must be at least 1048576 (1 MiB)",
        );
    }
    let window_range = nowconnect_shared::STREAM_WINDOW_RANGE;
    let max_stream_window = match l.max_stream_window_bytes.map(u32::try_from) {
        None => nowconnect_shared::DEFAULT_MAX_STREAM_WINDOW,
        Some(Ok(n)) if window_range.contains(&n) => n,
        Some(_) => {
            c.bad(
                "limits.max_stream_window_bytes",
                format!(
                    "must be between {} (the initial window: no growth) and {} (64 MiB)",
                    window_range.start(),
                    window_range.end()
                ),
            );
            nowconnect_shared::DEFAULT_MAX_STREAM_WINDOW
        }
    };
    let mut tunnel_cap = |key: &str, v: Option<usize>, default: usize| {
        let v = v.unwrap_or(default);
        if !(1..=MAX_TUNNEL_CAP).contains(&v) {
            c.bad(
                key,
                format!("must be between 1 and {MAX_TUNNEL_CAP}, got {v}"),
            );
        }
        v
    };
    let max_tunnels_per_agent = tunnel_cap(
        "limits.max_tunnels_per_agent",
        l.max_tunnels_per_agent,
        DEFAULT_MAX_TUNNELS_PER_AGENT,
    );
    let max_tunnels_per_jti = tunnel_cap(
        "limits.max_tunnels_per_jti",
        l.max_tunnels_per_jti,
        DEFAULT_MAX_TUNNELS_PER_JTI,
    );
    LimitsConfig {
        idle_timeout: (idle_ms > 0).then(|| Duration::from_millis(idle_ms)),
        queue_depth_per_cid,
        queue_bytes_per_cid,
        max_conn_total,
        max_conn_per_source,
        max_streams_per_agent,
        shutdown_grace: Duration::from_millis(grace_ms),
        max_buffered_bytes,
        max_stream_window,
        max_tunnels_per_agent,
        max_tunnels_per_jti,
    }
}
