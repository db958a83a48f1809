//! Waiting in tests: poll a condition until it holds, or run a future, with a deadline; on
//! timeout the test fails naming what it waited for. Never a fixed sleep "to let things settle".
//!
//! The deadline is measured on tokio's clock, so on a paused clock (`start_paused = true`) the
//! waits cost no real time: every poll interval auto-advances the clock when the runtime is idle.
//!
//! Paused clock and sockets. Whenever the runtime parks, tokio advances a paused clock to the
//! next timer, even when the same park delivered socket events. With real loopback sockets every
//! hand-off between tasks (a write here, a read in another task) is such a park, so one hand-off
//! can jump the clock straight to a test's deadline. A test on a paused clock that talks over
//! sockets therefore holds a [`Ticker`]: a timer due every [`TICK`] bounds each jump to one tick.
//! And the kernel keeps real time: a delay there (Nagle's algorithm waiting for a delayed ACK,
//! up to 40 ms) lets the virtual clock run ahead by seconds, so every test socket sets
//! `TCP_NODELAY` ([`crate::net::connect`]; the relay and the agent set it on theirs).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Default upper bound for one wait; generous because CI machines are shared. Only a failing test
/// waits this long.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(5);

/// The step of a [`Ticker`]: the most a paused clock advances at one park.
pub const TICK: Duration = Duration::from_millis(10);

/// A timer due every [`TICK`] while this lives (see the module doc); dropping it stops it.
#[derive(Debug)]
pub struct Ticker(tokio::task::JoinHandle<()>);

impl Ticker {
    /// Starts ticking on the current runtime.
    pub fn start() -> Ticker {
        Ticker(tokio::spawn(async {
            loop {
                tokio::time::sleep(TICK).await;
            }
        }))
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls `cond` until it holds; panics with `what` after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_for`] with an async condition (a health probe, an HTTP request).
pub async fn wait_for_async<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `f` until it returns `Some`; panics with `what` after `timeout`.
pub async fn wait_some<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `line()` (an agent's last error, say) is one line containing every one of
/// `parts`; returns it. On timeout the panic shows the last line seen.
pub async fn wait_line(
    timeout: Duration,
    parts: &[&str],
    mut line: impl FnMut() -> Option<String>,
) -> String {
    let end = Instant::now() + timeout;
    loop {
        let last = line();
        if let Some(l) = &last {
            if parts.iter().all(|p| l.contains(p)) {
                assert!(!l.contains('\n'), "one line: {l}");
                return l.clone();
            }
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?}: no line containing {parts:?}; last: {last:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Awaits `f`; panics with `what` if it takes longer than `timeout`.
pub async fn within<T>(what: &str, timeout: Duration, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, f).await {
        Ok(t) => t,
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wait_for_returns_once_the_condition_holds() {
        let start = Instant::now();
        let mut n = 0;
        wait_for("three polls", DEADLINE, || {
            n += 1;
            n == 3
        })
        .await;
        assert_eq!(start.elapsed(), POLL * 2);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "waiting for the moon")]
    async fn wait_for_names_the_condition_on_timeout() {
        wait_for("the moon", Duration::from_secs(1), || false).await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "waiting for a reply")]
    async fn within_names_the_future_on_timeout() {
        within(
            "a reply",
            Duration::from_secs(1),
            std::future::pending::<()>(),
        )
        .await;
    }
}
