//! STATUS (v2 only, agent -> relay, stream id 0): the agent's report of its targets' health,
//! and the HELLO_ACK `features` that say a relay understands it.
//!
//! ```text
//! {"targets":{"addomain":[{"target":"dc1.corp.local:636","up":true,"since_ms":1200,"failures":0}, ...]}}
//! ```
//! `since_ms`: how long the target had been in its state when the agent sent the report.
//! The body is at most [`MAX_STATUS_LEN`] bytes, checked before the JSON parser sees a byte;
//! unknown fields are ignored (room to grow). An agent sends STATUS only to a relay whose
//! HELLO_ACK listed [`FEATURE_STATUS`]: a relay that predates it counts an undecodable frame.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::check::check_name;
use crate::error::{json_error, DecodeError, EncodeError};
use crate::limits::Limits;

/// The HELLO_ACK feature that announces STATUS.
pub const FEATURE_STATUS: &str = "status";
/// Longest STATUS body, in bytes.
pub const MAX_STATUS_LEN: usize = 8 * 1024;
/// Most targets one connector may report (the agent's per-connector host limit).
pub const MAX_STATUS_TARGETS: usize = 16;
/// Longest `target` (`host:port`: a 253-byte DNS name, brackets, colon and port).
pub const MAX_TARGET_LEN: usize = 262;

/// The targets of each reported connector, in the agent's configuration order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub targets: BTreeMap<String, Vec<TargetStatus>>,
}

/// One target host's health as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// `host:port` as configured (IPv6 in brackets).
    pub target: String,
    pub up: bool,
    /// Milliseconds it had been up (or down) when the report was sent.
    pub since_ms: u64,
    /// Failed connect attempts on it since the agent configured it.
    pub failures: u64,
}

impl Status {
    /// Checks every field against `limits` (connector names and count) and this module's bounds.
    pub fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        if self.targets.len() > limits.max_connectors {
            return Err(DecodeError::TooMany {
                field: "targets",
                count: self.targets.len(),
                max: limits.max_connectors,
            });
        }
        for (connector, list) in &self.targets {
            check_name("connector", connector, limits.max_connector_len)?;
            if list.len() > MAX_STATUS_TARGETS {
                return Err(DecodeError::TooMany {
                    field: "target",
                    count: list.len(),
                    max: MAX_STATUS_TARGETS,
                });
            }
            for t in list {
                check_name("target", &t.target, MAX_TARGET_LEN)?;
            }
        }
        Ok(())
    }

    /// Decodes a STATUS body: the length first, then the JSON, then [`Status::validate`].
    pub fn decode_body(body: &[u8], limits: &Limits) -> Result<Status, DecodeError> {
        if body.len() > MAX_STATUS_LEN {
            return Err(DecodeError::Oversized {
                len: body.len(),
                max: MAX_STATUS_LEN,
            });
        }
        if body.first() != Some(&b'{') {
            return Err(DecodeError::NotAnObject);
        }
        let s: Status = serde_json::from_slice(body).map_err(json_error)?;
        s.validate(limits)?;
        Ok(s)
    }

    /// Appends the JSON body; refused (nothing appended) when invalid or longer than
    /// [`MAX_STATUS_LEN`].
    pub fn encode_body(&self, limits: &Limits, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.validate(limits)?;
        let start = out.len();
        // Serialising maps of strings, bools and numbers into a Vec cannot fail.
        serde_json::to_writer(&mut *out, self)
            .map_err(|_| EncodeError::Invalid(DecodeError::NotAnObject))?;
        let len = out.len() - start;
        if len > MAX_STATUS_LEN {
            out.truncate(start);
            return Err(DecodeError::Oversized {
                len,
                max: MAX_STATUS_LEN,
            }
            .into());
        }
        Ok(())
    }
}

/// What a relay's HELLO_ACK announces it understands beyond the base protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// The relay decodes STATUS.
    pub status: bool,
}

impl Features {
    /// What a relay built from this crate understands (its HELLO_ACK lists these).
    pub const OURS: Features = Features { status: true };

