//! The server name (SNI) of a TLS ClientHello, read from the first bytes a client sends.
//!
//! Pure: [`parse_client_hello`] looks at a byte prefix and says what it is, and a caller that
//! owns the socket decides what to do with the answer (peek more, route, refuse). It never
//! decrypts anything (a ClientHello is plaintext) and never keeps the bytes.
//!
//! Bounds: the ClientHello may span several handshake records (reassembled), but the bytes it
//! takes, record headers included, are at most [`MAX_PEEK_BYTES`]; every length is checked
//! before anything after it is read, and a prefix is refused as soon as it can no longer be a
//! ClientHello (a first byte that is not the handshake content type is refused alone), so a
//! client can not make a caller buffer what it will refuse anyway.

/// A TLS record header: content type, legacy version, length.
pub const RECORD_HEADER_LEN: usize = 5;
/// The largest plaintext record TLS allows (RFC 8446 5.1: 2^14).
pub const MAX_RECORD_LEN: usize = 16 * 1024;
/// The most bytes a ClientHello may take, record headers included: 16 KiB of records plus
/// the headers of up to four records.
pub const MAX_PEEK_BYTES: usize = MAX_RECORD_LEN + 4 * RECORD_HEADER_LEN;
/// The longest DNS name (RFC 1035: 253 characters in text form, without the trailing dot).
pub const MAX_NAME_LEN: usize = 253;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const HANDSHAKE_HEADER_LEN: usize = 4;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;

/// What a byte prefix of a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHello {
    /// A complete ClientHello naming this host: ASCII, lowercase, without a trailing dot.
    Sni(String),
    /// A complete ClientHello without a server name.
    NoSni,
    /// Could still be a ClientHello: at least this many bytes in all (from the first) are
    /// needed to tell. Never more than [`MAX_PEEK_BYTES`].
    NeedMore(usize),
    /// Not a ClientHello, or one this parser refuses.
    Invalid(Invalid),
}

/// Why a prefix is not an acceptable ClientHello. Each is the peer's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// A record whose content type is not handshake (22): e.g. plain text such as `GET /`.
    NotHandshake,
    /// A record whose legacy version is not 3.x.
    BadVersion,
    /// A record of length 0 or above 2^14.
    BadRecordLength,
    /// The handshake message is not a ClientHello.
    NotClientHello,
    /// The ClientHello would take more than [`MAX_PEEK_BYTES`].
    TooLarge,
    /// A length inside the ClientHello that does not fit its container.
    Malformed,
    /// The server name is not a plausible DNS host name.
    BadServerName,
}

impl Invalid {
    /// A short stable label (logs, audit detail).
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::NotHandshake => "not_handshake",
            Invalid::BadVersion => "bad_version",
            Invalid::BadRecordLength => "bad_record_length",
            Invalid::NotClientHello => "not_client_hello",
            Invalid::TooLarge => "too_large",
            Invalid::Malformed => "malformed",
            Invalid::BadServerName => "bad_server_name",
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Looks at the first bytes a client sent (`buf`, from the first byte on; bytes after the
/// ClientHello are ignored). Never panics, whatever `buf` holds.
pub fn parse_client_hello(buf: &[u8]) -> ClientHello {
    match reassemble(buf) {
        Ok(msg) => match server_name(msg.as_slice()) {
            Ok(Some(name)) => ClientHello::Sni(name),
            Ok(None) => ClientHello::NoSni,
            Err(e) => ClientHello::Invalid(e),
        },
        Err(Step::Need(n)) if n > MAX_PEEK_BYTES => ClientHello::Invalid(Invalid::TooLarge),
        Err(Step::Need(n)) => ClientHello::NeedMore(n),
        Err(Step::Bad(e)) => ClientHello::Invalid(e),
    }
}

enum Step {
    /// At least this many bytes in all are needed.
    Need(usize),
    Bad(Invalid),
}

/// The handshake message's body, borrowed when one record holds it, else copied together.
enum Msg<'a> {
    One(&'a [u8]),
    Joined(Vec<u8>),
}

impl Msg<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Msg::One(s) => s,
            Msg::Joined(v) => v,
        }
    }
}

