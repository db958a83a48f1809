//! What a mesh link's core and its bridge tasks hand each other: the link's shared context,
//! stream keys, and the messages in both directions. A leaf below `link`, `bridge` and
//! `owner`, so none of them imports another for these types.

use std::sync::Arc;

use bytes::Bytes;
use nowconnect_shared::{binary, Frame, Limits};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Core;

/// What the bridges of one link share.
#[derive(Debug)]
pub(super) struct LinkCtx {
    pub peer: Arc<str>,
    /// DATA, FIN, bridge RST (encoded v2 frames), bounded.
    pub data: mpsc::Sender<Bytes>,
    /// WINDOW, FORWARD, core RST; bounded (`link::CTRL_QUEUE`): full ends the link.
    pub ctrl: mpsc::Sender<Bytes>,
    pub events: mpsc::UnboundedSender<Event>,
    /// Stream bytes this relay may have in flight on the link.
    pub inflight: Arc<Semaphore>,
    /// Cancelled when the link ends: every bridge resets its socket.
    pub token: CancellationToken,
    pub max_payload: usize,
    pub core: Arc<Core>,
}

impl LinkCtx {
    /// Queues a control frame; a frame that does not encode is our bug and only logged. A
    /// full control queue means the peer provokes answers faster than it reads them (refused
    /// FORWARDs answer with RSTs of streams that never enter the table): the link ends.
    pub fn ctrl(&self, f: &Frame) {
        let _ = self.try_ctrl(f);
    }

    /// As [`LinkCtx::ctrl`]; false when `f` does not encode (nothing was queued).
    pub fn try_ctrl(&self, f: &Frame) -> bool {
        match binary::encode_to_bytes(f, &Limits::default()) {
            Ok(b) => {
                if let Err(mpsc::error::TrySendError::Full(_)) = self.ctrl.try_send(b) {
                    warn!(peer = %self.peer, "mesh peer does not read its answers; closing the link");
                    self.token.cancel();
                }
                true
            }
            Err(e) => {
                warn!(peer = %self.peer, error = %e, "mesh frame does not encode");
                false
            }
        }
    }
}

/// Names one bridge task: a later stream may reuse the id while its last events are queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key {
    pub id: u32,
    pub serial: u64,
}

/// From bridges to the core.
#[derive(Debug)]
pub(super) enum Event {
    /// `bytes` of peer data written to the socket, finishing `frames` DATA frames.
    Drained {
        key: Key,
        bytes: usize,
        frames: usize,
    },
    /// The bridge ended.
    Closed(Key),
}

/// The core's handle on one bridge.
#[derive(Debug)]
pub(super) struct Handle {
    pub serial: u64,
    pub tx: mpsc::UnboundedSender<ToBridge>,
}

/// From the link's core to a bridge.
#[derive(Debug)]
pub(super) enum ToBridge {
    /// Peer bytes for the socket (already charged to the receive window).
    Data(Bytes),
    /// Send credit (WINDOW).
    Window(u32),
    /// Every byte before the peer's FIN is written: shut the socket's write side.
    ShutWrite,
    /// The stream is over (peer RST, link lost): close the socket as a reset.
    Abort,
}
