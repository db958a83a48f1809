//! Tunnel shards: a few current-thread runtimes, each on a thread of its own.
//!
//! One tunnel's tasks hand every chunk to one another: the stream task reads a client and
//! queues a frame for the writer task, the session task reads the WebSocket and wakes stream
//! tasks. On tokio's multi-thread runtime those tasks sit on different workers, and each
//! hand-off is a cross-thread wake-up (a futex call and a context switch). The relay therefore
//! places each accepted HTTP connection (and so each tunnel) on one shard; the session, writer
//! and stream tasks it spawns stay on that shard, and a hand-off is a plain task wake-up on the
//! same thread. Tunnels spread across shards, so several agents still use every core.
//!
//! Listeners, JWKS refresh and the supervisor stay on the runtime that called
//! [`crate::start_sharded`]. Client sockets accepted there are registered again with the
//! tunnel's shard before their stream task starts (`tunnel.rs`).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The shards of one relay process.
#[derive(Debug)]
pub struct Shards {
    shards: Vec<Shard>,
    stop: CancellationToken,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shard {
    handle: Handle,
    /// HTTP connections (tunnels among them) currently placed here.
    live: Arc<AtomicUsize>,
}

/// A connection's place on a shard; frees it when dropped.
#[derive(Debug)]
pub(crate) struct Placement {
    live: Arc<AtomicUsize>,
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shards {
    /// Starts `n` shards (at least one), each a current-thread runtime with I/O and timers,
    /// on a thread named `nc-shard-N`.
    pub fn start(n: usize) -> io::Result<Arc<Shards>> {
        let stop = CancellationToken::new();
        let mut shards = Vec::with_capacity(n.max(1));
        let mut threads = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            shards.push(Shard {
                handle: rt.handle().clone(),
                live: Arc::new(AtomicUsize::new(0)),
            });
            let token = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("nc-shard-{i}"))
                .spawn(move || rt.block_on(token.cancelled()));
            match thread {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop.cancel();
                    return Err(e);
                }
            }
        }
        Ok(Arc::new(Shards {
            shards,
            stop,
            threads: Mutex::new(threads),
        }))
    }

    /// How many shards run.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Never true: there is always at least one shard.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The shard with the fewest live connections, and the connection's place on it.
    pub(crate) fn place(&self) -> (Handle, Placement) {
        let shard = self
            .shards
            .iter()
            .min_by_key(|s| s.live.load(Ordering::Relaxed))
            .unwrap_or(&self.shards[0]);
        shard.live.fetch_add(1, Ordering::Relaxed);
        let placement = Placement {
            live: shard.live.clone(),
        };
        (shard.handle.clone(), placement)
    }

    /// Stops every shard (tasks still on them are dropped) and waits for their threads.
    /// Call it once the relay has stopped.
    pub fn stop(&self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_busy_shard() {
        let shards = Shards::start(2).expect("shards start");
        assert_eq!(shards.len(), 2);
        let (h1, p1) = shards.place();
        let (h2, p2) = shards.place();
        assert_ne!(
            h1.id(),
            h2.id(),
            "the second connection goes to the idle shard"
        );
        drop(p1);
        let (h3, _p3) = shards.place();
        assert_eq!(h3.id(), h1.id(), "a freed place is reused first");
        drop(p2);
        // Tasks run on the shard's own thread.
        let name = h3
            .block_on(async {
                tokio::spawn(async { std::thread::current().name().map(str::to_owned) }).await
            })
            .expect("task runs");
        assert!(
            name.is_some_and(|n| n.starts_with("nc-shard-")),
            "spawned on a shard thread"
        );
        shards.stop();
    }
}
