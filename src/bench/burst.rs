//! Memory that comes back (issue 20, `--only burst`): the relay's RSS after bursts of short
//! connections, sampled each second while it should fall back.
//!
//! One relay process, one agent process and an echo target, as in the tunnel benchmark. Each
//! burst is `conns` connections to the relay's echo listener, made one after another by each of
//! `clients` threads: connect, send `bytes`, close at once without reading (every other one with
//! an RST: `SO_LINGER` 0). The echo target accepts slower than the clients connect, so streams
//! pile up in the relay with their bytes; once they are gone the allocator holds what they
//! freed. RSS (`VmRSS`) of both processes is read before the first burst, right after each
//! burst's clients are done, and every second for `watch_secs` after, with the relay's
//! `nowconnect_tcp_active_connections` beside it (0: nothing live is left to hold memory).
//!
//! What this module must never do: leave a process behind or wait without a deadline; every
//! count and every wait is bounded.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::load;
use super::pki;
use super::proc;
use super::run::Settings;
use super::system::{self, http_get, Tunnel};
use super::targets;

/// Connect and write timeout of one burst connection.
const CONN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a burst may take (all its clients).
const BURST_DEADLINE: Duration = Duration::from_secs(300);
/// The goal of issue 20: relay RSS within this factor of its idle RSS ...
pub const GOAL_FACTOR: f64 = 2.0;
/// ... this long after a burst.
pub const GOAL_SECS: u64 = 10;

/// What `--only burst` is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct BurstSettings {
    /// Bursts in a row.
    pub bursts: usize,
    /// Connections per burst.
    pub conns: usize,
    /// Client threads sharing a burst's connections.
    pub clients: usize,
    /// Bytes each connection sends before it closes.
    pub bytes: usize,
    /// Seconds of sampling after each burst.
    pub watch_secs: u64,
}

/// One sample: seconds since the burst's clients were done, both RSS, the relay's live TCP
/// connections (None: the scrape failed).
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub at_s: f64,
    pub relay_kib: u64,
    pub agent_kib: u64,
    pub relay_active: Option<u64>,
}

/// One burst: how long its clients took, how many connections failed, and the samples after it
/// (the first one is "right after").
#[derive(Debug, Clone)]
pub struct Round {
    pub secs: f64,
    pub failed: usize,
    pub points: Vec<Point>,
}

/// The whole measure.
#[derive(Debug, Clone)]
pub struct Burst {
    pub settings: BurstSettings,
    /// Before the first burst.
    pub idle: Point,
    pub rounds: Vec<Round>,
}

impl Burst {
    /// Relay RSS at the end of the last watch (the goal's figure).
    pub fn relay_end_kib(&self) -> Option<u64> {
        self.rounds
            .last()
            .and_then(|r| r.points.last())
            .map(|p| p.relay_kib)
    }

    /// Whether the relay was back under `GOAL_FACTOR` x idle within `GOAL_SECS` after every burst.
    pub fn met(&self) -> bool {
        let limit = self.idle.relay_kib as f64 * GOAL_FACTOR;
        !self.rounds.is_empty()
            && self.rounds.iter().all(|r| {
                r.points
                    .iter()
                    .any(|p| p.at_s <= GOAL_SECS as f64 + 0.5 && p.relay_kib as f64 <= limit)
            })
    }

