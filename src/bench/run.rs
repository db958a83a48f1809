//! The whole benchmark, in order: start everything, run each workload direct then through the
//! tunnel (alternating, `rounds` times), sample memory and CPU around it, and fill the [`Report`].
//!
//! Order matters for memory: idle RSS and the idle-streams delta are taken first, before bulk
//! transfers grow the allocators' caches.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::ldap;
use super::load::{self, Bulk};
use super::pki;
use super::proc::{self, Sample};
use super::report::Report;
use super::rows::{
    budgets, bulk_rows, ldap_rows, memory_rows, pingpong_rows, BulkCase, Cpu, LdapResult, Memory,
    PingPong,
};
pub use super::settings::{LdapSettings, Settings, Workloads};
use super::stats::summarize;
use super::system::{self, Tunnel};
use super::targets::{self, SinkReport, Target};

/// Start of a CPU measurement window.
struct CpuWindow {
    relay: Option<Sample>,
    agent: Option<Sample>,
    me: Option<Sample>,
    machine: Option<(u64, u64)>,
    start: Instant,
}

fn cpu_begin(t: Option<&Tunnel>) -> CpuWindow {
    CpuWindow {
        relay: t.and_then(|t| proc::sample(t.relay.pid())),
        agent: t.and_then(|t| proc::sample(t.agent.pid())),
        me: proc::sample_self(),
        machine: proc::machine_jiffies(),
        start: Instant::now(),
    }
}

fn cpu_end(w: &CpuWindow, t: Option<&Tunnel>, tck: f64) -> Cpu {
    let secs = |a: Option<Sample>, b: Option<Sample>| match (a, b) {
        (Some(a), Some(b)) => b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / tck,
        _ => 0.0,
    };
    let (machine_busy, machine_total) = match (w.machine, proc::machine_jiffies()) {
        (Some((b0, t0)), Some((b1, t1))) => (b1.saturating_sub(b0), t1.saturating_sub(t0)),
        _ => (0, 0),
    };
    Cpu {
        relay_s: secs(w.relay, t.and_then(|t| proc::sample(t.relay.pid()))),
        agent_s: secs(w.agent, t.and_then(|t| proc::sample(t.agent.pid()))),
        client_s: secs(w.me, proc::sample_self()),
        wall_s: w.start.elapsed().as_secs_f64(),
        machine_busy,
        machine_total,
    }
}

/// Both processes sampled now.
fn mem(t: &Tunnel) -> anyhow::Result<(Sample, Sample)> {
    let r = proc::sample(t.relay.pid()).context("relay is gone")?;
    let a = proc::sample(t.agent.pid()).context("agent is gone")?;
    Ok((r, a))
}

/// Targets, the tunnel in front of them, and what is needed to drive them.
struct Setup {
    echo: Target,
    sink: Target,
    sink_rx: mpsc::Receiver<SinkReport>,
    source: Target,
    ldap: Option<LdapSettings>,
    tunnel: Tunnel,
    tck: f64,
}

fn start(s: &Settings, rep: &mut Report) -> anyhow::Result<Setup> {
    std::fs::create_dir_all(&s.work_dir).context("creating the work directory")?;
    let pki = pki::write(&s.work_dir)?;
    let echo = targets::echo()?;
    let (sink_tx, sink_rx) = mpsc::channel();
    let sink = targets::sink(sink_tx)?;
    let source = targets::source(s.bulk_secs, s.bulk_cap)?;
    let mut exported = BTreeMap::from([
        ("echo".to_owned(), echo.addr),
        ("sink".to_owned(), sink.addr),
        ("source".to_owned(), source.addr),
    ]);
    let ldap = match &s.ldap {
        Some(l) => match ldap::Conn::bind(l.addr, &l.dn, &l.password) {
            Ok(_) => {
                exported.insert("ldap".to_owned(), l.addr);
                Some(l.clone())
            }
            Err(e) => {
                let why = format!(
                    "LDAP workload skipped: no usable slapd at {} ({e:#}); \
                     ../shared/bench/setup.sh starts one",
                    l.addr
                );
                eprintln!("{why}");
                rep.notes.push(why);
                None
            }
        },
        None => None,
    };
    eprintln!(
        "starting relay and agent ({}, wss; agent {})",
        s.protocol,
        s.agent_bin.display()
    );
    let opts = s.options(s.work_dir.clone());
    let tunnel = system::start(&opts, &pki, &exported)?;
    load::probe(tunnel.listener("echo")?).context("first echo through the tunnel")?;
    Ok(Setup {
        echo,
        sink,
        sink_rx,
        source,
        ldap,
        tunnel,
        tck: proc::clk_tck(),
    })
}

