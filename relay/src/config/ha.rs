//! The `ha` section: several relays as one service (Redis registry, mTLS `/mesh` between
//! relays), with its `NOWCONNECT_HA_*` overrides.
//!
//! `mode: off` (the default, also when `enabled` is false) needs nothing else and leaves a single
//! relay exactly as it was. `shadow` runs the registry and the mesh and only observes them;
//! `active` also delivers streams across relays.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::collector::Collector;
use super::env::{env_str, Env};
use super::raw::{RawHa, RawMesh, RawMeshPeer};

const DEFAULT_SEND_QUEUE_DEPTH: usize = 1024;
const DEFAULT_LINK_INFLIGHT: usize = 16 * 1024 * 1024;
const DEFAULT_CONNECT_BACKOFF_MAX_SEC: u64 = 10;
const DEFAULT_PRESENCE_TTL_SEC: u64 = 15;
/// Mesh peers a relay keeps links to (static plus discovered).
pub const MAX_MESH_PEERS: usize = 32;

/// What the relay does with the other relays of its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HaMode {
    /// A single relay: no registry, no mesh.
    #[default]
    Off,
    /// Registry and mesh run and are observed; streams use local agents only.
    Shadow,
    /// Streams for an agent on another relay go to that relay over the mesh.
    Active,
}

impl HaMode {
    pub fn name(self) -> &'static str {
        match self {
            HaMode::Off => "off",
            HaMode::Shadow => "shadow",
            HaMode::Active => "active",
        }
    }
}

/// A mesh peer named in the configuration (`ha.mesh.peers[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPeer {
    /// The peer's `ha.replica_id`; its certificate must name it.
    pub replica_id: String,
    /// `wss://host:port/mesh`.
    pub url: String,
}

/// `ha.mesh.tls`: the mesh CA and this relay's certificate (server and client).
#[derive(Debug, Clone, PartialEq)]
pub struct MeshTls {
    pub ca_bundle: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    /// A listener of its own for `/mesh`; `None`: the tunnel HTTP server serves `/mesh`.
    pub listen: Option<SocketAddr>,
    /// The `/mesh` URL other relays discover for this one through the registry; `None`: derived
    /// from `listen` (else the tunnel address) when that is a specific address, not published
    /// when it is a wildcard (then only other relays' static `peers` reach this one).
    pub advertise_url: Option<String>,
    /// Static peers; more are discovered through the registry.
    pub peers: Vec<MeshPeer>,
    /// Peers must present a certificate of `tls.ca_bundle` naming their `replica_id`.
    pub require_mtls: bool,
    /// `None` only when `require_mtls` is false (tests, loopback).
    pub tls: Option<MeshTls>,
    /// Frames a link's send queue holds before senders wait.
    pub send_queue_depth: usize,
    /// Stream bytes in flight on one link, both directions each.
    pub per_link_max_inflight_bytes: usize,
    /// Longest wait between two attempts to dial a peer.
    pub connect_backoff_max: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HaConfig {
    pub mode: HaMode,
    /// This relay's name in the service (certificate SAN, registry entries, metrics).
    pub replica_id: String,
    /// `redis://`, `rediss://`, `unix://`, `redis+sentinel://h:p,.../<master>` or
    /// `redis+cluster://h:p,...`; `None` only with `mode: off`. May hold a password: never logged.
    pub redis_url: Option<String>,
    /// How long an entry of this relay lives in Redis without a heartbeat (refreshed at a third).
    pub presence_ttl: Duration,
    pub mesh: MeshConfig,
}

impl HaConfig {
    /// HA off: a single relay.
    pub fn off() -> HaConfig {
        HaConfig {
            mode: HaMode::Off,
            replica_id: "relay".to_owned(),
            redis_url: None,
            presence_ttl: Duration::from_secs(DEFAULT_PRESENCE_TTL_SEC),
            mesh: MeshConfig {
                listen: None,
                advertise_url: None,
                peers: Vec::new(),
                require_mtls: true,
                tls: None,
                send_queue_depth: DEFAULT_SEND_QUEUE_DEPTH,
                per_link_max_inflight_bytes: DEFAULT_LINK_INFLIGHT,
                connect_backoff_max: Duration::from_secs(DEFAULT_CONNECT_BACKOFF_MAX_SEC),
            },
        }
    }
}

fn valid_replica_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
}

