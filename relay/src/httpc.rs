//! A small HTTP/1.1 client for the IdP's JWKS and the PDP: one request per connection,
//! `http://` or `https://` (rustls, ring), a hard timeout around everything and a cap on the
//! response body. No redirects, no proxies, no cookies: both peers are configured by URL.
//! Never logs request or response bodies.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why a request failed. The variant names double as log reasons.
#[derive(Debug, Error)]
pub(crate) enum HttpError {
    #[error("bad URL: {0}")]
    Url(String),
    #[error("timed out")]
    Timeout,
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("TLS failed: {0}")]
    Tls(std::io::Error),
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    #[error("response body too large or unreadable")]
    Body,
    #[error("HTTP status {0}")]
    Status(StatusCode),
}

/// Makes requests; cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpClient {
    tls: TlsConnector,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl HttpClient {
    /// Trusts the system roots (webpki roots when the system has none) plus `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<HttpClient, String> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if let Some(path) = ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("security.ca_file: cannot read {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "security.ca_file: no certificate in {}",
                    path.display()
                ));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("security.ca_file: {}: {e}", path.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(HttpClient {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// GET `url`; the body of a 200 answer, at most `max_body` bytes.
    pub async fn get(
        &self,
        url: &str,
        max_body: usize,
        timeout: Duration,
    ) -> Result<Bytes, HttpError> {
        self.request(Method::GET, url, None, max_body, timeout)
            .await
    }

    /// POST a JSON body; the body of a 2xx answer, at most `max_body` bytes.
    pub async fn post_json(
        &self,
        url: &str,
        body: Bytes,
        max_body: usize,
        timeout: Duration,
    ) -> Result<Bytes, HttpError> {
        self.request(Method::POST, url, Some(body), max_body, timeout)
            .await
    }

    async fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<Bytes>,
        max_body: usize,
        timeout: Duration,
    ) -> Result<Bytes, HttpError> {
        let uri: Uri = url.parse().map_err(|_| HttpError::Url(url.to_owned()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpError::Url(url.to_owned())),
        };
        let host = uri
            .host()
            .ok_or_else(|| HttpError::Url(url.to_owned()))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| host.clone());
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "nowconnect-relay")
            .header(header::CONNECTION, "close");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|_| HttpError::Url(url.to_owned()))?;

        let work = async {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(HttpError::Connect)?;
            let _ = tcp.set_nodelay(true);
            if https {
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| HttpError::Url(url.to_owned()))?;
                let tls = self.tls.connect(name, tcp).await.map_err(HttpError::Tls)?;
                exchange(tls, req, max_body).await
            } else {
                exchange(tcp, req, max_body).await
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| HttpError::Timeout)?
    }
}

/// Sends `req` on a fresh connection and reads the answer, driving the connection meanwhile.
async fn exchange<I>(io: I, req: Request<Full<Bytes>>, max_body: usize) -> Result<Bytes, HttpError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let call = async move {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(HttpError::Status(status));
        }
        if resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n > max_body)
        {
            return Err(HttpError::Body);
        }
        let body = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|_| HttpError::Body)?;
        Ok(body.to_bytes())
    };
    tokio::pin!(conn);
    tokio::pin!(call);
    tokio::select! {
        r = &mut call => r,
        r = &mut conn => {
            // The connection ended first: the answer may still be complete in `call`.
            r?;
            call.await
        }
    }
}
