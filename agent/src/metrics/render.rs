//! The Prometheus text exposition format (0.0.4), written by hand: one `# HELP` and one
//! `# TYPE` line per metric, then its samples. Pure: the caller takes the [`Sample`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::reason::ReconnectReason;

/// Everything one scrape shows, read at one moment.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    /// The agent's version (`nowconnect_agent_info{version}`).
    pub version: &'a str,
    /// At least one tunnel has its HELLO_ACK.
    pub tunnel_up: bool,
    /// How long the agent has been READY without a break (zero when down).
    pub uptime: Duration,
    /// Streams open, on every tunnel.
    pub streams: usize,
    /// Reconnects by reason, every reason listed.
    pub reconnects: &'a [(ReconnectReason, u64)],
    /// Bytes written to targets (c2p), bytes read from them (p2c).
    pub bytes: (u64, u64),
    /// Target connect failures by connector: every exported connector (0 when none failed),
    /// plus those that failed before a reload stopped exporting them.
    pub connect_failures: &'a BTreeMap<String, u64>,
    /// Seconds until the token in use expires; `None` (no sample) without token or `exp`.
    pub token_expiry: Option<f64>,
    /// Every configured host of every exported connector, in configuration order.
    pub targets: &'a [TargetSample],
}

/// One configured host's health, read at the scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSample {
    pub connector: String,
    /// `host:port` as configured (IPv6 in brackets).
    pub target: String,
    pub up: bool,
    /// Failed attempts on it since the target set was configured.
    pub failures: u64,
}

