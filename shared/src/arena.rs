//! Where a stream's socket reads land (relay: client reads; agent: target reads).
//!
//! Outside a burst each read goes into a small buffer of its own, so an idle or chatty stream
//! holds no payload memory. A read that fills it starts a burst: reads then go into an arena of
//! a few frames, split off per frame and reclaimed once whoever sent them has dropped them, so a
//! bulk stream reuses the same warm pages instead of allocating (and faulting in) a 64 KiB buffer
//! per read. That matters most with musl's allocator, which maps and unmaps every such buffer.
//! A read of at most [`SMALL_READ`] bytes, EOF, or [`ARENA_IDLE`] without reads (the stream task
//! calls [`ReadArena::release_if_idle`]) ends the burst and lets the arena go, so a stream that
//! moves a bulk transfer and then waits holds no payload memory either.
//!
//! No socket and no clock here: the caller passes the read and the time.

use std::io;
use std::time::{Duration, Instant};

use bytes::buf::Limit;
use bytes::{BufMut, Bytes, BytesMut};

use crate::binary::{self, FrameType, HEADER_LEN};
use crate::frame::StreamId;

/// Reads outside a burst go into a buffer this small; a burst ends with a read no larger.
pub const SMALL_READ: usize = 4 * 1024;
/// Frames of `max_payload` one burst's arena holds.
pub const ARENA_FRAMES: usize = 4;
/// A burst's arena is let go after this long without a read.
pub const ARENA_IDLE: Duration = Duration::from_secs(1);

/// Read buffers of one stream direction; see the module documentation.
#[derive(Debug)]
pub struct ReadArena {
    arena: BytesMut,
    arena_cap: usize,
    /// When the last read of the current burst happened.
    last_read: Option<Instant>,
}

impl ReadArena {
    /// Buffers for frames of at most `max_payload` bytes.
    pub fn new(max_payload: usize) -> ReadArena {
        ReadArena {
            arena: BytesMut::new(),
            arena_cap: ARENA_FRAMES.saturating_mul(HEADER_LEN.saturating_add(max_payload)),
            last_read: None,
        }
    }

    /// A burst is on: an arena is held.
    pub fn in_burst(&self) -> bool {
        self.arena.capacity() > 0
    }

    /// Bytes of arena held now (0 outside a burst).
    pub fn held(&self) -> usize {
        self.arena.capacity()
    }

    /// Lets the arena go when no read came for [`ARENA_IDLE`] before `now`; otherwise returns
    /// when to ask again. `None`: no arena is held (any more).
    pub fn release_if_idle(&mut self, now: Instant) -> Option<Instant> {
        if !self.in_burst() {
            return None;
        }
        let at = self.last_read.unwrap_or(now) + ARENA_IDLE;
        if now >= at {
            self.arena = BytesMut::new();
            return None;
        }
        Some(at)
    }

