//! One function per portal operation. Each reads snapshots (the registry's tunnel and session
//! tables, the audit ring) and never holds a lock while it builds its answer. Admin-only
//! operations are checked by the router before they run; scoped (agent) callers only reach the
//! three list operations, which filter to their agent here.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use hyper::StatusCode;
use serde::Serialize;
use serde_json::json;

use super::api::*;
use super::auth::{Caller, Scope};
use super::{rfc3339, ApiError, Ctx};
use crate::audit::{Action, AuditFilter, Event};
use crate::config::Routing;
use crate::sessions::TunnelInfo;
use crate::state::{PolicyId, StateError};

/// A successful answer: status and JSON body.
pub(crate) type Reply = Result<(StatusCode, Vec<u8>), ApiError>;

pub(super) fn ok<T: Serialize>(value: &T) -> Reply {
    serde_json::to_vec(value)
        .map(|b| (StatusCode::OK, b))
        .map_err(|_| ApiError::internal("cannot encode the answer"))
}

/// The agent a scoped caller may see; `None` for administrators.
fn agent_scope(caller: &Caller) -> Option<&str> {
    match &caller.scope {
        Scope::Admin => None,
        Scope::Agent(a) => Some(a),
    }
}

fn policy_view(ctx: &Ctx<'_>, p: PolicyId) -> PolicyView {
    let s = &ctx.shared;
    let (name, description, kind, rules) = match p {
        PolicyId::MfaRequired => (
            "Require MFA for the portal",
            "Portal tokens must show a second factor in `amr` (RFC 8176); a password-only token is refused.",
            "authentication",
            json!({"claim": "amr", "any_of": super::auth::SECOND_FACTORS}),
        ),
        PolicyId::ConnectorScopes => (
            "Connector scopes on HELLO",
            "Every connector an agent exports in HELLO must be granted by its token (`connectors`, `scp`, `scope`).",
            "authorization",
            json!({"check": "hello.connectors subset of token grants", "claims": ["connectors", "scp", "scope"]}),
        ),
        PolicyId::PdpEnforce => (
            "Ask the PDP on OPEN",
            "When a PDP is configured, every new stream is allowed only if it says so (AuthZEN access evaluation).",
            "authorization",
            json!({"pdp_configured": s.cfg().pdp.is_some(), "fail_open": s.cfg().pdp.as_ref().is_some_and(|p| p.fail_open)}),
        ),
        PolicyId::CidrAllowlists => (
            "Listener CIDR allowlists",
            "Clients outside `security.allow_cidrs` or their listener's `allow_cidrs` are closed before any OPEN.",
            "network",
            json!({
                "global": s.cfg().security.allow_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "listeners": s.cfg().listeners.iter().map(|l| (l.name.clone(), l.allow_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>())).collect::<BTreeMap<_, _>>(),
            }),
        ),
    };
    PolicyView {
        id: p.id().to_owned(),
        name: name.to_owned(),
        description: description.to_owned(),
        kind: kind.to_owned(),
        enabled: s.state.enabled(p),
        rules,
    }
}

fn find_policy(id: &str) -> Result<PolicyId, ApiError> {
    PolicyId::parse(id).ok_or_else(|| ApiError::not_found("no such policy"))
}

/// List the security policies.
#[utoipa::path(get, path = "/api/v1/policies", tag = "policies",
    responses((status = 200, description = "Every policy", body = [PolicyView])))]
pub(crate) fn list_policies(ctx: &Ctx<'_>) -> Reply {
    let all: Vec<_> = PolicyId::ALL.iter().map(|p| policy_view(ctx, *p)).collect();
    ok(&all)
}

/// One security policy.
#[utoipa::path(get, path = "/api/v1/policies/{id}", tag = "policies",
    params(("id" = String, Path, description = "Policy id, e.g. pol-mfa-required")),
    responses((status = 200, description = "The policy", body = PolicyView)))]
pub(crate) fn get_policy(ctx: &Ctx<'_>, id: &str) -> Reply {
    let p = find_policy(id)?;
    ok(&policy_view(ctx, p))
}

/// Turn a policy on or off (admin only). Takes effect for new tunnels and streams at once, is
/// audited and persists across restarts.
#[utoipa::path(patch, path = "/api/v1/policies/{id}", tag = "policies",
    params(("id" = String, Path, description = "Policy id, e.g. pol-mfa-required")),
    request_body = PolicyPatch,
    responses((status = 200, description = "The policy after the change", body = PolicyView)))]
