//! Dialing a connector: the hosts in the order its [`TargetSet`] gives, every address of each
//! name, all within the OPEN's one `connect_timeout_ms` budget, each outcome recorded in the
//! set's health.
//!
//! Names are resolved again on every dial, through the system resolver (`getaddrinfo`): that
//! is what honors the DNS TTLs (it reports none to us, so the agent keeps no cache of its own).
//! The budget is split so one black-holed host cannot eat it when another exists: a host gets
//! what is left divided by the hosts still to try, an address what its host has left divided by
//! the addresses still to try, each at least [`MIN_ATTEMPT`] (never more than is left).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::health::Transition;
use super::TargetSet;
use crate::metrics::AgentMetrics;

/// The least time one host or address gets (unless less is left of the budget).
pub(crate) const MIN_ATTEMPT: Duration = Duration::from_millis(200);
/// Addresses tried per name (a name with more is cut: the budget would not cover them).
const MAX_ADDRS: usize = 8;

/// What a dial tells the rest of the agent.
#[derive(Debug)]
pub(crate) struct DialCtx<'a> {
    pub connector: &'a str,
    pub metrics: &'a AgentMetrics,
    /// Bumped on every up/down transition (the tunnel sessions report health to the relay).
    pub changed: &'a watch::Sender<u64>,
}

/// Why one host failed: the log reason and the RST text.
struct Failure {
    reason: &'static str,
    message: String,
}

/// The socket of the first host that accepted, or the RST reason when every one failed.
pub(crate) async fn dial(
    set: &TargetSet,
    budget: Duration,
    ctx: &DialCtx<'_>,
) -> Result<TcpStream, String> {
    let start = Instant::now();
    let deadline = start + budget;
    let order = set.order(start.into_std());
    let n = order.len();
    let mut last = None;
    for (k, &i) in order.as_slice().iter().enumerate() {
        let i = usize::from(i);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let share = (left / u32::try_from(n - k).unwrap_or(1))
            .max(MIN_ATTEMPT)
            .min(left);
        let host = set.target.hosts.get(i).map_or("", String::as_str);
        let label = set.target.label(i);
        match dial_host(host, set.target.port, share).await {
            Ok(sock) => {
                let t = set.with_health(|h| h.succeeded(i, Instant::now().into_std()));
                if t == Some(Transition::Up) {
                    tracing::info!(event = "target_up", connector = ctx.connector, target = %label, "target is up again");
                    ctx.changed.send_modify(|v| *v = v.wrapping_add(1));
                }
                return Ok(sock);
            }
            Err(f) => {
                let t = set.with_health(|h| h.failed(i, Instant::now().into_std()));
                if t == Some(Transition::Down) {
                    tracing::warn!(event = "target_down", connector = ctx.connector, target = %label, reason = f.reason, error = %f.message, "target is down; skipped while it backs off");
                    ctx.changed.send_modify(|v| *v = v.wrapping_add(1));
                } else {
                    tracing::debug!(connector = ctx.connector, target = %label, reason = f.reason, error = %f.message, "target attempt failed");
                }
                last = Some(f.message);
            }
        }
    }
    // Counted once per OPEN that found no host (what a client saw); each host's failed
    // attempts are in its health.
    ctx.metrics.target_connect_failed(ctx.connector);
    let last = last.unwrap_or_else(|| format!("timeout after {} ms", budget.as_millis()));
    Err(if n > 1 {
        format!("all {n} targets failed; last: {last}")
    } else {
        last
    })
}

/// One host within `share`: resolve, then each address in turn.
async fn dial_host(host: &str, port: u16, share: Duration) -> Result<TcpStream, Failure> {
    let deadline = Instant::now() + share;
    let timeout = |d: Duration| Failure {
        reason: "timeout",
        message: format!("timeout after {} ms", d.as_millis()),
    };
    let addrs = match tokio::time::timeout(share, tokio::net::lookup_host((host, port))).await {
        Err(_) => return Err(timeout(share)),
        Ok(Err(e)) => {
            return Err(Failure {
                reason: "resolve",
                message: format!("cannot resolve {host}: {e}"),
            })
        }
        Ok(Ok(a)) => a,
    };
    let mut list = heapless::Vec::<SocketAddr, MAX_ADDRS>::new();
    for a in addrs {
        if list.push(a).is_err() {
            break;
        }
    }
    let mut last = Failure {
        reason: "resolve",
        message: format!("{host} resolved to no address"),
    };
    for (k, addr) in list.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let each = (left / u32::try_from(list.len() - k).unwrap_or(1))
            .max(MIN_ATTEMPT)
            .min(left);
        match tokio::time::timeout(each, TcpStream::connect(addr)).await {
            Ok(Ok(sock)) => return Ok(sock),
            Ok(Err(e)) => last = io_failure(&e),
            Err(_) => last = timeout(each),
        }
    }
    Err(last)
}

fn io_failure(e: &io::Error) -> Failure {
    let reason = match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused",
        io::ErrorKind::TimedOut => "timeout",
        _ => "unreachable",
    };
    Failure {
        reason,
        message: e.to_string(),
    }
}
