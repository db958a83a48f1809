//! Just enough DER to name a certificate's issuer in an error line ("issued by CN=Corp Proxy
//! CA, O=Corp"), so that an operator behind a TLS-inspecting proxy sees which CA to add.
//!
//! Read-only, bounded by the input slice, never panics; anything unexpected yields `None`.
//! Not used for any trust decision (rustls/webpki make those).

/// The issuer of a DER certificate as `CN=..., O=...` (common attributes only).
pub fn issuer(cert: &[u8]) -> Option<String> {
    name_field(cert, 3)
}

/// Field `index` of TBSCertificate, counting from `serialNumber` = 1 (after the optional
/// `version`): 1 serial, 2 signature, 3 issuer, 4 validity, 5 subject.
fn name_field(cert: &[u8], index: usize) -> Option<String> {
    let (tag, cert_body, _) = tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, mut tbs, _) = tlv(cert_body)?;
    if tag != 0x30 {
        return None;
    }
    // [0] EXPLICIT version is optional (absent in v1 certificates).
    let mut i = 1;
    if let Some((0xa0, _, rest)) = tlv(tbs) {
        tbs = rest;
    }
    loop {
        let (tag, body, rest) = tlv(tbs)?;
        if i == index {
            return (tag == 0x30).then(|| render_name(body)).flatten();
        }
        tbs = rest;
        i += 1;
    }
}

/// One TLV: (tag, contents, rest). Single-byte tags, definite lengths up to 4 bytes.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, r) = rest.split_at_checked(n)?;
        rest = r;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let (body, rest) = rest.split_at_checked(len)?;
    Some((tag, body, rest))
}

/// Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }.
fn render_name(mut name: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    while !name.is_empty() {
        let (tag, mut set, rest) = tlv(name)?;
        name = rest;
        if tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (tag, atv, rest) = tlv(set)?;
            set = rest;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value) = tlv(atv)?;
            if oid_tag != 0x06 {
                return None;
            }
            let label = match oid {
                [0x55, 0x04, 0x03] => "CN",
                [0x55, 0x04, 0x06] => "C",
                [0x55, 0x04, 0x07] => "L",
                [0x55, 0x04, 0x08] => "ST",
                [0x55, 0x04, 0x0a] => "O",
                [0x55, 0x04, 0x0b] => "OU",
                _ => continue,
            };
            let (vtag, v, _) = tlv(value)?;
            let text = match vtag {
                // UTF8String, PrintableString, IA5String, TeletexString (treated as Latin-1)
                0x0c | 0x13 | 0x16 => String::from_utf8_lossy(v).into_owned(),
                0x14 => v.iter().map(|&b| char::from(b)).collect(),
                // BMPString: UTF-16BE
                0x1e => {
                    let units: Vec<u16> = v
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect();
                    String::from_utf16_lossy(&units)
                }
                _ => continue,
            };
            let text: String = text.chars().filter(|c| !c.is_control()).take(100).collect();
            parts.push(format!("{label}={text}"));
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nowconnect_testkit::pki::{Ca, DnType};

    #[test]
    fn names_the_issuer() {
        let ca = Ca::with_subject(&[
            (DnType::OrganizationName, "Corp"),
            (DnType::CommonName, "Corp Proxy CA"),
        ]);
        let leaf = ca.issue(&["relay.example.com"]);
        assert_eq!(
            issuer(&leaf.der).as_deref(),
            Some("O=Corp, CN=Corp Proxy CA")
        );
        // Self-signed: issuer = subject.
        assert_eq!(
            issuer(&ca.der()).as_deref(),
            Some("O=Corp, CN=Corp Proxy CA")
        );
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        assert_eq!(issuer(&[]), None);
        assert_eq!(issuer(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(issuer(&[0x30, 0x03, 0x30, 0x01]), None);
        for len in 0..64 {
            let v: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = issuer(&v);
        }
    }
}