fn memory(env: &Setup, s: &Settings) -> anyhow::Result<Memory> {
    std::thread::sleep(Duration::from_secs(1));
    let (relay_idle, agent_idle) = mem(&env.tunnel)?;
    eprintln!(
        "idle streams: {} direct, then through the tunnel",
        s.idle_streams
    );
    let direct = load::hold(env.echo.addr, s.idle_streams, 120.0);
    let direct_setup = summarize(&mut direct.setup_us.clone());
    drop(direct);
    std::thread::sleep(Duration::from_millis(500));
    let (relay_before, agent_before) = mem(&env.tunnel)?;
    let mut held = load::hold(env.tunnel.listener("echo")?, s.idle_streams, 120.0);
    // Let both sides settle (lazily grown tables, allocator) before reading RSS.
    std::thread::sleep(Duration::from_secs(2));
    let (relay_held, agent_held) = mem(&env.tunnel)?;
    let alive = held.verify();
    Ok(Memory {
        relay_idle,
        agent_idle,
        relay_before,
        agent_before,
        relay_held,
        agent_held,
        established: held.conns.len(),
        alive,
        direct_setup,
        tunnel_setup: summarize(&mut held.setup_us),
    })
}

fn pingpong(env: &Setup, s: &Settings) -> anyhow::Result<PingPong> {
    eprintln!(
        "ping-pong: {} x {} B, {} round(s)",
        s.pingpong_count, s.pingpong_size, s.rounds
    );
    let via = env.tunnel.listener("echo")?;
    let pp = |addr| load::pingpong(addr, s.pingpong_size, s.pingpong_count, 200, 60.0);
    let (mut d, mut t, mut cpu) = (Vec::new(), Vec::new(), Cpu::default());
    for _ in 0..s.rounds {
        d.extend(pp(env.echo.addr)?);
        let w = cpu_begin(Some(&env.tunnel));
        t.extend(pp(via)?);
        cpu.add(&cpu_end(&w, Some(&env.tunnel), env.tck));
    }
    Ok(PingPong {
        direct: summarize(&mut d),
        tunnel: summarize(&mut t),
        cpu,
    })
}

