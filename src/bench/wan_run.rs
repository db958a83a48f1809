//! One stream each way over an emulated WAN link (`--only wan`): what the per-stream window
//! costs when the round trip is long.
//!
//! Three cases over the same link (a [`Wan`] emulator with the same delay and rate each time):
//! `tcp`, plain TCP through the emulator straight to the sink and source targets (no tunnel: the
//! link is all there is); `fixed`, through a relay + agent pair whose tunnel crosses the link with
//! `limits.max_stream_window_bytes: 262144` (the old fixed window: at most 256 KiB per round
//! trip); `autotune`, through a second pair with the knob not written (their default). The knob
//! is per process, so each case has its own relay and agent. Then, on the autotune pair, a slow
//! reader: two downloads at once, one of which stops reading after its first MiB and stays
//! connected; the other should still get the link, and the stalled one should hold no more than
//! what it read plus its socket's buffer. Relay and agent RSS after each pair's runs.
//!
//! What this module must never do: wait without a bound (every transfer is bounded by
//! `--wan-secs` and a deadline) or leave a process behind (the pairs are dropped in turn).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::load::{self, Bulk};
use super::pki::{self, Pki};
use super::proc::{self, Sample};
use super::run::Settings;
use super::system::{self, Tunnel};
use super::targets::{self, SinkReport, Target};
use super::wan::{Wan, WanLink};

/// The old fixed per-stream window (`fixed`).
pub const FIXED_WINDOW: u32 = 256 * 1024;
/// What the stalled reader of the slow-reader case reads before it stops.
const STALL_AFTER: u64 = 1 << 20;
/// Byte cap of a transfer: never the limit (the time is), only a bound.
const CAP: u64 = 1 << 40;
/// Slack past `--wan-secs` for a transfer to drain the link's queues.
const DRAIN_SECS: f64 = 60.0;
/// Largest socket receive buffer the stalled reader can report (Linux `tcp_rmem` max is 32 MiB
/// where we bench; more reads as this).
const PEEK_MAX: usize = 64 << 20;

/// What `--only wan` is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct WanSettings {
    /// One-way delay, milliseconds.
    pub delay_ms: u64,
    /// Rate of each direction, Mbit/s.
    pub mbit: u64,
    /// Seconds of each transfer.
    pub secs: u64,
}

impl WanSettings {
    pub fn link(&self) -> WanLink {
        WanLink {
            one_way_delay: Duration::from_millis(self.delay_ms),
            rate_bps: self.mbit.saturating_mul(1_000_000),
        }
    }
}

/// One stream up and one down.
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    pub up: Bulk,
    pub down: Bulk,
}

/// The slow-reader case: the stream that kept reading, and what reached the one that stalled.
#[derive(Debug, Clone, Copy)]
pub struct SlowReader {
    pub other: Bulk,
    /// Bytes the stalled client read before it stopped.
    pub stalled_read: u64,
    /// Bytes waiting unread in its socket halfway through the other's transfer ...
    pub stalled_buffered_mid: u64,
    /// ... and at its end.
    pub stalled_buffered_end: u64,
}

/// Relay and agent RSS of one pair after its runs.
#[derive(Debug, Clone, Copy)]
pub struct Rss {
    pub relay: Sample,
    pub agent: Sample,
}

/// The whole measure.
#[derive(Debug, Clone)]
pub struct WanReport {
    pub settings: WanSettings,
    pub tcp: Pair,
    pub fixed: Pair,
    /// The `limits.max_stream_window_bytes` `fixed` ran with (the initial window: no growth).
    pub fixed_window: Option<u32>,
    pub fixed_rss: Rss,
    pub autotune: Pair,
    pub autotune_rss: Rss,
    pub slow: SlowReader,
    pub notes: Vec<String>,
}

impl WanReport {
    fn link_mbit(&self) -> f64 {
        self.settings.mbit as f64
    }

    /// The fixed window's ceiling: 256 KiB per round trip, Mbit/s.
    fn window_mbit(&self) -> f64 {
        let rtt = self.settings.link().rtt().as_secs_f64();
        if rtt > 0.0 {
            f64::from(FIXED_WINDOW) * 8.0 / rtt / 1e6
        } else {
            f64::INFINITY
        }
    }

    fn pct(&self, mbit: f64) -> f64 {
        mbit / self.link_mbit() * 100.0
    }

