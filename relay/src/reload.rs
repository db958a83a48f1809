//! Configuration reload (SIGHUP, `systemctl reload`): applies a new `cloud.yaml` to the running
//! relay without dropping a stream, or refuses it whole.
//!
//! Owns the order of a reload: everything that can fail (reading the new TLS pair, a JWKS file,
//! binding new listeners) happens first, while the running configuration still serves; only
//! then is anything swapped. So a refused reload changes nothing. What it applies:
//! - listeners added, removed, re-bound or changed ([`crate::listeners`]);
//! - the tunnel server's TLS certificate and key, re-read from their files on every reload
//!   (new handshakes use them; connections already up keep theirs);
//! - the agents' JWT settings, the portal's JWKS and the PDP (new checkers when their settings
//!   changed; a JWKS file is read again either way);
//! - everything read per connection or stream: allowlists, limits, trusted proxies, portal
//!   audience and admin role, ping settings and payload size for new tunnels.
//!
//! Keys bound at start-up (listening sockets of the relay's own servers, HA, the audit file,
//! the state directory, the relay-wide buffer budget, the abuse gate, the dev bypass) keep their
//! running value; the reload says each one `needs a restart`. Never logs a secret: the summary
//! names keys and listeners, not values.

use std::path::Path;
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::audit::{Action, Event};
use crate::checkers::Checkers;
use crate::config::{Env, RelayConfig};
use crate::listeners;
use crate::metrics::ResultLabel;
use crate::{bind, local_addr, start_listener, tls, Shared};

pub(crate) mod report;
pub use report::ReloadReport;

/// Keys a running relay cannot change: where `new` differs from `old`, `new` gets the running
/// value back and the key is named in the result.
pub(crate) fn keep_fixed(old: &RelayConfig, new: &mut RelayConfig) -> Vec<String> {
    let mut kept = Vec::new();
    macro_rules! fixed {
        ($key:literal, $($field:tt)+) => {
            if old.$($field)+ != new.$($field)+ {
                new.$($field)+ = old.$($field)+.clone();
                kept.push($key.to_owned());
            }
        };
    }
    fixed!("tunnel.host", tunnel.host);
    fixed!("tunnel.port", tunnel.port);
    fixed!("tunnel.proxy_protocol", tunnel.proxy_protocol);
    fixed!("tunnel.preauth", tunnel.preauth);
    if old.tunnel.tls.is_some() != new.tunnel.tls.is_some() {
        new.tunnel.tls = old.tunnel.tls.clone();
        kept.push("tunnel.tls (on/off)".to_owned());
    }
    fixed!("observability", observability);
    fixed!("portal.bind", portal.bind);
    // Policies live in the portal's state once the relay runs: toggled there, not here.
    fixed!(
        "policy defaults (security.require_connector_scopes, portal.mfa_required, \
         portal.pdp_enforce, portal.cidr_allowlists: toggle the policy in the portal instead)",
        portal.defaults
    );
    fixed!("audit", audit_file);
    fixed!("audit limits", audit_limits);
    fixed!("state_dir", state_dir);
    fixed!("ha", ha);
    if old.ha.mode != crate::config::HaMode::Off
        && (old.tunnel.ping_interval != new.tunnel.ping_interval
            || old.tunnel.ping_timeout != new.tunnel.ping_timeout
            || old.tunnel.max_ws_payload != new.tunnel.max_ws_payload)
    {
        // Agent tunnels that connect later take them; mesh links keep their start-up values.
        kept.push("tunnel ping/payload settings for mesh links".to_owned());
    }
    fixed!("limits.max_buffered_bytes", limits.max_buffered_bytes);
    fixed!("limits.max_tunnels_per_agent", limits.max_tunnels_per_agent);
    fixed!("limits.max_tunnels_per_jti", limits.max_tunnels_per_jti);
    fixed!("security.duplicate_agent", security.duplicate_agent);
    fixed!("security.abuse", security.abuse);
    kept
}

/// Reads `path` (with `env`'s overrides, as at start-up) and applies it, as [`run`].
pub(crate) async fn reload_file(
    shared: &Arc<Shared>,
    path: &Path,
    env: &dyn Env,
) -> Result<ReloadReport, String> {
    let loaded = RelayConfig::load(path, env).map_err(|e| e.to_string());
    run(shared, &format!("config:{}", path.display()), loaded).await
}

/// Applies `loaded` (or refuses it, or the error that loading it gave); logs, audits and
/// counts the outcome. `what` names the source in the audit record. `Err`: the one-line
/// reason; the running configuration stays.
pub(crate) async fn run(
    shared: &Arc<Shared>,
    what: &str,
    loaded: Result<RelayConfig, String>,
) -> Result<ReloadReport, String> {
    let result = match loaded {
        Ok(cfg) => apply(shared, cfg).await,
        Err(e) => Err(e),
    };
    let label = |result| ResultLabel { result };
    match &result {
        Ok(report) => {
            info!(event = "config_reloaded", source = %what, "reload applied: {}", report.summary());
            for key in &report.needs_restart {
                warn!("reload: {key} changed; it needs a restart (the running value stays)");
            }
            shared
                .metrics
                .config_reloads
                .get_or_create(&label("applied"))
                .inc();
            shared.audit.record(
                Event::new(Action::ConfigReload, true)
                    .resource(what.to_owned())
                    .detail(report.summary()),
            );
        }
        Err(e) => {
            error!(source = %what, "reload refused: {e}; the running configuration stays");
            shared
                .metrics
                .config_reloads
                .get_or_create(&label("refused"))
                .inc();
            shared.audit.record(
                Event::new(Action::ConfigReload, false)
                    .resource(what.to_owned())
                    .reason("invalid_config")
                    .detail(e.clone()),
            );
        }
    }
    result
}

