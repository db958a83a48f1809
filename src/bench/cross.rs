//! Cross-relay streams through the HA mesh against local ones, in one run (`--only cross`).
//!
//! Relays A and B run as release processes in `ha.mode: active`, sharing one real
//! `redis-server` (unix socket in the work directory, TCP off, no persistence) as their
//! registry, with a `/mesh` link between them: plain `ws://` on loopback with
//! `require_mtls: false` on a listener of its own (`ha.mesh.listen`), each relay naming the
//! other as a static peer. One agent (wss) connects to A and exports echo, sink and source. A
//! local stream is a client on A's listener; a cross stream a client on B's listener, which B
//! forwards over the mesh to A and A to the agent. Ping-pong latency, one-stream bulk up and
//! down, and relay CPU per GiB (A for local, A + B for cross) are measured alternating, local
//! first, `rounds` times.
//!
//! What this module must never do: leave a process behind (every one is a [`Child`]), wait
//! without a deadline, or run a loop without a count and a time bound.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::load::{self, Bulk};
use super::pki::{self, Pki};
use super::proc::{self, Child};
use super::run::Settings;
use super::stats::{summarize, Summary};
use super::system::{
    agent_yaml, free_port, health_line, http_get, path_str, relay_yaml, wait_for, Options,
};
use super::targets::{self, SinkReport};

/// Longest wait for redis-server to answer, and for B to route a stream over the mesh.
const SETUP_DEADLINE: Duration = Duration::from_secs(30);
/// Connectors every relay listens for (the agent exports them all).
const CONNECTORS: [&str; 3] = ["echo", "sink", "source"];

/// Which relay the client connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Client on A, the agent's relay.
    Local,
    /// Client on B: B -> mesh -> A -> agent.
    Cross,
}

/// CPU seconds of relay A and relay B over some bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelayCpu {
    pub a_s: f64,
    pub b_s: f64,
    pub bytes: u64,
}

impl RelayCpu {
    fn add(&mut self, o: &RelayCpu) {
        self.a_s += o.a_s;
        self.b_s += o.b_s;
        self.bytes += o.bytes;
    }

    /// Relay CPU seconds per GiB moved: A alone (local) or A + B (cross).
    fn per_gib(&self, cross: bool) -> f64 {
        let s = if cross { self.a_s + self.b_s } else { self.a_s };
        if self.bytes == 0 {
            f64::NAN
        } else {
            s / (self.bytes as f64 / (1u64 << 30) as f64)
        }
    }
}

/// One bulk direction, local and cross, every round.
#[derive(Debug, Clone, Default)]
pub struct BulkPair {
    pub local: Vec<Bulk>,
    pub cross: Vec<Bulk>,
    pub local_cpu: RelayCpu,
    pub cross_cpu: RelayCpu,
}

fn median_gbit(v: &[Bulk]) -> f64 {
    let mut g: Vec<f64> = v.iter().map(Bulk::gbit_s).collect();
    g.sort_by(f64::total_cmp);
    super::stats::percentile(&g, 50.0)
}

/// Everything the cross measure found.
#[derive(Debug, Clone)]
pub struct Cross {
    pub rounds: usize,
    pub pingpong_size: usize,
    pub pp_local: Summary,
    pub pp_cross: Summary,
    pub up: BulkPair,
    pub down: BulkPair,
    /// `nowconnect_mesh_*` lines of B's `/metrics` at the end (counters of the forwarded path).
    pub mesh_metrics: Vec<String>,
}

