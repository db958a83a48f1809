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
    /// `jwks` / `portal_jwks` were made by this build (not kept from the running set).
    fresh_jwks: bool,
    fresh_portal: bool,
    /// What differs from the running set this one reused from.
    changed: Vec<&'static str>,
}

impl Checkers {
    /// Builds every checker `cfg` asks for. A JWKS from a local file is read now and must be
    /// valid; an IdP URL may be down for a while (its refresher keeps trying). Errors name the
    /// key.
    pub async fn build(cfg: &RelayConfig, metrics: &Arc<Metrics>) -> Result<Checkers, String> {
        Self::build_reusing(cfg, metrics, None).await
    }

    /// As [`Checkers::build`], keeping each running checker whose settings in `reuse`'s
    /// configuration equal `cfg`'s (its cached keys or decisions stay). A reload builds this way.
    pub async fn build_reusing(
        cfg: &RelayConfig,
        metrics: &Arc<Metrics>,
        reuse: Option<(&RelayConfig, &Running)>,
    ) -> Result<Checkers, String> {
        let same_jwt = reuse.filter(|(old, _)| old.security.jwt == cfg.security.jwt);
        let same_portal = reuse
            .filter(|(old, _)| old.portal.jwks == cfg.portal.jwks && cfg.portal.jwks.is_some());
        let same_pdp = reuse.filter(|(old, _)| old.pdp == cfg.pdp);
        let needs_http = (same_jwt.is_none()
            && cfg
                .security
                .jwt
                .as_ref()
                .is_some_and(|j| matches!(j.jwks, config::JwksSource::Url(_))))
            || (same_portal.is_none()
                && matches!(cfg.portal.jwks, Some(config::JwksSource::Url(_))))
            || (same_pdp.is_none() && cfg.pdp.is_some());
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
        match (same_jwt, &cfg.security.jwt) {
            (Some((_, running)), _) => {
                out.auth = running.auth.load_full();
                out.jwks = running.jwks.load_full();
                out.jwks_loaded = out.jwks.as_ref().is_some_and(|j| j.has_keys());
            }
            (None, Some(j)) => {
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
                out.changed.push("security.jwks_url and token checks");
            }
            (None, None) => {
                if reuse.is_some_and(|(old, _)| old.security.jwt.is_some()) {
                    out.changed.push("security.jwks_url and token checks");
                }
            }
        }
        // Portal tokens: their own JWKS when `portal.jwks_url` is set, else the agents' keys.
        match (same_portal, &cfg.portal.jwks, &out.jwks) {
            (Some((_, running)), _, _) => {
                out.portal_jwks = running.portal_jwks.load_full();
                out.portal_own = Some(out.portal_jwks.as_ref().is_some_and(|j| j.has_keys()));
            }
            (None, Some(source), _) => {
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
                out.fresh_portal = true;
                out.changed.push("portal.jwks_url");
            }
            (None, None, Some(agent_keys)) => out.portal_jwks = Some(agent_keys.clone()),
            (None, None, None) => {}
        }
        if reuse.is_some_and(|(old, _)| old.portal.jwks.is_some() && cfg.portal.jwks.is_none()) {
            out.changed.push("portal.jwks_url");
        }
        match (same_pdp, &cfg.pdp, &http) {
            (Some((_, running)), _, _) => out.pdp = running.pdp.load_full(),
            (None, Some(p), Some(http)) => {
                out.pdp = Some(Arc::new(Pdp::new(p.clone(), http.clone(), metrics.clone())));
                out.changed.push("pdp");
            }
            _ => {
                if reuse.is_some_and(|(old, _)| old.pdp.is_some()) {
                    out.changed.push("pdp");
                }
            }
        }
        out.fresh_jwks = same_jwt.is_none();
        Ok(out)
    }

    /// What this set changed against the configuration it reused from (empty at start-up and
    /// when nothing changed).
    pub fn changed(&self) -> &[&'static str] {
        &self.changed
    }

    /// Fetches the keys of every JWKS this set reads from an IdP URL (a reload does this before
    /// it swaps: a mistyped URL is refused instead of turning `/readyz` red). Errors name the
    /// key.
    pub async fn fetch_remote(&mut self) -> Result<(), String> {
        if let (Some(j), false, true) = (&self.jwks, self.jwks_loaded, self.fresh_jwks) {
            j.refresh_now(jwks::Trigger::Reload)
                .await
                .map_err(|e| format!("security.jwks_url: {e}"))?;
            self.jwks_loaded = true;
        }
        if let (Some(false), true) = (self.portal_own, self.fresh_portal) {
            if let Some(pj) = &self.portal_jwks {
                pj.refresh_now(jwks::Trigger::Reload)
                    .await
                    .map_err(|e| format!("portal.jwks_url: {e}"))?;
                self.portal_own = Some(true);
            }
        }
        Ok(())
    }

    /// The JWKS caches this set kept from the running one (a reload re-reads their files).
    pub fn kept_keys(&self) -> Vec<Arc<Jwks>> {
        let mut v = Vec::new();
        if let (Some(j), false) = (&self.jwks, self.fresh_jwks) {
            v.push(j.clone());
        }
        if let (Some(pj), Some(_), false) = (&self.portal_jwks, self.portal_own, self.fresh_portal)
        {
            v.push(pj.clone());
        }
        v
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
