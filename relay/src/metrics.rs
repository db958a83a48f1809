//! Prometheus metrics of the relay, with the reference system's names.
//!
//! Labels stay low-cardinality: connector, direction, code, reason; never a cid or an address.
//! The one `agent` label lives in [`tunnels`], bounded. docs/metrics.md lists every family, and
//! `relay/tests/metrics_catalog.rs` checks that list against a scrape.
//! Hot-path counters are resolved once per listener ([`ConnectorMetrics`]) so moving bytes
//! never hashes a label set.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

mod labels;
pub use labels::*;

mod mesh;
mod plain;
mod sni;
mod tunnels;
pub use mesh::{LinkStateLabels, MeshFrameLabels, MeshMetrics, PeerLabel, PeerReasonLabels};
pub use plain::PlainCounter;
pub use sni::{SniMetrics, SniRejectLabels, SniRoutedLabels};
pub use tunnels::{AgentTunnels, DEPARTED_RETENTION, MAX_AGENTS, OVERLAP};

/// Every metric the relay exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub tcp_connections: Family<ConnectorLabel, Counter>,
    pub tcp_active: Family<ConnectorLabel, Gauge>,
    pub tcp_bytes: Family<BytesLabels, Counter>,
    pub connection_duration: Histogram,
    /// FIN frames sent to agents (the catalog's name, no `_total`: see [`PlainCounter`]).
    pub fin_sent: PlainCounter,
    /// FIN frames received from agents.
    pub fin_recv: PlainCounter,
    pub rst_sent: Family<CodeLabel, PlainCounter>,
    pub rst_recv: Family<CodeLabel, PlainCounter>,
    pub queue_overflow: Family<OverflowLabels, Counter>,
    pub accept_errors: Family<ConnectorLabel, Counter>,
    pub connections_rejected: Family<RejectLabels, Counter>,
    pub agent_connects: Family<VersionLabel, Counter>,
    pub agent_disconnects: Family<ReasonLabel, Counter>,
    pub agents_connected: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Agent tunnels serving each configured connector, sampled at each scrape (0: its clients
    /// are refused).
    pub connector_agents: Family<ConnectorLabel, Gauge>,
    /// Target hosts of each configured connector's multi-host agents by reported state, summed
    /// over agent tunnels, sampled at each scrape (agents' STATUS reports).
    pub connector_targets: Family<TargetStateLabels, Gauge>,
    /// 1 while `/readyz` answers 200, sampled at each scrape.
    pub relay_ready: Gauge,
    pub agent_auth_failures: Family<ReasonLabel, Counter>,
    pub agent_auth_successes: Counter<u64, AtomicU64>,
    pub agent_duplicates: Counter<u64, AtomicU64>,
    /// PDP decisions that allowed a stream (fresh or from the cache).
    pub pdp_allow: Counter,
    /// PDP decisions that denied a stream.
    pub pdp_deny: Counter,
    /// PDP requests that failed or timed out (the stream follows `pdp.fail_open`).
    pub pdp_errors: Counter,
    /// Allow decisions answered from the cache (part of `pdp_allow`).
    pub pdp_cache_hits: Counter,
    /// PDP requests that timed out (part of `pdp_errors`).
    pub pdp_timeouts: Counter,
    /// `nowconnect_tunnel_reconnects_total{agent,reason}`, `nowconnect_tunnel_uptime_seconds{agent}`.
    pub tunnels: AgentTunnels,
    pub jwks_refreshes: Family<JwksRefreshLabels, Counter>,
    pub jwks_keys: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub protocol_errors: Counter<u64, AtomicU64>,
    pub audit_records: Family<AuditLabels, Counter>,
    pub audit_write_errors: Counter<u64, AtomicU64>,
    pub audit_dropped: Family<ReasonLabel, Counter>,
    pub audit_aggregated: Family<ActionLabel, Counter>,
    pub portal_requests: Family<PortalLabels, Counter>,
    pub portal_auth_failures: Family<ReasonLabel, Counter>,
    pub policy_enabled: Family<PolicyLabel, Gauge>,
    pub agents_blocked: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub sessions_terminated: Counter<u64, AtomicU64>,
    pub buffered_bytes: Family<DirLabel, Gauge<i64, std::sync::atomic::AtomicI64>>,
    pub frames_ignored: Counter<u64, AtomicU64>,
    /// HTTP connections closed before authenticating: caps, PROXY headers, deadlines.
    pub http_refused: Family<ReasonLabel, Counter>,
    /// HTTP connections held now that have not authenticated (all HTTP servers).
    pub http_preauth: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Streams an agent answered `connect_failed`, by what the retry did (see `replay`).
    pub open_retries: Family<RetryLabels, Counter>,
    /// HA registry (cluster directory) operations, by op and result.
    pub registry_ops: Family<RegistryOpLabels, Counter>,
    /// 1 while the last registry operation succeeded (HA shadow/active only).
    pub registry_up: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Agents this relay holds a live claim on in the registry.
    pub registry_claims: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// The relay mesh (`nowconnect_mesh_*` and the fencing counters).
    pub mesh: MeshMetrics,
    /// Listeners that route by TLS server name (`nowconnect_sni_*`).
    pub sni: SniMetrics,
    /// Configuration reloads (SIGHUP), by result (`applied`, `refused`).
    pub config_reloads: Family<ResultLabel, Counter>,
    /// Refused authentications of agents and portal callers together, for the dashboard's
    /// history (not exported: the two families above are).
    pub auth_refusals: Counter,
    /// CSP violation reports the dashboard's browsers sent (`nowconnect_ui_csp_reports_total`).
    pub ui_csp_reports: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            tcp_connections: Family::default(),
            tcp_active: Family::default(),
            tcp_bytes: Family::default(),
            // 1 ms .. ~1 h
            connection_duration: Histogram::new([
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                3600.0,
            ]),
            fin_sent: PlainCounter::default(),
            fin_recv: PlainCounter::default(),
            rst_sent: Family::default(),
            rst_recv: Family::default(),
            queue_overflow: Family::default(),
            accept_errors: Family::default(),
            connections_rejected: Family::default(),
            agent_connects: Family::default(),
            agent_disconnects: Family::default(),
            agents_connected: Gauge::default(),
            connector_agents: Family::default(),
            connector_targets: Family::default(),
            relay_ready: Gauge::default(),
            agent_auth_failures: Family::default(),
            agent_auth_successes: Counter::default(),
            agent_duplicates: Counter::default(),
            pdp_allow: Counter::default(),
            pdp_deny: Counter::default(),
            pdp_errors: Counter::default(),
            pdp_cache_hits: Counter::default(),
            pdp_timeouts: Counter::default(),
            tunnels: AgentTunnels::default(),
            jwks_refreshes: Family::default(),
            jwks_keys: Gauge::default(),
            protocol_errors: Counter::default(),
            audit_records: Family::default(),
            audit_write_errors: Counter::default(),
            audit_dropped: Family::default(),
            audit_aggregated: Family::default(),
            portal_requests: Family::default(),
            portal_auth_failures: Family::default(),
            policy_enabled: Family::default(),
            agents_blocked: Gauge::default(),
            sessions_terminated: Counter::default(),
            buffered_bytes: Family::default(),
            frames_ignored: Counter::default(),
            http_refused: Family::default(),
            http_preauth: Gauge::default(),
            open_retries: Family::default(),
            registry_ops: Family::default(),
            registry_up: Gauge::default(),
            registry_claims: Gauge::default(),
            mesh: MeshMetrics::new(),
            sni: SniMetrics::default(),
            config_reloads: Family::default(),
            auth_refusals: Counter::default(),
            ui_csp_reports: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "nowconnect_ui_csp_reports",
            "Content-Security-Policy violation reports sent by browsers showing the dashboard (/ui/)",
            m.ui_csp_reports.clone(),
        );
        registry.register(
            "nowconnect_config_reloads",
            "Configuration reloads (SIGHUP), by result (applied, refused: the running configuration stayed)",
            m.config_reloads.clone(),
        );
        // Counters get `_total` appended by the encoder.
        registry.register(
            "nowconnect_registry_ops",
            "HA registry operations (claim, refresh, release, announce, load, sweep), by result (ok, error)",
            m.registry_ops.clone(),
        );
        registry.register(
            "nowconnect_registry_up",
            "1 while the HA registry (Redis) answers; 0 while it does not (HA shadow/active only)",
            m.registry_up.clone(),
        );
        registry.register(
            "nowconnect_registry_claims",
            "Agents this relay holds a live claim on in the HA registry",
            m.registry_claims.clone(),
        );
        registry.register(
            "nowconnect_tcp_connections",
            "Client TCP connections accepted on connector listeners",
            m.tcp_connections.clone(),
        );
        registry.register(
            "nowconnect_tcp_active_connections",
            "Client TCP connections open now",
            m.tcp_active.clone(),
        );
        registry.register(
            "nowconnect_tcp_bytes",
            "Payload bytes relayed (direction c2p: client to agent, the frames' c2a; p2c: agent to client, a2c)",
            m.tcp_bytes.clone(),
        );
        registry.register(
            "nowconnect_connection_duration_seconds",
            "Lifetime of client connections",
            m.connection_duration.clone(),
        );
        // The catalog's FIN/RST counters carry no `_total` (see `PlainCounter`).
        registry.register(
            "nowconnect_fin_sent",
            "FIN frames sent to agents (a client finished sending)",
            m.fin_sent.clone(),
        );
        registry.register(
            "nowconnect_fin_recv",
            "FIN frames received from agents (a target finished sending)",
            m.fin_recv.clone(),
        );
        registry.register(
            "nowconnect_rst_sent",
            "RST frames sent to agents, by code",
            m.rst_sent.clone(),
        );
        registry.register(
            "nowconnect_rst_recv",
            "RST frames received from agents, by code",
            m.rst_recv.clone(),
        );
        registry.register_collector(m.tunnels.collector());
        // Every RST code at 0 from the start: the families show their un-suffixed samples (and
        // boards their zeros) before the first reset.
        for code in nowconnect_shared::RstCode::ALL {
            let label = CodeLabel {
                code: code.as_str(),
            };
            let _ = m.rst_sent.get_or_create(&label);
            let _ = m.rst_recv.get_or_create(&label);
        }
        registry.register(
            "nowconnect_queue_overflow",
            "Streams reset because a per-stream queue overflowed (side: relay, or agent when its RST says queue_overflow)",
            m.queue_overflow.clone(),
        );
        registry.register(
            "nowconnect_listener_accept_errors",
            "Errors accepting client connections",
            m.accept_errors.clone(),
        );
        registry.register(
            "nowconnect_connections_rejected",
            "Client connections closed before any byte was relayed (no_agent, max_conn_total, max_conn_per_source, \
             cidr_blocked, pdp_denied, scope_denied, max_streams_per_agent)",
            m.connections_rejected.clone(),
        );
        registry.register(
            "nowconnect_buffered_bytes",
            "Stream bytes the relay holds, relay-wide (a2c: for clients not reading yet, and the \
             window growth reserved for streams; c2a: \
             for agents); each direction is bounded by half of limits.max_buffered_bytes",
            m.buffered_bytes.clone(),
        );
        registry.register(
            "nowconnect_frames_ignored",
            "Frames from agents for streams that do not exist (or no longer), dropped unanswered",
            m.frames_ignored.clone(),
        );
        registry.register(
            "nowconnect_agent_connects",
            "Agent tunnels registered (HELLO accepted)",
            m.agent_connects.clone(),
        );
        registry.register(
            "nowconnect_agent_disconnects",
            "Agent tunnels ended, by reason",
            m.agent_disconnects.clone(),
        );
        registry.register(
            "nowconnect_connector_agents",
            "Agent tunnels serving each configured connector now (0: its clients are refused)",
            m.connector_agents.clone(),
        );
        registry.register(
            "nowconnect_connector_targets",
            "Target hosts behind each configured connector as its agents last reported them, by state (up, down), summed over agent tunnels",
            m.connector_targets.clone(),
        );
        registry.register(
            "nowconnect_relay_ready",
            "1 while /readyz answers 200 (listeners bound, keys loaded, not draining), else 0",
            m.relay_ready.clone(),
        );
        registry.register(
            "nowconnect_agents_connected",
            "Agent tunnels registered now",
            m.agents_connected.clone(),
        );
        registry.register(
            "nowconnect_agent_auth_failures",
            "Agent tunnels refused (at the upgrade or at HELLO), by reason",
            m.agent_auth_failures.clone(),
        );
        registry.register(
            "nowconnect_agent_auth_successes",
            "Agent tunnel upgrades admitted (token accepted, or the dev bypass)",
            m.agent_auth_successes.clone(),
        );
        registry.register(
            "nowconnect_agent_duplicates",
            "Tunnels whose agent_id was already connected from another source address (admitted or not)",
            m.agent_duplicates.clone(),
        );
        registry.register(
            "nowconnect_pdp_allow",
            "Streams the PDP allowed (fresh answers and cache hits)",
            m.pdp_allow.clone(),
        );
        registry.register(
            "nowconnect_pdp_deny",
            "Streams the PDP denied",
            m.pdp_deny.clone(),
        );
        registry.register(
            "nowconnect_pdp_errors",
            "PDP requests that failed or timed out (the stream then follows pdp.fail_open)",
            m.pdp_errors.clone(),
        );
        registry.register(
            "nowconnect_pdp_cache_hits",
            "Allow decisions answered from the PDP cache (counted in nowconnect_pdp_allow_total too)",
            m.pdp_cache_hits.clone(),
        );
        registry.register(
            "nowconnect_pdp_timeouts",
            "PDP requests that timed out (counted in nowconnect_pdp_errors_total too)",
            m.pdp_timeouts.clone(),
        );
        registry.register(
            "nowconnect_jwks_refreshes",
            "JWKS fetches, by trigger (startup, periodic, unknown_kid) and result (ok, error)",
            m.jwks_refreshes.clone(),
        );
        registry.register(
            "nowconnect_jwks_keys",
            "Signing keys cached from the JWKS",
            m.jwks_keys.clone(),
        );
        registry.register(
            "nowconnect_protocol_errors",
            "Frames refused as protocol errors",
            m.protocol_errors.clone(),
        );
        registry.register(
            "nowconnect_audit_records",
            "Audit records written, by action and result (success, failure)",
            m.audit_records.clone(),
        );
        registry.register(
            "nowconnect_audit_write_errors",
            "Audit records that could not be appended to audit.file (they stay in memory and the log)",
            m.audit_write_errors.clone(),
        );
        registry.register(
            "nowconnect_audit_dropped",
            "Audit records that got no line in audit.file (they stay in memory and the log): \
             queue_full (a refusal, the writer behind), writer_stalled (waited 1 s in vain)",
            m.audit_dropped.clone(),
        );
        registry.register(
            "nowconnect_audit_aggregated",
            "Refusals past the audit refusal limits, counted in an aggregate record instead of \
             one of their own, by action",
            m.audit_aggregated.clone(),
        );
        registry.register(
            "nowconnect_portal_requests",
            "Portal API requests, by method, route template and status",
            m.portal_requests.clone(),
        );
        registry.register(
            "nowconnect_portal_auth_failures",
            "Portal API requests refused before any handler ran, by reason",
            m.portal_auth_failures.clone(),
        );
        registry.register(
            "nowconnect_policy_enabled",
            "Security policies now in force (1 on, 0 off)",
            m.policy_enabled.clone(),
        );
        registry.register(
            "nowconnect_agents_blocked",
            "agent_ids on the portal's block list",
            m.agents_blocked.clone(),
        );
        registry.register(
            "nowconnect_sessions_terminated",
            "Sessions (streams) terminated by an operator through the portal",
            m.sessions_terminated.clone(),
        );
        registry.register(
            "nowconnect_http_refused",
            "HTTP connections closed before authenticating (total_cap, source_cap, \
             proxy_untrusted, proxy_header, proxy_timeout, tls_timeout, head_timeout, \
             idle_timeout, head_too_large)",
            m.http_refused.clone(),
        );
        registry.register(
            "nowconnect_http_preauth_connections",
            "HTTP connections open now that have not authenticated (not upgraded to a tunnel)",
            m.http_preauth.clone(),
        );
        registry.register(
            "nowconnect_open_retries",
            "Streams an agent answered with RST connect_failed, by what the relay did: rerouted \
             (reopened on another agent), no_agent, not_replayable, too_late, failed_again (the \
             retry failed too); all but rerouted reset the client",
            m.open_retries.clone(),
        );
        m.mesh.register(&mut registry);
        m.sni.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts a refused agent authentication (`/tunnel` or HELLO).
    pub fn agent_auth_failed(&self, reason: &'static str) {
        self.agent_auth_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
        self.auth_refusals.inc();
    }

    /// Counts a refused portal request.
    pub fn portal_auth_failed(&self, reason: &'static str) {
        self.portal_auth_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
        self.auth_refusals.inc();
    }

    /// Per-connector handles for the data path.
    pub fn connector(&self, connector: &str) -> ConnectorMetrics {
        let label = ConnectorLabel {
            connector: connector.to_owned(),
        };
        let bytes = |direction| BytesLabels {
            direction,
            connector: connector.to_owned(),
        };
        // One statement per family: `get_or_create` returns a read guard, and a second call on
        // the same family within one statement would wait on it for the write lock (deadlock).
        let connections = self.tcp_connections.get_or_create(&label).clone();
        let active = self.tcp_active.get_or_create(&label).clone();
        let bytes_c2a = self.tcp_bytes.get_or_create(&bytes(C2P)).clone();
        let bytes_a2c = self.tcp_bytes.get_or_create(&bytes(P2C)).clone();
        let overflow = OverflowLabels {
            side: "relay",
            connector: connector.to_owned(),
        };
        let queue_overflow = self.queue_overflow.get_or_create(&overflow).clone();
        let accept_errors = self.accept_errors.get_or_create(&label).clone();
        ConnectorMetrics {
            connections,
            active,
            bytes_c2a,
            bytes_a2c,
            queue_overflow,
            accept_errors,
        }
    }

    /// One HTTP connection closed before it authenticated.
    pub fn http_refused(&self, reason: &'static str) {
        self.http_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A stream an agent could not connect, and what its retry did.
    pub fn open_retry(&self, connector: &str, result: &'static str) {
        self.open_retries
            .get_or_create(&RetryLabels {
                connector: connector.to_owned(),
                result,
            })
            .inc();
    }

    pub fn rejected(&self, connector: &str, reason: &'static str) {
        self.connections_rejected
            .get_or_create(&RejectLabels {
                connector: connector.to_owned(),
                reason,
            })
            .inc();
    }
}

