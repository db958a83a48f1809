//! The whole benchmark, in order: start everything, run each workload direct then through the
//! tunnel, sample memory and CPU around it, and fill the [`Report`].
//!
//! Order matters for memory: idle RSS and the idle-streams delta are taken first, before bulk
//! transfers grow the allocators' caches.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::ldap;
use super::load::{self, Bulk};
use super::pki;
use super::proc::{self, Sample};
use super::report::{Cell, Report};
use super::stats::{summarize, Summary};
use super::system::{self, Tunnel};
use super::targets;

/// Everything the run needs to know; see the `nowconnect-bench` flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bin_dir: PathBuf,
    pub work_dir: PathBuf,
    pub protocol: String,
    pub agent_multi_thread: bool,
    pub log_level: String,
    pub bulk_secs: f64,
    pub bulk_cap: u64,
    pub streams: usize,
    pub pingpong_count: usize,
    pub pingpong_size: usize,
    pub idle_streams: usize,
    /// None: skip the LDAP workload.
    pub ldap: Option<LdapSettings>,
}

#[derive(Debug, Clone)]
pub struct LdapSettings {
    pub addr: SocketAddr,
    pub dn: String,
    pub password: String,
    pub search: ldap::Search,
    pub searches: usize,
}

/// CPU of relay, agent and this process, and the machine's busy share, over one workload.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    relay_s: f64,
    agent_s: f64,
    client_s: f64,
    wall_s: f64,
    /// Busy share of all cores (0..1) during the window.
    machine_busy: f64,
}

