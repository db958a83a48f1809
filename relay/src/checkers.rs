//! The relay's checkers: the agents' token [`Authenticator`] with its JWKS cache, the portal's
//! JWKS and the PDP client, built from the configuration at start-up and again by a reload that
//! changes their settings (`security.jwks_url` and friends, `portal.jwks_url`, `pdp`).
//!
//! Owns building them and running their JWKS refreshers; never decides anything itself. A set
//! is built whole before it replaces the running one, so a JWKS file that cannot be read
//! refuses the reload and the running keys stay.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::{self, RelayConfig};
use crate::httpc;
use crate::jwks::{self, Jwks};
use crate::metrics::Metrics;
use crate::pdp::Pdp;

/// One set of checkers, as built from one configuration.
#[derive(Debug, Default)]
pub(crate) struct Checkers {
    /// Token checks; `None` without `security.jwks_url`.
    pub auth: Option<Arc<Authenticator>>,
    pub jwks: Option<Arc<Jwks>>,
    /// Keys for portal tokens: `portal.jwks_url`'s, else the agents'; `None`: portal refuses.
    pub portal_jwks: Option<Arc<Jwks>>,
    /// Per-stream authorization; `None` without `pdp.url`.
    pub pdp: Option<Arc<Pdp>>,
    /// `jwks` was loaded at build time (a local file): its refresher waits a period first.
    jwks_loaded: bool,
    /// `Some(loaded)`: `portal_jwks` is the portal's own and needs a refresher of its own.
    portal_own: Option<bool>,
}

/// Whether `a` and `b` build the same checkers (a reload that changes none keeps the running
/// set, with its cached keys and decisions).
pub(crate) fn same_settings(a: &RelayConfig, b: &RelayConfig) -> bool {
    a.security.jwt == b.security.jwt && a.portal.jwks == b.portal.jwks && a.pdp == b.pdp
}

impl Checkers {
    /// Builds every checker `cfg` asks for. A JWKS from a local file is read now and must be
    /// valid; an IdP URL may be down for a while (its refresher keeps trying). Errors name the
    /// key.
    pub async fn build(cfg: &RelayConfig, metrics: &Arc<Metrics>) -> Result<Checkers, String> {
        let needs_http = cfg
            .security
            .jwt
            .as_ref()
            .is_some_and(|j| matches!(j.jwks, config::JwksSource::Url(_)))
            || matches!(cfg.portal.jwks, Some(config::JwksSource::Url(_)))
            || cfg.pdp.is_some();
        let ca_file = cfg
            .security
            .jwt
            .as_ref()
            .and_then(|j| j.ca_file.clone())
            .or_else(|| cfg.pdp.as_ref().and_then(|p| p.ca_file.clone()));
        let http = if needs_http {
            Some(httpc::HttpClient::new(ca_file.as_deref())?)
        } else {
            None
        };
        let mut out = Checkers::default();
        if let Some(j) = &cfg.security.jwt {
            let keys = Arc::new(Jwks::new(
                j.jwks.clone(),
                http.clone(),
                j.refresh,
                j.min_refresh,
                metrics.clone(),
            ));
            // A local file must be readable now; an IdP may be down for a while.
            out.jwks_loaded = matches!(j.jwks, config::JwksSource::File(_));
            if out.jwks_loaded {
                keys.refresh_now(jwks::Trigger::Startup)
                    .await
                    .map_err(|e| format!("security.jwks_url: {e}"))?;
            }
            out.auth = Some(Arc::new(Authenticator::new(j.clone(), keys.clone())));
            out.jwks = Some(keys);
        }
        // Portal tokens: their own JWKS when `portal.jwks_url` is set, else the agents' keys.
        match (&cfg.portal.jwks, &out.jwks) {
            (Some(source), _) => {
                let (refresh, min_refresh) = cfg
                    .security
                    .jwt
                    .as_ref()
                    .map_or((Duration::from_secs(300), Duration::from_secs(30)), |j| {
                        (j.refresh, j.min_refresh)
                    });
                let keys = Arc::new(Jwks::new(
                    source.clone(),
                    http.clone(),
                    refresh,
                    min_refresh,
                    metrics.clone(),
                ));
                let loaded = matches!(source, config::JwksSource::File(_));
                if loaded {
                    keys.refresh_now(jwks::Trigger::Startup)
                        .await
                        .map_err(|e| format!("portal.jwks_url: {e}"))?;
                }
                out.portal_jwks = Some(keys);
                out.portal_own = Some(loaded);
            }
            (None, Some(agent_keys)) => out.portal_jwks = Some(agent_keys.clone()),
            (None, None) => {}
        }
        if let (Some(p), Some(http)) = (&cfg.pdp, &http) {
            out.pdp = Some(Arc::new(Pdp::new(p.clone(), http.clone(), metrics.clone())));
        }
        Ok(out)
    }

    /// Fetches the keys of every JWKS this set reads from an IdP URL (a reload does this before
    /// it swaps: a mistyped URL is refused instead of turning `/readyz` red). Errors name the
    /// key.
    pub async fn fetch_remote(&mut self) -> Result<(), String> {
        if let (Some(j), false) = (&self.jwks, self.jwks_loaded) {
            j.refresh_now(jwks::Trigger::Reload)
                .await
                .map_err(|e| format!("security.jwks_url: {e}"))?;
            self.jwks_loaded = true;
        }
        if let Some(false) = self.portal_own {
            if let Some(pj) = &self.portal_jwks {
                pj.refresh_now(jwks::Trigger::Reload)
                    .await
                    .map_err(|e| format!("portal.jwks_url: {e}"))?;
                self.portal_own = Some(true);
            }
        }
        Ok(())
    }

    /// Starts the JWKS refreshers of this set; they stop when `stop` is cancelled.
    pub fn spawn_refreshers(&self, tasks: &TaskTracker, stop: &CancellationToken) {
        if let Some(j) = &self.jwks {
            tasks.spawn(j.clone().run_refresher(self.jwks_loaded, stop.clone()));
        }
        if let (Some(pj), Some(loaded)) = (&self.portal_jwks, self.portal_own) {
            tasks.spawn(pj.clone().run_refresher(loaded, stop.clone()));
        }
    }
}

/// The running checkers, each swapped whole by a reload; readers load what they need per use.
#[derive(Debug, Default)]
pub(crate) struct Running {
    pub auth: ArcSwapOption<Authenticator>,
    pub jwks: ArcSwapOption<Jwks>,
    pub portal_jwks: ArcSwapOption<Jwks>,
    /// Shared with every tunnel's authorizer, so a new PDP decides the next OPEN everywhere.
    pub pdp: Arc<ArcSwapOption<Pdp>>,
    /// Stops the running set's refreshers (a child of the relay's root token).
    refreshers: std::sync::Mutex<Option<CancellationToken>>,
}

impl Running {
    /// Puts `set` in place of the running checkers and starts its refreshers; the replaced
    /// set's refreshers stop. `parent`: the relay's root token.
    pub fn install(&self, set: Checkers, tasks: &TaskTracker, parent: &CancellationToken) {
        let stop = parent.child_token();
        set.spawn_refreshers(tasks, &stop);
        self.auth.store(set.auth);
        self.jwks.store(set.jwks);
        self.portal_jwks.store(set.portal_jwks);
        self.pdp.store(set.pdp);
        let old = self
            .refreshers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(stop);
        if let Some(old) = old {
            old.cancel();
        }
    }
}