/// Counters of one connector, resolved once (cheap clones of shared atomics).
#[derive(Debug, Clone)]
pub struct ConnectorMetrics {
    pub connections: Counter,
    pub active: Gauge,
    pub bytes_c2a: Counter,
    pub bytes_a2c: Counter,
    pub queue_overflow: Counter,
    pub accept_errors: Counter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_reference() {
        let m = Metrics::new();
        let c = m.connector("addomain");
        c.connections.inc();
        c.bytes_c2a.inc_by(5);
        m.fin_sent.inc();
        m.rst_recv
            .get_or_create(&CodeLabel {
                code: "connect_failed",
            })
            .inc();
        let text = m.render();
        for needle in [
            "nowconnect_tcp_connections_total{connector=\"addomain\"} 1",
            "nowconnect_tcp_active_connections{connector=\"addomain\"} 0",
            "nowconnect_tcp_bytes_total{direction=\"c2p\",connector=\"addomain\"} 5",
            "nowconnect_tcp_bytes_total{direction=\"p2c\",connector=\"addomain\"} 0",
            "nowconnect_connection_duration_seconds_bucket",
            "# TYPE nowconnect_fin_sent counter\nnowconnect_fin_sent 1\n",
            "# TYPE nowconnect_fin_recv counter\nnowconnect_fin_recv 0\n",
            "nowconnect_rst_recv{code=\"connect_failed\"} 1",
            "# TYPE nowconnect_tunnel_reconnects counter",
            "# TYPE nowconnect_tunnel_uptime_seconds gauge",
            "nowconnect_agents_connected 0",
            "nowconnect_queue_overflow_total{side=\"relay\",connector=\"addomain\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