/// `NOWCONNECT_HA_MODE`, `NOWCONNECT_HA_REPLICA_ID`, `NOWCONNECT_HA_REDIS_URL` and
/// `NOWCONNECT_HA_MESH_ADVERTISE_URL` override the YAML.
pub(super) fn validate_ha(c: &mut Collector, env: &dyn Env, raw: Option<RawHa>) -> HaConfig {
    let mut ha = HaConfig::off();
    let raw = raw.unwrap_or_default();
    let mode_text = env_str(env, "NOWCONNECT_HA_MODE")
        .map(|v| ("NOWCONNECT_HA_MODE", v))
        .or(raw.mode.map(|m| ("ha.mode", m)));
    let mode = match mode_text {
        None => None,
        Some((key, m)) => match m.trim().to_ascii_lowercase().as_str() {
            "off" => Some(HaMode::Off),
            "shadow" => Some(HaMode::Shadow),
            "active" => Some(HaMode::Active),
            _ => {
                c.bad(key, format!("{m:?} is not one of off, shadow, active"));
                None
            }
        },
    };
    // `enabled: true` without a mode means active (the reference's HA v2); `enabled: false`
    // switches HA off whatever the mode says.
    ha.mode = match (raw.enabled, mode) {
        (Some(false), Some(m)) if m != HaMode::Off => {
            c.warn(format!(
                "ha.enabled is false: ha.mode {} is ignored, HA is off",
                m.name()
            ));
            HaMode::Off
        }
        (Some(false), _) => HaMode::Off,
        (Some(true), None) => HaMode::Active,
        (_, Some(m)) => m,
        (None, None) => HaMode::Off,
    };
    let on = ha.mode != HaMode::Off;
    let replica = env_str(env, "NOWCONNECT_HA_REPLICA_ID")
        .map(|v| ("NOWCONNECT_HA_REPLICA_ID", v))
        .or(raw.replica_id.map(|v| ("ha.replica_id", v)));
    match replica {
        Some((key, id)) if !valid_replica_id(&id) => c.bad(
            key,
            "must be 1-63 letters, digits, '-' or '.' (it is matched against the mesh certificate's DNS name)",
        ),
        Some((_, id)) => ha.replica_id = id,
        None if on => c.bad("ha.replica_id", "is required when ha.mode is shadow or active"),
        None => {}
    }
    let redis = env_str(env, "NOWCONNECT_HA_REDIS_URL")
        .map(|v| ("NOWCONNECT_HA_REDIS_URL", v))
        .or(raw
            .redis_url
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(|v| ("ha.redis_url", v)));
    match redis {
        Some((key, url))
            if ![
                "redis://",
                "rediss://",
                "redis+sentinel://",
                "redis+cluster://",
                "redis+unix://",
                "unix://",
            ]
            .iter()
            .any(|p| url.starts_with(p)) =>
        {
            c.bad(
                key,
                "must start with redis://, rediss://, redis+sentinel://, redis+cluster:// or unix://",
            )
        }
        Some((_, url)) => ha.redis_url = Some(url),
        None if on => c.bad(
            "ha.redis_url",
            "is required when ha.mode is shadow or active",
        ),
        None => {}
    }
    if let Some(ttl) = raw.presence_ttl_sec {
        if !(3..=300).contains(&ttl) {
            c.bad("ha.presence_ttl_sec", "must be between 3 and 300");
        } else {
            ha.presence_ttl = Duration::from_secs(ttl);
        }
    }
    let mut mesh = raw.mesh.unwrap_or_default();
    // Per pod on Kubernetes (`wss://$(POD_IP):9443/mesh`), where one ConfigMap serves every relay.
    if let Some(url) = env_str(env, "NOWCONNECT_HA_MESH_ADVERTISE_URL") {
        mesh.advertise_url = Some(url);
    }
    ha.mesh = validate_mesh(c, mesh, on, ha.mesh);
    ha
}

