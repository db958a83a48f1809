//! Smoke test of an agent *binary* (any architecture, e.g. under qemu-user) against the in-process
//! x86-64 relay on loopback: the agent dials `wss://` with a private CA made at run time (its only
//! root, `NC_CA_BUNDLE_ONLY`), must report READY on its health port and carry 4 MiB each way
//! byte-exact. Then a second agent that trusts another CA must refuse the relay's certificate
//! (`certificate not trusted` in its log, never READY), so the TLS check on that architecture is
//! real. Used by `scripts/qemu-smoke.sh` and `scripts/footprint.sh`; exits non-zero on any failure.
//!
//! `nowconnect-smoke -- qemu-aarch64 target/aarch64-unknown-linux-musl/release/nowconnect-agent`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use nowconnect::bench::pki;
use nowconnect_relay::RelayConfig;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

#[derive(Debug, Parser)]
struct Args {
    /// Bytes sent each way.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    bytes: usize,
    /// Also measure the agent process: RSS idle and READY, RSS with this many open streams, threads.
    /// Meaningful only for a native binary (under qemu the process is the emulator).
    #[arg(long)]
    footprint_streams: Option<usize>,
    /// How long the agent may take to become READY (emulation is slow).
    #[arg(long, default_value_t = 60)]
    ready_timeout_sec: u64,
    /// Plain `ws://` instead of `wss://` (and no unknown-CA check).
    #[arg(long)]
    insecure_ws: bool,
    /// The agent command line (runner first, e.g. qemu-aarch64 PATH).
    #[arg(required = true, last = true)]
    agent: Vec<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (echo, _echo_task) = nowconnect::demo::echo_target().await?;
    let dir = WorkDir::new()?;
    let good = pki::write(&dir.sub("relay-ca")?)?;
    let tls = if args.insecure_ws {
        String::new()
    } else {
        format!(
            "  tls:\n    cert_file: {}\n    key_file: {}\n",
            good.cert.display(),
            good.key.display()
        )
    };
    let yaml = format!(
        "tunnel:\n  host: 127.0.0.1\n  port: 0\n{tls}security:\n  dev_bypass: true\n\
         listeners:\n  - name: echo\n    bind: 127.0.0.1:0\n    connector: echo\n"
    );
    let relay = nowconnect_relay::start(RelayConfig::from_yaml_str(&yaml)?).await?;
    let scheme = if args.insecure_ws { "ws" } else { "wss" };
    let url = format!("{scheme}://{}/tunnel", relay.tunnel_addr());
    let health = free_port().await?;
    let mut agent = spawn_agent(&args.agent, &url, &good.ca, echo, health, Stdio::inherit())?;

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.ready_timeout_sec);
    loop {
        if let Some(status) = agent.try_wait()? {
            bail!("the agent exited before READY: {status}");
        }
        if read_health(health).await.as_deref() == Some("READY\n") {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent was not READY within {} s",
                args.ready_timeout_sec
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready_after = started.elapsed();

    let client = relay.listener_addr("echo").context("echo listener")?;
    let sent: Vec<u8> = (0..args.bytes)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut s = TcpStream::connect(client).await?;
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&sent).await?;
        w.shutdown().await
    };
    let mut back = Vec::with_capacity(sent.len());
    let (wrote, read) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(write, r.read_to_end(&mut back))
    })
    .await
    .context("transfer did not finish within 120 s")?;
    wrote?;
    read?;
    if back != sent {
        bail!(
            "echoed bytes differ: sent {}, got {}",
            sent.len(),
            back.len()
        );
    }
    println!(
        "smoke OK: `{}` READY over {scheme}:// after {} ms, {} bytes each way byte-exact",
        args.agent.join(" "),
        ready_after.as_millis(),
        sent.len()
    );
    drop(s);
    if let Some(n) = args.footprint_streams {
        let pid = agent.id().context("agent pid")?;
        footprint(pid, client, n, &relay).await?;
    }
    agent.kill().await.ok();
    if !args.insecure_ws {
        let other = other_ca(&dir.sub("other-ca")?)?;
        unknown_ca_refused(&args, &url, &other, echo).await?;
    }
    Ok(())
}

