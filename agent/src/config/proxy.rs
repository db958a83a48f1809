//! The `proxy` section: the HTTP CONNECT proxy, the hosts that bypass it, and the extra CA
//! bundle the relay's certificate is checked against.

use std::path::PathBuf;

use super::collector::Collector;
use super::layer::Layer;
use crate::no_proxy::NoProxy;
use crate::proxy::ProxyUrl;

/// The checked `proxy` keys (`trust_env` was applied when the layers were merged).
pub(super) struct Proxy {
    pub(super) proxy: Option<ProxyUrl>,
    pub(super) no_proxy: NoProxy,
    pub(super) ca_bundle: Option<PathBuf>,
    pub(super) ca_bundle_only: bool,
}

pub(super) fn validate_proxy(c: &mut Collector, l: &Layer) -> Proxy {
    let proxy = match l.https_proxy.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => match ProxyUrl::parse(raw) {
            Ok(p) => Some(p),
            Err(m) => {
                // Never echo the value: it may carry a password.
                c.bad(
                    "proxy.https_proxy (--https-proxy; HTTPS_PROXY/ALL_PROXY with NC_TRUST_ENV)",
                    m,
                );
                None
            }
        },
    };
    let no_proxy = match NoProxy::parse(l.no_proxy.as_deref().unwrap_or("")) {
        Ok(n) => n,
        Err(m) => {
            c.bad("proxy.no_proxy (--no-proxy; NO_PROXY with NC_TRUST_ENV)", m);
            NoProxy::default()
        }
    };
    let ca_bundle = l.ca_bundle.clone().filter(|p| !p.as_os_str().is_empty());
    let ca_bundle_only = l.ca_bundle_only.unwrap_or(false);
    if ca_bundle_only && ca_bundle.is_none() {
        c.bad(
            "proxy.ca_bundle_only (NC_CA_BUNDLE_ONLY, --ca-bundle-only)",
            "needs proxy.ca_bundle (NC_CA_BUNDLE, --ca-bundle): nothing would be trusted",
        );
    }
    Proxy {
        proxy,
        no_proxy,
        ca_bundle,
        ca_bundle_only,
    }
}