pub(crate) fn patch_policy(ctx: &Ctx<'_>, id: &str, body: &[u8]) -> Reply {
    let p = find_policy(id)?;
    let patch: PolicyPatch = serde_json::from_slice(body)
        .map_err(|_| ApiError::bad_request("body must be {\"enabled\": true|false}"))?;
    let old = ctx
        .shared
        .state
        .set(p, patch.enabled)
        .map_err(|e| ApiError::internal_owned(e.to_string()))?;
    ctx.shared.audit.record(
        Event::new(Action::PolicyToggled, true)
            .actor(&ctx.caller.actor())
            .resource(format!("policy:{}", p.id()))
            .source(ctx.peer)
            .detail(format!("{} -> {}", old, patch.enabled)),
    );
    ok(&policy_view(ctx, p))
}

/// Connected agent tunnels (a scoped token sees only its agent).
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
    responses((status = 200, description = "Connected agents", body = [AgentView])))]
pub(crate) fn list_agents(ctx: &Ctx<'_>) -> Reply {
    let scope = agent_scope(ctx.caller);
    let sessions = ctx.shared.sessions.snapshot();
    let rows: Vec<_> = ctx
        .shared
        .registry
        .rows()
        .into_iter()
        .filter(|r| scope.is_none_or(|a| *r.info.agent_id == *a))
        .map(|row| {
            let t = &row.info;
            let (mut c2a, mut a2c) = (
                t.closed_c2a.load(Ordering::Relaxed),
                t.closed_a2c.load(Ordering::Relaxed),
            );
            for s in sessions
                .iter()
                .filter(|s| s.tunnel.tunnel_id == t.tunnel_id)
            {
                c2a += s.bytes_c2a.load(Ordering::Relaxed);
                a2c += s.bytes_a2c.load(Ordering::Relaxed);
            }
            AgentView {
                agent_id: t.agent_id.to_string(),
                tunnel_id: t.tunnel_id,
                takes_new_streams: row.serving,
                duplicate: row.duplicate,
                connectors: t.connectors.clone(),
                remote_addr: t.peer.to_string(),
                connected_since: rfc3339(t.since_ms),
                protocol_version: t.protocol.to_owned(),
                agent_version: t.agent_version.clone(),
                active_streams: t.active.load(Ordering::Relaxed) as u64,
                bytes_c2a: c2a,
                bytes_a2c: a2c,
                relay: ctx.shared.cfg().ha.replica_id.clone(),
                epoch: t.epoch.load(Ordering::Acquire),
                targets: target_views(t),
            }
        })
        .collect();
    ok(&rows)
}

/// The tunnel's latest target report for the agent view.
fn target_views(t: &TunnelInfo) -> BTreeMap<String, Vec<TargetView>> {
    let Some(r) = t.targets.snapshot() else {
        return BTreeMap::new();
    };
    r.targets
        .into_iter()
        .map(|(connector, list)| {
            let list = list
                .into_iter()
                .map(|s| TargetView {
                    since: rfc3339(r.received_ms.saturating_sub(s.since_ms)),
                    target: s.target,
                    up: s.up,
                    failures: s.failures,
                })
                .collect();
            (connector, list)
        })
        .collect()
}

/// Disconnect an agent's tunnels (admin only); with `block=true` its reconnects are refused
/// until it is unblocked.
#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "agent_id (no control characters, at most 128 characters)", min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"), DisconnectQuery),
    responses((status = 200, description = "Disconnected (and blocked)", body = DisconnectResult)))]
pub(crate) fn disconnect_agent(ctx: &Ctx<'_>, agent_id: &str) -> Reply {
    let block = ctx.query.bool("block")?.unwrap_or(false);
    check_agent_id(agent_id)?;
    let shared = ctx.shared;
    if block {
        let added = shared
            .state
            .set_blocked(agent_id, true)
            .map_err(|e| match e {
                StateError::Full => ApiError::conflict("the block list is full"),
                e => ApiError::internal_owned(e.to_string()),
            })?;
        if added {
            shared.audit.record(
                Event::new(Action::AgentBlocked, true)
                    .actor(&ctx.caller.actor())
                    .agent(agent_id)
                    .resource(format!("agent:{agent_id}"))
                    .source(ctx.peer),
            );
        }
    }
    let tunnels: Vec<_> = shared
        .registry
        .tunnels()
        .into_iter()
        .filter(|t| *t.agent_id == *agent_id)
        .collect();
    if tunnels.is_empty() && !block {
        return Err(ApiError::not_found("agent is not connected"));
    }
    for t in &tunnels {
        t.kick.cancel();
    }
    if !tunnels.is_empty() {
        shared.audit.record(
            Event::new(Action::AgentDisconnected, true)
                .actor(&ctx.caller.actor())
                .agent(agent_id)
                .resource(format!("agent:{agent_id}"))
                .reason("admin")
                .source(ctx.peer)
                .detail(format!("tunnels={}", tunnels.len())),
        );
    }
    ok(&DisconnectResult {
        agent_id: agent_id.to_owned(),
        disconnected_tunnels: tunnels.len() as u64,
        blocked: shared.state.is_blocked(agent_id),
    })
}

