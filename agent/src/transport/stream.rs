//! The byte stream under the tunnel's WebSocket ([`TunnelIo`]: TCP, TCP read through a buffer
//! for TLS, or TLS over either), and the TCP dial of one hop.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;

use super::error::{DialError, Hop, Progress, Step};
use crate::proxy;

/// The byte stream under the WebSocket: TCP, or TLS over a stream (TLS to the relay, possibly
/// inside TLS to an `https://` proxy).
#[derive(Debug)]
pub enum TunnelIo {
    Plain(TcpStream),
    /// TCP under TLS. rustls reads at most 4 KiB per call; the buffer turns a 64 KiB burst into
    /// one `recvfrom` instead of sixteen.
    Buffered(BufReader<TcpStream>),
    Tls(Box<tokio_rustls::client::TlsStream<TunnelIo>>),
}

/// Resolves `host` and connects to the first address that answers.
pub(super) async fn connect_tcp(
    hop: Hop,
    host: &str,
    port: u16,
    progress: &Progress,
) -> Result<TcpStream, DialError> {
    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| DialError::Resolve {
            hop,
            host: host.to_owned(),
            source,
        })?
        .collect();
    progress.set(match hop {
        Hop::Relay => Step::Tcp,
        Hop::Proxy => Step::ProxyTcp,
    });
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                // Small frames (LDAP, TLS records inside) must not wait for delayed ACKs.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    Err(match last {
        Some((addr, source)) => DialError::Connect {
            hop,
            addr: if addr.ip().to_string() == host {
                addr.to_string()
            } else {
                format!("{} ({addr})", proxy::authority(host, port))
            },
            source,
        },
        None => DialError::Resolve {
            hop,
            host: host.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        },
    })
}

impl TunnelIo {
    /// The TLS version and cipher suite of the hop to the relay (`None` for `ws://`).
    pub fn relay_tls(&self) -> Option<String> {
        let TunnelIo::Tls(t) = self else {
            return None;
        };
        let c = t.get_ref().1;
        let version = c.protocol_version().map(|v| format!("{v:?}"))?;
        let suite = c
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))?;
        Some(format!("{version} {suite}"))
    }
}

impl AsyncRead for TunnelIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            TunnelIo::Buffered(s) => Pin::new(s).poll_read(cx, buf),
            TunnelIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TunnelIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            TunnelIo::Buffered(s) => Pin::new(s).poll_write(cx, buf),
            TunnelIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TunnelIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            TunnelIo::Buffered(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            TunnelIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            TunnelIo::Plain(s) => s.is_write_vectored(),
            TunnelIo::Buffered(s) => s.get_ref().is_write_vectored(),
            TunnelIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::Plain(s) => Pin::new(s).poll_flush(cx),
            TunnelIo::Buffered(s) => Pin::new(s).poll_flush(cx),
            TunnelIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            TunnelIo::Buffered(s) => Pin::new(s).poll_shutdown(cx),
            TunnelIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
