//! The running listeners, by name: started at start-up, changed by a reload.
//!
//! Owns each listener's configuration as running, its bound address, the channel that hands
//! its accept loop new settings, and the token that stops it. The accept loop itself is
//! [`crate::listener`]. A reload changes a listener without dropping a stream:
//! - added: bound (before anything else changes, so a port in use refuses the whole reload),
//!   then started;
//! - removed: stops accepting; its open streams run on (they belong to the relay's stream
//!   tracker, not to the listener) until they end or the shutdown grace period;
//! - `bind` changed: the new address is bound first, then the old socket stops accepting;
//! - anything else changed (connector, SNI routes, allowlist, per-source cap, PROXY protocol): the same
//!   socket, the next accepted client sees the new settings. Per-source counts carry over.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{ListenerConfig, Routing};
use crate::conn::{ListenerCtx, SniCtx, SourceCounts};
use crate::metrics::Metrics;

/// A listener as bound.
#[derive(Debug, Clone)]
pub(crate) struct BoundListener {
    pub name: String,
    /// Every connector its clients may go to (one, unless it routes by SNI).
    pub connectors: Vec<String>,
    pub addr: SocketAddr,
}

/// What a reload does to the listeners (names), from the running and the new configuration.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same name, new `bind`.
    pub rebound: Vec<String>,
    /// Same name and `bind`, other settings changed.
    pub changed: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.rebound.is_empty()
            && self.changed.is_empty()
    }

    /// `listeners +ldap2 -old ~addomain(bind) ~dev`, or `None` when nothing changes.
    pub fn summary(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let mut parts = Vec::new();
        parts.extend(self.added.iter().map(|n| format!("+{n}")));
        parts.extend(self.removed.iter().map(|n| format!("-{n}")));
        parts.extend(self.rebound.iter().map(|n| format!("~{n}(bind)")));
        parts.extend(self.changed.iter().map(|n| format!("~{n}")));
        Some(format!("listeners {}", parts.join(" ")))
    }
}

/// Compares listener lists by name (names are unique: the configuration checks it).
pub(crate) fn diff(old: &[ListenerConfig], new: &[ListenerConfig]) -> Diff {
    let mut d = Diff::default();
    for n in new {
        match old.iter().find(|o| o.name == n.name) {
            None => d.added.push(n.name.clone()),
            Some(o) if o.bind != n.bind => d.rebound.push(n.name.clone()),
            Some(o) if o != n => d.changed.push(n.name.clone()),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|n| n.name == o.name) {
            d.removed.push(o.name.clone());
        }
    }
    d
}

/// The settings an accept loop works with. `prev`: the listener's settings before a reload,
/// whose per-source counts and pending PROXY headers carry over.
pub(crate) fn ctx_for(
    l: &ListenerConfig,
    metrics: &Metrics,
    prev: Option<&ListenerCtx>,
) -> Arc<ListenerCtx> {
    let sources: Arc<SourceCounts> = prev.map(|p| p.sources.clone()).unwrap_or_default();
    let proxy_pending: Arc<AtomicUsize> = prev.map(|p| p.proxy_pending.clone()).unwrap_or_default();
    let ctx = |connector: &str, sni| ListenerCtx {
        name: l.name.clone(),
        connector: connector.to_owned(),
        allow_cidrs: l.allow_cidrs.clone(),
        max_conn_per_source: l.max_conn_per_source,
        sources: sources.clone(),
        metrics: metrics.connector(connector),
        proxy_protocol: l.proxy_protocol,
        proxy_pending: proxy_pending.clone(),
        sni,
    };
    let sni = match &l.routing {
        Routing::Connector(_) => None,
        Routing::Sni(table) => Some(SniCtx {
            table: table.clone(),
            by_connector: table
                .connectors()
                .into_iter()
                .map(|c| (c.to_owned(), Arc::new(ctx(c, None))))
                .collect(),
        }),
    };
    Arc::new(ctx(l.label(), sni))
}

/// One running listener.
#[derive(Debug)]
struct Entry {
    cfg: ListenerConfig,
    addr: SocketAddr,
    /// New settings for the accept loop (it reads the latest per accepted client).
    settings: watch::Sender<Arc<ListenerCtx>>,
    /// Cancelled: the accept loop ends (open streams are not its).
    stop: CancellationToken,
}

/// What an accept loop is started with.
#[derive(Debug)]
pub(crate) struct Started {
    pub socket: TcpListener,
    pub settings: watch::Receiver<Arc<ListenerCtx>>,
    pub stop: CancellationToken,
}

/// The running listeners, in configuration order.
#[derive(Debug, Default)]
pub(crate) struct Listeners {
    entries: Mutex<Vec<Entry>>,
}

impl Listeners {
    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `socket` (bound for `cfg`) as running, replacing a listener of the same name
    /// (whose accept loop stops), and returns what its accept loop needs. `parent`: the token
    /// whose cancellation stops every listener.
    pub fn insert(
        &self,
        cfg: &ListenerConfig,
        socket: TcpListener,
        addr: SocketAddr,
        metrics: &Metrics,
        parent: &CancellationToken,
    ) -> Started {
        let mut entries = self.lock();
        let prev = entries.iter().position(|e| e.cfg.name == cfg.name);
        let ctx = ctx_for(
            cfg,
            metrics,
            prev.map(|i| entries[i].settings.borrow().clone())
                .as_deref(),
        );
        let (settings, rx) = watch::channel(ctx);
        let stop = parent.child_token();
        let entry = Entry {
            cfg: cfg.clone(),
            addr,
            settings,
            stop: stop.clone(),
        };
        match prev {
            Some(i) => std::mem::replace(&mut entries[i], entry).stop.cancel(),
            None => entries.push(entry),
        }
        Started {
            socket,
            settings: rx,
            stop,
        }
    }