/// Lift a block (admin only).
#[utoipa::path(post, path = "/api/v1/agents/{id}/unblock", tag = "agents",
    params(("id" = String, Path, description = "agent_id (no control characters, at most 128 characters)", min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")),
    responses((status = 200, description = "Unblocked", body = UnblockResult)))]
pub(crate) fn unblock_agent(ctx: &Ctx<'_>, agent_id: &str) -> Reply {
    check_agent_id(agent_id)?;
    let removed = ctx
        .shared
        .state
        .set_blocked(agent_id, false)
        .map_err(|e| ApiError::internal_owned(e.to_string()))?;
    if !removed {
        return Err(ApiError::not_found("agent is not blocked"));
    }
    ctx.shared.audit.record(
        Event::new(Action::AgentUnblocked, true)
            .actor(&ctx.caller.actor())
            .agent(agent_id)
            .resource(format!("agent:{agent_id}"))
            .source(ctx.peer),
    );
    ok(&UnblockResult {
        agent_id: agent_id.to_owned(),
        blocked: false,
    })
}

/// Connectors: listeners, the agents serving them, live streams.
#[utoipa::path(get, path = "/api/v1/connectors", tag = "connectors",
    responses((status = 200, description = "Every connector with a listener or an agent", body = [ConnectorView])))]
pub(crate) fn list_connectors(ctx: &Ctx<'_>) -> Reply {
    let mut rows: BTreeMap<String, ConnectorView> = BTreeMap::new();
    let entry = |rows: &mut BTreeMap<String, ConnectorView>, name: &str| {
        rows.entry(name.to_owned())
            .or_insert_with(|| ConnectorView {
                name: name.to_owned(),
                listeners: Vec::new(),
                agents: Vec::new(),
                remote_agents: Vec::new(),
                relay: ctx.shared.cfg().ha.replica_id.clone(),
                active_streams: 0,
            });
    };
    let configs = ctx.shared.listeners.configs();
    for l in ctx.shared.listeners.bound() {
        let cfg = configs.iter().find(|c| c.name == l.name);
        let allow_cidrs: Vec<String> = cfg
            .map(|c| c.allow_cidrs.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        let (route_by, routes, default) = match cfg.map(|c| &c.routing) {
            Some(Routing::Sni(t)) => ("sni", t.routes.clone(), t.default.clone()),
            _ => ("connector", Default::default(), None),
        };
        // An sni listener is listed under every connector it routes to.
        for connector in &l.connectors {
            entry(&mut rows, connector);
            if let Some(c) = rows.get_mut(connector) {
                c.listeners.push(ListenerView {
                    name: l.name.clone(),
                    bind: l.addr.to_string(),
                    allow_cidrs: allow_cidrs.clone(),
                    route_by: route_by.to_owned(),
                    routes: routes.clone(),
                    default: default.clone(),
                });
            }
        }
    }
    for (connector, agents) in ctx.shared.registry.agents_by_connector() {
        entry(&mut rows, &connector);
        if let Some(c) = rows.get_mut(&connector) {
            c.agents = agents;
        }
    }
    for (connector, remotes) in &ctx.shared.cluster.snapshot().owners {
        entry(&mut rows, connector);
        if let Some(c) = rows.get_mut(connector) {
            c.remote_agents = remotes
                .iter()
                .map(|r| RemoteAgentView {
                    agent_id: r.agent_id.to_string(),
                    relay: r.relay_id.to_string(),
                    epoch: r.epoch,
                })
                .collect();
        }
    }
    for s in ctx.shared.sessions.snapshot() {
        if let Some(c) = rows.get_mut(&s.connector) {
            c.active_streams += 1;
        }
    }
    ok(&rows.into_values().collect::<Vec<_>>())
}

/// Live sessions, oldest first (a scoped token sees only its agent's).
#[utoipa::path(get, path = "/api/v1/sessions", tag = "sessions",
    params(SessionQuery),
    responses((status = 200, description = "Live sessions", body = [SessionView])))]
