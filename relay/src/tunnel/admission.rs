//! Admitting an agent after the upgrade: its HELLO, reconciled with its token and the block list.
//!
//! The agent must send HELLO within [`HELLO_TIMEOUT`]. HELLO reconciliation: a blocked
//! `agent_id` is refused; the token names the agent (`agent_id` claim = HELLO's) and, when
//! connector scopes are required, every connector in HELLO must be granted. Then [`register`]
//! applies the tunnel caps and the duplicate policy (see [`crate::registry`]). Each refusal is a
//! [`Refusal`] whose label is the metric and audit reason.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use nowconnect_shared::demux::{Demux, Dispatch};
use nowconnect_shared::Hello;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::abuse::PendingSlot;
use crate::audit::{Action, Event};
use crate::auth::Identity;
use crate::registry::{AgentHandle, Placed, Refused, Registration};
use crate::Shared;

/// The agent must send HELLO this soon after the upgrade.
pub(super) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the upgrade established about a tunnel before its HELLO.
#[derive(Debug)]
pub(crate) struct Admission {
    /// Who the token says the agent is; `None` under the dev bypass.
    pub identity: Option<Identity>,
    /// The source's pending-attempt slot, released once HELLO is accepted (or refused).
    pub slot: PendingSlot,
}

/// Why a tunnel was refused at HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The first frame was not a valid HELLO (or the connection ended first).
    BadHello(String),
    /// No HELLO within [`HELLO_TIMEOUT`].
    Timeout,
    /// An operator blocked this `agent_id`.
    Blocked(String),
    /// HELLO's `agent_id` is not the token's.
    AgentIdMismatch { hello: String, token: String },
    /// A connector in HELLO is not granted by the token.
    ConnectorNotGranted(String),
    /// The agent_id holds `limits.max_tunnels_per_agent` tunnels already.
    TooManyTunnels { agent_id: String, limit: usize },
    /// The token (`jti`) holds `limits.max_tunnels_per_jti` tunnels already.
    TooManyTunnelsForToken { limit: usize },
    /// Another address serves this agent_id (`security.duplicate_agent: refuse`).
    DuplicateAgent(String),
}

impl Refusal {
    /// The metric label and audit reason.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::BadHello(_) => "bad_hello",
            Refusal::Timeout => "hello_timeout",
            Refusal::Blocked(_) => "agent_blocked",
            Refusal::AgentIdMismatch { .. } => "agent_id_mismatch",
            Refusal::ConnectorNotGranted(_) => "connector_not_granted",
            Refusal::TooManyTunnels { .. } => "too_many_tunnels",
            Refusal::TooManyTunnelsForToken { .. } => "too_many_tunnels_per_token",
            Refusal::DuplicateAgent(_) => "duplicate_agent",
        }
    }

    /// Only identity failures count toward the source's cool-down; a HELLO that is late or
    /// malformed says nothing about stolen or guessed tokens.
    fn counts_as_auth_failure(&self) -> bool {
        matches!(
            self,
            Refusal::AgentIdMismatch { .. } | Refusal::ConnectorNotGranted(_)
        )
    }

    /// The reason in the close frame the agent gets.
    pub fn close_reason(&self) -> String {
        match self {
            Refusal::Timeout => "HELLO expected".into(),
            Refusal::ConnectorNotGranted(c) => {
                format!("connector `{c}` is not granted by the token (connectors claim or scope)")
            }
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::BadHello(why) => f.write_str(why),
            Refusal::Timeout => f.write_str("no HELLO in time"),
            Refusal::Blocked(id) => write!(f, "agent_id `{id}` is blocked"),
            Refusal::AgentIdMismatch { hello, token } => write!(
                f,
                "agent_id `{hello}` in HELLO does not match the token's `{token}`"
            ),
            Refusal::ConnectorNotGranted(c) => write!(
                f,
                "connector `{c}` is not granted by the token: it needs `{c}` in the `connectors` \
                 claim or a `nowconnect:connector:{c}` scope (security.require_connector_scopes is \
                 on; set it to false to let any token serve any connector)"
            ),
            Refusal::TooManyTunnels { agent_id, limit } => write!(
                f,
                "agent_id `{agent_id}` already holds {limit} tunnels (limits.max_tunnels_per_agent)"
            ),
            Refusal::TooManyTunnelsForToken { limit } => write!(
                f,
                "this token already holds {limit} tunnels (limits.max_tunnels_per_jti)"
            ),
            // The other address is in the audit trail, not told to the newcomer.
            Refusal::DuplicateAgent(id) => write!(
                f,
                "agent_id `{id}` is connected from another address (security.duplicate_agent: refuse)"
            ),
        }
    }
}

