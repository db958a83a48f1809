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

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

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
            .map(|(_, b)| b)
    }

    /// POST a JSON body; the body of a 2xx answer, at most `max_body` bytes.
    pub async fn post_json(
        &self,
        url: &str,
        body: Bytes,
        max_body: usize,
        timeout: Duration,
    ) -> Result<Bytes, HttpError> {
        self.request(Method::POST, url, Some((JSON, body)), max_body, timeout)
            .await
            .map(|(_, b)| b)
    }

    /// POST an `application/x-www-form-urlencoded` body (an OAuth token request); the status
    /// and body of any answer (an IdP explains a refusal in a 400's JSON body).
    pub async fn post_form(
        &self,
        url: &str,
        body: Bytes,
        max_body: usize,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        self.request(Method::POST, url, Some((FORM, body)), max_body, timeout)
            .await
    }

    async fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<(&'static str, Bytes)>,
        max_body: usize,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        // Only a form post wants to read a refusal's body.
        let any_status = matches!(body, Some((FORM, _)));
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
        let body = match body {
            Some((kind, b)) => {
                req = req.header(header::CONTENT_TYPE, kind);
                b
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
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
                exchange(tls, req, max_body, any_status).await
            } else {
                exchange(tcp, req, max_body, any_status).await
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| HttpError::Timeout)?
    }
}

/// Sends `req` on a fresh connection and reads the answer, driving the connection meanwhile.
async fn exchange<I>(
    io: I,
    req: Request<Full<Bytes>>,
    max_body: usize,
    any_status: bool,
) -> Result<(StatusCode, Bytes), HttpError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let call = async move {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        if !status.is_success() && !any_status {
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
        Ok((status, body.to_bytes()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use nowconnect_testkit::net;
    use nowconnect_testkit::pki::Ca;
    use nowconnect_testkit::temp::TempDir;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsAcceptor;

    /// A CA and an acceptor whose certificate it signed, for `localhost` and 127.0.0.1.
    fn pki() -> (Ca, TlsAcceptor) {
        let ca = Ca::new("httpc test CA");
        let acceptor = ca.acceptor(&["localhost", "127.0.0.1"], None);
        (ca, acceptor)
    }

    /// Answers every HTTPS request with 200 and `body`; returns the port.
    async fn https_server(acceptor: TlsAcceptor, body: &'static str) -> u16 {
        let l = net::bind().await;
        let port = net::addr(&l).port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn https_get_and_post_trust_the_ca_file() {
        let (ca, acceptor) = pki();
        let port = https_server(acceptor, r#"{"keys":[]}"#).await;
        let dir = TempDir::new("relay-httpc");
        let path = ca.write(dir.path(), "ca.pem");
        let client = HttpClient::new(Some(&path)).expect("client");
        let t = Duration::from_secs(10);
        for host in ["localhost", "127.0.0.1"] {
            let url = format!("https://{host}:{port}/jwks");
            let body = client.get(&url, 1024, t).await.expect("GET over https");
            assert_eq!(&body[..], br#"{"keys":[]}"#, "{url}");
        }
        let url = format!("https://localhost:{port}/access/v1/evaluation");
        let body = client
            .post_json(&url, Bytes::from_static(b"{}"), 1024, t)
            .await
            .expect("POST over https");
        assert_eq!(&body[..], br#"{"keys":[]}"#);
        // The cap on the body holds over TLS too.
        let err = client.get(&url, 4, t).await.expect_err("body over the cap");
        assert!(matches!(err, HttpError::Body), "{err}");
    }

    #[tokio::test]
    async fn https_refuses_a_server_outside_the_trusted_roots() {
        let (_, acceptor) = pki();
        let port = https_server(acceptor, "{}").await;
        let client = HttpClient::new(None).expect("client");
        let url = format!("https://localhost:{port}/jwks");
        let err = client
            .get(&url, 1024, Duration::from_secs(10))
            .await
            .expect_err("a certificate from an unknown CA");
        assert!(matches!(err, HttpError::Tls(_)), "{err}");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    }
}
