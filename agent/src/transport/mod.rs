//! Dialing the relay, hop by hop: TCP (to the relay, or to an HTTP proxy), TLS to an `https://`
//! proxy, `CONNECT` through the proxy, TLS to the relay (for `wss://`; SNI and certificate
//! checks for the relay's name, never the proxy's), then the WebSocket upgrade with the token.
//!
//! Every error is one line naming the hop that failed, and none contains the token or the
//! proxy password. [`Progress`] records the step in flight so a timeout can say where it hung.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nowconnect_shared::subprotocol::{self, Version};
use nowconnect_shared::Limits;
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, ClientConfig};
use tokio::io::BufReader;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::config::{AgentConfig, ProtocolChoice};
use crate::no_proxy::NoProxy;
use crate::proxy::{self, ProxyUrl};
use crate::tls::{ClientConfigs, Untrusted};
use crate::token::{self, Token};
use crate::url::RelayUrl;

mod error;
mod stream;

pub use error::{DialError, Hop, Progress, Step};
use stream::connect_tcp;
pub use stream::TunnelIo;

/// Read buffer between a TCP socket and the TLS layer on top of it.
const TLS_READ_BUFFER: usize = 64 * 1024;
/// Most bytes tungstenite asks for in one read. It zero-fills that much before every read (its
/// default is 128 KiB, even for a 9-byte WINDOW frame), and tokio-rustls hands over at most one
/// TLS record, 16 KiB of plaintext, per read.
const WS_READ_BUFFER: usize = 16 * 1024;

/// The tunnel's WebSocket.
pub type WsStream = WebSocketStream<TunnelIo>;

/// A successful dial.
#[derive(Debug)]
pub struct Dialed {
    pub ws: WsStream,
    pub version: Version,
    /// The token sent (to know when it expires and whether the file changed since).
    pub token: Option<Token>,
}

/// Which relay of the list each tunnel slot (`tunnel.connections`) dials, shared by the slots'
/// dialers, so a slot that moves on skips the relays the other slots use.
#[derive(Debug)]
struct Claims(Vec<AtomicUsize>);

