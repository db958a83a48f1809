//! A run of agent bytes for one client, held while the session reads the messages that are
//! already there, so consecutive DATA frames of one stream reach its socket in one vectored
//! write: one syscall and one wake-up of the client per batch instead of one per frame. A
//! directory server writes each search entry on its own, so a page of an LDAP search arrives as
//! a string of small frames; without the run, each became its own `sendto`.
//!
//! The session keeps at most one run, of one stream, of at most [`MAX_FRAMES`] frames, and writes
//! it out before anything that must come after those bytes (another frame, a stream event)
//! and before it waits: holding bytes here never delays them behind a wait. This type only
//! keeps the run; the session writes it.

use bytes::Bytes;
use nowconnect_shared::StreamId;

/// Most frames one run holds (one vectored write).
pub(super) const MAX_FRAMES: usize = 32;

#[derive(Debug, Default)]
pub(super) struct Run {
    /// The stream the frames are for; `None` when empty.
    id: Option<StreamId>,
    /// Payloads in arrival order, none empty.
    frames: Vec<Bytes>,
    /// Their total length.
    len: usize,
}

impl Run {
    /// Bytes held for stream `id` (0 for any other stream).
    pub fn held_for(&self, id: StreamId) -> usize {
        if self.id == Some(id) {
            self.len
        } else {
            0
        }
    }

    /// Whether a frame for `id` must first see the run written: it is another stream's, or full.
    pub fn must_write_before(&self, id: StreamId) -> bool {
        self.id.is_some_and(|r| r != id) || self.frames.len() >= MAX_FRAMES
    }

    /// Adds a payload for `id`; the caller wrote any run of another stream first.
    pub fn push(&mut self, id: StreamId, payload: Bytes) {
        debug_assert!(self.id.is_none() || self.id == Some(id));
        if payload.is_empty() {
            return;
        }
        self.id = Some(id);
        self.len += payload.len();
        self.frames.push(payload);
    }

    /// Takes the run out (its stream and frames), leaving it empty.
    pub fn take(&mut self) -> Option<(StreamId, Vec<Bytes>)> {
        let id = self.id.take()?;
        self.len = 0;
        Some((id, std::mem::take(&mut self.frames)))
    }

    /// Gives back the frame list [`Run::take`] took, emptied, so a busy tunnel reuses it.
    pub fn recycle(&mut self, mut frames: Vec<Bytes>) {
        frames.clear();
        if self.frames.capacity() == 0 {
            self.frames = frames;
        }
    }

    /// Frees the frame list of a quiet tunnel.
    pub fn shrink(&mut self) {
        if self.id.is_none() {
            self.frames = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_holds_one_stream_and_is_bounded() {
        let mut run = Run::default();
        assert!(!run.must_write_before(1), "an empty run takes any stream");
        run.push(1, Bytes::from_static(b"ab"));
        run.push(1, Bytes::new());
        run.push(1, Bytes::from_static(b"cde"));
        assert_eq!(run.held_for(1), 5);
        assert_eq!(run.held_for(2), 0);
        assert!(
            run.must_write_before(2),
            "another stream's frame comes after the run"
        );
        assert!(!run.must_write_before(1));
        for _ in 2..MAX_FRAMES {
            run.push(1, Bytes::from_static(b"x"));
        }
        assert!(run.must_write_before(1), "a full run is written first");
        let (id, frames) = run.take().expect("a run");
        assert_eq!((id, frames.len()), (1, MAX_FRAMES));
        assert_eq!(&frames[0][..], b"ab");
        assert_eq!(run.held_for(1), 0);
        assert!(run.take().is_none());
        run.recycle(frames);
        assert!(
            run.frames.capacity() >= MAX_FRAMES,
            "a busy tunnel keeps its list"
        );
        run.shrink();
        assert_eq!(run.frames.capacity(), 0, "a quiet one lets it go");
    }
}
