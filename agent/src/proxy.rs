//! HTTP CONNECT proxies: the proxy URL (with Basic credentials from its userinfo) and the
//! CONNECT exchange that turns a connection to the proxy into a byte pipe to the relay.
//!
//! The response head is read with a hard size limit and parsed by `httparse`; nothing after the
//! head is consumed, and a proxy that sends bytes after its `200` (the relay never speaks first)
//! is refused. Credentials are never printed: [`ProxyUrl`] displays without the password, and
//! error lines name the proxy, the target and at most the user name.

use std::fmt;
use std::io;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest CONNECT response head we read.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;
/// Most response headers we parse.
const MAX_HEADERS: usize = 48;

/// A proxy: `http://[user[:password]@]host[:port]` or `https://...` (TLS to the proxy itself).
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// `https://`: TLS to the proxy, then CONNECT inside it.
    pub secure: bool,
    /// Host name or IP literal without brackets.
    pub host: String,
    pub port: u16,
    credentials: Option<Credentials>,
}

#[derive(Clone, PartialEq, Eq)]
struct Credentials {
    user: String,
    password: String,
}

impl ProxyUrl {
    /// Parses a proxy URL. A missing scheme means `http://`; the default port is 80 for
    /// `http://` and 443 for `https://`. Messages never contain the value (it may hold a
    /// password).
    pub fn parse(s: &str) -> Result<ProxyUrl, String> {
        let s = s.trim();
        if s.chars().any(|c| c.is_control() || c == ' ') {
            return Err("must not contain spaces or control characters".into());
        }
        let (secure, rest) = match s.split_once("://") {
            None => (false, s),
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "http" => (false, rest),
                "https" => (true, rest),
                other => {
                    return Err(format!(
                        "scheme `{}` is not supported; use http:// or https:// (HTTP CONNECT)",
                        other.chars().take(16).collect::<String>()
                    ))
                }
            },
        };
        let authority = match rest.find('/') {
            Some(i) if rest[i..].chars().all(|c| c == '/') => &rest[..i],
            Some(_) => return Err("must not have a path (only scheme://host:port)".into()),
            None => rest,
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let credentials = match userinfo {
            None => None,
            Some(u) => {
                let (user, password) = u.split_once(':').unwrap_or((u, ""));
                let user = percent_decode(user).map_err(|e| format!("user name: {e}"))?;
                let password = percent_decode(password).map_err(|e| format!("password: {e}"))?;
                if user.is_empty() {
                    return Err("has credentials without a user name".into());
                }
                if user.contains(':') {
                    return Err("user name must not contain `:`".into());
                }
                Some(Credentials { user, password })
            }
        };
        let default_port = if secure { 443 } else { 80 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unclosed [ in IPv6 host")?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err("host in [ ] is not an IPv6 address".into());
            }
            let port = match after {
                "" => default_port,
                p => parse_port(p.strip_prefix(':').ok_or("unexpected text after ]")?)?,
            };
            (h.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), parse_port(p)?),
                None => (hostport.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err("has no host".into());
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
        {
            return Err("host is not a valid host name or IP address".into());
        }
        Ok(ProxyUrl {
            secure,
            host: host.to_ascii_lowercase(),
            port,
            credentials,
        })
    }

    /// `host:port` with brackets around IPv6 (what error lines show).
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    /// The user name of the credentials, if any (never the password).
    pub fn user(&self) -> Option<&str> {
        self.credentials.as_ref().map(|c| c.user.as_str())
    }
}

impl fmt::Display for ProxyUrl {
    /// `http://user@host:port`: no password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.secure { "https" } else { "http" };
        match self.user() {
            Some(u) => write!(f, "{scheme}://{}@{}", printable(u), self.authority()),
            None => write!(f, "{scheme}://{}", self.authority()),
        }
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `host:port`, IPv6 in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Why a CONNECT through the proxy failed. Each message is one line naming the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy {proxy} requires authentication for CONNECT {target} (HTTP {status} {reason}); put user:password@ in the proxy URL")]
    AuthRequired {
        proxy: String,
        target: String,
        status: u16,
        reason: String,
    },
    #[error("proxy {proxy} rejected the credentials of user `{user}` for CONNECT {target} (HTTP {status} {reason})")]
    AuthRejected {
        proxy: String,
        target: String,
        user: String,
        status: u16,
        reason: String,
    },
    #[error("proxy {proxy} forbids CONNECT to {target} (HTTP 403 {reason})")]
    Forbidden {
        proxy: String,
        target: String,
        reason: String,
    },
    #[error("proxy {proxy} could not open a tunnel to {target} (HTTP {status} {reason})")]
    Status {
        proxy: String,
        target: String,
        status: u16,
        reason: String,
    },
    #[error("proxy {proxy} sent an invalid CONNECT response: {message}")]
    Protocol { proxy: String, message: String },
    #[error("proxy {proxy} closed the connection before answering CONNECT {target}")]
    Closed { proxy: String, target: String },
    #[error("proxy {proxy}: connection failed during CONNECT: {source}")]
    Io { proxy: String, source: io::Error },
}

impl ProxyError {
    /// Short stable name of the cause.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::AuthRequired { .. } | ProxyError::AuthRejected { .. } => "proxy_auth",
            ProxyError::Forbidden { .. } => "proxy_forbidden",
            ProxyError::Status { .. } => "proxy_status",
            ProxyError::Protocol { .. } | ProxyError::Closed { .. } => "proxy_protocol",
            ProxyError::Io { .. } => "proxy_io",
        }
    }
}

