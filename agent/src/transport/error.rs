//! How a dial fails and how far it got: the hop ([`Hop`]), the one-line error ([`DialError`]),
//! and the step in flight ([`Progress`]) a timeout names.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::proxy::ProxyError;
use crate::token::TokenError;

/// Which machine a step talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    Relay,
    Proxy,
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hop::Relay => "relay",
            Hop::Proxy => "proxy",
        })
    }
}

/// Why one dial attempt failed. The variant names double as log/metric reasons.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("DNS lookup of {hop} host {host} failed: {source}")]
    Resolve {
        hop: Hop,
        host: String,
        source: io::Error,
    },
    #[error("TCP connect to {hop} {addr} failed: {source}")]
    Connect {
        hop: Hop,
        addr: String,
        source: io::Error,
    },
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("TLS to {hop} {host}: certificate not trusted: issued by `{issuer}`, which is not a trusted root{hint}")]
    TlsUntrusted {
        hop: Hop,
        host: String,
        issuer: String,
        hint: &'static str,
    },
    #[error("TLS to {hop} {host}: hostname mismatch: the certificate is for {presented}")]
    TlsName {
        hop: Hop,
        host: String,
        presented: String,
    },
    #[error("TLS to relay {host}: {message}")]
    ClientCert { host: String, message: String },
    #[error("TLS to {hop} {host} failed: {message}")]
    Tls {
        hop: Hop,
        host: String,
        message: String,
    },
    #[error("relay refused the WebSocket upgrade: HTTP {status}{reason}")]
    Refused { status: u16, reason: String },
    #[error("relay accepted the upgrade without a WebSocket subprotocol; tunnel.protocol v2 allows no fallback to v1")]
    NoSubprotocol,
    #[error("WebSocket subprotocol refused: the relay selected {}, which the agent did not offer", .0.as_deref().map(|s| format!("`{s}`")).unwrap_or_else(|| "another one".into()))]
    Subprotocol(Option<String>),
    #[error("WebSocket handshake with the relay failed: {0}")]
    Handshake(String),
}

impl DialError {
    /// Short stable name of the cause.
    pub fn reason(&self) -> &'static str {
        match self {
            DialError::Token(TokenError::Expired { .. }) => "token_expired",
            DialError::Token(_) => "token",
            DialError::Resolve { .. } => "dns",
            DialError::Connect { .. } => "connect",
            DialError::Proxy(e) => e.reason(),
            DialError::TlsUntrusted { .. } => "tls_untrusted",
            DialError::TlsName { .. } => "tls_hostname",
            DialError::ClientCert { .. } => "tls_client_cert",
            DialError::Tls { .. } => "tls",
            DialError::Refused {
                status: 400,
                reason,
            } if reason.contains("subprotocol") => "subprotocol",
            DialError::Refused { status: 401, .. } => "unauthorized",
            DialError::Refused { status: 403, .. } => "forbidden",
            DialError::Refused { .. } => "refused",
            DialError::NoSubprotocol | DialError::Subprotocol(_) => "subprotocol",
            DialError::Handshake(_) => "handshake",
        }
    }
}

/// The step of a dial in flight (for timeout messages).
#[derive(Debug, Default)]
pub struct Progress(AtomicU8);

/// Steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Token = 0,
    Dns = 1,
    Tcp = 2,
    ProxyDns = 3,
    ProxyTcp = 4,
    ProxyTls = 5,
    ProxyConnect = 6,
    RelayTls = 7,
    Upgrade = 8,
    Hello = 9,
}

impl Progress {
    pub fn set(&self, step: Step) {
        self.0.store(step as u8, Ordering::Relaxed);
    }

    pub fn get(&self) -> Step {
        match self.0.load(Ordering::Relaxed) {
            0 => Step::Token,
            1 => Step::Dns,
            2 => Step::Tcp,
            3 => Step::ProxyDns,
            4 => Step::ProxyTcp,
            5 => Step::ProxyTls,
            6 => Step::ProxyConnect,
            7 => Step::RelayTls,
            8 => Step::Upgrade,
            _ => Step::Hello,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips() {
        let p = Progress::default();
        for s in [
            Step::Token,
            Step::Dns,
            Step::Tcp,
            Step::ProxyDns,
            Step::ProxyTcp,
            Step::ProxyTls,
            Step::ProxyConnect,
            Step::RelayTls,
            Step::Upgrade,
            Step::Hello,
        ] {
            p.set(s);
            assert_eq!(p.get(), s);
        }
    }
}
