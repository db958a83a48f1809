//! `nowconnect-bench`: direct vs tunnel on loopback, in one run (see `scripts/bench-tunnel.sh`).
//!
//! Starts the release relay and agent next to this binary as separate processes (TLS, v2 by
//! default), runs bulk, ping-pong, connection setup, idle streams and LDAP paged search against
//! the targets directly and through the tunnel, and prints one markdown table with ratios and
//! the budgets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use nowconnect::bench::{burst, cross, fleet, ldap, proc, restart, run, wan_run};

#[derive(Debug, Parser)]
#[command(
    name = "nowconnect-bench",
    about = "NowConnect tunnel benchmark: direct vs tunnel on loopback"
)]
struct Args {
    /// Directory with nowconnect-relay and nowconnect-agent (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The agent binary to run instead of the one in --bin-dir: e.g. the static build that ships
    /// for gateways (`scripts/cross-build.sh x86_64-unknown-linux-musl`).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Tunnel protocol the agent uses: v2 or v1.
    #[arg(long, default_value = "v2", value_parser = ["v1", "v2"])]
    protocol: String,
    /// Run the agent with its multi-threaded runtime (default: current-thread, as shipped).
    #[arg(long)]
    agent_multi_thread: bool,
    /// Relay threads (TOKIO_WORKER_THREADS: its accepting runtime and its tunnel shards; default: one per core).
    #[arg(long)]
    relay_worker_threads: Option<usize>,
    /// Runs of each throughput and latency workload, direct and tunnel alternating; the table
    /// shows the median throughput and pooled latency percentiles.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Seconds per bulk transfer (each direction, each stream count, direct and tunnel).
    #[arg(long, default_value_t = 5.0)]
    bulk_secs: f64,
    /// Cap per bulk stream, MiB (high enough that a direct single-stream run lasts a second or
    /// more on loopback, not a few hundred milliseconds).
    #[arg(long, default_value_t = 4096)]
    bulk_mib: u64,
    /// Parallel streams of the multi-stream bulk transfers.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Ping-pong round trips (after 200 warm-up ones).
    #[arg(long, default_value_t = 20_000)]
    pingpong: usize,
    /// Ping-pong message size, bytes.
    #[arg(long, default_value_t = 64)]
    pingpong_size: usize,
    /// Idle streams held through the tunnel for the memory figure.
    #[arg(long, default_value_t = 1000)]
    idle_streams: usize,
    /// slapd to search (the team harness's, from ../shared/bench/setup.sh); "off" skips LDAP.
    #[arg(long, default_value = "127.0.0.1:3890")]
    ldap: String,
    #[arg(long, default_value = "cn=admin,dc=example,dc=org")]
    ldap_dn: String,
    #[arg(long, default_value = "admin")]
    ldap_password: String,
    #[arg(long, default_value = "dc=example,dc=org")]
    ldap_base: String,
    /// Timed paged searches each way.
    #[arg(long, default_value_t = 50)]
    ldap_searches: usize,
    /// Log level of relay and agent.
    #[arg(long, default_value = "warn")]
    log_level: String,
    /// Keep the work directory (configs, certificates, relay.log, agent.log).
    #[arg(long)]
    keep: bool,
    /// Run only these workloads: a comma list of memory, pingpong, bulk, bulk1 (one-stream bulk
    /// only), ldap, restart (relay restarted --restarts times after SIGKILL, then after SIGTERM),
    /// failover (the agent's relay SIGKILLed, --failovers times), cross (relays A and B in HA
    /// with a redis-server and a mesh: streams on A against streams through B to A's agent),
    /// burst (--bursts x --burst-conns short connections; relay RSS each second after),
    /// tunnels (--fleet idle agent tunnels on one relay: memory, idle CPU, reconnect after a
    /// relay restart), wan (one stream each way over an emulated WAN link, --wan-delay-ms and
    /// --wan-mbit: plain TCP, the tunnel with the fixed 256 KiB window, the tunnel autotuning,
    /// and a slow reader beside a fast one; not in the default set, it takes a minute).
    /// Budgets of workloads left out show "–".
    #[arg(long, default_value = "memory,pingpong,bulk,ldap")]
    only: String,
    /// Relay restarts in a row per signal (restart).
    #[arg(long, default_value_t = 15)]
    restarts: usize,
    /// Relay losses (failover).
    #[arg(long, default_value_t = 10)]
    failovers: usize,
    /// Bursts in a row (burst).
    #[arg(long, default_value_t = 2)]
    bursts: usize,
    /// Short connections per burst (burst).
    #[arg(long, default_value_t = 20_000)]
    burst_conns: usize,
    /// Client threads sharing a burst's connections (burst).
    #[arg(long, default_value_t = 1)]
    burst_clients: usize,
    /// Bytes each burst connection sends before it closes (burst).
    #[arg(long, default_value_t = 20_000)]
    burst_bytes: usize,
    /// Seconds of RSS sampling after each burst (burst).
    #[arg(long, default_value_t = 10)]
    burst_watch_secs: u64,
    /// Idle agent tunnels (tunnels).
    #[arg(long, default_value_t = 10_000)]
    fleet: usize,
    /// Seconds the idle fleet is watched (tunnels; the relay pings every 20 s).
    #[arg(long, default_value_t = 45)]
    fleet_idle_secs: u64,
    /// One-way delay of the emulated WAN link, ms (wan; the round trip is twice this).
    #[arg(long, default_value_t = 25)]
    wan_delay_ms: u64,
    /// Rate of the emulated WAN link each way, Mbit/s (wan).
    #[arg(long, default_value_t = 200)]
    wan_mbit: u64,
    /// Seconds per transfer over the WAN link (wan: up then down in each of three cases, then the
    /// slow reader).
    #[arg(long, default_value_t = 10)]
    wan_secs: u64,
    /// `limits.max_stream_window_bytes` of relay and agent for the loopback workloads (262144: the
    /// fixed 256 KiB window; unset: their default, autotuning up to 4 MiB). `wan` sets its own.
    #[arg(long)]
    max_stream_window_bytes: Option<u32>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn settings(a: &Args) -> anyhow::Result<run::Settings> {
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("locating this binary")?
            .parent()
            .context("this binary has no directory")?
            .to_owned(),
    };
    let agent_bin = a
        .agent_bin
        .clone()
        .unwrap_or_else(|| bin_dir.join("nowconnect-agent"));
    for b in [bin_dir.join("nowconnect-relay"), agent_bin.clone()] {
        anyhow::ensure!(
            b.is_file(),
            "{} not found; build with `cargo build --release --workspace --bins` or pass --bin-dir",
            b.display()
        );
    }
    anyhow::ensure!(
        a.bulk_secs > 0.0 && a.bulk_secs <= 120.0,
        "--bulk-secs must be in (0, 120]"
    );
    anyhow::ensure!((1..=64).contains(&a.streams), "--streams must be 1..=64");
    anyhow::ensure!(
        (1..=65_536).contains(&a.bulk_mib),
        "--bulk-mib must be 1..=65536"
    );
    anyhow::ensure!((1..=20).contains(&a.rounds), "--rounds must be 1..=20");
    anyhow::ensure!(
        (1..=200).contains(&a.restarts),
        "--restarts must be 1..=200"
    );
    anyhow::ensure!(
        (1..=200).contains(&a.failovers),
        "--failovers must be 1..=200"
    );
    anyhow::ensure!(
        a.relay_worker_threads.is_none_or(|n| (1..=64).contains(&n)),
        "--relay-worker-threads must be 1..=64"
    );
    anyhow::ensure!(
        (1..=1_000_000).contains(&a.pingpong),
        "--pingpong must be 1..=1000000"
    );
    anyhow::ensure!(
        (1..=65_536).contains(&a.pingpong_size),
        "--pingpong-size must be 1..=65536"
    );
    anyhow::ensure!(
        (1..=20_000).contains(&a.idle_streams),
        "--idle-streams must be 1..=20000"
    );
    anyhow::ensure!((1..=10).contains(&a.bursts), "--bursts must be 1..=10");
    anyhow::ensure!(
        (1..=100_000).contains(&a.burst_conns),
        "--burst-conns must be 1..=100000"
    );
    anyhow::ensure!(
        (1..=64).contains(&a.burst_clients),
        "--burst-clients must be 1..=64"
    );
    anyhow::ensure!(
        (1..=1 << 20).contains(&a.burst_bytes),
        "--burst-bytes must be 1..=1048576"
    );
    anyhow::ensure!(
        (1..=120).contains(&a.burst_watch_secs),
        "--burst-watch-secs must be 1..=120"
    );
    anyhow::ensure!(
        (1..=fleet::MAX_AGENTS).contains(&a.fleet),
        "--fleet must be 1..={}",
        fleet::MAX_AGENTS
    );
    anyhow::ensure!(
        (1..=600).contains(&a.fleet_idle_secs),
        "--fleet-idle-secs must be 1..=600"
    );
    anyhow::ensure!(
        (0..=1000).contains(&a.wan_delay_ms),
        "--wan-delay-ms must be 0..=1000"
    );
    anyhow::ensure!(
        (10..=10_000).contains(&a.wan_mbit),
        "--wan-mbit must be 10..=10000"
    );
    anyhow::ensure!(
        (1..=120).contains(&a.wan_secs),
        "--wan-secs must be 1..=120"
    );
    let ldap = if a.ldap == "off" {
        None
    } else {
        let addr: SocketAddr = a
            .ldap
            .parse()
            .with_context(|| format!("--ldap {}: expected IP:PORT or off", a.ldap))?;
        Some(run::LdapSettings {
            addr,
            dn: a.ldap_dn.clone(),
            password: a.ldap_password.clone(),
            search: ldap::Search {
                base: a.ldap_base.clone(),
                filter: ("objectClass".into(), "inetOrgPerson".into()),
                attrs: vec!["uid".into(), "cn".into(), "sn".into()],
                page_size: 100,
            },
            searches: a.ldap_searches.max(1),
        })
    };
    Ok(run::Settings {
        bin_dir,
        agent_bin,
        work_dir: std::env::temp_dir().join(format!("nowconnect-bench-{}", std::process::id())),
        protocol: a.protocol.clone(),
        only: run::Workloads::parse(&a.only)?,
        agent_multi_thread: a.agent_multi_thread,
        relay_worker_threads: a.relay_worker_threads,
        rounds: a.rounds,
        log_level: a.log_level.clone(),
        bulk_secs: a.bulk_secs,
        bulk_cap: a.bulk_mib << 20,
        streams: a.streams,
        pingpong_count: a.pingpong,
        pingpong_size: a.pingpong_size,
        idle_streams: a.idle_streams,
        ldap,
        restarts: a.restarts,
        failovers: a.failovers,
        burst: burst::BurstSettings {
            bursts: a.bursts,
            conns: a.burst_conns,
            clients: a.burst_clients,
            bytes: a.burst_bytes,
            watch_secs: a.burst_watch_secs,
        },
        fleet: fleet::FleetSettings {
            agents: a.fleet,
            idle_secs: a.fleet_idle_secs,
        },
        max_stream_window_bytes: a.max_stream_window_bytes,
        wan: wan_run::WanSettings {
            delay_ms: a.wan_delay_ms,
            mbit: a.wan_mbit,
            secs: a.wan_secs,
        },
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    proc::install_guards();
    let s = match settings(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nowconnect-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    proc::remove_on_interrupt((!args.keep).then(|| s.work_dir.clone()));
    let result = measure(&s);
    if args.keep {
        eprintln!("work directory kept: {}", s.work_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&s.work_dir);
    }
    match result {
        Ok(Measured {
            report,
            restarts,
            cross,
            burst,
            fleet,
            wan,
        }) => {
            // The tunnel report's keys at the top (as before), the restart measures beside them.
            let mut json = serde_json::Map::new();
            if let Some(report) = report {
                let label = format!("tunnel ({}, wss)", s.protocol);
                println!("{}", report.render(&label));
                if let serde_json::Value::Object(m) = report.to_json() {
                    json = m;
                }
            }
            if let Some(r) = restarts {
                println!("{}", r.render());
                json.insert("restart".into(), r.to_json());
            }
            if let Some(c) = cross {
                println!("{}", c.render());
                json.insert("cross".into(), c.to_json());
            }
            if let Some(b) = burst {
                println!("{}", b.render());
                json.insert("burst".into(), b.to_json());
            }
            if let Some(f) = fleet {
                println!("{}", f.render());
                json.insert("tunnels".into(), f.to_json());
            }
            if let Some(w) = wan {
                println!("{}", w.render());
                json.insert("wan".into(), w.to_json());
            }
            if let Some(path) = &args.json {
                let text = serde_json::to_string_pretty(&serde_json::Value::Object(json))
                    .unwrap_or_default();
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("nowconnect-bench: cannot write {}: {e}", path.display());
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nowconnect-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What each kind of measure produced (None: not asked for by `--only`).
struct Measured {
    report: Option<nowconnect::bench::report::Report>,
    restarts: Option<restart::Restarts>,
    cross: Option<cross::Cross>,
    burst: Option<burst::Burst>,
    fleet: Option<fleet::Fleet>,
    wan: Option<wan_run::WanReport>,
}

/// The tunnel workloads, then the restart and failover measures, then the cross-relay one, then
/// the bursts, then the fleet of idle tunnels, then the WAN link, as `--only` asks.
fn measure(s: &run::Settings) -> anyhow::Result<Measured> {
    let report = s.only.tunnel().then(|| run::run(s)).transpose()?;
    let restarts = (s.only.restart || s.only.failover)
        .then(|| restart::run(s))
        .transpose()?;
    let cross = s.only.cross.then(|| cross::run(s)).transpose()?;
    let burst = s.only.burst.then(|| burst::run(s, &s.burst)).transpose()?;
    let fleet = s
        .only
        .tunnels
        .then(|| fleet::run(s, &s.fleet))
        .transpose()?;
    let wan = s.only.wan.then(|| wan_run::run(s, &s.wan)).transpose()?;
    Ok(Measured {
        report,
        restarts,
        cross,
        burst,
        fleet,
        wan,
    })
}
