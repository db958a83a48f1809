//! Reading a TLS client's server name (SNI) off its socket without taking a byte from it.
//!
//! Owns only the peek: the ClientHello is looked at with `MSG_PEEK`, so every byte stays in the
//! kernel's receive queue and the stream later reads it like any other client byte (same
//! credit, same buffer budget, same byte counters); nothing is decrypted and nothing is kept.
//! The parser is [`nowconnect_shared::sni`]; what the name routes to is the listener's.
//!
//! Bounds: at most [`MAX_PEEK_BYTES`] are ever looked at (the buffer grows only as far as the
//! parser asks), and the whole ClientHello must be in by `deadline` (fixed at accept: a client
//! that dribbles a byte at a time does not push it back). A prefix that can not be a
//! ClientHello is refused as soon as its first bytes say so.

use std::io;

use nowconnect_shared::sni::{parse_client_hello, ClientHello, Invalid, MAX_PEEK_BYTES};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The first peek looks at this much (most ClientHellos fit; a bigger one grows the buffer).
const FIRST_PEEK: usize = 2048;

/// Why no server name was read. The variant's [`PeekError::reason`] is the metric label.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeekError {
    #[error("no complete ClientHello within the deadline")]
    Timeout,
    #[error("the client closed before its ClientHello was complete")]
    Closed,
    #[error("not an acceptable TLS ClientHello: {0}")]
    Invalid(Invalid),
    #[error("socket error while peeking: {0}")]
    Io(io::Error),
}

impl PeekError {
    /// The `reason` of `nowconnect_sni_rejected_total` and of the audit record.
    pub fn reason(&self) -> &'static str {
        match self {
            PeekError::Timeout => "timeout",
            PeekError::Invalid(_) => "invalid",
            PeekError::Closed | PeekError::Io(_) => "closed",
        }
    }
}

/// One look at the receive queue.
enum Look {
    /// The buffer is full and the parser wants more: look again with this many bytes.
    Grow(usize),
    /// The client shut its side down.
    Eof,
    Done(ClientHello),
}

/// The server name of the ClientHello at the head of `sock`'s receive queue (`None`: a
/// ClientHello without one), leaving the queue as it was.
pub(crate) async fn peek_server_name(
    sock: &TcpStream,
    deadline: Instant,
) -> Result<Option<String>, PeekError> {
    // A second handle on the same socket for the synchronous peek inside `try_io` (which is
    // what lets the readiness be cleared exactly when nothing new arrived).
    let dup: std::net::TcpStream = socket2::SockRef::from(sock)
        .try_clone()
        .map_err(PeekError::Io)?
        .into();
    let mut buf = vec![0u8; FIRST_PEEK];
    loop {
        let ready = match tokio::time::timeout_at(deadline, sock.ready(Interest::READABLE)).await {
            Err(_) => return Err(PeekError::Timeout),
            Ok(Err(e)) => return Err(PeekError::Io(e)),
            Ok(Ok(r)) => r,
        };
        let look = sock.try_io(Interest::READABLE, || {
            let n = dup.peek(&mut buf)?;
            if n == 0 {
                return Ok(Look::Eof);
            }
            match parse_client_hello(&buf[..n]) {
                ClientHello::NeedMore(need) if n == buf.len() => Ok(Look::Grow(need)),
                // Tells tokio that this readiness is used up: the next `ready` waits for
                // new bytes (or a close) instead of returning at once.
                ClientHello::NeedMore(_) => Err(io::ErrorKind::WouldBlock.into()),
                done => Ok(Look::Done(done)),
            }
        });
        match look {
            Ok(Look::Done(ClientHello::Sni(name))) => return Ok(Some(name)),
            Ok(Look::Done(ClientHello::NoSni)) => return Ok(None),
            Ok(Look::Done(ClientHello::Invalid(why))) => return Err(PeekError::Invalid(why)),
            Ok(Look::Done(ClientHello::NeedMore(_))) => {}
            Ok(Look::Grow(need)) => buf.resize(need.max(buf.len() * 2).min(MAX_PEEK_BYTES), 0),
            Ok(Look::Eof) => return Err(PeekError::Closed),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ready.is_read_closed() {
                    // Half a ClientHello and then EOF: nothing more will come.
                    return Err(PeekError::Closed);
                }
            }
            Err(e) => return Err(PeekError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests;
