//! PROXY protocol v1 and v2 (HAProxy's specification): the real client address of a connection
//! that an ingress (HAProxy, a cloud load balancer) relays to the relay.
//!
//! [`read_header`] takes exactly one header off a freshly accepted socket, within a deadline and
//! a byte bound, and leaves every byte after it to what comes next (TLS, HTTP, a client's own
//! protocol), so the socket stays a plain `TcpStream`. A header is believed only from a peer in
//! `security.trusted_proxies` ([`is_trusted`]); callers refuse any other peer before reading.
//!
//! The framing (which bytes are the header, and the bounds) is ours; decoding a complete header
//! is the `ppp` crate's, which so never sees more than one bounded header. Never logs header
//! bytes.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use ppp::v2::{Command, Protocol};
use ppp::HeaderResult;
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Longest v1 header, `\r\n` included (the specification's limit).
pub(crate) const V1_MAX: usize = 107;
/// Largest v2 address-and-TLV block accepted (the specification allows 65535; HAProxy and the
/// cloud load balancers send a few dozen bytes of addresses and small TLVs).
pub(crate) const V2_MAX_LEN: usize = 512;
/// The fixed part of a v2 header: signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// A header split over TCP segments is looked at again after this pause. Senders write the
/// header at once, so this is rare; the deadline bounds it.
const PARTIAL_RETRY: Duration = Duration::from_millis(5);

/// Why a connection that had to start with a PROXY header was closed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// The socket peer is not in `security.trusted_proxies` (the peer's fault, or a bypass of
    /// the ingress).
    #[error("peer is not in security.trusted_proxies")]
    Untrusted,
    #[error("no complete PROXY header before the deadline")]
    Timeout,
    #[error("closed before a complete PROXY header")]
    Closed,
    #[error("not a PROXY protocol v1/v2 header")]
    Invalid,
    #[error("PROXY header longer than allowed")]
    TooLong,
    #[error("reading the PROXY header failed: {0:?}")]
    Io(std::io::ErrorKind),
}

impl ProxyError {
    /// The metric label (`nowconnect_http_refused_total`, `nowconnect_connections_rejected_total`).
    pub fn reason(self) -> &'static str {
        match self {
            ProxyError::Untrusted => "proxy_untrusted",
            ProxyError::Timeout => "proxy_timeout",
            _ => "proxy_header",
        }
    }
}

/// Whether a PROXY header from `peer` may be believed.
pub(crate) fn is_trusted(peer: SocketAddr, trusted: &[IpNet]) -> bool {
    let ip = peer.ip().to_canonical();
    trusted.iter().any(|n| n.contains(&ip))
}

/// Reads one PROXY v1 or v2 header from `sock` (accepted from `peer`) by `deadline` and returns
/// the client address it names; `peer` itself for a LOCAL command (the proxy's own health
/// check), v1 UNKNOWN and non-IP families, as the specification says. Consumes exactly the
/// header. The caller has checked [`is_trusted`].
pub(crate) async fn read_header(
    sock: &mut TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) -> Result<SocketAddr, ProxyError> {
    let read = async {
        let mut buf = [0u8; V2_FIXED + V2_MAX_LEN];
        loop {
            let n = sock
                .peek(&mut buf)
                .await
                .map_err(|e| ProxyError::Io(e.kind()))?;
            if n == 0 {
                return Err(ProxyError::Closed);
            }
            match frame(&buf[..n])? {
                Some(len) => {
                    // Already received (peeked): completes at once, and takes no more than that.
                    sock.read_exact(&mut buf[..len])
                        .await
                        .map_err(|e| ProxyError::Io(e.kind()))?;
                    return address(&buf[..len], peer);
                }
                None => tokio::time::sleep(PARTIAL_RETRY).await,
            }
        }
    };
    tokio::time::timeout_at(deadline, read)
        .await
        .unwrap_or(Err(ProxyError::Timeout))
}

