//! Agent bytes for a client, from the session: written straight into the client socket while
//! nothing of that stream waits (gathered in the session's [`Run`] while the messages already
//! read are handled, then one vectored write), otherwise queued for the stream task, charged to
//! the relay-wide budget; a stream the budget has no room for is reset.

use std::io::IoSlice;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use nowconnect_shared::demux::Drained;
use nowconnect_shared::{Drain, Reset, RstCode, StreamId};
use tokio::time::Instant;
use tracing::warn;

#[cfg(doc)]
use super::coalesce::Run;
use super::coalesce::MAX_FRAMES;
use super::session::Session;
use super::stream::ToStream;
use crate::budget::FRAME_COST;

impl Session {
    /// The client socket took `bytes` of stream `id` (finishing `frames` frames): credit back
    /// to the agent, the window autotuned within the budget, the write side shut after FIN.
    pub(super) fn on_written(&mut self, id: StreamId, bytes: usize, frames: usize) {
        // The window may grow only into what the buffer budget can still take on, and what it
        // grows by is reserved there.
        let window = self.demux.get(id).map_or(0, |s| s.recv.window());
        let room = self.ctx.buffered.window_room(window);
        let now = Instant::now().into_std();
        let at = Drain::at(now, room).with_lead(self.lead.offer(id, now));
        match self.demux.on_written(id, bytes, frames, at) {
            Drained::Unknown => {}
            Drained::Ok(w) => {
                if let Some(slot) = self.demux.get(id) {
                    self.lead.update(id, slot.recv.window(), now);
                }
                self.reserve_growth(id);
                if let Some(window) = w.window {
                    self.send_ctrl(window);
                }
                if w.shutdown {
                    if let Some(slot) = self.demux.get(id) {
                        let _ = slot.handle.tx.send(ToStream::ShutWrite);
                    }
                }
            }
            Drained::Reset { rst, handle } => self.reset_sent(rst, RstCode::Other, handle),
        }
    }

    /// Reserves on the budget what stream `id`'s receive window grew by, less what of it
    /// already waits for the client: those bytes are charged on their own ([`Session::enqueue`])
    /// and came in under this window, so no byte counts twice while a client reads slowly.
    fn reserve_growth(&mut self, id: StreamId) {
        let base = self.demux.params().window;
        if let Some(slot) = self.demux.get_mut(id) {
            let grown = usize::try_from(slot.recv.window().saturating_sub(base))
                .unwrap_or(usize::MAX)
                .saturating_sub(slot.recv.buffered());
            // A race with another tunnel can refuse it: the window is granted already, so it
            // just goes unreserved until it shrinks.
            let _ = slot.handle.grown.resize(grown);
        }
    }

    /// Agent bytes for a client: into the socket while nothing of the stream waits (held in the
    /// session's [`Run`] until the messages already read are handled, then written in one go),
    /// otherwise to the stream task behind what it holds.
    pub(super) fn deliver(&mut self, id: StreamId, payload: Bytes) {
        if self.run.must_write_before(id) {
            self.write_run();
        }
        // Nothing waits but this payload and the run's: it may go straight to the socket.
        let direct = self
            .demux
            .get(id)
            .is_some_and(|slot| slot.recv.buffered() == self.run.held_for(id) + payload.len());
        if direct {
            self.run.push(id, payload);
        } else {
            self.enqueue(id, payload);
        }
    }

    /// Writes the run into its client's socket with one vectored write; what the socket does
    /// not take goes to the stream task.
    pub(super) fn write_run(&mut self) {
        let Some((id, frames)) = self.run.take() else {
            return;
        };
        let Some(slot) = self.demux.get(id) else {
            // The stream is gone; its bytes go with it.
            self.run.recycle(frames);
            return;
        };
        let mut iov = [IoSlice::new(&[]); MAX_FRAMES];
        for (slice, frame) in iov.iter_mut().zip(&frames) {
            *slice = IoSlice::new(frame);
        }
        let count = frames.len().min(MAX_FRAMES);
        // Would block, or an error the stream task will meet on its own write: queue it.
        let n = slot
            .handle
            .sock
            .try_write_vectored(&iov[..count])
            .unwrap_or(0);
        let mut left = n;
        let mut whole = 0;
        let mut frames = frames;
        let mut rest = Vec::new();
        for frame in frames.drain(..) {
            if left >= frame.len() {
                left -= frame.len();
                whole += 1;
            } else {
                rest.push(frame.slice(left..));
                left = 0;
            }
        }
        self.run.recycle(frames);
        if n > 0 {
            slot.handle.activity.touch();
            slot.handle
                .info
                .bytes_a2c
                .fetch_add(n as u64, Ordering::Relaxed);
            slot.handle.listener.metrics.bytes_a2c.inc_by(n as u64);
            self.on_written(id, n, whole);
        }
        for r in rest {
            self.enqueue(id, r);
        }
    }

    /// Agent bytes the socket did not take: to the stream task, charged to the relay-wide
    /// budget.
    ///
    /// A v2 payload is a slice of the WebSocket's read buffer: kept as is, a one-byte payload
    /// would keep that whole buffer (and the junk around it) alive while the client does not
    /// read. So what waits is copied into an allocation of its own, and the budget charges
    /// exactly what is held.
    fn enqueue(&mut self, id: StreamId, rest: Bytes) {
        if rest.is_empty() || self.demux.get(id).is_none() {
            return;
        }
        // Charged with the cost of the buffer itself, so 1-byte frames cannot hide behind it.
        let len = rest.len() + FRAME_COST;
        // These bytes came in under the stream's window: what they take from the budget, its
        // reservation gives up.
        self.reserve_growth(id);
        if !self.ctx.buffered.try_charge(len) {
            self.over_budget(id);
            return;
        }
        let held = match self.demux.version() {
            nowconnect_shared::Version::V2 => Bytes::copy_from_slice(&rest),
            // v1 payloads were decoded from text into buffers of their own.
            nowconnect_shared::Version::V1 => rest,
        };
        let sent = self
            .demux
            .get(id)
            .is_some_and(|slot| slot.handle.tx.send(ToStream::Data(held)).is_ok());
        if !sent {
            self.ctx.buffered.release(len);
        }
    }

    /// The tunnel's share of the relay-wide budget (or that budget) has no room for this
    /// stream's bytes: reset it.
    fn over_budget(&mut self, id: StreamId) {
        let reset = Reset::new(RstCode::QueueOverflow, "relay buffer budget exhausted");
        let Some((rst, handle)) = self.demux.reset(id, reset) else {
            return;
        };
        handle.listener.metrics.queue_overflow.inc();
        if let Some(suppressed) = self.quota.warnings.allow(Instant::now()) {
            warn!(agent_id = %self.info.agent_id, cid = id, max = self.shared.cfg().limits.max_buffered_bytes, suppressed, "limits.max_buffered_bytes reached; resetting stream");
        }
        self.reset_sent(rst, RstCode::QueueOverflow, handle);
    }
}
