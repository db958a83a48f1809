//! A listener's `route_by: sni` table: which connector a TLS client goes to by the server name
//! in its ClientHello. Checked here; looked up per connection by the listener.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::collector::Collector;

/// The most `routes` one listener may have.
pub const MAX_SNI_ROUTES: usize = 256;
/// `sni_peek_timeout_ms` when unset: the whole ClientHello must be in within this, from accept.
pub const DEFAULT_SNI_PEEK_TIMEOUT_MS: u64 = 5_000;
const MAX_SNI_PEEK_TIMEOUT_MS: u64 = 60_000;
/// RFC 1035 limits, in text form without the trailing dot.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// How a listener picks a client's connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// Every client goes to this connector (`connector:`; `route_by: connector`).
    Connector(String),
    /// By the server name of the client's TLS ClientHello (`route_by: sni`).
    Sni(SniRoutes),
}

/// A checked `routes` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoutes {
    /// Lowercase names without a trailing dot, or `*.suffix` (matches a name with exactly one
    /// label before `suffix`) -> connector. An exact name wins over a wildcard.
    pub routes: BTreeMap<String, String>,
    /// The connector of a client without a server name or with one not in `routes`; `None`:
    /// such a client is closed (and audited).
    pub default: Option<String>,
    /// The ClientHello must be complete this long after accept (`sni_peek_timeout_ms`).
    pub peek_timeout: Duration,
}

/// How a connector was picked for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SniMatch {
    Exact,
    Wildcard,
    Default,
}

impl SniMatch {
    /// The `result` label of `nowconnect_sni_routed_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            SniMatch::Exact => "exact",
            SniMatch::Wildcard => "wildcard",
            SniMatch::Default => "default",
        }
    }
}

impl SniRoutes {
    /// The connector for a client that sent `name` (already lowercase, no trailing dot; `None`:
    /// no server name), and how it matched; `None`: no route and no default.
    pub fn route(&self, name: Option<&str>) -> Option<(&str, SniMatch)> {
        if let Some(name) = name {
            if let Some(c) = self.routes.get(name) {
                return Some((c, SniMatch::Exact));
            }
            if let Some((_, rest)) = name.split_once('.') {
                if let Some(c) = self.routes.get(&format!("*.{rest}")) {
                    return Some((c, SniMatch::Wildcard));
                }
            }
        }
        self.default.as_deref().map(|c| (c, SniMatch::Default))
    }

    /// Every connector a client may be routed to.
    pub fn connectors(&self) -> BTreeSet<&str> {
        self.routes
            .values()
            .map(String::as_str)
            .chain(self.default.as_deref())
            .collect()
    }
}

/// `name` lowercased, one trailing dot stripped, checked as a DNS name (or `*.` + one).
pub(super) fn normalize_name(name: &str) -> Result<String, &'static str> {
    let n = name.trim().to_ascii_lowercase();
    let n = n.strip_suffix('.').unwrap_or(&n);
    let host = n.strip_prefix("*.").unwrap_or(n);
    if host.is_empty() || host.len() > MAX_NAME_LEN {
        return Err("must be a DNS name of 1 to 253 characters");
    }
    for label in host.split('.') {
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if label.is_empty()
            || label.len() > MAX_LABEL_LEN
            || !ok_chars
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(
                "must be a DNS name (labels of 1 to 63 letters, digits, `-`, `_`; \
                 `*.` only as the whole first label)",
            );
        }
    }
    Ok(n.to_owned())
}