/// Starts the agent binary dialing `url`, trusting only `ca` (ignored for `ws://`).
fn spawn_agent(
    cmd: &[String],
    url: &str,
    ca: &Path,
    echo: SocketAddr,
    health: SocketAddr,
    stderr: Stdio,
) -> anyhow::Result<Child> {
    let (program, rest) = cmd.split_first().context("no agent command")?;
    let mut c = Command::new(program);
    c.args(rest)
        .env_clear()
        .env("NC_AGENT_URL", url)
        .env("NC_AGENT_ID", "smoke")
        .env("NC_CONNECTORS", "echo")
        .env("NC_TARGET_echo_HOST", "127.0.0.1")
        .env("NC_TARGET_echo_PORT", echo.port().to_string())
        .env("NC_HEALTH_HOST", "127.0.0.1")
        .env("NC_HEALTH_PORT", health.port().to_string())
        .env("NC_LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true);
    if url.starts_with("ws://") {
        c.env("NC_ALLOW_INSECURE_WS", "true");
    } else {
        c.env("NC_CA_BUNDLE", ca).env("NC_CA_BUNDLE_ONLY", "true");
    }
    c.spawn()
        .with_context(|| format!("starting {}", cmd.join(" ")))
}

/// An agent that trusts only `other_ca` must refuse the relay's certificate: its log names the
/// untrusted issuer within the READY timeout, and its health port never says READY.
async fn unknown_ca_refused(
    args: &Args,
    url: &str,
    other_ca: &Path,
    echo: SocketAddr,
) -> anyhow::Result<()> {
    let health = free_port().await?;
    let mut agent = spawn_agent(&args.agent, url, other_ca, echo, health, Stdio::piped())?;
    let stderr = agent.stderr.take().context("agent stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let limit = Duration::from_secs(args.ready_timeout_sec);
    // The last few lines the agent logged, for the failure message (bounded).
    let mut seen: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let refused = tokio::time::timeout(limit, async {
        // Bounded by the timeout; each line is the agent's own log line.
        while let Some(line) = lines.next_line().await? {
            if line.contains("certificate not trusted") {
                return Ok::<_, std::io::Error>(Some(line));
            }
            if seen.len() == 4 {
                seen.pop_front();
            }
            seen.push_back(line);
        }
        Ok(None)
    })
    .await;
    let seen = Vec::from(seen).join("\n  ");
    let line = match refused {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => bail!(
            "the agent trusting another CA exited without refusing the relay's certificate; it logged:\n  {seen}"
        ),
        Ok(Err(e)) => bail!("reading the agent's log: {e}"),
        Err(_) => bail!(
            "the agent trusting another CA logged no `certificate not trusted` within {} s; it logged:\n  {seen}",
            args.ready_timeout_sec
        ),
    };
    if read_health(health).await.as_deref() == Some("READY\n") {
        bail!("the agent trusting another CA is READY: the relay's certificate was not checked");
    }
    agent.kill().await.ok();
    let why = line
        .find("TLS to relay")
        .map_or(line.as_str(), |i| &line[i..]);
    println!(
        "smoke OK: `{}` refused a relay certificate from an unknown CA: {why}",
        args.agent.join(" ")
    );
    Ok(())
}

/// A CA certificate with a name of its own (a CA of the same name would make the check fail on
/// the signature, not on the issuer), written to `dir/other-ca.pem`.
fn other_ca(dir: &Path) -> anyhow::Result<PathBuf> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let key = KeyPair::generate().context("CA key")?;
    let mut p = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    p.distinguished_name
        .push(DnType::CommonName, "nowconnect-smoke unknown CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).context("CA certificate")?;
    let path = dir.join("other-ca.pem");
    std::fs::write(&path, cert.pem()).context("writing other-ca.pem")?;
    Ok(path)
}

/// A private directory for the run's PEM files, removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> anyhow::Result<WorkDir> {
        let p = std::env::temp_dir().join(format!("nowconnect-smoke-{}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(WorkDir(p))
    }

    fn sub(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.0.join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Prints the agent's RSS idle (READY, no streams), with `n` open idle streams, and its threads.
async fn footprint(
    pid: u32,
    client: SocketAddr,
    n: usize,
    relay: &nowconnect_relay::RelayHandle,
) -> anyhow::Result<()> {
    // The finished transfer's stream first: the relay closes it once the agent has sent its FIN,
    // which the agent does as its stream ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.open_connections() > 0 {
        if Instant::now() > deadline {
            bail!("the transfer's stream was still open on the relay after 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let idle = proc_status(pid, "VmRSS")?;
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(client).await?;
        let msg = (i as u32).to_be_bytes();
        s.write_all(&msg).await?;
        let mut back = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
            .await
            .context("stream echo")??;
        if back != msg {
            bail!("stream {i}: echo differs");
        }
        streams.push(s);
    }
    let loaded = proc_status(pid, "VmRSS")?;
    let threads = proc_status(pid, "Threads")?;
    let per_stream = (loaded.saturating_sub(idle)) as f64 / n as f64;
    println!("footprint: agent RSS idle READY {idle} KiB; with {n} open streams {loaded} KiB ({per_stream:.2} KiB per stream); threads {threads}");
    drop(streams);
    Ok(())
}

/// A numeric field of /proc/PID/status (kB for memory fields).
fn proc_status(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .with_context(|| format!("no {field}"))?;
    line.split_whitespace()
        .nth(1)
        .context("value")?
        .parse()
        .context("number")
}

async fn read_health(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

async fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?)
}
