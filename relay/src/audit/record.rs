//! What an audit record says: its [`Action`], the [`AuditRecord`] as stored and served, and the
//! [`Event`] builder the rest of the relay fills in.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Longest `detail` kept.
pub const MAX_DETAIL: usize = 512;

/// What happened. The `as_str` names are the `action` field of records and of portal filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `/tunnel` upgrade: token accepted or refused (with the reason).
    TunnelAuth,
    /// HELLO accepted, or refused for an agent_id mismatch, an ungranted connector, a block.
    Hello,
    /// A client connection on a listener: stream allowed, or denied (cidr, pdp, scope, cap).
    Open,
    /// An agent tunnel ended, or an operator disconnected an agent.
    AgentDisconnected,
    /// A tunnel's agent_id is also connected from another source address (`success`: the new
    /// tunnel was admitted; `reason`: the `security.duplicate_agent` policy).
    DuplicateAgent,
    /// A source address failed too often and is refused for a while.
    SourceCooldown,
    /// An operator blocked an agent_id (its tunnels are refused until unblocked).
    AgentBlocked,
    /// An operator lifted a block.
    AgentUnblocked,
    /// An operator terminated a live session (stream).
    SessionTerminated,
    /// An operator turned a security policy on or off.
    PolicyToggled,
    /// A portal API request was refused (bad token, missing role, MFA policy).
    PortalAuth,
    /// The configuration was reloaded (SIGHUP), or a reload was refused (`reason`, `detail`).
    ConfigReload,
}

impl Action {
    /// Every action, in declaration order (`action as usize` indexes it).
    pub const ALL: &'static [Action] = &[
        Action::TunnelAuth,
        Action::Hello,
        Action::Open,
        Action::AgentDisconnected,
        Action::DuplicateAgent,
        Action::SourceCooldown,
        Action::AgentBlocked,
        Action::AgentUnblocked,
        Action::SessionTerminated,
        Action::PolicyToggled,
        Action::PortalAuth,
        Action::ConfigReload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::TunnelAuth => "tunnel_auth",
            Action::Hello => "hello",
            Action::Open => "open",
            Action::AgentDisconnected => "agent_disconnected",
            Action::DuplicateAgent => "duplicate_agent",
            Action::SourceCooldown => "source_cooldown",
            Action::AgentBlocked => "agent_blocked",
            Action::AgentUnblocked => "agent_unblocked",
            Action::SessionTerminated => "session_terminated",
            Action::PolicyToggled => "policy_toggled",
            Action::PortalAuth => "portal_auth",
            Action::ConfigReload => "config_reload",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.iter().copied().find(|a| a.as_str() == s)
    }
}

/// One audit record. Optional fields are omitted from JSON when empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Increasing, and continued across restarts when `audit.file` is set.
    pub seq: u64,
    /// Unix time in milliseconds.
    pub ts_ms: u64,
    pub action: Action,
    pub success: bool,
    /// Who acted: the agent_id for tunnel events, `portal:<sub>` for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// What was acted on (`tunnel`, `connector:<name>`, `agent:<id>`, `session:<cid>`,
    /// `policy:<id>`, `portal:<path>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Short machine-readable reason (`expired`, `agent_id_mismatch`, `pdp_denied`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'static, str>>,
    /// What decided an OPEN (`cidr`, `conn_cap`, `no_agent`, `pdp`, `scope`, `stream_cap`,
    /// `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Cow<'static, str>>,
    /// The agent the record is about (filters and scoped portal views use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The agent's (tunnel), the client's (OPEN) or the operator's (portal) address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_id: Option<u64>,
    /// A short human-readable note (never secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// An aggregate: this many refusals (same action and reason, from `source`, or from the
    /// sources not tracked when `source` is absent) went past the audit trail's refusal limits
    /// in the window this record closes, and have no record of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more: Option<u64>,
}

