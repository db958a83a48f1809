//! The client side of every TCP workload: bulk up/down, ping-pong, held idle connections.
//!
//! Each function takes the address to hit (a target for `direct`, a relay listener for the
//! tunnel) and is bounded by a count and a wall-clock deadline.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::targets::{SinkReport, BULK_CHUNK};

/// Socket timeout for anything that should answer promptly on loopback.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Result of a bulk transfer.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    pub bytes: u64,
    pub secs: f64,
}

impl Bulk {
    pub fn gbit_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.bytes as f64 * 8.0 / self.secs / 1e9
        } else {
            f64::NAN
        }
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// `streams` parallel uploads to the sink behind `addr`, each for `secs` or `cap` bytes.
/// Throughput counts bytes the sink received, from the first connect to the last EOF the sink
/// saw (so bytes still buffered in the tunnel when the client stops are waited for).
pub fn upload(
    addr: SocketAddr,
    streams: usize,
    secs: f64,
    cap: u64,
    reports: &mpsc::Receiver<SinkReport>,
) -> anyhow::Result<Bulk> {
    while reports.try_recv().is_ok() {} // leftovers of an earlier run
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let clients: Vec<_> = (0..streams)
        .map(|_| {
            std::thread::spawn(move || -> io::Result<u64> {
                let mut s = connect(addr)?;
                let chunk = vec![0xa5u8; BULK_CHUNK];
                let mut sent = 0u64;
                while sent < cap && Instant::now() < end {
                    s.write_all(&chunk)?;
                    sent += chunk.len() as u64;
                }
                s.shutdown(Shutdown::Write)?;
                // The sink closes after our EOF: wait for it so no byte is cut.
                let mut b = [0u8; 64];
                while s.read(&mut b)? > 0 {}
                Ok(sent)
            })
        })
        .collect();
    let mut sent = 0u64;
    for c in clients {
        match c.join() {
            Ok(Ok(n)) => sent += n,
            Ok(Err(e)) => bail!("upload client failed: {e}"),
            Err(_) => bail!("upload client panicked"),
        }
    }
    let mut received = 0u64;
    let mut last = start;
    for _ in 0..streams {
        let r = reports
            .recv_timeout(IO_TIMEOUT)
            .context("the sink did not report every stream")?;
        received += r.bytes;
        last = last.max(r.eof_at);
    }
    if received != sent {
        bail!("sink received {received} bytes, clients sent {sent}");
    }
    Ok(Bulk {
        bytes: received,
        secs: (last - start).as_secs_f64(),
    })
}

/// `streams` parallel downloads from the source behind `addr` (it sends for its configured
/// time); throughput from the first connect to the last EOF.
pub fn download(addr: SocketAddr, streams: usize, max_secs: f64) -> anyhow::Result<Bulk> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(max_secs);
    let clients: Vec<_> = (0..streams)
        .map(|_| {
            std::thread::spawn(move || -> io::Result<(u64, Instant)> {
                let mut s = connect(addr)?;
                let mut buf = vec![0u8; BULK_CHUNK];
                let mut got = 0u64;
                loop {
                    if Instant::now() > deadline {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "download deadline"));
                    }
                    match s.read(&mut buf)? {
                        0 => return Ok((got, Instant::now())),
                        n => got += n as u64,
                    }
                }
            })
        })
        .collect();
    let mut bytes = 0;
    let mut last = start;
    for c in clients {
        match c.join() {
            Ok(Ok((n, at))) => {
                bytes += n;
                last = last.max(at);
            }
            Ok(Err(e)) => bail!("download client failed: {e}"),
            Err(_) => bail!("download client panicked"),
        }
    }
    Ok(Bulk {
        bytes,
        secs: (last - start).as_secs_f64(),
    })
}

/// `count` round trips of `size` bytes on one connection to an echo server (after `warmup`
/// unrecorded ones), stopping at `max_secs`. Returns round-trip times in microseconds.
pub fn pingpong(
    addr: SocketAddr,
    size: usize,
    count: usize,
    warmup: usize,
    max_secs: f64,
) -> anyhow::Result<Vec<f64>> {
    let mut s = connect(addr).context("ping-pong connect")?;
    let req = vec![0x5au8; size];
    let mut resp = vec![0u8; size];
    let deadline = Instant::now() + Duration::from_secs_f64(max_secs);
    let mut rtts = Vec::with_capacity(count);
    for i in 0..warmup + count {
        if Instant::now() > deadline {
            break;
        }
        let t = Instant::now();
        s.write_all(&req).context("ping-pong write")?;
        s.read_exact(&mut resp).context("ping-pong read")?;
        if i >= warmup {
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    if rtts.len() < count {
        eprintln!(
            "  ping-pong {addr}: only {} of {count} round trips within {max_secs} s",
            rtts.len()
        );
    }
    Ok(rtts)
}

/// Idle connections held open by [`hold`].
#[derive(Debug)]
pub struct Held {
    pub conns: Vec<TcpStream>,
    /// Connect + first echoed byte, microseconds, one per connection.
    pub setup_us: Vec<f64>,
    pub failures: usize,
}

impl Held {
    /// One more 1-byte round trip on every connection; returns how many answered.
    pub fn verify(&mut self) -> usize {
        let mut b = [0u8; 1];
        let mut alive = 0;
        for s in &mut self.conns {
            if s.write_all(b"y").is_ok() && s.read_exact(&mut b).is_ok() {
                alive += 1;
            }
        }
        alive
    }
}

/// Opens `n` connections to an echo server one after the other, each verified by a 1-byte
/// round trip, within `max_secs` overall.
pub fn hold(addr: SocketAddr, n: usize, max_secs: f64) -> Held {
    let deadline = Instant::now() + Duration::from_secs_f64(max_secs);
    let mut held = Held {
        conns: Vec::with_capacity(n),
        setup_us: Vec::with_capacity(n),
        failures: 0,
    };
    for _ in 0..n {
        if Instant::now() > deadline {
            held.failures += 1;
            continue;
        }
        let t = Instant::now();
        let r = (|| -> io::Result<TcpStream> {
            let mut s = connect(addr)?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            Ok(s)
        })();
        match r {
            Ok(s) => {
                held.setup_us.push(t.elapsed().as_secs_f64() * 1e6);
                held.conns.push(s);
            }
            Err(_) => held.failures += 1,
        }
    }
    held
}

/// One round trip through a fresh connection: is the path up?
pub fn probe(addr: SocketAddr) -> anyhow::Result<()> {
    let mut s = connect(addr)?;
    s.write_all(b"probe")?;
    let mut b = [0u8; 5];
    s.read_exact(&mut b)?;
    if &b != b"probe" {
        bail!("echo through {addr} returned different bytes");
    }
    Ok(())
}
