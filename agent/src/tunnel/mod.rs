//! The tunnel supervisor: keeps one tunnel to the relay up, reconnects, refreshes the token.
//!
//! Each WebSocket connection is one [`session`] (dial, HELLO, READY, the stream table); this
//! module starts sessions, notices how they end, and decides when to start the next one.
//!
//! Several tunnels (`tunnel.connections: 2`): one supervisor per [`Slot`], each with its own
//! backoff and its own relay of the list (a slot that moves on skips the relays the other slots
//! use, see [`crate::transport::Dialer::next_relay`]); all of them serve streams, and health is
//! READY while any one is.
//!
//! Reconnects: a tunnel that was READY for [`FLAP_GUARD`] resets the backoff to its quick retries
//! (see [`crate::backoff`]); one closed by the relay with 1001 Going Away (the relay shuts down)
//! is dialed again at once, on the next relay of the list when there is one.
//!
//! Token refresh: when the token in use has `exp`, the supervisor re-reads the token file
//! `refresh_before_exp` ahead of it; if the file holds a new token it opens a second session
//! while the first stays READY, and once the new one is READY (the relay sends new streams to
//! the newest tunnel of an agent) the old one is retired: it closes when its last stream ends,
//! or at its token's expiry. Health therefore stays READY across a refresh.
//!
//! Reload: when the running configuration's exported connectors differ from those the READY
//! tunnel announced, the supervisor opens a new tunnel (a new HELLO) the same way, and retires
//! the old one once the new one is READY; the old one's streams run to their end (without a
//! token `exp` it has no deadline). See [`crate::reload`].
//!
//! systemd: the supervisor alone speaks to it (see [`crate::notify`]): READY=1 with the first
//! HELLO_ACK, a STATUS line per state change (connecting, READY with the stream count,
//! reconnecting with the delay and the cause), WATCHDOG=1 from its loop, STOPPING=1 at the end.

mod context;
mod growth;
mod session;
mod status;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::{Id as TaskId, JoinSet};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub(crate) use context::Shared;
use context::{End, Ready, SessionResult, Slot};

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::notify::{Notifier, StatusLine};
use crate::reload::same_connectors;
use crate::token::{self, Token};
use crate::transport::Dialer;

/// A tunnel READY at least this long resets the reconnect backoff (a relay restart); one that
/// dies sooner counts as a failed attempt.
const FLAP_GUARD: Duration = Duration::from_secs(1);
/// "Not in this run" for a deadline the clock cannot represent.
const FAR: Duration = Duration::from_secs(86_400 * 365);
/// How often systemd's STATUS line is refreshed while READY (its stream count changes without
/// waking the supervisor).
const STATUS_REFRESH: Duration = Duration::from_secs(5);

/// A session the supervisor started; `retire` asks it to drain and close.
#[derive(Debug)]
struct Tracked {
    id: TaskId,
    /// The configuration it was started with (its HELLO's connectors).
    cfg: Arc<AgentConfig>,
    retire: CancellationToken,
    /// The token it connected with (set at READY).
    token: Option<Token>,
}

/// Keeps `tunnel.connections` tunnels up until `cancel`, one supervisor per slot; `dialer` is
/// slot 0's.
pub(crate) async fn supervise(shared: Arc<Shared>, dialer: Dialer, cancel: CancellationToken) {
    let n = shared.cfg().connections.max(1);
    if n == 1 {
        let slot = Arc::new(Slot { index: 0, dialer });
        return supervise_slot(shared, slot, cancel).await;
    }
    // Dropping (aborting) this task drops the set, which aborts every slot.
    let mut slots = JoinSet::new();
    for index in 0..n {
        let slot = Arc::new(Slot {
            index,
            dialer: dialer.slot(index),
        });
        let span = tracing::info_span!("tunnel", slot = index + 1);
        slots.spawn(supervise_slot(shared.clone(), slot, cancel.clone()).instrument(span));
    }
    while let Some(done) = slots.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "tunnel supervisor failed");
        }
    }
}