/// Everything needed to open a tunnel; cheap to keep for the life of the agent. One per tunnel
/// slot ([`Dialer::slot`]); they share the relay claims.
#[derive(Clone)]
pub struct Dialer {
    /// The relays of one service, tried in turn; `claims` says which one each slot dials next.
    urls: Vec<RelayUrl>,
    /// This dialer's slot in `claims`.
    slot: usize,
    claims: Arc<Claims>,
    tls: Option<ClientConfigs>,
    proxy: Option<ProxyUrl>,
    no_proxy: NoProxy,
    token_file: Option<PathBuf>,
    protocol: ProtocolChoice,
    ws_config: WebSocketConfig,
    /// Wording of certificate errors: what the operator can change.
    ca_bundle_only: bool,
    client_cert: bool,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer")
            .field("urls", &self.urls)
            .field("slot", &self.slot)
            .field("tls", &self.tls.is_some())
            .field("proxy", &self.proxy)
            .field("token_file", &self.token_file)
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl Dialer {
    /// `tls` is required for a `wss://` relay or an `https://` proxy (built once by
    /// [`crate::tls::client_configs`]). The dialer of slot 0; slot `i` of
    /// `tunnel.connections` starts at relay `i` of the list.
    pub fn new(cfg: &AgentConfig, tls: Option<ClientConfigs>) -> Dialer {
        let limits: &Limits = &cfg.limits.protocol;
        let max = limits.max_v1_text_len().max(limits.max_v2_frame_len());
        let slots = cfg.connections.max(1);
        Dialer {
            // Never empty: `url` stands in for a config built without the list.
            urls: if cfg.urls.is_empty() {
                vec![cfg.url.clone()]
            } else {
                cfg.urls.clone()
            },
            slot: 0,
            claims: Arc::new(Claims((0..slots).map(AtomicUsize::new).collect())),
            tls,
            proxy: cfg.proxy.clone(),
            no_proxy: cfg.no_proxy.clone(),
            token_file: cfg.token_file.clone(),
            protocol: cfg.protocol,
            ws_config: WebSocketConfig::default()
                .read_buffer_size(WS_READ_BUFFER)
                .max_message_size(Some(max))
                .max_frame_size(Some(max)),
            ca_bundle_only: cfg.tls.ca_bundle_only,
            client_cert: cfg.tls.client_cert.is_some(),
        }
    }

    /// The dialer of tunnel slot `slot` (`0..tunnel.connections`), sharing this one's claims.
    pub fn slot(&self, slot: usize) -> Dialer {
        Dialer {
            slot: slot.min(self.claims.0.len().saturating_sub(1)),
            ..self.clone()
        }
    }

    /// The index in the relay list this slot dials next.
    fn claimed(&self, slot: usize) -> usize {
        self.claims
            .0
            .get(slot)
            .map_or(0, |c| c.load(Ordering::Relaxed))
            % self.urls.len()
    }

    /// The relay the next dial goes to.
    pub fn url(&self) -> &RelayUrl {
        // `urls` is never empty (see `new`), and `claimed` is taken modulo its length.
        &self.urls[self.claimed(self.slot)]
    }

    /// A dial failed or the relay is going away: the next dial goes to the next relay of the
    /// list that no other slot uses (no-op with one relay; the same relay again when every
    /// other one is taken).
    pub fn next_relay(&self) {
        let n = self.urls.len();
        let Some(mine) = self.claims.0.get(self.slot) else {
            return;
        };
        let current = self.claimed(self.slot);
        for step in 1..n {
            let candidate = (current + step) % n;
            let taken = (0..self.claims.0.len())
                .any(|other| other != self.slot && self.claimed(other) == candidate);
            if !taken {
                mine.store(candidate, Ordering::Relaxed);
                return;
            }
        }
    }

    pub fn token_file(&self) -> Option<&std::path::Path> {
        self.token_file.as_deref()
    }

    /// The proxy used for the relay, unless none is set or `no_proxy` matches the relay.
    pub fn route(&self) -> Option<&ProxyUrl> {
        self.proxy
            .as_ref()
            .filter(|_| !self.no_proxy.matches(&self.url().host, self.url().port))
    }

    /// What a dial stuck at `step` was doing, for a timeout line.
    pub fn describe(&self, step: Step) -> String {
        let relay = self.url().authority();
        let route = self.route();
        let proxy = route
            .map(ProxyUrl::authority)
            .unwrap_or_else(|| "(none)".into());
        let proxy_host = route.map(|p| p.host.as_str()).unwrap_or("(none)");
        match step {
            Step::Token => "reading the token file".into(),
            Step::Dns => format!("resolving relay host {}", self.url().host),
            Step::Tcp => format!("connecting to relay {relay}"),
            Step::ProxyDns => format!("resolving proxy host {proxy_host}"),
            Step::ProxyTcp => format!("connecting to proxy {proxy}"),
            Step::ProxyTls => format!("in the TLS handshake with proxy {proxy}"),
            Step::ProxyConnect => format!("waiting for proxy {proxy} to answer CONNECT {relay}"),
            Step::RelayTls => format!("in the TLS handshake with relay {relay}"),
            Step::Upgrade => format!("waiting for relay {relay} to answer the WebSocket upgrade"),
            Step::Hello => format!("waiting for relay {relay} to acknowledge HELLO"),
        }
    }

    /// Opens the tunnel's WebSocket and returns it with the negotiated protocol version.
    ///
    /// A reference-system hub answers the upgrade without `Sec-WebSocket-Protocol` even though we
    /// offered some; tungstenite then fails the handshake as RFC 6455 asks. Such a hub speaks v1,
    /// so we dial once more offering nothing, which it accepts as v1 (unless v2 was forced).
    pub async fn connect(&self, progress: &Progress) -> Result<Dialed, DialError> {
        progress.set(Step::Token);
        let token = match &self.token_file {
            Some(path) => Some(token::read(path).await?),
            None => None,
        };
        let offer = match self.protocol {
            ProtocolChoice::Auto => subprotocol::AGENT_OFFER,
            ProtocolChoice::V1 => subprotocol::V1,
            ProtocolChoice::V2 => subprotocol::V2,
        };
        let (ws, version) = match self.attempt(Some(offer), token.as_ref(), progress).await {
            Err(DialError::NoSubprotocol) if self.protocol != ProtocolChoice::V2 => {
                tracing::info!(
                    relay = %self.url(),
                    "relay selected no subprotocol (reference hub); dialing again for v1"
                );
                self.attempt(None, token.as_ref(), progress).await?
            }
            r => r?,
        };
        Ok(Dialed { ws, version, token })
    }

    async fn attempt(
        &self,
        offer: Option<&'static str>,
        token: Option<&Token>,
        progress: &Progress,
    ) -> Result<(WsStream, Version), DialError> {
        let io = self.open(progress).await?;
        progress.set(Step::Upgrade);
        let mut req = self
            .url()
            .as_string()
            .into_client_request()
            .map_err(|e| DialError::Handshake(e.to_string()))?;
        if let Some(offer) = offer {
            req.headers_mut()
                .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(offer));
        }
        if let Some(t) = token {
            // Token::parse admits only visible ASCII, so this cannot fail; the error (if it
            // ever did) does not include the value.
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.secret())).map_err(|_| {
                DialError::Handshake("token is not a valid header value".to_owned())
            })?;
            v.set_sensitive(true);
            req.headers_mut().insert(AUTHORIZATION, v);
        }
        let (ws, resp) = tokio_tungstenite::client_async_with_config(req, io, Some(self.ws_config))
            .await
            .map_err(|e| self.map_ws_error(e))?;
        let selected = resp
            .headers()
            .get(SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok());
        let version =
            subprotocol::accept_selected(selected).map_err(|s| DialError::Subprotocol(Some(s)))?;
        Ok((ws, version))
    }

    /// The byte stream to the relay: direct or through the proxy, then TLS for `wss://`.
    async fn open(&self, progress: &Progress) -> Result<TunnelIo, DialError> {
        let io = match self.route() {
            None => {
                progress.set(Step::Dns);
                let tcp =
                    connect_tcp(Hop::Relay, &self.url().host, self.url().port, progress).await?;
                TunnelIo::Plain(tcp)
            }
            Some(p) => {
                progress.set(Step::ProxyDns);
                let tcp = connect_tcp(Hop::Proxy, &p.host, p.port, progress).await?;
                let mut io = TunnelIo::Plain(tcp);
                if p.secure {
                    progress.set(Step::ProxyTls);
                    io = self.tls(Hop::Proxy, &p.host, io).await?;
                }
                progress.set(Step::ProxyConnect);
                proxy::connect(&mut io, p, &self.url().authority()).await?;
                tracing::debug!(proxy = %p, relay = %self.url().authority(), "proxy tunnel open");
                io
            }
        };
        if !self.url().secure {
            return Ok(io);
        }
        progress.set(Step::RelayTls);
        self.tls(Hop::Relay, &self.url().host, io).await
    }

    /// TLS handshake with `host` (SNI and certificate name) over `io`.
    async fn tls(&self, hop: Hop, host: &str, io: TunnelIo) -> Result<TunnelIo, DialError> {
        let config = self.tls.as_ref().map(|t| match hop {
            Hop::Relay => t.relay.clone(),
            Hop::Proxy => t.proxy.clone(),
        });
        let config: Arc<ClientConfig> = config.ok_or_else(|| DialError::Tls {
            hop,
            host: host.to_owned(),
            message: "no TLS settings (internal error)".into(),
        })?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| DialError::Tls {
            hop,
            host: host.to_owned(),
            message: e.to_string(),
        })?;
        let io = match io {
            TunnelIo::Plain(tcp) => {
                TunnelIo::Buffered(BufReader::with_capacity(TLS_READ_BUFFER, tcp))
            }
            other => other,
        };
        let tls = TlsConnector::from(config)
            .connect(name, io)
            .await
            .map_err(|e| self.tls_error(hop, host, &e))?;
        Ok(TunnelIo::Tls(Box::new(tls)))
    }

    /// Words a TLS failure: untrusted issuer, wrong name, client certificate, or rustls' text.
    fn tls_error(&self, hop: Hop, host: &str, e: &io::Error) -> DialError {
        let host = host.to_owned();
        let Some(err) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return DialError::Tls {
                hop,
                host,
                message: e.to_string(),
            };
        };
        match err {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                if let Some(u) = other.0.downcast_ref::<Untrusted>() {
                    return DialError::TlsUntrusted {
                        hop,
                        host,
                        issuer: u.issuer.clone(),
                        hint: if self.ca_bundle_only {
                            " (only proxy.ca_bundle is trusted: proxy.ca_bundle_only is set)"
                        } else {
                            "; add its CA certificate to proxy.ca_bundle (NC_CA_BUNDLE)"
                        },
                    };
                }
            }
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                presented,
                ..
            }) => {
                let presented = if presented.is_empty() {
                    "no names".to_owned()
                } else {
                    presented
                        .iter()
                        .take(8)
                        .map(|n| pretty_name(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return DialError::TlsName {
                    hop,
                    host,
                    presented,
                };
            }
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
                return DialError::TlsName {
                    hop,
                    host,
                    presented: "other names".into(),
                };
            }
            rustls::Error::AlertReceived(alert) if hop == Hop::Relay => {
                if let Some(message) = client_cert_alert(*alert, self.client_cert) {
                    return DialError::ClientCert { host, message };
                }
            }
            _ => {}
        }
        DialError::Tls {
            hop,
            host,
            message: err.to_string(),
        }
    }

    fn map_ws_error(&self, e: WsError) -> DialError {
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
            )) => DialError::Subprotocol(None),
            // With TLS 1.3 the relay judges our client certificate after our side of the
            // handshake is done: its verdict arrives as an alert on the first read.
            WsError::Io(io) if self.url().secure && is_rustls(&io) => {
                self.tls_error(Hop::Relay, &self.url().host, &io)
            }
            other => DialError::Handshake(other.to_string()),
        }
    }
}

