//! A target read that also tells tokio when it emptied the socket.
//!
//! tokio forgets a socket's readiness only when a read fails with `WouldBlock`, so every read
//! that takes all there is costs a second read that finds nothing. A directory server writes
//! each search entry on its own: a quarter of the agent's reads during an LDAP search were such
//! empty ones. This read clears the readiness itself when it got less than it had room for
//! (the kernel had no more). Bytes that arrive after the read are never missed: tokio keeps a
//! readiness newer than the one this read started from, and the clear is done against that one.
//! The relay reads its clients the same way (`ClientSock::try_read_buf`).

use std::io;

use bytes::BufMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// One non-blocking read into `buf`, like [`TcpStream::try_read_buf`].
pub(crate) fn try_read_buf<B: BufMut>(sock: &TcpStream, buf: &mut B) -> io::Result<usize> {
    // What one read can take: the buffer's next chunk (the read fills no more than that).
    let room = buf.chunk_mut().len();
    let mut short = None;
    let r = sock.try_io(Interest::READABLE, || {
        let n = sock.try_read_buf(buf)?;
        if n > 0 && n < room {
            // Emptied: report `WouldBlock` to tokio so it clears the readiness, keep `n`.
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (r, short) {
        (_, Some(n)) => Ok(n),
        (r, None) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use nowconnect_testkit::net;
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;

    /// A connected loopback pair: (the peer that writes, the socket under test).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = net::bind().await;
        let peer = net::connect(net::addr(&l)).await;
        let (sock, _) = l.accept().await.expect("accept");
        (peer, sock)
    }

    #[tokio::test]
    async fn a_read_that_empties_the_socket_waits_for_the_next_bytes_and_misses_none() {
        let (mut peer, sock) = pair().await;
        for round in 0..50u8 {
            peer.write_all(&[round; 100]).await.expect("write");
            poll_fn(|cx| sock.poll_read_ready(cx)).await.expect("ready");
            let mut buf = BytesMut::with_capacity(4096);
            let mut got = 0;
            while got < 100 {
                match try_read_buf(&sock, &mut buf) {
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        poll_fn(|cx| sock.poll_read_ready(cx)).await.expect("ready");
                    }
                    Err(e) => panic!("read: {e}"),
                }
            }
            assert_eq!(got, 100);
            assert!(buf.iter().all(|&b| b == round));
            // Emptied by a short read: not ready until more comes.
            let ready =
                poll_fn(|cx| std::task::Poll::Ready(sock.poll_read_ready(cx).is_ready())).await;
            assert!(
                !ready,
                "round {round}: readiness kept after the socket was emptied"
            );
        }
        // EOF still shows.
        drop(peer);
        poll_fn(|cx| sock.poll_read_ready(cx)).await.expect("ready");
        let mut buf = BytesMut::with_capacity(16);
        assert_eq!(try_read_buf(&sock, &mut buf).expect("eof"), 0);
    }

    #[tokio::test]
    async fn a_read_that_fills_its_buffer_keeps_the_readiness() {
        let (mut peer, sock) = pair().await;
        peer.write_all(&[7; 300]).await.expect("write");
        let mut buf = BytesMut::with_capacity(300);
        let mut got = 0;
        let reads = async {
            while got < 300 {
                poll_fn(|cx| sock.poll_read_ready(cx)).await.expect("ready");
                let mut small = (&mut buf).limit(100);
                match try_read_buf(&sock, &mut small) {
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("read: {e}"),
                }
            }
        };
        // A readiness wrongly cleared after a full read would leave bytes unread, forever.
        tokio::time::timeout(std::time::Duration::from_secs(10), reads)
            .await
            .expect("every byte read in reads of 100");
        assert_eq!(got, 300);
    }
}
