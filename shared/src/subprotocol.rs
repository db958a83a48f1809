//! WebSocket subprotocol names and the negotiation rule.
//!
//! The agent offers `nowconnect.v2, nowconnect.v1`. The relay picks v2 when offered, else v1.
//! A client that offers no subprotocol at all is a reference-system agent and speaks v1 (the
//! relay then answers without a `Sec-WebSocket-Protocol` header). A client that offers only
//! protocols we do not know is refused.

/// Binary frames with credit flow control.
pub const V2: &str = "nowconnect.v2";
/// The reference system's JSON text frames.
pub const V1: &str = "nowconnect.v1";
/// What our agent sends in `Sec-WebSocket-Protocol`, most preferred first.
pub const AGENT_OFFER: &str = "nowconnect.v2, nowconnect.v1";

/// Protocol version of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => V1,
            Version::V2 => V2,
        }
    }

    pub fn from_name(name: &str) -> Option<Version> {
        match name.trim() {
            V2 => Some(Version::V2),
            V1 => Some(Version::V1),
            _ => None,
        }
    }
}

/// The relay's choice for one upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub version: Version,
    /// Value for the response's `Sec-WebSocket-Protocol`; `None` when the client offered none.
    pub echo: Option<&'static str>,
}

/// Relay side. `offered` holds every `Sec-WebSocket-Protocol` header value of the request
/// (each may be a comma-separated list). `Err` carries the header text for the refusal log.
pub fn negotiate<'a, I>(offered: I) -> Result<Negotiated, String>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut any = false;
    let mut v1 = false;
    let mut seen = String::new();
    for value in offered {
        for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            any = true;
            match Version::from_name(name) {
                Some(Version::V2) => {
                    return Ok(Negotiated {
                        version: Version::V2,
                        echo: Some(V2),
                    })
                }
                Some(Version::V1) => v1 = true,
                None => {
                    if seen.len() < 128 {
                        if !seen.is_empty() {
                            seen.push_str(", ");
                        }
                        seen.extend(name.chars().filter(|c| !c.is_control()).take(64));
                    }
                }
            }
        }
    }
    match (any, v1) {
        (_, true) => Ok(Negotiated {
            version: Version::V1,
            echo: Some(V1),
        }),
        (false, false) => Ok(Negotiated {
            version: Version::V1,
            echo: None,
        }),
        (true, false) => Err(seen),
    }
}

/// Agent side: the version the relay selected. A relay that selected nothing is a
/// reference-system hub and speaks v1; anything we did not offer is refused.
pub fn accept_selected(selected: Option<&str>) -> Result<Version, String> {
    match selected {
        None => Ok(Version::V1),
        Some(name) => Version::from_name(name)
            .ok_or_else(|| name.chars().filter(|c| !c.is_control()).take(64).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_wins_whenever_offered() {
        let n = negotiate([AGENT_OFFER]).expect("negotiates");
        assert_eq!(
            n,
            Negotiated {
                version: Version::V2,
                echo: Some(V2)
            }
        );
        let n = negotiate(["nowconnect.v1", "x, nowconnect.v2"]).expect("negotiates");
        assert_eq!(n.version, Version::V2);
    }

    #[test]
    fn v1_when_only_v1_offered() {
        let n = negotiate(["nowconnect.v1"]).expect("negotiates");
        assert_eq!(
            n,
            Negotiated {
                version: Version::V1,
                echo: Some(V1)
            }
        );
    }

    #[test]
    fn no_offer_means_reference_v1_without_echo() {
        assert_eq!(
            negotiate(std::iter::empty()).expect("negotiates"),
            Negotiated {
                version: Version::V1,
                echo: None
            }
        );
        assert_eq!(negotiate([" , "]).expect("negotiates").echo, None);
    }

    #[test]
    fn unknown_only_is_refused_and_named() {
        assert_eq!(negotiate(["chat, mqtt"]), Err("chat, mqtt".to_string()));
    }

    #[test]
    fn agent_accepts_only_what_it_offered() {
        assert_eq!(accept_selected(Some("nowconnect.v2")), Ok(Version::V2));
        assert_eq!(accept_selected(Some("nowconnect.v1")), Ok(Version::V1));
        assert_eq!(accept_selected(None), Ok(Version::V1));
        assert!(accept_selected(Some("chat")).is_err());
    }
}