fn bulk(env: &Setup, s: &Settings) -> anyhow::Result<Vec<BulkCase>> {
    let via_sink = env.tunnel.listener("sink")?;
    let via_source = env.tunnel.listener("source")?;
    // Reference for the one-stream cases: client -> forwarder -> forwarder -> target.
    let chain = |to: SocketAddr| -> anyhow::Result<(Target, Target)> {
        let second = targets::forwarder(to)?;
        let first = targets::forwarder(second.addr)?;
        Ok((first, second))
    };
    let plain = if s.only.bulk1 {
        Some((chain(env.sink.addr)?, chain(env.source.addr)?))
    } else {
        None
    };
    let mut out = Vec::new();
    let cases = [
        ("up", 1),
        ("up", s.streams),
        ("down", 1),
        ("down", s.streams),
    ];
    let wanted = |n: usize| if n == 1 { s.only.bulk1 } else { s.only.bulk_n };
    for (dir, n) in cases.into_iter().filter(|&(_, n)| wanted(n)) {
        eprintln!(
            "bulk {dir} x{n}: {} s or {} MiB per stream, {} round(s)",
            s.bulk_secs,
            s.bulk_cap >> 20,
            s.rounds
        );
        let go = |addr: SocketAddr| -> anyhow::Result<Bulk> {
            if dir == "up" {
                load::upload(addr, n, s.bulk_secs, s.bulk_cap, &env.sink_rx)
            } else {
                load::download(addr, n, s.bulk_secs + 60.0)
            }
        };
        let (direct_addr, tunnel_addr) = if dir == "up" {
            (env.sink.addr, via_sink)
        } else {
            (env.source.addr, via_source)
        };
        let mut case = BulkCase {
            dir,
            streams: n,
            direct: Vec::new(),
            tunnel: Vec::new(),
            plain: Vec::new(),
            plain_cpu: Cpu::default(),
            direct_cpu: Cpu::default(),
            tunnel_cpu: Cpu::default(),
        };
        for _ in 0..s.rounds {
            let w = cpu_begin(None);
            case.direct.push(go(direct_addr).context("direct")?);
            case.direct_cpu.add(&cpu_end(&w, None, env.tck));
            // Let the loopback queues and the relay's buffers drain between runs.
            std::thread::sleep(Duration::from_millis(300));
            let w = cpu_begin(Some(&env.tunnel));
            case.tunnel
                .push(go(tunnel_addr).context("through the tunnel")?);
            case.tunnel_cpu
                .add(&cpu_end(&w, Some(&env.tunnel), env.tck));
            std::thread::sleep(Duration::from_millis(300));
            if let Some((to_sink, to_source)) = plain.as_ref().filter(|_| n == 1) {
                let plain_addr = if dir == "up" {
                    to_sink.0.addr
                } else {
                    to_source.0.addr
                };
                let w = cpu_begin(None);
                case.plain
                    .push(go(plain_addr).context("through two plain forwarders")?);
                case.plain_cpu.add(&cpu_end(&w, None, env.tck));
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        out.push(case);
    }
    Ok(out)
}

fn ldap_search(env: &Setup) -> anyhow::Result<Option<LdapResult>> {
    let Some(l) = &env.ldap else {
        return Ok(None);
    };
    eprintln!("LDAP paged search: {} searches each way", l.searches);
    let via = env.tunnel.listener("ldap")?;
    let one = |addr| ldap::run(addr, &l.dn, &l.password, &l.search, l.searches, 3, 60.0);
    let direct = one(l.addr).context("LDAP direct")?;
    let w = cpu_begin(Some(&env.tunnel));
    let tunnel = one(via).context("LDAP through the tunnel")?;
    let cpu = cpu_end(&w, Some(&env.tunnel), env.tck);
    Ok(Some(LdapResult {
        direct,
        tunnel,
        cpu,
    }))
}

/// Runs everything and returns the filled report.
pub fn run(s: &Settings) -> anyhow::Result<Report> {
    let mut rep = Report::default();
    let load_start = proc::loadavg();
    let env = start(s, &mut rep)?;
    let memory = if s.only.memory {
        Some(memory(&env, s)?)
    } else {
        None
    };
    let pp = if s.only.pingpong {
        Some(pingpong(&env, s)?)
    } else {
        None
    };
    let bulk = bulk(&env, s)?;
    let ldap = if s.only.ldap {
        ldap_search(&env)?
    } else {
        None
    };
    let (relay_end, agent_end) = mem(&env.tunnel)?;
    let load_end = proc::loadavg();
    drop(env);

    bulk_rows(&mut rep, &bulk);
    if let Some(pp) = &pp {
        pingpong_rows(&mut rep, s, pp);
    }
    if let Some(m) = &memory {
        memory_rows(&mut rep, s, m, relay_end, agent_end);
    }
    if let Some(l) = &ldap {
        ldap_rows(&mut rep, l);
    }
    budgets(&mut rep, s, &bulk, pp.as_ref(), memory.as_ref());
    rep.notes.push(format!(
        "{} round(s) per workload, direct and tunnel alternating; throughput is the median \
         round, latency percentiles pool all rounds. Load average (1 min) at start / end: \
         {} / {}.",
        s.rounds,
        load_start.map_or("?".into(), |l| format!("{l:.2}")),
        load_end.map_or("?".into(), |l| format!("{l:.2}"))
    ));
    Ok(rep)
}
