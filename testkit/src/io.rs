//! The client side of a test connection: reading until the peer closes (with a deadline),
//! seeded pseudo-random payloads and their SHA-256, an echo round trip, and a bounded reader of
//! HTTP request heads.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::wait::within;

/// Reads until EOF or an error; returns the bytes and whether the peer closed within `within`.
pub async fn read_to_close<S: AsyncRead + Unpin>(
    sock: &mut S,
    within: Duration,
) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Waits until the peer closes `s` (EOF or reset), failing after `deadline`; returns the wait.
pub async fn wait_closed<S: AsyncRead + Unpin>(s: &mut S, deadline: Duration) -> Duration {
    let start = Instant::now();
    let (_, closed) = read_to_close(s, deadline).await;
    assert!(closed, "socket still open after {deadline:?}");
    start.elapsed()
}

/// Connects to `addr` and waits until the server closes the connection. A reset that lands
/// before the connect completes (a relay closes refused clients with RST) counts as closed at once.
pub async fn connect_and_wait_closed(addr: SocketAddr, deadline: Duration) -> Duration {
    let start = Instant::now();
    let connected = TcpStream::connect(addr).await;
    closed_after(connected, addr, deadline).await + start.elapsed()
}

/// [`connect_and_wait_closed`] from loopback address `from` (e.g. 127.0.0.2).
pub async fn connect_from_and_wait_closed(
    from: IpAddr,
    addr: SocketAddr,
    deadline: Duration,
) -> Duration {
    let start = Instant::now();
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(from, 0))
        .unwrap_or_else(|e| panic!("bind {from}:0: {e}"));
    let connected = sock.connect(addr).await;
    closed_after(connected, addr, deadline).await + start.elapsed()
}

async fn closed_after(
    connected: std::io::Result<TcpStream>,
    addr: SocketAddr,
    deadline: Duration,
) -> Duration {
    match connected {
        Ok(mut s) => wait_closed(&mut s, deadline).await,
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ),
                "connect to {addr} failed with {e}, not with a reset"
            );
            Duration::ZERO
        }
    }
}

/// Writes `data` to a new connection to `addr` and expects the same bytes back (an echo
/// target behind it), within `timeout`.
pub async fn echo_through(addr: SocketAddr, data: &[u8], timeout: Duration) {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(data).await.expect("write");
    let mut back = vec![0u8; data.len()];
    within("the echo", timeout, s.read_exact(&mut back))
        .await
        .expect("echo read");
    assert_eq!(back, data, "echoed bytes differ");
}

/// `len` deterministic pseudo-random bytes from `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Writes `len` seeded random bytes in 64 KiB chunks, then shuts down the write side; returns
/// the SHA-256 of what was written.
pub async fn send_random<W: AsyncWrite + Unpin>(w: &mut W, seed: u64, len: usize) -> [u8; 32] {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hash = Sha256::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        rng.fill_bytes(&mut chunk[..n]);
        hash.update(&chunk[..n]);
        w.write_all(&chunk[..n]).await.expect("write");
        left -= n;
    }
    w.shutdown().await.expect("shutdown write");
    hash.finalize().into()
}

/// Reads to EOF; returns (bytes read, SHA-256).
pub async fn recv_hash<R: AsyncRead + Unpin>(r: &mut R) -> (usize, [u8; 32]) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            return (total, hash.finalize().into());
        }
        hash.update(&buf[..n]);
        total += n;
    }
}

/// Longest request head [`read_head`] accepts.
pub const MAX_HEAD: usize = 16 * 1024;

/// Reads an HTTP request or response head up to and including the blank line (at most
/// [`MAX_HEAD`] bytes, within `timeout`). Bytes after the head in the same read are kept.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S, timeout: Duration) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    within("a request head", timeout, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.expect("read head");
            assert!(n > 0, "peer closed before the end of the head");
            head.extend_from_slice(&buf[..n]);
            assert!(head.len() < MAX_HEAD, "head too long");
        }
    })
    .await;
    String::from_utf8_lossy(&head).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn random_payload_hashes_match_on_both_ends() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let (sent, (n, got)) = tokio::join!(send_random(&mut a, 7, 300_000), recv_hash(&mut b));
        assert_eq!(n, 300_000);
        assert_eq!(sent, got);
        assert_eq!(random_bytes(7, 16), random_bytes(7, 16));
    }
}