/// Checks `routes`, `default` and `sni_peek_timeout_ms` of `listeners[i]` (`key`).
/// `connector_name` checks one connector name (as `connector:` is checked).
pub(super) fn validate_sni(
    c: &mut Collector,
    key: &str,
    raw: (
        Option<BTreeMap<String, String>>,
        Option<String>,
        Option<u64>,
    ),
    connector_name: &dyn Fn(&mut Collector, String, &str) -> Option<String>,
) -> Option<SniRoutes> {
    let (routes_raw, default, timeout_ms) = raw;
    let routes_raw = routes_raw.unwrap_or_default();
    let mut ok = true;
    if routes_raw.is_empty() {
        c.bad(
            format!("{key}.routes"),
            "is required with route_by: sni (server name -> connector, at least one)",
        );
        ok = false;
    }
    if routes_raw.len() > MAX_SNI_ROUTES {
        c.bad(
            format!("{key}.routes"),
            format!("has {} entries; at most {MAX_SNI_ROUTES}", routes_raw.len()),
        );
        ok = false;
    }
    let mut routes = BTreeMap::new();
    for (name, connector) in routes_raw {
        let at = format!("{key}.routes.{name}");
        let norm = match normalize_name(&name) {
            Ok(n) => n,
            Err(e) => {
                c.bad(at, e);
                ok = false;
                continue;
            }
        };
        let Some(connector) = connector_name(c, at.clone(), &connector) else {
            ok = false;
            continue;
        };
        if routes.insert(norm.clone(), connector).is_some() {
            c.bad(
                at,
                format!("`{norm}` is routed twice (names are case-insensitive)"),
            );
            ok = false;
        }
    }
    let default = match default {
        None => None,
        Some(d) => match connector_name(c, format!("{key}.default"), &d) {
            Some(d) => Some(d),
            None => {
                ok = false;
                None
            }
        },
    };
    let ms = timeout_ms.unwrap_or(DEFAULT_SNI_PEEK_TIMEOUT_MS);
    if ms == 0 || ms > MAX_SNI_PEEK_TIMEOUT_MS {
        c.bad(
            format!("{key}.sni_peek_timeout_ms"),
            format!("must be between 1 and {MAX_SNI_PEEK_TIMEOUT_MS}"),
        );
        ok = false;
    }
    ok.then(|| SniRoutes {
        routes,
        default,
        peek_timeout: Duration::from_millis(ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str)], default: Option<&str>) -> SniRoutes {
        SniRoutes {
            routes: routes
                .iter()
                .map(|(n, c)| ((*n).to_owned(), (*c).to_owned()))
                .collect(),
            default: default.map(str::to_owned),
            peek_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn exact_beats_wildcard_beats_default() {
        let t = table(&[("dc1.corp.local", "a"), ("*.corp.local", "b")], Some("d"));
        assert_eq!(
            t.route(Some("dc1.corp.local")),
            Some(("a", SniMatch::Exact))
        );
        assert_eq!(
            t.route(Some("dc9.corp.local")),
            Some(("b", SniMatch::Wildcard))
        );
        // One label only, and not the bare suffix.
        assert_eq!(
            t.route(Some("x.dc9.corp.local")),
            Some(("d", SniMatch::Default))
        );
        assert_eq!(t.route(Some("corp.local")), Some(("d", SniMatch::Default)));
        assert_eq!(t.route(None), Some(("d", SniMatch::Default)));
        let t = table(&[("dc1.corp.local", "a")], None);
        assert_eq!(t.route(Some("other")), None);
        assert_eq!(t.route(None), None);
        assert_eq!(
            table(&[("x", "a"), ("y", "a")], Some("b")).connectors(),
            BTreeSet::from(["a", "b"])
        );
    }

    #[test]
    fn names_are_normalized_and_checked() {
        assert_eq!(
            normalize_name(" DC1.Corp.Local. ").as_deref(),
            Ok("dc1.corp.local")
        );
        assert_eq!(
            normalize_name("*.corp.local").as_deref(),
            Ok("*.corp.local")
        );
        for bad in [
            "",
            ".",
            "a..b",
            "-a.b",
            "a-.b",
            "a b",
            "a.*.b",
            "*",
            "*.",
            "**.a",
            &"a".repeat(64),
        ] {
            assert!(normalize_name(bad).is_err(), "{bad:?}");
        }
    }
}
