//! systemd's notify protocol (`sd_notify`) for `Type=notify` units: `READY=1` once every
//! listener is bound and the tunnel HTTP server serves, `WATCHDOG=1` at half of
//! `WATCHDOG_USEC`, `STATUS=` lines (agents, client connections) and `STOPPING=1`.
//!
//! Our own few lines rather than a crate: the environment is read through [`Env`] (tests never
//! touch the process environment), and a send never blocks: the socket is non-blocking and a
//! datagram that would wait is dropped (the next WATCHDOG=1 follows). With `NOTIFY_SOCKET`
//! unset every call is a no-op. Status text is made one bounded line here, so it cannot carry
//! another assignment (`\nREADY=1`); it never holds secrets (counts only).

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Env;

/// Longest STATUS text sent, in characters (`systemctl status` shows one line).
const MAX_STATUS_CHARS: usize = 200;
/// Shortest watchdog ping interval, whatever `WATCHDOG_USEC` says.
const MIN_PING: Duration = Duration::from_millis(10);
/// How often [`Notifier::keep_alive`] refreshes STATUS (when it changed).
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

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
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` as systemd sets them.
    /// Problems are logged and leave the notifier disabled: they must not stop the relay.
    pub fn from_env(env: &dyn Env) -> Notifier {
        let Some(path) = env.var("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
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

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// STOPPING=1 with the status line.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// Never returns: WATCHDOG=1 every [`Notifier::ping_every`] and `status()` every
    /// [`STATUS_EVERY`] when it changed. Run it in a `select!` beside what the relay waits for;
    /// it proves the runtime still schedules tasks. Returns at once pending when disabled.
    pub async fn keep_alive(&self, status: impl Fn() -> String) {
        if !self.is_enabled() {
            return std::future::pending().await;
        }
        let tick = self
            .ping_every()
            .map_or(STATUS_EVERY, |p| p.min(STATUS_EVERY));
        let mut every = tokio::time::interval(tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = String::new();
        let mut last_ping = tokio::time::Instant::now();
        loop {
            every.tick().await;
            if let Some(p) = self.ping_every() {
                if last_ping.elapsed() + tick / 2 >= p {
                    self.watchdog();
                    last_ping = tokio::time::Instant::now();
                }
            }
            let now = status();
            if now != last {
                self.status(&now);
                last = now;
            }
        }
    }

    fn send(&self, msg: &str) {
        let Some(s) = &self.socket else { return };
        if let Err(e) = s.sock.send_to_addr(msg.as_bytes(), &s.addr) {
            tracing::debug!(error = %e, "cannot notify systemd");
        }
    }
}

/// The STATUS line of a running relay.
pub fn status_line(agents: usize, connections: usize) -> String {
    format!("serving: {agents} agent tunnel(s), {connections} client connection(s)")
}

/// `/path` or `@abstract`, as systemd writes NOTIFY_SOCKET.
fn socket_addr(path: &str) -> std::io::Result<SocketAddr> {
    if path.starts_with('/') {
        return SocketAddr::from_pathname(path);
    }
    #[cfg(target_os = "linux")]
    if let Some(name) = path.strip_prefix('@') {
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
    let usec: u64 = env.var("WATCHDOG_USEC")?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = env.var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some((Duration::from_micros(usec) / 2).max(MIN_PING))
}

/// One bounded line: control characters (newlines above all) become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_STATUS_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn disabled_without_notify_socket() {
        let n = Notifier::from_env(&env(&[("WATCHDOG_USEC", "1000000")]));
        assert!(!n.is_enabled());
        assert_eq!(n.ping_every(), None);
        n.ready("x");
    }

    #[test]
    fn watchdog_at_half_its_period_and_only_for_this_process() {
        let sock = ("NOTIFY_SOCKET", "/run/nowhere/notify");
        let n = Notifier::from_env(&env(&[sock, ("WATCHDOG_USEC", "30000000")]));
        assert_eq!(n.ping_every(), Some(Duration::from_secs(15)));
        let other = (std::process::id() + 1).to_string();
        let pairs = [sock, ("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", &other)];
        assert_eq!(Notifier::from_env(&env(&pairs)).ping_every(), None);
        let rel = Notifier::from_env(&env(&[("NOTIFY_SOCKET", "relative")]));
        assert!(!rel.is_enabled());
    }

    #[test]
    fn status_is_one_bounded_line() {
        assert_eq!(one_line("a\nREADY=1"), "a READY=1");
        assert_eq!(one_line(&"x".repeat(1000)).len(), MAX_STATUS_CHARS);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_pings_the_watchdog_and_sends_changed_status() {
        let dir = std::env::temp_dir().join(format!("nc-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        let p = path.to_string_lossy().into_owned();
        let pairs = [("NOTIFY_SOCKET", p.as_str()), ("WATCHDOG_USEC", "4000000")];
        let n = Notifier::from_env(&env(&pairs));
        n.ready(&status_line(0, 0));
        let count = std::sync::atomic::AtomicUsize::new(0);
        let status = || {
            let c = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            status_line(c / 2, 0)
        };
        // 2 s ping interval: in 5 s of (paused) time at least two pings and two status changes.
        let _ = tokio::time::timeout(Duration::from_secs(5), n.keep_alive(status)).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(len) = rx.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            got[0],
            "READY=1\nSTATUS=serving: 0 agent tunnel(s), 0 client connection(s)"
        );
        let pings = got.iter().filter(|m| *m == "WATCHDOG=1").count();
        assert!(pings >= 2, "{got:?}");
        let statuses = got
            .iter()
            .filter(|m| m.starts_with("STATUS=serving: 1 agent"))
            .count();
        assert_eq!(statuses, 1, "{got:?}");
    }
}
