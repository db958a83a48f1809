//! What each workload measured, and the report rows, ratios and budgets made from it.

use super::ldap;
use super::load::Bulk;
use super::proc::Sample;
use super::report::{Cell, Report};
use super::settings::Settings;
use super::stats::{summarize, Summary};

/// CPU of relay, agent and this process, and the machine's busy share, over some workload.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Cpu {
    pub(super) relay_s: f64,
    pub(super) agent_s: f64,
    /// This process: clients and targets.
    pub(super) client_s: f64,
    pub(super) wall_s: f64,
    /// Busy jiffies of all cores over all jiffies (summed, to average over several windows).
    pub(super) machine_busy: u64,
    pub(super) machine_total: u64,
}

impl Cpu {
    pub(super) fn tunnel_s(&self) -> f64 {
        self.relay_s + self.agent_s
    }

    pub(super) fn busy_share(&self) -> f64 {
        if self.machine_total == 0 {
            f64::NAN
        } else {
            self.machine_busy as f64 / self.machine_total as f64
        }
    }

    pub(super) fn add(&mut self, o: &Cpu) {
        self.relay_s += o.relay_s;
        self.agent_s += o.agent_s;
        self.client_s += o.client_s;
        self.wall_s += o.wall_s;
        self.machine_busy += o.machine_busy;
        self.machine_total += o.machine_total;
    }
}

/// RSS idle and with N idle streams; setup latency of those streams (and of N direct ones).
pub(super) struct Memory {
    pub(super) relay_idle: Sample,
    pub(super) agent_idle: Sample,
    pub(super) relay_before: Sample,
    pub(super) agent_before: Sample,
    pub(super) relay_held: Sample,
    pub(super) agent_held: Sample,
    pub(super) established: usize,
    pub(super) alive: usize,
    pub(super) direct_setup: Summary,
    pub(super) tunnel_setup: Summary,
}

pub(super) struct PingPong {
    pub(super) direct: Summary,
    pub(super) tunnel: Summary,
    pub(super) cpu: Cpu,
}

pub(super) struct BulkCase {
    pub(super) dir: &'static str,
    pub(super) streams: usize,
    pub(super) direct: Vec<Bulk>,
    pub(super) tunnel: Vec<Bulk>,
    /// Through two plain TCP forwarders (one-stream cases only): the floor of the topology.
    pub(super) plain: Vec<Bulk>,
    /// This process during the `plain` runs: client, target and both forwarders.
    pub(super) plain_cpu: Cpu,
    pub(super) direct_cpu: Cpu,
    pub(super) tunnel_cpu: Cpu,
}

/// Median throughput of the rounds.
pub(super) fn median_gbit(runs: &[Bulk]) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(Bulk::gbit_s).collect();
    summarize(&mut v).p50
}

pub(super) struct LdapResult {
    pub(super) direct: ldap::Run,
    pub(super) tunnel: ldap::Run,
    pub(super) cpu: Cpu,
}

pub(super) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub(super) fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

pub(super) fn bulk_rows(rep: &mut Report, bulk: &[BulkCase]) {
    for c in bulk {
        let what = if c.streams == 1 {
            "1 stream".to_owned()
        } else {
            format!("{} streams", c.streams)
        };
        rep.row(
            format!("bulk {}, {what} (Gbit/s)", c.dir),
            median_gbit(&c.direct),
            median_gbit(&c.tunnel),
            2,
        );
        let gd = gib(c.direct.iter().map(|b| b.bytes).sum());
        if !c.plain.is_empty() {
            // The forwarders run in this process: their CPU is what it spent beyond the
            // client and target's share per GiB (measured in the direct runs).
            let plain = median_gbit(&c.plain);
            let gp = gib(c.plain.iter().map(|b| b.bytes).sum());
            let fwd_cpu = c.plain_cpu.client_s / gp - c.direct_cpu.client_s / gd;
            rep.info(
                "  reference: two plain TCP forwarders in a row, no TLS (Gbit/s, x direct; their CPU s per GiB); tunnel / it",
                format!(
                    "{plain:.2} (x{:.2}; {fwd_cpu:.2})",
                    plain / median_gbit(&c.direct)
                ),
                format!("x{:.2}", median_gbit(&c.tunnel) / plain),
                2,
            );
        }
        let gt = gib(c.tunnel.iter().map(|b| b.bytes).sum());
        let (dc, tc) = (&c.direct_cpu, &c.tunnel_cpu);
        rep.info(
            "  CPU s per GiB: direct = client + target; tunnel = relay + agent (relay / agent)",
            format!("{:.2}", dc.client_s / gd),
            format!(
                "{:.2} ({:.2} / {:.2})",
                tc.tunnel_s() / gt,
                tc.relay_s / gt,
                tc.agent_s / gt
            ),
            2,
        );
        rep.info(
            "  machine CPU busy (all cores, every process on the machine)",
            format!("{:.0}%", 100.0 * dc.busy_share()),
            format!("{:.0}%", 100.0 * tc.busy_share()),
            0,
        );
    }
}