/// The page for `GET /metrics`.
pub fn render(s: &Sample<'_>) -> String {
    let mut out = String::with_capacity(2048);
    head(
        &mut out,
        "nowconnect_agent_info",
        "gauge",
        "The agent's version; always 1.",
    );
    let _ = writeln!(
        out,
        "nowconnect_agent_info{{version=\"{}\"}} 1",
        escape(s.version)
    );
    head(
        &mut out,
        "nowconnect_agent_tunnel_up",
        "gauge",
        "1 while at least one tunnel to the relay is acknowledged (READY), else 0.",
    );
    let _ = writeln!(out, "nowconnect_agent_tunnel_up {}", u8::from(s.tunnel_up));
    head(
        &mut out,
        "nowconnect_agent_tunnel_uptime_seconds",
        "gauge",
        "Seconds the agent has been READY without a break; 0 while down.",
    );
    let uptime = if s.tunnel_up {
        s.uptime
    } else {
        Duration::ZERO
    };
    let _ = writeln!(
        out,
        "nowconnect_agent_tunnel_uptime_seconds {:.3}",
        uptime.as_secs_f64()
    );
    head(
        &mut out,
        "nowconnect_agent_reconnects_total",
        "counter",
        "Times the agent dialed the relay again after a failed attempt or a lost tunnel, by reason.",
    );
    for (reason, n) in s.reconnects {
        let _ = writeln!(
            out,
            "nowconnect_agent_reconnects_total{{reason=\"{}\"}} {n}",
            reason.as_str()
        );
    }
    head(
        &mut out,
        "nowconnect_agent_streams_active",
        "gauge",
        "Streams (target connections) open right now, on every tunnel.",
    );
    let _ = writeln!(out, "nowconnect_agent_streams_active {}", s.streams);
    head(
        &mut out,
        "nowconnect_agent_bytes_total",
        "counter",
        "Stream bytes: c2p written to targets (from clients), p2c read from targets.",
    );
    let (c2p, p2c) = s.bytes;
    let _ = writeln!(
        out,
        "nowconnect_agent_bytes_total{{direction=\"c2p\"}} {c2p}"
    );
    let _ = writeln!(
        out,
        "nowconnect_agent_bytes_total{{direction=\"p2c\"}} {p2c}"
    );
    head(
        &mut out,
        "nowconnect_agent_target_connect_failures_total",
        "counter",
        "Streams whose target connection failed (every host of the connector refused, was unreachable or timed out), by connector.",
    );
    for (connector, n) in s.connect_failures {
        let _ = writeln!(
            out,
            "nowconnect_agent_target_connect_failures_total{{connector=\"{}\"}} {n}",
            escape(connector)
        );
    }
    head(
        &mut out,
        "nowconnect_agent_target_up",
        "gauge",
        "1 while a configured target host is healthy, 0 after a refused or timed-out connect until one succeeds.",
    );
    for t in s.targets {
        let _ = writeln!(
            out,
            "nowconnect_agent_target_up{{connector=\"{}\",target=\"{}\"}} {}",
            escape(&t.connector),
            escape(&t.target),
            u8::from(t.up)
        );
    }
    head(
        &mut out,
        "nowconnect_agent_target_failures_total",
        "counter",
        "Connect attempts on one target host that were refused, unreachable, unresolvable or timed out.",
    );
    for t in s.targets {
        let _ = writeln!(
            out,
            "nowconnect_agent_target_failures_total{{connector=\"{}\",target=\"{}\"}} {}",
            escape(&t.connector),
            escape(&t.target),
            t.failures
        );
    }
    head(
        &mut out,
        "nowconnect_agent_token_expiry_seconds",
        "gauge",
        "Seconds until the token of the latest READY tunnel expires (negative once expired); absent without a token exp.",
    );
    if let Some(left) = s.token_expiry {
        let _ = writeln!(out, "nowconnect_agent_token_expiry_seconds {left:.0}");
    }
    out
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(
        reconnects: &'a [(ReconnectReason, u64)],
        failures: &'a BTreeMap<String, u64>,
    ) -> Sample<'a> {
        Sample {
            version: "1.2.3",
            tunnel_up: true,
            uptime: Duration::from_millis(12_500),
            streams: 2,
            reconnects,
            bytes: (100, 7),
            connect_failures: failures,
            token_expiry: Some(299.6),
            targets: &[],
        }
    }

    #[test]
    fn every_metric_has_help_type_and_its_samples() {
        let reconnects = [
            (ReconnectReason::Tls, 3),
            (ReconnectReason::ClosedByRelay, 1),
        ];
        let failures = BTreeMap::from([("ad".to_string(), 0), ("db".to_string(), 4)]);
        let targets = [
            TargetSample {
                connector: "ad".into(),
                target: "dc1.corp:636".into(),
                up: true,
                failures: 0,
            },
            TargetSample {
                connector: "ad".into(),
                target: "[fd00::5]:636".into(),
                up: false,
                failures: 3,
            },
        ];
        let mut s = sample(&reconnects, &failures);
        s.targets = &targets;
        let page = render(&s);
        for want in [
            "nowconnect_agent_target_up{connector=\"ad\",target=\"dc1.corp:636\"} 1\n",
            "nowconnect_agent_target_up{connector=\"ad\",target=\"[fd00::5]:636\"} 0\n",
            "nowconnect_agent_target_failures_total{connector=\"ad\",target=\"[fd00::5]:636\"} 3\n",
            "nowconnect_agent_info{version=\"1.2.3\"} 1\n",
            "nowconnect_agent_tunnel_up 1\n",
            "nowconnect_agent_tunnel_uptime_seconds 12.500\n",
            "nowconnect_agent_reconnects_total{reason=\"tls\"} 3\n",
            "nowconnect_agent_reconnects_total{reason=\"closed_by_relay\"} 1\n",
            "nowconnect_agent_streams_active 2\n",
            "nowconnect_agent_bytes_total{direction=\"c2p\"} 100\n",
            "nowconnect_agent_bytes_total{direction=\"p2c\"} 7\n",
            "nowconnect_agent_target_connect_failures_total{connector=\"ad\"} 0\n",
            "nowconnect_agent_target_connect_failures_total{connector=\"db\"} 4\n",
            "nowconnect_agent_token_expiry_seconds 300\n",
        ] {
            assert!(page.contains(want), "missing {want:?} in\n{page}");
        }
        let names: Vec<&str> = page
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(names.len(), 10, "{names:?}");
        for l in page.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            assert!(
                names.iter().any(|n| n.starts_with(&format!("{name} "))),
                "sample {l} without TYPE"
            );
            assert!(
                page.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        }
    }

    #[test]
    fn down_means_zero_uptime_and_no_exp_means_no_sample() {
        let failures = BTreeMap::new();
        let mut s = sample(&[], &failures);
        s.tunnel_up = false;
        s.token_expiry = None;
        let page = render(&s);
        assert!(page.contains("nowconnect_agent_tunnel_up 0\n"), "{page}");
        assert!(page.contains("nowconnect_agent_tunnel_uptime_seconds 0.000\n"));
        assert!(!page.contains("\nnowconnect_agent_token_expiry_seconds "));
        assert!(page.contains("# TYPE nowconnect_agent_token_expiry_seconds gauge\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }
}