    /// Markdown: one row per sample, then the verdict.
    pub fn render(&self) -> String {
        let s = &self.settings;
        let mib = |k: u64| format!("{:.1}", k as f64 / 1024.0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "burst: {} x {} connections ({} client thread(s)), {} B each, every other closed \
             with RST; RSS each second for {} s after each burst\n",
            s.bursts, s.conns, s.clients, s.bytes, s.watch_secs
        );
        let _ = writeln!(
            out,
            "| when | relay RSS (MiB) | agent RSS (MiB) | relay TCP connections |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|");
        let active = |p: &Point| p.relay_active.map_or("?".into(), |n| n.to_string());
        let _ = writeln!(
            out,
            "| before | {} | {} | {} |",
            mib(self.idle.relay_kib),
            mib(self.idle.agent_kib),
            active(&self.idle)
        );
        for (i, r) in self.rounds.iter().enumerate() {
            for (j, p) in r.points.iter().enumerate() {
                let when = if j == 0 {
                    format!(
                        "burst {} done ({:.1} s, {} failed)",
                        i + 1,
                        r.secs,
                        r.failed
                    )
                } else {
                    format!("+{:.0} s", p.at_s)
                };
                let _ = writeln!(
                    out,
                    "| {when} | {} | {} | {} |",
                    mib(p.relay_kib),
                    mib(p.agent_kib),
                    active(p)
                );
            }
        }
        let _ = writeln!(
            out,
            "\ngoal: relay RSS <= {GOAL_FACTOR} x idle ({} MiB) within {GOAL_SECS} s of each burst: {}",
            mib((self.idle.relay_kib as f64 * GOAL_FACTOR) as u64),
            if self.met() { "met" } else { "**MISSED**" }
        );
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let point = |p: &Point| {
            serde_json::json!({
                "at_s": p.at_s,
                "relay_rss_kib": p.relay_kib,
                "agent_rss_kib": p.agent_kib,
                "relay_tcp_active": p.relay_active,
            })
        };
        serde_json::json!({
            "bursts": self.settings.bursts,
            "conns": self.settings.conns,
            "clients": self.settings.clients,
            "bytes": self.settings.bytes,
            "idle": point(&self.idle),
            "rounds": self.rounds.iter().map(|r| serde_json::json!({
                "secs": r.secs,
                "failed": r.failed,
                "points": r.points.iter().map(point).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "goal_met": self.met(),
        })
    }
}

/// The relay's `nowconnect_tcp_active_connections`, summed over connectors.
fn relay_active(admin: SocketAddr) -> Option<u64> {
    let body = http_get(admin, "/metrics")?;
    let mut sum = 0u64;
    let mut seen = false;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("nowconnect_tcp_active_connections") else {
            continue;
        };
        // Skip "_total"-style neighbours: the name must end at a label set or a space.
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = rest.rsplit(' ').next()?;
        sum += value.parse::<f64>().ok()? as u64;
        seen = true;
    }
    seen.then_some(sum)
}

fn point(t: &Tunnel, since: Instant) -> anyhow::Result<Point> {
    let r = proc::sample(t.relay.pid()).context("relay is gone")?;
    let a = proc::sample(t.agent.pid()).context("agent is gone")?;
    Ok(Point {
        at_s: since.elapsed().as_secs_f64(),
        relay_kib: r.rss_kib,
        agent_kib: a.rss_kib,
        relay_active: relay_active(t.admin),
    })
}

/// One short connection: connect, send, close (with an RST when `reset`).
fn short(addr: SocketAddr, payload: &[u8], reset: bool) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, CONN_TIMEOUT)?;
    s.set_write_timeout(Some(CONN_TIMEOUT))?;
    if reset {
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
    }
    s.write_all(payload)
}

/// One burst through `addr`; returns (seconds, failed connections).
fn burst(addr: SocketAddr, s: &BurstSettings) -> anyhow::Result<(f64, usize)> {
    let start = Instant::now();
    let deadline = start + BURST_DEADLINE;
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let payload: Arc<[u8]> = vec![0x5au8; s.bytes].into();
    let conns = s.conns;
    let threads: Vec<_> = (0..s.clients)
        .map(|_| {
            let (next, failed, payload) = (next.clone(), failed.clone(), payload.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= conns || Instant::now() > deadline {
                    break;
                }
                if short(addr, &payload, i % 2 == 1).is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a burst client panicked"))?;
    }
    let made = next.load(Ordering::Relaxed).min(conns);
    anyhow::ensure!(
        made == conns,
        "burst deadline ({BURST_DEADLINE:?}) hit after {made} of {conns} connections"
    );
    Ok((
        start.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed),
    ))
}

/// Starts relay, agent and echo target, and runs the bursts.
pub fn run(s: &Settings, b: &BurstSettings) -> anyhow::Result<Burst> {
    std::fs::create_dir_all(&s.work_dir).context("creating the work directory")?;
    let pki = pki::write(&s.work_dir)?;
    let echo = targets::echo()?;
    let opts = s.options(s.work_dir.join("burst"));
    std::fs::create_dir_all(&opts.dir).context("creating the burst work directory")?;
    let exported = [("echo".to_owned(), echo.addr)].into_iter().collect();
    let tunnel = system::start(&opts, &pki, &exported)?;
    let via = tunnel.listener("echo")?;
    load::probe(via).context("first echo through the tunnel")?;
    let idle = point(&tunnel, Instant::now())?;
    let mut rounds = Vec::new();
    for i in 0..b.bursts {
        eprintln!(
            "burst {}/{}: {} connections x {} B",
            i + 1,
            b.bursts,
            b.conns,
            b.bytes
        );
        let (secs, failed) = burst(via, b)?;
        let done = Instant::now();
        let mut points = vec![point(&tunnel, done)?];
        // Sample on a fixed one-second grid from the end of the burst.
        for k in 1..=b.watch_secs {
            let at = done + Duration::from_secs(k);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            points.push(point(&tunnel, done)?);
        }
        rounds.push(Round {
            secs,
            failed,
            points,
        });
    }
    load::probe(via).context("echo through the tunnel after the bursts")?;
    Ok(Burst {
        settings: *b,
        idle,
        rounds,
    })
}
