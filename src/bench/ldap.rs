//! A minimal LDAPv3 client for one workload: simple bind, then paged subtree searches
//! (RFC 2696 simple paged results), timed per complete search.
//!
//! This is the TCP_NODELAY regression guard from DESIGN.md: each page is a request/response
//! exchange whose last segment is small, so a tunnel that leaves Nagle on somewhere waits for a
//! delayed ACK (~40 ms) per page and a 20-page search takes about 20x as long as direct.
//! In-process (no `ldapsearch` fork per search), so the figure is the network path alone.
//!
//! BER is written by hand for the few fixed message shapes we send; the reader checks every
//! length against [`MAX_MESSAGE`] before buffering.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// OID of the simple paged results control.
const PAGED_OID: &[u8] = b"1.2.840.113556.1.4.319";
/// Largest LDAP message we accept (a page of 100 small entries is a few KiB).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Upper bound on pages of one search (2,000 entries / 100 per page = 20).
const MAX_PAGES: usize = 10_000;

/// What to search for.
#[derive(Debug, Clone)]
pub struct Search {
    pub base: String,
    /// `(attr=value)`, or `(attr=*)` for presence.
    pub filter: (String, String),
    pub attrs: Vec<String>,
    pub page_size: u32,
}

/// One bound LDAP connection.
#[derive(Debug)]
pub struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    next_id: u32,
}

impl Conn {
    /// Connects (TCP_NODELAY, as libldap does) and binds.
    pub fn bind(addr: SocketAddr, dn: &str, password: &str) -> anyhow::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("LDAP connect to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        let r = BufReader::with_capacity(64 * 1024, s.try_clone()?);
        let mut c = Conn {
            w: s,
            r,
            next_id: 1,
        };
        let op = tlv(
            0x60,
            &[
                int(0x02, 3),
                tlv(0x04, dn.as_bytes()),
                tlv(0x80, password.as_bytes()),
            ]
            .concat(),
        );
        let id = c.send(&op, None)?;
        let msg = c.recv()?;
        let (rid, tag, body, _) = split_message(&msg)?;
        if rid != id || tag != 0x61 {
            bail!("expected BindResponse to message {id}, got tag {tag:#x} for {rid}");
        }
        let code = result_code(body)?;
        if code != 0 {
            bail!("LDAP bind failed with result code {code}");
        }
        Ok(c)
    }

    /// One complete paged search; returns (entries, pages).
    pub fn paged_search(&mut self, s: &Search) -> anyhow::Result<(usize, usize)> {
        let mut cookie: Vec<u8> = Vec::new();
        let (mut entries, mut pages) = (0, 0);
        loop {
            if pages >= MAX_PAGES {
                bail!("more than {MAX_PAGES} pages");
            }
            let id = self.send(&search_op(s), Some(&paged_control(s.page_size, &cookie)))?;
            pages += 1;
            loop {
                let msg = self.recv()?;
                let (rid, tag, body, controls) = split_message(&msg)?;
                if rid != id {
                    bail!("response for message {rid} while waiting for {id}");
                }
                match tag {
                    0x64 => entries += 1,
                    0x73 => {}
                    0x65 => {
                        let code = result_code(body)?;
                        if code != 0 {
                            bail!("search failed with result code {code}");
                        }
                        cookie = controls.map(paged_cookie).transpose()?.unwrap_or_default();
                        break;
                    }
                    other => bail!("unexpected LDAP op tag {other:#x} in a search"),
                }
            }
            if cookie.is_empty() {
                return Ok((entries, pages));
            }
        }
    }

    fn send(&mut self, op: &[u8], controls: Option<&[u8]>) -> anyhow::Result<u32> {
        let id = self.next_id;
        self.next_id += 1;
        let mut content = int(0x02, id);
        content.extend_from_slice(op);
        if let Some(c) = controls {
            content.extend_from_slice(c);
        }
        self.w
            .write_all(&tlv(0x30, &content))
            .context("LDAP write")?;
        Ok(id)
    }

