//! Several relays as one service (`ha`): who owns which agent, where the other relays are.
//!
//! The data path reads only [`View`], a synchronous snapshot: a listener with no local agent
//! for its connector asks it for a remote owner ([`View::pick_remote`]) and hands the client to
//! the mesh link of that relay. The view is filled by the registry task ([`task`]) from the
//! [`Directory`] (Redis with `ha.mode` shadow or active, or a [`MemoryDirectory`] a test hands
//! in); with HA off no task runs and the view stays empty, so the same code path simply finds
//! no remote owner. The owner relay checks a forwarded stream's epoch against the epoch its own
//! tunnel claimed ([`crate::sessions::TunnelInfo::epoch`]): the view may be stale, the owner's
//! check is what fences.

mod directory;
mod health;
mod memory;
mod redis;
pub(crate) mod run;
mod table;
mod task;
mod view;

pub use memory::MemoryDirectory;
pub(crate) use view::{PeerInfo, Remote, Snapshot, View};
