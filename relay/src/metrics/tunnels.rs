//! The per-agent tunnel series of the reference's catalog:
//! `nowconnect_tunnel_reconnects_total{agent,reason}` and `nowconnect_tunnel_uptime_seconds{agent}`.
//!
//! These are the only series with an `agent` label, so this module bounds them: at most
//! [`MAX_AGENTS`] agents are tracked, and an agent with no live tunnel left is forgotten
//! [`DEPARTED_RETENTION`] after its last tunnel ended (both of its series disappear then).
//! The book takes `now` from its callers; the collector reads the clock once per scrape.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Agents tracked at once (live or recently departed). Past this, the departed agent that left
/// first is forgotten; when all of them are live, a new agent gets no series.
pub const MAX_AGENTS: usize = 2048;
/// How long a departed agent's series stay after its last tunnel ended.
pub const DEPARTED_RETENTION: Duration = Duration::from_secs(600);
/// The reconnect reason when the agent opened a tunnel while an earlier one was still up
/// (it superseded it, or waits behind it on standby). The other reasons are the previous
/// tunnel's end reasons (`agent_disconnects`' labels).
pub const OVERLAP: &str = "overlap";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabel {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentReasonLabels {
    agent: String,
    reason: &'static str,
}

#[derive(Debug, Default)]
struct Agent {
    /// Live tunnels and when each opened.
    live: Vec<(u64, Instant)>,
    /// The last tunnel that ended: its reason and when.
    last_end: Option<(&'static str, Instant)>,
    /// Reconnects by reason (a fixed set of labels, so this stays small).
    reconnects: BTreeMap<&'static str, u64>,
}

impl Agent {
    fn departed_before(&self, cutoff: Instant) -> bool {
        self.live.is_empty() && self.last_end.is_none_or(|(_, at)| at <= cutoff)
    }
}

/// The pure bookkeeping behind the two families.
#[derive(Debug, Default)]
struct Book {
    agents: HashMap<String, Agent>,
}

impl Book {
    fn prune(&mut self, now: Instant) {
        if let Some(cutoff) = now.checked_sub(DEPARTED_RETENTION) {
            self.agents.retain(|_, a| !a.departed_before(cutoff));
        }
    }

    fn opened(&mut self, agent: &str, tunnel: u64, now: Instant) {
        self.prune(now);
        if !self.agents.contains_key(agent) && self.agents.len() >= MAX_AGENTS {
            let oldest = self
                .agents
                .iter()
                .filter(|(_, a)| a.live.is_empty())
                .min_by_key(|(_, a)| a.last_end.map(|(_, at)| at))
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => {
                    self.agents.remove(&id);
                }
                None => return,
            }
        }
        let a = self.agents.entry(agent.to_owned()).or_default();
        let reason = if !a.live.is_empty() {
            Some(OVERLAP)
        } else {
            a.last_end.map(|(reason, _)| reason)
        };
        if let Some(reason) = reason {
            *a.reconnects.entry(reason).or_default() += 1;
        }
        a.live.push((tunnel, now));
    }

    fn closed(&mut self, agent: &str, tunnel: u64, reason: &'static str, now: Instant) {
        if let Some(a) = self.agents.get_mut(agent) {
            let before = a.live.len();
            a.live.retain(|(id, _)| *id != tunnel);
            if a.live.len() != before {
                a.last_end = Some((reason, now));
            }
        }
        self.prune(now);
    }

    /// Seconds the agent has been connected without a gap: since the oldest of its live
    /// tunnels opened; 0 once it has none.
    fn uptime(a: &Agent, now: Instant) -> f64 {
        a.live
            .iter()
            .map(|(_, at)| now.saturating_duration_since(*at))
            .max()
            .unwrap_or_default()
            .as_secs_f64()
    }
}

/// Shared handle: the tunnel code reports to it, the registry scrapes it.
#[derive(Debug, Clone, Default)]
pub struct AgentTunnels {
    book: Arc<Mutex<Book>>,
}

impl AgentTunnels {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tunnel of `agent` registered (HELLO accepted). Counts a reconnect when the agent had a
    /// tunnel before (still live, or ended within [`DEPARTED_RETENTION`]).
    pub fn opened(&self, agent: &str, tunnel: u64, now: Instant) {
        self.book().opened(agent, tunnel, now);
    }

    /// A registered tunnel ended, with `reason` (a fixed label, `agent_disconnects`' reason).
    pub fn closed(&self, agent: &str, tunnel: u64, reason: &'static str, now: Instant) {
        self.book().closed(agent, tunnel, reason, now);
    }

    /// Agents with series now (for tests and the bound).
    pub fn tracked(&self, now: Instant) -> usize {
        let mut book = self.book();
        book.prune(now);
        book.agents.len()
    }

    /// The collector that writes both families, read at each scrape.
    pub(super) fn collector(&self) -> Box<dyn Collector> {
        Box::new(TunnelCollector(self.clone()))
    }

    fn encode_at(&self, mut encoder: DescriptorEncoder, now: Instant) -> std::fmt::Result {
        let mut book = self.book();
        book.prune(now);
        let mut agents: Vec<(&String, &Agent)> = book.agents.iter().collect();
        agents.sort_by(|a, b| a.0.cmp(b.0));
        {
            let mut family = encoder.encode_descriptor(
                "nowconnect_tunnel_reconnects",
                "Agent tunnels registered by an agent_id that had one before (live, or ended \
                 within the last 10 minutes), by the previous tunnel's end reason (overlap: \
                 it was still up).",
                None,
                MetricType::Counter,
            )?;
            for (agent, a) in &agents {
                for (reason, n) in &a.reconnects {
                    let labels = AgentReasonLabels {
                        agent: (*agent).clone(),
                        reason,
                    };
                    ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "nowconnect_tunnel_uptime_seconds",
            "Seconds each agent has been connected without a gap (since its oldest live tunnel \
             opened); 0 after its last tunnel ended, removed 10 minutes later.",
            None,
            MetricType::Gauge,
        )?;
        for (agent, a) in &agents {
            let labels = AgentLabel {
                agent: (*agent).clone(),
            };
            ConstGauge::new(Book::uptime(a, now)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct TunnelCollector(AgentTunnels);

impl Collector for TunnelCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        self.0.encode_at(encoder, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reconnects(t: &AgentTunnels, agent: &str) -> BTreeMap<&'static str, u64> {
        t.book()
            .agents
            .get(agent)
            .map(|a| a.reconnects.clone())
            .unwrap_or_default()
    }

    #[test]
    fn a_second_tunnel_counts_the_first_ones_end_reason() {
        let t = AgentTunnels::default();
        let t0 = Instant::now();
        t.opened("a1", 1, t0);
        assert!(
            reconnects(&t, "a1").is_empty(),
            "a first tunnel is no reconnect"
        );
        t.closed("a1", 1, "ping_timeout", t0 + Duration::from_secs(5));
        t.opened("a1", 2, t0 + Duration::from_secs(6));
        // Opened while tunnel 2 is up: an overlap.
        t.opened("a1", 3, t0 + Duration::from_secs(7));
        let r = reconnects(&t, "a1");
        assert_eq!(r.get("ping_timeout"), Some(&1));
        assert_eq!(r.get(OVERLAP), Some(&1));
        let book = t.book();
        let a = book.agents.get("a1").expect("tracked");
        assert_eq!(Book::uptime(a, t0 + Duration::from_secs(10)), 4.0);
    }

    #[test]
    fn departed_agents_are_forgotten_after_the_retention() {
        let t = AgentTunnels::default();
        let t0 = Instant::now();
        t.opened("gone", 1, t0);
        t.opened("stays", 2, t0);
        t.closed("gone", 1, "closed", t0 + Duration::from_secs(1));
        let just_before = t0 + Duration::from_secs(1) + DEPARTED_RETENTION - Duration::from_secs(1);
        assert_eq!(t.tracked(just_before), 2);
        {
            let book = t.book();
            assert_eq!(Book::uptime(&book.agents["gone"], just_before), 0.0);
        }
        assert_eq!(
            t.tracked(t0 + Duration::from_secs(1) + DEPARTED_RETENTION),
            1
        );
        // The live agent stays however long it lives.
        assert_eq!(t.tracked(t0 + DEPARTED_RETENTION * 10), 1);
        // Forgotten: its next tunnel is a first one again.
        t.opened("gone", 3, t0 + DEPARTED_RETENTION * 10);
        assert!(reconnects(&t, "gone").is_empty());
    }

    #[test]
    fn at_most_max_agents_are_tracked() {
        let t = AgentTunnels::default();
        let t0 = Instant::now();
        for i in 0..MAX_AGENTS as u64 {
            t.opened(&format!("agent-{i}"), i, t0);
        }
        // All live: a newcomer gets no series.
        t.opened("late", 1_000_000, t0);
        assert_eq!(t.tracked(t0), MAX_AGENTS);
        assert!(!t.book().agents.contains_key("late"));
        // Two departures; the newcomer evicts the one that left first.
        t.closed("agent-7", 7, "closed", t0 + Duration::from_secs(1));
        t.closed("agent-9", 9, "closed", t0 + Duration::from_secs(2));
        t.opened("late", 1_000_001, t0 + Duration::from_secs(3));
        assert_eq!(t.tracked(t0 + Duration::from_secs(3)), MAX_AGENTS);
        let book = t.book();
        assert!(book.agents.contains_key("late"));
        assert!(!book.agents.contains_key("agent-7"));
        assert!(book.agents.contains_key("agent-9"));
    }

    #[test]
    fn scrape_shows_both_families_and_drops_departed_series() {
        let t = AgentTunnels::default();
        let t0 = Instant::now();
        t.opened("edge-1", 1, t0);
        t.closed("edge-1", 1, "agent_closed", t0 + Duration::from_secs(1));
        t.opened("edge-1", 2, t0 + Duration::from_secs(2));
        t.closed("edge-1", 2, "closed", t0 + Duration::from_secs(3));
        let render = |now| {
            let mut out = String::new();
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register_collector(Box::new(AtTime(t.clone(), now)));
            prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
            out
        };
        let text = render(t0 + Duration::from_secs(4));
        assert!(
            text.contains(
                "nowconnect_tunnel_reconnects_total{agent=\"edge-1\",reason=\"agent_closed\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("nowconnect_tunnel_uptime_seconds{agent=\"edge-1\"} 0.0\n"),
            "{text}"
        );
        let later = render(t0 + Duration::from_secs(3) + DEPARTED_RETENTION);
        assert!(later.contains("# TYPE nowconnect_tunnel_reconnects counter"));
        assert!(later.contains("# TYPE nowconnect_tunnel_uptime_seconds gauge"));
        assert!(!later.contains("edge-1"), "{later}");
    }

    #[derive(Debug)]
    struct AtTime(AgentTunnels, Instant);

    impl Collector for AtTime {
        fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
            self.0.encode_at(encoder, self.1)
        }
    }
}