    /// The features a v2 HELLO_ACK body lists (`{"features":["status"]}`). An empty body, a
    /// body without `features` or one that does not parse announces none: an older relay.
    pub fn from_hello_ack_body(body: &[u8]) -> Features {
        #[derive(Deserialize)]
        struct Body<'a> {
            #[serde(borrow, default)]
            features: Vec<std::borrow::Cow<'a, str>>,
        }
        if body.len() > MAX_STATUS_LEN {
            return Features::default();
        }
        let Ok(b) = serde_json::from_slice::<Body<'_>>(body) else {
            return Features::default();
        };
        Features {
            status: b.features.iter().any(|f| f == FEATURE_STATUS),
        }
    }

    /// The HELLO_ACK body announcing these features.
    pub fn hello_ack_body(self) -> &'static [u8] {
        if self.status {
            br#"{"features":["status"]}"#
        } else {
            b"{}"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(n_connectors: usize, n_targets: usize) -> Status {
        let mut s = Status::default();
        for c in 0..n_connectors {
            let list = (0..n_targets)
                .map(|i| TargetStatus {
                    target: format!("dc{i}.corp.local:636"),
                    up: i % 2 == 0,
                    since_ms: 1_000 * i as u64,
                    failures: i as u64,
                })
                .collect();
            s.targets.insert(format!("c{c}"), list);
        }
        s
    }

    #[test]
    fn round_trips_and_ignores_unknown_fields() {
        let l = Limits::default();
        let s = report(2, 3);
        let mut body = Vec::new();
        s.encode_body(&l, &mut body).expect("encodes");
        assert_eq!(Status::decode_body(&body, &l), Ok(s));
        let grown = br#"{"targets":{"ad":[{"target":"h:1","up":false,"since_ms":5,"failures":2,"rtt_ms":3}]},"v":2}"#;
        let s = Status::decode_body(grown, &l).expect("unknown fields ignored");
        assert!(!s.targets["ad"][0].up);
    }

    #[test]
    fn bounds_are_checked_before_and_after_parsing() {
        let l = Limits::default();
        let big = vec![b' '; MAX_STATUS_LEN + 1];
        assert!(matches!(
            Status::decode_body(&big, &l),
            Err(DecodeError::Oversized { .. })
        ));
        assert_eq!(
            Status::decode_body(b"[1]", &l),
            Err(DecodeError::NotAnObject)
        );
        let mut body = Vec::new();
        let too_many = report(1, MAX_STATUS_TARGETS + 1);
        assert!(too_many.encode_body(&l, &mut body).is_err());
        assert!(body.is_empty());
        let bad_name = br#"{"targets":{"":[]}}"#;
        assert_eq!(
            Status::decode_body(bad_name, &l),
            Err(DecodeError::Empty { field: "connector" })
        );
        let ctl = br#"{"targets":{"ad":[{"target":"a\nb","up":true,"since_ms":0,"failures":0}]}}"#;
        assert_eq!(
            Status::decode_body(ctl, &l),
            Err(DecodeError::ControlChar { field: "target" })
        );
        // 64 connectors of 16 long targets do not fit in 8 KiB: the encoder refuses.
        let mut huge = report(64, 16);
        for list in huge.targets.values_mut() {
            for t in list {
                t.target = format!("{}:636", "h".repeat(200));
            }
        }
        assert!(huge.encode_body(&l, &mut body).is_err());
        assert!(body.is_empty(), "nothing appended");
    }

    #[test]
    fn hello_ack_features() {
        let ours = Features::OURS.hello_ack_body();
        assert_eq!(
            Features::from_hello_ack_body(ours),
            Features { status: true }
        );
        for old in [
            &b""[..],
            b"{}",
            b"{\"features\":[]}",
            b"not json",
            b"{\"features\":3}",
        ] {
            assert_eq!(Features::from_hello_ack_body(old), Features::default());
        }
        let more = br#"{"features":["x","status"],"other":1}"#;
        assert!(Features::from_hello_ack_body(more).status);
    }
}
