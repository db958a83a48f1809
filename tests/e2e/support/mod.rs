//! Shared fixtures: start a relay, an agent and loopback targets; wait for conditions.
#![allow(dead_code)]

pub mod slapd;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nowconnect_agent::{AgentConfig, AgentHandle};
use nowconnect_relay::{RelayConfig, RelayHandle};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Upper bound for anything a test waits on; generous because CI machines are shared.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` until it holds, failing the test with `what` after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Relay YAML with dev bypass, `/tunnel` on 127.0.0.1:`tunnel_port`, one listener per connector
/// (listener name = connector name), all on port 0.
pub fn relay_yaml(tunnel_port: u16, connectors: &[&str]) -> String {
    let mut y = format!(
        "tunnel:\n  host: 127.0.0.1\n  port: {tunnel_port}\n  ping_interval_sec: 5\n  ping_timeout_sec: 5\n\
         security:\n  dev_bypass: true\nlisteners:\n"
    );
    for c in connectors {
        y.push_str(&format!(
            "  - name: {c}\n    bind: 127.0.0.1:0\n    connector: {c}\n"
        ));
    }
    y
}

/// Starts a relay as the binary runs it: tunnels on two shards of their own (so the e2e tests
/// cover moving connections and client sockets between runtimes).
pub async fn start_relay(yaml: &str) -> RelayHandle {
    let cfg = RelayConfig::from_yaml_str(yaml).expect("relay test config is valid");
    let shards = nowconnect_relay::Shards::start(2).expect("relay shards start");
    nowconnect_relay::start_sharded(cfg, Some(shards))
        .await
        .expect("relay starts")
}

/// A relay on a free port exporting `connectors`.
pub async fn relay(connectors: &[&str]) -> RelayHandle {
    start_relay(&relay_yaml(0, connectors)).await
}

/// Agent YAML: ws:// to `tunnel`, health on 127.0.0.1:0, one target per connector.
pub fn agent_yaml(
    tunnel: SocketAddr,
    agent_id: &str,
    protocol: &str,
    targets: &[(&str, SocketAddr)],
) -> String {
    let names: Vec<&str> = targets.iter().map(|(n, _)| *n).collect();
    let mut y = format!(
        "tunnel:\n  url: ws://{tunnel}/tunnel\n  agent_id: {agent_id}\n  allow_insecure_ws: true\n  \
         protocol: {protocol}\n  ping_interval_sec: 5\n  ping_timeout_sec: 5\n  exported_connectors: [{}]\n\
         health:\n  host: 127.0.0.1\n  port: 0\ntargets:\n",
        names.join(", ")
    );
    for (name, addr) in targets {
        y.push_str(&format!(
            "  {name}:\n    host: \"{}\"\n    port: {}\n",
            addr.ip(),
            addr.port()
        ));
    }
    y
}

pub async fn start_agent(yaml: &str) -> AgentHandle {
    let cfg = AgentConfig::from_yaml_str(yaml).expect("agent test config is valid");
    nowconnect_agent::start(cfg).await.expect("agent starts")
}

/// Starts an agent for `targets` against `relay` and waits until it is READY.
pub async fn ready_agent(
    relay: &RelayHandle,
    protocol: &str,
    targets: &[(&str, SocketAddr)],
) -> AgentHandle {
    let agent = start_agent(&agent_yaml(
        relay.tunnel_addr(),
        "premise-01",
        protocol,
        targets,
    ))
    .await;
    wait_health(agent.health_addr(), "READY\n").await;
    agent
}

/// What the agent's health port says right now (`OK\n`, `READY\n`), or "" if it is not reachable.
pub async fn health(addr: SocketAddr) -> String {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
    else {
        return String::new();
    };
    let mut out = String::new();
    match tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await {
        Ok(Ok(_)) => out,
        _ => String::new(),
    }
}

pub async fn wait_health(addr: SocketAddr, want: &str) {
    wait_until(&format!("health {want:?}"), DEADLINE, || async {
        health(addr).await == want
    })
    .await;
}

pub fn listener(relay: &RelayHandle, name: &str) -> SocketAddr {
    relay
        .listener_addr(name)
        .unwrap_or_else(|| panic!("relay has a listener named {name}"))
}

/// A port on which nothing listens (bound then released).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

/// Echo target: writes back everything, then half-closes after the peer's EOF.
pub async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
    serve(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Accept loop on 127.0.0.1:0 calling `f` for every connection.
pub async fn serve<F, Fut>(f: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let addr = l.local_addr().expect("addr");
    let f = Arc::new(f);
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(f(s));
        }
    });
    (addr, task)
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Writes `len` seeded random bytes in 64 KiB chunks, then shuts down the write side.
/// Returns the SHA-256 of what was written.
pub async fn send_random<W: AsyncWriteExt + Unpin>(w: &mut W, seed: u64, len: usize) -> [u8; 32] {
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
pub async fn recv_hash<R: AsyncReadExt + Unpin>(r: &mut R) -> (usize, [u8; 32]) {
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

/// Waits until the peer closes `s` (EOF or reset), failing after `deadline`; returns the wait.
pub async fn wait_closed(s: &mut TcpStream, deadline: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + deadline).into(), s.read(&mut buf)).await {
            Err(_) => panic!("socket still open after {deadline:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
        }
    }
}

/// Connects to `addr` and waits until the relay closes the connection. A reset that lands before
/// the connect completes (the relay closes refused clients with RST) counts as closed at once.
pub async fn connect_and_wait_closed(addr: SocketAddr, deadline: Duration) -> Duration {
    let start = Instant::now();
    match TcpStream::connect(addr).await {
        Ok(mut s) => start.elapsed() + wait_closed(&mut s, deadline).await,
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ),
                "connect to {addr} failed with {e}, not with the relay's reset"
            );
            start.elapsed()
        }
    }
}

/// Target that writes as fast as it can (up to `cap` bytes) and counts what the kernel accepted.
pub async fn firehose(cap: u64) -> (SocketAddr, Arc<AtomicU64>) {
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let (addr, _task) = serve(move |mut s| {
        let counter = counter.clone();
        async move {
            let chunk = vec![0x5au8; 64 * 1024];
            while counter.load(Ordering::Relaxed) < cap {
                match s.write(&chunk).await {
                    Ok(n) if n > 0 => {
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
        }
    })
    .await;
    (addr, written)
}
