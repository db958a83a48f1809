//! PROXY protocol headers written by hand for the tests, byte by byte after HAProxy's
//! specification (independently of the relay's parser, so a test checks one against the other),
//! and a connection that starts with one: what an ingress in front of the relay sends.

use std::net::{IpAddr, SocketAddr};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// The v2 signature (12 bytes).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n`.
pub fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A v2 PROXY command over TCP (IPv4 or IPv6 by `src`; `dst` must be of the same family).
pub fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut addrs = Vec::with_capacity(36);
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            addrs.extend_from_slice(&s.octets());
            addrs.extend_from_slice(&d.octets());
            0x11
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            addrs.extend_from_slice(&s.octets());
            addrs.extend_from_slice(&d.octets());
            0x21
        }
        _ => panic!("v2 header: {src} and {dst} are of different families"),
    };
    addrs.extend_from_slice(&src.port().to_be_bytes());
    addrs.extend_from_slice(&dst.port().to_be_bytes());
    v2_raw(0x21, family, &addrs)
}

/// A v2 LOCAL command (a proxy's own health check): no addresses.
pub fn v2_local() -> Vec<u8> {
    v2_raw(0x20, 0x00, &[])
}

/// A v2 header with any version/command byte, family/protocol byte and body.
pub fn v2_raw(version_command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(version_command);
    h.push(family);
    let len = u16::try_from(body.len()).expect("v2 body fits a u16 length");
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(body);
    h
}

/// Connects to `addr` (from loopback address `from` when given) and sends `header` first.
pub async fn connect_with(addr: SocketAddr, from: Option<IpAddr>, header: &[u8]) -> TcpStream {
    try_connect_with(addr, from, header)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr} with a PROXY header: {e}"))
}

/// [`connect_with`] for a server that may refuse at once: a reset can land before the connect
/// or the write completes, and is returned instead of failing the test.
pub async fn try_connect_with(
    addr: SocketAddr,
    from: Option<IpAddr>,
    header: &[u8],
) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = from {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let mut s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(header).await?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_the_specification() {
        let src: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        let dst: SocketAddr = "10.0.0.1:443".parse().expect("addr");
        assert_eq!(v1(src, dst), b"PROXY TCP4 192.0.2.1 10.0.0.1 5000 443\r\n");
        let h = v2(src, dst);
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(
            &h[16..],
            &[192, 0, 2, 1, 10, 0, 0, 1, 0x13, 0x88, 0x01, 0xbb]
        );
        let src6: SocketAddr = "[2001:db8::1]:1".parse().expect("addr");
        let dst6: SocketAddr = "[2001:db8::2]:2".parse().expect("addr");
        assert_eq!(v2(src6, dst6).len(), 16 + 36);
        assert_eq!(
            v2_local(),
            [V2_SIGNATURE.as_slice(), &[0x20, 0, 0, 0]].concat()
        );
    }
}