    /// Reads one LDAPMessage (its SEQUENCE content).
    fn recv(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut head = [0u8; 2];
        self.r.read_exact(&mut head).context("LDAP read")?;
        if head[0] != 0x30 {
            bail!("LDAP message does not start with SEQUENCE ({:#x})", head[0]);
        }
        let len = if head[1] & 0x80 == 0 {
            usize::from(head[1])
        } else {
            let n = usize::from(head[1] & 0x7f);
            if n == 0 || n > 4 {
                bail!("unsupported BER length of {n} bytes");
            }
            let mut b = [0u8; 4];
            self.r.read_exact(&mut b[4 - n..]).context("LDAP read")?;
            u32::from_be_bytes(b) as usize
        };
        if len > MAX_MESSAGE {
            bail!("LDAP message of {len} bytes exceeds {MAX_MESSAGE}");
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).context("LDAP read")?;
        Ok(body)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // UnbindRequest: [APPLICATION 2] NULL.
        let _ = self.send(&[0x42, 0x00], None);
    }
}

fn search_op(s: &Search) -> Vec<u8> {
    let (attr, value) = (&s.filter.0, &s.filter.1);
    let filter = if value == "*" {
        tlv(0x87, attr.as_bytes()) // present
    } else {
        tlv(
            0xa3, // equalityMatch
            &[tlv(0x04, attr.as_bytes()), tlv(0x04, value.as_bytes())].concat(),
        )
    };
    let attrs: Vec<u8> = s
        .attrs
        .iter()
        .flat_map(|a| tlv(0x04, a.as_bytes()))
        .collect();
    tlv(
        0x63,
        &[
            tlv(0x04, s.base.as_bytes()),
            tlv(0x0a, &[2]), // wholeSubtree
            tlv(0x0a, &[0]), // neverDerefAliases
            int(0x02, 0),    // sizeLimit
            int(0x02, 0),    // timeLimit
            tlv(0x01, &[0]), // typesOnly
            filter,
            tlv(0x30, &attrs),
        ]
        .concat(),
    )
}

fn paged_control(size: u32, cookie: &[u8]) -> Vec<u8> {
    let value = tlv(0x30, &[int(0x02, size), tlv(0x04, cookie)].concat());
    let control = tlv(
        0x30,
        &[tlv(0x04, PAGED_OID), tlv(0x01, &[0xff]), tlv(0x04, &value)].concat(),
    );
    tlv(0xa0, &control)
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(content.len() + 6);
    v.push(tag);
    let n = content.len();
    if n < 0x80 {
        v.push(n as u8);
    } else {
        let b = (n as u32).to_be_bytes();
        let skip = b.iter().take_while(|&&x| x == 0).count();
        v.push(0x80 | (4 - skip) as u8);
        v.extend_from_slice(&b[skip..]);
    }
    v.extend_from_slice(content);
    v
}

/// A non-negative INTEGER (or ENUMERATED) in minimal two's complement.
fn int(tag: u8, n: u32) -> Vec<u8> {
    let b = n.to_be_bytes();
    let mut skip = b.iter().take_while(|&&x| x == 0).count().min(3);
    if b[skip] & 0x80 != 0 && skip > 0 {
        skip -= 1; // keep a leading zero so the value stays positive
    }
    let mut v = if b[skip] & 0x80 != 0 { vec![0] } else { vec![] };
    v.extend_from_slice(&b[skip..]);
    tlv(tag, &v)
}

/// Walks BER elements of a buffer.
struct Ber<'a>(&'a [u8]);

impl<'a> Ber<'a> {
    fn next(&mut self) -> anyhow::Result<Option<(u8, &'a [u8])>> {
        let buf = self.0;
        if buf.is_empty() {
            return Ok(None);
        }
        if buf.len() < 2 {
            bail!("truncated BER element");
        }
        let (len, head) = if buf[1] & 0x80 == 0 {
            (usize::from(buf[1]), 2)
        } else {
            let n = usize::from(buf[1] & 0x7f);
            if n == 0 || n > 4 || buf.len() < 2 + n {
                bail!("bad BER length");
            }
            let len = buf[2..2 + n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, 2 + n)
        };
        let end = head.checked_add(len).filter(|&e| e <= buf.len());
        let Some(end) = end else {
            bail!("BER element longer than its container");
        };
        self.0 = &buf[end..];
        Ok(Some((buf[0], &buf[head..end])))
    }

    fn expect(&mut self, tag: u8) -> anyhow::Result<&'a [u8]> {
        match self.next()? {
            Some((t, v)) if t == tag => Ok(v),
            Some((t, _)) => bail!("expected BER tag {tag:#x}, got {t:#x}"),
            None => bail!("expected BER tag {tag:#x}, got the end"),
        }
    }
}

