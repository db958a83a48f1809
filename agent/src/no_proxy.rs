//! `NO_PROXY` / `proxy.no_proxy`: which relay hosts are dialed directly, not through the proxy.
//!
//! Entries are separated by commas (or spaces): `*` (everything), an exact host or a domain
//! suffix (`example.com` and `.example.com` both match `example.com` and every name under it;
//! `*.example.com` too), an IP address (`10.0.0.5`, `::1`, `[::1]`), a CIDR (`10.0.0.0/8`,
//! `fd00::/8`), and any of the name or IP forms with `:port` to match only that port.
//! Names are compared as text; the relay's name is never resolved to match a CIDR.

use std::net::IpAddr;

use ipnet::IpNet;

/// Parsed bypass rules. The default bypasses nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    /// `*`: never use the proxy.
    all: bool,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// A host name or domain suffix, lower case, without leading dot.
    Name {
        name: String,
        port: Option<u16>,
    },
    Ip {
        ip: IpAddr,
        port: Option<u16>,
    },
    Net(IpNet),
}

/// Most entries we accept (a NO_PROXY list is short; this bounds a hostile value).
const MAX_ENTRIES: usize = 1024;

impl NoProxy {
    /// Parses a list; every bad entry is reported in one message.
    pub fn parse(list: &str) -> Result<NoProxy, String> {
        let mut np = NoProxy::default();
        let mut bad = Vec::new();
        for entry in list
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|e| !e.is_empty())
        {
            if np.rules.len() >= MAX_ENTRIES {
                return Err(format!("more than {MAX_ENTRIES} entries"));
            }
            match parse_entry(entry) {
                Ok(None) => np.all = true,
                Ok(Some(rule)) => np.rules.push(rule),
                Err(()) => bad.push(printable(entry)),
            }
        }
        if bad.is_empty() {
            Ok(np)
        } else {
            Err(format!(
                "not a host, domain, IP, CIDR or host:port: {}",
                bad.join(", ")
            ))
        }
    }

    /// True when `host:port` is to be dialed directly. `host` is a name or an IP literal
    /// without brackets, as in [`crate::url::RelayUrl`].
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.all {
            return true;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        self.rules.iter().any(|rule| match rule {
            Rule::Name { name, port: p } => {
                ip.is_none()
                    && port_ok(p)
                    && (host == *name
                        || host
                            .strip_suffix(name.as_str())
                            .is_some_and(|rest| rest.ends_with('.')))
            }
            Rule::Ip {
                ip: rule_ip,
                port: p,
            } => ip == Some(*rule_ip) && port_ok(p),
            Rule::Net(net) => ip.is_some_and(|ip| net.contains(&ip)),
        })
    }

    /// True when nothing is bypassed.
    pub fn is_empty(&self) -> bool {
        !self.all && self.rules.is_empty()
    }
}

/// `Ok(None)` is `*`.
fn parse_entry(entry: &str) -> Result<Option<Rule>, ()> {
    if entry == "*" {
        return Ok(None);
    }
    if entry.contains('/') {
        let net = entry
            .trim_start_matches('[')
            .replace("]/", "/")
            .parse::<IpNet>()
            .map_err(|_| ())?;
        return Ok(Some(Rule::Net(net.trunc())));
    }
    // [v6] or [v6]:port
    if let Some(rest) = entry.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or(())?;
        let ip = addr.parse::<IpAddr>().map_err(|_| ())?;
        let port = match after {
            "" => None,
            p => Some(parse_port(p.strip_prefix(':').ok_or(())?)?),
        };
        return Ok(Some(Rule::Ip {
            ip: ip.to_canonical(),
            port,
        }));
    }
    // A bare IPv6 address has several colons: no port form without brackets.
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(Some(Rule::Ip {
            ip: ip.to_canonical(),
            port: None,
        }));
    }
    let (host, port) = match entry.rsplit_once(':') {
        Some((h, p)) => (h, Some(parse_port(p)?)),
        None => (entry, None),
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Some(Rule::Ip {
            ip: ip.to_canonical(),
            port,
        }));
    }
    let name = host
        .strip_prefix("*.")
        .or_else(|| host.strip_prefix('.'))
        .unwrap_or(host)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !valid {
        return Err(());
    }
    Ok(Some(Rule::Name { name, port }))
}

fn parse_port(p: &str) -> Result<u16, ()> {
    p.parse::<u16>().ok().filter(|&p| p != 0).ok_or(())
}

fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(s: &str) -> NoProxy {
        NoProxy::parse(s).expect("valid NO_PROXY")
    }

    #[test]
    fn exact_host_and_domain_suffix() {
        for list in ["example.com", ".example.com", "*.example.com"] {
            let n = np(list);
            assert!(n.matches("example.com", 443), "{list}");
            assert!(n.matches("relay.example.com", 443), "{list}");
            assert!(n.matches("a.b.Example.COM", 1), "{list}: case-insensitive");
            assert!(!n.matches("badexample.com", 443), "{list}: label boundary");
            assert!(!n.matches("example.com.evil", 443), "{list}");
        }
        let n = np("relay.internal");
        assert!(n.matches("relay.internal", 443));
        assert!(n.matches("relay.internal.", 443), "trailing dot of an FQDN");
        assert!(!n.matches("other.internal", 443));
    }

    #[test]
    fn ips_and_cidrs() {
        let n = np("10.1.2.3, 192.168.0.0/16 ::1 [fd00::5] fd12::/16");
        assert!(n.matches("10.1.2.3", 443));
        assert!(!n.matches("10.1.2.4", 443));
        assert!(n.matches("192.168.44.1", 8443));
        assert!(!n.matches("192.169.0.1", 8443));
        assert!(n.matches("::1", 443));
        assert!(n.matches("fd00::5", 443));
        assert!(n.matches("fd12:abcd::1", 443));
        assert!(!n.matches("fd13::1", 443));
        assert!(n.matches("::ffff:10.1.2.3", 443), "v4-mapped v6");
        // A name is never resolved to match a CIDR.
        assert!(!np("127.0.0.0/8").matches("localhost", 443));
        assert!(np("[fd00::]/8").matches("fd99::1", 1), "bracketed CIDR");
    }

    #[test]
    fn ports_and_star() {
        let n = np("relay.example.com:8443,10.0.0.1:443,[::1]:9000");
        assert!(n.matches("relay.example.com", 8443));
        assert!(!n.matches("relay.example.com", 443));
        assert!(n.matches("10.0.0.1", 443));
        assert!(!n.matches("10.0.0.1", 80));
        assert!(n.matches("::1", 9000));
        assert!(!n.matches("::1", 9001));
        assert!(np("*").matches("anything", 1));
        assert!(np("a, *").matches("b", 1));
        assert!(np("").is_empty());
        assert!(!np("").matches("a", 1));
    }

    #[test]
    fn bad_entries_are_named() {
        let e = NoProxy::parse("ok.com, bad_host!, 10.0.0.0/99, h:0, [::1").expect_err("bad");
        for want in ["bad_host!", "10.0.0.0/99", "h:0", "[::1"] {
            assert!(e.contains(want), "{want} in {e}");
        }
        assert!(!e.contains("ok.com"), "{e}");
    }
}
