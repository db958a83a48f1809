//! One forwarded stream on one relay: a socket bridged to a mesh link with per-stream credit.
//!
//! On the origin the socket is the client's TCP connection; on the owner it is one end of a
//! pipe whose other end the agent's tunnel holds as its client ([`crate::conn::ClientSock`]).
//! The task drives the stream's [`SendHalf`] (shared crate): it reads at most the send credit
//! and the link's free inflight bytes, queues DATA and FIN for the link's writer, and writes
//! what the core hands it to the socket, reporting each write so the core returns credit.
//! Like the tunnel's stream task it uses non-blocking calls only, so a peer that stops reading
//! never stops it from taking what arrives for its socket, and the reverse.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use nowconnect_shared::arena::ReadArena;
use nowconnect_shared::queue::WriteQueue;
use nowconnect_shared::{binary, Limits, Reset, RstCode, SendHalf};
use tokio::sync::mpsc;
use tracing::debug;

use super::ctx::{Event, Key, LinkCtx, ToBridge};
use crate::conn::{ClientSock, ConnGuard, ListenerCtx};

/// One stream as its bridge starts.
#[derive(Debug)]
pub(super) struct Bridge {
    pub key: Key,
    pub send: SendHalf,
    pub sock: Arc<ClientSock>,
    pub rx: mpsc::UnboundedReceiver<ToBridge>,
    /// Origin: the listener the client came in on (its byte counters).
    pub listener: Option<Arc<ListenerCtx>>,
    /// Origin: the client's slot of `max_conn_total`, held until the stream ends (only its
    /// drop matters).
    #[allow(dead_code)]
    pub guard: Option<ConnGuard>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Done,
    Aborted,
    LinkGone,
    Local(Reset),
}

/// Runs one bridge to its end.
pub(super) async fn run(ctx: Arc<LinkCtx>, mut b: Bridge) {
    if let Some(l) = &b.listener {
        l.metrics.active.inc();
    }
    let mut unacked = 0usize;
    let end = pump(&ctx, &mut b, &mut unacked).await;
    if let End::Local(reset) = end {
        ctx.ctrl(&reset.frame(b.key.id));
    }
    if end != End::Done {
        // A cut stream must not look complete to the client.
        b.sock.reset();
    }
    // Credit the peer never returned goes back to the link.
    ctx.inflight.add_permits(unacked);
    b.rx.close();
    if let Some(l) = &b.listener {
        l.metrics.active.dec();
    }
    debug!(peer = %ctx.peer, cid = b.key.id, end = ?end, "mesh stream closed");
    let _ = ctx.events.send(Event::Closed(b.key));
}

async fn pump(ctx: &LinkCtx, b: &mut Bridge, unacked: &mut usize) -> End {
    let id = b.key.id;
    let sock = b.sock.clone();
    let lm = b.listener.as_ref().map(|l| &l.metrics);
    let mut queue = WriteQueue::new();
    let mut reads = ReadArena::new(ctx.max_payload);
    // A frame read that the data queue had no room for yet: nothing more is read until it goes.
    let mut outbox: Option<Bytes> = None;
    loop {
        if let Some(item) = outbox.take() {
            match ctx.data.try_send(item) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(item)) => outbox = Some(item),
                Err(mpsc::error::TrySendError::Closed(_)) => return End::LinkGone,
            }
        }
        if b.send.is_finished() && outbox.is_none() {
            return End::Done;
        }
        let credit = b.send.read_budget(ctx.max_payload);
        let budget = credit.min(ctx.inflight.available_permits());
        // Our own credit allows a read but the link's inflight cap does not: wait for bytes
        // of any stream of the link to be credited back.
        let link_starved = credit > 0 && budget == 0 && outbox.is_none();
        tokio::select! {
            biased;
            _ = ctx.token.cancelled() => return End::LinkGone,
            item = b.rx.recv() => match item {
                None | Some(ToBridge::Abort) => return End::Aborted,
                Some(ToBridge::Data(bytes)) => queue.push(bytes),
                Some(ToBridge::Window(c)) => {
                    if let Err(reset) = b.send.on_window(c) {
                        return End::Local(reset);
                    }
                    let back = (c as usize).min(*unacked);
                    *unacked -= back;
                    ctx.inflight.add_permits(back);
                }
                Some(ToBridge::ShutWrite) => {
                    if sock.shutdown_write().is_err() {
                        return End::Local(Reset::new(RstCode::Io, "socket shutdown failed"));
                    }
                    b.send.on_write_shut();
                }
            },
            r = sock.writable(), if !queue.is_empty() => {
                if r.is_err() {
                    return End::Local(Reset::new(RstCode::Io, "socket error"));
                }
                let written = match queue.write_with(|iov| sock.try_write_vectored(iov)) {
                    Ok(p) => p,
                    Err(_) => return End::Local(Reset::new(RstCode::Io, "socket write failed")),
                };
                if written.bytes > 0 {
                    if let Some(lm) = lm {
                        lm.bytes_a2c.inc_by(written.bytes as u64);
                    }
                    let _ = ctx.events.send(Event::Drained {
                        key: b.key,
                        bytes: written.bytes,
                        frames: written.frames,
                    });
                }
            }
            permit = ctx.data.reserve(), if outbox.is_some() => {
                let Ok(permit) = permit else { return End::LinkGone };
                if let Some(item) = outbox.take() {
                    permit.send(item);
                }
            }
            // A permit came free: look again (it is given back at once).
            _ = ctx.inflight.acquire(), if link_starved => {}
            r = sock.readable(), if budget > 0 && outbox.is_none() => {
                if r.is_err() {
                    return End::Local(Reset::new(RstCode::Io, "socket error"));
                }
                let Ok(permit) = ctx.inflight.try_acquire_many(budget as u32) else {
                    continue;
                };
                let now = tokio::time::Instant::now().into_std();
                match reads.read(budget, Some(id), now, |buf| sock.try_read_buf(buf)) {
                    Ok(None) => {
                        drop(permit);
                        if let Some(fin) = b.send.on_eof() {
                            match binary::encode_to_bytes(&fin, &Limits::default()) {
                                Ok(f) => outbox = Some(f),
                                Err(_) => return End::Local(Reset::new(RstCode::Other, "FIN does not encode")),
                            }
                        }
                    }
                    Ok(Some((bytes, n))) => {
                        // `n` bytes stay charged to the link until the peer credits them.
                        permit.forget();
                        ctx.inflight.add_permits(budget - n);
                        *unacked += n;
                        if let Err(reset) = b.send.on_read(n) {
                            return End::Local(reset);
                        }
                        if let Some(lm) = lm {
                            lm.bytes_c2a.inc_by(n as u64);
                        }
                        outbox = Some(bytes);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => drop(permit),
                    Err(_) => return End::Local(Reset::new(RstCode::Io, "socket read failed")),
                }
            }
        }
    }
}