impl Cpu {
    fn tunnel_s(&self) -> f64 {
        self.relay_s + self.agent_s
    }
}

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
    let busy = match (w.machine, proc::machine_jiffies()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
        _ => f64::NAN,
    };
    Cpu {
        relay_s: secs(w.relay, t.and_then(|t| proc::sample(t.relay.pid()))),
        agent_s: secs(w.agent, t.and_then(|t| proc::sample(t.agent.pid()))),
        client_s: secs(w.me, proc::sample_self()),
        wall_s: w.start.elapsed().as_secs_f64(),
        machine_busy: busy,
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Both processes sampled now.
fn mem(t: &Tunnel) -> anyhow::Result<(Sample, Sample)> {
    let r = proc::sample(t.relay.pid()).context("relay is gone")?;
    let a = proc::sample(t.agent.pid()).context("agent is gone")?;
    Ok((r, a))
}

/// Runs everything and returns the filled report.
pub fn run(s: &Settings) -> anyhow::Result<Report> {
    let tck = proc::clk_tck();
    let mut rep = Report::default();
    let load_start = proc::loadavg();
    std::fs::create_dir_all(&s.work_dir).context("creating the work directory")?;
    let pki = pki::write(&s.work_dir)?;

    // Targets (in this process) and the connectors that lead to them.
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
                rep.notes.push(format!(
                    "LDAP workload skipped: no usable slapd at {} ({e:#}); run ../shared/bench/setup.sh",
                    l.addr
                ));
                None
            }
        },
        None => None,
    };

    eprintln!("starting relay and agent ({}, wss)", s.protocol);
    let opts = system::Options {
        bin_dir: s.bin_dir.clone(),
        dir: s.work_dir.clone(),
        protocol: s.protocol.clone(),
        agent_multi_thread: s.agent_multi_thread,
        log_level: s.log_level.clone(),
    };
    let tunnel = system::start(&opts, &pki, &exported)?;
    let via_echo = tunnel.listener("echo")?;
    load::probe(via_echo).context("first echo through the tunnel")?;

    // --- memory: idle, then N idle streams -------------------------------------------------
    std::thread::sleep(Duration::from_secs(1));
    let (relay_idle, agent_idle) = mem(&tunnel)?;
    eprintln!(
        "idle streams: {} direct, then through the tunnel",
        s.idle_streams
    );
    let direct_held = load::hold(echo.addr, s.idle_streams, 120.0);
    let direct_setup = summarize(&mut direct_held.setup_us.clone());
    drop(direct_held);
    std::thread::sleep(Duration::from_millis(500));
    let (relay_before, agent_before) = mem(&tunnel)?;
    let mut held = load::hold(via_echo, s.idle_streams, 120.0);
    std::thread::sleep(Duration::from_secs(2));
    let (relay_held, agent_held) = mem(&tunnel)?;
    let alive = held.verify();
    let established = held.conns.len();
    let tunnel_setup = summarize(&mut held.setup_us.clone());
    drop(held);

    // --- ping-pong ---------------------------------------------------------------------------
    eprintln!("ping-pong: {} x {} B", s.pingpong_count, s.pingpong_size);
    let pp = |addr| load::pingpong(addr, s.pingpong_size, s.pingpong_count, 200, 60.0);
    let pp_direct = summarize(&mut pp(echo.addr)?);
    let w = cpu_begin(Some(&tunnel));
    let pp_tunnel = summarize(&mut pp(via_echo)?);
    let pp_cpu = cpu_end(&w, Some(&tunnel), tck);

    // --- bulk --------------------------------------------------------------------------------
    let via_sink = tunnel.listener("sink")?;
    let via_source = tunnel.listener("source")?;
    let mut bulk = Vec::new();
    for (dir, n) in [
        ("up", 1),
        ("up", s.streams),
        ("down", 1),
        ("down", s.streams),
    ] {
        eprintln!(
            "bulk {dir} x{n}: {} s or {} MiB per stream",
            s.bulk_secs,
            s.bulk_cap >> 20
        );
        let go = |addr: SocketAddr| -> anyhow::Result<Bulk> {
            if dir == "up" {
                load::upload(addr, n, s.bulk_secs, s.bulk_cap, &sink_rx)
            } else {
                load::download(addr, n, s.bulk_secs + 60.0)
            }
        };
        let wd = cpu_begin(None);
        let d = go(if dir == "up" { sink.addr } else { source.addr })?;
        let dcpu = cpu_end(&wd, None, tck);
        std::thread::sleep(Duration::from_millis(500));
        let wt = cpu_begin(Some(&tunnel));
        let t = go(if dir == "up" { via_sink } else { via_source })?;
        let tcpu = cpu_end(&wt, Some(&tunnel), tck);
        std::thread::sleep(Duration::from_millis(500));
        bulk.push((dir, n, d, dcpu, t, tcpu));
    }

    // --- LDAP --------------------------------------------------------------------------------
    let ldap_result = match &ldap {
        Some(l) => {
            eprintln!("LDAP paged search: {} searches each way", l.searches);
            let via = tunnel.listener("ldap")?;
            let one = |addr| ldap::run(addr, &l.dn, &l.password, &l.search, l.searches, 3, 60.0);
            let d = one(l.addr).context("LDAP direct")?;
            let w = cpu_begin(Some(&tunnel));
            let t = one(via).context("LDAP through the tunnel")?;
            let c = cpu_end(&w, Some(&tunnel), tck);
            Some((d, t, c))
        }
        None => None,
    };

    let (relay_end, agent_end) = mem(&tunnel)?;
    let load_end = proc::loadavg();
    drop(tunnel);

    // --- report ------------------------------------------------------------------------------
    for (dir, n, d, dcpu, t, tcpu) in &bulk {
        let what = if *n == 1 {
            "1 stream".to_owned()
        } else {
            format!("{n} streams")
        };
        rep.row(
            format!("bulk {dir}, {what} (Gbit/s)"),
            d.gbit_s(),
            t.gbit_s(),
            2,
        );
        let _ = dcpu;
        let gib = t.bytes as f64 / f64::from(1u32 << 30);
        rep.info(
            format!("  relay + agent CPU, bulk {dir} {what} (s per GiB; relay / agent)"),
            Cell::Missing,
            format!(
                "{:.2} ({:.2} / {:.2})",
                tcpu.tunnel_s() / gib,
                tcpu.relay_s / gib,
                tcpu.agent_s / gib
            ),
            2,
        );
    }
    if let Some((_, _, _, dcpu, _, tcpu)) = bulk.first() {
        rep.info(
            "  CPU busy during bulk up 1 stream (% of 2 cores; client+sink / relay / agent s)",
            format!("{:.0}% ({:.1} s)", dcpu.machine_busy * 100.0, dcpu.client_s),
            format!(
                "{:.0}% ({:.1} / {:.1} / {:.1} s)",
                tcpu.machine_busy * 100.0,
                tcpu.client_s,
                tcpu.relay_s,
                tcpu.agent_s
            ),
            0,
        );
    }
    pingpong_rows(&mut rep, s, &pp_direct, &pp_tunnel, &pp_cpu);
    rep.row(
        "new connection setup p50, connect + 1st echo (us)",
        direct_setup.p50,
        tunnel_setup.p50,
        0,
    );
    rep.row(
        "new connection setup p99 (us)",
        direct_setup.p99,
        tunnel_setup.p99,
        0,
    );
    let n = s.idle_streams.max(1) as f64;
    rep.info(
        format!(
            "{} idle streams: established / alive after idle",
            s.idle_streams
        ),
        Cell::Missing,
        format!("{established} / {alive}"),
        0,
    );
    rep.info(
        "relay RSS: idle / with idle streams (MiB)",
        Cell::Missing,
        format!(
            "{:.1} / {:.1}",
            mib(relay_idle.rss_kib),
            mib(relay_held.rss_kib)
        ),
        1,
    );
    rep.info(
        "agent RSS: idle / with idle streams (MiB)",
        Cell::Missing,
        format!(
            "{:.1} / {:.1}",
            mib(agent_idle.rss_kib),
            mib(agent_held.rss_kib)
        ),
        1,
    );
    let d_relay = relay_held.rss_kib as f64 - relay_before.rss_kib as f64;
    let d_agent = agent_held.rss_kib as f64 - agent_before.rss_kib as f64;
    let per_stream = (d_relay + d_agent) / n;
    rep.info(
        "memory per idle stream, relay + agent (KiB; relay / agent)",
        Cell::Missing,
        format!("{per_stream:.1} ({:.1} / {:.1})", d_relay / n, d_agent / n),
        1,
    );
    rep.info(
        "peak RSS over the whole run, relay / agent (MiB)",
        Cell::Missing,
        format!(
            "{:.1} / {:.1}",
            mib(relay_end.hwm_kib),
            mib(agent_end.hwm_kib)
        ),
        1,
    );
    if let Some((d, t, c)) = &ldap_result {
        let sd = summarize(&mut d.ms.clone());
        let st = summarize(&mut t.ms.clone());
        let label = format!(
            "LDAP paged search, {} entries in {} pages (ms)",
            t.entries, t.pages
        );
        rep.row(format!("{label} p50"), sd.p50, st.p50, 2);
        rep.row("LDAP paged search p99 (ms)", sd.p99, st.p99, 2);
        rep.row(
            "LDAP paged searches per second, 1 connection",
            d.ms.len() as f64 / d.wall_s,
            t.ms.len() as f64 / t.wall_s,
            1,
        );
        rep.info(
            "  relay + agent CPU per LDAP search (ms)",
            Cell::Missing,
            1e3 * c.tunnel_s() / t.ms.len().max(1) as f64,
            2,
        );
    }

    // --- budgets -----------------------------------------------------------------------------
    match bulk.first() {
        Some((_, _, d, _, t, _)) => {
            let share = t.gbit_s() / d.gbit_s();
            rep.budget(
                "one stream over TLS vs direct loopback TCP",
                ">= 25%",
                format!("{:.0}%", share * 100.0),
                Some(share >= 0.25),
            );
        }
        None => rep.budget(
            "one stream over TLS vs direct loopback TCP",
            ">= 25%",
            "–".into(),
            None,
        ),
    }
    let added = pp_tunnel.p99 - pp_direct.p99;
    rep.budget(
        "added p99 round trip (64 B ping-pong)",
        "< 200 us",
        format!("{added:.0} us"),
        Some(added < 200.0),
    );
    rep.budget(
        "relay + agent memory per idle stream",
        "< 16 KiB",
        format!("{per_stream:.1} KiB"),
        Some(per_stream < 16.0 && alive == s.idle_streams),
    );
    rep.notes.push(format!(
        "load average (1 min) at start / end: {} / {}; CPU busy is the share of all cores used \
         by every process on the machine during the window.",
        load_start.map_or("?".into(), |l| format!("{l:.2}")),
        load_end.map_or("?".into(), |l| format!("{l:.2}"))
    ));
    drop((echo, sink, source));
    Ok(rep)
}

fn pingpong_rows(rep: &mut Report, s: &Settings, d: &Summary, t: &Summary, cpu: &Cpu) {
    let size = s.pingpong_size;
    rep.row(
        format!("ping-pong {size} B round trip p50 (us)"),
        d.p50,
        t.p50,
        0,
    );
    rep.row(
        format!("ping-pong {size} B round trip p99 (us)"),
        d.p99,
        t.p99,
        0,
    );
    rep.row(
        format!("ping-pong {size} B round trip p99.9 (us)"),
        d.p999,
        t.p999,
        0,
    );
    rep.info(
        "  added p99 round trip, tunnel - direct (us)",
        Cell::Missing,
        t.p99 - d.p99,
        0,
    );
    rep.info(
        "  relay + agent CPU per round trip (us; relay / agent)",
        Cell::Missing,
        format!(
            "{:.1} ({:.1} / {:.1})",
            1e6 * cpu.tunnel_s() / t.n.max(1) as f64,
            1e6 * cpu.relay_s / t.n.max(1) as f64,
            1e6 * cpu.agent_s / t.n.max(1) as f64
        ),
        1,
    );
    let _ = cpu.wall_s;
}