/// webpki lists presented names as `DnsName("a.example")` / `IpAddress(10.0.0.1)`; show the
/// names themselves.
fn pretty_name(n: &str) -> String {
    let inner = n
        .strip_prefix("DnsName(\"")
        .and_then(|r| r.strip_suffix("\")"))
        .or_else(|| {
            n.strip_prefix("IpAddress(")
                .and_then(|r| r.strip_suffix(')'))
        })
        .unwrap_or(n);
    inner
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect()
}

fn is_rustls(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// An alert from the relay that is about our client certificate, worded for the operator.
fn client_cert_alert(alert: AlertDescription, have_cert: bool) -> Option<String> {
    use AlertDescription as A;
    let about_cert = matches!(
        alert,
        A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::AccessDenied
            | A::HandshakeFailure
    );
    if !about_cert {
        return None;
    }
    Some(if have_cert {
        format!("the relay refused our client certificate (TLS alert {alert:?})")
    } else {
        format!(
            "the relay requires a client certificate (TLS alert {alert:?}); set \
             tunnel.auth.client_cert_file and client_key_file (NC_CLIENT_CERT, NC_CLIENT_KEY)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_cert_alerts_are_worded_for_the_operator() {
        let m =
            client_cert_alert(AlertDescription::CertificateRequired, false).expect("about certs");
        assert!(
            m.contains("requires a client certificate") && m.contains("client_cert_file"),
            "{m}"
        );
        let m = client_cert_alert(AlertDescription::UnknownCA, true).expect("about certs");
        assert!(m.contains("refused our client certificate"), "{m}");
        assert!(client_cert_alert(AlertDescription::ProtocolVersion, true).is_none());
    }

    #[test]
    fn presented_names_are_shown_plainly() {
        assert_eq!(
            pretty_name("DnsName(\"relay.example.com\")"),
            "relay.example.com"
        );
        assert_eq!(pretty_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(pretty_name("DirectoryName"), "DirectoryName");
    }
}