fn validate_mesh(c: &mut Collector, raw: RawMesh, on: bool, mut m: MeshConfig) -> MeshConfig {
    if let Some(listen) = raw.listen.filter(|l| !l.trim().is_empty()) {
        match listen.trim().parse::<SocketAddr>() {
            Ok(a) => m.listen = Some(a),
            Err(_) => c.bad("ha.mesh.listen", format!("{listen:?} is not an ip:port")),
        }
    }
    if let Some(url) = raw.advertise_url.map(|u| u.trim().to_owned()) {
        let rest = url
            .strip_prefix("wss://")
            .or_else(|| url.strip_prefix("ws://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') && url.len() <= 512 => {
                m.advertise_url = Some(url)
            }
            _ => c.bad(
                "ha.mesh.advertise_url",
                "must be a wss:// (or ws:// without mTLS) URL with a host, e.g. wss://relay-a.internal:8443/mesh",
            ),
        }
    }
    if raw.peers.len() > MAX_MESH_PEERS {
        c.bad("ha.mesh.peers", format!("at most {MAX_MESH_PEERS} peers"));
    }
    for (i, p) in raw.peers.into_iter().take(MAX_MESH_PEERS).enumerate() {
        let RawMeshPeer {
            replica_id: id,
            url,
        } = p;
        let key = format!("ha.mesh.peers[{i}]");
        if !valid_replica_id(&id) {
            c.bad(
                format!("{key}.replica_id"),
                "must be 1-63 letters, digits, '-' or '.'",
            );
            continue;
        }
        if !(url.starts_with("wss://") || url.starts_with("ws://")) {
            c.bad(
                format!("{key}.url"),
                "must be a wss:// (or ws:// without mTLS) URL",
            );
            continue;
        }
        m.peers.push(MeshPeer {
            replica_id: id,
            url,
        });
    }
    m.require_mtls = raw.require_mtls.unwrap_or(true);
    match raw.tls {
        Some(t) => match (t.ca_bundle, t.cert_file, t.key_file) {
            (Some(ca_bundle), Some(cert_file), Some(key_file)) => {
                m.tls = Some(MeshTls {
                    ca_bundle,
                    cert_file,
                    key_file,
                })
            }
            _ => c.bad(
                "ha.mesh.tls",
                "needs ca_bundle, cert_file and key_file together",
            ),
        },
        None if on && m.require_mtls => c.bad(
            "ha.mesh.tls",
            "is required when ha.mesh.require_mtls is true (the default) and HA is on",
        ),
        None => {}
    }
    if on && !m.require_mtls {
        c.warn("ha.mesh.require_mtls is false: any client that reaches /mesh can act as a relay");
    }
    if m.require_mtls
        && m.advertise_url
            .as_deref()
            .is_some_and(|u| u.starts_with("ws://"))
    {
        c.bad(
            "ha.mesh.advertise_url",
            "a ws:// URL cannot be used with require_mtls (peers would refuse to dial it)",
        );
    }
    if m.peers.iter().any(|p| p.url.starts_with("ws://")) && m.require_mtls {
        c.bad(
            "ha.mesh.peers",
            "ws:// peers cannot be used with require_mtls",
        );
    }
    if let Some(d) = raw.send_queue_depth {
        if !(16..=65_536).contains(&d) {
            c.bad("ha.mesh.send_queue_depth", "must be between 16 and 65536");
        } else {
            m.send_queue_depth = d;
        }
    }
    if let Some(b) = raw.per_link_max_inflight_bytes {
        if !(256 * 1024..=1 << 30).contains(&b) {
            c.bad(
                "ha.mesh.per_link_max_inflight_bytes",
                "must be between 262144 and 1073741824",
            );
        } else {
            m.per_link_max_inflight_bytes = b;
        }
    }
    if let Some(s) = raw.connect_backoff_max_sec {
        if !(1..=300).contains(&s) {
            c.bad(
                "ha.mesh.connect_backoff_max_sec",
                "must be between 1 and 300",
            );
        } else {
            m.connect_backoff_max = Duration::from_secs(s);
        }
    }
    m
}
