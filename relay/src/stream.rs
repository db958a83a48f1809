//! One client connection relayed through a tunnel: the stream task.
//!
//! A single task drives both directions with non-blocking socket calls, so a client that stops
//! reading never stops us from reading it (and the reverse), and an RST from the agent closes
//! the socket at once even while writes are pending.
//! - a2c: frames arrive on an unbounded channel from the tunnel session (which must never wait
//!   on one stream); what this task holds is bounded by the receive window (v2) or by
//!   `queue_depth_per_cid` frames (v1). Credit returns with WINDOW after bytes reach the socket.
//! - c2a: on `readable()`, one read of up to `max_payload` (and, v2, at most the send credit)
//!   with the v2 header in front, frozen and queued for the writer. Bulk reads reuse an arena
//!   while a burst lasts; an idle stream holds no payload memory (see `ReadArena`).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use nowconnect_shared::arena::{ReadArena, ARENA_IDLE};
use nowconnect_shared::{
    Dir, Frame, RecvWindow, RstCode, SendCredit, StreamId, Version, DEFAULT_WINDOW,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use crate::audit::{Action, Event};
use crate::listener::{ConnGuard, ListenerCtx};
use crate::metrics::{CodeLabel, DirLabel};
use crate::registry::SessionInfo;
use crate::tunnel::{Out, TunnelCmd, TunnelShared};

/// Most queued buffers handed to one vectored write.
const MAX_IOV: usize = 16;

/// From the tunnel session to a stream task.
#[derive(Debug)]
pub(crate) enum Inbound {
    Data(Bytes),
    Fin(Dir),
    Rst(RstCode),
    Window(u32),
}

#[derive(Debug)]
pub(crate) struct StreamCtx {
    pub id: StreamId,
    /// The client's address (sent in OPEN for audit).
    pub peer: std::net::SocketAddr,
    pub sock: TcpStream,
    pub rx: mpsc::UnboundedReceiver<Inbound>,
    pub tunnel: Arc<TunnelShared>,
    pub listener: Arc<ListenerCtx>,
    /// Holds a slot of `max_conn_total` until the stream ends.
    pub guard: ConnGuard,
    /// What the portal lists (byte counts, the operator's kill switch).
    pub info: Arc<SessionInfo>,
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Both directions finished with FIN.
    Done,
    /// The agent (or the session, on its behalf) reset the stream.
    PeerReset(RstCode),
    /// The tunnel went away or the relay is stopping.
    TunnelGone,
    /// We reset it: tell the agent.
    Local(RstCode, &'static str),
}

impl End {
    fn label(self) -> &'static str {
        match self {
            End::Done => "done",
            End::PeerReset(code) => code.as_str(),
            End::TunnelGone => "tunnel_gone",
            End::Local(code, _) => code.as_str(),
        }
    }
}

/// Byte counts of one stream, for the close log.
#[derive(Debug, Default)]
struct Counts {
    c2a: u64,
    a2c: u64,
}

pub(crate) async fn run(mut ctx: StreamCtx) {
    // Boxed: the PDP call (an HTTP request) is a large future; inline, its space would stay in
    // every stream's task for the stream's whole life (the task measured 8.2 KiB with it inline,
    // 1.2 KiB boxed, in a debug build).
    if !Box::pin(authorize(&ctx)).await {
        // Nothing was sent to the agent (OPEN follows the decision), so nothing to reset there.
        let t = &ctx.tunnel;
        crate::listener::reject(ctx.sock);
        let _ = t.cmd.send(TunnelCmd::Closed(ctx.id));
        t.active.fetch_sub(1, Ordering::Relaxed);
        drop(ctx.guard);
        return;
    }
    let started = Instant::now();
    // Listed for the portal from the OPEN until the task ends.
    let listed = ctx.tunnel.sessions.insert(ctx.info.clone());
    let listener = ctx.listener.clone();
    let lm = &listener.metrics;
    lm.active.inc();
    let mut counts = Counts::default();
    let end = pump(&mut ctx, &mut counts).await;
    let t = &ctx.tunnel;
    let id = ctx.id;

    if let End::Local(code, reason) = end {
        t.metrics
            .rst_sent
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
        let rst = Frame::Rst {
            id,
            code,
            reason: reason.to_owned(),
        };
        send_out(t, Out::Frame(rst)).await;
    }
    if end != End::Done {
        // Abort, not a clean EOF: the client must not mistake a cut stream for a complete one.
        let _ = ctx.sock.set_zero_linger();
    }
    drop(ctx.sock);
    if t.version == Version::V1 {
        send_out(t, Out::Forget(id)).await;
    }
    let _ = t.cmd.send(TunnelCmd::Closed(id));
    t.active.fetch_sub(1, Ordering::Relaxed);
    lm.active.dec();
    let elapsed = started.elapsed();
    t.metrics.connection_duration.observe(elapsed.as_secs_f64());
    debug!(
        cid = id,
        connector = %ctx.listener.connector,
        agent_id = %t.agent_id,
        end = end.label(),
        bytes_c2a = counts.c2a,
        bytes_a2c = counts.a2c,
        duration_ms = elapsed.as_millis() as u64,
        "stream closed"
    );
    drop(listed);
    drop(ctx.guard);
}

/// Decides whether this client may be relayed, before OPEN: the token's connector grants (when
/// required), then the PDP. Waits only in this stream's task; audits the decision.
async fn authorize(ctx: &StreamCtx) -> bool {
    let t = &ctx.tunnel;
    let connector = &ctx.listener.connector;
    let event = |ok: bool, by: &'static str| {
        Event::new(Action::Open, ok)
            .by(by)
            .agent(&t.agent_id)
            .connector(connector)
            .source(ctx.peer)
            .tunnel(t.tunnel_id)
    };
    let metrics = &t.metrics;
    if let Some(grants) = &t.grants {
        // HELLO was checked already; this guards any later path that could route around it.
        if !grants.allows(connector) {
            metrics.rejected(connector, "scope_denied");
            t.audit.record(event(false, "scope").reason("scope_denied"));
            return false;
        }
    }
    let Some(pdp) = t.pdp.as_ref().filter(|_| t.state.pdp_enforce()) else {
        let e = event(true, "none");
        // A configured PDP that an operator switched off (pol-pdp-enforce) is worth saying.
        t.audit.record(if t.pdp.is_some() {
            e.reason("pdp_policy_off")
        } else {
            e
        });
        return true;
    };
    let decision = tokio::select! {
        d = pdp.decide(&t.agent_id, connector, ctx.peer, &ctx.listener.name) => d,
        _ = t.token.cancelled() => return false,
    };
    if decision.allowed {
        t.audit.record(event(true, "pdp").reason(decision.result));
        true
    } else {
        metrics.rejected(connector, "pdp_denied");
        t.audit
            .record(event(false, "pdp").reason(match decision.result {
                "deny" => "pdp_denied",
                "timeout" => "pdp_timeout",
                _ => "pdp_error",
            }));
        false
    }
}

