//! What an applied reload did, as the caller (and the log line) sees it. A leaf: imports nothing
//! of the relay.

/// What an applied reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// What changed, one short item each (`listeners +ldap2`, `tls certificate`, `pdp`).
    pub applied: Vec<String>,
    /// Keys that changed but keep their running value until a restart.
    pub needs_restart: Vec<String>,
}

impl ReloadReport {
    /// One line: `listeners +ldap2 -old; tls certificate (needs a restart: tunnel.port)`.
    pub fn summary(&self) -> String {
        let mut s = if self.applied.is_empty() {
            "no change".to_owned()
        } else {
            self.applied.join("; ")
        };
        if !self.needs_restart.is_empty() {
            s.push_str(&format!(
                " (needs a restart, running value kept: {})",
                self.needs_restart.join(", ")
            ));
        }
        s
    }
}
