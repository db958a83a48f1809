//! Many idle agents on one relay (issue 20, `--only tunnels`): `--fleet` agents (default 10,000)
//! each hold a tunnel (TCP + TLS + WebSocket, `nowconnect.v2`, HELLO answered by HELLO_ACK) and
//! then stay idle, answering the relay's pings, as real agents between streams.
//!
//! The agents are fake but speak the real protocol: tasks in this process (a two-worker tokio
//! runtime), each connecting from its own loopback address (127.1.x.y, so no per-source cap of the
//! relay sees one client), with the agent's own reconnect schedule (`nowconnect_agent::backoff`,
//! its defaults: 500 ms doubling to 30 s, full jitter, quick retries after a healthy tunnel).
//!
//! Measured on the relay process (one `nowconnect-relay`, its real limits and defaults):
//! - RSS before the fleet, with the fleet READY, and after `--fleet-idle-secs` of idle (which
//!   spans at least one ping round); memory per tunnel is (with fleet - before) / agents.
//! - CPU (user + system) over that idle window: the keepalive cost.
//! - The first connect of the whole fleet, and the reconnect after the relay is SIGKILLed and
//!   started again on the same port: time from its spawn until 50 %, 90 % and 100 % of the
//!   agents have their HELLO_ACK, and agents accepted per second.
//!
//! What this module must never do: wait without a deadline, or leave a process behind.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use nowconnect_agent::backoff::Backoff;
use nowconnect_shared::frame::Hello;
use nowconnect_shared::{binary, Frame, Limits};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::pki;
use super::proc::{self, Signal};
use super::restart::Relay;
use super::run::Settings;

/// Most agents: one loopback source address each, 127.1.0.1 .. 127.250.249.250.
pub const MAX_AGENTS: usize = 250 * 250 * 250;
/// The budget: relay memory per idle tunnel.
pub const GOAL_KIB_PER_TUNNEL: f64 = 32.0;
/// Each step of one connect (TCP, TLS, upgrade, HELLO_ACK) must finish this soon.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for the whole fleet to be READY (first connect and after the restart).
const FLEET_DEADLINE: Duration = Duration::from_secs(600);
/// How often the counters are looked at while waiting.
const POLL: Duration = Duration::from_millis(5);

/// What `--only tunnels` is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct FleetSettings {
    pub agents: usize,
    /// Seconds of idle measured once the fleet is READY.
    pub idle_secs: u64,
}

/// When the fleet reached 50 %, 90 % and 100 % READY, in seconds from the relay's spawn (first
/// connect: from the first agent's start).
#[derive(Debug, Clone, Copy, Default)]
pub struct Arrival {
    pub half_s: f64,
    pub most_s: f64,
    pub all_s: f64,
}

impl Arrival {
    fn rate(&self, agents: usize) -> f64 {
        agents as f64 / self.all_s.max(1e-9)
    }
}

/// The measure.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub settings: FleetSettings,
    pub relay_before_kib: u64,
    pub relay_ready_kib: u64,
    pub relay_after_idle_kib: u64,
    /// Relay CPU seconds over the idle window.
    pub idle_cpu_s: f64,
    pub idle_window_s: f64,
    /// Tunnels lost during the idle window (a keepalive problem if not 0).
    pub idle_drops: usize,
    pub first: Arrival,
    pub restart: Arrival,
}

impl Fleet {
    /// What the budget is about: relay memory per idle tunnel, from the RSS after the idle
    /// spell (the connect storm's transient state, a TLS read buffer kept for 1 s after a
    /// tunnel's last read and the allocator's not yet purged pages, is gone by then).
    pub fn kib_per_tunnel(&self) -> f64 {
        self.per_tunnel(self.relay_after_idle_kib)
    }

    /// The same at the connect peak, when the last agent is READY (reported, not budgeted).
    pub fn kib_per_tunnel_at_ready(&self) -> f64 {
        self.per_tunnel(self.relay_ready_kib)
    }

