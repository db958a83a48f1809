//! A WAN link in userspace (netem is not available where we bench): a TCP forwarder on
//! 127.0.0.1:0 that sends each accepted connection on to one upstream address, with a fixed
//! one-way delay and a rate cap applied to each direction on its own.
//!
//! Each direction is a reader thread and a writer thread around a [`Pipe`]: the reader stamps
//! each chunk when it arrives, the writer releases it at [`release_at`] (no earlier than arrival +
//! delay, no faster than the rate). The pipe is bounded in bytes: what the line holds (rate x
//! delay) plus a bottleneck buffer; when it is full the reader stops reading, so the sender sees
//! TCP backpressure instead of loss.
//!
//! What it is not: an end-to-end TCP path. It is a split proxy, and both TCP legs run on
//! loopback, so the kernel's TCP windows never see the delay. Only flow control above TCP, whose
//! credit updates cross the link (the tunnel's per-stream windows), does. That is the point of
//! the `wan` workload: plain TCP through this link is what a tunnel without per-stream flow
//! control could reach.
//!
//! What this module must never do: bind anything but loopback port 0, wait without a bound once
//! the connection or the emulator is gone, or leave a thread behind (dropping [`Wan`] shuts every
//! connection down and joins every thread).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Largest read (one chunk on the line).
const CHUNK: usize = 64 * 1024;
/// Smallest bottleneck buffer, whatever the bandwidth-delay product.
const MIN_BUFFER: u64 = 256 * 1024;
/// Longest a blocked reader or an idle writer sleeps before it looks at the stop flag again.
const POLL: Duration = Duration::from_millis(100);
/// Connecting to the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Stack of the connection threads (their buffers are on the heap).
const STACK: usize = 128 * 1024;

/// One link, applied to each direction independently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WanLink {
    pub one_way_delay: Duration,
    /// Rate cap of each direction, bits per second (> 0).
    pub rate_bps: u64,
}

impl WanLink {
    pub fn rtt(&self) -> Duration {
        self.one_way_delay * 2
    }

    pub fn mbit(&self) -> f64 {
        self.rate_bps as f64 / 1e6
    }

    /// Bytes on the line in one direction: rate x one-way delay.
    pub fn line_bytes(&self) -> u64 {
        let b = u128::from(self.rate_bps) * self.one_way_delay.as_nanos() / 8 / 1_000_000_000;
        u64::try_from(b).unwrap_or(u64::MAX)
    }

    /// Bound of one direction's pipe: the line plus a bottleneck buffer of one round trip's
    /// worth (the BDP), at least [`MIN_BUFFER`].
    pub fn pipe_bytes(&self) -> u64 {
        let bdp = self.line_bytes().saturating_mul(2);
        self.line_bytes().saturating_add(bdp.max(MIN_BUFFER))
    }

