//! Dialing the relay: TCP, then TLS (for `wss://`), then the WebSocket upgrade.
//!
//! Each hop is its own step so that the ones still to come (an HTTP CONNECT proxy between TCP
//! and TLS, client certificates) slot in without touching the tunnel logic. Errors name the hop
//! that failed in one line and never contain the token.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use nowconnect_shared::subprotocol::{self, Version};
use nowconnect_shared::Limits;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::config::{AgentConfig, ProtocolChoice};
use crate::url::RelayUrl;

/// The byte stream under the WebSocket: plain TCP (`ws://`, development) or TLS.
#[derive(Debug)]
pub enum TunnelIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The tunnel's WebSocket.
pub type WsStream = WebSocketStream<TunnelIo>;

/// Why one dial attempt failed. The variant names double as log/metric reasons.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot read token file {path}: {message}")]
    Token { path: PathBuf, message: String },
    #[error("DNS lookup of {host} failed: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("TCP connect to {addr} failed: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("TLS handshake with {host} failed: {source}")]
    Tls { host: String, source: io::Error },
    #[error("relay refused the WebSocket upgrade: HTTP {status}{reason}")]
    Refused { status: u16, reason: String },
    #[error("relay selected no WebSocket subprotocol")]
    NoSubprotocol,
    #[error("relay selected subprotocol `{0}`, which the agent did not offer")]
    Subprotocol(String),
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),
}

impl DialError {
    /// Short stable name of the cause.
    pub fn reason(&self) -> &'static str {
        match self {
            DialError::Token { .. } => "token",
            DialError::Resolve { .. } => "dns",
            DialError::Connect { .. } => "connect",
            DialError::Tls { .. } => "tls",
            DialError::Refused { .. } => "refused",
            DialError::NoSubprotocol | DialError::Subprotocol(_) => "subprotocol",
            DialError::Handshake(_) => "handshake",
        }
    }
}

/// A bearer token; never printed.
struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

/// Everything needed to open a tunnel; cheap to keep for the life of the agent.
#[derive(Clone)]
pub struct Dialer {
    url: RelayUrl,
    tls: Option<TlsConnector>,
    token_file: Option<PathBuf>,
    protocol: ProtocolChoice,
    ws_config: WebSocketConfig,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .field("token_file", &self.token_file)
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl Dialer {
    /// `tls` is required for `wss://` URLs (built once by [`crate::tls::client_config`]).
    pub fn new(cfg: &AgentConfig, tls: Option<Arc<rustls::ClientConfig>>) -> Dialer {
        let limits: &Limits = &cfg.limits.protocol;
        let max = limits.max_v1_text_len().max(limits.max_v2_frame_len());
        Dialer {
            url: cfg.url.clone(),
            tls: tls.map(TlsConnector::from),
            token_file: cfg.token_file.clone(),
            protocol: cfg.protocol,
            ws_config: WebSocketConfig::default()
                .max_message_size(Some(max))
                .max_frame_size(Some(max)),
        }
    }

    pub fn url(&self) -> &RelayUrl {
        &self.url
    }

    /// Opens the tunnel's WebSocket and returns it with the negotiated protocol version.
    ///
    /// A reference-system hub answers the upgrade without `Sec-WebSocket-Protocol` even though we
    /// offered some; tungstenite then fails the handshake as RFC 6455 asks. Such a hub speaks v1,
    /// so we dial once more offering nothing, which it accepts as v1 (unless v2 was forced).
    pub async fn connect(&self) -> Result<(WsStream, Version), DialError> {
        let token = match &self.token_file {
            Some(path) => Some(read_token(path).await?),
            None => None,
        };
        let offer = match self.protocol {
            ProtocolChoice::Auto => subprotocol::AGENT_OFFER,
            ProtocolChoice::V1 => subprotocol::V1,
            ProtocolChoice::V2 => subprotocol::V2,
        };
        match self.attempt(Some(offer), token.as_ref()).await {
            Err(DialError::NoSubprotocol) if self.protocol != ProtocolChoice::V2 => {
                tracing::info!(
                    relay = %self.url,
                    "relay selected no subprotocol (reference hub); dialing again for v1"
                );
                self.attempt(None, token.as_ref()).await
            }
            r => r,
        }
    }

    async fn attempt(
        &self,
        offer: Option<&'static str>,
        token: Option<&Token>,
    ) -> Result<(WsStream, Version), DialError> {
        let tcp = self.connect_tcp().await?;
        let io = self.wrap_tls(tcp).await?;
        let mut req = self
            .url
            .as_string()
            .into_client_request()
            .map_err(|e| DialError::Handshake(e.to_string()))?;
        if let Some(offer) = offer {
            req.headers_mut()
                .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(offer));
        }
        if let Some(Token(t)) = token {
            // Checked in read_token: only visible ASCII, so this cannot fail.
            let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                DialError::Handshake("token is not a valid header value".to_owned())
            })?;
            v.set_sensitive(true);
            req.headers_mut().insert(AUTHORIZATION, v);
        }
        let (ws, resp) = tokio_tungstenite::client_async_with_config(req, io, Some(self.ws_config))
            .await
            .map_err(map_ws_error)?;
        let selected = resp
            .headers()
            .get(SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok());
        let version = subprotocol::accept_selected(selected).map_err(DialError::Subprotocol)?;
        Ok((ws, version))
    }

    /// Resolves the relay host and connects to the first address that answers.
    async fn connect_tcp(&self) -> Result<TcpStream, DialError> {
        let host = self.url.host.as_str();
        let addrs: Vec<_> = tokio::net::lookup_host((host, self.url.port))
            .await
            .map_err(|source| DialError::Resolve {
                host: host.to_owned(),
                source,
            })?
            .collect();
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
                addr: addr.to_string(),
                source,
            },
            None => DialError::Resolve {
                host: host.to_owned(),
                source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
            },
        })
    }

    async fn wrap_tls(&self, tcp: TcpStream) -> Result<TunnelIo, DialError> {
        if !self.url.secure {
            return Ok(TunnelIo::Plain(tcp));
        }
        let tls_err = |source| DialError::Tls {
            host: self.url.host.clone(),
            source,
        };
        let connector = self
            .tls
            .as_ref()
            .ok_or_else(|| tls_err(io::Error::other("no TLS settings (internal error)")))?;
        let name = rustls::pki_types::ServerName::try_from(self.url.host.clone())
            .map_err(|e| tls_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let tls = connector.connect(name, tcp).await.map_err(tls_err)?;
        Ok(TunnelIo::Tls(Box::new(tls)))
    }
}