/// Queues a frame for the writer unless the tunnel is going away.
async fn send_out(t: &TunnelShared, item: Out) -> bool {
    tokio::select! {
        r = t.out.send(item) => r.is_ok(),
        _ = t.token.cancelled() => false,
    }
}

async fn pump(ctx: &mut StreamCtx, counts: &mut Counts) -> End {
    let t = ctx.tunnel.clone();
    let lm = &ctx.listener.metrics;
    let id = ctx.id;
    let open = Frame::Open {
        id,
        connector: ctx.listener.connector.clone(),
        client_addr: Some(ctx.peer.to_string()),
    };
    if !send_out(&t, Out::Frame(open)).await {
        return End::TunnelGone;
    }
    let v2 = t.version == Version::V2;
    let far = Duration::from_secs(86_400 * 365);

    // a2c: bytes waiting for the client socket.
    let mut queue: VecDeque<Bytes> = VecDeque::new();
    let mut recv = RecvWindow::new(DEFAULT_WINDOW);
    // c2a: what the agent still accepts (v2), and where client reads land.
    let mut credit = SendCredit::new(DEFAULT_WINDOW);
    let mut reads = ReadArena::new(t.max_payload);
    // Client -> agent still open (no EOF read yet).
    let mut reading = true;
    // The agent sent FIN a2c: shut our write side once the queue drains.
    let mut fin_in = false;
    let mut write_shut = false;
    let mut last = Instant::now();
    let idle = t.idle_timeout;
    let sleep = tokio::time::sleep(idle.unwrap_or(far));
    tokio::pin!(sleep);
    // Lets a burst's arena go once the client pauses (armed while one is held).
    let release = tokio::time::sleep(far);
    tokio::pin!(release);
    let mut release_armed = false;

    loop {
        if !reading && write_shut {
            return End::Done;
        }
        let can_read = reading && (!v2 || credit.available() > 0);
        let can_write = !queue.is_empty();
        tokio::select! {
            biased;
            _ = t.token.cancelled() => return End::TunnelGone,
            _ = ctx.info.kill.cancelled() => {
                return End::Local(RstCode::Denied, "terminated by operator");
            }
            item = ctx.rx.recv() => {
                last = Instant::now();
                match item {
                    None => return End::TunnelGone,
                    Some(Inbound::Rst(code)) => return End::PeerReset(code),
                    Some(Inbound::Data(payload)) => {
                        if fin_in {
                            return End::Local(RstCode::Protocol, "DATA after FIN");
                        }
                        if payload.is_empty() {
                            continue;
                        }
                        if v2 {
                            if recv.on_data(payload.len()).is_err() {
                                return End::Local(RstCode::FlowControl, "window exceeded");
                            }
                        } else if queue.len() >= t.queue_depth {
                            lm.queue_overflow.inc();
                            return End::Local(RstCode::QueueOverflow, "");
                        }
                        queue.push_back(payload);
                    }
                    Some(Inbound::Fin(Dir::A2c)) => fin_in = true,
                    Some(Inbound::Fin(Dir::C2a)) => {
                        return End::Local(RstCode::Protocol, "FIN c2a from agent");
                    }
                    Some(Inbound::Window(n)) => {
                        if credit.grant(n).is_err() {
                            return End::Local(RstCode::FlowControl, "credit overflow");
                        }
                    }
                }
            }
            r = ctx.sock.writable(), if can_write => {
                if r.is_err() {
                    return End::Local(RstCode::Io, "client socket error");
                }
                let written = match write_queued(&ctx.sock, &mut queue) {
                    Ok(n) => n,
                    Err(_) => return End::Local(RstCode::Io, "client write failed"),
                };
                if written > 0 {
                    last = Instant::now();
                    counts.a2c += written as u64;
                    ctx.info.bytes_a2c.fetch_add(written as u64, Ordering::Relaxed);
                    lm.bytes_a2c.inc_by(written as u64);
                    if v2 {
                        match recv.on_drained(written) {
                            Ok(Some(increment)) => {
                                let w = Frame::Window { id, credit: increment };
                                if !send_out(&t, Out::Frame(w)).await {
                                    return End::TunnelGone;
                                }
                            }
                            Ok(None) => {}
                            Err(_) => return End::Local(RstCode::FlowControl, "accounting"),
                        }
                    }
                }
            }
            r = ctx.sock.readable(), if can_read => {
                if r.is_err() {
                    return End::Local(RstCode::Io, "client socket error");
                }
                let cap = if v2 {
                    t.max_payload.min(credit.available() as usize)
                } else {
                    t.max_payload
                };
                let header = if v2 { Some(id) } else { None };
                let now = Instant::now().into_std();
                match reads.read(cap, header, now, |b| ctx.sock.try_read_buf(b)) {
                    Ok(None) => {
                        reading = false;
                        t.metrics.fin_sent.get_or_create(&DirLabel { dir: "c2a" }).inc();
                        if !send_out(&t, Out::Frame(Frame::Fin { id, dir: Dir::C2a })).await {
                            return End::TunnelGone;
                        }
                    }
                    Ok(Some((bytes, n))) => {
                        last = Instant::now();
                        if !release_armed && reads.in_burst() {
                            release.as_mut().reset(last + ARENA_IDLE);
                            release_armed = true;
                        }
                        counts.c2a += n as u64;
                        ctx.info.bytes_c2a.fetch_add(n as u64, Ordering::Relaxed);
                        lm.bytes_c2a.inc_by(n as u64);
                        let item = if v2 {
                            // Cannot fail: the read was capped at the available credit.
                            if credit.consume(n).is_err() {
                                return End::Local(RstCode::FlowControl, "credit");
                            }
                            Out::Raw(bytes)
                        } else {
                            Out::Frame(Frame::Data { id, payload: bytes })
                        };
                        if !send_out(&t, item).await {
                            return End::TunnelGone;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return End::Local(RstCode::Io, "client read failed"),
                }
            }
            () = &mut release, if release_armed => {
                match reads.release_if_idle(Instant::now().into_std()) {
                    Some(at) => release.as_mut().reset(Instant::from_std(at)),
                    None => release_armed = false,
                }
            }
            () = &mut sleep, if idle.is_some() => {
                let idle = idle.unwrap_or(far);
                if last.elapsed() >= idle {
                    return End::Local(RstCode::IdleTimeout, "");
                }
                sleep.as_mut().reset(last + idle);
            }
        }
        if fin_in && queue.is_empty() && !write_shut {
            // Every byte sent before the FIN is written: half-close towards the client.
            let _ = ctx.sock.shutdown().await;
            write_shut = true;
        }
    }
}

/// Writes as much of the queue as the socket takes now. Returns the bytes written.
fn write_queued(sock: &TcpStream, queue: &mut VecDeque<Bytes>) -> io::Result<usize> {
    let mut total = 0;
    while !queue.is_empty() {
        let n = {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut k = 0;
            for b in queue.iter().take(MAX_IOV) {
                iov[k] = IoSlice::new(b);
                k += 1;
            }
            match sock.try_write_vectored(&iov[..k]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        total += n;
        let mut left = n;
        while left > 0 {
            let Some(front) = queue.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                queue.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair on loopback: (what we read from, what the test writes into).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
        (accepted.expect("accept").0, client.expect("connect"))
    }

    /// One read once the socket says it has something (bounded wait).
    async fn read_once(
        r: &mut ReadArena,
        sock: &TcpStream,
        cap: usize,
        id: Option<StreamId>,
    ) -> Option<(Bytes, usize)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline, "no data within 5 s");
            sock.readable().await.expect("readable");
            match r.read(cap, id, Instant::now().into_std(), |b| sock.try_read_buf(b)) {
                Ok(x) => return x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn bursts_reuse_an_arena_without_touching_frames_in_flight() {
        let (sock, mut peer) = pair().await;
        let mut reads = ReadArena::new(16 * 1024);
        let total = 1 << 20;
        let data: Vec<u8> = (0..total).map(|i| (i * 7 + i / 251) as u8).collect();
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                peer.write_all(&data).await.expect("write");
                peer.shutdown().await.expect("shutdown");
            })
        };
        // Keep frames alive (as a slow writer task would) while reading on; at the end every
        // frame still held must equal its slice of the source: reclaiming the arena must never
        // overwrite bytes somebody still holds.
        let mut held: VecDeque<(usize, Bytes)> = VecDeque::new();
        let mut got = 0;
        let mut saw_arena = false;
        while let Some((frame, n)) = read_once(&mut reads, &sock, 16 * 1024, None).await {
            assert_eq!(frame.len(), n);
            saw_arena |= reads.in_burst();
            held.push_back((got, frame));
            got += n;
            assert!(got <= total);
            if held.len() > 6 {
                // Release the oldest frames so the arena can be reclaimed as well.
                for (at, f) in held.drain(..3) {
                    assert_eq!(&f[..], &data[at..at + f.len()], "frame at {at} changed");
                }
            }
        }
        writer.await.expect("writer");
        assert_eq!(got, total);
        assert!(saw_arena, "a 1 MiB upload reads through the arena");
        assert_eq!(reads.held(), 0, "EOF lets the arena go");
        for (at, f) in held {
            assert_eq!(&f[..], &data[at..at + f.len()], "frame at {at} changed");
        }
    }
}
