//! NowConnect relay ("cloud hub"): accepts agent tunnels on `/tunnel`, binds one TCP listener
//! per connector, and relays every client connection as a stream through an agent's tunnel.
//!
//! Operators see and steer it through the portal API under `/api/v1` (module `portal`, see
//! docs/portal.md): agents, connectors, live sessions, the audit trail and security policies.
//!
//! [`start`] binds everything (so tests can use port 0) and returns a [`RelayHandle`];
//! [`start_with`] takes listeners the caller has bound already ([`Prebound`]), so a test can
//! hold a port across a relay restart; `shutdown()` stops accepting and lets open streams finish
//! for `limits.shutdown_grace_ms`; dropping the handle stops everything at once.
#![forbid(unsafe_code)]

mod abuse;
pub mod audit;
mod auth;
mod authorize;
mod budget;
mod checkers;
mod cluster;
pub mod config;
mod conn;
mod history;
mod http;
mod httpc;
mod jwks;
mod listener;
mod listeners;
mod liveness;
mod mesh;
pub mod metrics;
pub mod notify;
mod pdp;
mod portal;
mod preauth;
mod proxy_protocol;
mod readbuf;
mod registry;
mod reload;
mod replay;
mod scrape;
mod sessions;
mod shards;
mod sni;
pub mod state;
mod target_health;
mod tls;
mod tunnel;
mod ui;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use audit::{Action, AuditFilter, AuditRecord};
pub use cluster::MemoryDirectory;
pub use config::{ConfigError, RelayConfig};
pub use reload::report::ReloadReport;
pub use shards::Shards;

/// Why the relay could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The configuration cannot work (operator's to fix; exit code 2).
    #[error("{0}")]
    Config(String),
    /// An address could not be bound (in use, no permission).
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: String,
        addr: String,
        source: std::io::Error,
    },
}

/// State every task of one relay shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The running configuration; a reload swaps it whole ([`Shared::cfg`] reads it).
    pub live: arc_swap::ArcSwap<RelayConfig>,
    pub registry: registry::Registry,
    pub metrics: Arc<metrics::Metrics>,
    /// Cancelled to stop everything (end of grace period, or handle dropped).
    pub root: CancellationToken,
    /// Cancelled when shutdown starts: listeners stop accepting, `/readyz` says 503.
    pub draining: CancellationToken,
    /// Every listener is bound.
    pub ready: AtomicBool,
    /// Stream tasks (the grace period waits for these).
    pub streams: TaskTracker,
    /// Everything else: HTTP connections, tunnels, listeners.
    pub tasks: TaskTracker,
    /// Open client connections, for `limits.max_conn_total`.
    pub conns: Arc<AtomicUsize>,
    pub next_tunnel_id: AtomicU64,
    /// Security decisions, logged and kept for the portal.
    pub audit: Arc<audit::Audit>,
    /// Per-source limits on `/tunnel` attempts.
    pub gate: Arc<abuse::Gate>,
    /// Token checks (`security.jwks_url`), the portal's keys and the PDP; a reload may swap them.
    pub checkers: checkers::Running,
    /// Policies and the agent block list (changed through the portal).
    pub state: Arc<state::State>,
    /// Live streams, for the portal.
    pub sessions: Arc<sessions::Sessions>,
    /// The running listeners (a reload adds, removes and changes them).
    pub listeners: listeners::Listeners,
    /// Where HTTP connections (and so tunnels) run; `None`: on the caller's runtime.
    pub shards: Option<Arc<Shards>>,
    /// Stream bytes held, relay-wide, per direction (`limits.max_buffered_bytes`).
    pub buffered: budget::Buffers,
    /// The other relays of the service and the agents they hold (empty with HA off).
    pub cluster: Arc<cluster::View>,
    /// Links to the other relays; `None` with `ha.mode: off`.
    pub mesh: Option<Arc<mesh::Core>>,
    /// The tunnel server's TLS (`tunnel.tls`; a reload swaps its certificate and key).
    pub tls: Option<tls::TunnelTls>,
    /// One reload at a time.
    pub reloading: tokio::sync::Mutex<()>,
    /// Per-minute traffic of the last hour, for the dashboard.
    pub history: history::History,
    /// The dashboard's IdP (discovery cache).
    pub oidc: ui::oidc::Oidc,
    /// When this relay started, Unix ms.
    pub started_ms: u64,
}