/// How many leading bytes of `buf` are one header: `Some(n)` once it is complete, `None` while
/// it may still become one. Checks each byte bound before anything is believed.
fn frame(buf: &[u8]) -> Result<Option<usize>, ProxyError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first == V2_SIGNATURE[0] {
        let seen = buf.len().min(V2_SIGNATURE.len());
        if buf[..seen] != V2_SIGNATURE[..seen] {
            return Err(ProxyError::Invalid);
        }
        if buf.len() < V2_FIXED {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if len > V2_MAX_LEN {
            return Err(ProxyError::TooLong);
        }
        let total = V2_FIXED + len;
        return Ok((buf.len() >= total).then_some(total));
    }
    let seen = buf.len().min(V1_PREFIX.len());
    if buf[..seen] != V1_PREFIX[..seen] {
        return Err(ProxyError::Invalid);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(i + 2)),
        None if buf.len() >= V1_MAX => Err(ProxyError::TooLong),
        None => Ok(None),
    }
}

/// The client address in one complete header (see [`read_header`] for when it is `peer`).
fn address(header: &[u8], peer: SocketAddr) -> Result<SocketAddr, ProxyError> {
    use ppp::v1::Addresses as V1;
    use ppp::v2::Addresses as V2;
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            V1::Tcp4(a) => SocketAddr::from((a.source_address, a.source_port)),
            V1::Tcp6(a) => SocketAddr::from((a.source_address, a.source_port)),
            V1::Unknown => peer,
        }),
        HeaderResult::V2(Ok(h)) => match (h.command, h.protocol, h.addresses) {
            (Command::Local, _, _) => Ok(peer),
            // A datagram header on a stream connection is not from a sane sender.
            (Command::Proxy, Protocol::Datagram, _) => Err(ProxyError::Invalid),
            (Command::Proxy, _, V2::IPv4(a)) => {
                Ok(SocketAddr::from((a.source_address, a.source_port)))
            }
            (Command::Proxy, _, V2::IPv6(a)) => {
                Ok(SocketAddr::from((a.source_address, a.source_port)))
            }
            (Command::Proxy, _, V2::Unspecified | V2::Unix(_)) => Ok(peer),
        },
        _ => Err(ProxyError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const PEER: &str = "127.0.0.1:40000";

    fn peer() -> SocketAddr {
        PEER.parse().expect("addr")
    }

    fn v2(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h
    }

    fn v2_tcp4(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut a = src.to_vec();
        a.extend_from_slice(&[10, 0, 0, 1]);
        a.extend_from_slice(&port.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        v2(1, 0x11, &a)
    }

    #[test]
    fn frames_v1_and_v2_within_their_bounds() {
        let v1 = b"PROXY TCP4 192.0.2.1 10.0.0.1 5000 443\r\nGET /";
        assert_eq!(frame(v1), Ok(Some(v1.len() - 5)));
        assert_eq!(frame(&v1[..20]), Ok(None));
        assert_eq!(frame(b"PROX"), Ok(None));
        assert_eq!(frame(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Invalid));
        assert_eq!(frame(b"\x16\x03\x01"), Err(ProxyError::Invalid));
        let long = [b"PROXY ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(frame(&long), Err(ProxyError::TooLong));
        // The CRLF must be within the first 107 bytes.
        let late = [b"PROXY ".as_slice(), &[b'1'; 101], b"\r\n"].concat();
        assert_eq!(frame(&late), Err(ProxyError::TooLong));

        let h = v2_tcp4([192, 0, 2, 9], 5000);
        let mut more = h.clone();
        more.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(frame(&more), Ok(Some(h.len())));
        assert_eq!(frame(&h[..10]), Ok(None));
        assert_eq!(frame(&h[..h.len() - 1]), Ok(None));
        assert_eq!(frame(b"\r\n\r\nX"), Err(ProxyError::Invalid));
        let mut big = v2(1, 0x11, &[]);
        big[14..16].copy_from_slice(&((V2_MAX_LEN + 1) as u16).to_be_bytes());
        assert_eq!(frame(&big), Err(ProxyError::TooLong));
    }

    #[test]
    fn addresses_of_each_kind() {
        let p = peer();
        let v1 = b"PROXY TCP4 192.0.2.1 10.0.0.1 5000 443\r\n";
        assert_eq!(address(v1, p), Ok("192.0.2.1:5000".parse().expect("addr")));
        let v1 = b"PROXY TCP6 2001:db8::7 2001:db8::1 5001 443\r\n";
        assert_eq!(
            address(v1, p),
            Ok("[2001:db8::7]:5001".parse().expect("addr"))
        );
        assert_eq!(address(b"PROXY UNKNOWN\r\n", p), Ok(p));
        assert_eq!(
            address(b"PROXY TCP4 300.0.0.1 10.0.0.1 1 2\r\n", p),
            Err(ProxyError::Invalid)
        );
        assert_eq!(
            address(&v2_tcp4([192, 0, 2, 9], 5000), p),
            Ok("192.0.2.9:5000".parse().expect("addr"))
        );
        let mut a6 = [0u8; 36];
        a6[..16].copy_from_slice(
            &"2001:db8::9"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .octets(),
        );
        a6[32..34].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            address(&v2(1, 0x21, &a6), p),
            Ok("[2001:db8::9]:7".parse().expect("addr"))
        );
        // LOCAL (the proxy's health check) and AF_UNSPEC: the connection's own peer.
        assert_eq!(address(&v2(0, 0x00, &[]), p), Ok(p));
        assert_eq!(address(&v2(1, 0x00, &[]), p), Ok(p));
        // UDP over a stream, a bad version, addresses cut short.
        assert_eq!(address(&v2(1, 0x12, &[0; 12]), p), Err(ProxyError::Invalid));
        let mut bad = v2_tcp4([192, 0, 2, 9], 1);
        bad[12] = 0x31;
        assert_eq!(address(&bad, p), Err(ProxyError::Invalid));
        assert_eq!(
            address(&v2(1, 0x11, &[1, 2, 3]), p),
            Err(ProxyError::Invalid)
        );
    }

    proptest::proptest! {
        /// Any bytes: framing never panics, never claims more than it has or than the bounds
        /// allow, and decoding what it framed never panics.
        #[test]
        fn any_bytes_are_framed_within_bounds(
            prefix in proptest::sample::select(vec![&b""[..], b"PROXY ", &V2_SIGNATURE[..]]),
            rest in proptest::collection::vec(proptest::num::u8::ANY, 0..700),
        ) {
            let buf = [prefix, &rest[..]].concat();
            if let Ok(Some(n)) = frame(&buf) {
                proptest::prop_assert!(n <= buf.len());
                proptest::prop_assert!(n <= V2_FIXED + V2_MAX_LEN);
                let _ = address(&buf[..n], peer());
            }
        }
    }

    #[test]
    fn trust_is_by_cidr() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        assert!(is_trusted("10.1.1.1:1".parse().expect("addr"), &nets));
        assert!(is_trusted(
            "[::ffff:10.1.1.1]:1".parse().expect("addr"),
            &nets
        ));
        assert!(!is_trusted(peer(), &nets));
        assert!(!is_trusted(peer(), &[]));
    }

    /// Over a socket: the header is consumed exactly, even when it arrives in pieces, and the
    /// bytes after it are left for the next reader.
    #[tokio::test]
    async fn reads_exactly_the_header_off_a_socket() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.set_nodelay(true).expect("nodelay");
            c.write_all(b"PROXY TCP4 192.0.2.1 10.0.0.1 5000 ")
                .await
                .expect("write");
            tokio::time::sleep(Duration::from_millis(30)).await;
            c.write_all(b"443\r\nhello").await.expect("write");
            c
        });
        let (mut s, p) = l.accept().await.expect("accept");
        let deadline = Instant::now() + Duration::from_secs(5);
        let real = read_header(&mut s, p, deadline).await;
        assert_eq!(real, Ok("192.0.2.1:5000".parse().expect("addr")));
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.expect("rest");
        assert_eq!(&rest, b"hello");
        let _c = client.await.expect("client");

        // Nothing sent: the deadline ends it.
        let _silent = TcpStream::connect(addr).await.expect("connect");
        let (mut s, p) = l.accept().await.expect("accept");
        let deadline = Instant::now() + Duration::from_millis(100);
        assert_eq!(
            read_header(&mut s, p, deadline).await,
            Err(ProxyError::Timeout)
        );
    }
}
