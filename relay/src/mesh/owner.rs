//! The owner's side of a forwarded stream: the epoch check (fencing), then a pipe handed to the
//! agent's tunnel as its client, bridged to the link.
//!
//! A FORWARD is served only when this relay's serving tunnel for `agent_id` claimed exactly the
//! epoch the origin names and the directory knows no newer claim; anything else is refused
//! with RST and counted in `nowconnect_owner_epoch_mismatch_total` (the origin's view was
//! stale: the agent moved, or reconnected here under a new claim). The tunnel then treats the
//! pipe like any client: its authorization (grants, PDP) and audit see the client's real
//! address from the FORWARD, and its caps apply.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nowconnect_shared::{Demux, Forward, Reset, RstCode};
use tokio::sync::mpsc;
use tracing::debug;

use super::bridge::{self, Bridge};
use super::ctx::{Handle, Key, LinkCtx};
use crate::audit::{Action, Event};
use crate::conn::{ClientSock, ConnGuard, NewConn};

/// Serves (or refuses) one FORWARD whose id is not live on the link.
pub(super) fn serve(demux: &mut Demux<Handle>, ctx: &Arc<LinkCtx>, serial: u64, f: Forward) {
    let core = &ctx.core;
    let id = f.id;
    let refuse = |code: RstCode, reason: &'static str| {
        debug!(peer = %ctx.peer, cid = id, agent_id = %f.agent_id, reason, "forwarded stream refused");
        ctx.ctrl(&Reset::new(code, reason).frame(id));
    };
    if *f.origin != *ctx.peer {
        return refuse(RstCode::Protocol, "origin is not the link's peer");
    }
    let Some(shared) = core.shared.upgrade() else {
        return refuse(RstCode::Shutdown, "relay stopping");
    };
    if shared.draining.is_cancelled() {
        return refuse(RstCode::Shutdown, "relay stopping");
    }
    let agent = shared.registry.serving(&f.agent_id);
    let mine = agent
        .as_ref()
        .map_or(0, |a| a.info.epoch.load(Ordering::Acquire));
    let newest = core.view.epoch_of(&f.agent_id);
    let current = mine != 0 && mine == f.epoch && newest.is_none_or(|n| n <= mine);
    let Some(agent) = agent.filter(|_| current) else {
        core.metrics.mesh.owner_epoch_mismatch.inc();
        shared.audit.record(
            Event::new(Action::Open, false)
                .by("mesh")
                .reason("owner_epoch_mismatch")
                .agent(&f.agent_id)
                .connector(&f.connector)
                .detail(format!(
                    "origin={}; epoch={}; owner_epoch={mine}",
                    f.origin, f.epoch
                )),
        );
        return refuse(RstCode::Denied, "stale epoch");
    };
    if !agent.info.connectors.contains(&f.connector) {
        return refuse(
            RstCode::UnknownConnector,
            "agent does not serve the connector",
        );
    }
    let Ok(client) = f.client_addr.parse::<SocketAddr>() else {
        return refuse(RstCode::Protocol, "client address is not ip:port");
    };
    let Some(guard) = ConnGuard::try_acquire(&shared.conns, shared.cfg().limits.max_conn_total)
    else {
        shared.metrics.rejected(&f.connector, "max_conn_total");
        return refuse(RstCode::QueueOverflow, "max_conn_total");
    };
    let Ok((ours, theirs)) = ClientSock::pipe() else {
        return refuse(RstCode::Io, "no pipe");
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let Ok(send) = demux.accept(id, Handle { serial, tx }) else {
        core.drop_stream(&ctx.peer, "table_full");
        return refuse(RstCode::QueueOverflow, "too many streams on the link");
    };
    let listener = core.listener_for(&shared, &f.connector);
    let conn = NewConn {
        sock: theirs,
        peer: client,
        listener,
        guard,
        reopen: None,
    };
    if agent.conns.send(Box::new(conn)).is_err() {
        demux.remove(id);
        return refuse(RstCode::ConnectFailed, "agent tunnel gone");
    }
    let b = Bridge {
        key: Key { id, serial },
        send,
        sock: Arc::new(ours),
        rx,
        listener: None,
        guard: None,
    };
    core.spawn_stream(bridge::run(ctx.clone(), b));
}