    pub fn render(&self) -> String {
        let s = &self.settings;
        let link = s.link();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "wan: one-way delay {} ms (RTT {} ms), {} Mbit/s each way, one stream, {} s per \
             transfer; 256 KiB per RTT = {:.1} Mbit/s\n",
            s.delay_ms,
            link.rtt().as_millis(),
            s.mbit,
            s.secs,
            self.window_mbit()
        );
        let _ = writeln!(
            out,
            "| case | up (Mbit/s) | up (% of link) | down (Mbit/s) | down (% of link) |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        let fixed = match self.fixed_window {
            Some(w) => format!("fixed (max_stream_window_bytes {w})"),
            None => "fixed (built-in window)".to_owned(),
        };
        for (label, p) in [
            ("tcp (no tunnel)", &self.tcp),
            (fixed.as_str(), &self.fixed),
            ("autotune (default cap, 4 MiB)", &self.autotune),
        ] {
            let (up, down) = (mbit(&p.up), mbit(&p.down));
            let _ = writeln!(
                out,
                "| {label} | {up:.1} | {:.0}% | {down:.1} | {:.0}% |",
                self.pct(up),
                self.pct(down)
            );
        }
        let sl = &self.slow;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let other = mbit(&sl.other);
        let _ = writeln!(out, "\n| slow reader (autotune, two downloads) | |");
        let _ = writeln!(out, "|---|---:|");
        let _ = writeln!(
            out,
            "| the reading stream (Mbit/s) | {other:.1} ({:.0}% of link) |",
            self.pct(other)
        );
        let _ = writeln!(
            out,
            "| the stalled stream: read, then unread in its socket at half time / at the end (MiB) \
             | {:.2} + {:.2} / {:.2} |",
            mib(sl.stalled_read),
            mib(sl.stalled_buffered_mid),
            mib(sl.stalled_buffered_end)
        );
        let rss = |k: u64| format!("{:.1}", k as f64 / 1024.0);
        let _ = writeln!(
            out,
            "\n| after the runs (MiB) | fixed | autotune |\n|---|---:|---:|"
        );
        let (f, a) = (&self.fixed_rss, &self.autotune_rss);
        for (what, fv, av) in [
            ("relay RSS", f.relay.rss_kib, a.relay.rss_kib),
            ("relay peak RSS", f.relay.hwm_kib, a.relay.hwm_kib),
            ("agent RSS", f.agent.rss_kib, a.agent.rss_kib),
            ("agent peak RSS", f.agent.hwm_kib, a.agent.hwm_kib),
        ] {
            let _ = writeln!(out, "| {what} | {} | {} |", rss(fv), rss(av));
        }
        for n in &self.notes {
            let _ = writeln!(out, "\n{n}");
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let pair = |p: &Pair| {
            serde_json::json!({
                "up_mbit_s": mbit(&p.up),
                "up_pct_of_link": self.pct(mbit(&p.up)),
                "down_mbit_s": mbit(&p.down),
                "down_pct_of_link": self.pct(mbit(&p.down)),
            })
        };
        let rss = |r: &Rss| {
            serde_json::json!({
                "relay_rss_kib": r.relay.rss_kib,
                "relay_hwm_kib": r.relay.hwm_kib,
                "agent_rss_kib": r.agent.rss_kib,
                "agent_hwm_kib": r.agent.hwm_kib,
            })
        };
        let s = &self.settings;
        serde_json::json!({
            "one_way_delay_ms": s.delay_ms,
            "link_mbit_s": s.mbit,
            "secs": s.secs,
            "fixed_window_ceiling_mbit_s": self.window_mbit(),
            "tcp": pair(&self.tcp),
            "fixed": pair(&self.fixed),
            "fixed_window_bytes": self.fixed_window,
            "autotune": pair(&self.autotune),
            "slow_reader": {
                "other_mbit_s": mbit(&self.slow.other),
                "other_pct_of_link": self.pct(mbit(&self.slow.other)),
                "stalled_read_bytes": self.slow.stalled_read,
                "stalled_buffered_mid_bytes": self.slow.stalled_buffered_mid,
                "stalled_buffered_end_bytes": self.slow.stalled_buffered_end,
            },
            "rss_after": { "fixed": rss(&self.fixed_rss), "autotune": rss(&self.autotune_rss) },
            "notes": self.notes,
        })
    }
}

fn mbit(b: &Bulk) -> f64 {
    b.gbit_s() * 1000.0
}

/// Targets of every case.
struct Targets {
    echo: Target,
    sink: Target,
    sink_rx: mpsc::Receiver<SinkReport>,
    source: Target,
}

fn pair(t: &Targets, up: SocketAddr, down: SocketAddr, secs: f64) -> anyhow::Result<Pair> {
    let up = load::upload(up, 1, secs, CAP, &t.sink_rx).context("upload")?;
    let down = load::download(down, 1, secs + DRAIN_SECS).context("download")?;
    Ok(Pair { up, down })
}

/// A relay + agent pair whose tunnel crosses `link`, with `window` written as the knob.
fn start_pair(
    s: &Settings,
    pki: &Pki,
    t: &Targets,
    link: WanLink,
    name: &str,
    window: Option<u32>,
) -> anyhow::Result<Tunnel> {
    let mut opts = s.options(s.work_dir.join(name));
    std::fs::create_dir_all(&opts.dir).context("creating the wan work directory")?;
    opts.wan = Some(link);
    opts.max_stream_window_bytes = window;
    let exported = BTreeMap::from([
        ("echo".to_owned(), t.echo.addr),
        ("sink".to_owned(), t.sink.addr),
        ("source".to_owned(), t.source.addr),
    ]);
    eprintln!(
        "{name}: starting relay and agent (max_stream_window_bytes: {})",
        window.map_or("not written".into(), |w| w.to_string())
    );
    let tunnel = system::start(&opts, pki, &exported)?;
    load::probe(tunnel.listener("echo")?).context("first echo through the tunnel")?;
    Ok(tunnel)
}

