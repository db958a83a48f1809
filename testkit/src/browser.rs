//! Headless Chromium over WebDriver ([`fantoccini`]) for the dashboard's browser test:
//! a chromedriver on a port it picks itself, sessions that only ever reach loopback, the
//! browser's console log, and screenshots under `<target>/ui-screenshots/`.
//!
//! chromedriver runs in its own process group with every Chromium it starts; dropping the
//! [`Browser`] kills the group, also when the test panics. Sessions go through a proxy that
//! refuses everything (`127.0.0.1:9`, nothing listens there), and Chromium sends loopback
//! addresses past any proxy by itself: a page can reach the test's servers and nothing else.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::wait::{wait_for_async, within, DEADLINE};

/// Where Debian puts the browser; elsewhere chromedriver finds one itself.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// A proxy that refuses every connection: nothing listens on the discard port.
pub const NO_PROXY: &str = "127.0.0.1:9";
/// chromedriver's and Chromium's own output kept for a failure message (the last bytes).
const KEEP_OUTPUT: usize = 16 * 1024;

/// A running chromedriver; sessions are opened with [`Browser::session`].
#[derive(Debug)]
pub struct Browser {
    /// `http://127.0.0.1:PORT`.
    url: String,
    /// Also the process group id: chromedriver leads its own group.
    pid: u32,
    /// Killed with its group when dropped (`kill_on_drop` for chromedriver itself as well).
    _child: Child,
    /// Drain chromedriver's stdout and stderr (a full pipe would stall it) into `output`.
    drains: Vec<JoinHandle<()>>,
    output: Arc<Mutex<String>>,
}

/// Reads `from` line by line into `into`, keeping the last [`KEEP_OUTPUT`] bytes.
fn drain(
    from: impl AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let mut out = into.lock().expect("browser output");
            out.push_str(&l);
            out.push('\n');
            if out.len() > KEEP_OUTPUT {
                let cut = out.len() - KEEP_OUTPUT;
                let cut = (cut..out.len())
                    .find(|i| out.is_char_boundary(*i))
                    .unwrap_or(0);
                out.drain(..cut);
            }
        }
    })
}

/// The port in chromedriver's "ChromeDriver was started successfully on port N." line.
fn started_port(line: &str) -> Option<u16> {
    let (_, rest) = line.split_once("started successfully on port ")?;
    rest.trim().trim_end_matches('.').parse().ok()
}

/// How long one `/status` probe may take.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether chromedriver at `addr` says it is ready. It keeps connections open whatever the
/// request says, so this reads until the answer says so instead of until the connection closes.
async fn ready(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while let Ok(n @ 1..) = s.read(&mut chunk).await {
        got.extend_from_slice(&chunk[..n]);
        if got.windows(12).any(|w| w == b"\"ready\":true") {
            return true;
        }
        if got.len() > KEEP_OUTPUT {
            break;
        }
    }
    false
}

impl Browser {
    /// Starts chromedriver on a port it picks and waits until it answers `/status`. Panics if
    /// chromedriver is not installed.
    pub async fn start() -> Browser {
        let bin = crate::program("chromedriver").unwrap_or_else(|| {
            panic!("chromedriver not found: install chromium-driver (scripts/install-deps.sh does)")
        });
        let mut child = Command::new(&bin)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let pid = child.id().expect("chromedriver's pid");
        let output = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let mut drains = vec![drain(stderr, output.clone())];
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let port = within("chromedriver to say its port", DEADLINE, async {
            loop {
                match stdout.next_line().await {
                    Ok(Some(l)) => {
                        if let Some(p) = started_port(&l) {
                            break p;
                        }
                        output.lock().expect("browser output").push_str(&l);
                    }
                    _ => panic!(
                        "chromedriver exited before it said its port: {}",
                        output.lock().expect("browser output")
                    ),
                }
            }
        })
        .await;
        drains.push(drain(stdout.into_inner(), output.clone()));
        let browser = Browser {
            url: format!("http://127.0.0.1:{port}"),
            pid,
            _child: child,
            drains,
            output,
        };
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_async("chromedriver to answer /status", DEADLINE, || async {
            tokio::time::timeout(STATUS_TIMEOUT, ready(addr))
                .await
                .unwrap_or(false)
        })
        .await;
        browser
    }

    /// chromedriver's address, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new headless Chromium session that reaches loopback only.
    pub async fn session(&self) -> Client {
        self.session_through(NO_PROXY).await
    }

    /// A session whose non-loopback traffic goes to the proxy `proxy` (host:port).
    async fn session_through(&self, proxy: &str) -> Client {
        let caps = match capabilities(proxy) {
            Value::Object(m) => m,
            _ => unreachable!("capabilities are an object"),
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        within(
            "a Chromium session",
            DEADLINE,
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&self.url),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "open a Chromium session: {e}\nchromedriver said:\n{}",
                self.output.lock().expect("browser output")
            )
        })
    }
}

/// Chromium's options: headless, as root (no sandbox), a fixed window, no first-run pages, the
/// proxy for everything but loopback (Chromium bypasses proxies for loopback by itself), and
/// every console message kept for [`browser_log`].
fn capabilities(proxy: &str) -> Value {
    let mut opts = json!({
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-crash-reporter",
            format!("--proxy-server={proxy}"),
        ],
    });
    if std::path::Path::new(CHROMIUM).is_file() {
        opts["binary"] = json!(CHROMIUM);
    }
    json!({
        "browserName": "chrome",
        "goog:chromeOptions": opts,
        "goog:loggingPrefs": { "browser": "ALL" },
    })
}

impl Drop for Browser {
    fn drop(&mut self) {
        for d in &self.drains {
            d.abort();
        }
        // chromedriver and every Chromium it started share its process group.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pid)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One console message (or failed load, CSP violation...) the page produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO`, `DEBUG`.
    pub level: String,
    pub message: String,
}

/// chromedriver's log endpoint (`POST /session/{id}/se/log`), outside the W3C command set.
#[derive(Debug)]
struct GetLog;

impl WebDriverCompatibleCommand for GetLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// The browser's log since the last call (chromedriver hands each entry out once).
pub async fn browser_log(c: &Client) -> Vec<LogEntry> {
    let v = c
        .issue_cmd(GetLog)
        .await
        .unwrap_or_else(|e| panic!("read the browser log: {e}"));
    v.as_array()
        .unwrap_or_else(|| panic!("the browser log is not a list: {v}"))
        .iter()
        .map(|e| LogEntry {
            level: e["level"].as_str().unwrap_or("").to_owned(),
            message: e["message"].as_str().unwrap_or("").to_owned(),
        })
        .collect()
}

/// The build's target directory: `CARGO_TARGET_DIR`, else the one holding this test binary
/// (`<target>/debug/deps/<test>`), else the system's temporary directory.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == "deps"))
                .and_then(|deps| deps.parent()?.parent())
                .map(PathBuf::from)
        })
        .unwrap_or_else(std::env::temp_dir)
}

/// Saves what the page shows to `<target>/ui-screenshots/<name>.png`; returns the path.
pub async fn screenshot(c: &Client, name: &str) -> PathBuf {
    let png = c
        .screenshot()
        .await
        .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
    let dir = target_dir().join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

#[cfg(test)]
#[path = "browser_tests.rs"]
mod tests;
