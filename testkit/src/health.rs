//! The agent's health port seen from outside: one probe (`OK\n` before HELLO_ACK, `READY\n`
//! after), and a wait for a given answer.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::wait::wait_for_async;

/// How long one probe may take before it counts as "no answer".
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the health port answers now, or "" if it does not (not listening, no answer in time).
pub async fn probe(addr: SocketAddr) -> String {
    let Ok(Ok(mut s)) = tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await else {
        return String::new();
    };
    let mut out = String::new();
    match tokio::time::timeout(PROBE_TIMEOUT, s.read_to_string(&mut out)).await {
        Ok(Ok(_)) => out,
        _ => String::new(),
    }
}

/// Waits until the health port answers `want` (`"READY\n"`, `"OK\n"`).
pub async fn wait_health(addr: SocketAddr, want: &str, timeout: Duration) {
    wait_for_async(&format!("health {want:?} on {addr}"), timeout, || async {
        probe(addr).await == want
    })
    .await;
}
