//! A real forward proxy for the tests: Debian's tinyproxy, configured in a temp dir, listening on
//! 127.0.0.1 on a free port, run in the foreground and killed when dropped. Missing binary: the
//! test is skipped locally and fails in CI (`CI=true`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use super::{temp_dir, write};
use crate::support::DEADLINE;

/// Options of one proxy.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// `BasicAuth user password` (tinyproxy takes plain words here).
    pub basic_auth: Option<(&'static str, &'static str)>,
    /// Only these CONNECT ports are allowed (others get 403); empty: all ports.
    pub connect_ports: Vec<u16>,
}

pub struct Tinyproxy {
    pub port: u16,
    log: PathBuf,
    dir: PathBuf,
    /// Killed when dropped (`kill_on_drop`), also when the test panics.
    _child: Child,
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where tinyproxy is installed, if it is.
fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join("tinyproxy"))
        .find(|p| p.is_file())
}

impl Tinyproxy {
    /// Starts tinyproxy, or returns `None` (skip) when it is not installed outside CI.
    pub async fn start(opts: Options) -> Option<Tinyproxy> {
        let Some(bin) = binary() else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "tinyproxy is not installed (scripts/install-deps.sh installs it)"
            );
            eprintln!("skipping: tinyproxy is not installed (scripts/install-deps.sh)");
            return None;
        };
        let dir = temp_dir("tinyproxy");
        // The port is free when we look; if another process takes it first, tinyproxy exits
        // and we try another.
        for _ in 0..5 {
            let port = free_port().await;
            let log = dir.join(format!("tinyproxy-{port}.log"));
            let conf = write(&dir, "tinyproxy.conf", &config(port, &log, &opts));
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
                    dir,
                    _child: child,
                });
            }
        }
        panic!("tinyproxy did not start (see {})", dir.display());
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

async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
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
