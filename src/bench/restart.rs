//! Reconnect after a relay restart and failover to another relay, timed as an operator sees
//! them (`--only restart,failover`).
//!
//! restart: one relay process and one agent process; the relay is stopped (SIGKILL, or SIGTERM
//! for a graceful shutdown) and started again on the same port, `--restarts` times in a row;
//! each time the agent's READY (its health port) is timed from the new relay's start (the spawn
//! of its process, so the relay's own start-up counts). Before the new relay starts, the agent
//! has noticed the loss (health `OK`): a restart, not a blip.
//!
//! failover: relays A and B, the agent with `urls: [A, B]` (one tunnel); the relay holding the
//! agent is SIGKILLed and the time until the agent is READY on the other (its
//! `nowconnect_agents_connected` is 1) is measured from the kill; the dead relay is started again
//! for the next run, which kills the other one.
//!
//! What this module must never do: leave a process behind (every one is a [`Child`]), or wait
//! without a deadline.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::pki::{self, Pki};
use super::proc::{Child, Signal};
use super::run::Settings;
use super::stats::percentile;
use super::system::{
    agent_yaml, free_port, health_line, http_get, path_str, relay_yaml, wait_for, Options,
};
use super::targets;

/// Longest wait for a relay to exit after its signal (no streams: a graceful stop is quick).
const EXIT_DEADLINE: Duration = Duration::from_secs(30);
/// Longest wait for the agent to notice, or to be READY again.
const AGENT_DEADLINE: Duration = Duration::from_secs(60);
/// How often health and metrics are polled.
const POLL: Duration = Duration::from_millis(2);

/// One measure: its samples and the goals.
#[derive(Debug, Clone)]
pub struct Measure {
    pub label: String,
    /// Seconds.
    pub samples: Vec<f64>,
    pub goal_median: f64,
    pub goal_worst: Option<f64>,
}

impl Measure {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.samples.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn median(&self) -> f64 {
        percentile(&self.sorted(), 50.0)
    }

    pub fn worst(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    fn met(&self) -> bool {
        self.median() <= self.goal_median && self.goal_worst.is_none_or(|w| self.worst() <= w)
    }
}

/// Every measure that ran.
#[derive(Debug, Default)]
pub struct Restarts {
    pub measures: Vec<Measure>,
}

impl Restarts {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| measure | runs | median (s) | p90 (s) | worst (s) | goal | verdict |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---|---|");
        for m in &self.measures {
            let goal = match m.goal_worst {
                Some(w) => format!("median <= {} s, worst <= {} s", m.goal_median, w),
                None => format!("median <= {} s", m.goal_median),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.3} | {:.3} | {:.3} | {goal} | {} |",
                m.label,
                m.samples.len(),
                m.median(),
                percentile(&m.sorted(), 90.0),
                m.worst(),
                if m.met() { "met" } else { "**MISSED**" }
            );
        }
        for m in &self.measures {
            let all: Vec<String> = m.samples.iter().map(|s| format!("{s:.3}")).collect();
            let _ = writeln!(out, "\n{} (s, in order): {}", m.label, all.join(" "));
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!(self
            .measures
            .iter()
            .map(|m| serde_json::json!({
                "measure": m.label,
                "samples_s": m.samples,
                "median_s": m.median(),
                "worst_s": m.worst(),
                "met": m.met(),
            }))
            .collect::<Vec<_>>())
    }
}

/// One relay of the measure: its ports (kept across restarts) and the running process.
pub(super) struct Relay {
    name: &'static str,
    yaml: std::path::PathBuf,
    log: std::path::PathBuf,
    admin: SocketAddr,
    pub(super) tunnel_port: u16,
    pub(super) child: Option<Child>,
}

impl Relay {
    pub(super) fn new(name: &'static str, opts: &Options, pki: &Pki) -> anyhow::Result<Relay> {
        let tunnel_port = free_port()?;
        let admin_port = free_port()?;
        let listeners = BTreeMap::from([(
            "echo".to_owned(),
            SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        )]);
        let yaml = opts.dir.join(format!("{name}.yaml"));
        std::fs::write(
            &yaml,
            relay_yaml(opts, pki, tunnel_port, admin_port, &listeners),
        )
        .with_context(|| format!("writing {name}.yaml"))?;
        Ok(Relay {
            name,
            log: opts.dir.join(format!("{name}.log")),
            yaml,
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            tunnel_port,
            child: None,
        })
    }

    /// Spawns the relay process; returns when it is spawned (not yet listening).
    pub(super) fn spawn(&mut self, opts: &Options) -> anyhow::Result<()> {
        let child = Child::spawn(
            self.name,
            &opts.bin_dir.join("nowconnect-relay"),
            &["--config", path_str(&self.yaml)?],
            &opts.relay_env,
            &self.log,
        )?;
        self.child = Some(child);
        Ok(())
    }