impl Cross {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| measure (cross: client on relay B -> mesh -> relay A -> agent) | local (client on A) | cross (client on B) | cross / local |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|");
        let mut row = |name: String, l: f64, c: f64, prec: usize| {
            let _ = writeln!(out, "| {name} | {l:.prec$} | {c:.prec$} | {:.2} |", c / l);
        };
        let sz = self.pingpong_size;
        row(
            format!("ping-pong {sz} B p50 (µs)"),
            self.pp_local.p50,
            self.pp_cross.p50,
            1,
        );
        row(
            format!("ping-pong {sz} B p99 (µs)"),
            self.pp_local.p99,
            self.pp_cross.p99,
            1,
        );
        row(
            "bulk up, 1 stream (Gbit/s, median round)".into(),
            median_gbit(&self.up.local),
            median_gbit(&self.up.cross),
            2,
        );
        row(
            "bulk down, 1 stream (Gbit/s, median round)".into(),
            median_gbit(&self.down.local),
            median_gbit(&self.down.cross),
            2,
        );
        row(
            "relay CPU per GiB, up (s; cross = A + B)".into(),
            self.up.local_cpu.per_gib(false),
            self.up.cross_cpu.per_gib(true),
            2,
        );
        row(
            "relay CPU per GiB, down (s; cross = A + B)".into(),
            self.down.local_cpu.per_gib(false),
            self.down.cross_cpu.per_gib(true),
            2,
        );
        let split = |c: &RelayCpu| {
            let gib = c.bytes as f64 / (1u64 << 30) as f64;
            format!("A {:.2} + B {:.2} s/GiB", c.a_s / gib, c.b_s / gib)
        };
        let _ = writeln!(
            out,
            "\nCross CPU split: up {}, down {}. Samples: ping-pong {} + {} round trips, {} \
             round(s), local and cross alternating. Mesh: plain ws:// on loopback with \
             require_mtls: false (agent tunnel: wss). Bulk Gbit/s per round: up local {} / \
             cross {}; down local {} / cross {}.",
            split(&self.up.cross_cpu),
            split(&self.down.cross_cpu),
            self.pp_local.n,
            self.pp_cross.n,
            self.rounds,
            gbits(&self.up.local),
            gbits(&self.up.cross),
            gbits(&self.down.local),
            gbits(&self.down.cross),
        );
        if !self.mesh_metrics.is_empty() {
            let _ = writeln!(
                out,
                "\nRelay B mesh metrics at the end:\n{}",
                self.mesh_metrics.join("\n")
            );
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let s = |x: &Summary| serde_json::json!({"n": x.n, "p50_us": x.p50, "p99_us": x.p99});
        let b = |p: &BulkPair| {
            serde_json::json!({
                "local_gbit_s": p.local.iter().map(Bulk::gbit_s).collect::<Vec<_>>(),
                "cross_gbit_s": p.cross.iter().map(Bulk::gbit_s).collect::<Vec<_>>(),
                "local_relay_cpu_s_per_gib": p.local_cpu.per_gib(false),
                "cross_relay_cpu_s_per_gib": p.cross_cpu.per_gib(true),
            })
        };
        serde_json::json!({
            "pingpong_local": s(&self.pp_local),
            "pingpong_cross": s(&self.pp_cross),
            "bulk_up": b(&self.up),
            "bulk_down": b(&self.down),
            "mesh": "ws, require_mtls false",
        })
    }
}