    fn per_tunnel(&self, rss_kib: u64) -> f64 {
        let grown = rss_kib.saturating_sub(self.relay_before_kib);
        grown as f64 / self.settings.agents.max(1) as f64
    }

    pub fn met(&self) -> bool {
        self.kib_per_tunnel() <= GOAL_KIB_PER_TUNNEL && self.idle_drops == 0
    }

    pub fn render(&self) -> String {
        let n = self.settings.agents;
        let mib = |k: u64| format!("{:.1}", k as f64 / 1024.0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "tunnels: {n} idle agents (TLS + WebSocket v2, HELLO'd) on one relay\n"
        );
        let _ = writeln!(out, "| measure | value |");
        let _ = writeln!(out, "|---|---:|");
        let _ = writeln!(
            out,
            "| relay RSS before / READY / after {:.0} s idle (MiB) | {} / {} / {} |",
            self.idle_window_s,
            mib(self.relay_before_kib),
            mib(self.relay_ready_kib),
            mib(self.relay_after_idle_kib)
        );
        let _ = writeln!(
            out,
            "| relay memory per idle tunnel (KiB, budget {GOAL_KIB_PER_TUNNEL}) | {:.1} |",
            self.kib_per_tunnel()
        );
        let _ = writeln!(
            out,
            "| relay memory per tunnel at the connect peak, all READY (KiB) | {:.1} |",
            self.kib_per_tunnel_at_ready()
        );
        let _ = writeln!(
            out,
            "| relay CPU while idle (ms per s; per 1,000 tunnels) | {:.1}; {:.2} |",
            1000.0 * self.idle_cpu_s / self.idle_window_s.max(1e-9),
            1000.0 * self.idle_cpu_s / self.idle_window_s.max(1e-9) / (n as f64 / 1000.0)
        );
        let _ = writeln!(out, "| tunnels lost while idle | {} |", self.idle_drops);
        for (label, a) in [
            ("first connect", &self.first),
            ("after relay SIGKILL + start", &self.restart),
        ] {
            let _ = writeln!(
                out,
                "| {label}: 50 % / 90 % / all READY (s); agents/s | {:.2} / {:.2} / {:.2}; {:.0} |",
                a.half_s,
                a.most_s,
                a.all_s,
                a.rate(n)
            );
        }
        let _ = writeln!(
            out,
            "\ngoal: <= {GOAL_KIB_PER_TUNNEL} KiB per tunnel, none lost while idle: {}",
            if self.met() { "met" } else { "**MISSED**" }
        );
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let arrival = |a: &Arrival| {
            serde_json::json!({"half_s": a.half_s, "most_s": a.most_s, "all_s": a.all_s,
                               "agents_per_s": a.rate(self.settings.agents)})
        };
        serde_json::json!({
            "agents": self.settings.agents,
            "relay_rss_kib": {"before": self.relay_before_kib, "ready": self.relay_ready_kib,
                              "after_idle": self.relay_after_idle_kib},
            "kib_per_tunnel": self.kib_per_tunnel(),
            "kib_per_tunnel_at_ready": self.kib_per_tunnel_at_ready(),
            "idle_cpu_s": self.idle_cpu_s,
            "idle_window_s": self.idle_window_s,
            "idle_drops": self.idle_drops,
            "first_connect": arrival(&self.first),
            "restart": arrival(&self.restart),
            "goal_met": self.met(),
        })
    }
}

/// Counters shared by the fake agents.
#[derive(Debug, Default)]
struct Counts {
    /// Tunnels READY now.
    ready: AtomicUsize,
    /// Tunnels lost after READY.
    lost: AtomicUsize,
}

