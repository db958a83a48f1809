//! The read buffer between an accepted socket and the TLS layer, which an idle connection gives
//! back.
//!
//! rustls reads at most 4 KiB per call, so a plain `BufReader` of one TLS record (16 KiB) saves
//! three of every four `recvfrom` calls on a busy tunnel. But it keeps its 16 KiB for the life of
//! the connection, and most agent tunnels are idle most of the time: at 10,000 tunnels that
//! buffer alone is 160 MiB. This one holds its buffer only while the connection is busy: once the
//! socket has nothing more to read (a read returned `Pending`) after a burst that followed a
//! quiet spell of [`IDLE_AFTER`], the buffer is freed; the next burst allocates it again. A busy
//! connection (bursts less than [`IDLE_AFTER`] apart) keeps it, so bulk transfers and request /
//! response traffic pay no allocation per read. Writes pass straight through.
//!
//! What this type must never do: drop bytes it has buffered (it frees only an empty buffer), or
//! allocate more than its capacity.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Duration, Instant};

/// A burst that came after this long without data marks the connection idle: its buffer is freed
/// as soon as the socket is drained.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

/// A buffered reader whose buffer exists only while the connection is busy.
#[derive(Debug)]
pub struct IdleFreeReader<S> {
    inner: S,
    /// Size of the buffer when there is one.
    cap: usize,
    /// Allocated at the first read of a burst, freed when an idle connection is drained.
    buf: Option<Box<[u8]>>,
    /// Bytes of `buf` handed out so far; `pos <= filled <= cap`.
    pos: usize,
    /// Bytes of `buf` read from the socket.
    filled: usize,
    /// When data last arrived.
    last_data: Instant,
    /// The current burst came after a quiet spell of at least [`IDLE_AFTER`].
    after_quiet: bool,
}

impl<S> IdleFreeReader<S> {
    pub fn new(inner: S, cap: usize) -> IdleFreeReader<S> {
        IdleFreeReader {
            inner,
            cap: cap.max(1),
            buf: None,
            pos: 0,
            filled: 0,
            last_data: Instant::now(),
            after_quiet: false,
        }
    }

    /// Whether the buffer is allocated now.
    #[cfg(test)]
    pub fn holds_buffer(&self) -> bool {
        self.buf.is_some()
    }

    /// Notes that `n` bytes arrived.
    fn arrived(&mut self, n: usize) {
        if n > 0 {
            let now = Instant::now();
            self.after_quiet = now.duration_since(self.last_data) >= IDLE_AFTER;
            self.last_data = now;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleFreeReader<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.filled {
            if let Some(buf) = &this.buf {
                let n = out.remaining().min(this.filled - this.pos);
                out.put_slice(&buf[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
        }
        // Nothing buffered. A read at least as big as the buffer goes straight to the socket.
        if out.remaining() >= this.cap {
            let before = out.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
            let n = out.filled().len() - before;
            this.arrived(n);
            return Poll::Ready(Ok(()));
        }
        let cap = this.cap;
        let buf = this
            .buf
            .get_or_insert_with(|| vec![0u8; cap].into_boxed_slice());
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
            Poll::Pending => {
                if this.after_quiet {
                    // Drained after a burst that followed a quiet spell: idle again.
                    this.buf = None;
                }
                (this.pos, this.filled) = (0, 0);
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                let m = out.remaining().min(n);
                out.put_slice(&buf[..m]);
                (this.pos, this.filled) = (m, n);
                this.arrived(n);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleFreeReader<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_keeps_its_buffer_an_idle_one_gives_it_back() {
        let (mut peer, sock) = tokio::io::duplex(64 * 1024);
        let mut r = IdleFreeReader::new(sock, 16 * 1024);
        let mut out = [0u8; 4096];

        // Bursts close together: the buffer stays between them.
        for round in 0..3u8 {
            peer.write_all(&[round; 10_000]).await.expect("write");
            let mut got = 0;
            while got < 10_000 {
                let n = r.read(&mut out).await.expect("read");
                assert!(out[..n].iter().all(|&b| b == round), "bytes in order");
                got += n;
            }
            assert_eq!(got, 10_000);
            // Drained: the next read waits.
            assert!(
                tokio::time::timeout(Duration::from_millis(1), r.read(&mut out))
                    .await
                    .is_err()
            );
            assert!(r.holds_buffer(), "round {round}: busy, buffer kept");
            tokio::time::advance(Duration::from_millis(100)).await;
        }

        // A quiet spell, then a small burst (a pong): once drained, the buffer is gone.
        tokio::time::advance(IDLE_AFTER * 20).await;
        peer.write_all(b"pong").await.expect("write");
        let n = r.read(&mut out).await.expect("read");
        assert_eq!(&out[..n], b"pong");
        assert!(
            tokio::time::timeout(Duration::from_millis(1), r.read(&mut out))
                .await
                .is_err()
        );
        assert!(!r.holds_buffer(), "idle: buffer freed");

        // And it comes back with the next burst, nothing lost.
        peer.write_all(&[7u8; 20_000]).await.expect("write");
        let mut got = 0;
        while got < 20_000 {
            let n = r.read(&mut out).await.expect("read");
            assert!(out[..n].iter().all(|&b| b == 7));
            got += n;
        }
        drop(peer);
        assert_eq!(r.read(&mut out).await.expect("eof"), 0);
    }

    #[tokio::test]
    async fn a_big_read_bypasses_the_buffer_and_writes_pass_through() {
        let (mut peer, sock) = tokio::io::duplex(64 * 1024);
        let mut r = IdleFreeReader::new(sock, 1024);
        peer.write_all(&[1u8; 3000]).await.expect("write");
        let mut big = vec![0u8; 4096];
        let n = r.read(&mut big).await.expect("read");
        assert_eq!(n, 3000);
        assert!(!r.holds_buffer(), "a read as big as the buffer needs none");
        r.write_all(b"back").await.expect("write");
        let mut four = [0u8; 4];
        peer.read_exact(&mut four).await.expect("read back");
        assert_eq!(&four, b"back");
    }
}