    /// Time `len` bytes take on the wire at the rate.
    fn serialize(&self, len: usize) -> Duration {
        let nanos = (len as u128 * 8 * 1_000_000_000) / u128::from(self.rate_bps.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// When a chunk of `len` bytes that arrived at `arrival` leaves: not before it has crossed the
/// line, and not before the previous chunk (released at `prev`) plus its own time on the wire.
/// Scheduled, not measured: a writer that oversleeps (or waited on a slow receiver) catches up
/// with chunks that have already crossed the line, so the average rate is the cap, not less.
pub fn release_at(link: &WanLink, arrival: Instant, prev: Option<Instant>, len: usize) -> Instant {
    let crossed = arrival + link.one_way_delay;
    match prev {
        Some(p) => crossed.max(p + link.serialize(len)),
        None => crossed,
    }
}

/// A running emulator; dropping it ends every connection and joins every thread.
#[derive(Debug)]
pub struct Wan {
    pub addr: SocketAddr,
    pub link: WanLink,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// What the emulator, its accept thread and its connections share.
#[derive(Debug, Default)]
struct Shared {
    /// Set once, by drop; every wait loop looks at it at least every [`POLL`].
    stop: AtomicBool,
    /// Both sockets of each live connection, so drop can shut them down (which wakes blocked
    /// reads and writes). A connection registers only while `stopped` is false, under this lock,
    /// so none can start after drop's sweep.
    live: Mutex<Live>,
}

#[derive(Debug, Default)]
struct Live {
    stopped: bool,
    next_id: u64,
    conns: HashMap<u64, [TcpStream; 2]>,
}

impl Shared {
    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection's sockets; None once the emulator is stopping.
    fn register(&self, a: &TcpStream, b: &TcpStream) -> Option<u64> {
        let (a, b) = (a.try_clone().ok()?, b.try_clone().ok()?);
        let mut live = self.live();
        if live.stopped {
            return None;
        }
        let id = live.next_id;
        live.next_id += 1;
        live.conns.insert(id, [a, b]);
        Some(id)
    }

    fn deregister(&self, id: u64) {
        self.live().conns.remove(&id);
    }
}

impl Wan {
    /// Listens on 127.0.0.1:0 and forwards each connection to `upstream` through `link`.
    pub fn start(link: WanLink, upstream: SocketAddr) -> anyhow::Result<Wan> {
        anyhow::ensure!(link.rate_bps >= 1000, "WAN rate must be at least 1 kbit/s");
        let l = TcpListener::bind("127.0.0.1:0").context("binding the WAN emulator")?;
        let addr = l.local_addr()?;
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("wan-accept".into())
            .spawn(move || accept_loop(l, upstream, link, &sh))
            .context("spawning the WAN accept thread")?;
        Ok(Wan {
            addr,
            link,
            shared,
            accept: Some(accept),
        })
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        {
            let mut live = self.shared.live();
            live.stopped = true;
            for [a, b] in live.conns.values() {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
        }
        // Wake the blocking accept so the thread sees the flag; it joins the connections.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(l: TcpListener, upstream: SocketAddr, link: WanLink, shared: &Arc<Shared>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    for conn in l.incoming() {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        conns.retain(|c| !c.is_finished());
        let Ok(client) = conn else { continue };
        let sh = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("wan-conn".into())
            .stack_size(STACK)
            .spawn(move || connection(client, upstream, link, &sh));
        // Out of threads: the connection is dropped, the client sees it closed.
        if let Ok(c) = spawned {
            conns.push(c);
        }
    }
    // Drop has shut every registered socket down: these end promptly.
    for c in conns {
        let _ = c.join();
    }
}

/// One forwarded connection: both directions, until both are done.
fn connection(client: TcpStream, upstream: SocketAddr, link: WanLink, shared: &Shared) {
    let Ok(up) = TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT) else {
        return;
    };
    for s in [&client, &up] {
        let _ = s.set_nodelay(true);
    }
    let Some(id) = shared.register(&client, &up) else {
        return;
    };
    let ends = (client.try_clone(), up.try_clone());
    if let (Ok(client2), Ok(up2)) = ends {
        let (forth, back) = (&Pipe::new(link), &Pipe::new(link));
        let socks = [&client, &up];
        let stop = &shared.stop;
        std::thread::scope(|s| {
            // All four, or none: a reader whose writer never started would wait for room.
            let started = go(s, move || forth.read_from(socks[0], socks, stop))
                && go(s, move || forth.write_to(up2, socks, stop))
                && go(s, move || back.read_from(socks[1], socks, stop))
                && go(s, move || back.write_to(client2, socks, stop));
            if !started {
                forth.end(true);
                back.end(true);
                abort(socks);
            }
        });
    }
    shared.deregister(id);
}

/// Starts `f` on a thread of scope `s`; false when no thread could be made.
fn go<'scope>(s: &'scope std::thread::Scope<'scope, '_>, f: impl FnOnce() + Send + 'scope) -> bool {
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn_scoped(s, f)
        .is_ok()
}

/// Ends the connection on an error: both sockets down, so every thread of it wakes and ends.
fn abort(socks: [&TcpStream; 2]) {
    for s in socks {
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// One direction's queue: chunks in arrival order, bounded in bytes.
#[derive(Debug)]
struct Pipe {
    link: WanLink,
    /// Bytes queued at most ([`WanLink::pipe_bytes`], never below one chunk).
    cap: u64,
    state: Mutex<PipeState>,
    /// Signalled when a chunk is queued, when room is made, and when either side ends.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct PipeState {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    bytes: u64,
    /// The reader saw EOF: the writer half-closes once the queue is empty.
    eof: bool,
    /// Either side failed: the other stops without waiting for the queue.
    broken: bool,
}

impl Pipe {
    fn new(link: WanLink) -> Pipe {
        Pipe {
            link,
            cap: link.pipe_bytes().max(CHUNK as u64),
            state: Mutex::new(PipeState::default()),
            changed: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn end(&self, broken: bool) {
        let mut st = self.state();
        st.eof = true;
        st.broken |= broken;
        drop(st);
        self.changed.notify_all();
    }

    /// Reader: waits for room for a whole chunk before reading, so what sits in the kernel
    /// (unread) is backpressure on the sender, and every queued chunk is stamped on arrival.
    fn read_from(&self, mut from: &TcpStream, socks: [&TcpStream; 2], stop: &AtomicBool) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            {
                let mut st = self.state();
                while st.bytes + CHUNK as u64 > self.cap && !st.broken {
                    if stop.load(Ordering::Relaxed) {
                        return self.end(true);
                    }
                    st = self
                        .changed
                        .wait_timeout(st, POLL)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                if st.broken {
                    return;
                }
            }
            match from.read(&mut buf) {
                Ok(0) => return self.end(false),
                Ok(n) => {
                    let arrival = Instant::now();
                    let mut st = self.state();
                    st.bytes += n as u64;
                    st.chunks.push_back((arrival, buf[..n].to_vec()));
                    drop(st);
                    self.changed.notify_all();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    abort(socks);
                    return self.end(true);
                }
            }
            if stop.load(Ordering::Relaxed) {
                return self.end(true);
            }
        }
    }

    /// Writer: releases each chunk at its [`release_at`]; half-closes `to` after the reader's
    /// EOF once the queue is empty.
    fn write_to(&self, mut to: TcpStream, socks: [&TcpStream; 2], stop: &AtomicBool) {
        let mut prev: Option<Instant> = None;
        loop {
            let (arrival, len) = {
                let mut st = self.state();
                loop {
                    if st.broken || stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Some((at, c)) = st.chunks.front() {
                        break (*at, c.len());
                    }
                    if st.eof {
                        let _ = to.shutdown(Shutdown::Write);
                        return;
                    }
                    st = self
                        .changed
                        .wait_timeout(st, POLL)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            };
            let release = release_at(&self.link, arrival, prev, len);
            // Bounded: at most the delay plus one chunk's time on the wire past `prev`.
            if let Some(wait) = release.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            prev = Some(release);
            // Only this thread pops, so the front is still the chunk looked at above.
            let Some((_, chunk)) = self.state().chunks.pop_front() else {
                return;
            };
            if to.write_all(&chunk).is_err() {
                abort(socks);
                return self.end(true);
            }
            let mut st = self.state();
            st.bytes -= chunk.len() as u64;
            drop(st);
            self.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-connection upstream running `f` on its side of the connection.
    fn upstream(f: impl FnOnce(TcpStream) + Send + 'static) -> (SocketAddr, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let t = std::thread::spawn(move || {
            if let Ok((s, _)) = l.accept() {
                f(s);
            }
        });
        (addr, t)
    }

    fn client(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    }

    #[test]
    fn release_waits_for_the_line_then_for_the_rate() {
        let link = WanLink {
            one_way_delay: Duration::from_millis(10),
            rate_bps: 8_000_000, // 1 byte per microsecond
        };
        let t0 = Instant::now();
        let first = release_at(&link, t0, None, 1000);
        assert_eq!(first, t0 + Duration::from_millis(10));
        // Arrived together: the second leaves one wire time after the first.
        let second = release_at(&link, t0, Some(first), 1000);
        assert_eq!(second, first + Duration::from_micros(1000));
        // Arrived long after: only the delay counts.
        let late = t0 + Duration::from_secs(1);
        assert_eq!(
            release_at(&link, late, Some(second), 1000),
            late + Duration::from_millis(10)
        );
    }

    #[test]
    fn pipe_holds_the_line_and_a_round_trip_of_buffer() {
        let link = WanLink {
            one_way_delay: Duration::from_millis(25),
            rate_bps: 200_000_000,
        };
        assert_eq!(link.line_bytes(), 625_000);
        assert_eq!(link.pipe_bytes(), 625_000 * 3);
        let slow = WanLink {
            one_way_delay: Duration::from_millis(1),
            rate_bps: 1_000_000,
        };
        assert_eq!(slow.pipe_bytes(), 125 + MIN_BUFFER);
    }

    #[test]
    fn round_trip_takes_twice_the_delay() {
        let (up, echo) = upstream(|mut s| {
            let mut b = [0u8; 4];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        });
        let link = WanLink {
            one_way_delay: Duration::from_millis(20),
            rate_bps: 100_000_000,
        };
        let wan = Wan::start(link, up).expect("start");
        let mut c = client(wan.addr);
        let t = Instant::now();
        c.write_all(b"ping").expect("write");
        let mut b = [0u8; 4];
        c.read_exact(&mut b).expect("read");
        let rtt = t.elapsed();
        assert_eq!(&b, b"ping");
        assert!(rtt >= Duration::from_millis(40), "round trip {rtt:?}");
        assert!(rtt < Duration::from_secs(1), "round trip {rtt:?}");
        echo.join().expect("echo");
    }

    #[test]
    fn rate_is_capped_and_eof_passes_through() {
        const BYTES: usize = 4 << 20;
        // Counts to EOF, answers with the count, closes.
        let (up, sink) = upstream(|mut s| {
            let mut buf = vec![0u8; 64 * 1024];
            let mut n = 0u64;
            while let Ok(k) = s.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            let _ = s.write_all(&n.to_be_bytes());
        });
        let link = WanLink {
            one_way_delay: Duration::from_millis(1),
            rate_bps: 50_000_000,
        };
        let wan = Wan::start(link, up).expect("start");
        let mut c = client(wan.addr);
        let data = vec![0x5au8; BYTES];
        let t = Instant::now();
        c.write_all(&data).expect("write");
        c.shutdown(Shutdown::Write).expect("half-close");
        let mut count = [0u8; 8];
        c.read_exact(&mut count).expect("count");
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(u64::from_be_bytes(count), BYTES as u64);
        // 4 MiB at 50 Mbit/s: 0.67 s on the wire.
        assert!(secs >= 0.6, "{secs:.3} s: faster than the link");
        assert!(secs < 1.5, "{secs:.3} s: far slower than the link");
        // The upstream closed after answering: the client sees EOF.
        assert_eq!(c.read(&mut count).expect("eof"), 0);
        sink.join().expect("sink");
    }

    #[test]
    fn drop_ends_open_connections() {
        // An upstream that answers once, then holds the connection until its peer goes away.
        let (up, idle) = upstream(|mut s| {
            let mut b = [0u8; 5];
            if s.read_exact(&mut b).is_err() || s.write_all(b"hi").is_err() {
                return;
            }
            while matches!(s.read(&mut b), Ok(n) if n > 0) {}
        });
        let link = WanLink {
            one_way_delay: Duration::from_millis(5),
            rate_bps: 10_000_000,
        };
        let wan = Wan::start(link, up).expect("start");
        let mut c = client(wan.addr);
        // The whole path is up (the emulator accepted and dialed) before the drop.
        c.write_all(b"hello").expect("write");
        let mut hi = [0u8; 2];
        c.read_exact(&mut hi).expect("answer");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(wan);
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(3))
            .expect("drop joined every thread");
        let mut b = [0u8; 1];
        assert!(
            matches!(c.read(&mut b), Ok(0) | Err(_)),
            "client still open"
        );
        idle.join().expect("upstream saw the close");
    }
}
