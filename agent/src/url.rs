//! The relay URL (`ws://` or `wss://`), parsed just enough to dial it: no general URL crate.

use std::fmt;

/// A parsed `ws://` / `wss://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayUrl {
    /// `wss://`: TLS to the relay.
    pub secure: bool,
    /// Host name or IP literal, without IPv6 brackets (what DNS, SNI and certificates see).
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl RelayUrl {
    /// Parses `ws[s]://host[:port][/path][?query]`. Userinfo and fragments are refused: a token
    /// belongs in the token file, not in a URL that ends up in logs.
    pub fn parse(s: &str) -> Result<RelayUrl, String> {
        let s = s.trim();
        let (secure, rest) = if let Some(r) = strip_prefix_ci(s, "wss://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(s, "ws://") {
            (false, r)
        } else {
            return Err("must start with wss:// (or ws:// for local development)".into());
        };
        if s.chars().any(|c| c.is_control() || c == ' ') {
            return Err("must not contain spaces or control characters".into());
        }
        if s.contains('#') {
            return Err("must not contain a #fragment".into());
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return Err("must not contain user:password@; use the token file".into());
        }
        let default_port = if secure { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or("unclosed [ in IPv6 host")?;
            let host = &v6[..end];
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("`{host}` is not an IPv6 address"));
            }
            let after = &v6[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => parse_port(p)?,
                None if after.is_empty() => default_port,
                None => return Err("unexpected text after the IPv6 host".into()),
            };
            (host.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), parse_port(p)?),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err("has no host".into());
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
        {
            return Err(format!("`{host}` is not a valid host name"));
        }
        Ok(RelayUrl {
            secure,
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }

    /// `host:port` with brackets around IPv6, as in a Host header or a log line.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `scheme://host:port` without the path and query (which may carry parameters an operator
    /// would not want shown), as in a status line.
    pub fn origin(&self) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        format!("{scheme}://{}", self.authority())
    }

    /// The URL as text (canonical form).
    pub fn as_string(&self) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.authority(), self.path)
    }
}

impl fmt::Debug for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_string())
    }
}

impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_string())
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{p}` is not a port between 1 and 65535")),
        Ok(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let u = RelayUrl::parse("wss://Relay.Example.com/tunnel").expect("valid");
        assert_eq!(
            u,
            RelayUrl {
                secure: true,
                host: "relay.example.com".into(),
                port: 443,
                path: "/tunnel".into()
            }
        );
        let u = RelayUrl::parse("ws://127.0.0.1:8765/tunnel?x=1").expect("valid");
        assert!(!u.secure);
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8765));
        assert_eq!(u.path, "/tunnel?x=1");
        assert_eq!(u.origin(), "ws://127.0.0.1:8765", "no path or query");
        let u = RelayUrl::parse("wss://[::1]:9000").expect("valid");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9000, "/")
        );
        assert_eq!(u.to_string(), "wss://[::1]:9000/");
        let u = RelayUrl::parse("ws://h?q").expect("valid");
        assert_eq!(u.path, "/?q");
    }

    #[test]
    fn refuses_what_it_cannot_dial() {
        for bad in [
            "https://relay/tunnel",
            "wss://",
            "wss://:443/x",
            "wss://user:pw@relay/tunnel",
            "wss://relay:0/",
            "wss://relay:99999/",
            "wss://[::1/",
            "wss://re lay/",
            "wss://relay/#frag",
        ] {
            assert!(RelayUrl::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