/// Now as Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shared {
    /// The running configuration. Read it again rather than keep it: a reload replaces it.
    pub fn cfg(&self) -> Arc<RelayConfig> {
        self.live.load_full()
    }

    /// Listeners are bound, the relay is not draining, and signing keys are cached (when JWT
    /// is configured). An IdP outage after keys were loaded keeps the relay ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && !self.draining.is_cancelled()
            && self
                .checkers
                .jwks
                .load()
                .as_ref()
                .is_none_or(|j| j.has_keys())
    }
}

/// A running relay. Dropping it stops everything at once, like killing the process.
#[derive(Debug)]
pub struct RelayHandle {
    shared: Arc<Shared>,
    tunnel_addr: SocketAddr,
    metrics_addr: SocketAddr,
    portal_addr: SocketAddr,
    mesh_addr: Option<SocketAddr>,
    supervisor: Option<JoinHandle<()>>,
}

impl RelayHandle {
    /// The HTTP server with `/tunnel`, `/healthz`, `/readyz` (`/metrics` unless
    /// `observability.metrics_port` is set, `/api/v1` unless `portal.bind` is set).
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel_addr
    }

    /// Where `/metrics` (and health) is served: `tunnel_addr` unless `observability.metrics_port`.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Where `/api/v1` is served: `tunnel_addr` unless `portal.bind`.
    pub fn portal_addr(&self) -> SocketAddr {
        self.portal_addr
    }

    /// The bound address of the listener named `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared.listeners.addr(name)
    }

    /// How many agent tunnels currently serve `connector`.
    pub fn agents_for(&self, connector: &str) -> usize {
        self.shared
            .registry
            .snapshot()
            .into_iter()
            .find(|(c, _)| c == connector)
            .map_or(0, |(_, n)| n)
    }

    /// `(replica_id, agent_id, epoch)` of the agents on other relays that serve `connector`,
    /// as this relay last read the registry (empty with HA off).
    pub fn remote_agents(&self, connector: &str) -> Vec<(String, String, u64)> {
        self.shared
            .cluster
            .snapshot()
            .owners
            .get(connector)
            .into_iter()
            .flatten()
            .map(|r| (r.relay_id.to_string(), r.agent_id.to_string(), r.epoch))
            .collect()
    }

    /// `(replica_id, mesh URL)` of the other relays this one knows (static and discovered).
    pub fn mesh_peers(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .shared
            .cluster
            .snapshot()
            .peers
            .values()
            .map(|p| (p.replica_id.to_string(), p.url.to_string()))
            .collect();
        v.sort();
        v
    }

    /// The registry epoch this relay's tunnels of `agent_id` hold (0: not claimed yet).
    pub fn claim_epoch(&self, agent_id: &str) -> Option<u64> {
        self.shared
            .registry
            .tunnels()
            .iter()
            .filter(|t| &*t.agent_id == agent_id)
            .map(|t| t.epoch.load(Ordering::Acquire))
            .max()
    }

    /// Agent tunnels up now (what the `nowconnect_agents_connected` gauge shows).
    pub fn agents_connected(&self) -> usize {
        usize::try_from(self.shared.metrics.agents_connected.get()).unwrap_or(0)
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.conns.load(Ordering::Acquire)
    }

    /// What `/readyz` says: listeners bound, not draining, signing keys cached.
    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    /// Audit records still in memory (the newest [`audit::AUDIT_RING`]), oldest first.
    pub fn audit_records(&self, filter: &AuditFilter) -> Vec<AuditRecord> {
        self.shared.audit.query(filter)
    }

    /// Sources the `/tunnel` abuse controls track now (bounded).
    pub fn tracked_sources(&self) -> usize {
        self.shared.gate.tracked()
    }

    /// Prometheus text of this relay's metrics (what `/metrics` serves).
    pub fn metrics_text(&self) -> String {
        scrape::render(&self.shared)
    }

    /// Where `/mesh` is served: `ha.mesh.listen`'s address, else `tunnel_addr` (HA on only).
    pub fn mesh_addr(&self) -> Option<SocketAddr> {
        self.mesh_addr
    }

    /// Outgoing mesh links up now.
    pub fn mesh_links_up(&self) -> usize {
        self.shared.mesh.as_ref().map_or(0, |m| m.links_up())
    }

    /// Test hook until the registry fills the cluster view: replaces it with `owners`
    /// (connector, relay, agent_id, epoch; their epochs count as the directory's), `epochs`
    /// (newer claims the directory knows) and `peers` (replica_id, mesh URL), and dials new peers.
    #[doc(hidden)]
    pub fn set_cluster_view_for_test(
        &self,
        owners: &[(&str, &str, &str, u64)],
        epochs: &[(&str, u64)],
        peers: &[(&str, &str)],
    ) {
        let mut snap = cluster::Snapshot::default();
        for (connector, relay, agent, epoch) in owners {
            snap.owners
                .entry((*connector).to_owned())
                .or_default()
                .push(cluster::Remote {
                    relay_id: (*relay).into(),
                    agent_id: (*agent).into(),
                    epoch: *epoch,
                });
            snap.epochs.insert((*agent).into(), *epoch);
        }
        for (agent, epoch) in epochs {
            snap.epochs.insert((*agent).into(), *epoch);
        }
        for (id, url) in peers {
            snap.peers.insert(
                (*id).into(),
                cluster::PeerInfo {
                    replica_id: (*id).into(),
                    url: (*url).into(),
                },
            );
        }
        self.shared.cluster.set(snap);
        if let Some(m) = &self.shared.mesh {
            m.sync_peers(&self.shared.root, &self.shared.tasks);
        }
    }

    /// Test hook until the registry claims epochs: sets the claim of the tunnel serving
    /// `agent_id` here; false when no tunnel serves it.
    #[doc(hidden)]
    pub fn set_tunnel_epoch_for_test(&self, agent_id: &str, epoch: u64) -> bool {
        match self.shared.registry.serving(agent_id) {
            Some(a) => {
                a.info.epoch.store(epoch, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Re-reads `path` (with `env`'s overrides, as at start-up) and applies what can change
    /// without dropping a stream (see docs: listeners, TLS pair, allowlists, limits, JWT/JWKS,
    /// PDP and portal settings). `Err`: the one-line reason; nothing changed. Logged and
    /// audited either way. The binary calls this on SIGHUP.
    pub async fn reload(
        &self,
        path: &std::path::Path,
        env: &dyn config::Env,
    ) -> Result<ReloadReport, String> {
        reload::reload_file(&self.shared, path, env).await
    }

    /// As [`RelayHandle::reload`], with a configuration already loaded (tests, embedders).
    pub async fn reload_config(&self, cfg: RelayConfig) -> Result<ReloadReport, String> {
        reload::run(&self.shared, "config:api", Ok(cfg)).await
    }

    /// Graceful stop: stop accepting, let open streams finish for the grace period, then stop.
    pub fn shutdown(&self) {
        self.shared.draining.cancel();
    }

    /// Waits until the relay has fully stopped (after `shutdown()`, or never without it).
    pub async fn wait(mut self) {
        if let Some(h) = self.supervisor.take() {
            let _ = h.await;
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.shared.root.cancel();
        // What was audited so far is in the file (a restart in the same process reads it).
        self.shared.audit.close();
        if let Some(h) = self.supervisor.take() {
            h.abort();
        }
    }
}

async fn bind(what: &str, addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            what: what.to_owned(),
            addr: addr.to_owned(),
            source,
        })
}

fn host_port(host: &str, port: u16) -> String {
    let host = host.trim_matches(|c| c == '[' || c == ']');
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn local_addr(l: &TcpListener, what: &str) -> Result<SocketAddr, StartError> {
    l.local_addr().map_err(|source| StartError::Bind {
        what: what.to_owned(),
        addr: "?".to_owned(),
        source,
    })
}

/// Listeners the caller has bound already, used instead of binding the configured addresses
/// (tests hold a port across a relay restart this way, with no window in which another process
/// can take it). Whatever is not given here is bound from the configuration as usual.
#[derive(Debug, Default)]
pub struct Prebound {
    /// Serves `/tunnel` (and what shares its port) instead of `tunnel.host:tunnel.port`.
    pub tunnel: Option<TcpListener>,
    /// By listener `name`: used instead of binding that listener's `bind` address. A name that
    /// is not in `listeners` is a configuration error.
    pub listeners: HashMap<String, TcpListener>,
    /// With `ha.mode` shadow or active: this directory instead of Redis (`ha.redis_url` is
    /// then not dialed). Relays given clones of one [`MemoryDirectory`] form one service in a
    /// single process. Ignored with HA off.
    pub directory: Option<MemoryDirectory>,
}

/// Binds `/tunnel`, the optional metrics port and every listener, then runs the relay, all on
/// the caller's runtime.
pub async fn start(cfg: RelayConfig) -> Result<RelayHandle, StartError> {
    start_with(cfg, None, Prebound::default()).await
}

/// As [`start`], with each HTTP connection (and so each tunnel, with its streams) placed on one
/// of `shards` (see [`Shards`]). The binary runs this way.
pub async fn start_sharded(
    cfg: RelayConfig,
    shards: Option<Arc<Shards>>,
) -> Result<RelayHandle, StartError> {
    start_with(cfg, shards, Prebound::default()).await
}

/// As [`start_sharded`], serving on the listeners in `prebound` instead of binding their
/// configured addresses.
pub async fn start_with(
    cfg: RelayConfig,
    shards: Option<Arc<Shards>>,
    prebound: Prebound,
) -> Result<RelayHandle, StartError> {
    for w in &cfg.warnings {
        warn!("config: {w}");
    }
    let Prebound {
        tunnel: prebound_tunnel,
        listeners: mut prebound_listeners,
        directory,
    } = prebound;
    let directory = cluster::run::directory(&cfg, directory).map_err(StartError::Config)?;
    if let Some(name) = prebound_listeners
        .keys()
        .find(|n| !cfg.listeners.iter().any(|l| &l.name == *n))
    {
        return Err(StartError::Config(format!(
            "a prebound listener is named `{name}`, which is not in listeners"
        )));
    }
    let ha_on = cfg.ha.mode != config::HaMode::Off;
    let mesh_crypto = match (&cfg.ha.mesh.tls, ha_on) {
        (Some(t), true) => Some(mesh::MeshCrypto::load(t).map_err(StartError::Config)?),
        _ => None,
    };
    // `/mesh` on the tunnel server unless it has a listener of its own.
    let mesh_shares_tunnel = ha_on && cfg.ha.mesh.listen.is_none();
    if mesh_shares_tunnel && cfg.ha.mesh.require_mtls && cfg.tunnel.tls.is_none() {
        return Err(StartError::Config(
            "ha.mesh.require_mtls: /mesh is served on the tunnel server, which has no tunnel.tls; \
             set tunnel.tls or ha.mesh.listen"
                .to_owned(),
        ));
    }
    let mesh_roots = mesh_crypto
        .as_ref()
        .filter(|_| mesh_shares_tunnel && cfg.ha.mesh.require_mtls)
        .map(|c| c.roots.clone());
    let tls = match &cfg.tunnel.tls {
        Some(t) => Some(tls::TunnelTls {
            live: tls::LiveAcceptor::new(
                tls::acceptor(t, mesh_roots.clone()).map_err(StartError::Config)?,
            ),
            mesh_roots,
        }),
        None => None,
    };
    let mesh_listener = match (cfg.ha.mesh.listen, ha_on) {
        (Some(addr), true) => Some(bind("mesh (ha.mesh.listen)", &addr.to_string()).await?),
        _ => None,
    };

    let tunnel_listener = match prebound_tunnel {
        Some(l) => l,
        None => {
            let tunnel_bind = host_port(&cfg.tunnel.host, cfg.tunnel.port);
            bind("tunnel (tunnel.host/tunnel.port)", &tunnel_bind).await?
        }
    };
    let tunnel_addr = local_addr(&tunnel_listener, "tunnel")?;
    if cfg.security.dev_bypass {
        if !tunnel_addr.ip().is_loopback() {
            return Err(StartError::Config(format!(
                "security.dev_bypass: refused because /tunnel is bound to non-loopback {tunnel_addr}"
            )));
        }
        warn!(
            "!!! DEV BYPASS ENABLED: agents connect to {tunnel_addr} WITHOUT AUTHENTICATION. \
             For local development only; never use security.dev_bypass / NOWCONNECT_DEV_BYPASS in production !!!"
        );
    }
    let metrics_listener = match cfg.observability.metrics_port {
        Some(port) => {
            let addr = host_port(&cfg.tunnel.host, port);
            Some(bind("metrics (observability.metrics_port)", &addr).await?)
        }
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => local_addr(l, "metrics")?,
        None => tunnel_addr,
    };

    let portal_listener = match cfg.portal.bind {
        Some(addr) => Some(bind("portal (portal.bind)", &addr.to_string()).await?),
        None => None,
    };
    let portal_addr = match &portal_listener {
        Some(l) => local_addr(l, "portal")?,
        None => tunnel_addr,
    };

    let metrics = Arc::new(metrics::Metrics::new());
    let audit = audit::Audit::open(audit::AUDIT_RING, cfg.audit_file.clone(), &metrics)
        .map_err(StartError::Config)?
        .limited(cfg.audit_limits);
    let state = state::State::open(
        cfg.state_dir.as_deref(),
        cfg.portal.defaults,
        metrics.clone(),
    )
    .map_err(StartError::Config)?;
    if cfg.state_dir.is_none() {
        info!("state_dir is not set: policy changes and the block list last until the relay stops");
    }
    let checkers = checkers::Checkers::build(&cfg, &metrics)
        .await
        .map_err(StartError::Config)?;
    let mut bound = Vec::with_capacity(cfg.listeners.len());
    for (i, l) in cfg.listeners.iter().enumerate() {
        let what = format!("listeners[{i}] ({})", l.name);
        let listener = match prebound_listeners.remove(&l.name) {
            Some(listener) => listener,
            None => bind(&what, &l.bind.to_string()).await?,
        };
        let addr = local_addr(&listener, &what)?;
        bound.push((l.clone(), listener, addr));
    }

    let cfg_abuse = cfg.security.abuse.clone();
    let buffered = budget::Buffers::new(cfg.limits.max_buffered_bytes, &metrics.buffered_bytes);
    let tunnel_rules = registry::Rules {
        max_per_agent: cfg.limits.max_tunnels_per_agent,
        max_per_jti: cfg.limits.max_tunnels_per_jti,
        duplicates: cfg.security.duplicate_agent,
    };
    let cluster = Arc::new(cluster::View::default());
    let streams = TaskTracker::new();
    let shared = Arc::new_cyclic(|weak| Shared {
        mesh: ha_on.then(|| {
            Arc::new(mesh::Core::new(
                weak.clone(),
                &cfg,
                metrics.clone(),
                cluster.clone(),
                mesh_crypto.clone(),
                streams.clone(),
            ))
        }),
        live: arc_swap::ArcSwap::from_pointee(cfg),
        registry: registry::Registry::new(tunnel_rules),
        metrics,
        root: CancellationToken::new(),
        draining: CancellationToken::new(),
        ready: AtomicBool::new(false),
        streams,
        tasks: TaskTracker::new(),
        conns: Arc::new(AtomicUsize::new(0)),
        next_tunnel_id: AtomicU64::new(1),
        audit: Arc::new(audit),
        gate: Arc::new(abuse::Gate::new(cfg_abuse)),
        checkers: checkers::Running::default(),
        state: Arc::new(state),
        sessions: Arc::new(sessions::Sessions::default()),
        listeners: listeners::Listeners::default(),
        shards,
        buffered,
        cluster,
        tls: tls.clone(),
        reloading: tokio::sync::Mutex::new(()),
        history: history::History::default(),
        oidc: ui::oidc::Oidc::default(),
        started_ms: unix_ms(),
    });
    shared
        .checkers
        .install(checkers, &shared.tasks, &shared.root);

    shared
        .tasks
        .spawn(audit::run_ticker(shared.audit.clone(), shared.root.clone()));
    shared.tasks.spawn(portal::history::run(shared.clone()));
    cluster::run::start(&shared, directory, tunnel_addr);
    for (l, socket, addr) in bound {
        start_listener(&shared, &l, socket, addr);
    }
    shared.ready.store(true, Ordering::Release);
    info!(
        event = "relay_started",
        version = env!("CARGO_PKG_VERSION"),
        %tunnel_addr,
        tls = tls.is_some(),
        %metrics_addr,
        "relay HTTP server listening (/tunnel, /healthz, /readyz; /metrics at metrics_addr)"
    );
    let portal_here = portal_listener.is_none();
    // A separate metrics port is the only place `/metrics` is served (it may be firewalled
    // apart from the agents' and operators' ports).
    let metrics_here = metrics_listener.is_none();
    shared.tasks.spawn(http::serve(
        tunnel_listener,
        tls.as_ref().map(|t| t.live.clone()),
        shared.clone(),
        http::Routes {
            tunnel: true,
            mesh: mesh_shares_tunnel,
            portal: portal_here,
            metrics: metrics_here,
        },
    ));
    if let Some(l) = metrics_listener {
        shared.tasks.spawn(http::serve(
            l,
            None,
            shared.clone(),
            http::Routes {
                tunnel: false,
                mesh: false,
                portal: false,
                metrics: true,
            },
        ));
    }
    if let Some(l) = portal_listener {
        info!(event = "portal_started", %portal_addr, "portal API listening (/api/v1)");
        // Same TLS as /tunnel when configured: portal tokens never cross the network in clear.
        shared.tasks.spawn(http::serve(
            l,
            tls.as_ref().map(|t| t.live.clone()),
            shared.clone(),
            http::Routes {
                tunnel: false,
                mesh: false,
                portal: true,
                metrics: metrics_here,
            },
        ));
    }
    let mut mesh_addr = mesh_shares_tunnel.then_some(tunnel_addr);
    if let Some(l) = mesh_listener {
        let addr = local_addr(&l, "mesh")?;
        mesh_addr = Some(addr);
        let require = shared.cfg().ha.mesh.require_mtls;
        let acceptor = mesh_crypto
            .as_ref()
            .filter(|_| require)
            .map(|c| tls::LiveAcceptor::new(c.acceptor.clone()));
        info!(event = "mesh_started", %addr, mtls = acceptor.is_some(), "mesh listening (/mesh)");
        shared.tasks.spawn(http::serve(
            l,
            acceptor,
            shared.clone(),
            http::Routes {
                tunnel: false,
                mesh: true,
                portal: false,
                metrics: false,
            },
        ));
    }
    if let Some(m) = &shared.mesh {
        m.sync_peers(&shared.root, &shared.tasks);
        // Peers the registry discovers later.
        let (m, root, tasks) = (m.clone(), shared.root.clone(), shared.tasks.clone());
        shared.tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => m.sync_peers(&root, &tasks),
                    _ = root.cancelled() => break,
                }
            }
        });
    }
    let supervisor = tokio::spawn(supervise(shared.clone()));
    Ok(RelayHandle {
        shared,
        tunnel_addr,
        metrics_addr,
        portal_addr,
        mesh_addr,
        supervisor: Some(supervisor),
    })
}

