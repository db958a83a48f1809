//! The system under test: a relay process and an agent process over `wss://` on loopback.
//!
//! The relay is a separate process, so its ports must be known before it starts: we pick free
//! ports (bind 127.0.0.1:0, note the port, release it) and write them into its YAML. Should
//! another process grab one in between, the relay exits with a bind error and we retry with new
//! ports. Readiness: `/readyz` on the relay's plain-HTTP admin port (`observability.metrics_port`),
//! then `READY` on the agent's health port, then one echo through the tunnel.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::pki::Pki;
use super::proc::Child;
use super::wan::{Wan, WanLink};

/// How long the relay may take to report ready, and the agent to say READY.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// Port picks tried when the relay cannot bind one.
const START_ATTEMPTS: usize = 3;

/// How to start the pair.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory holding `nowconnect-relay`.
    pub bin_dir: PathBuf,
    /// The `nowconnect-agent` binary.
    pub agent_bin: PathBuf,
    /// Working directory for configs and logs.
    pub dir: PathBuf,
    /// `tunnel.protocol` of the agent: `v2` or `v1`.
    pub protocol: String,
    /// Start the agent with `--multi-thread` (default: its current-thread runtime).
    pub agent_multi_thread: bool,
    /// Extra environment of the relay (e.g. `TOKIO_WORKER_THREADS`).
    pub relay_env: Vec<(String, String)>,
    /// Extra lines under the relay's `tunnel:` section (each indented by two spaces).
    pub relay_tunnel_yaml: String,
    /// Log level of both processes (warn keeps logging off the data path).
    pub log_level: String,
    /// A WAN link between agent and relay: the agent dials an emulator in front of the relay's
    /// tunnel port (None: straight to it).
    pub wan: Option<WanLink>,
    /// `limits.max_stream_window_bytes` of both processes (None: not written, their default).
    pub max_stream_window_bytes: Option<u32>,
}

/// A running relay + agent; dropping it kills both.
#[derive(Debug)]
pub struct Tunnel {
    pub relay: Child,
    pub agent: Child,
    /// Relay listener for each connector (the addresses clients connect to).
    pub listeners: BTreeMap<String, SocketAddr>,
    /// The relay's plain-HTTP admin port (`/metrics`, `/readyz`).
    pub admin: SocketAddr,
    /// The link the tunnel crosses (`Options::wan`); lives as long as the tunnel.
    pub wan: Option<Wan>,
}

impl Tunnel {
    pub fn listener(&self, connector: &str) -> anyhow::Result<SocketAddr> {
        self.listeners
            .get(connector)
            .copied()
            .with_context(|| format!("no relay listener for connector {connector}"))
    }
}

