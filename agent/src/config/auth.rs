//! The `tunnel.auth` keys: the token file and when to refresh it, and the client certificate
//! for mTLS to the relay. The token file's path only: it is never opened here.

use std::path::PathBuf;
use std::time::Duration;

use super::check::secs_up_to_a_day;
use super::collector::Collector;
use super::layer::Layer;
use crate::tls::ClientCert;

/// Default time before the token's `exp` at which the agent reconnects with the file's token.
pub const DEFAULT_TOKEN_REFRESH_SEC: u64 = 60;

/// The checked `tunnel.auth` keys.
pub(super) struct Auth {
    pub(super) token_file: Option<PathBuf>,
    pub(super) token_refresh_before: Duration,
    pub(super) client_cert: Option<ClientCert>,
}

pub(super) fn validate_auth(c: &mut Collector, l: &Layer) -> Auth {
    let cert = l
        .client_cert_file
        .clone()
        .filter(|p| !p.as_os_str().is_empty());
    let key = l
        .client_key_file
        .clone()
        .filter(|p| !p.as_os_str().is_empty());
    let client_cert = match (cert, key) {
        (Some(cert_file), Some(key_file)) => Some(ClientCert {
            cert_file,
            key_file,
        }),
        (None, None) => None,
        (Some(_), None) => {
            c.bad(
                "tunnel.auth.client_key_file (NC_CLIENT_KEY, --client-key)",
                "required with tunnel.auth.client_cert_file",
            );
            None
        }
        (None, Some(_)) => {
            c.bad(
                "tunnel.auth.client_cert_file (NC_CLIENT_CERT, --client-cert)",
                "required with tunnel.auth.client_key_file",
            );
            None
        }
    };
    let token_refresh_before = secs_up_to_a_day(
        c,
        "tunnel.auth.refresh_before_exp_sec (NC_TOKEN_REFRESH_SEC)",
        l.token_refresh_sec,
        DEFAULT_TOKEN_REFRESH_SEC,
    );
    let token_file = l.token_file.clone().filter(|p| !p.as_os_str().is_empty());
    Auth {
        token_file,
        token_refresh_before,
        client_cert,
    }
}