fn gbits(v: &[Bulk]) -> String {
    v.iter()
        .map(|b| format!("{:.2}", b.gbit_s()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// redis-server on a unix socket in `dir` (`--port 0`: no TCP), empty, no persistence.
fn start_redis(dir: &Path) -> anyhow::Result<(Child, PathBuf)> {
    let sock = dir.join("redis.sock");
    let _ = std::fs::remove_file(&sock);
    let child = Child::spawn(
        "redis-server",
        Path::new("redis-server"),
        &[
            "--port",
            "0",
            "--unixsocket",
            path_str(&sock)?,
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            path_str(dir)?,
        ],
        &[],
        &dir.join("redis.log"),
    )
    .context("starting redis-server (apt-get install redis-server)")?;
    let end = Instant::now() + SETUP_DEADLINE;
    loop {
        let pong = UnixStream::connect(&sock).ok().and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            s.write_all(b"PING\r\n").ok()?;
            let mut b = [0u8; 7];
            s.read_exact(&mut b).ok()?;
            Some(&b == b"+PONG\r\n")
        });
        if pong == Some(true) {
            return Ok((child, sock));
        }
        anyhow::ensure!(
            Instant::now() < end,
            "redis-server did not answer within {SETUP_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HA relay: its process, admin port and listeners.
struct Relay {
    child: Child,
    admin: SocketAddr,
    listeners: BTreeMap<String, SocketAddr>,
    tunnel_port: u16,
}

fn listener(r: &Relay, name: &str) -> anyhow::Result<SocketAddr> {
    r.listeners
        .get(name)
        .copied()
        .with_context(|| format!("no listener {name}"))
}

/// Ports of one relay, picked before any starts (each names the other's mesh port).
struct Ports {
    tunnel: u16,
    admin: u16,
    mesh: u16,
    listeners: BTreeMap<String, SocketAddr>,
}

fn ports() -> anyhow::Result<Ports> {
    let mut listeners = BTreeMap::new();
    for c in CONNECTORS {
        listeners.insert(
            c.to_owned(),
            SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        );
    }
    Ok(Ports {
        tunnel: free_port()?,
        admin: free_port()?,
        mesh: free_port()?,
        listeners,
    })
}

fn spawn_relay(
    opts: &Options,
    pki: &Pki,
    name: &'static str,
    me: &Ports,
    peer: (&str, &Ports),
    redis_url: &str,
) -> anyhow::Result<Relay> {
    let mut y = relay_yaml(opts, pki, me.tunnel, me.admin, &me.listeners);
    y.push_str(&format!(
        "ha:\n  mode: active\n  replica_id: {name}\n  redis_url: \"{redis_url}\"\n  \
         presence_ttl_sec: 3\n  mesh:\n    listen: 127.0.0.1:{}\n    \
         advertise_url: ws://127.0.0.1:{}/mesh\n    require_mtls: false\n    \
         peers:\n      - {{replica_id: {}, url: \"ws://127.0.0.1:{}/mesh\"}}\n",
        me.mesh, me.mesh, peer.0, peer.1.mesh
    ));
    let cfg = opts.dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, y).with_context(|| format!("writing {name}.yaml"))?;
    let mut child = Child::spawn(
        name,
        &opts.bin_dir.join("nowconnect-relay"),
        &["--config", path_str(&cfg)?],
        &opts.relay_env,
        &opts.dir.join(format!("{name}.log")),
    )?;
    let admin = SocketAddr::from(([127, 0, 0, 1], me.admin));
    wait_for(&mut child, "relay /readyz", || {
        http_get(admin, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    })?;
    Ok(Relay {
        child,
        admin,
        listeners: me.listeners.clone(),
        tunnel_port: me.tunnel,
    })
}

fn cpu_ticks(r: &Relay) -> u64 {
    proc::sample(r.child.pid()).map_or(0, |s| s.cpu_ticks)
}

/// Runs the cross measure.
pub fn run(s: &Settings) -> anyhow::Result<Cross> {
    std::fs::create_dir_all(&s.work_dir).context("creating the work directory")?;
    let pki = pki::write(&s.work_dir)?;
    let echo = targets::echo()?;
    let (sink_tx, sink_rx) = mpsc::channel::<SinkReport>();
    let sink = targets::sink(sink_tx)?;
    let source = targets::source(s.bulk_secs, s.bulk_cap)?;
    let opts = s.options(s.work_dir.clone());
    eprintln!("cross: redis-server, relays A and B (ha active, ws mesh), agent on A");
    let (_redis, sock) = start_redis(&s.work_dir)?;
    let redis_url = format!("unix://{}", sock.display());
    let (pa, pb) = (ports()?, ports()?);
    let a = spawn_relay(&opts, &pki, "relay-a", &pa, ("relay-b", &pb), &redis_url)?;
    let b = spawn_relay(&opts, &pki, "relay-b", &pb, ("relay-a", &pa), &redis_url)?;

    let health_port = free_port()?;
    let exported = BTreeMap::from([
        ("echo".to_owned(), echo.addr),
        ("sink".to_owned(), sink.addr),
        ("source".to_owned(), source.addr),
    ]);
    let cfg = s.work_dir.join("agent.yaml");
    std::fs::write(
        &cfg,
        agent_yaml(&opts, &pki, &[a.tunnel_port], health_port, &exported),
    )
    .context("writing agent.yaml")?;
    let mut args = vec!["--config", path_str(&cfg)?];
    if s.agent_multi_thread {
        args.push("--multi-thread");
    }
    let mut agent = Child::spawn(
        "agent",
        &s.agent_bin,
        &args,
        &[],
        &s.work_dir.join("agent.log"),
    )?;
    let health = SocketAddr::from(([127, 0, 0, 1], health_port));
    wait_for(&mut agent, "agent READY", || {
        health_line(health).as_deref() == Some("READY")
    })?;
    load::probe(listener(&a, "echo")?).context("first echo on relay A")?;
    // B learns of the agent through Redis and its link to A: wait until a stream routes.
    let end = Instant::now() + SETUP_DEADLINE;
    while let Err(e) = load::probe(listener(&b, "echo")?) {
        anyhow::ensure!(
            Instant::now() < end,
            "no echo through relay B over the mesh within {SETUP_DEADLINE:?}: {e:#}\n\
             --- relay-b log (tail) ---\n{}",
            b.child.log_tail(2000)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let on = |p: Side, c: &str| listener(if p == Side::Local { &a } else { &b }, c);
    let window = |f: &mut dyn FnMut() -> anyhow::Result<Bulk>| -> anyhow::Result<(Bulk, RelayCpu)> {
        let (a0, b0) = (cpu_ticks(&a), cpu_ticks(&b));
        let r = f()?;
        let tck = proc::clk_tck();
        let cpu = RelayCpu {
            a_s: cpu_ticks(&a).saturating_sub(a0) as f64 / tck,
            b_s: cpu_ticks(&b).saturating_sub(b0) as f64 / tck,
            bytes: r.bytes,
        };
        Ok((r, cpu))
    };

    eprintln!(
        "cross: ping-pong {} x {} B, bulk 1 stream up/down {} s, {} round(s), local then cross",
        s.pingpong_count, s.pingpong_size, s.bulk_secs, s.rounds
    );
    let (mut ppl, mut ppc) = (Vec::new(), Vec::new());
    let (mut up, mut down) = (BulkPair::default(), BulkPair::default());
    for _ in 0..s.rounds {
        for p in [Side::Local, Side::Cross] {
            let rtts = load::pingpong(on(p, "echo")?, s.pingpong_size, s.pingpong_count, 200, 60.0)
                .with_context(|| format!("ping-pong {p:?}"))?;
            if p == Side::Local {
                ppl.extend(rtts);
            } else {
                ppc.extend(rtts);
            }
        }
        for p in [Side::Local, Side::Cross] {
            let addr = on(p, "sink")?;
            let (r, cpu) = window(&mut || {
                load::upload(addr, 1, s.bulk_secs, s.bulk_cap, &sink_rx)
                    .with_context(|| format!("bulk up {p:?}"))
            })?;
            push(&mut up, p, r, cpu);
            std::thread::sleep(Duration::from_millis(300));
            let addr = on(p, "source")?;
            let (r, cpu) = window(&mut || {
                load::download(addr, 1, s.bulk_secs + 60.0)
                    .with_context(|| format!("bulk down {p:?}"))
            })?;
            push(&mut down, p, r, cpu);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let mesh_metrics = http_get(b.admin, "/metrics")
        .map(|t| {
            t.lines()
                .filter(|l| l.starts_with("nowconnect_mesh_") && !l.contains("_bucket{"))
                .take(40)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    drop(agent);
    drop(b);
    drop(a);
    Ok(Cross {
        rounds: s.rounds,
        pingpong_size: s.pingpong_size,
        pp_local: summarize(&mut ppl),
        pp_cross: summarize(&mut ppc),
        up,
        down,
        mesh_metrics,
    })
}

fn push(pair: &mut BulkPair, p: Side, r: Bulk, cpu: RelayCpu) {
    if p == Side::Local {
        pair.local.push(r);
        pair.local_cpu.add(&cpu);
    } else {
        pair.cross.push(r);
        pair.cross_cpu.add(&cpu);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_gib_counts_a_for_local_and_both_for_cross() {
        let c = RelayCpu {
            a_s: 1.0,
            b_s: 0.5,
            bytes: 2 << 30,
        };
        assert_eq!(c.per_gib(false), 0.5);
        assert_eq!(c.per_gib(true), 0.75);
        assert!(RelayCpu::default().per_gib(true).is_nan());
    }

    #[test]
    fn only_cross_parses() {
        let w = super::super::settings::Workloads::parse("cross").expect("parses");
        assert!(w.cross && !w.tunnel() && !w.restart && !w.failover);
    }
}
