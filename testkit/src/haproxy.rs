//! A real load balancer for the tests: Debian's HAProxy in TCP mode, configured in a temp dir,
//! one frontend on 127.0.0.1 per backend the test names, each sending a PROXY protocol header
//! (`send-proxy` or `send-proxy-v2`) to it; run in the foreground and killed when dropped.
//! Missing binary: the test is skipped locally and fails in CI (`CI=true`).
//!
//! The ports: HAProxy binds them itself and cannot take listeners from us, so [`Haproxy::start`]
//! picks ports free at that moment and, if another process takes one first (HAProxy then
//! exits), tries others, up to 5 times. Whether HAProxy listens is read from `/proc/net/tcp`,
//! not probed with a connection: a probe would reach the backend as a real connection.

use std::net::{IpAddr, SocketAddr};

use std::time::Duration;

use tokio::process::{Child, Command};

use crate::temp::TempDir;
use crate::wait::DEADLINE;

/// Which PROXY header a frontend's connections get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    V1,
    V2,
}

impl Send {
    fn keyword(self) -> &'static str {
        match self {
            Send::V1 => "send-proxy",
            Send::V2 => "send-proxy-v2",
        }
    }
}

#[derive(Debug)]
pub struct Haproxy {
    /// One frontend per backend given to [`Haproxy::start`], in that order.
    pub frontends: Vec<SocketAddr>,
    /// Killed when dropped (`kill_on_drop`), also when the test panics; before `_dir` goes.
    _child: Child,
    _dir: TempDir,
}

impl Haproxy {
    /// Starts HAProxy with one frontend per `(backend, header)`, connecting to the backends
    /// from loopback address `source` when given (so the backend can tell the proxy's own
    /// address from its clients'), or returns `None` (skip) when it is not installed outside CI.
    pub async fn start(backends: &[(SocketAddr, Send)], source: Option<IpAddr>) -> Option<Haproxy> {
        let bin = crate::program("haproxy");
        if !crate::require(bin.is_some(), "haproxy") {
            return None;
        }
        let bin = bin.expect("checked above");
        let dir = TempDir::new("haproxy");
        for attempt in 0..5 {
            let ports: Vec<u16> = backends.iter().map(|_| free_port()).collect();
            let conf = dir.write("haproxy.cfg", &config(backends, &ports, source));
            let log = std::fs::File::create(dir.join(&format!("haproxy-{attempt}.log")))
                .expect("create the haproxy log");
            let mut child = Command::new(&bin)
                .arg("-db")
                .arg("-f")
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("spawn haproxy");
            if wait_listening(&mut child, &ports).await {
                return Some(Haproxy {
                    frontends: ports
                        .iter()
                        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
                        .collect(),
                    _child: child,
                    _dir: dir,
                });
            }
        }
        panic!("haproxy did not start (see {})", dir.path().display());
    }
}

fn config(backends: &[(SocketAddr, Send)], ports: &[u16], source: Option<IpAddr>) -> String {
    let mut c = String::from(
        "global\n  maxconn 512\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n",
    );
    for (i, ((backend, send), port)) in backends.iter().zip(ports).enumerate() {
        let from = source.map(|ip| format!(" source {ip}")).unwrap_or_default();
        c.push_str(&format!(
            "frontend fe{i}\n  bind 127.0.0.1:{port}\n  default_backend be{i}\n\
             backend be{i}\n  server s{i} {backend} {}{from}\n",
            send.keyword()
        ));
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

/// Whether 127.0.0.1:`port` is in LISTEN state (`/proc/net/tcp`: local address in hex, state 0A).
fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.nth(1)?, f.nth(1)?))
        })
        .any(|(local, state)| local == want && state == "0A")
}

/// True once every port listens; false if HAProxy exited first.
async fn wait_listening(child: &mut Child, ports: &[u16]) -> bool {
    let end = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if ports.iter().all(|p| listening(*p)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("haproxy did not listen on {ports:?} within {DEADLINE:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_one_frontend_per_backend() {
        let c = config(
            &[
                ("127.0.0.1:8765".parse().expect("addr"), Send::V2),
                ("127.0.0.1:389".parse().expect("addr"), Send::V1),
            ],
            &[1000, 1001],
            Some("127.0.0.9".parse().expect("ip")),
        );
        assert!(
            c.contains("bind 127.0.0.1:1000\n  default_backend be0\n"),
            "{c}"
        );
        assert!(
            c.contains("server s0 127.0.0.1:8765 send-proxy-v2 source 127.0.0.9\n"),
            "{c}"
        );
        assert!(
            c.contains("server s1 127.0.0.1:389 send-proxy source 127.0.0.9\n"),
            "{c}"
        );
    }

    #[tokio::test]
    async fn listening_reads_proc_net_tcp() {
        let l = crate::net::bind().await;
        assert!(listening(crate::net::addr(&l).port()));
        let port = crate::net::addr(&l).port();
        drop(l);
        assert!(!listening(port));
    }
}
