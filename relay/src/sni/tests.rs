use std::sync::Arc;
use std::time::Duration;

use nowconnect_shared::sni::parse_client_hello;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// The first flight of a real rustls client asking for `name` (TLS 1.3 and 1.2 offered, or
/// 1.2 only).
fn rustls_hello(name: &str, tls12_only: bool) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    let builder = if tls12_only {
        builder.with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .expect("protocol versions");
    let cfg = builder
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server = ServerName::try_from(name.to_owned()).expect("server name");
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), server).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

#[test]
fn real_client_hellos_split_at_every_byte() {
    for tls12_only in [false, true] {
        for (name, want) in [
            ("dc1.corp.local", ClientHello::Sni("dc1.corp.local".into())),
            ("DC2.Corp.Local", ClientHello::Sni("dc2.corp.local".into())),
            // rustls sends no server name for an IP address.
            ("192.0.2.7", ClientHello::NoSni),
        ] {
            let hello = rustls_hello(name, tls12_only);
            for cut in 0..hello.len() {
                match parse_client_hello(&hello[..cut]) {
                    ClientHello::NeedMore(n) => assert!(n > cut && n <= hello.len()),
                    other => panic!("{name}: prefix {cut}/{}: {other:?}", hello.len()),
                }
            }
            assert_eq!(parse_client_hello(&hello), want, "{name}");
        }
    }
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("address");
    let client = TcpStream::connect(addr).await.expect("connect");
    let (server, _) = l.accept().await.expect("accept");
    (client, server)
}

#[tokio::test]
async fn the_peek_leaves_every_byte_for_the_stream_even_in_pieces() {
    let hello = rustls_hello("dc1.corp.local", false);
    let (mut client, server) = pair().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let peek = tokio::spawn(async move {
        let name = peek_server_name(&server, deadline).await;
        (name, server)
    });
    for part in hello.chunks(hello.len() / 3 + 1) {
        client.write_all(part).await.expect("write");
        client.flush().await.expect("flush");
        tokio::task::yield_now().await;
    }
    client.write_all(b"after").await.expect("write");
    let (name, mut server) = peek.await.expect("peek task");
    assert_eq!(name.expect("peeked").as_deref(), Some("dc1.corp.local"));
    let mut got = vec![0u8; hello.len() + 5];
    server
        .read_exact(&mut got)
        .await
        .expect("the bytes are still there");
    assert_eq!(&got[..hello.len()], &hello[..]);
    assert_eq!(&got[hello.len()..], b"after");
}

#[tokio::test]
async fn refuses_plain_text_and_huge_records_at_once_and_times_out_a_half_hello() {
    let (mut client, server) = pair().await;
    client
        .write_all(b"GET / HTTP/1.1\r\n")
        .await
        .expect("write");
    let far = Instant::now() + Duration::from_secs(30);
    let e = peek_server_name(&server, far).await.expect_err("not TLS");
    assert!(
        matches!(e, PeekError::Invalid(Invalid::NotHandshake)),
        "{e:?}"
    );
    assert_eq!(e.reason(), "invalid");

    let (mut client, server) = pair().await;
    client
        .write_all(&[22, 3, 1, 0xff, 0xff, 1, 0, 0])
        .await
        .expect("write");
    let e = peek_server_name(&server, far).await.expect_err("too long");
    assert!(
        matches!(e, PeekError::Invalid(Invalid::BadRecordLength)),
        "{e:?}"
    );

    let hello = rustls_hello("dc1.corp.local", false);
    let (mut client, server) = pair().await;
    client
        .write_all(&hello[..hello.len() / 2])
        .await
        .expect("write");
    let start = Instant::now();
    let e = peek_server_name(&server, start + Duration::from_millis(200))
        .await
        .expect_err("incomplete");
    assert!(matches!(e, PeekError::Timeout), "{e:?}");
    assert!(start.elapsed() >= Duration::from_millis(200));

    // Half a hello, then EOF: closed, without waiting for the deadline.
    let (mut client, server) = pair().await;
    client.write_all(&hello[..10]).await.expect("write");
    client.shutdown().await.expect("shutdown");
    let e = peek_server_name(&server, far).await.expect_err("closed");
    assert!(matches!(e, PeekError::Closed), "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// A ClientHello of about `pad` bytes more than usual (a padding extension before the name),
/// in records of at most `frag` bytes.
fn padded_hello(name: &str, pad: usize, frag: usize) -> Vec<u8> {
    let mut exts = vec![0, 21];
    exts.extend_from_slice(&u16::try_from(pad).expect("pad").to_be_bytes());
    exts.resize(exts.len() + pad, 0);
    let n = u16::try_from(name.len()).expect("name");
    exts.extend_from_slice(&[0, 0]);
    exts.extend_from_slice(&(n + 5).to_be_bytes());
    exts.extend_from_slice(&(n + 3).to_be_bytes());
    exts.push(0);
    exts.extend_from_slice(&n.to_be_bytes());
    exts.extend_from_slice(name.as_bytes());
    let mut body = vec![3, 3];
    body.extend_from_slice(&[1; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&u16::try_from(exts.len()).expect("exts").to_be_bytes());
    body.extend(exts);
    let len = u32::try_from(body.len()).expect("body");
    let mut msg = vec![1];
    msg.extend_from_slice(&len.to_be_bytes()[1..]);
    msg.extend(body);
    let mut out = Vec::new();
    for chunk in msg.chunks(frag) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&u16::try_from(chunk.len()).expect("chunk").to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[tokio::test]
async fn a_hello_larger_than_the_first_look_grows_the_buffer_up_to_the_bound() {
    for (pad, frag) in [(6000, 16 * 1024), (12_000, 4000)] {
        let hello = padded_hello("big.corp.local", pad, frag);
        assert!(hello.len() > FIRST_PEEK);
        let (mut client, server) = pair().await;
        client.write_all(&hello).await.expect("write");
        let deadline = Instant::now() + Duration::from_secs(10);
        let name = peek_server_name(&server, deadline).await.expect("peeked");
        assert_eq!(name.as_deref(), Some("big.corp.local"));
    }
    // Past the bound: refused, not buffered.
    let hello = padded_hello("big.corp.local", 16_400, 8000);
    let (mut client, server) = pair().await;
    client.write_all(&hello).await.expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    let e = peek_server_name(&server, deadline)
        .await
        .expect_err("too large");
    assert!(matches!(e, PeekError::Invalid(Invalid::TooLarge)), "{e:?}");
}
