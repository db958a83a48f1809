//! The `limits` section: timeouts and bounds of the data path, and the reconnect delays.

use std::time::Duration;

use nowconnect_shared::{Limits, DEFAULT_MAX_STREAM_WINDOW, STREAM_WINDOW_RANGE};

use super::collector::Collector;
use super::layer::Layer;

/// Timeouts and bounds of the data path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLimits {
    /// Time allowed to dial a target after OPEN; then RST connect_failed.
    pub connect_timeout: Duration,
    /// v1 only: DATA frames queued for one target that make its queue full (the tunnel is then
    /// not read until it drains; still full after the ping timeout: RST queue_overflow).
    pub queue_depth_per_cid: usize,
    /// v1 only: payload bytes queued for one target that make its queue full (as above).
    pub queue_bytes_per_cid: usize,
    /// v2: how far autotuning may grow each stream's receive window (the initial 256 KiB: a
    /// fixed window). A stream holds at most this many bytes for its target.
    pub max_stream_window: u32,
    /// Time allowed from the TCP dial to HELLO_ACK; then the attempt counts as failed.
    pub handshake_timeout: Duration,
    /// Upper bound of the first reconnect delay (full jitter: the delay is random below it).
    pub reconnect_initial: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_max: Duration,
    /// Frame size limits shared with the relay.
    pub protocol: Limits,
}

pub(super) fn validate_limits(c: &mut Collector, l: &Layer) -> AgentLimits {
    let connect_timeout = ms_up_to_an_hour(
        c,
        "limits.connect_timeout_ms (NC_CONNECT_TIMEOUT_MS)",
        l.connect_timeout_ms,
        5_000,
    );
    let handshake_timeout = ms_up_to_an_hour(
        c,
        "limits.handshake_timeout_ms",
        l.handshake_timeout_ms,
        15_000,
    );
    let reconnect_initial = ms_up_to_an_hour(
        c,
        "limits.reconnect_initial_ms",
        l.reconnect_initial_ms,
        500,
    );
    let reconnect_max = ms_up_to_an_hour(c, "limits.reconnect_max_ms", l.reconnect_max_ms, 30_000);
    if reconnect_initial > reconnect_max {
        c.bad(
            "limits.reconnect_initial_ms",
            "must not exceed limits.reconnect_max_ms",
        );
    }
    let queue_depth_per_cid = match l.queue_depth_per_cid.unwrap_or(256) {
        0 => {
            c.bad("limits.queue_depth_per_cid", "must be at least 1");
            1
        }
        n if n > 65_536 => {
            c.bad("limits.queue_depth_per_cid", "must be at most 65536");
            n
        }
        n => n,
    };
    let queue_bytes_per_cid = match l
        .queue_bytes_per_cid
        .unwrap_or(nowconnect_shared::stream::V1_QUEUE_BYTES)
    {
        n if (1024..=64 << 20).contains(&n) => n,
        n => {
            c.bad(
                "limits.queue_bytes_per_cid",
                "must be between 1024 and 67108864 (64 MiB)",
            );
            n.clamp(1024, 64 << 20)
        }
    };
    let max_stream_window = stream_window(c, l.max_stream_window_bytes);
    AgentLimits {
        max_stream_window,
        connect_timeout,
        queue_depth_per_cid,
        queue_bytes_per_cid,
        handshake_timeout,
        reconnect_initial,
        reconnect_max,
        protocol: Limits::default(),
    }
}

/// `limits.max_stream_window_bytes`: within [`STREAM_WINDOW_RANGE`], default 4 MiB.
fn stream_window(c: &mut Collector, v: Option<u64>) -> u32 {
    let range = STREAM_WINDOW_RANGE;
    match v.map(u32::try_from) {
        None => DEFAULT_MAX_STREAM_WINDOW,
        Some(Ok(n)) if range.contains(&n) => n,
        Some(_) => {
            c.bad(
                "limits.max_stream_window_bytes (NC_MAX_STREAM_WINDOW_BYTES)",
                format!(
                    "must be between {} (the initial window: no growth) and {} (64 MiB)",
                    range.start(),
                    range.end()
                ),
            );
            DEFAULT_MAX_STREAM_WINDOW
        }
    }
}

/// `v` (or `default`) milliseconds, from 1 to an hour; out of range is reported and `default`
/// used.
fn ms_up_to_an_hour(c: &mut Collector, key: &str, v: Option<u64>, default: u64) -> Duration {
    match v.unwrap_or(default) {
        0 => {
            c.bad(key, "must be at least 1");
            Duration::from_millis(default)
        }
        m if m > 3_600_000 => {
            c.bad(key, "must be at most 3600000 (one hour)");
            Duration::from_millis(default)
        }
        m => Duration::from_millis(m),
    }
}