pub(crate) fn list_sessions(ctx: &Ctx<'_>) -> Reply {
    let scope = agent_scope(ctx.caller);
    let connector = ctx.query.get("connector");
    let agent = ctx.query.get("agent_id");
    let rows: Vec<_> = ctx
        .shared
        .sessions
        .snapshot()
        .into_iter()
        .filter(|s| scope.is_none_or(|a| *s.tunnel.agent_id == *a))
        .filter(|s| connector.is_none_or(|c| s.connector == c))
        .filter(|s| agent.is_none_or(|a| *s.tunnel.agent_id == *a))
        .map(|s| SessionView {
            cid: s.id(),
            stream_id: s.cid,
            tunnel_id: s.tunnel.tunnel_id,
            connector: s.connector.clone(),
            agent_id: s.tunnel.agent_id.to_string(),
            client_addr: s.client.to_string(),
            started: rfc3339(s.started_ms),
            bytes_c2a: s.bytes_c2a.load(Ordering::Relaxed),
            bytes_a2c: s.bytes_a2c.load(Ordering::Relaxed),
        })
        .collect();
    ok(&rows)
}

/// Terminate a session (admin only): RST to the agent, the client's socket closed at once.
#[utoipa::path(delete, path = "/api/v1/sessions/{cid}", tag = "sessions",
    params(("cid" = String, Path, description = "Session id `<tunnel_id>-<stream_id>` from GET /api/v1/sessions")),
    responses((status = 200, description = "Terminated", body = TerminateResult)))]
pub(crate) fn terminate_session(ctx: &Ctx<'_>, cid: &str) -> Reply {
    let key = cid
        .split_once('-')
        .and_then(|(t, s)| Some((t.parse::<u64>().ok()?, s.parse::<u32>().ok()?)));
    let Some(info) = key.and_then(|k| ctx.shared.sessions.get(k)) else {
        return Err(ApiError::not_found("no such live session"));
    };
    info.kill.cancel();
    ctx.shared.metrics.sessions_terminated.inc();
    ctx.shared.audit.record(
        Event::new(Action::SessionTerminated, true)
            .actor(&ctx.caller.actor())
            .agent(&info.tunnel.agent_id)
            .connector(&info.connector)
            .resource(format!("session:{}", info.id()))
            .tunnel(info.tunnel.tunnel_id)
            .source(ctx.peer)
            .detail(format!("client={}", info.client)),
    );
    ok(&TerminateResult {
        cid: info.id(),
        terminated: true,
    })
}

/// The audit trail, newest first (a scoped token sees only its agent's records).
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(AuditQuery),
    responses((status = 200, description = "Matching records, newest first", body = [AuditEntry])))]
pub(crate) fn query_audit(ctx: &Ctx<'_>) -> Reply {
    let q = &ctx.query;
    let success = q.bool("success")?;
    let action = match q.get("action") {
        None => None,
        Some(a) => Some(Action::parse(a).ok_or_else(|| ApiError::bad_request("unknown action"))?),
    };
    let since_ms = match q.get("since") {
        None => None,
        Some(s) => Some(super::parse_rfc3339_ms(s).ok_or_else(|| {
            ApiError::bad_request("since must be an RFC 3339 time, e.g. 2025-01-31T12:00:00Z")
        })?),
    };
    let limit = match q.get("limit") {
        None => DEFAULT_AUDIT_LIMIT,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_AUDIT_LIMIT).contains(n))
            .ok_or_else(|| ApiError::bad_request("limit must be between 1 and 1000"))?,
    };
    let mut agent_id = q.get("agent_id").map(str::to_owned);
    if let Some(scope) = agent_scope(ctx.caller) {
        if agent_id.as_deref().is_some_and(|a| a != scope) {
            return ok(&Vec::<AuditEntry>::new());
        }
        agent_id = Some(scope.to_owned());
    }
    let filter = AuditFilter {
        action,
        success,
        agent_id,
        after_seq: None,
        since_ms,
    };
    let rows: Vec<_> = ctx
        .shared
        .audit
        .newest(&filter, limit as usize)
        .into_iter()
        .map(|r| AuditEntry {
            id: r.seq,
            time: rfc3339(r.ts_ms),
            ts_ms: r.ts_ms,
            actor: r.actor,
            action: r.action,
            resource: r.resource,
            success: r.success,
            reason: r.reason.map(|c| c.into_owned()),
            by: r.by.map(|c| c.into_owned()),
            agent_id: r.agent_id,
            source: r.source,
            connector: r.connector,
            tunnel_id: r.tunnel_id,
            detail: r.detail,
            more: r.more,
        })
        .collect();
    ok(&rows)
}

/// The path's agent_id as the schema describes it: 1 to 128 characters, none of them a control
/// character. (HELLO counts bytes; a longer one can never connect, so blocking it is harmless.)
fn check_agent_id(a: &str) -> Result<(), ApiError> {
    let max = nowconnect_shared::Limits::default().max_agent_id_len;
    if a.is_empty() || a.chars().count() > max || a.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "not a valid agent_id (1 to 128 characters, no control characters)",
        ));
    }
    Ok(())
}
