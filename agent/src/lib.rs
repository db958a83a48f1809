//! NowConnect premise agent.
//!
//! One outbound WebSocket tunnel to the relay (`wss://`, or `ws://` when explicitly allowed for
//! development) carries every stream; each stream is one TCP connection from the agent to an
//! on-premise target. The agent never listens on a data-plane port: its listeners are the
//! health port (`OK` / `READY`) and, when configured, the Prometheus endpoint ([`metrics`]).
//!
//! Modules: [`config`] (flags > env > YAML > defaults), [`cli`] (the flags), [`transport`] (dial:
//! TCP, proxy CONNECT, TLS, WebSocket), [`proxy`] and [`no_proxy`] (the HTTP proxy and its
//! bypass list), [`tls`] (roots, client certificate), `x509` (issuer names for error lines),
//! [`token`] (token file, `exp`), [`reload`] (SIGHUP: what changed, what applies), `tunnel` (sessions, reconnects, token refresh), `stream` (one
//! target connection), `writer` (the tunnel's batching writer), [`health`], [`notify`]
//! (systemd's `sd_notify`), [`metrics`] (the optional `GET /metrics`), [`backoff`].
#![forbid(unsafe_code)]

mod accept;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod health;
pub mod metrics;
pub mod no_proxy;
pub mod notify;
pub mod proxy;
pub mod reload;
mod stream;
pub mod targets;
pub mod tls;
pub mod token;
pub mod transport;
mod tunnel;
pub mod url;
mod writer;
mod x509;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{AgentConfig, ConfigError};
pub use health::HealthState;
pub use notify::Notifier;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration problem found only when it was used (CA bundle, client certificate).
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    #[error("cannot listen on health address {addr}: {source}")]
    HealthBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on metrics address {addr} (metrics.host / metrics.port): {source}")]
    MetricsBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    /// True when the operator's configuration is at fault (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(self, StartError::Tls(_))
    }
}

/// A running agent. Dropping it stops everything at once (tasks aborted, sockets closed), like
/// `kill -9`; [`shutdown`](AgentHandle::shutdown) + [`wait`](AgentHandle::wait) stop it
/// gracefully (the tunnel is closed with a WebSocket Close).
#[derive(Debug)]
pub struct AgentHandle {
    health_addr: SocketAddr,
    /// The bound metrics address; `None` when the endpoint is off.
    metrics_addr: Option<SocketAddr>,
    health: HealthState,
    cancel: CancellationToken,
    /// The running configuration, which [`reload`](AgentHandle::reload) replaces.
    shared: Arc<tunnel::Shared>,
    /// Health server and tunnel supervisor; each owns its children, so aborting them (on drop)
    /// aborts every stream and the writer too.
    tasks: JoinSet<()>,
}

impl AgentHandle {
    /// The bound health address (useful with port 0).
    pub fn health_addr(&self) -> SocketAddr {
        self.health_addr
    }

    /// The bound metrics address (useful with port 0); `None` when `metrics.port` is unset.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// True between HELLO_ACK and the loss of the tunnel (what the health port says).
    pub fn is_ready(&self) -> bool {
        self.health.is_ready()
    }

    /// Why the latest attempt to reach the relay failed (one line, as logged), or why the last
    /// tunnel went down; `None` once a tunnel is READY again.
    pub fn last_error(&self) -> Option<String> {
        self.health.last_error()
    }

    /// Streams open right now, on every tunnel.
    pub fn streams(&self) -> usize {
        self.health.streams()
    }

    /// Tunnels established (HELLO_ACK received) since start, token refreshes included.
    pub fn connects(&self) -> u64 {
        self.health.connects()
    }

    /// How many times the agent went from READY to not READY since start (every transition,
    /// however short; a token refresh that keeps READY throughout adds none).
    pub fn ready_lost(&self) -> u64 {
        self.health.ready_lost()
    }

    /// The running configuration (after the reloads applied so far).
    pub fn config(&self) -> Arc<AgentConfig> {
        self.shared.cfg()
    }

    /// Reloads the configuration with `loaded`, read exactly as at start-up (SIGHUP). An error
    /// is logged (`reload refused: ...`) and changes nothing (`None`). Otherwise the new target
    /// table applies to new streams, a changed exported set is announced on a new tunnel opened
    /// before the old one is retired, and keys that need a restart are logged and keep their
    /// running value; see [`reload`]. Logs what changed, never a value.
    pub fn reload(&self, loaded: Result<AgentConfig, ConfigError>) -> Option<reload::Changes> {
        let new = match loaded {
            Ok(new) => new,
            Err(e) => {
                tracing::error!("reload refused: {e}; the running configuration stays");
                return None;
            }
        };
        let old = self.shared.cfg();
        let changes = reload::diff(&old, &new);
        for key in &changes.needs_restart {
            tracing::warn!(
                key,
                "reload: {key} changed and needs a restart; the running value stays"
            );
        }
        if !changes.is_empty() {
            self.shared
                .config
                .send_replace(Arc::new(reload::apply(&old, new)));
        }
        tracing::info!(
            event = "config_reloaded",
            reannounce = changes.reannounce(),
            "reload applied: {changes}"
        );
        Some(changes)
    }

