//! The metrics listener: a minimal HTTP/1.1 server for `GET /metrics` (and `HEAD`). One request
//! per connection, read into a bounded buffer under a deadline, answered, then closed. Nothing
//! else is served; the page is rendered per request from atomics.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Largest request read (request line and headers); a scraper's GET is a few hundred bytes.
const MAX_REQUEST: usize = 4096;
/// Most headers a request may have.
const MAX_HEADERS: usize = 32;
/// The whole exchange (request in, page out, the peer's close) must fit in this; a slow or
/// silent client loses its connection, not a slot forever.
const DEADLINE: Duration = Duration::from_secs(5);
/// Most requests answered at once; more wait in the listen backlog.
const MAX_CONCURRENT: usize = 8;

/// Serves `GET /metrics` on `listener` until `cancel`; `page` renders the body.
pub async fn serve<F>(listener: TcpListener, page: F, cancel: CancellationToken)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let page = Arc::new(page);
    crate::accept::serve_bounded(
        listener,
        MAX_CONCURRENT,
        DEADLINE,
        "metrics",
        cancel,
        move |sock| {
            let page = page.clone();
            async move { exchange(sock, &*page).await }
        },
    )
    .await;
}

async fn exchange(
    mut sock: TcpStream,
    page: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let answer = loop {
        if len == buf.len() {
            break status(431, "Request Header Fields Too Large", "");
        }
        let n = sock.read(&mut buf[len..]).await?;
        if n == 0 {
            // Closed before a whole request: nothing to answer.
            return Ok(());
        }
        len += n;
        if let Some(answer) = respond(&buf[..len], page) {
            break answer;
        }
    };
    sock.write_all(&answer).await?;
    sock.shutdown().await?;
    // Wait for the client's close (within the deadline) so ours does not reset the socket
    // before it has read the page.
    while sock.read(&mut buf).await? > 0 {}
    Ok(())
}

/// The response to `request`, or `None` while its head is incomplete.
fn respond(request: &[u8], page: &dyn Fn() -> String) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(request) {
        Ok(httparse::Status::Partial) => return None,
        Ok(httparse::Status::Complete(_)) => {}
        Err(_) => return Some(status(400, "Bad Request", "")),
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Some(status(400, "Bad Request", ""));
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path != "/metrics" {
        return Some(status(404, "Not Found", ""));
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Some(status(405, "Method Not Allowed", "Allow: GET, HEAD\r\n")),
    };
    let body = page();
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    Some(out)
}

/// An empty response with `code`.
fn status(code: u16, text: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} {text}\r\n{extra_headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(req: &str) -> Option<String> {
        respond(req.as_bytes(), &|| "x_total 1\n".to_string())
            .map(|r| String::from_utf8(r).expect("ASCII response"))
    }

    #[test]
    fn get_metrics_is_the_page_in_text_format() {
        let r = answer("GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").expect("complete");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("Content-Length: 10\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nx_total 1\n"), "{r}");
        let q = answer("GET /metrics?x=1 HTTP/1.0\r\n\r\n").expect("complete");
        assert!(q.starts_with("HTTP/1.1 200 OK\r\n"), "{q}");
        let h = answer("HEAD /metrics HTTP/1.1\r\n\r\n").expect("complete");
        assert!(
            h.contains("Content-Length: 10\r\n") && h.ends_with("\r\n\r\n"),
            "{h}"
        );
    }

    #[test]
    fn anything_else_is_refused_and_a_partial_head_waits() {
        assert_eq!(answer("GET /metrics HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(answer("GET /metr"), None);
        let cases = [
            ("GET / HTTP/1.1\r\n\r\n", "404"),
            ("GET /metricsx HTTP/1.1\r\n\r\n", "404"),
            ("POST /metrics HTTP/1.1\r\n\r\n", "405"),
            ("\x01\x02 nonsense\r\n\r\n", "400"),
        ];
        for (req, code) in cases {
            let r = answer(req).expect("complete");
            assert!(r.starts_with(&format!("HTTP/1.1 {code} ")), "{req:?}: {r}");
        }
    }

    #[tokio::test]
    async fn serves_over_tcp_and_refuses_an_oversized_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, || "up 1\n".to_string(), cancel.clone()));
        let exchange = |req: Vec<u8>| async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(&req).await.expect("write");
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.expect("read");
            String::from_utf8(out).expect("ASCII")
        };
        let ok = exchange(b"GET /metrics HTTP/1.1\r\n\r\n".to_vec()).await;
        assert!(ok.ends_with("\r\n\r\nup 1\n"), "{ok}");
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST + 10, b'a');
        let refused = exchange(big).await;
        assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");
        cancel.cancel();
        server.await.expect("server stops");
    }
}