/// Walks the handshake records at the start of `buf` until they hold the whole first
/// handshake message, and returns its body (after the 4-byte handshake header).
fn reassemble(buf: &[u8]) -> Result<Msg<'_>, Step> {
    // Handshake bytes seen so far, by record fragment (at most a few: each is >= 1 byte and
    // the whole is bounded).
    let mut frags: Vec<&[u8]> = Vec::new();
    let mut have = 0usize;
    let mut at = 0usize;
    loop {
        let header = check_record_header(&buf[at.min(buf.len())..], at)?;
        let end = at + RECORD_HEADER_LEN + header;
        if end > MAX_PEEK_BYTES {
            return Err(Step::Bad(Invalid::TooLarge));
        }
        let body_start = at + RECORD_HEADER_LEN;
        let available = buf.len().min(end);
        let frag = buf.get(body_start..available).unwrap_or(&[]);
        // What the handshake header says (once its 4 bytes are in), checked as early as the
        // bytes allow, even before the record is complete.
        let mut head = [0u8; HANDSHAKE_HEADER_LEN];
        let mut n = 0;
        for f in frags.iter().copied().chain(std::iter::once(frag)) {
            for &b in f {
                if n == HANDSHAKE_HEADER_LEN {
                    break;
                }
                head[n] = b;
                n += 1;
            }
        }
        if n >= 1 && head[0] != HANDSHAKE_CLIENT_HELLO {
            return Err(Step::Bad(Invalid::NotClientHello));
        }
        let total = (n == HANDSHAKE_HEADER_LEN).then(|| {
            HANDSHAKE_HEADER_LEN
                + ((head[1] as usize) << 16 | (head[2] as usize) << 8 | head[3] as usize)
        });
        if let Some(total) = total {
            // Every record carries at least one byte, so the message needs at least `total`
            // handshake bytes plus the headers of the records seen.
            if total + (frags.len() + 1) * RECORD_HEADER_LEN > MAX_PEEK_BYTES {
                return Err(Step::Bad(Invalid::TooLarge));
            }
            let got = have + frag.len();
            if got >= total {
                // Complete (the rest of this record, if any, is not ours to read).
                let msg = if frags.is_empty() {
                    Msg::One(&frag[HANDSHAKE_HEADER_LEN..total])
                } else {
                    let mut v = Vec::with_capacity(total);
                    for f in frags.iter().copied().chain(std::iter::once(frag)) {
                        v.extend_from_slice(f);
                    }
                    v.truncate(total);
                    v.drain(..HANDSHAKE_HEADER_LEN);
                    Msg::Joined(v)
                };
                return Ok(msg);
            }
            if available < end {
                // Inside this record: the message ends in it or it must end first.
                let need_in_record = total - have;
                return Err(Step::Need(
                    (body_start + need_in_record).min(end).max(buf.len() + 1),
                ));
            }
        } else if available < end {
            return Err(Step::Need(
                (body_start + HANDSHAKE_HEADER_LEN - have)
                    .min(end)
                    .max(buf.len() + 1),
            ));
        }
        // This record is complete and the message goes on in the next one.
        have += frag.len();
        frags.push(frag);
        at = end;
    }
}

/// Checks the record header at the start of `rest` (which begins at offset `at` of the
/// input), as far as its bytes go; returns the record's length once all 5 are in.
fn check_record_header(rest: &[u8], at: usize) -> Result<usize, Step> {
    if let Some(&t) = rest.first() {
        if t != CONTENT_HANDSHAKE {
            return Err(Step::Bad(Invalid::NotHandshake));
        }
    }
    if let Some(&major) = rest.get(1) {
        if major != 3 {
            return Err(Step::Bad(Invalid::BadVersion));
        }
    }
    if let Some(&minor) = rest.get(2) {
        if minor > 4 {
            return Err(Step::Bad(Invalid::BadVersion));
        }
    }
    if let (Some(&hi), Some(&lo)) = (rest.get(3), rest.get(4)) {
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 || len > MAX_RECORD_LEN {
            return Err(Step::Bad(Invalid::BadRecordLength));
        }
        return Ok(len);
    }
    Err(Step::Need(at + RECORD_HEADER_LEN))
}

/// A cursor that checks every length before it reads.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        if n > self.buf.len() {
            return Err(Invalid::Malformed);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Invalid> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Invalid> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a `u8` length prefix.
    fn vec8(&mut self) -> Result<&'a [u8], Invalid> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a `u16` length prefix.
    fn vec16(&mut self) -> Result<&'a [u8], Invalid> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The host name in a ClientHello body (RFC 8446 4.1.2, RFC 6066 3), if it has one.
fn server_name(body: &[u8]) -> Result<Option<String>, Invalid> {
    let mut r = Reader { buf: body };
    let _legacy_version = r.take(2)?;
    let _random = r.take(32)?;
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return Err(Invalid::Malformed);
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Invalid::Malformed);
    }
    if r.vec8()?.is_empty() {
        return Err(Invalid::Malformed);
    }
    if r.is_empty() {
        // A hello without extensions (TLS 1.0-era clients): valid, and nameless.
        return Ok(None);
    }
    let mut exts = Reader { buf: r.vec16()? };
    if !r.is_empty() {
        return Err(Invalid::Malformed);
    }
    let mut found = None;
    while !exts.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != EXT_SERVER_NAME {
            continue;
        }
        if found.is_some() {
            // RFC 8446 4.2: at most one extension of a type.
            return Err(Invalid::Malformed);
        }
        found = Some(host_name(data)?);
    }
    Ok(found.flatten())
}

/// The first `host_name` entry of a `server_name` extension's data.
fn host_name(data: &[u8]) -> Result<Option<String>, Invalid> {
    let mut outer = Reader { buf: data };
    let mut list = Reader {
        buf: outer.vec16()?,
    };
    if !outer.is_empty() || list.is_empty() {
        return Err(Invalid::Malformed);
    }
    let mut name = None;
    while !list.is_empty() {
        let kind = list.u8()?;
        let value = list.vec16()?;
        if kind == NAME_TYPE_HOST && name.is_none() {
            name = Some(value);
        }
    }
    let Some(raw) = name else {
        return Ok(None);
    };
    let raw = raw.strip_suffix(b".").unwrap_or(raw);
    if raw.is_empty() || raw.len() > MAX_NAME_LEN || !raw.iter().all(|&b| is_name_byte(b)) {
        return Err(Invalid::BadServerName);
    }
    Ok(Some(
        raw.iter()
            .map(|b| char::from(b.to_ascii_lowercase()))
            .collect(),
    ))
}

/// Letters, digits, `-`, `.`, and `_` (seen in some internal names): what a host name may hold.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
}

#[cfg(test)]
mod tests;
