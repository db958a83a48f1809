//! The relay's in-process TLS with a certificate from a private CA made here: untrusted without
//! the bundle (the error names the issuer), trusted with `NC_CA_BUNDLE` (one or many
//! certificates), and `ca_bundle_only` refusing a certificate from a "public" root (a second CA
//! standing in for the system store).

use std::path::Path;

use nowconnect_agent::tls::RootSource;
use nowconnect_relay::RelayHandle;
use nowconnect_testkit::health::{probe as health, wait_health as wait_health_on};
use nowconnect_testkit::pki::Ca;
use nowconnect_testkit::target;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::DEADLINE;

use super::*;
use crate::start_relay;

async fn wait_health(addr: std::net::SocketAddr, want: &str) {
    wait_health_on(addr, want, DEADLINE).await;
}

struct TlsRelay {
    relay: RelayHandle,
    url: String,
}

/// A relay whose `/tunnel` certificate for `localhost` is issued by `ca`.
async fn tls_relay(ca: &Ca, dir: &Path) -> TlsRelay {
    let (cert, key) = ca.issue(&["localhost"]).write(dir, "relay");
    let relay = start_relay(&relay_yaml_tls(&["echo"], Some((&cert, &key, None)))).await;
    let url = format!("wss://localhost:{}/tunnel", relay.tunnel_addr().port());
    TlsRelay { relay, url }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_ca_is_trusted_only_with_the_bundle() {
    let dir = TempDir::new("private-ca");
    let ca = Ca::new("Corp Private CA");
    let r = tls_relay(&ca, dir.path()).await;
    let echo = target::echo().await;
    let yaml = agent_yaml_url(&r.url, echo.addr, "");

    let agent = start(agent_config(&yaml, &[], dir.path())).await;
    let line = wait_error(&agent, &["certificate not trusted"]).await;
    assert_eq!(
        line,
        "TLS to relay localhost: certificate not trusted: issued by `CN=Corp Private CA`, which \
         is not a trusted root; add its CA certificate to proxy.ca_bundle (NC_CA_BUNDLE)"
    );
    assert_eq!(health(agent.health_addr()).await, "OK\n");
    drop(agent);

    // A bundle of several certificates, the relay's CA among them.
    let other = Ca::new("Unrelated CA");
    let bundle = dir.write("bundle.pem", &format!("{}{}", other.pem(), ca.pem()));
    let bundle = bundle.display().to_string();
    let agent = start(agent_config(
        &yaml,
        &[("NC_CA_BUNDLE", &bundle)],
        dir.path(),
    ))
    .await;
    wait_health(agent.health_addr(), "READY\n").await;
    echo_through(&r.relay, "echo", b"private PKI").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_only_refuses_a_certificate_from_a_public_root() {
    let dir = TempDir::new("bundle-only");
    // `public` plays a public root in the system store; the relay's certificate comes from it.
    let public = Ca::new("Stand-in Public Root");
    let private = Ca::new("Corp Private CA");
    let r = tls_relay(&public, dir.path()).await;
    let echo = target::echo().await;
    let bundle = dir.write("private.pem", &private.pem());
    let system = || RootSource::Fixed(vec![public.der()]);

    // Trusting the system store (with the bundle added): the public root is accepted, which
    // shows the stand-in store is in use.
    let yaml = agent_yaml_url(
        &r.url,
        echo.addr,
        &format!("proxy: {{ca_bundle: '{}'}}\n", bundle.display()),
    );
    let mut cfg = agent_config(&yaml, &[], dir.path());
    cfg.tls.system_roots = system();
    let agent = start(cfg).await;
    wait_health(agent.health_addr(), "READY\n").await;
    drop(agent);

    // Trusting only the bundle: the same certificate is refused, naming the public issuer.
    let mut cfg = agent_config(&yaml, &[("NC_CA_BUNDLE_ONLY", "true")], dir.path());
    assert!(cfg.tls.ca_bundle_only);
    cfg.tls.system_roots = system();
    let agent = start(cfg).await;
    let line = wait_error(&agent, &["certificate not trusted"]).await;
    assert_eq!(
        line,
        "TLS to relay localhost: certificate not trusted: issued by `CN=Stand-in Public Root`, \
         which is not a trusted root (only proxy.ca_bundle is trusted: proxy.ca_bundle_only is set)"
    );
    assert_eq!(health(agent.health_addr()).await, "OK\n");
    drop(agent);

    // And a relay certificate from the bundle's CA is accepted in bundle-only mode.
    let dir2 = TempDir::new("bundle-only-ok");
    let r2 = tls_relay(&private, dir2.path()).await;
    let yaml = agent_yaml_url(
        &r2.url,
        echo.addr,
        &format!(
            "proxy: {{ca_bundle: '{}', ca_bundle_only: true}}\n",
            bundle.display()
        ),
    );
    let mut cfg = agent_config(&yaml, &[], dir2.path());
    cfg.tls.system_roots = system();
    let agent = start(cfg).await;
    wait_health(agent.health_addr(), "READY\n").await;
    echo_through(&r2.relay, "echo", b"bundle only").await;
}
