//! Caps on HTTP connections that have not authenticated (`tunnel.preauth`): a total per HTTP
//! server, taken at accept, and a share per source, taken once the source is known (after the
//! PROXY header where one is read). A connection holds its [`PreauthSlot`] until it is upgraded
//! to a tunnel or closed, so a keep-alive connection that only ever asks `/healthz` keeps
//! counting until its idle deadline closes it.
//!
//! Memory is bounded by the total: the per-source table has an entry only for sources that hold
//! a slot now.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::abuse::source_net;
use crate::config::PreauthConfig;
use crate::conn::ConnGuard;
use crate::metrics::Metrics;

/// The caps of one HTTP server.
#[derive(Debug)]
pub(crate) struct Preauth {
    max_total: usize,
    max_per_source: usize,
    total: Arc<AtomicUsize>,
    /// Slots held per [`source_net`]; entries leave at zero.
    sources: Mutex<HashMap<IpAddr, usize>>,
    metrics: Arc<Metrics>,
    /// Unix second of the last "cap reached" warning: at most one a minute, never one per
    /// refused connection.
    last_warning: AtomicU64,
}

/// Which cap refused a connection (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    Total,
    Source,
}

impl Full {
    pub fn reason(self) -> &'static str {
        match self {
            Full::Total => "total_cap",
            Full::Source => "source_cap",
        }
    }
}

impl Preauth {
    pub fn new(cfg: &PreauthConfig, metrics: Arc<Metrics>) -> Arc<Preauth> {
        Arc::new(Preauth {
            max_total: cfg.max_total,
            max_per_source: cfg.max_per_source,
            total: Arc::new(AtomicUsize::new(0)),
            sources: Mutex::new(HashMap::new()),
            metrics,
            last_warning: AtomicU64::new(0),
        })
    }

    /// A slot of the total, or `None` (counted) when `max_total` are held.
    pub fn admit(self: &Arc<Self>) -> Option<PreauthSlot> {
        let Some(total) = ConnGuard::try_acquire(&self.total, self.max_total) else {
            self.refused(Full::Total);
            return None;
        };
        self.metrics.http_preauth.inc();
        Some(PreauthSlot {
            preauth: self.clone(),
            _total: total,
            source: None,
        })
    }

    /// Counts a refusal; warns at most once a minute.
    fn refused(&self, full: Full) {
        self.metrics.http_refused(full.reason());
        let now = crate::unix_ms() / 1000;
        let last = self.last_warning.load(Ordering::Relaxed);
        if now >= last + 60
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                event = "preauth_cap",
                cap = full.reason(),
                max_total = self.max_total,
                max_per_source = self.max_per_source,
                "unauthenticated HTTP connections refused at a tunnel.preauth cap \
                 (nowconnect_http_refused_total counts them; this warning repeats at most once a minute)"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One unauthenticated connection's share of the caps; dropping it frees both.
#[derive(Debug)]
pub(crate) struct PreauthSlot {
    preauth: Arc<Preauth>,
    _total: ConnGuard,
    source: Option<IpAddr>,
}

impl PreauthSlot {
    /// Charges the slot to the source of `ip`; false (counted) when that source holds
    /// `max_per_source` already. Called once per connection.
    pub fn charge(&mut self, ip: IpAddr) -> bool {
        debug_assert!(self.source.is_none(), "a slot is charged once");
        let net = source_net(ip);
        let mut map = self.preauth.lock();
        let n = map.entry(net).or_insert(0);
        if *n >= self.preauth.max_per_source {
            if *n == 0 {
                map.remove(&net);
            }
            drop(map);
            self.preauth.refused(Full::Source);
            return false;
        }
        *n += 1;
        self.source = Some(net);
        true
    }
}

impl Drop for PreauthSlot {
    fn drop(&mut self) {
        self.preauth.metrics.http_preauth.dec();
        if let Some(net) = self.source {
            let mut map = self.preauth.lock();
            if let Some(n) = map.get_mut(&net) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&net);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preauth(total: usize, per_source: usize) -> Arc<Preauth> {
        let cfg = PreauthConfig {
            max_total: total,
            max_per_source: per_source,
            ..PreauthConfig::default()
        };
        Preauth::new(&cfg, Arc::new(Metrics::new()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn total_and_per_source_caps_hold_and_release() {
        let p = preauth(3, 2);
        let mut a = p.admit().expect("first");
        let mut b = p.admit().expect("second");
        let mut c = p.admit().expect("third");
        assert!(p.admit().is_none(), "total cap");
        assert!(a.charge(ip("10.0.0.1")));
        assert!(b.charge(ip("10.0.0.1")));
        assert!(!c.charge(ip("10.0.0.1")), "per-source cap");
        drop(c);
        let mut d = p.admit().expect("a refused slot frees its total");
        // IPv6 hosts of one /64 are one source.
        assert!(d.charge(ip("2001:db8::1")));
        drop(a);
        let mut e = p.admit().expect("freed");
        assert!(e.charge(ip("10.0.0.1")));
        drop((b, d, e));
        assert!(p.lock().is_empty(), "entries leave at zero");
        assert_eq!(p.total.load(Ordering::Acquire), 0);
        let text = p.metrics.render();
        assert!(text.contains("nowconnect_http_refused_total{reason=\"total_cap\"} 1"));
        assert!(text.contains("nowconnect_http_refused_total{reason=\"source_cap\"} 1"));
        assert!(text.contains("nowconnect_http_preauth_connections 0"));
    }
}
