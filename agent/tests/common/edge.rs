//! Helpers for the edge-transport tests: tokens, agent YAML, error waits, a CONNECT proxy
//! written for the tests, and a log capture.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use nowconnect_agent::{AgentConfig, AgentHandle};
use nowconnect_shared::Frame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{agent_yaml, within, MockConn, STEP};

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An unsigned JWT-shaped token with `exp` (the agent reads `exp`, the relay would verify).
pub fn jwt(exp: u64, sub: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64.encode(format!(r#"{{"sub":"{sub}","exp":{exp}}}"#))
    )
}

/// Replaces the file atomically, as a token rotator would.
pub fn rotate(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write token");
    std::fs::rename(&tmp, path).expect("rename token");
}

/// Agent YAML for `url` with one echo connector and `extra` top-level YAML; `tunnel_extra`
/// lines go under `tunnel:`.
pub fn yaml(url: &str, echo: SocketAddr, tunnel_extra: &str, extra: &str) -> String {
    let y = agent_yaml(url, "v2", &[("echo", echo)]);
    format!(
        "{}{extra}",
        y.replacen("tunnel:\n", &format!("tunnel:\n{tunnel_extra}"), 1)
    )
}

pub async fn start(yaml: &str) -> AgentHandle {
    let cfg = AgentConfig::from_yaml_str(yaml).expect("agent config");
    nowconnect_agent::start(cfg).await.expect("agent starts")
}

/// Waits until the agent's last error contains every one of `parts`; returns the line.
pub async fn wait_error(agent: &AgentHandle, parts: &[&str]) -> String {
    let mut last = None;
    let found = tokio::time::timeout(STEP, async {
        loop {
            last = agent.last_error();
            if let Some(e) = &last {
                if parts.iter().all(|p| e.contains(p)) {
                    return e.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    match found {
        Ok(line) => {
            assert!(!line.contains('\n'), "one line: {line}");
            line
        }
        Err(_) => panic!("no error containing {parts:?}; last error: {last:?}"),
    }
}

/// Reads an HTTP request head (bounded).
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = within("request head", s.read(&mut buf))
            .await
            .expect("read head");
        assert!(n > 0, "peer closed before the end of the head");
        head.extend_from_slice(&buf[..n]);
        assert!(head.len() < 16 * 1024, "head too long");
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A CONNECT proxy written for these tests: optional TLS in front, records every request head,
/// then either answers `answer` and closes, or connects to `upstream` (whatever host was asked
/// for, so relay names need not resolve) and pipes bytes.
pub struct FakeProxy {
    pub addr: SocketAddr,
    pub heads: Arc<Mutex<Vec<String>>>,
}

pub async fn fake_proxy(
    tls: Option<TlsAcceptor>,
    upstream: SocketAddr,
    answer: Option<&'static str>,
) -> FakeProxy {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = l.local_addr().expect("addr");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h = heads.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let (tls, h) = (tls.clone(), h.clone());
            tokio::spawn(async move {
                match tls {
                    None => serve_proxy(sock, upstream, answer, h).await,
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(sock).await {
                            serve_proxy(s, upstream, answer, h).await
                        }
                    }
                }
            });
        }
    });
    FakeProxy { addr, heads }
}

pub async fn serve_proxy<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    upstream: SocketAddr,
    answer: Option<&'static str>,
    heads: Arc<Mutex<Vec<String>>>,
) {
    let head = read_head(&mut io).await;
    heads.lock().expect("heads").push(head);
    if let Some(a) = answer {
        let _ = io.write_all(a.as_bytes()).await;
        let _ = io.shutdown().await;
        return;
    }
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        let _ = io.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if io
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_ok()
    {
        let _ = tokio::io::copy_bidirectional(&mut io, &mut up).await;
    }
}

/// Collects everything logged in this test binary (all levels, all threads). A global
/// subscriber, not a per-thread one: tracing caches per-callsite interest across threads, so
/// thread-local subscribers in tests running in parallel lose events.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// The binary's capture, installed as the global subscriber on first use.
    pub fn global() -> &'static Capture {
        static CAPTURE: OnceLock<Capture> = OnceLock::new();
        CAPTURE.get_or_init(|| {
            let c = Capture::default();
            let sub = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(c.clone())
                .finish();
            tracing::subscriber::set_global_default(sub).expect("first global subscriber");
            c
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture")).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// Sends `data` on stream `id` and waits for the same bytes back (echo target, small payload).
pub async fn echo_roundtrip(conn: &mut MockConn, id: u32, data: &[u8]) {
    conn.send(Frame::Data {
        id,
        payload: Bytes::copy_from_slice(data),
    })
    .await;
    let mut got = Vec::new();
    while got.len() < data.len() {
        match conn.recv().await {
            Frame::Data { id: i, payload } if i == id => got.extend_from_slice(&payload),
            Frame::Window { .. } => {}
            other => panic!("unexpected frame: {other:?}"),
        }
    }
    assert_eq!(got, data);
}
