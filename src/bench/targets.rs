//! Loopback targets behind the agent (and hit directly for the baseline): echo, sink, source.
//!
//! Thread per connection with blocking sockets, like the team harness's `netbench`: no event
//! loop between the kernel and the measurement. Each server stops (and its accept thread ends)
//! when its [`Target`] is dropped; connection threads end with their connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Stack of a connection thread: buffers live on the heap, and the idle-streams workload runs
/// a thousand of these at once.
const CONN_STACK: usize = 64 * 1024;
/// Read/write size of the bulk paths (sink, source, upload client).
pub const BULK_CHUNK: usize = 128 * 1024;

/// A running server; dropping it stops accepting.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve<F>(name: &str, handler: F) -> anyhow::Result<Target>
where
    F: Fn(TcpStream) + Send + Sync + Clone + 'static,
{
    let l =
        TcpListener::bind("127.0.0.1:0").with_context(|| format!("binding the {name} target"))?;
    let addr = l.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread_name = format!("{name}-accept");
    let accept = std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            for conn in l.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(s) = conn else { continue };
                let _ = s.set_nodelay(true);
                let h = handler.clone();
                let spawned = std::thread::Builder::new()
                    .stack_size(CONN_STACK)
                    .spawn(move || h(s));
                if spawned.is_err() {
                    // Out of threads: the connection is dropped, the client sees it closed.
                    continue;
                }
            }
        })
        .context("spawning an accept thread")?;
    Ok(Target {
        addr,
        stop,
        accept: Some(accept),
    })
}

/// Echoes every byte; half-closes after the peer's EOF.
pub fn echo() -> anyhow::Result<Target> {
    serve("echo", |s| {
        if let Ok(back) = s.try_clone() {
            pump(s, back);
        }
    })
}

/// What the sink saw on one connection.
#[derive(Debug, Clone, Copy)]
pub struct SinkReport {
    pub bytes: u64,
    /// When the peer's EOF arrived (all bytes received).
    pub eof_at: Instant,
}

/// Reads and discards until EOF, then reports the byte count on `tx` and closes.
pub fn sink(tx: mpsc::Sender<SinkReport>) -> anyhow::Result<Target> {
    serve("sink", move |mut s| {
        let mut buf = vec![0u8; BULK_CHUNK];
        let mut bytes = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
        let _ = tx.send(SinkReport {
            bytes,
            eof_at: Instant::now(),
        });
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// Writes as fast as the peer takes it for `secs` (from accept) or up to `cap` bytes, then
/// closes.
pub fn source(secs: f64, cap: u64) -> anyhow::Result<Target> {
    serve("source", move |mut s| {
        let chunk = vec![0x5au8; BULK_CHUNK];
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut sent = 0u64;
        while sent < cap && Instant::now() < end {
            match s.write(&chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => sent += n as u64,
            }
        }
        let _ = s.shutdown(Shutdown::Write);
        // Wait for the client to close (bounded) so nothing is reset while still in flight.
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let mut b = [0u8; 64];
        while let Ok(n) = s.read(&mut b) {
            if n == 0 {
                break;
            }
        }
    })
}

/// A plain TCP forwarder to `upstream` (64 KiB reads, blocking writes, a thread per direction):
/// two of these in a row are the floor for any tunnel made of two processes on this machine.
pub fn forwarder(upstream: SocketAddr) -> anyhow::Result<Target> {
    serve("forward", move |client| {
        let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
            return;
        };
        let _ = up.set_nodelay(true);
        let (Ok(client2), Ok(up2)) = (client.try_clone(), up.try_clone()) else {
            return;
        };
        let back = std::thread::Builder::new()
            .stack_size(CONN_STACK)
            .spawn(move || pump(up2, client2));
        pump(client, up);
        if let Ok(t) = back {
            let _ = t.join();
        }
    })
}

/// Copies `from` to `to` until EOF or an error, then half-closes `to`.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