/// A port nothing listens on right now.
pub(super) fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Starts relay and agent exporting `targets` (connector name -> target address).
pub fn start(
    opts: &Options,
    pki: &Pki,
    targets: &BTreeMap<String, SocketAddr>,
) -> anyhow::Result<Tunnel> {
    let mut last_err = None;
    for attempt in 1..=START_ATTEMPTS {
        match start_once(opts, pki, targets) {
            Ok(t) => return Ok(t),
            Err(e) => {
                eprintln!("  start attempt {attempt} failed: {e:#}");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("relay and agent did not start")))
}

fn start_once(
    opts: &Options,
    pki: &Pki,
    targets: &BTreeMap<String, SocketAddr>,
) -> anyhow::Result<Tunnel> {
    let tunnel_port = free_port()?;
    let admin_port = free_port()?;
    let health_port = free_port()?;
    let mut listeners = BTreeMap::new();
    for name in targets.keys() {
        listeners.insert(
            name.clone(),
            SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        );
    }

    let relay_yaml = relay_yaml(opts, pki, tunnel_port, admin_port, &listeners);
    let relay_cfg = opts.dir.join("relay.yaml");
    std::fs::write(&relay_cfg, relay_yaml).context("writing relay.yaml")?;
    let mut relay = Child::spawn(
        "relay",
        &opts.bin_dir.join("nowconnect-relay"),
        &["--config", path_str(&relay_cfg)?],
        &opts.relay_env,
        &opts.dir.join("relay.log"),
    )?;
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    wait_for(&mut relay, "relay /readyz", || {
        http_get(admin, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    })?;

    // The agent dials the relay, or the WAN emulator in front of it.
    let wan = opts
        .wan
        .map(|link| Wan::start(link, SocketAddr::from(([127, 0, 0, 1], tunnel_port))))
        .transpose()?;
    let dial_port = wan.as_ref().map_or(tunnel_port, |w| w.addr.port());
    let agent_yaml = agent_yaml(opts, pki, &[dial_port], health_port, targets);
    let agent_cfg = opts.dir.join("agent.yaml");
    std::fs::write(&agent_cfg, agent_yaml).context("writing agent.yaml")?;
    let mut args = vec!["--config", path_str(&agent_cfg)?];
    if opts.agent_multi_thread {
        args.push("--multi-thread");
    }
    let mut agent = Child::spawn(
        "agent",
        &opts.agent_bin,
        &args,
        &[],
        &opts.dir.join("agent.log"),
    )?;
    let health = SocketAddr::from(([127, 0, 0, 1], health_port));
    let ready = wait_for(&mut agent, "agent READY", || {
        health_line(health).as_deref() == Some("READY")
    });
    if let Err(e) = ready {
        // The relay's side of the story is usually the useful half.
        bail!("{e:#}\n--- relay log (tail) ---\n{}", relay.log_tail(2000));
    }
    Ok(Tunnel {
        relay,
        agent,
        listeners,
        admin,
        wan,
    })
}

pub(super) fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}

/// Polls `ready` until it holds; fails early if `child` exits, with its log tail.
pub(super) fn wait_for(
    child: &mut Child,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let end = Instant::now() + START_DEADLINE;
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = child.exited() {
            bail!(
                "{} exited ({status}) before {what}\n--- {} log (tail) ---\n{}",
                child.name(),
                child.name(),
                child.log_tail(2000)
            );
        }
        if Instant::now() > end {
            bail!(
                "no {what} within {START_DEADLINE:?}\n--- {} log (tail) ---\n{}",
                child.name(),
                child.log_tail(2000)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(super) fn relay_yaml(
    opts: &Options,
    pki: &Pki,
    tunnel_port: u16,
    admin_port: u16,
    listeners: &BTreeMap<String, SocketAddr>,
) -> String {
    let mut y = format!(
        "# written by nowconnect-bench\n\
         tunnel:\n  host: 127.0.0.1\n  port: {tunnel_port}\n{}  \
         tls:\n    cert_file: '{}'\n    key_file: '{}'\n\
         security:\n  dev_bypass: true\n\
         observability:\n  metrics_port: {admin_port}\n  log_level: {}\n\
         listeners:\n",
        opts.relay_tunnel_yaml,
        pki.cert.display(),
        pki.key.display(),
        opts.log_level
    );
    for (name, addr) in listeners {
        y.push_str(&format!(
            "  - name: {name}\n    bind: {addr}\n    connector: {name}\n"
        ));
    }
    y.push_str(&limits_yaml(opts));
    y
}

/// The `limits:` section both processes get (empty when nothing is set).
fn limits_yaml(opts: &Options) -> String {
    match opts.max_stream_window_bytes {
        Some(w) => format!("limits:\n  max_stream_window_bytes: {w}\n"),
        None => String::new(),
    }
}

/// Agent YAML: the relays on `tunnel_ports` (the first as `url`, the others as `urls`).
pub(super) fn agent_yaml(
    opts: &Options,
    pki: &Pki,
    tunnel_ports: &[u16],
    health_port: u16,
    targets: &BTreeMap<String, SocketAddr>,
) -> String {
    let names: Vec<&str> = targets.keys().map(String::as_str).collect();
    let url = |p: &u16| format!("wss://localhost:{p}/tunnel");
    let first = tunnel_ports.first().map(url).unwrap_or_default();
    let more = match tunnel_ports.get(1..) {
        Some(rest) if !rest.is_empty() => format!(
            "  urls: [{}]\n",
            rest.iter().map(url).collect::<Vec<_>>().join(", ")
        ),
        _ => String::new(),
    };
    let mut y = format!(
        "# written by nowconnect-bench\n\
         tunnel:\n  url: {first}\n{more}  agent_id: bench-agent\n  \
         protocol: {}\n  exported_connectors: [{}]\n\
         proxy:\n  ca_bundle: '{}'\n\
         health:\n  host: 127.0.0.1\n  port: {health_port}\n\
         logging:\n  level: {}\n\
         targets:\n",
        opts.protocol,
        names.join(", "),
        pki.ca.display(),
        opts.log_level
    );
    for (name, addr) in targets {
        y.push_str(&format!(
            "  {name}: {{host: '{}', port: {}}}\n",
            addr.ip(),
            addr.port()
        ));
    }
    y.push_str(&limits_yaml(opts));
    y
}

/// A plain HTTP/1.1 GET; the whole response, or `None` on any failure.
pub(super) fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// What the agent's health port says (`OK` or `READY`).
pub(super) fn health_line(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(window: Option<u32>) -> Options {
        Options {
            bin_dir: PathBuf::from("/bin"),
            agent_bin: PathBuf::from("/bin/agent"),
            dir: PathBuf::from("/tmp"),
            protocol: "v2".into(),
            agent_multi_thread: false,
            relay_env: Vec::new(),
            relay_tunnel_yaml: String::new(),
            log_level: "warn".into(),
            wan: None,
            max_stream_window_bytes: window,
        }
    }

    /// Both configs, parsed back.
    fn yamls(window: Option<u32>) -> [serde_yaml::Value; 2] {
        let pki = Pki {
            ca: "/ca.pem".into(),
            cert: "/cert.pem".into(),
            key: "/key.pem".into(),
            ca_der: Vec::new(),
        };
        let o = opts(window);
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let listeners = BTreeMap::from([("echo".to_owned(), addr)]);
        let relay = relay_yaml(&o, &pki, 1, 2, &listeners);
        let agent = agent_yaml(&o, &pki, &[1], 3, &listeners);
        [relay, agent].map(|y| serde_yaml::from_str(&y).expect("valid YAML"))
    }

    #[test]
    fn stream_window_is_written_under_limits_of_both_only_when_set() {
        for y in yamls(Some(262_144)) {
            assert_eq!(
                y["limits"]["max_stream_window_bytes"].as_u64(),
                Some(262_144),
                "{y:?}"
            );
        }
        for y in yamls(None) {
            assert!(y.get("limits").is_none(), "{y:?}");
        }
    }
}