pub fn run(s: &Settings, f: &FleetSettings) -> anyhow::Result<Fleet> {
    anyhow::ensure!(
        (1..=MAX_AGENTS).contains(&f.agents),
        "--fleet {}: between 1 and {MAX_AGENTS}",
        f.agents
    );
    let dir = s.work_dir.join("fleet");
    std::fs::create_dir_all(&dir).context("creating the fleet work directory")?;
    let pki = pki::write(&dir)?;
    let mut opts = s.options(dir);
    // The fleet arrives at once: let the relay hold that many handshakes in flight.
    opts.relay_tunnel_yaml = format!(
        "  preauth:\n    max_total: {}\n",
        f.agents.clamp(2048, 65536)
    );
    raise_nofile(f.agents)?;
    let mut relay = Relay::new("relay", &opts, &pki)?;
    relay.spawn(&opts)?;
    relay.wait_ready()?;
    let relay_before_kib = sample(relay_pid(&relay)?)?.rss_kib;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("fleet runtime")?;
    let tls = connector(&pki.ca_der)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], relay.tunnel_port));
    let counts = Arc::new(Counts::default());
    eprintln!("tunnels: {} agents connecting", f.agents);
    let start = Instant::now();
    for i in 0..f.agents {
        rt.spawn(agent(i, addr, tls.clone(), counts.clone()));
    }
    let first = arrival(&counts, f.agents, start, || {
        sample(relay_pid(&relay)?).map(|_| ())
    })?;
    eprintln!("tunnels: all READY in {:.1} s", first.all_s);
    let relay_ready_kib = sample(relay_pid(&relay)?)?.rss_kib;

    let lost_before = counts.lost.load(Ordering::Relaxed);
    let cpu_before = sample(relay_pid(&relay)?)?;
    let idle_start = Instant::now();
    let idle_end = idle_start + Duration::from_secs(f.idle_secs);
    while Instant::now() < idle_end {
        std::thread::sleep(Duration::from_millis(100));
        relay_pid(&relay)?;
    }
    let cpu_after = sample(relay_pid(&relay)?)?;
    let idle_window_s = idle_start.elapsed().as_secs_f64();
    let idle_cpu_s =
        cpu_after.cpu_ticks.saturating_sub(cpu_before.cpu_ticks) as f64 / proc::clk_tck();
    let idle_drops = counts.lost.load(Ordering::Relaxed) - lost_before;
    let relay_after_idle_kib = cpu_after.rss_kib;

    eprintln!("tunnels: relay SIGKILL, then start again on the same port");
    relay.stop(Signal::Kill)?;
    let gone = Instant::now() + FLEET_DEADLINE;
    while counts.ready.load(Ordering::Relaxed) > 0 {
        anyhow::ensure!(
            Instant::now() < gone,
            "agents did not notice the relay's loss"
        );
        std::thread::sleep(POLL);
    }
    let spawned = Instant::now();
    relay.spawn(&opts)?;
    let restart = arrival(&counts, f.agents, spawned, || {
        sample(relay_pid(&relay)?).map(|_| ())
    })?;
    eprintln!("tunnels: all READY again in {:.1} s", restart.all_s);
    rt.shutdown_background();
    relay.stop(Signal::Term)?;
    Ok(Fleet {
        settings: *f,
        relay_before_kib,
        relay_ready_kib,
        relay_after_idle_kib,
        idle_cpu_s,
        idle_window_s,
        idle_drops,
        first,
        restart,
    })
}

fn relay_pid(relay: &Relay) -> anyhow::Result<u32> {
    relay
        .child
        .as_ref()
        .map(|c| c.pid())
        .context("relay not running")
}

fn sample(pid: u32) -> anyhow::Result<proc::Sample> {
    proc::sample(pid).context("relay is gone")
}