/// Keeps one tunnel up until `cancel`: dial, READY, reconnect with backoff after a failure, and
/// refresh ahead of the token's expiry. See the module docs for the refresh overlap.
async fn supervise_slot(shared: Arc<Shared>, slot: Arc<Slot>, cancel: CancellationToken) {
    // What a reload cannot change (see `crate::reload`): read once.
    let start_cfg = shared.cfg();
    let limits = &start_cfg.limits;
    // Several slots: the others may be READY while this one is down.
    let several = start_cfg.connections > 1;
    let margin = start_cfg.token_refresh_before;
    let mut reloads = shared.config.subscribe();
    // While the file still holds the expiring token, look again this often.
    let recheck = (margin / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut backoff = Backoff::new(limits.reconnect_initial, limits.reconnect_max);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Ready>();
    let mut sessions: JoinSet<SessionResult> = JoinSet::new();
    // The READY tunnel new streams use.
    let mut current: Option<Tracked> = None;
    // A session dialing or waiting for HELLO_ACK (first connect, reconnect or refresh).
    let mut pending: Option<Tracked> = None;
    let mut retry_at: Option<Instant> = Some(Instant::now());
    let mut refresh_at: Option<Instant> = None;
    let mut stale_warned = false;
    let far = || Instant::now() + Duration::from_secs(86_400);
    // systemd: STATUS while down (connecting / reconnecting), a note while a replacement
    // tunnel fails, and the watchdog, pinged from this loop only: if the loop wedges, the
    // pings stop and systemd restarts the agent.
    // The relay dialed next (with several relays it changes after a failed dial).
    let relay = || slot.dialer.url().origin();
    // Slot 0 alone speaks to systemd.
    let notifier = if slot.index == 0 {
        shared.notify.clone()
    } else {
        Notifier::default()
    };
    let mut status = StatusLine::new(notifier);
    let mut down_status = format!("connecting to {}", relay());
    let mut note: Option<String> = None;
    let ping_every = status.notifier().ping_every();
    let mut watchdog = tokio::time::interval(ping_every.unwrap_or(STATUS_REFRESH));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval(STATUS_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        // A reload changed the exported set: a new HELLO on a new tunnel (make before break,
        // as the token refresh); a replacement already on its way is not doubled, and one
        // started from an older configuration is followed by another once it is READY.
        if let Some(cur) = current
            .as_ref()
            .filter(|_| pending.is_none() && retry_at.is_none())
        {
            if !same_connectors(&cur.cfg, &shared.cfg()) {
                tracing::info!(
                    "exported connectors changed; opening a new tunnel to announce them"
                );
                pending = Some(spawn_session(
                    &mut sessions,
                    &shared,
                    &slot,
                    &cancel,
                    &ready_tx,
                ));
            }
        }
        if status.notifier().is_enabled() {
            let ready = current.is_some();
            let text = if ready {
                ready_status(&relay(), shared.health.streams(), note.as_deref())
            } else if several && shared.health.is_ready() {
                format!("READY: another tunnel is up; this one is {down_status}")
            } else {
                down_status.clone()
            };
            status.publish(text, ready || (several && shared.health.is_ready()));
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = watchdog.tick(), if ping_every.is_some() => status.notifier().watchdog(),
            _ = refresh.tick(), if (current.is_some() || several) && status.notifier().is_enabled() => {}
            // Wakes the loop; the check at its top acts on it. Cancel safe.
            Ok(()) = reloads.changed() => {}
            Some(ready) = ready_rx.recv() => {
                let Some(mut p) = pending.take_if(|p| p.id == ready.id) else { continue };
                refresh_at = refresh_deadline(ready.token.as_ref(), margin);
                stale_warned = false;
                note = None;
                p.token = ready.token;
                if let Some(old) = current.replace(p) {
                    tracing::info!("new tunnel READY; the previous one closes when its streams end");
                    old.retire.cancel();
                }
            }
            Some(joined) = sessions.join_next_with_id(), if !sessions.is_empty() => {
                let (id, end, ready_for) = match joined {
                    Ok((id, (end, ready_for))) => (id, end, ready_for),
                    Err(e) => (e.id(), End::Broken(format!("session task failed: {e}")), None),
                };
                if end.is_shutdown_or(&cancel) {
                    continue;
                }
                let redial = pending.as_ref().is_some_and(|p| p.id == id)
                    || current.as_ref().is_some_and(|c| c.id == id);
                if let Some(reason) = end.reconnect_reason().filter(|_| redial) {
                    shared.metrics.reconnect(reason);
                }
                if pending.as_ref().is_some_and(|p| p.id == id) {
                    pending = None;
                    let failed = slot.dialer.url().to_string();
                    // Several relays: the next attempt goes to the next one.
                    slot.dialer.next_relay();
                    let delay = backoff.next_delay();
                    retry_at = Some(Instant::now() + delay);
                    shared.health.set_error(end.to_string());
                    let delay_ms = delay.as_millis() as u64;
                    let retry = format!("retrying in {}: {end}", seconds(delay));
                    if current.is_some() {
                        note = Some(format!("replacement tunnel failed, {retry}"));
                        tracing::warn!(relay = %failed, next = %slot.dialer.url(), reason = end.reason(), error = %end, delay_ms, "cannot open the replacement tunnel; the current one stays up; retrying");
                    } else {
                        down_status = format!("reconnecting in {}: {end}", seconds(delay));
                        tracing::warn!(event = "tunnel_connect_failed", relay = %failed, next = %slot.dialer.url(), reason = end.reason(), error = %end, delay_ms, "cannot connect to the relay; retrying");
                    }
                } else if current.as_ref().is_some_and(|c| c.id == id) {
                    current = None;
                    refresh_at = None;
                    // It reached HELLO_ACK: whatever failed before, the relay works. Come back
                    // quickly (the quick retries are jittered, so a fleet does not return in
                    // lock-step), not after the grown delay: a relay restarted fifteen times in
                    // a row is reached within a second each time. Flap guard: a relay that
                    // drops every tunnel right after HELLO_ACK keeps the grown delay (and is
                    // not redialled several times a second).
                    let healthy = ready_for.is_some_and(|d| d >= FLAP_GUARD);
                    if healthy {
                        backoff.healthy();
                    }
                    // 1001 Going Away: the relay shuts down. Straight to the next relay of the
                    // list (the same one when there is no other), without a delay, unless the
                    // tunnel was too short-lived to trust.
                    let going_away = end.is_going_away();
                    if going_away {
                        slot.dialer.next_relay();
                    }
                    shared.health.set_error(end.to_string());
                    if pending.is_none() {
                        let delay = if going_away && healthy {
                            Duration::ZERO
                        } else {
                            backoff.next_delay()
                        };
                        retry_at = Some(Instant::now() + delay);
                        down_status = format!("reconnecting in {}: {end}", seconds(delay));
                        let delay_ms = delay.as_millis() as u64;
                        tracing::warn!(event = "tunnel_disconnected", relay = %slot.dialer.url(), reason = end.reason(), error = %end, delay_ms, "tunnel down; reconnecting");
                    } else {
                        down_status = format!("connecting to {} (tunnel down: {end})", relay());
                        tracing::warn!(relay = %slot.dialer.url(), reason = end.reason(), error = %end, "tunnel down while its replacement is being opened");
                    }
                } else {
                    tracing::info!(reason = end.reason(), "previous tunnel closed: {end}");
                }
            }
            _ = sleep_until(retry_at.unwrap_or_else(far)), if retry_at.is_some() && pending.is_none() => {
                retry_at = None;
                if current.is_none() {
                    down_status = format!("connecting to {}", relay());
                }
                pending = Some(spawn_session(&mut sessions, &shared, &slot, &cancel, &ready_tx));
            }
            _ = sleep_until(refresh_at.unwrap_or_else(far)),
                if refresh_at.is_some() && pending.is_none() && retry_at.is_none() => {
                refresh_at = None;
                let (Some(cur), Some(path)) = (&current, slot.dialer.token_file()) else { continue };
                match token::read_any(path).await {
                    Ok(t) if cur.token.as_ref() != Some(&t) => {
                        tracing::info!(token_file = %path.display(), "token file holds a new token; opening a new tunnel before the current token expires");
                        pending = Some(spawn_session(&mut sessions, &shared, &slot, &cancel, &ready_tx));
                    }
                    other => {
                        if !stale_warned {
                            stale_warned = true;
                            let left = cur
                                .token
                                .as_ref()
                                .and_then(|t| t.time_left(SystemTime::now()))
                                .map(|l| match l {
                                    Ok(d) => format!("expires in {} s", d.as_secs()),
                                    Err(d) => format!("expired {} s ago", d.as_secs()),
                                })
                                .unwrap_or_default();
                            match other {
                                Err(e) => tracing::warn!(error = %e, "the tunnel's token {left}; cannot read a new one yet"),
                                Ok(_) => tracing::warn!(token_file = %path.display(), "the tunnel's token {left} and the token file still holds it; waiting for a new token"),
                            }
                        }
                        refresh_at = Some(Instant::now() + recheck);
                    }
                }
            }
        }
    }
    status.notifier().stopping("stopping: closing the tunnel");
    // Every session watches `cancel`: each sends its Close and ends.
    while sessions.join_next().await.is_some() {}
    tracing::info!("tunnel stopped");
}

/// systemd's STATUS while a tunnel is READY.
fn ready_status(relay: &str, streams: usize, note: Option<&str>) -> String {
    let s = if streams == 1 { "" } else { "s" };
    match note {
        Some(note) => format!("READY: tunnel to {relay} up, {streams} stream{s}; {note}"),
        None => format!("READY: tunnel to {relay} up, {streams} stream{s}"),
    }
}

/// A delay as `1.2s`.
fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// When to look for a new token: `margin` before `exp` (now, if that has passed).
fn refresh_deadline(token: Option<&Token>, margin: Duration) -> Option<Instant> {
    let left = match token?.time_left(SystemTime::now())? {
        Ok(left) => left,
        Err(_) => Duration::ZERO,
    };
    let now = Instant::now();
    // `left` is bounded by `token::MAX_EXP`; an Instant that far ahead may still not exist.
    Some(
        now.checked_add(left.saturating_sub(margin))
            .unwrap_or(now + FAR),
    )
}

fn spawn_session(
    sessions: &mut JoinSet<SessionResult>,
    shared: &Arc<Shared>,
    slot: &Arc<Slot>,
    cancel: &CancellationToken,
    ready_tx: &mpsc::UnboundedSender<Ready>,
) -> Tracked {
    let retire = CancellationToken::new();
    let cfg = shared.cfg();
    // In the slot's span (several tunnels: the logs say which).
    let handle = sessions.spawn(
        session::run(
            shared.clone(),
            cfg.clone(),
            slot.clone(),
            cancel.clone(),
            retire.clone(),
            ready_tx.clone(),
        )
        .in_current_span(),
    );
    Tracked {
        id: handle.id(),
        cfg,
        retire,
        token: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(exp: &str) -> Token {
        Token::parse(&crate::token::tests::jwt(&format!(r#"{{"exp":{exp}}}"#))).expect("token")
    }

    #[test]
    fn refresh_deadline_survives_any_exp() {
        let margin = Duration::from_secs(60);
        for exp in [u64::MAX.to_string(), i64::MAX.to_string()] {
            assert_eq!(refresh_deadline(Some(&token(&exp)), margin), None, "{exp}");
        }
        let far = refresh_deadline(Some(&token(&token::MAX_EXP.to_string())), margin)
            .expect("a deadline");
        assert!(far > Instant::now() + Duration::from_secs(86_400 * 300));
        let soon = refresh_deadline(Some(&token("1")), margin).expect("expired: now");
        assert!(soon <= Instant::now());
    }
}