    /// Hands the running listener `cfg.name` (same `bind`) its new settings.
    pub fn update(&self, cfg: &ListenerConfig, metrics: &Metrics) {
        let mut entries = self.lock();
        if let Some(e) = entries.iter_mut().find(|e| e.cfg.name == cfg.name) {
            let ctx = ctx_for(cfg, metrics, Some(&e.settings.borrow()));
            e.settings.send_replace(ctx);
            e.cfg = cfg.clone();
        }
    }

    /// Stops the listener `name` accepting and forgets it.
    pub fn remove(&self, name: &str) {
        let mut entries = self.lock();
        if let Some(i) = entries.iter().position(|e| e.cfg.name == name) {
            entries.remove(i).stop.cancel();
        }
    }

    /// Puts the entries in the order of `names` (the configuration's); others keep theirs after.
    pub fn order(&self, names: &[&str]) {
        let mut entries = self.lock();
        entries.sort_by_key(|e| {
            names
                .iter()
                .position(|n| *n == e.cfg.name)
                .unwrap_or(usize::MAX)
        });
    }

    /// The configuration of every running listener, in order.
    pub fn configs(&self) -> Vec<ListenerConfig> {
        self.lock().iter().map(|e| e.cfg.clone()).collect()
    }

    /// Name, connector and bound address of every running listener, in order.
    pub fn bound(&self) -> Vec<BoundListener> {
        self.lock()
            .iter()
            .map(|e| BoundListener {
                name: e.cfg.name.clone(),
                connectors: e.cfg.connectors().into_iter().map(str::to_owned).collect(),
                addr: e.addr,
            })
            .collect()
    }

    /// The bound address of the running listener `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.lock()
            .iter()
            .find(|e| e.cfg.name == name)
            .map(|e| e.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(name: &str, bind: &str, connector: &str) -> ListenerConfig {
        ListenerConfig {
            name: name.to_owned(),
            bind: bind.parse().expect("test address"),
            routing: Routing::Connector(connector.to_owned()),
            allow_cidrs: Vec::new(),
            proxy_protocol: false,
            max_conn_per_source: 10,
        }
    }

    #[test]
    fn diff_names_added_removed_rebound_and_changed_listeners() {
        let old = [
            l("keep", "127.0.0.1:1389", "ad"),
            l("gone", "127.0.0.1:1390", "ad"),
            l("moved", "127.0.0.1:1391", "ad"),
            l("tuned", "127.0.0.1:1392", "ad"),
        ];
        let mut tuned = l("tuned", "127.0.0.1:1392", "ad");
        tuned.allow_cidrs = vec!["10.0.0.0/8".parse().expect("test CIDR")];
        let new = [
            l("keep", "127.0.0.1:1389", "ad"),
            l("moved", "127.0.0.1:2391", "ad"),
            tuned,
            l("fresh", "127.0.0.1:1393", "dev"),
        ];
        let d = diff(&old, &new);
        assert_eq!(d.added, ["fresh"]);
        assert_eq!(d.removed, ["gone"]);
        assert_eq!(d.rebound, ["moved"]);
        assert_eq!(d.changed, ["tuned"]);
        assert_eq!(
            d.summary().as_deref(),
            Some("listeners +fresh -gone ~moved(bind) ~tuned")
        );
        assert!(diff(&old, &old).is_empty());
        assert_eq!(diff(&old, &old).summary(), None);
    }

    #[test]
    fn a_new_connector_or_cap_is_a_change_and_port_zero_is_not_a_rebind() {
        let old = [l("a", "127.0.0.1:0", "ad")];
        let mut new = old.clone();
        assert!(
            diff(&old, &new).is_empty(),
            "the same port-0 bind is no change"
        );
        new[0].routing = Routing::Connector("dev".into());
        new[0].max_conn_per_source = 3;
        assert_eq!(diff(&old, &new).changed, ["a"]);
    }

    #[tokio::test]
    async fn an_update_keeps_per_source_counts_and_a_replace_stops_the_old_loop() {
        let metrics = Metrics::new();
        let set = Listeners::default();
        let root = CancellationToken::new();
        let cfg = l("a", "127.0.0.1:0", "ad");
        let sock = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("bound address");
        let first = set.insert(&cfg, sock, addr, &metrics, &root);
        let before = first.settings.borrow().sources.clone();
        let mut changed = cfg.clone();
        changed.allow_cidrs = vec!["10.0.0.0/8".parse().expect("test CIDR")];
        set.update(&changed, &metrics);
        let now = first.settings.borrow().clone();
        assert_eq!(now.allow_cidrs, changed.allow_cidrs);
        assert!(
            Arc::ptr_eq(&before, &now.sources),
            "per-source counts carry over"
        );
        assert_eq!(set.configs(), [changed.clone()]);

        let sock = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr2 = sock.local_addr().expect("bound address");
        let second = set.insert(&changed, sock, addr2, &metrics, &root);
        assert!(first.stop.is_cancelled(), "the replaced loop stops");
        assert!(!second.stop.is_cancelled());
        assert_eq!(set.addr("a"), Some(addr2));
        set.remove("a");
        assert!(second.stop.is_cancelled());
        assert!(set.bound().is_empty());
    }
}
