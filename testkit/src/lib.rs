//! The one test kit of NowConnect: every test setup that two test files share lives here, so the
//! relay's, the agent's and the end-to-end tests wait, bind, sign and mock the same way.
//!
//! Dev-only (`publish = false`) and never a dependency of the relay or the agent crate: both take
//! it as a dev-dependency, so it must not depend on them (a dev-dependency cycle would compile
//! them twice). What needs those crates (starting a relay or an agent) stays in the test files.
//!
//! Rules it keeps for every test: loopback only (`127.0.0.1:0`, never a fixed port), keys and CAs
//! made at run time, waits on a condition with a deadline instead of sleeps, and a handle that
//! owns its task (dropping a target, a server or a fixture stops it).
//!
//! Modules:
//! - [`wait`]: polling waits and timeouts that fail the test with a description.
//! - [`net`]: listeners on 127.0.0.1:0, a port reserved across restarts, connects from 127.0.0.x.
//! - [`target`]: TCP targets (echo, refusing, resetting, silent, firehose, hand-off, custom).
//! - [`io`]: the client side of a test connection (read until close, seeded payloads, hashes).
//! - [`http`]: a tiny HTTP/1.1 client and a counting test server.
//! - [`health`]: probing the agent's health port.
//! - [`temp`]: per-test temporary directories and the files in them.
//! - [`hosts`]: a private hosts file for the commands a test starts (mount namespace).
//! - [`pki`]: an rcgen PKI (CAs, server and client certificates, TLS acceptors and connectors).
//! - [`idp`]: a test identity provider (keys made at run time, JWKS, minted tokens).
//! - [`oidc`]: a test OpenID Connect provider (discovery, authorization code + PKCE, tokens).
//! - [`browser`]: headless Chromium over WebDriver (console log, screenshots), loopback only.
//! - [`mock_agent`]: a raw-frame agent (WebSocket client, v1 JSON / v2 binary) for relay tests.
//! - [`mock_relay`]: a raw-frame relay (WebSocket server) for agent tests.
//! - [`mesh_peer`]: a raw relay-mesh peer on `/mesh` (claimed replica_id, any client cert).
//! - [`proxy`]: an HTTP CONNECT proxy written for the tests.
//! - [`chaos`]: a TCP proxy that passes, stalls or cuts traffic on command.
//! - [`proxy_protocol`]: PROXY protocol v1/v2 headers written by hand, and connections that send one.
//! - [`process`]: this process's resident memory and descriptors, and raising RLIMIT_NOFILE.
//! - [`yaml`]: relay and agent configuration texts for tests.
//! - [`metrics`]: reading a `/metrics` page.
//! - [`log`]: test logging and a capture of everything logged.
//! - [`slapd`], [`tinyproxy`], [`haproxy`]: fixtures running the real OpenLDAP server, forward
//!   proxy and (PROXY-protocol) load balancer.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod browser;
pub mod chaos;
pub mod frames;
pub mod haproxy;
pub mod health;
pub mod hosts;
pub mod http;
pub mod idp;
pub mod io;
pub mod log;
pub mod mesh_peer;
pub mod metrics;
pub mod mock_agent;
pub mod mock_relay;
pub mod net;
pub mod oidc;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod proxy_protocol;
pub mod redis;
pub mod slapd;
pub mod target;
pub mod temp;
pub mod tinyproxy;
pub mod wait;
pub mod yaml;

/// Where the system program `name` is installed (`PATH`, then `/usr/sbin`, `/usr/bin`: Debian
/// puts daemons in sbin, which a user's `PATH` may lack), if it is.
pub fn program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// True when the tests run in CI (`CI=true`): a missing tool fails the test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Skips (returns false) when `present` is false outside CI; panics in CI, naming `what`.
pub fn require(present: bool, what: &str) -> bool {
    if present {
        return true;
    }
    assert!(
        !in_ci(),
        "{what} is missing in CI (scripts/install-deps.sh installs it)"
    );
    eprintln!("skipping: {what} is not installed (scripts/install-deps.sh)");
    false
}
