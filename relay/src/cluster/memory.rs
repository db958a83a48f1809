//! The directory in this process's memory: [`super::table::Table`] behind a lock, on tokio's
//! clock (so a paused test clock expires entries). Two relays started in one test process with
//! the same [`MemoryDirectory`] form one service without Redis.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::directory::{ClaimReq, DirFuture, Directory, Listing, RelayEntry};
use super::table::Table;

/// An in-memory directory; clones share it (pass one to several relays through
/// [`crate::Prebound::directory`]).
#[derive(Debug, Clone)]
pub struct MemoryDirectory {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    table: Mutex<Table>,
    origin: Instant,
}

impl Default for MemoryDirectory {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryDirectory {
    pub fn new() -> MemoryDirectory {
        MemoryDirectory {
            inner: Arc::new(Inner {
                table: Mutex::new(Table::default()),
                origin: Instant::now(),
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Table, u64) -> T) -> T {
        let now = u64::try_from(self.inner.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut t: MutexGuard<'_, Table> =
            self.inner.table.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut t, now)
    }

    /// `(relay, epoch)` of the agent's live owner entry (for tests).
    pub fn owner_of(&self, agent_id: &str) -> Option<(String, u64)> {
        self.with(|t, now| {
            t.load(now)
                .owners
                .into_iter()
                .find(|o| o.agent_id == agent_id)
                .map(|o| (o.relay_id, o.epoch))
        })
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> DirFuture<'a, T> {
    Box::pin(std::future::ready(Ok(v)))
}

impl Directory for MemoryDirectory {
    fn claim<'a>(&'a self, req: &'a ClaimReq) -> DirFuture<'a, Option<u64>> {
        ready(self.with(|t, now| t.claim(req, now)))
    }

    fn refresh<'a>(
        &'a self,
        agent_id: &'a str,
        relay_id: &'a str,
        epoch: u64,
        ttl: Duration,
    ) -> DirFuture<'a, bool> {
        ready(self.with(|t, now| t.refresh(agent_id, relay_id, epoch, ttl, now)))
    }

    fn release<'a>(
        &'a self,
        agent_id: &'a str,
        relay_id: &'a str,
        epoch: u64,
    ) -> DirFuture<'a, bool> {
        ready(self.with(|t, now| t.release(agent_id, relay_id, epoch, now)))
    }

    fn announce<'a>(&'a self, relay: &'a RelayEntry, ttl: Duration) -> DirFuture<'a, ()> {
        self.with(|t, now| t.announce(relay, ttl, now));
        ready(())
    }

    fn withdraw<'a>(&'a self, relay_id: &'a str) -> DirFuture<'a, ()> {
        self.with(|t, _| t.withdraw(relay_id));
        ready(())
    }

    fn load(&self) -> DirFuture<'_, Listing> {
        ready(self.with(|t, now| t.load(now)))
    }

    fn sweep(&self) -> DirFuture<'_, usize> {
        ready(self.with(|t, now| t.sweep(now)))
    }
}