    pub(super) fn wait_ready(&mut self) -> anyhow::Result<()> {
        let admin = self.admin;
        let child = self.child.as_mut().context("relay not running")?;
        wait_for(child, "relay /readyz", || {
            http_get(admin, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        })
    }

    pub(super) fn stop(&mut self, signal: Signal) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.stop(signal, EXIT_DEADLINE)?;
        }
        Ok(())
    }

    /// `nowconnect_agents_connected` from `/metrics`; `None` when the relay does not answer.
    pub(super) fn agents(&self) -> Option<i64> {
        let text = http_get(self.admin, "/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix("nowconnect_agents_connected "))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Polls `cond` every [`POLL`] until it holds; fails after `deadline`.
fn poll(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + deadline;
    while !cond() {
        anyhow::ensure!(Instant::now() < end, "no {what} within {deadline:?}");
        std::thread::sleep(POLL);
    }
    Ok(())
}

fn spawn_agent(
    opts: &Options,
    pki: &Pki,
    ports: &[u16],
    echo: SocketAddr,
    name: &str,
) -> anyhow::Result<(Child, SocketAddr)> {
    let health_port = free_port()?;
    let targets = BTreeMap::from([("echo".to_owned(), echo)]);
    let cfg = opts.dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, agent_yaml(opts, pki, ports, health_port, &targets))
        .context("writing the agent's YAML")?;
    let child = Child::spawn(
        "agent",
        &opts.agent_bin,
        &["--config", path_str(&cfg)?],
        &[],
        &opts.dir.join(format!("{name}.log")),
    )?;
    Ok((child, SocketAddr::from(([127, 0, 0, 1], health_port))))
}

fn ready(health: SocketAddr) -> bool {
    health_line(health).as_deref() == Some("READY")
}

/// `--restarts` restarts of one relay with `signal`; READY timed from each new relay's start.
fn restarts(
    opts: &Options,
    pki: &Pki,
    echo: SocketAddr,
    signal: Signal,
    n: usize,
) -> anyhow::Result<Measure> {
    let mut relay = Relay::new("relay", opts, pki)?;
    relay.spawn(opts)?;
    relay.wait_ready()?;
    let (mut agent, health) = spawn_agent(opts, pki, &[relay.tunnel_port], echo, "agent")?;
    wait_for(&mut agent, "agent READY", || ready(health))?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        // A tunnel that has served a while (past the agent's flap guard of 1 s).
        std::thread::sleep(Duration::from_millis(1500));
        relay.stop(signal)?;
        poll("agent noticing the relay's loss", AGENT_DEADLINE, || {
            !ready(health)
        })?;
        let started = Instant::now();
        relay.spawn(opts)?;
        poll("agent READY on the restarted relay", AGENT_DEADLINE, || {
            ready(health)
        })
        .with_context(|| format!("restart {}: agent log:\n{}", i + 1, agent.log_tail(2000)))?;
        samples.push(started.elapsed().as_secs_f64());
        relay.wait_ready()?;
    }
    let label = match signal {
        Signal::Kill => "relay restart after SIGKILL: agent READY from the new relay's start",
        Signal::Term => "relay restart after SIGTERM: agent READY from the new relay's start",
    };
    Ok(Measure {
        label: label.into(),
        samples,
        goal_median: 1.0,
        goal_worst: Some(3.0),
    })
}

/// `--failovers` SIGKILLs of the relay holding the agent; READY on the other timed from the kill.
fn failovers(opts: &Options, pki: &Pki, echo: SocketAddr, n: usize) -> anyhow::Result<Measure> {
    let mut relays = [
        Relay::new("relay-a", opts, pki)?,
        Relay::new("relay-b", opts, pki)?,
    ];
    for r in &mut relays {
        r.spawn(opts)?;
        r.wait_ready()?;
    }
    let ports = [relays[0].tunnel_port, relays[1].tunnel_port];
    let (mut agent, health) = spawn_agent(opts, pki, &ports, echo, "agent-ab")?;
    wait_for(&mut agent, "agent READY", || ready(health))?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        std::thread::sleep(Duration::from_millis(1500));
        let mut holder = None;
        poll("one relay holding the agent", AGENT_DEADLINE, || {
            holder = match (relays[0].agents(), relays[1].agents()) {
                (Some(1), Some(0)) => Some(0),
                (Some(0), Some(1)) => Some(1),
                _ => None,
            };
            holder.is_some()
        })?;
        let dead = holder.unwrap_or(0);
        let other = 1 - dead;
        let killed = Instant::now();
        relays[dead].stop(Signal::Kill)?;
        poll("agent READY on the other relay", AGENT_DEADLINE, || {
            relays[other].agents() == Some(1) && ready(health)
        })
        .with_context(|| format!("failover {}: agent log:\n{}", i + 1, agent.log_tail(2000)))?;
        samples.push(killed.elapsed().as_secs_f64());
        relays[dead].spawn(opts)?;
        relays[dead].wait_ready()?;
    }
    Ok(Measure {
        label: "failover: relay A SIGKILLed, agent (urls A,B) READY on B from the kill".into(),
        samples,
        goal_median: 2.0,
        goal_worst: None,
    })
}

/// Runs the restart and failover measures `s.only` asks for.
pub fn run(s: &Settings) -> anyhow::Result<Restarts> {
    std::fs::create_dir_all(&s.work_dir).context("creating the work directory")?;
    let pki = pki::write(&s.work_dir)?;
    let echo = targets::echo()?;
    let mut opts = s.options(s.work_dir.clone());
    // The restart figures have always run the relay with one worker per core.
    opts.relay_env.clear();
    let mut out = Restarts::default();
    if s.only.restart {
        for signal in [Signal::Kill, Signal::Term] {
            eprintln!("restart: {} x relay {signal:?} + start", s.restarts);
            out.measures
                .push(restarts(&opts, &pki, echo.addr, signal, s.restarts)?);
        }
    }
    if s.only.failover {
        eprintln!(
            "failover: {} x SIGKILL of the relay holding the agent",
            s.failovers
        );
        out.measures
            .push(failovers(&opts, &pki, echo.addr, s.failovers)?);
    }
    Ok(out)
}