/// Reads the token file now (it may have been rotated since the last connect).
async fn read_token(path: &Path) -> Result<Token, DialError> {
    let err = |message: String| DialError::Token {
        path: path.to_owned(),
        message,
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| err(e.to_string()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(err("file is empty".into()));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err(
            "token contains spaces, control or non-ASCII characters".into(),
        ));
    }
    Ok(Token(t.to_owned()))
}

fn map_ws_error(e: WsError) -> DialError {
    match e {
        WsError::Http(resp) => {
            let body = resp.body().as_deref().unwrap_or_default();
            let text: String = String::from_utf8_lossy(body)
                .chars()
                .filter(|c| !c.is_control())
                .take(160)
                .collect();
            DialError::Refused {
                status: resp.status().as_u16(),
                reason: if text.trim().is_empty() {
                    String::new()
                } else {
                    format!(" ({})", text.trim())
                },
            }
        }
        WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::NoSubProtocol,
        )) => DialError::NoSubprotocol,
        WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::InvalidSubProtocol,
        )) => DialError::Subprotocol("(not offered)".to_owned()),
        other => DialError::Handshake(other.to_string()),
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
            TunnelIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            TunnelIo::Plain(s) => s.is_write_vectored(),
            TunnelIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::Plain(s) => Pin::new(s).poll_flush(cx),
            TunnelIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            TunnelIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_file_is_trimmed_and_masked() {
        let dir = std::env::temp_dir().join(format!("nc-agent-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join("token");
        std::fs::write(&p, "abc.def.ghi\n").expect("write");
        let t = read_token(&p).await.expect("token");
        assert_eq!(t.0, "abc.def.ghi");
        assert_eq!(format!("{t:?}"), "MASKED");
        std::fs::write(&p, "  \n").expect("write");
        assert!(read_token(&p).await.is_err());
        std::fs::write(&p, "secret with space").expect("write");
        let e = read_token(&p).await.expect_err("bad token").to_string();
        assert!(
            !e.contains("secret"),
            "token text must not appear in errors: {e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
