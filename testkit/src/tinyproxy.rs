//! A real forward proxy for the tests: Debian's tinyproxy, configured in a temp dir, listening on
//! 127.0.0.1, run in the foreground and killed when dropped. Missing binary: the test is skipped
//! locally and fails in CI (`CI=true`).
//!
//! The port: tinyproxy binds it itself and cannot take a listener from us, so [`Tinyproxy::start`]
//! picks a port that is free at that moment and, if another process takes it first (tinyproxy
//! then exits), tries another, up to 5 times.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::temp::TempDir;
use crate::wait::DEADLINE;

/// Options of one proxy.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// `BasicAuth user password` (tinyproxy takes plain words here).
    pub basic_auth: Option<(&'static str, &'static str)>,
    /// Only these CONNECT ports are allowed (others get 403); empty: all ports.
    pub connect_ports: Vec<u16>,
}

#[derive(Debug)]
pub struct Tinyproxy {
    pub port: u16,
    log: PathBuf,
    /// Killed when dropped (`kill_on_drop`), also when the test panics; before `_dir` goes.
    _child: Child,
    _dir: TempDir,
}

impl Tinyproxy {
    /// Starts tinyproxy, or returns `None` (skip) when it is not installed outside CI.
    pub async fn start(opts: Options) -> Option<Tinyproxy> {
        let bin = crate::program("tinyproxy");
        if !crate::require(bin.is_some(), "tinyproxy") {
            return None;
        }
        let bin = bin.expect("checked above");
        let dir = TempDir::new("tinyproxy");
        for _ in 0..5 {
            let port = free_port();
            let log = dir.join(&format!("tinyproxy-{port}.log"));
            let conf = dir.write("tinyproxy.conf", &config(port, &log, &opts));
            let mut child = Command::new(&bin)
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn tinyproxy");
            if wait_listening(&mut child, port).await {
                return Some(Tinyproxy {
                    port,
                    log,
                    _child: child,
                    _dir: dir,
                });
            }
        }
        panic!("tinyproxy did not start (see {})", dir.path().display());
    }

    /// `http://127.0.0.1:<port>`, with `user:pass@` if given (already percent-encoded).
    pub fn url(&self, userinfo: Option<&str>) -> String {
        match userinfo {
            Some(u) => format!("http://{u}@127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// The CONNECT targets tinyproxy has logged so far (`host:port`).
    pub fn connects(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once("): CONNECT ").map(|(_, r)| r))
            .filter_map(|r| r.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }
}

fn config(port: u16, log: &Path, opts: &Options) -> String {
    let mut c = format!(
        "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 64\nLogLevel Connect\n\
         LogFile \"{}\"\nDisableViaHeader Yes\n",
        log.display()
    );
    if let Some((user, pass)) = opts.basic_auth {
        c.push_str(&format!("BasicAuth {user} {pass}\n"));
    }
    for p in &opts.connect_ports {
        c.push_str(&format!("ConnectPort {p}\n"));
    }
    c
}

/// A port free a moment ago (see the module doc for the race and the retry).
fn free_port() -> u16 {
    std::net::TcpListener::bind(crate::net::LOOPBACK_ANY)
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// True once the port accepts connections; false if tinyproxy exited first.
async fn wait_listening(child: &mut Child, port: u16) -> bool {
    let end = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("tinyproxy did not listen on port {port} within {DEADLINE:?}");
}
