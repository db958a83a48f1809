//! systemd's notify protocol (`sd_notify`): `READY=1` after the first HELLO_ACK, `STATUS=` lines
//! with the tunnel state, `WATCHDOG=1` from the tunnel supervisor, `STOPPING=1` on the way out.
//!
//! A few lines of our own rather than the sd-notify crate, for two reasons: the environment is
//! read through [`Env`] (tests never touch the process environment), and a send never blocks:
//! the socket is non-blocking and a datagram that would wait is dropped, so a full notify
//! socket cannot stall the single-threaded runtime (a missed WATCHDOG=1 is followed by the next).
//! With `NOTIFY_SOCKET` unset every call is a no-op. Callers build status text from URLs without
//! their path and from error `Display`s, which never hold the token; this module only makes the
//! text one bounded line, so it cannot smuggle another assignment (`\nREADY=1`) in.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Env;

/// Longest STATUS text sent, in characters (`systemctl status` shows one line).
const MAX_STATUS_CHARS: usize = 200;
/// Shortest watchdog ping interval, whatever `WATCHDOG_USEC` says.
const MIN_PING: Duration = Duration::from_millis(10);

/// Sends notifications to systemd; cheap to clone. [`Notifier::default`] sends nothing.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    /// `None`: `NOTIFY_SOCKET` unset or unusable.
    socket: Option<Arc<Socket>>,
    /// Half of `WATCHDOG_USEC`, when systemd watches this process.
    ping_every: Option<Duration>,
}

#[derive(Debug)]
struct Socket {
    sock: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (as systemd sets them for a
    /// `Type=notify` service). Problems are logged and leave the notifier disabled: a broken
    /// notify socket must not stop the agent.
    pub fn from_env(env: &dyn Env) -> Notifier {
        let Some(path) = env.get("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
            return Notifier::default();
        };
        let addr = match socket_addr(&path) {
            Ok(addr) => addr,
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY_SOCKET unusable; not notifying systemd");
                return Notifier::default();
            }
        };
        let sock = match UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|_| s)) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a socket for NOTIFY_SOCKET; not notifying systemd");
                return Notifier::default();
            }
        };
        Notifier {
            socket: Some(Arc::new(Socket { sock, addr })),
            ping_every: ping_interval(env),
        }
    }

    /// True when `NOTIFY_SOCKET` is set and usable.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to send WATCHDOG=1 (half of `WATCHDOG_USEC`); `None` without a watchdog.
    pub fn ping_every(&self) -> Option<Duration> {
        self.socket.as_ref().and(self.ping_every)
    }

    /// READY=1 with the status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// WATCHDOG=1: the tunnel supervisor is alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// STOPPING=1 with the status line.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    fn send(&self, msg: &str) {
        let Some(s) = &self.socket else { return };
        if let Err(e) = s.sock.send_to_addr(msg.as_bytes(), &s.addr) {
            // Full queue (WouldBlock) or no listener: the next notification tries again.
            tracing::debug!(error = %e, "cannot notify systemd");
        }
    }
}

/// `/path` or `@abstract` (Linux), as systemd writes NOTIFY_SOCKET.
fn socket_addr(path: &str) -> std::io::Result<SocketAddr> {
    if path.starts_with('/') {
        return SocketAddr::from_pathname(path);
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(name) = path.strip_prefix('@') {
        #[cfg(target_os = "android")]
        use std::os::android::net::SocketAddrExt;
        #[cfg(target_os = "linux")]
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "NOTIFY_SOCKET is neither a /path nor an @abstract name",
    ))
}

/// Half of `WATCHDOG_USEC`, if set and meant for this process (`WATCHDOG_PID` absent or ours).
fn ping_interval(env: &dyn Env) -> Option<Duration> {
    let usec: u64 = env.get("WATCHDOG_USEC")?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = env.get("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some((Duration::from_micros(usec) / 2).max(MIN_PING))
}

/// The status text as one bounded line: control characters (newlines above all) become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_STATUS_CHARS)
        .collect()
}

/// Keeps systemd's STATUS in step with the tunnel: sends a line only when it changes, and
/// READY=1 (once per process) with the first READY line.
#[derive(Debug)]
pub(crate) struct StatusLine {
    notifier: Notifier,
    last: String,
    ready_sent: bool,
}

impl StatusLine {
    pub fn new(notifier: Notifier) -> StatusLine {
        StatusLine {
            notifier,
            last: String::new(),
            ready_sent: false,
        }
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Publishes `text`; `ready`: the tunnel has its HELLO_ACK.
    pub fn publish(&mut self, text: String, ready: bool) {
        if ready && !self.ready_sent {
            self.ready_sent = true;
            self.notifier.ready(&text);
        } else if text != self.last {
            self.notifier.status(&text);
        } else {
            return;
        }
        self.last = text;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn disabled_without_notify_socket() {
        let n = Notifier::from_env(&env(&[("WATCHDOG_USEC", "1000000")]));
        assert!(!n.is_enabled());
        assert_eq!(n.ping_every(), None);
        n.ready("READY");
        n.watchdog();
    }

    #[test]
    fn refuses_relative_socket_paths() {
        let n = Notifier::from_env(&env(&[("NOTIFY_SOCKET", "relative/notify")]));
        assert!(!n.is_enabled());
    }

    #[test]
    fn watchdog_at_half_its_period_and_only_for_this_process() {
        let me = std::process::id().to_string();
        let sock = ("NOTIFY_SOCKET", "/run/nowhere/notify");
        let n = Notifier::from_env(&env(&[sock, ("WATCHDOG_USEC", "60000000")]));
        assert!(n.is_enabled());
        assert_eq!(n.ping_every(), Some(Duration::from_secs(30)));
        let n = Notifier::from_env(&env(&[
            sock,
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", &me),
        ]));
        assert_eq!(n.ping_every(), Some(Duration::from_millis(100)));
        // Set for another process (a parent that did not clear it): not ours to ping.
        let other = (std::process::id() + 1).to_string();
        let n = Notifier::from_env(&env(&[
            sock,
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", &other),
        ]));
        assert_eq!(n.ping_every(), None);
        for bad in ["0", "x", ""] {
            let n = Notifier::from_env(&env(&[sock, ("WATCHDOG_USEC", bad)]));
            assert_eq!(n.ping_every(), None, "WATCHDOG_USEC={bad}");
        }
        let n = Notifier::from_env(&env(&[sock, ("WATCHDOG_USEC", "2")]));
        assert_eq!(n.ping_every(), Some(MIN_PING));
    }

    #[test]
    fn status_is_one_bounded_line() {
        assert_eq!(one_line("a\nREADY=1\r\tb"), "a READY=1  b");
        assert_eq!(one_line(&"x".repeat(1000)).len(), MAX_STATUS_CHARS);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_datagrams_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("nowconnect-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = Notifier::from_env(&env(&[("NOTIFY_SOCKET", &format!("@{name}"))]));
        let mut line = StatusLine::new(n);
        line.publish("connecting to wss://r:443".into(), false);
        line.publish("connecting to wss://r:443".into(), false);
        line.publish("READY: up".into(), true);
        line.publish("READY: up".into(), true);
        line.notifier().stopping("stopping");
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        for _ in 0..3 {
            let n = rx.recv(&mut buf).expect("datagram");
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(
            got,
            [
                "STATUS=connecting to wss://r:443",
                "READY=1\nSTATUS=READY: up",
                "STOPPING=1\nSTATUS=stopping",
            ],
            "unchanged lines are not repeated"
        );
    }
}
