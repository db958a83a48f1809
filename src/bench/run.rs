//! The whole benchmark, in order: start everything, run each workload direct then through the
//! tunnel (alternating, `rounds` times), sample memory and CPU around it, and fill the [`Report`].
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
use super::targets::{self, SinkReport, Target};

/// Everything the run needs to know; see the `nowconnect-bench` flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bin_dir: PathBuf,
    /// The agent binary (default: `nowconnect-agent` in `bin_dir`).
    pub agent_bin: PathBuf,
    pub work_dir: PathBuf,
    pub protocol: String,
    pub agent_multi_thread: bool,
    /// `TOKIO_WORKER_THREADS` for the relay: workers of its accepting runtime and tunnel shards (None: one per core).
    pub relay_worker_threads: Option<usize>,
    pub log_level: String,
    /// Each throughput/latency workload runs this many times, direct and tunnel alternating.
    pub rounds: usize,
    pub bulk_secs: f64,
    pub bulk_cap: u64,
    pub streams: usize,
    pub pingpong_count: usize,
    pub pingpong_size: usize,
    pub idle_streams: usize,
    /// None: skip the LDAP workload.
    pub ldap: Option<LdapSettings>,
    /// Which workloads run (`--only`); the default is all of them.
    pub only: Workloads,
}

/// The workloads `--only` can pick.
#[derive(Debug, Clone, Copy)]
pub struct Workloads {
    pub memory: bool,
    pub pingpong: bool,
    /// Bulk transfers with one stream (up and down).
    pub bulk1: bool,
    /// Bulk transfers with `--streams` streams (up and down).
    pub bulk_n: bool,
    pub ldap: bool,
}

impl Workloads {
    /// Parses `memory,pingpong,bulk,bulk1,ldap` (bulk = bulk1 + the multi-stream cases).
    pub fn parse(list: &str) -> anyhow::Result<Workloads> {
        let mut w = Workloads {
            memory: false,
            pingpong: false,
            bulk1: false,
            bulk_n: false,
            ldap: false,
        };
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item {
                "memory" => w.memory = true,
                "pingpong" => w.pingpong = true,
                "bulk" => (w.bulk1, w.bulk_n) = (true, true),
                "bulk1" => w.bulk1 = true,
                "ldap" => w.ldap = true,
                other => anyhow::bail!(
                    "--only {other}: expected a list of memory, pingpong, bulk, bulk1, ldap"
                ),
            }
        }
        Ok(w)
    }
}

#[derive(Debug, Clone)]
pub struct LdapSettings {
    pub addr: SocketAddr,
    pub dn: String,
    pub password: String,
    pub search: ldap::Search,
    pub searches: usize,
}

/// CPU of relay, agent and this process, and the machine's busy share, over some workload.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    relay_s: f64,
    agent_s: f64,
    /// This process: clients and targets.
    client_s: f64,
    wall_s: f64,
    /// Busy jiffies of all cores over all jiffies (summed, to average over several windows).
    machine_busy: u64,
    machine_total: u64,
}

impl Cpu {
    fn tunnel_s(&self) -> f64 {
        self.relay_s + self.agent_s
    }

    fn busy_share(&self) -> f64 {
        if self.machine_total == 0 {
            f64::NAN
        } else {
            self.machine_busy as f64 / self.machine_total as f64
        }
    }

    fn add(&mut self, o: &Cpu) {
        self.relay_s += o.relay_s;
        self.agent_s += o.agent_s;
        self.client_s += o.client_s;
        self.wall_s += o.wall_s;
        self.machine_busy += o.machine_busy;
        self.machine_total += o.machine_total;
    }
}

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

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
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
    let mut relay_env = Vec::new();
    if let Some(n) = s.relay_worker_threads {
        relay_env.push(("TOKIO_WORKER_THREADS".to_owned(), n.to_string()));
    }
    let opts = system::Options {
        bin_dir: s.bin_dir.clone(),
        agent_bin: s.agent_bin.clone(),
        dir: s.work_dir.clone(),
        protocol: s.protocol.clone(),
        agent_multi_thread: s.agent_multi_thread,
        relay_env,
        log_level: s.log_level.clone(),
    };
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