/// Waits until every agent is READY; `alive` fails when the relay died meanwhile.
fn arrival(
    counts: &Counts,
    agents: usize,
    since: Instant,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Arrival> {
    let mut a = Arrival::default();
    let (half, most) = (agents.div_ceil(2), (agents * 9).div_ceil(10));
    loop {
        let ready = counts.ready.load(Ordering::Relaxed);
        let t = since.elapsed().as_secs_f64();
        if ready >= half && a.half_s == 0.0 {
            a.half_s = t;
        }
        if ready >= most && a.most_s == 0.0 {
            a.most_s = t;
        }
        if ready >= agents {
            a.all_s = t;
            return Ok(a);
        }
        anyhow::ensure!(
            since.elapsed() < FLEET_DEADLINE,
            "only {ready} of {agents} agents READY after {FLEET_DEADLINE:?}"
        );
        alive()?;
        std::thread::sleep(POLL);
    }
}

/// The relay holds one descriptor per tunnel and this process one per agent: both need more
/// than the usual 1,024 (the relay inherits this process's limit).
fn raise_nofile(agents: usize) -> anyhow::Result<()> {
    let want = (agents as u64 + 1024).max(4096);
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).context("RLIMIT_NOFILE")?;
    anyhow::ensure!(
        hard >= want,
        "--fleet {agents} needs {want} open files, the hard limit is {hard} (ulimit -Hn)"
    );
    if soft < want {
        rlimit::setrlimit(rlimit::Resource::NOFILE, want, hard).context("raising RLIMIT_NOFILE")?;
    }
    Ok(())
}

fn connector(ca_der: &[u8]) -> anyhow::Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .context("bench CA in a root store")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// The loopback source address of agent `i` (never .0 or .255 in the last two octets).
fn source(i: usize) -> Ipv4Addr {
    let (a, b, c) = (i / 62_500, (i / 250) % 250, i % 250);
    Ipv4Addr::new(127, 1 + a as u8, 1 + b as u8, 1 + c as u8)
}

/// One fake agent for as long as the runtime runs: connect, HELLO, idle until the tunnel ends,
/// back off, again.
async fn agent(i: usize, relay: SocketAddr, tls: TlsConnector, counts: Arc<Counts>) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        if tunnel(i, relay, &tls, &counts).await.is_ok() {
            backoff.healthy();
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One tunnel: Ok once it was READY and has ended; Err when it never became READY.
async fn tunnel(
    i: usize,
    relay: SocketAddr,
    tls: &TlsConnector,
    counts: &Counts,
) -> anyhow::Result<()> {
    let step = |what: &'static str| move |_| anyhow::anyhow!("{what} timed out");
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((source(i), 0)))?;
    let tcp = tokio::time::timeout(STEP_TIMEOUT, sock.connect(relay))
        .await
        .map_err(step("connect"))??;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost")?;
    let tls = tokio::time::timeout(STEP_TIMEOUT, tls.connect(name, tcp))
        .await
        .map_err(step("TLS"))??;
    let mut req = format!("wss://localhost:{}/tunnel", relay.port()).into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("nowconnect.v2"),
    );
    let (mut ws, _) = tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::client_async(req, tls))
        .await
        .map_err(step("upgrade"))??;
    let limits = Limits::default();
    let hello = Frame::Hello(Hello {
        agent_id: format!("fleet-{i:06}"),
        connectors: vec!["echo".to_owned()],
        ver: "bench".to_owned(),
    });
    let mut buf = BytesMut::new();
    binary::encode(&hello, &limits, &mut buf)?;
    ws.send(Message::Binary(buf.freeze())).await?;
    let acked = tokio::time::timeout(STEP_TIMEOUT, async {
        while let Some(msg) = ws.next().await {
            if let Message::Binary(b) = msg? {
                if matches!(binary::decode(&b, &limits)?, Frame::HelloAck) {
                    return Ok(());
                }
            }
        }
        anyhow::bail!("tunnel closed before HELLO_ACK")
    })
    .await
    .map_err(step("HELLO_ACK"))?;
    acked?;
    counts.ready.fetch_add(1, Ordering::Relaxed);
    // Idle: reading answers the relay's pings (tungstenite queues the pong and sends it as it
    // reads on). The relay sends nothing else to an idle agent.
    while let Some(Ok(_)) = ws.next().await {}
    counts.ready.fetch_sub(1, Ordering::Relaxed);
    counts.lost.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
