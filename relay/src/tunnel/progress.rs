//! Counts the bytes a tunnel's socket accepts, so the writer can tell an agent that takes
//! bytes slowly (alive) from one that takes none (dead): see `writer`'s stall rule.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes written so far, shared between the IO wrapper and the writer.
#[derive(Debug, Clone, Default)]
pub(crate) struct Written(Arc<AtomicU64>);

impl Written {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// An IO that counts what its writes accept into [`Written`].
#[derive(Debug)]
pub(crate) struct Counted<S> {
    inner: S,
    written: Written,
}

impl<S> Counted<S> {
    pub fn new(inner: S, written: Written) -> Counted<S> {
        Counted { inner, written }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written.add(n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.written.add(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn counts_what_the_inner_io_accepts() {
        let (a, _b) = tokio::io::duplex(8);
        let written = Written::default();
        let mut io = Counted::new(a, written.clone());
        io.write_all(b"hello").await.expect("fits the pipe");
        assert_eq!(written.get(), 5);
        // The pipe holds 8: a larger write is taken in part only.
        let n = io.write(b"0123456789").await.expect("partial write");
        assert_eq!(written.get(), 5 + n as u64);
        assert!(n <= 3);
    }
}