pub(super) fn pingpong_rows(rep: &mut Report, s: &Settings, pp: &PingPong) {
    let (d, t, cpu) = (&pp.direct, &pp.tunnel, &pp.cpu);
    let size = s.pingpong_size;
    rep.row(
        format!("ping-pong {size} B round trip p50 (us)"),
        d.p50,
        t.p50,
        0,
    );
    rep.row(
        format!("ping-pong {size} B round trip p99 (us)"),
        d.p99,
        t.p99,
        0,
    );
    rep.row(
        format!("ping-pong {size} B round trip p99.9 (us)"),
        d.p999,
        t.p999,
        0,
    );
    rep.info(
        "  added p99 round trip, tunnel - direct (us)",
        Cell::Missing,
        t.p99 - d.p99,
        0,
    );
    let n = t.n.max(1) as f64;
    rep.info(
        "  relay + agent CPU per round trip (us; relay / agent; % of one core)",
        Cell::Missing,
        format!(
            "{:.1} ({:.1} / {:.1}; {:.0}%)",
            1e6 * cpu.tunnel_s() / n,
            1e6 * cpu.relay_s / n,
            1e6 * cpu.agent_s / n,
            100.0 * cpu.tunnel_s() / cpu.wall_s
        ),
        1,
    );
}

pub(super) fn memory_rows(
    rep: &mut Report,
    s: &Settings,
    m: &Memory,
    relay_end: Sample,
    agent_end: Sample,
) {
    rep.row(
        "new connection setup p50, connect + 1st echo (us)",
        m.direct_setup.p50,
        m.tunnel_setup.p50,
        0,
    );
    rep.row(
        "new connection setup p99 (us)",
        m.direct_setup.p99,
        m.tunnel_setup.p99,
        0,
    );
    rep.info(
        format!(
            "{} idle streams: established / alive after idle",
            s.idle_streams
        ),
        Cell::Missing,
        format!("{} / {}", m.established, m.alive),
        0,
    );
    rep.info(
        format!(
            "relay RSS: idle / with {} idle streams (MiB)",
            s.idle_streams
        ),
        Cell::Missing,
        format!(
            "{:.1} / {:.1}",
            mib(m.relay_idle.rss_kib),
            mib(m.relay_held.rss_kib)
        ),
        1,
    );
    rep.info(
        format!(
            "agent RSS: idle / with {} idle streams (MiB)",
            s.idle_streams
        ),
        Cell::Missing,
        format!(
            "{:.1} / {:.1}",
            mib(m.agent_idle.rss_kib),
            mib(m.agent_held.rss_kib)
        ),
        1,
    );
    let (dr, da) = per_stream_kib(s, m);
    rep.info(
        "memory per idle stream, relay + agent (KiB; relay / agent)",
        Cell::Missing,
        format!("{:.1} ({dr:.1} / {da:.1})", dr + da),
        1,
    );
    rep.info(
        "peak RSS over the whole run, relay / agent (MiB)",
        Cell::Missing,
        format!(
            "{:.1} / {:.1}",
            mib(relay_end.hwm_kib),
            mib(agent_end.hwm_kib)
        ),
        1,
    );
}

/// RSS growth per idle stream (relay, agent), KiB.
pub(super) fn per_stream_kib(s: &Settings, m: &Memory) -> (f64, f64) {
    let n = s.idle_streams.max(1) as f64;
    let d = |held: &Sample, before: &Sample| (held.rss_kib as f64 - before.rss_kib as f64) / n;
    (
        d(&m.relay_held, &m.relay_before),
        d(&m.agent_held, &m.agent_before),
    )
}

pub(super) fn ldap_rows(rep: &mut Report, l: &LdapResult) {
    let sd = summarize(&mut l.direct.ms.clone());
    let st = summarize(&mut l.tunnel.ms.clone());
    rep.row(
        format!(
            "LDAP paged search p50, {} entries in {} pages, 1 connection (ms)",
            l.tunnel.entries, l.tunnel.pages
        ),
        sd.p50,
        st.p50,
        2,
    );
    rep.row("LDAP paged search p99 (ms)", sd.p99, st.p99, 2);
    rep.row(
        "LDAP paged searches per second, back to back",
        l.direct.ms.len() as f64 / l.direct.wall_s,
        l.tunnel.ms.len() as f64 / l.tunnel.wall_s,
        1,
    );
    rep.info(
        "  relay + agent CPU per LDAP search (ms)",
        Cell::Missing,
        1e3 * l.cpu.tunnel_s() / l.tunnel.ms.len().max(1) as f64,
        2,
    );
}

pub(super) fn budgets(
    rep: &mut Report,
    s: &Settings,
    bulk: &[BulkCase],
    pp: Option<&PingPong>,
    m: Option<&Memory>,
) {
    const THROUGHPUT: &str = "one stream over TLS vs direct loopback TCP (bulk up)";
    const ADDED: &str = "added p99 round trip (64 B ping-pong)";
    const MEMORY: &str = "relay + agent memory per idle stream";
    match bulk.iter().find(|c| c.dir == "up" && c.streams == 1) {
        Some(c) => {
            let share = median_gbit(&c.tunnel) / median_gbit(&c.direct);
            rep.budget(
                THROUGHPUT,
                ">= 25%",
                format!("{:.0}%", share * 100.0),
                Some(share >= 0.25),
            );
        }
        None => rep.budget(THROUGHPUT, ">= 25%", "–".into(), None),
    }
    match pp {
        Some(pp) => {
            let added = pp.tunnel.p99 - pp.direct.p99;
            rep.budget(
                ADDED,
                "< 200 us",
                format!("{added:.0} us"),
                Some(added < 200.0),
            );
        }
        None => rep.budget(ADDED, "< 200 us", "–".into(), None),
    }
    match m {
        Some(m) => {
            let (dr, da) = per_stream_kib(s, m);
            rep.budget(
                MEMORY,
                "< 16 KiB",
                format!("{:.1} KiB", dr + da),
                Some(dr + da < 16.0 && m.alive == s.idle_streams),
            );
        }
        None => rep.budget(MEMORY, "< 16 KiB", "–".into(), None),
    }
}
