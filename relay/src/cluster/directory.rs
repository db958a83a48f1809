//! The cluster directory: which relay holds which agent (with its epoch, the fencing token) and
//! where every relay serves `/mesh`. One trait, two implementations: [`super::memory`] (one
//! process, tests) and [`super::redis`] (the service).
//!
//! The rules every implementation follows (the model in [`super::table`] is the reference the
//! Redis scripts mirror):
//! - an agent's epoch only grows; a claim always gets a new, larger epoch;
//! - an agent has at most one owner entry, naming the relay and the epoch it claimed;
//! - refreshing or releasing an entry succeeds only while it still names that relay and epoch,
//!   so a superseded, released or expired claim never comes back (re-claiming gives a new epoch);
//! - entries expire unless refreshed within their TTL; a relay's entry likewise.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use thiserror::Error;

/// Why a directory operation failed (the directory is unreachable or answered nonsense).
#[derive(Debug, Error)]
pub(crate) enum DirError {
    #[error("registry unreachable: {0}")]
    Unreachable(String),
    #[error("registry answered something unexpected: {0}")]
    Protocol(String),
}

pub(crate) type DirFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DirError>> + Send + 'a>>;

/// What a claim is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimKind {
    /// A new HELLO: take the agent, superseding any owner. The new epoch is above `floor`
    /// too (the newest epoch this relay has seen, so a directory that lost its data, such as a
    /// Redis restarted empty, never hands out an epoch again).
    Take { floor: u64 },
    /// This relay's tunnel still serves the agent but its entry is gone (expired, or the
    /// directory lost it): keep `held` if the entry is still ours, else claim anew unless
    /// another relay holds the agent now (then the claim is refused: superseded).
    Keep { held: u64 },
}

/// A claim on one agent by one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimReq {
    pub agent_id: String,
    pub relay_id: String,
    /// The connectors the agent exports here (what other relays route to it).
    pub connectors: Vec<String>,
    pub ttl: Duration,
    pub kind: ClaimKind,
}

/// One agent's owner entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    pub agent_id: String,
    pub relay_id: String,
    pub epoch: u64,
    pub connectors: Vec<String>,
}

/// A live relay of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelayEntry {
    pub replica_id: String,
    /// Where it serves `/mesh`; empty when it has not said (then only a static peer reaches it).
    pub mesh_url: String,
}

/// The whole directory at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    /// Live owner entries.
    pub owners: Vec<Owner>,
    /// Every known agent's newest epoch (with or without a live owner).
    pub epochs: Vec<(String, u64)>,
    /// Live relays (this one included).
    pub relays: Vec<RelayEntry>,
}

/// Agents and relays one listing holds at most (a bound on what a load allocates).
pub(crate) const MAX_LISTED: usize = 100_000;

/// The directory of the service.
pub(crate) trait Directory: Send + Sync + fmt::Debug {
    /// Claims an agent; `Ok(Some(epoch))`, or `Ok(None)` when [`ClaimKind::Keep`] finds
    /// another relay holding it.
    fn claim<'a>(&'a self, req: &'a ClaimReq) -> DirFuture<'a, Option<u64>>;
    /// Extends the entry's TTL if it still names `relay_id` and `epoch`; false: it does not.
    fn refresh<'a>(
        &'a self,
        agent_id: &'a str,
        relay_id: &'a str,
        epoch: u64,
        ttl: Duration,
    ) -> DirFuture<'a, bool>;
    /// Removes the entry if it still names `relay_id` and `epoch`.
    fn release<'a>(
        &'a self,
        agent_id: &'a str,
        relay_id: &'a str,
        epoch: u64,
    ) -> DirFuture<'a, bool>;
    /// Publishes (or refreshes) this relay's entry for `ttl`.
    fn announce<'a>(&'a self, relay: &'a RelayEntry, ttl: Duration) -> DirFuture<'a, ()>;
    /// Removes this relay's entry (graceful stop).
    fn withdraw<'a>(&'a self, relay_id: &'a str) -> DirFuture<'a, ()>;
    /// Everything live now.
    fn load(&self) -> DirFuture<'_, Listing>;
    /// Clears what dead relays left: index entries of expired owners and relays, and owner
    /// entries naming a relay whose own entry has expired. Returns how many were cleared.
    fn sweep(&self) -> DirFuture<'_, usize>;
}