/// Asks the proxy on `io` for a tunnel to `target` (`host:port`). On success `io` carries the
/// relay's bytes from the next byte on.
pub async fn connect<S>(io: &mut S, proxy: &ProxyUrl, target: &str) -> Result<(), ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = proxy.authority();
    let io_err = |source| ProxyError::Io {
        proxy: name.clone(),
        source,
    };
    let request = request(proxy, target);
    io.write_all(request.as_bytes()).await.map_err(io_err)?;
    io.flush().await.map_err(io_err)?;

    let mut head = vec![0u8; MAX_RESPONSE_HEAD];
    let mut len = 0;
    let end = loop {
        if len == head.len() {
            return Err(ProxyError::Protocol {
                proxy: name,
                message: format!("response head longer than {MAX_RESPONSE_HEAD} bytes"),
            });
        }
        let n = io.read(&mut head[len..]).await.map_err(io_err)?;
        if n == 0 {
            return Err(ProxyError::Closed {
                proxy: name,
                target: target.to_owned(),
            });
        }
        // Only the new bytes (and the three before them) can complete the terminator.
        let from = len.saturating_sub(3);
        len += n;
        if let Some(i) = find_head_end(&head[from..len]) {
            break from + i;
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&head[..end]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(ProxyError::Protocol {
                proxy: name,
                message: "incomplete response head".into(),
            })
        }
        Err(e) => {
            return Err(ProxyError::Protocol {
                proxy: name,
                message: e.to_string(),
            })
        }
    }
    let status = resp.code.unwrap_or(0);
    let reason = printable(resp.reason.unwrap_or(""));
    let target = target.to_owned();
    match status {
        200..=299 => {
            if len > end {
                return Err(ProxyError::Protocol {
                    proxy: name,
                    message: format!(
                        "{} unexpected bytes after HTTP {status} (the relay never speaks first)",
                        len - end
                    ),
                });
            }
            Ok(())
        }
        // 401 is not what RFC 9110 asks of a proxy, but some (tinyproxy) answer wrong
        // credentials with it; before the tunnel exists only the proxy can have sent it.
        407 | 401 => Err(match proxy.user() {
            None => ProxyError::AuthRequired {
                proxy: name,
                target,
                status,
                reason,
            },
            Some(user) => ProxyError::AuthRejected {
                proxy: name,
                target,
                user: printable(user),
                status,
                reason,
            },
        }),
        403 => Err(ProxyError::Forbidden {
            proxy: name,
            target,
            reason,
        }),
        _ => Err(ProxyError::Status {
            proxy: name,
            target,
            status,
            reason,
        }),
    }
}

/// The CONNECT request. It holds the credentials: it is written to the socket and dropped,
/// never logged.
fn request(proxy: &ProxyUrl, target: &str) -> String {
    let mut r = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: nowconnect-agent/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(c) = &proxy.credentials {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.user, c.password));
        r.push_str("Proxy-Authorization: Basic ");
        r.push_str(&basic);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

/// Offset just past the first `\r\n\r\n`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Strict `%XX` decoding (RFC 3986 userinfo); the result must be UTF-8 without control
/// characters.
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("`%` must be followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).map_err(|_| "is not UTF-8 after percent-decoding")?;
    if s.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(s)
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err("port must be between 1 and 65535".into()),
        Ok(n) => Ok(n),
    }
}

fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_and_without_credentials() {
        let p = ProxyUrl::parse("http://proxy.corp:3128").expect("valid");
        assert_eq!(
            (p.secure, p.host.as_str(), p.port),
            (false, "proxy.corp", 3128)
        );
        assert_eq!(p.user(), None);
        let p = ProxyUrl::parse("proxy.corp").expect("no scheme = http");
        assert_eq!((p.secure, p.port), (false, 80));
        let p = ProxyUrl::parse("HTTPS://[::1]/").expect("valid");
        assert_eq!((p.secure, p.host.as_str(), p.port), (true, "::1", 443));
        assert_eq!(p.to_string(), "https://[::1]:443");
        let p = ProxyUrl::parse("http://bob%40corp:p%40ss%3Aw0rd%25@10.0.0.1:8080").expect("valid");
        assert_eq!(p.user(), Some("bob@corp"));
        let c = p.credentials.as_ref().expect("credentials");
        assert_eq!(c.password, "p@ss:w0rd%");
        assert_eq!(p.to_string(), "http://bob@corp@10.0.0.1:8080");
        assert!(
            !format!("{p:?}").contains("w0rd"),
            "Debug hides the password"
        );
        // An unencoded @ in the password still works (last @ ends the userinfo).
        let p = ProxyUrl::parse("http://u:a@b@h:1").expect("valid");
        assert_eq!(p.credentials.expect("creds").password, "a@b");
    }

    #[test]
    fn bad_urls_never_echo_the_password() {
        for bad in [
            "socks5://u:hunter2@h:1",
            "http://u:hunter2@h:0",
            "http://u:hunter2%zz@h:1",
            "http://u:hunter2@h:1/path",
            "http://u:hunter2@",
            "http://:hunter2@h",
            "http://u:hunter2@[::1:1",
            "http://u:hunter2@h!:1",
            "http://u:hunter2%0a@h:1",
        ] {
            let e = ProxyUrl::parse(bad).expect_err(bad);
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
    }

    #[test]
    fn request_carries_basic_auth() {
        let p = ProxyUrl::parse("http://Aladdin:open%20sesame@p:1").expect("valid");
        let r = request(&p, "relay:443");
        assert!(
            r.starts_with("CONNECT relay:443 HTTP/1.1\r\nHost: relay:443\r\n"),
            "{r}"
        );
        assert!(
            r.contains("Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n"),
            "{r}"
        );
        assert!(r.ends_with("\r\n\r\n"));
        let p = ProxyUrl::parse("http://p:1").expect("valid");
        assert!(!request(&p, "[::1]:443").contains("Proxy-Authorization"));
    }

    /// Runs `connect` against a scripted proxy answer; returns the result and the request.
    async fn exchange(proxy: &str, answer: &'static [u8]) -> (Result<(), ProxyError>, String) {
        let (mut ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while find_head_end(&req).is_none() {
                let n = theirs.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            // Dribble the answer to exercise reassembly of the head.
            for chunk in answer.chunks(7) {
                if theirs.write_all(chunk).await.is_err() {
                    break;
                }
            }
            String::from_utf8(req).expect("ascii request")
        });
        let p = ProxyUrl::parse(proxy).expect("proxy url");
        let r = connect(&mut ours, &p, "relay.example.com:443").await;
        drop(ours);
        (r, server.await.expect("server"))
    }

    #[tokio::test]
    async fn answers_map_to_one_line_errors() {
        let (r, req) = exchange("http://p:1", b"HTTP/1.1 200 Connection established\r\n\r\n").await;
        assert!(r.is_ok(), "{r:?}");
        assert!(req.starts_with("CONNECT relay.example.com:443 HTTP/1.1\r\n"));

        let (r, _) = exchange(
            "http://p:1",
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n",
        )
        .await;
        let e = r.expect_err("407").to_string();
        assert!(
            e.contains("requires authentication") && e.contains("HTTP 407"),
            "{e}"
        );

        let (r, _) = exchange(
            "http://bob:hunter2@p:1",
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
        )
        .await;
        let e = r.expect_err("407").to_string();
        assert!(
            e.contains("rejected the credentials of user `bob`") && e.contains("407"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");

        let (r, _) = exchange("http://p:1", b"HTTP/1.0 403 Filtered\r\n\r\n<html>").await;
        let e = r.expect_err("403").to_string();
        assert!(
            e.contains("forbids CONNECT to relay.example.com:443 (HTTP 403 Filtered)"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");

        let (r, _) = exchange("http://p:1", b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        assert!(r
            .expect_err("502")
            .to_string()
            .contains("HTTP 502 Bad Gateway"));

        let (r, _) = exchange("http://p:1", b"HTTP/1.1 200 OK\r\n\r\nsurprise").await;
        assert!(r
            .expect_err("extra")
            .to_string()
            .contains("unexpected bytes"));

        let (r, _) = exchange("http://p:1", b"SSH-2.0-OpenSSH\r\n\r\n").await;
        assert!(matches!(r, Err(ProxyError::Protocol { .. })), "{r:?}");

        let (r, _) = exchange("http://p:1", b"HTTP/1.1 200 OK\r\n").await;
        assert!(matches!(r, Err(ProxyError::Closed { .. })), "{r:?}");
    }

    #[tokio::test]
    async fn oversized_head_is_refused() {
        static HUGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let huge = HUGE.get_or_init(|| {
            let mut v = b"HTTP/1.1 200 OK\r\n".to_vec();
            while v.len() <= MAX_RESPONSE_HEAD {
                v.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
            }
            v.extend_from_slice(b"\r\n");
            v
        });
        let (r, _) = exchange("http://p:1", huge).await;
        let e = r.expect_err("too long").to_string();
        assert!(e.contains("longer than"), "{e}");
    }
}