/// Records `socket` (bound for `l`) among the running listeners and starts its accept loop.
fn start_listener(
    shared: &Arc<Shared>,
    l: &config::ListenerConfig,
    socket: TcpListener,
    addr: SocketAddr,
) {
    // `connector` as in the reference's logs: the one connector, or an sni listener's connectors.
    let connector = l.connectors().join(",");
    let route_by = l.route_by();
    info!(event = "listener_started", listener = %l.name, %connector, route_by, %addr, "listening");
    let started = shared
        .listeners
        .insert(l, socket, addr, &shared.metrics, &shared.root);
    shared.tasks.spawn(listener::run(started, shared.clone()));
}

/// Waits for shutdown, runs the grace period, then stops everything.
async fn supervise(shared: Arc<Shared>) {
    tokio::select! {
        _ = shared.draining.cancelled() => {}
        _ = shared.root.cancelled() => {}
    }
    shared.draining.cancel();
    let grace = shared.cfg().limits.shutdown_grace;
    let open = shared.streams.len();
    info!(
        open_streams = open,
        grace_ms = grace.as_millis() as u64,
        "shutting down: not accepting new connections"
    );
    shared.streams.close();
    tokio::select! {
        _ = shared.streams.wait() => info!("all streams finished"),
        _ = tokio::time::sleep(grace) => warn!(open_streams = shared.streams.len(), "grace period over; closing the remaining streams"),
        _ = shared.root.cancelled() => {}
    }
    shared.root.cancel();
    shared.tasks.close();
    // Every task watches `root`; the timeout only guards against a bug keeping one alive.
    let all = async {
        shared.tasks.wait().await;
        shared.streams.wait().await;
    };
    if tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .is_err()
    {
        warn!("some tasks did not stop within 5 s");
    }
    shared.audit.close();
    info!(event = "relay_stopped", "relay stopped");
}
