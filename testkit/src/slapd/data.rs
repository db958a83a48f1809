//! The directory every private slapd is loaded with, and helpers to compare ldapsearch output.

use std::fmt::Write as _;

use super::{BASE_DN, BIG_ENTRY_UID, GROUPS_BASE, PEOPLE_BASE, PEOPLE_COUNT};

/// Splits LDIF (ldapsearch output) into entries, drops `#` comment lines (e.g. paged-results
/// cookies) and blank lines, and sorts the entries, so outputs of the same search compare equal
/// regardless of entry order and paging. Attribute order inside an entry is kept as is.
pub fn normalize_ldif(ldif: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(ldif);
    let mut entries = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        let boundary = line.trim().is_empty() || line.starts_with("dn:");
        if boundary && !current.is_empty() {
            entries.push(std::mem::take(&mut current));
        }
        if !line.trim().is_empty() {
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.is_empty() {
        entries.push(current);
    }
    entries.sort();
    entries
}

/// Number of entries (`dn:` / `dn::` lines) in LDIF output.
pub fn count_entries(ldif: &[u8]) -> usize {
    String::from_utf8_lossy(ldif)
        .lines()
        .filter(|l| l.starts_with("dn:"))
        .count()
}

/// The LDIF loaded into every instance (base, OUs, people, groups), for tests that want to
/// compare against the source data.
pub fn directory_ldif() -> String {
    let mut out = String::new();
    entry(
        &mut out,
        BASE_DN,
        &[
            ("objectClass", "top"),
            ("objectClass", "dcObject"),
            ("objectClass", "organization"),
            ("dc", "example"),
            ("o", "Example Organisation — Überprüfung"),
        ],
    );
    entry(
        &mut out,
        PEOPLE_BASE,
        &[
            ("objectClass", "top"),
            ("objectClass", "organizationalUnit"),
            ("ou", "people"),
        ],
    );
    entry(
        &mut out,
        GROUPS_BASE,
        &[
            ("objectClass", "top"),
            ("objectClass", "organizationalUnit"),
            ("ou", "groups"),
        ],
    );
    const GIVEN: &[&str] = &[
        "Zoë", "Jürgen", "Ægir", "Søren", "José", "Chloé", "Ana", "Lukas",
    ];
    const SURNAMES: &[&str] = &[
        "Müller",
        "Ångström",
        "Nuñez",
        "Dvořák",
        "Smith",
        "Øberg",
        "Łukasiewicz",
        "Ivanov",
    ];
    for i in 0..PEOPLE_COUNT {
        let uid = person_uid(i);
        let dn = format!("uid={uid},{PEOPLE_BASE}");
        let given = GIVEN[i % GIVEN.len()];
        let sn = SURNAMES[(i / GIVEN.len() + i) % SURNAMES.len()];
        let cn = format!("{given} {sn} {i:03}");
        let mail = format!("{uid}@example.org");
        let number = i.to_string();
        let description = long_text(i, 512 + i * 64);
        let big = (uid == BIG_ENTRY_UID).then(|| long_text(i + 7, 96 * 1024));
        let mut attrs = vec![
            ("objectClass", "top"),
            ("objectClass", "person"),
            ("objectClass", "organizationalPerson"),
            ("objectClass", "inetOrgPerson"),
            ("uid", uid.as_str()),
            ("cn", cn.as_str()),
            ("sn", sn),
            ("givenName", given),
            ("mail", mail.as_str()),
            ("employeeNumber", number.as_str()),
            ("description", description.as_str()),
        ];
        if let Some(big) = &big {
            attrs.push(("description", big.as_str()));
        }
        entry(&mut out, &dn, &attrs);
    }
    let staff: Vec<String> = (0..PEOPLE_COUNT)
        .map(|i| format!("uid={},{PEOPLE_BASE}", person_uid(i)))
        .collect();
    let mut attrs = vec![
        ("objectClass", "top"),
        ("objectClass", "groupOfNames"),
        ("cn", "staff"),
        ("description", "Alle Mitarbeiter — tous les employés — 全员"),
    ];
    attrs.extend(staff.iter().map(|m| ("member", m.as_str())));
    entry(&mut out, &format!("cn=staff,{GROUPS_BASE}"), &attrs);
    let mut attrs = vec![
        ("objectClass", "top"),
        ("objectClass", "groupOfNames"),
        ("cn", "admins"),
    ];
    attrs.extend(staff.iter().take(3).map(|m| ("member", m.as_str())));
    entry(&mut out, &format!("cn=admins,{GROUPS_BASE}"), &attrs);
    out
}

/// `user000`, `user001`, ...
pub fn person_uid(i: usize) -> String {
    format!("user{i:03}")
}

/// Appends one LDIF entry; values that are not LDIF SAFE-STRINGs (non-ASCII etc.) are base64.
fn entry(out: &mut String, dn: &str, attrs: &[(&str, &str)]) {
    ldif_line(out, "dn", dn);
    for (name, value) in attrs {
        ldif_line(out, name, value);
    }
    out.push('\n');
}

fn ldif_line(out: &mut String, name: &str, value: &str) {
    let safe = value
        .bytes()
        .all(|b| b.is_ascii() && b != b'\n' && b != b'\r' && b != 0)
        && !value.starts_with([' ', ':', '<'])
        && !value.ends_with(' ');
    if safe {
        let _ = writeln!(out, "{name}: {value}");
    } else {
        let _ = writeln!(out, "{name}:: {}", base64(value.as_bytes()));
    }
}

/// Deterministic text of about `len` bytes (cut at a char boundary), mixing ASCII with 2-, 3- and
/// 4-byte UTF-8 sequences.
fn long_text(seed: usize, len: usize) -> String {
    const PHRASES: &[&str] = &[
        "Grüße aus Köln",
        "plain ASCII filler so that not everything is exotic",
        "Ærøskøbing Fähre",
        "Ελληνικά γράμματα",
        "Привет, мир",
        "日本語のテキスト",
        "naïve café crème brûlée",
        "rocket 🚀 and globe 🌍",
        "Zażółć gęślą jaźń",
    ];
    let mut s = format!("Entry {seed:03}: ");
    let mut i = seed;
    while s.len() < len {
        s.push_str(PHRASES[i % PHRASES.len()]);
        s.push_str(" — ");
        i += 1;
    }
    let mut cut = len.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.trim_end().to_string()
}

fn base64(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(chunk[0]) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let sextet = |shift: u32| char::from(TABLE[((n >> shift) & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}