/// RSS idle and with N idle streams; setup latency of those streams (and of N direct ones).
struct Memory {
    relay_idle: Sample,
    agent_idle: Sample,
    relay_before: Sample,
    agent_before: Sample,
    relay_held: Sample,
    agent_held: Sample,
    established: usize,
    alive: usize,
    direct_setup: Summary,
    tunnel_setup: Summary,
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

struct PingPong {
    direct: Summary,
    tunnel: Summary,
    cpu: Cpu,
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

struct BulkCase {
    dir: &'static str,
    streams: usize,
    direct: Vec<Bulk>,
    tunnel: Vec<Bulk>,
    /// Through two plain TCP forwarders (one-stream cases only): the floor of the topology.
    plain: Vec<Bulk>,
    /// This process during the `plain` runs: client, target and both forwarders.
    plain_cpu: Cpu,
    direct_cpu: Cpu,
    tunnel_cpu: Cpu,
}

/// Median throughput of the rounds.
fn median_gbit(runs: &[Bulk]) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(Bulk::gbit_s).collect();
    summarize(&mut v).p50
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

struct LdapResult {
    direct: ldap::Run,
    tunnel: ldap::Run,
    cpu: Cpu,
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

fn bulk_rows(rep: &mut Report, bulk: &[BulkCase]) {
    for c in bulk {
        let what = if c.streams == 1 {
            "1 stream".to_owned()
        } else {
            format!("{} streams", c.streams)
        };
        rep.row(
            format!("bulk {}, {what} (Gbit/s)", c.dir),
            median_gbit(&c.direct),
            median_gbit(&c.tunnel),
            2,
        );
        let gd = gib(c.direct.iter().map(|b| b.bytes).sum());
        if !c.plain.is_empty() {
            // The forwarders run in this process: their CPU is what it spent beyond the
            // client and target's share per GiB (measured in the direct runs).
            let plain = median_gbit(&c.plain);
            let gp = gib(c.plain.iter().map(|b| b.bytes).sum());
            let fwd_cpu = c.plain_cpu.client_s / gp - c.direct_cpu.client_s / gd;
            rep.info(
                "  reference: two plain TCP forwarders in a row, no TLS (Gbit/s, x direct; their CPU s per GiB); tunnel / it",
                format!(
                    "{plain:.2} (x{:.2}; {fwd_cpu:.2})",
                    plain / median_gbit(&c.direct)
                ),
                format!("x{:.2}", median_gbit(&c.tunnel) / plain),
                2,
            );
        }
        let gt = gib(c.tunnel.iter().map(|b| b.bytes).sum());
        let (dc, tc) = (&c.direct_cpu, &c.tunnel_cpu);
        rep.info(
            "  CPU s per GiB: direct = client + target; tunnel = relay + agent (relay / agent)",
            format!("{:.2}", dc.client_s / gd),
            format!(
                "{:.2} ({:.2} / {:.2})",
                tc.tunnel_s() / gt,
                tc.relay_s / gt,
                tc.agent_s / gt
            ),
            2,
        );
        rep.info(
            "  machine CPU busy (all cores, every process on the machine)",
            format!("{:.0}%", 100.0 * dc.busy_share()),
            format!("{:.0}%", 100.0 * tc.busy_share()),
            0,
        );
    }
}

fn pingpong_rows(rep: &mut Report, s: &Settings, pp: &PingPong) {
    let (d, t, cpu) = (&pp.direct, &pp.tunnel, &pp.cpu);
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
    let n = t.n.max(1) as f64;
    rep.info(
        "  relay + agent CPU per round trip (us; relay / agent; % of one core)",
        Cell::Missing,
        format!(
            "{:.1} ({:.1} / {:.1}; {:.0}%)",
            1e6 * cpu.tunnel_s() / n,
            1e6 * cpu.relay_s / n,
            1e6 * cpu.agent_s / n,
            100.0 * cpu.tunnel_s() / cpu.wall_s
        ),
        1,
    );
}

fn memory_rows(rep: &mut Report, s: &Settings, m: &Memory, relay_end: Sample, agent_end: Sample) {
    rep.row(
        "new connection setup p50, connect + 1st echo (us)",
        m.direct_setup.p50,
        m.tunnel_setup.p50,
        0,
    );
    rep.row(
        "new connection setup p99 (us)",
        m.direct_setup.p99,
        m.tunnel_setup.p99,
        0,
    );
    rep.info(
        format!(
            "{} idle streams: established / alive after idle",
            s.idle_streams
        ),
        Cell::Missing,
        format!("{} / {}", m.established, m.alive),
        0,
    );
    rep.info(
        format!(
            "relay RSS: idle / with {} idle streams (MiB)",
            s.idle_streams
        ),
        Cell::Missing,
        format!(
            "{:.1} / {:.1}",
            mib(m.relay_idle.rss_kib),
            mib(m.relay_held.rss_kib)
        ),
        1,
    );
    rep.info(
        format!(
            "agent RSS: idle / with {} idle streams (MiB)",
            s.idle_streams
        ),
        Cell::Missing,
        format!(
            "{:.1} / {:.1}",
            mib(m.agent_idle.rss_kib),
            mib(m.agent_held.rss_kib)
        ),
        1,
    );
    let (dr, da) = per_stream_kib(s, m);
    rep.info(
        "memory per idle stream, relay + agent (KiB; relay / agent)",
        Cell::Missing,
        format!("{:.1} ({dr:.1} / {da:.1})", dr + da),
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
}

/// RSS growth per idle stream (relay, agent), KiB.
fn per_stream_kib(s: &Settings, m: &Memory) -> (f64, f64) {
    let n = s.idle_streams.max(1) as f64;
    let d = |held: &Sample, before: &Sample| (held.rss_kib as f64 - before.rss_kib as f64) / n;
    (
        d(&m.relay_held, &m.relay_before),
        d(&m.agent_held, &m.agent_before),
    )
}

fn ldap_rows(rep: &mut Report, l: &LdapResult) {
    let sd = summarize(&mut l.direct.ms.clone());
    let st = summarize(&mut l.tunnel.ms.clone());
    rep.row(
        format!(
            "LDAP paged search p50, {} entries in {} pages, 1 connection (ms)",
            l.tunnel.entries, l.tunnel.pages
        ),
        sd.p50,
        st.p50,
        2,
    );
    rep.row("LDAP paged search p99 (ms)", sd.p99, st.p99, 2);
    rep.row(
        "LDAP paged searches per second, back to back",
        l.direct.ms.len() as f64 / l.direct.wall_s,
        l.tunnel.ms.len() as f64 / l.tunnel.wall_s,
        1,
    );
    rep.info(
        "  relay + agent CPU per LDAP search (ms)",
        Cell::Missing,
        1e3 * l.cpu.tunnel_s() / l.tunnel.ms.len().max(1) as f64,
        2,
    );
}

fn budgets(
    rep: &mut Report,
    s: &Settings,
    bulk: &[BulkCase],
    pp: Option<&PingPong>,
    m: Option<&Memory>,
) {
    const THROUGHPUT: &str = "one stream over TLS vs direct loopback TCP (bulk up)";
    const ADDED: &str = "added p99 round trip (64 B ping-pong)";
    const MEMORY: &str = "relay + agent memory per idle stream";
    match bulk.iter().find(|c| c.dir == "up" && c.streams == 1) {
        Some(c) => {
            let share = median_gbit(&c.tunnel) / median_gbit(&c.direct);
            rep.budget(
                THROUGHPUT,
                ">= 25%",
                format!("{:.0}%", share * 100.0),
                Some(share >= 0.25),
            );
        }
        None => rep.budget(THROUGHPUT, ">= 25%", "–".into(), None),
    }
    match pp {
        Some(pp) => {
            let added = pp.tunnel.p99 - pp.direct.p99;
            rep.budget(
                ADDED,
                "< 200 us",
                format!("{added:.0} us"),
                Some(added < 200.0),
            );
        }
        None => rep.budget(ADDED, "< 200 us", "–".into(), None),
    }
    match m {
        Some(m) => {
            let (dr, da) = per_stream_kib(s, m);
            rep.budget(
                MEMORY,
                "< 16 KiB",
                format!("{:.1} KiB", dr + da),
                Some(dr + da < 16.0 && m.alive == s.idle_streams),
            );
        }
        None => rep.budget(MEMORY, "< 16 KiB", "–".into(), None),
    }
}
