//! Protocol size limits, enforced by the decoders before anything is allocated.

/// Every bound a decoder checks. Both peers use the same defaults; a relay may lower them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest DATA payload in one frame, in raw bytes (the reference's `max_ws_payload`).
    pub max_payload: usize,
    /// Longest connector name, in bytes.
    pub max_connector_len: usize,
    /// Most connectors one HELLO may export.
    pub max_connectors: usize,
    /// Longest `agent_id`, in bytes.
    pub max_agent_id_len: usize,
    /// Longest RST reason, client address, version string or v1 `cid`, in bytes.
    pub max_short_text_len: usize,
    /// Most v1 streams whose `cid`/`seq` state one [`crate::V1Decoder`] or [`crate::V1Encoder`] keeps at once.
    pub max_v1_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: 64 * 1024,
            max_connector_len: 64,
            max_connectors: 64,
            max_agent_id_len: 128,
            max_short_text_len: 128,
            max_v1_streams: 65_536,
        }
    }
}

impl Limits {
    /// Upper bound of a HELLO body, JSON-escaped (every byte may take 6 as `\u00XX`).
    fn max_hello_json_len(&self) -> usize {
        let names = self.max_connectors * (self.max_connector_len * 6 + 3);
        256 + names + (self.max_agent_id_len + self.max_short_text_len) * 6
    }

    /// Longest v1 text frame accepted; checked before the JSON parser sees a byte.
    pub fn max_v1_text_len(&self) -> usize {
        let b64 = self.max_payload.div_ceil(3) * 4;
        (b64 + 256 + self.max_short_text_len * 6).max(self.max_hello_json_len())
    }

    /// Longest v2 binary frame accepted (header included).
    pub fn max_v2_frame_len(&self) -> usize {
        crate::binary::HEADER_LEN + self.max_payload.max(self.max_hello_json_len())
    }
}