    /// One read of at most `cap` bytes through `read` (a non-blocking socket read into the
    /// buffer it is given), with the v2 DATA header of `v2_id` in front. `Ok(None)` is EOF;
    /// `Ok(Some((frame, n)))` carries `n` payload bytes. Errors (`WouldBlock` too) leave
    /// nothing behind.
    pub fn read<F>(
        &mut self,
        cap: usize,
        v2_id: Option<StreamId>,
        now: Instant,
        read: F,
    ) -> io::Result<Option<(Bytes, usize)>>
    where
        F: FnOnce(&mut Limit<&mut BytesMut>) -> io::Result<usize>,
    {
        let header = if v2_id.is_some() { HEADER_LEN } else { 0 };
        let bursting = self.in_burst();
        let mut small = BytesMut::new();
        let (buf, limit) = if bursting {
            let need = header + cap;
            if self.arena.capacity() < need && !self.arena.try_reclaim(need) {
                // Frames of this arena are still held: start another.
                self.arena = BytesMut::with_capacity(self.arena_cap.max(need));
            }
            (&mut self.arena, cap)
        } else {
            let limit = cap.min(SMALL_READ);
            small.reserve(header + limit);
            (&mut small, limit)
        };
        if let Some(id) = v2_id {
            binary::put_header(buf, FrameType::Data, id);
        }
        let n = match read(&mut (&mut *buf).limit(limit)) {
            Ok(n) => n,
            Err(e) => {
                buf.clear();
                return Err(e);
            }
        };
        if n == 0 {
            self.arena = BytesMut::new();
            return Ok(None);
        }
        self.last_read = Some(now);
        let frame = if !bursting {
            if n == SMALL_READ {
                self.arena = BytesMut::with_capacity(self.arena_cap);
            }
            small.freeze()
        } else if n <= SMALL_READ {
            let copy = Bytes::copy_from_slice(buf);
            self.arena = BytesMut::new();
            copy
        } else {
            buf.split().freeze()
        };
        Ok(Some((frame, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A read from `src` as a socket would do it: at most what fits, `chunk` at a time.
    fn from<'a, 'b>(
        src: &'a mut &'b [u8],
        chunk: usize,
    ) -> impl FnOnce(&mut Limit<&mut BytesMut>) -> io::Result<usize> + use<'a, 'b> {
        move |buf| {
            let n = src.len().min(chunk).min(buf.remaining_mut());
            buf.put_slice(&src[..n]);
            *src = &src[n..];
            Ok(n)
        }
    }

    #[test]
    fn small_reads_hold_no_arena() {
        let mut reads = ReadArena::new(64 * 1024);
        let mut src: &[u8] = b"hello";
        let (frame, n) = reads
            .read(64 * 1024, Some(7), Instant::now(), from(&mut src, 1 << 20))
            .expect("read")
            .expect("data");
        assert_eq!(n, 5);
        assert_eq!(&frame[HEADER_LEN..], b"hello");
        assert_eq!(frame.len(), HEADER_LEN + 5);
        assert_eq!(reads.held(), 0, "an idle stream keeps no arena");
    }

    #[test]
    fn errors_and_eof_leave_nothing_behind() {
        let mut reads = ReadArena::new(16 * 1024);
        let big = vec![1u8; SMALL_READ];
        let mut src: &[u8] = &big;
        reads
            .read(16 * 1024, Some(1), Instant::now(), from(&mut src, 1 << 20))
            .expect("read");
        assert!(reads.in_burst(), "a full small read starts a burst");
        let err = reads.read(16 * 1024, Some(1), Instant::now(), |_| {
            Err(io::ErrorKind::WouldBlock.into())
        });
        assert!(err.is_err());
        // The failed read's header is gone: the next frame holds one header and its bytes.
        let mut more: &[u8] = &[2u8; 100];
        let (frame, n) = reads
            .read(16 * 1024, Some(1), Instant::now(), from(&mut more, 1 << 20))
            .expect("read")
            .expect("data");
        assert_eq!(n, 100);
        assert_eq!(frame.len(), HEADER_LEN + 100);
        assert!(frame[HEADER_LEN..].iter().all(|&b| b == 2));
        let mut empty: &[u8] = &[];
        let eof = reads
            .read(16 * 1024, Some(1), Instant::now(), from(&mut empty, 1))
            .expect("read");
        assert!(eof.is_none());
        assert_eq!(reads.held(), 0, "EOF lets the arena go");
    }

    #[test]
    fn a_paused_burst_lets_its_arena_go() {
        let mut reads = ReadArena::new(16 * 1024);
        let t0 = Instant::now();
        assert_eq!(reads.release_if_idle(t0), None, "nothing held yet");
        let data = vec![7u8; 64 * 1024];
        let mut src: &[u8] = &data;
        while !reads.in_burst() {
            assert!(!src.is_empty(), "no read ever filled its buffer");
            reads
                .read(16 * 1024, Some(1), t0, from(&mut src, 1 << 20))
                .expect("read")
                .expect("data");
        }
        let at = reads
            .release_if_idle(t0)
            .expect("kept while the burst is fresh");
        assert_eq!(at, t0 + ARENA_IDLE);
        assert!(reads.in_burst());
        assert_eq!(reads.release_if_idle(at), None, "let go once idle");
        assert_eq!(reads.held(), 0);
        // The next read starts small again.
        let (frame, n) = reads
            .read(16 * 1024, Some(1), at, from(&mut src, 1 << 20))
            .expect("read")
            .expect("data");
        assert!(n <= SMALL_READ && frame.len() == HEADER_LEN + n);
    }

    #[test]
    fn bursts_reuse_an_arena_without_touching_frames_in_flight() {
        let mut reads = ReadArena::new(16 * 1024);
        let total = 1 << 20;
        let data: Vec<u8> = (0..total).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut src: &[u8] = &data;
        // Keep frames alive (as a slow writer would) while reading on; every frame still held
        // must equal its slice of the source: reclaiming the arena must never overwrite bytes
        // somebody still holds. Uneven read sizes, as sockets give.
        let mut held: VecDeque<(usize, Bytes)> = VecDeque::new();
        let mut got = 0;
        let mut saw_arena = false;
        let mut chunk = 16 * 1024;
        let now = Instant::now();
        while let Some((frame, n)) = reads
            .read(16 * 1024, None, now, from(&mut src, chunk))
            .expect("read")
        {
            assert_eq!(frame.len(), n);
            saw_arena |= reads.in_burst();
            held.push_back((got, frame));
            got += n;
            chunk = if chunk == 16 * 1024 { 9_000 } else { 16 * 1024 };
            if held.len() > 3 {
                let (at, f) = held.pop_front().expect("held");
                assert_eq!(&f[..], &data[at..at + f.len()], "frame at {at} changed");
            }
        }
        assert_eq!(got, total);
        assert!(saw_arena, "a 1 MiB burst used the arena");
        for (at, f) in held {
            assert_eq!(&f[..], &data[at..at + f.len()], "frame at {at} changed");
        }
        assert_eq!(reads.held(), 0, "EOF let the arena go");
    }
}