fn uint(bytes: &[u8]) -> anyhow::Result<u32> {
    if bytes.is_empty() || bytes.len() > 5 {
        bail!("bad INTEGER length {}", bytes.len());
    }
    Ok(bytes.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b)) as u32)
}

/// (messageID, protocolOp tag, protocolOp content, controls content).
type Parts<'a> = (u32, u8, &'a [u8], Option<&'a [u8]>);

fn split_message(msg: &[u8]) -> anyhow::Result<Parts<'_>> {
    let mut b = Ber(msg);
    let id = uint(b.expect(0x02)?)?;
    let Some((tag, body)) = b.next()? else {
        bail!("LDAP message without a protocolOp");
    };
    let mut controls = None;
    while let Some((t, v)) = b.next()? {
        if t == 0xa0 {
            controls = Some(v);
        }
    }
    Ok((id, tag, body, controls))
}

/// The resultCode of an LDAPResult.
fn result_code(body: &[u8]) -> anyhow::Result<u32> {
    uint(Ber(body).expect(0x0a)?)
}

/// The cookie of the paged results control among `controls` (empty when absent).
fn paged_cookie(controls: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut list = Ber(controls);
    while let Some((tag, control)) = list.next()? {
        if tag != 0x30 {
            continue;
        }
        let mut c = Ber(control);
        if c.expect(0x04)? != PAGED_OID {
            continue;
        }
        let mut value = None;
        while let Some((t, v)) = c.next()? {
            if t == 0x04 {
                value = Some(v);
            }
        }
        let Some(value) = value else {
            bail!("paged results control without a value");
        };
        let mut seq = Ber(Ber(value).expect(0x30)?);
        let _size = seq.expect(0x02)?;
        return Ok(seq.expect(0x04)?.to_vec());
    }
    Ok(Vec::new())
}

/// Latencies of complete paged searches on one bound connection, back to back.
#[derive(Debug)]
pub struct Run {
    pub ms: Vec<f64>,
    pub entries: usize,
    pub pages: usize,
    pub wall_s: f64,
}

/// `warmup` unrecorded searches, then up to `count` timed ones within `max_secs`.
pub fn run(
    addr: SocketAddr,
    dn: &str,
    password: &str,
    search: &Search,
    count: usize,
    warmup: usize,
    max_secs: f64,
) -> anyhow::Result<Run> {
    let mut conn = Conn::bind(addr, dn, password)?;
    for _ in 0..warmup {
        conn.paged_search(search)?;
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(max_secs);
    let mut out = Run {
        ms: Vec::with_capacity(count),
        entries: 0,
        pages: 0,
        wall_s: 0.0,
    };
    while out.ms.len() < count && Instant::now() < deadline {
        let t = Instant::now();
        let (e, p) = conn.paged_search(search)?;
        out.ms.push(t.elapsed().as_secs_f64() * 1e3);
        out.entries = e;
        out.pages = p;
    }
    out.wall_s = start.elapsed().as_secs_f64();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ber_lengths_and_integers() {
        assert_eq!(tlv(0x04, b"ab"), vec![0x04, 2, b'a', b'b']);
        let long = tlv(0x04, &[0u8; 200]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
        assert_eq!(int(0x02, 0), vec![0x02, 1, 0]);
        assert_eq!(int(0x02, 3), vec![0x02, 1, 3]);
        assert_eq!(int(0x02, 128), vec![0x02, 2, 0, 128]);
        assert_eq!(int(0x02, 1000), vec![0x02, 2, 0x03, 0xe8]);
        assert_eq!(uint(&[0x00, 0x80]).expect("int"), 128);
    }

    #[test]
    fn reads_the_paged_cookie_back() {
        let ctl = paged_control(100, b"cookie!");
        let mut outer = Ber(&ctl);
        let (tag, inner) = outer.next().expect("ber").expect("element");
        assert_eq!(tag, 0xa0);
        assert_eq!(paged_cookie(inner).expect("cookie"), b"cookie!");
        assert!(paged_cookie(&[]).expect("none").is_empty());
    }

    #[test]
    fn rejects_overlong_elements() {
        assert!(Ber(&[0x04, 0x05, 1, 2]).next().is_err());
        assert!(Ber(&[0x04, 0x85, 1, 1, 1, 1, 1]).next().is_err());
    }
}