/// An address a record names as its source: a peer's `ip:port`, or a bare IP.
pub trait SourceAddr: std::fmt::Display {
    /// What the refusal limits key on.
    fn source_ip(&self) -> IpAddr;
}

impl SourceAddr for SocketAddr {
    fn source_ip(&self) -> IpAddr {
        self.ip()
    }
}

impl SourceAddr for IpAddr {
    fn source_ip(&self) -> IpAddr {
        *self
    }
}

/// A record being built: `Event::new(..).agent(..).source(..)`, then [`super::Audit::record`].
#[derive(Debug, Clone)]
pub struct Event {
    pub(super) rec: AuditRecord,
    /// The source's address, for the refusal limits (the record keeps only its text).
    pub(super) ip: Option<IpAddr>,
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Event {
    pub fn new(action: Action, success: bool) -> Event {
        Event {
            rec: AuditRecord {
                seq: 0,
                ts_ms: 0,
                action,
                success,
                actor: None,
                resource: None,
                reason: None,
                by: None,
                agent_id: None,
                source: None,
                connector: None,
                tunnel_id: None,
                detail: None,
                more: None,
            },
            ip: None,
        }
    }
    pub fn reason(mut self, reason: &'static str) -> Event {
        self.rec.reason = Some(Cow::Borrowed(reason));
        self
    }
    pub fn by(mut self, by: &'static str) -> Event {
        self.rec.by = Some(Cow::Borrowed(by));
        self
    }
    pub fn agent(mut self, agent_id: &str) -> Event {
        self.rec.agent_id = Some(agent_id.to_owned());
        self
    }
    /// Who acted, when not the agent itself (an operator: `portal:<sub>`).
    pub fn actor(mut self, actor: &str) -> Event {
        self.rec.actor = Some(cut(actor.to_owned(), 256));
        self
    }
    pub fn resource(mut self, resource: impl Into<String>) -> Event {
        self.rec.resource = Some(cut(resource.into(), 256));
        self
    }
    pub fn source(mut self, source: impl SourceAddr) -> Event {
        self.ip = Some(source.source_ip());
        self.rec.source = Some(source.to_string());
        self
    }
    pub fn connector(mut self, connector: &str) -> Event {
        self.rec.connector = Some(connector.to_owned());
        self
    }
    pub fn tunnel(mut self, tunnel_id: u64) -> Event {
        self.rec.tunnel_id = Some(tunnel_id);
        self
    }
    /// A note, cut to [`MAX_DETAIL`] bytes (it may quote peer-supplied names).
    pub fn detail(mut self, detail: impl Into<String>) -> Event {
        self.rec.detail = Some(cut(detail.into(), MAX_DETAIL));
        self
    }

    /// A refusal or failure: subject to the refusal limits, and dropped from the file (not
    /// from memory or the log) when the writer is behind. Successes, which include every
    /// successful authentication and every operator action, are never either.
    pub(super) fn is_refusal(&self) -> bool {
        !self.rec.success
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_action_at_its_index() {
        for (i, a) in Action::ALL.iter().enumerate() {
            assert_eq!(*a as usize, i);
            assert_eq!(Action::parse(a.as_str()), Some(*a));
        }
    }

    #[test]
    fn detail_is_cut_on_a_character_boundary_and_sources_keep_their_ip() {
        let long = Event::new(Action::Hello, false).detail("é".repeat(MAX_DETAIL));
        let d = long.rec.detail.expect("detail");
        assert!(d.len() <= MAX_DETAIL && d.chars().all(|c| c == 'é'));
        let peer: SocketAddr = "10.0.0.1:5".parse().expect("addr");
        let e = Event::new(Action::Open, false).source(peer);
        assert_eq!(e.rec.source.as_deref(), Some("10.0.0.1:5"));
        assert_eq!(e.ip, Some(peer.ip()));
        assert!(e.is_refusal());
        assert!(!Event::new(Action::PolicyToggled, true).is_refusal());
    }
}
