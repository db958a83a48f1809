//! The health port: every connection gets `OK\n` (tunnel not acknowledged) or `READY\n`
//! (HELLO_ACK received, tunnel up), then the socket is closed. Nothing is read or parsed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the agent reports about its tunnel: READY while at least one tunnel has its HELLO_ACK
/// (during a token refresh the old and the new tunnel overlap, so READY never flickers), the
/// count of tunnels established, how often READY was lost, and the last dial failure.
#[derive(Debug, Clone, Default)]
pub struct HealthState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// What `ready_since_ms` counts from.
    born: Instant,
    /// Milliseconds from `born` to the latest time `ready` rose from 0 (READY began).
    ready_since_ms: AtomicU64,
    /// Tunnels between HELLO_ACK and their end; one [`ReadyGuard`] each.
    ready: AtomicUsize,
    /// HELLO_ACKs received since start.
    connects: AtomicU64,
    /// Times `ready` fell to 0 (READY turned into OK): every transition is counted, however
    /// short, which sampling the health port cannot promise.
    ready_lost: AtomicU64,
    /// Streams open on every tunnel; the sum of the [`StreamGauge`]s.
    streams: AtomicUsize,
    /// One line: why the last attempt failed (cleared by the next HELLO_ACK).
    last_error: Mutex<Option<String>>,
}

impl Default for Inner {
    fn default() -> Inner {
        Inner {
            born: Instant::now(),
            ready_since_ms: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            connects: AtomicU64::new(0),
            ready_lost: AtomicU64::new(0),
            streams: AtomicUsize::new(0),
            last_error: Mutex::new(None),
        }
    }
}

/// Held by a tunnel from HELLO_ACK to its end; dropping it takes its READY back.
#[derive(Debug)]
pub struct ReadyGuard(Arc<Inner>);

impl Drop for ReadyGuard {
    fn drop(&mut self) {
        if self.0.ready.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.ready_lost.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// One tunnel's open streams, counted into the agent's total; dropping it takes them back.
#[derive(Debug)]
pub struct StreamGauge {
    inner: Arc<Inner>,
    /// What this tunnel has added to the total.
    mine: usize,
}

impl StreamGauge {
    /// This tunnel now has `n` streams open.
    pub fn set(&mut self, n: usize) {
        if n > self.mine {
            self.inner
                .streams
                .fetch_add(n - self.mine, Ordering::Relaxed);
        } else if n < self.mine {
            self.inner
                .streams
                .fetch_sub(self.mine - n, Ordering::Relaxed);
        }
        self.mine = n;
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.set(0);
    }
}

impl HealthState {
    /// A tunnel got its HELLO_ACK: READY until the guard is dropped; clears the last error.
    pub fn ready_guard(&self) -> ReadyGuard {
        if self.inner.ready.fetch_add(1, Ordering::AcqRel) == 0 {
            let ms = self.inner.born.elapsed().as_millis() as u64;
            self.inner.ready_since_ms.store(ms, Ordering::Release);
        }
        self.inner.connects.fetch_add(1, Ordering::Relaxed);
        *self.lock_error() = None;
        ReadyGuard(self.inner.clone())
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire) > 0
    }

    /// How long the agent has been READY without a break (an overlapping refresh is no
    /// break); `None` while not READY.
    pub fn ready_for(&self) -> Option<Duration> {
        if !self.is_ready() {
            return None;
        }
        let since = Duration::from_millis(self.inner.ready_since_ms.load(Ordering::Acquire));
        Some(self.inner.born.elapsed().saturating_sub(since))
    }

    /// Tunnels established (HELLO_ACK) since start.
    pub fn connects(&self) -> u64 {
        self.inner.connects.load(Ordering::Relaxed)
    }

    /// How many times READY was lost (the last READY tunnel ended) since start.
    pub fn ready_lost(&self) -> u64 {
        self.inner.ready_lost.load(Ordering::Acquire)
    }

    /// A gauge for one tunnel's streams (starts at 0).
    pub fn stream_gauge(&self) -> StreamGauge {
        StreamGauge {
            inner: self.inner.clone(),
            mine: 0,
        }
    }

    /// Streams open right now, on every tunnel.
    pub fn streams(&self) -> usize {
        self.inner.streams.load(Ordering::Relaxed)
    }

    /// Records why an attempt failed (one line, no secrets: callers pass error `Display`s).
    pub fn set_error(&self, line: String) {
        *self.lock_error() = Some(line);
    }

    pub fn last_error(&self) -> Option<String> {
        self.lock_error().clone()
    }

    fn lock_error(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // Nothing panics while holding it; recover the value if something ever did.
        self.inner
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn answer(&self) -> &'static [u8] {
        if self.is_ready() {
            b"READY\n"
        } else {
            b"OK\n"
        }
    }
}

/// Most health connections answered at once; more wait in the listen backlog.
const MAX_CONCURRENT: usize = 32;
/// How long we wait for a prober to close after our answer (so it never sees a reset).
const LINGER: Duration = Duration::from_secs(1);

/// Serves the health port until `cancel`.
pub async fn serve(listener: TcpListener, state: HealthState, cancel: CancellationToken) {
    crate::accept::serve_bounded(
        listener,
        MAX_CONCURRENT,
        LINGER,
        "health",
        cancel,
        move |sock| respond(sock, state.answer()),
    )
    .await;
}

async fn respond(mut sock: TcpStream, answer: &[u8]) -> std::io::Result<()> {
    sock.write_all(answer).await?;
    sock.shutdown().await?;
    // Drain whatever the prober sent (an HTTP GET, say) so closing does not reset the socket
    // before it has read our answer.
    let mut sink = [0u8; 256];
    while sock.read(&mut sink).await? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_lost_only_when_the_last_guard_goes() {
        let h = HealthState::default();
        let old = h.ready_guard();
        // A refresh: the new tunnel is READY before the old one ends.
        let new = h.ready_guard();
        drop(old);
        assert!(h.is_ready());
        assert_eq!(h.ready_lost(), 0);
        drop(new);
        assert!(!h.is_ready());
        assert_eq!(h.ready_lost(), 1);
        assert_eq!(h.ready_for(), None);
        let g = h.ready_guard();
        assert!(h.ready_for().is_some_and(|d| d < Duration::from_secs(60)));
        drop(g);
        assert_eq!((h.ready_lost(), h.connects()), (2, 3));
    }

    #[test]
    fn stream_gauges_add_up_and_give_back_on_drop() {
        let h = HealthState::default();
        let mut a = h.stream_gauge();
        let mut b = h.stream_gauge();
        a.set(3);
        b.set(2);
        assert_eq!(h.streams(), 5);
        a.set(1);
        assert_eq!(h.streams(), 3);
        drop(b);
        assert_eq!(h.streams(), 1);
        drop(a);
        assert_eq!(h.streams(), 0);
    }
}