    /// Starts a graceful stop; [`wait`](AgentHandle::wait) for it to finish.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// Waits until every task has stopped (after [`shutdown`](AgentHandle::shutdown)).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts the agent: health port, metrics endpoint (if configured), then the tunnel (which
/// keeps reconnecting until shutdown). Fails only on what retrying cannot fix: an unusable CA
/// bundle, health or metrics address.
/// Sends no systemd notifications; see [`start_with`].
pub async fn start(cfg: AgentConfig) -> Result<AgentHandle, StartError> {
    start_with(cfg, Notifier::default()).await
}

/// [`start`], notifying systemd through `notify` (READY=1 after the first HELLO_ACK, STATUS=
/// lines, WATCHDOG=1 from the tunnel supervisor, STOPPING=1 on shutdown).
pub async fn start_with(cfg: AgentConfig, notify: Notifier) -> Result<AgentHandle, StartError> {
    for url in cfg.urls.iter().filter(|u| !u.secure) {
        tracing::warn!(relay = %url, "ws:// tunnel without TLS: for local development only");
    }
    let https_proxy = cfg.proxy.as_ref().is_some_and(|p| p.secure);
    // Any wss:// relay of the list needs TLS (and a bad CA bundle fails here, at start).
    let tls = if cfg.urls.iter().any(|u| u.secure) || cfg.url.secure || https_proxy {
        Some(tls::client_configs(&cfg.tls)?)
    } else {
        None
    };
    let addr = cfg.health_addr();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::HealthBind { addr, source })?;
    let health_addr = listener
        .local_addr()
        .map_err(|source| StartError::HealthBind { addr, source })?;
    let metrics_listener = match cfg.metrics_addr {
        None => None,
        Some(addr) => {
            let bound = TcpListener::bind(addr)
                .await
                .and_then(|l| Ok((l.local_addr()?, l)))
                .map_err(|source| StartError::MetricsBind { addr, source })?;
            Some(bound)
        }
    };
    let metrics_addr = metrics_listener.as_ref().map(|(a, _)| *a);
    let health = HealthState::default();
    let metrics = metrics::AgentMetrics::default();
    let cancel = CancellationToken::new();
    let dialer = transport::Dialer::new(&cfg, tls);
    tracing::info!(
        event = "agent_started",
        version = env!("CARGO_PKG_VERSION"),
        agent_id = %cfg.agent_id,
        relay = %cfg.url,
        relays = cfg.urls.len(),
        connections = cfg.connections,
        connectors = ?cfg.connectors().collect::<Vec<_>>(),
        health = %health_addr,
        metrics = %metrics_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        proxy = %dialer.route().map(|p| p.to_string()).unwrap_or_else(|| "none".into()),
        "agent starting"
    );
    let shared = Arc::new(tunnel::Shared::new(
        cfg,
        health.clone(),
        metrics.clone(),
        notify,
    ));
    let mut tasks = JoinSet::new();
    tasks.spawn(health::serve(listener, health.clone(), cancel.clone()));
    if let Some((_, listener)) = metrics_listener {
        let shared = shared.clone();
        let page = move || scrape(&shared);
        tasks.spawn(metrics::serve(listener, page, cancel.clone()));
    }
    tasks.spawn(tunnel::supervise(shared.clone(), dialer, cancel.clone()));
    Ok(AgentHandle {
        health_addr,
        metrics_addr,
        health,
        cancel,
        shared,
        tasks,
    })
}

/// One metrics page: the health state, the counters and the running connector set, read now.
fn scrape(shared: &tunnel::Shared) -> String {
    let (health, counters) = (&shared.health, &shared.metrics);
    let reconnects = counters.reconnects();
    // Every exported connector shows, at 0 until its first failure (so `increase()` works
    // from the first one); a connector a reload removed keeps its count.
    let mut failures = counters.connect_failures();
    let cfg = shared.cfg();
    for name in cfg.connectors() {
        if !failures.contains_key(name) {
            failures.insert(name.to_owned(), 0);
        }
    }
    let mut targets = Vec::new();
    for (name, set) in &cfg.targets {
        let health = set.health();
        for (i, h) in health.hosts().iter().enumerate() {
            targets.push(metrics::TargetSample {
                connector: name.to_string(),
                target: set.label(i).to_string(),
                up: h.up,
                failures: h.failures,
            });
        }
    }
    metrics::render(&metrics::Sample {
        version: env!("CARGO_PKG_VERSION"),
        tunnel_up: health.is_ready(),
        uptime: health.ready_for().unwrap_or_default(),
        streams: health.streams(),
        reconnects: &reconnects,
        bytes: counters.bytes(),
        connect_failures: &failures,
        token_expiry: counters.token_expiry(std::time::SystemTime::now()),
        targets: &targets,
    })
}
