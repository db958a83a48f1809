//! Whether one client may be relayed through one agent's tunnel: the token's connector grants,
//! then the PDP. Decided before OPEN, in the stream's own task; every decision is audited.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio_util::sync::CancellationToken;

use crate::audit::{Action, Audit, Event};
use crate::auth::Grants;
use crate::metrics::Metrics;
use crate::pdp::Pdp;
use crate::state::State;

/// The authorization context of one tunnel, shared by its streams.
#[derive(Debug)]
pub(crate) struct Authorizer {
    pub agent_id: Arc<str>,
    pub tunnel_id: u64,
    /// Connectors the token grants, checked again on every OPEN; `None` when
    /// `require_connector_scopes` is off (or under the dev bypass).
    pub grants: Option<Arc<Grants>>,
    /// The relay's PDP client as it is now (a reload may replace or remove it).
    pub pdp: Arc<ArcSwapOption<Pdp>>,
    /// Policies (read per stream: PDP on/off).
    pub state: Arc<State>,
    pub audit: Arc<Audit>,
    pub metrics: Arc<Metrics>,
}

/// One client asking to reach a connector through a listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub connector: &'a str,
    pub listener: &'a str,
    pub client: SocketAddr,
}

impl Authorizer {
    /// Allowed? Waits only for the PDP (and gives up when `cancel` fires: denied).
    pub async fn decide(&self, req: Request<'_>, cancel: &CancellationToken) -> bool {
        let event = |ok: bool, by: &'static str| {
            Event::new(Action::Open, ok)
                .by(by)
                .agent(&self.agent_id)
                .connector(req.connector)
                .source(req.client)
                .tunnel(self.tunnel_id)
        };
        if let Some(grants) = &self.grants {
            // HELLO was checked already; this guards any later path that could route around it.
            if !grants.allows(req.connector) {
                self.metrics.rejected(req.connector, "scope_denied");
                self.audit
                    .record(event(false, "scope").reason("scope_denied"));
                return false;
            }
        }
        let configured = self.pdp.load_full();
        let Some(pdp) = configured.as_ref().filter(|_| self.state.pdp_enforce()) else {
            let e = event(true, "none");
            // A configured PDP that an operator switched off (pol-pdp-enforce) is worth saying.
            self.audit.record(if configured.is_some() {
                e.reason("pdp_policy_off")
            } else {
                e
            });
            return true;
        };
        let decision = tokio::select! {
            d = pdp.decide(&self.agent_id, req.connector, req.client, req.listener) => d,
            _ = cancel.cancelled() => return false,
        };
        if decision.allowed {
            self.audit
                .record(event(true, "pdp").reason(decision.result));
            true
        } else {
            self.metrics.rejected(req.connector, "pdp_denied");
            self.audit
                .record(event(false, "pdp").reason(match decision.result {
                    "deny" => "pdp_denied",
                    "timeout" => "pdp_timeout",
                    _ => "pdp_error",
                }));
            false
        }
    }
}
