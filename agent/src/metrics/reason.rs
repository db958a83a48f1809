//! The `reason` label of `nowconnect_agent_reconnects_total`.

/// Why the agent dialed the relay again: the `reason` label of
/// `nowconnect_agent_reconnects_total`. A small fixed set (the tunnel maps its finer log
/// reasons onto it), so the series count never grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectReason {
    /// DNS, TCP connect, the HTTP proxy, or the WebSocket handshake failed.
    ConnectFailed,
    /// TLS to the relay or the proxy failed (trust, hostname, client certificate).
    Tls,
    /// The token file could not be read, or its token has expired.
    Token,
    /// The relay answered the upgrade with 401 or 403.
    AuthRefused,
    /// The relay refused the upgrade otherwise (another status, no usable subprotocol).
    Refused,
    /// The dial or the HELLO_ACK did not arrive in time.
    Timeout,
    /// The relay closed the tunnel (a WebSocket Close: shutdown, replaced, policy).
    ClosedByRelay,
    /// No pong or frame from the relay within the keepalive timeout.
    PingTimeout,
    /// The relay sent something the protocol forbids.
    Protocol,
    /// The connection broke (reset, EOF without Close, a failed write).
    Error,
}

impl ReconnectReason {
    /// Every reason, in the order the page lists them.
    pub const ALL: [ReconnectReason; 10] = [
        ReconnectReason::ConnectFailed,
        ReconnectReason::Tls,
        ReconnectReason::Token,
        ReconnectReason::AuthRefused,
        ReconnectReason::Refused,
        ReconnectReason::Timeout,
        ReconnectReason::ClosedByRelay,
        ReconnectReason::PingTimeout,
        ReconnectReason::Protocol,
        ReconnectReason::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReconnectReason::ConnectFailed => "connect_failed",
            ReconnectReason::Tls => "tls",
            ReconnectReason::Token => "token",
            ReconnectReason::AuthRefused => "auth_refused",
            ReconnectReason::Refused => "refused",
            ReconnectReason::Timeout => "timeout",
            ReconnectReason::ClosedByRelay => "closed_by_relay",
            ReconnectReason::PingTimeout => "ping_timeout",
            ReconnectReason::Protocol => "protocol",
            ReconnectReason::Error => "error",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}
