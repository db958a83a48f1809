//! Bytes waiting for a stream's socket, written out with vectored writes.
//!
//! Received DATA payloads are queued as the `Bytes` they arrived in (no copy) and written with
//! one `writev` of up to [`MAX_IOV`] buffers at a time. No socket here: the caller passes the
//! non-blocking write; `WouldBlock` simply ends the round.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes};

/// Most buffers handed to one vectored write.
pub const MAX_IOV: usize = 16;

/// What one [`WriteQueue::write_with`] round wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes the socket took.
    pub bytes: usize,
    /// Queued buffers (DATA payloads) written completely.
    pub frames: usize,
}

/// Buffers waiting for the socket, oldest first.
#[derive(Debug, Default)]
pub struct WriteQueue {
    bufs: VecDeque<Bytes>,
    /// Sum of the lengths in `bufs`.
    bytes: usize,
}

impl WriteQueue {
    pub fn new() -> WriteQueue {
        WriteQueue::default()
    }

    /// Queues `b` behind what waits (empty buffers are dropped).
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.bytes += b.len();
            self.bufs.push_back(b);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Drops everything (the stream was reset).
    pub fn clear(&mut self) {
        self.bufs.clear();
        self.bytes = 0;
    }

    /// Writes as much as the socket takes now: vectored writes through `write` until the queue
    /// is empty or `write` says `WouldBlock`. A write of 0 bytes is an error (`WriteZero`).
    pub fn write_with<F>(&mut self, mut write: F) -> io::Result<Progress>
    where
        F: FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    {
        let mut done = Progress::default();
        while !self.bufs.is_empty() {
            let n = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let mut k = 0;
                for (slot, b) in iov.iter_mut().zip(self.bufs.iter()) {
                    *slot = IoSlice::new(b);
                    k += 1;
                }
                match write(&iov[..k]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            };
            done.bytes += n;
            self.bytes = self.bytes.saturating_sub(n);
            let mut left = n;
            while left > 0 {
                let Some(front) = self.bufs.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    self.bufs.pop_front();
                    done.frames += 1;
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `cap` bytes per call, `budget` in all, then would block.
    fn sink<'a>(
        out: &'a mut Vec<u8>,
        cap: usize,
        budget: &'a mut usize,
    ) -> impl FnMut(&[IoSlice<'_>]) -> io::Result<usize> + 'a {
        move |iov| {
            if *budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for s in iov {
                let take = s.len().min(cap - n).min(*budget - n);
                out.extend_from_slice(&s[..take]);
                n += take;
                if n == cap || n == *budget {
                    break;
                }
            }
            *budget -= n;
            Ok(n)
        }
    }

    #[test]
    fn writes_in_order_and_counts_whole_buffers() {
        let mut q = WriteQueue::new();
        q.push(Bytes::from_static(b"hello "));
        q.push(Bytes::new());
        q.push(Bytes::from_static(b"world"));
        assert_eq!(q.len(), 11);
        let mut out = Vec::new();
        let mut budget = 8;
        let p = q.write_with(sink(&mut out, 3, &mut budget)).expect("write");
        assert_eq!(
            p,
            Progress {
                bytes: 8,
                frames: 1
            },
            "one buffer done, one started"
        );
        assert_eq!(q.len(), 3);
        let mut budget = 100;
        let p = q
            .write_with(sink(&mut out, 64, &mut budget))
            .expect("write");
        assert_eq!(
            p,
            Progress {
                bytes: 3,
                frames: 1
            }
        );
        assert!(q.is_empty());
        assert_eq!(out, b"hello world");
    }

    #[test]
    fn a_zero_write_is_an_error_and_errors_pass_through() {
        let mut q = WriteQueue::new();
        q.push(Bytes::from_static(b"x"));
        assert_eq!(
            q.write_with(|_| Ok(0)).map_err(|e| e.kind()),
            Err(io::ErrorKind::WriteZero)
        );
        assert_eq!(
            q.write_with(|_| Err(io::ErrorKind::BrokenPipe.into()))
                .map_err(|e| e.kind()),
            Err(io::ErrorKind::BrokenPipe)
        );
        assert_eq!(q.len(), 1, "nothing was taken");
    }
}
