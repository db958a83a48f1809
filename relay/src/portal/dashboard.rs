//! The three operations the dashboard adds to the portal: who the caller is, the relay at a
//! glance, and the traffic history behind the charts. Like the others, they read snapshots
//! and atomics only.

use std::collections::{BTreeMap, BTreeSet};

use super::api::{ConnectorState, HistoryView, MeView, MinuteView, PolicyState, StatusView};
use super::auth::Scope;
use super::handlers::{ok, Reply};
use super::{rfc3339, Ctx};
use crate::history::Minute;
use crate::state::PolicyId;

/// Who the token names and what it may do.
#[utoipa::path(get, path = "/api/v1/me", tag = "dashboard",
    responses((status = 200, description = "The caller", body = MeView)))]
pub(crate) fn me(ctx: &Ctx<'_>) -> Reply {
    let (admin, agent_id) = match &ctx.caller.scope {
        Scope::Admin => (true, None),
        Scope::Agent(a) => (false, Some(a.clone())),
    };
    ok(&MeView {
        subject: ctx.caller.subject.clone(),
        admin,
        agent_id,
    })
}

/// The relay at a glance (admin only).
#[utoipa::path(get, path = "/api/v1/status", tag = "dashboard",
    responses((status = 200, description = "Counts, connectors, policies", body = StatusView)))]
pub(crate) fn status(ctx: &Ctx<'_>) -> Reply {
    let s = ctx.shared;
    let now = crate::unix_ms();
    let mut connectors: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in s.listeners.bound() {
        for c in l.connectors {
            connectors.entry(c).or_default();
        }
    }
    for (connector, agents) in s.registry.agents_by_connector() {
        connectors.entry(connector).or_default().extend(agents);
    }
    for (connector, remotes) in &s.cluster.snapshot().owners {
        connectors
            .entry(connector.clone())
            .or_default()
            .extend(remotes.iter().map(|r| r.agent_id.to_string()));
    }
    let agents: BTreeSet<String> = s
        .registry
        .tunnels()
        .iter()
        .map(|t| t.agent_id.to_string())
        .collect();
    s.history.record(now, super::history::snapshot(s));
    let auth_failures_last_hour = s
        .history
        .view(now)
        .minutes
        .iter()
        .map(|m| m.auth_failures)
        .sum();
    ok(&StatusView {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        relay: s.cfg().ha.replica_id.clone(),
        started: rfc3339(s.started_ms),
        uptime_sec: now.saturating_sub(s.started_ms) / 1000,
        agents_connected: agents.len() as u64,
        connectors: connectors
            .into_iter()
            .map(|(name, a)| ConnectorState {
                name,
                agents: a.len() as u64,
            })
            .collect(),
        active_sessions: s.sessions.snapshot().len() as u64,
        auth_failures_last_hour,
        policies: PolicyId::ALL
            .iter()
            .map(|p| PolicyState {
                id: p.id().to_owned(),
                enabled: s.state.enabled(*p),
            })
            .collect(),
        blocked_agents: s.state.blocked(),
    })
}

fn minute(m: &Minute, with_auth: bool) -> MinuteView {
    MinuteView {
        t: m.t,
        bytes_c2a: m.counts.bytes_c2a,
        bytes_a2c: m.counts.bytes_a2c,
        streams: m.counts.streams,
        auth_failures: with_auth.then_some(m.auth_failures),
    }
}

/// Per-minute traffic of the last hour (admin only); the current minute is sampled now.
#[utoipa::path(get, path = "/api/v1/history", tag = "dashboard",
    responses((status = 200, description = "The last hour, per minute", body = HistoryView)))]
pub(crate) fn history(ctx: &Ctx<'_>) -> Reply {
    let s = ctx.shared;
    let now = crate::unix_ms();
    s.history.record(now, super::history::snapshot(s));
    let v = s.history.view(now);
    ok(&HistoryView {
        interval_sec: 60,
        now_ms: now,
        buckets: v.minutes.iter().map(|m| minute(m, true)).collect(),
        connectors: v
            .connectors
            .iter()
            .map(|(name, ms)| {
                (
                    name.to_string(),
                    ms.iter().map(|m| minute(m, false)).collect(),
                )
            })
            .collect(),
    })
}
