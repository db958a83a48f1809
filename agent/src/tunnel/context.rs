//! What the tunnel supervisor and its sessions hand each other: the agent-wide [`Shared`]
//! context, the tunnel [`Slot`] a session belongs to, why a session ended ([`End`]), and its
//! READY report.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use tokio::task::Id as TaskId;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::health::HealthState;
use crate::metrics::{AgentMetrics, ReconnectReason};
use crate::notify::Notifier;
use crate::token::Token;
use crate::transport::{DialError, Dialer};

/// How long a graceful stop waits for the Close frame to go out.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// A retired tunnel may keep its streams at least this long, even if its token has expired.
pub(super) const MIN_DRAIN: Duration = Duration::from_secs(5);
/// What the supervisors and their sessions share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The running configuration: replaced by a reload (only its target table changes, see
    /// [`crate::reload`]); each supervisor watches it for a changed exported set.
    pub config: watch::Sender<Arc<AgentConfig>>,
    pub health: HealthState,
    /// Counters for the metrics endpoint (bumped whether or not it is enabled: a few atomics).
    pub metrics: AgentMetrics,
    /// systemd notifications (no-op without NOTIFY_SOCKET); sent by slot 0's supervisor only.
    pub notify: Notifier,
    /// Bumped by the stream tasks whenever a target goes down or up; each session watches it
    /// to report target health to its relay.
    pub targets_changed: Arc<watch::Sender<u64>>,
}

impl Shared {
    pub fn new(
        cfg: AgentConfig,
        health: HealthState,
        metrics: AgentMetrics,
        notify: Notifier,
    ) -> Shared {
        Shared {
            config: watch::Sender::new(Arc::new(cfg)),
            health,
            metrics,
            notify,
            targets_changed: Arc::new(watch::Sender::new(0)),
        }
    }

    /// The running configuration now (a session keeps the one it announced in HELLO; a new
    /// stream looks its target up in the current one).
    pub fn cfg(&self) -> Arc<AgentConfig> {
        self.config.borrow().clone()
    }
}

/// One of the `tunnel.connections` tunnels the agent keeps: its own supervisor, backoff and
/// relay (the dialer's claim in the list).
#[derive(Debug)]
pub(crate) struct Slot {
    /// 0-based; slot 0 speaks to systemd.
    pub index: usize,
    pub dialer: Dialer,
}

/// Why a session ended.
#[derive(Debug)]
pub(crate) enum End {
    Shutdown,
    Dial(DialError),
    /// The dial did not finish in time; says at which step.
    HandshakeTimeout(String),
    HelloTimeout,
    RelayClosed {
        code: u16,
        reason: String,
    },
    Broken(String),
    KeepaliveTimeout,
    Protocol(String),
    /// Replaced by a newer tunnel (token refresh) and drained.
    Retired,
}

impl End {
    /// Short stable name of the cause.
    pub fn reason(&self) -> &'static str {
        match self {
            End::Shutdown => "shutdown",
            End::Dial(e) => e.reason(),
            End::HandshakeTimeout(_) => "timeout",
            End::HelloTimeout => "hello_timeout",
            End::RelayClosed { .. } => "relay_closed",
            End::Broken(_) => "broken",
            End::KeepaliveTimeout => "keepalive",
            End::Protocol(_) => "protocol",
            End::Retired => "retired",
        }
    }
}

impl End {
    /// The `reason` label of `nowconnect_agent_reconnects_total` when this end is followed by
    /// another dial; `None` for a shutdown or a retired tunnel (nothing is redialled).
    pub fn reconnect_reason(&self) -> Option<ReconnectReason> {
        Some(match self {
            End::Shutdown | End::Retired => return None,
            End::Dial(e) => match e {
                DialError::Token(_) => ReconnectReason::Token,
                DialError::Resolve { .. }
                | DialError::Connect { .. }
                | DialError::Proxy(_)
                | DialError::Handshake(_) => ReconnectReason::ConnectFailed,
                DialError::TlsUntrusted { .. }
                | DialError::TlsName { .. }
                | DialError::ClientCert { .. }
                | DialError::Tls { .. } => ReconnectReason::Tls,
                DialError::Refused {
                    status: 401 | 403, ..
                } => ReconnectReason::AuthRefused,
                DialError::Refused { .. }
                | DialError::NoSubprotocol
                | DialError::Subprotocol(_) => ReconnectReason::Refused,
            },
            End::HandshakeTimeout(_) | End::HelloTimeout => ReconnectReason::Timeout,
            End::RelayClosed { .. } => ReconnectReason::ClosedByRelay,
            End::KeepaliveTimeout => ReconnectReason::PingTimeout,
            End::Protocol(_) => ReconnectReason::Protocol,
            End::Broken(_) => ReconnectReason::Error,
        })
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Shutdown => f.write_str("agent shutting down"),
            End::Dial(e) => write!(f, "{e}"),
            End::HandshakeTimeout(what) => write!(f, "timed out {what}"),
            End::HelloTimeout => f.write_str("relay did not acknowledge HELLO in time"),
            End::RelayClosed { code, reason } if reason.is_empty() => {
                write!(f, "relay closed the tunnel (code {code})")
            }
            End::RelayClosed { code, reason } => {
                write!(f, "relay closed the tunnel (code {code}: {reason})")
            }
            End::Broken(e) => write!(f, "tunnel broken: {e}"),
            End::KeepaliveTimeout => f.write_str("no pong or frame from the relay in time"),
            End::Protocol(e) => write!(f, "protocol error from the relay: {e}"),
            End::Retired => f.write_str("replaced by a newer tunnel"),
        }
    }
}

/// A session's HELLO_ACK, reported to the supervisor.
#[derive(Debug)]
pub(super) struct Ready {
    pub id: TaskId,
    pub token: Option<Token>,
}

/// What a session task returns: why it ended and how long it was READY.
pub(super) type SessionResult = (End, Option<Duration>);

impl End {
    pub fn is_shutdown_or(&self, cancel: &CancellationToken) -> bool {
        matches!(self, End::Shutdown) || cancel.is_cancelled()
    }

    /// The relay closed with 1001 Going Away: it is shutting down (or dropped the tunnel on
    /// its side); another relay, or the same one restarted, can take the agent at once.
    pub fn is_going_away(&self) -> bool {
        matches!(self, End::RelayClosed { code: 1001, .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_reasons_follow_the_cause() {
        let refused = |status| {
            End::Dial(DialError::Refused {
                status,
                reason: String::new(),
            })
        };
        let cases = [
            (refused(401), Some(ReconnectReason::AuthRefused)),
            (refused(403), Some(ReconnectReason::AuthRefused)),
            (refused(503), Some(ReconnectReason::Refused)),
            (
                End::Dial(DialError::Handshake("eof".into())),
                Some(ReconnectReason::ConnectFailed),
            ),
            (
                End::Dial(DialError::ClientCert {
                    host: "r".into(),
                    message: "m".into(),
                }),
                Some(ReconnectReason::Tls),
            ),
            (End::HelloTimeout, Some(ReconnectReason::Timeout)),
            (
                End::RelayClosed {
                    code: 1001,
                    reason: String::new(),
                },
                Some(ReconnectReason::ClosedByRelay),
            ),
            (End::KeepaliveTimeout, Some(ReconnectReason::PingTimeout)),
            (End::Broken("reset".into()), Some(ReconnectReason::Error)),
            (End::Retired, None),
            (End::Shutdown, None),
        ];
        for (end, want) in cases {
            assert_eq!(end.reconnect_reason(), want, "{end}");
        }
    }
}