/// Reads until the first protocol frame, which must be a valid HELLO (the demux decides).
pub(super) async fn read_hello<S, H>(
    source: &mut SplitStream<WebSocketStream<S>>,
    demux: &mut Demux<H>,
) -> Result<Hello, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let closed = || Refusal::BadHello("connection closed before HELLO".into());
    let read = async {
        loop {
            let msg = match source.next().await {
                None => return Err(closed()),
                Some(Err(e)) => {
                    return Err(Refusal::BadHello(format!("read failed before HELLO: {e}")))
                }
                Some(Ok(m)) => m,
            };
            let dispatch = match msg {
                Message::Binary(b) => demux.on_binary(&b),
                Message::Text(t) => demux.on_text(t.as_str()),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Close(_) => return Err(closed()),
            };
            return match dispatch {
                Dispatch::Hello(hello) => Ok(hello),
                Dispatch::Close(v) => Err(Refusal::BadHello(v.to_string())),
                _ => Err(Refusal::BadHello("expected HELLO".into())),
            };
        }
    };
    tokio::time::timeout(HELLO_TIMEOUT, read)
        .await
        .unwrap_or(Err(Refusal::Timeout))
}

/// HELLO reconciliation (see the module documentation).
pub(super) fn reconcile(
    hello: &Hello,
    admission: &Admission,
    shared: &Shared,
) -> Result<(), Refusal> {
    // Checked here too for the dev bypass and for a block that landed after the upgrade.
    if shared.state.is_blocked(&hello.agent_id) {
        return Err(Refusal::Blocked(hello.agent_id.clone()));
    }
    let Some(id) = &admission.identity else {
        return Ok(());
    };
    if hello.agent_id != id.agent_id {
        return Err(Refusal::AgentIdMismatch {
            hello: hello.agent_id.clone(),
            token: id.agent_id.clone(),
        });
    }
    if shared.state.connector_scopes() {
        if let Some(c) = hello.connectors.iter().find(|c| !id.grants.allows(c)) {
            return Err(Refusal::ConnectorNotGranted(c.clone()));
        }
    }
    Ok(())
}

/// Counts, audits and logs a refused HELLO (the caller closes the tunnel).
pub(super) fn record_refusal(
    shared: &Shared,
    peer: SocketAddr,
    tunnel_id: u64,
    admission: &Admission,
    refusal: &Refusal,
    hello_agent_id: Option<&str>,
) {
    let reason = refusal.label();
    tracing::warn!(event = "hello_refused", %peer, agent_id = hello_agent_id.unwrap_or(""), reason, "agent tunnel refused: {refusal}");
    shared.metrics.agent_auth_failed(reason);
    let agent = admission
        .identity
        .as_ref()
        .map(|i| i.agent_id.as_str())
        .or(hello_agent_id);
    let mut event = Event::new(Action::Hello, false)
        .reason(reason)
        .source(peer)
        .tunnel(tunnel_id)
        .detail(refusal.to_string());
    if let Some(a) = agent {
        event = event.agent(a);
    }
    shared.audit.record(event);
    if refusal.counts_as_auth_failure() {
        admission.slot.note_failure(peer, &shared.audit);
    }
}

/// Registers an accepted tunnel under the tunnel caps and the duplicate policy, and audits a
/// duplicate (admitted or not). `identity` gives the token's `jti`.
pub(super) fn register(
    shared: &Shared,
    handle: &AgentHandle,
    identity: Option<&Identity>,
) -> Result<Placed, Refusal> {
    let jti = identity.and_then(|i| i.jti.as_deref());
    let reg = shared.registry.register(handle, jti);
    if !reg.elsewhere.is_empty() {
        record_duplicate(shared, handle, &reg);
    }
    reg.outcome.map_err(|refused| match refused {
        Refused::AgentFull { limit } => Refusal::TooManyTunnels {
            agent_id: handle.agent_id.to_string(),
            limit,
        },
        Refused::TokenFull { limit } => Refusal::TooManyTunnelsForToken { limit },
        Refused::Duplicate => Refusal::DuplicateAgent(handle.agent_id.to_string()),
    })
}

/// One record naming both sides: the agent_id's tunnels elsewhere and the new one, with their
/// addresses, and what the policy did.
fn record_duplicate(shared: &Shared, handle: &AgentHandle, reg: &Registration) {
    let policy = shared.cfg().security.duplicate_agent.as_str();
    let new = handle.tunnel_id;
    let peer = handle.info.peer;
    let (admitted, verdict) = match reg.outcome {
        Ok(Placed::Serving { .. }) => (true, format!("tunnel {new} takes the new streams")),
        Ok(Placed::Standby { behind }) => (
            true,
            format!("tunnel {new} waits on standby until tunnel {behind} ends"),
        ),
        Err(Refused::Duplicate) => (false, format!("tunnel {new} refused")),
        Err(_) => (false, format!("tunnel {new} refused by a tunnel cap")),
    };
    let others: Vec<String> = reg
        .elsewhere
        .iter()
        .map(|(id, addr)| format!("tunnel {id} from {addr}"))
        .collect();
    let others = others.join(", ");
    tracing::warn!(event = "duplicate_agent", agent_id = %handle.agent_id, %peer, tunnel_id = new, policy, "agent_id connected from a second address: {others}; {verdict}");
    shared.metrics.agent_duplicates.inc();
    shared.audit.record(
        Event::new(Action::DuplicateAgent, admitted)
            .agent(&handle.agent_id)
            .source(peer)
            .tunnel(new)
            .reason(policy)
            .detail(format!(
                "new tunnel {new} from {peer}; already connected: {others}; {policy}: {verdict}"
            )),
    );
}