fn rss(t: &Tunnel) -> anyhow::Result<Rss> {
    Ok(Rss {
        relay: proc::sample(t.relay.pid()).context("relay is gone")?,
        agent: proc::sample(t.agent.pid()).context("agent is gone")?,
    })
}

/// Bytes waiting unread in `s` (a peek: nothing is consumed, the window stays as it is).
fn unread(s: &TcpStream, buf: &mut [u8]) -> u64 {
    if s.set_nonblocking(true).is_err() {
        return 0;
    }
    let n = s.peek(buf).unwrap_or(0);
    let _ = s.set_nonblocking(false);
    n as u64
}

/// Two downloads through `via` at once; one stops reading after [`STALL_AFTER`] bytes and stays
/// connected until the other is done.
fn slow_reader(via: SocketAddr, secs: f64) -> anyhow::Result<SlowReader> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs + DRAIN_SECS);
    let half = Instant::now() + Duration::from_secs_f64(secs / 2.0);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let stalled = std::thread::spawn(move || -> io::Result<(u64, u64, u64)> {
        let mut s = TcpStream::connect_timeout(&via, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = vec![0u8; 128 * 1024];
        let mut read = 0u64;
        while read < STALL_AFTER {
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "stalled reader"));
            }
            let want = buf.len().min((STALL_AFTER - read) as usize);
            match s.read(&mut buf[..want])? {
                0 => return Err(io::Error::other("EOF before the first MiB")),
                n => read += n as u64,
            }
        }
        let mut peek = vec![0u8; PEEK_MAX];
        if let Some(wait) = half.checked_duration_since(Instant::now()) {
            // Returns early if the other stream is already done.
            let _ = done_rx.recv_timeout(wait);
        }
        let mid = unread(&s, &mut peek);
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = done_rx.recv_timeout(left);
        let end = unread(&s, &mut peek);
        Ok((read, mid, end))
    });
    let other = load::download(via, 1, secs + DRAIN_SECS);
    let _ = done_tx.send(());
    let stalled = stalled
        .join()
        .map_err(|_| anyhow::anyhow!("the stalled reader panicked"))?
        .context("the stalled reader")?;
    let other = other.context("the reading stream")?;
    Ok(SlowReader {
        other,
        stalled_read: stalled.0,
        stalled_buffered_mid: stalled.1,
        stalled_buffered_end: stalled.2,
    })
}

/// Runs the three cases and the slow reader.
pub fn run(s: &Settings, w: &WanSettings) -> anyhow::Result<WanReport> {
    std::fs::create_dir_all(&s.work_dir).context("creating the work directory")?;
    let pki = pki::write(&s.work_dir)?;
    let (sink_tx, sink_rx) = mpsc::channel();
    let secs = w.secs as f64;
    let t = Targets {
        echo: targets::echo()?,
        sink: targets::sink(sink_tx)?,
        sink_rx,
        source: targets::source(secs, CAP)?,
    };
    let link = w.link();
    let mut notes = Vec::new();

    eprintln!(
        "wan tcp: one stream each way through the link, {} s",
        w.secs
    );
    let tcp = {
        let to_sink = Wan::start(link, t.sink.addr)?;
        let to_source = Wan::start(link, t.source.addr)?;
        pair(&t, to_sink.addr, to_source.addr, secs).context("wan tcp")?
    };

    let fixed_window = Some(FIXED_WINDOW);
    let (fixed, fixed_rss) = {
        let tunnel = start_pair(s, &pki, &t, link, "wan-fixed", fixed_window)?;
        eprintln!("wan fixed: one stream each way, {} s", w.secs);
        let p = pair(
            &t,
            tunnel.listener("sink")?,
            tunnel.listener("source")?,
            secs,
        )
        .context("wan fixed")?;
        (p, rss(&tunnel)?)
    };

    let (autotune, slow, autotune_rss) = {
        let tunnel = start_pair(s, &pki, &t, link, "wan-autotune", None)?;
        eprintln!("wan autotune: one stream each way, {} s", w.secs);
        let via_source = tunnel.listener("source")?;
        let p = pair(&t, tunnel.listener("sink")?, via_source, secs).context("wan autotune")?;
        eprintln!(
            "wan slow reader: two downloads, one stops after 1 MiB, {} s",
            w.secs
        );
        let slow = slow_reader(via_source, secs).context("wan slow reader")?;
        load::probe(tunnel.listener("echo")?).context("echo through the tunnel after the runs")?;
        (p, slow, rss(&tunnel)?)
    };

    notes.push(
        "The link is a userspace emulator (src/bench/wan.rs): a split TCP proxy, so plain TCP \
         through it is not window-limited by the delay; only the tunnel's per-stream credit, \
         whose updates cross the link, is. Throughput counts from connect to the last byte \
         (the link's queues drained)."
            .to_owned(),
    );
    Ok(WanReport {
        settings: *w,
        tcp,
        fixed,
        fixed_window,
        fixed_rss,
        autotune,
        autotune_rss,
        slow,
        notes,
    })
}