/// Applies `new` (already validated) to the running relay, or changes nothing.
pub(crate) async fn apply(
    shared: &Arc<Shared>,
    mut new: RelayConfig,
) -> Result<ReloadReport, String> {
    let _one_at_a_time = shared.reloading.lock().await;
    if shared.draining.is_cancelled() {
        return Err("the relay is shutting down".to_owned());
    }
    let old = shared.cfg();
    // Turning the bypass off applies (it only tightens); turning it on must pass start-up's
    // check that `/tunnel` is on loopback.
    if new.security.dev_bypass && !old.security.dev_bypass {
        return Err(
            "security.dev_bypass: cannot be turned on by a reload; restart the relay".to_owned(),
        );
    }
    let mut report = ReloadReport {
        needs_restart: keep_fixed(&old, &mut new),
        ..ReloadReport::default()
    };
    for w in &new.warnings {
        warn!("config: {w}");
    }

    // 1. Everything that can fail, while nothing has changed yet.
    let acceptor = match (&new.tunnel.tls, &shared.tls) {
        (Some(t), Some(running)) => Some(tls::acceptor(t, running.mesh_roots.clone())?),
        _ => None,
    };
    let running = shared.listeners.configs();
    let diff = listeners::diff(&running, &new.listeners);
    let mut bound = Vec::new();
    for (i, l) in new.listeners.iter().enumerate() {
        if diff.added.contains(&l.name) || diff.rebound.contains(&l.name) {
            let what = format!("listeners[{i}] ({})", l.name);
            let socket = bind(&what, &l.bind.to_string())
                .await
                .map_err(|e| e.to_string())?;
            let addr = local_addr(&socket, &what).map_err(|e| e.to_string())?;
            bound.push((l.clone(), socket, addr));
        }
    }

    // Last, the checkers: a JWKS URL is fetched only when nothing else can refuse the reload.
    // Checkers whose settings did not change are kept (cached keys, PDP decisions); their JWKS
    // files are read again but not used until the swap.
    let mut set =
        Checkers::build_reusing(&new, &shared.metrics, Some((&old, &shared.checkers))).await?;
    set.fetch_remote().await?;
    let mut staged = Vec::new();
    for keys in set.kept_keys() {
        if let Some(s) = keys
            .stage_file()
            .await
            .map_err(|e| format!("JWKS file: {e}"))?
        {
            staged.push((keys, s));
        }
    }

    // 2. Nothing below fails: swap.
    if let (Some(a), Some(running)) = (acceptor, &shared.tls) {
        running.live.replace(a);
        report
            .applied
            .push("tls certificate and key re-read".to_owned());
        let ca = |c: &RelayConfig| c.tunnel.tls.as_ref().and_then(|t| t.client_ca.clone());
        if ca(&old) != ca(&new) {
            report
                .applied
                .push("tunnel.tls.client_ca (agent certificates)".to_owned());
        }
    }
    if old.security.dev_bypass && !new.security.dev_bypass {
        report.applied.push("security.dev_bypass off".to_owned());
    }
    let reread = !staged.is_empty();
    for (keys, s) in staged {
        keys.install(s);
    }
    if !set.changed().is_empty() {
        report.applied.push(set.changed().join(", "));
        shared.checkers.install(set, &shared.tasks, &shared.root);
    } else if reread {
        report.applied.push("JWKS file re-read".to_owned());
    }
    let names: Vec<&str> = new.listeners.iter().map(|l| l.name.as_str()).collect();
    shared.live.store(Arc::new(new.clone()));
    for name in &diff.removed {
        info!(event = "listener_removed", listener = %name, "listener removed: stops accepting; its open streams run on");
        shared.listeners.remove(name);
    }
    for (l, socket, addr) in bound {
        start_listener(shared, &l, socket, addr);
    }
    for name in &diff.changed {
        if let Some(l) = new.listeners.iter().find(|l| &l.name == name) {
            shared.listeners.update(l, &shared.metrics);
        }
    }
    shared.listeners.order(&names);
    if let Some(m) = &shared.mesh {
        // Forwarded streams take the listener name of their connector afresh.
        m.forget_listeners();
    }
    if let Some(s) = diff.summary() {
        report.applied.push(s);
    }
    if old.limits != new.limits {
        report.applied.push("limits".to_owned());
    }
    if old.security.allow_cidrs != new.security.allow_cidrs
        || old.security.tunnel_allow_cidrs != new.security.tunnel_allow_cidrs
        || old.security.trusted_proxies != new.security.trusted_proxies
    {
        report.applied.push("security allowlists".to_owned());
    }
    if old.portal != new.portal {
        report.applied.push("portal".to_owned());
    }
    if old.tunnel.ping_interval != new.tunnel.ping_interval
        || old.tunnel.ping_timeout != new.tunnel.ping_timeout
        || old.tunnel.max_ws_payload != new.tunnel.max_ws_payload
    {
        report
            .applied
            .push("tunnel settings (new tunnels)".to_owned());
    }
    Ok(report)
}
