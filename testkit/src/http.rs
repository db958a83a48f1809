//! Plain HTTP/1.1 for tests: a client good for one request per connection (`Connection: close`)
//! and [`TestServer`], a server on 127.0.0.1:0 whose answers the test decides and which counts
//! and keeps what it was sent (an IdP serving a JWKS, a PDP).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};

use crate::net;
use crate::wait::within;

/// How long the client waits for an answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One answer, with the body parsed as JSON when it is JSON (else a JSON string, or null).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    pub text: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as a JSON array; panics naming status and body otherwise.
    pub fn array(&self) -> &Vec<Value> {
        self.body
            .as_array()
            .unwrap_or_else(|| panic!("expected an array, got {} {}", self.status, self.body))
    }
}

/// `method path` with an optional Bearer token and JSON body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Response {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "PATCH" || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write request");
    let mut raw = Vec::new();
    within(
        &format!("an answer to {method} {path}"),
        ANSWER_TIMEOUT,
        s.read_to_end(&mut raw),
    )
    .await
    .expect("read answer");
    parse(&raw)
}

/// `GET path`; returns (status, body text).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = request(addr, "GET", path, None, None).await;
    (r.status, r.text)
}

fn parse(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.get(9..12))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()))
    };
    Response {
        status,
        headers,
        body: json,
        text: body.to_owned(),
    }
}

/// What a [`TestServer`] answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// Waited before answering (a slow server).
    pub delay: Duration,
    /// Response headers besides Content-Length and Connection; a `Content-Type` here replaces
    /// the default `application/json`.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// 200 with a JSON body.
    pub fn ok(body: impl Into<String>) -> Reply {
        Reply {
            status: 200,
            body: body.into(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            ..Reply::ok("")
        }
    }

    /// 200 with an HTML page.
    pub fn html(body: impl Into<String>) -> Reply {
        Reply::ok(body).header("Content-Type", "text/html; charset=utf-8")
    }

    /// 302 to `location`.
    pub fn redirect(location: impl Into<String>) -> Reply {
        Reply::status(302).header("Location", location)
    }

    /// This reply with one more header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = Arc<dyn Fn(&str, &str, &[u8]) -> Reply + Send + Sync>;

/// An HTTP/1.1 server on 127.0.0.1:0 answering one request per connection with
/// `handler(method, path, body)` (`path` with its query string); counts requests and keeps their bodies. Dropped or
/// [`stop`](TestServer::stop)ped, it accepts no more (connects are refused or never answered).
pub struct TestServer {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// Bodies of the requests received, oldest first.
    pub bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("hits", &self.hits())
            .finish()
    }
}

impl TestServer {
    pub async fn start(
        handler: impl Fn(&str, &str, &[u8]) -> Reply + Send + Sync + 'static,
    ) -> TestServer {
        let handler: Handler = Arc::new(handler);
        let listener = net::bind().await;
        let addr = net::addr(&listener);
        let hits = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (h2, b2) = (hits.clone(), bodies.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            // `listener` is dropped with this task: stopping the server closes the port.
            while let Ok((sock, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let (handler, hits, bodies) = (handler.clone(), h2.clone(), b2.clone());
                conns.spawn(async move {
                    let _ = serve_one(sock, handler, hits, bodies).await;
                });
            }
        });
        TestServer {
            addr,
            hits,
            bodies,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The body of request `i` (0: the first).
    pub fn body(&self, i: usize) -> Vec<u8> {
        self.bodies.lock().expect("bodies")[i].clone()
    }

    /// Stops accepting: the server is down.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(
    mut sock: TcpStream,
    handler: Handler,
    hits: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > crate::io::MAX_HEAD {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..].to_vec();
    hits.fetch_add(1, Ordering::SeqCst);
    let reply = handler(&method, &path, &body);
    bodies.lock().expect("bodies").push(body);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = format!("HTTP/1.1 {} X\r\n", reply.status);
    if !reply
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        resp.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in &reply.headers {
        resp.push_str(&format!("{k}: {v}\r\n"));
    }
    resp.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.body.len(),
        reply.body
    ));
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_client_reads_what_the_server_answers() {
        let server = TestServer::start(|method, path, body| {
            Reply::ok(format!(
                "{{\"m\":\"{method}\",\"p\":\"{path}\",\"n\":{}}}",
                body.len()
            ))
        })
        .await;
        let r = request(server.addr, "POST", "/x", Some("t"), Some("{}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body, serde_json::json!({"m": "POST", "p": "/x", "n": 2}));
        assert_eq!(server.hits(), 1);
        assert_eq!(server.body(0), b"{}");
        let (status, _) = get(server.addr, "/").await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn replies_carry_their_headers() {
        let server = TestServer::start(|_, path, _| match path {
            "/page" => Reply::html("<p>hi</p>"),
            _ => Reply::redirect("/page?x=1"),
        })
        .await;
        let r = request(server.addr, "GET", "/page", None, None).await;
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(r.text, "<p>hi</p>");
        let r = request(server.addr, "GET", "/elsewhere", None, None).await;
        assert_eq!(r.status, 302);
        assert_eq!(r.header("location"), Some("/page?x=1"));
    }
}
