//! Agent -> tinyproxy -> relay: the tunnel through a real forward proxy, with and without Basic
//! auth, the proxy's refusals as one-line errors, NO_PROXY, and wss:// inside the CONNECT tunnel.

use nowconnect_testkit::health::{probe as health, wait_health as wait_health_on};
use nowconnect_testkit::pki::Ca;
use nowconnect_testkit::target;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::tinyproxy::{Options, Tinyproxy};
use nowconnect_testkit::wait::wait_for_async;
use nowconnect_testkit::wait::DEADLINE;

use super::*;
use crate::{relay, start_relay};

async fn wait_health(addr: std::net::SocketAddr, want: &str) {
    wait_health_on(addr, want, DEADLINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_through_tinyproxy() {
    let Some(proxy) = Tinyproxy::start(Options::default()).await else {
        return;
    };
    let echo = target::echo().await;
    let relay = relay(&["echo"]).await;
    let dir = TempDir::new("proxy-plain");
    let url = format!("ws://{}/tunnel", relay.tunnel_addr());
    let yaml = agent_yaml_url(
        &url,
        echo.addr,
        &format!("proxy: {{https_proxy: '{}'}}\n", proxy.url(None)),
    );
    let agent = start(agent_config(&yaml, &[], dir.path())).await;
    wait_health(agent.health_addr(), "READY\n").await;
    assert_eq!(
        proxy.connects(),
        vec![relay.tunnel_addr().to_string()],
        "the tunnel went through the proxy"
    );
    echo_through(&relay, "echo", b"through tinyproxy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_the_environment_and_its_refusals() {
    let Some(proxy) = Tinyproxy::start(Options {
        basic_auth: Some(("agent", "s3cret-pw")),
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let echo = target::echo().await;
    let relay = relay(&["echo"]).await;
    let dir = TempDir::new("proxy-auth");
    let url = format!("ws://{}/tunnel", relay.tunnel_addr());
    let yaml = agent_yaml_url(&url, echo.addr, "");
    let target = relay.tunnel_addr().to_string();

    // No credentials: 407 from the proxy, one line naming it; health stays OK.
    let env = [("NC_TRUST_ENV", "true"), ("HTTPS_PROXY", &*proxy.url(None))];
    let agent = start(agent_config(&yaml, &env, dir.path())).await;
    let line = wait_error(&agent, &["HTTP 407"]).await;
    assert_eq!(
        line,
        format!(
            "proxy 127.0.0.1:{} requires authentication for CONNECT {target} (HTTP 407 Proxy \
             Authentication Required); put user:password@ in the proxy URL",
            proxy.port
        )
    );
    assert_eq!(health(agent.health_addr()).await, "OK\n");
    drop(agent);

    // Wrong password: the proxy-auth error line (tinyproxy answers 401 here, other proxies 407),
    // and the agent keeps retrying (the line comes back after we clear it by waiting).
    let wrong = proxy.url(Some("agent:wrong-pw"));
    let env = [("NC_TRUST_ENV", "true"), ("https_proxy", &*wrong)];
    let agent = start(agent_config(&yaml, &env, dir.path())).await;
    let line = wait_error(&agent, &["rejected the credentials"]).await;
    assert!(
        line.starts_with(&format!(
            "proxy 127.0.0.1:{} rejected the credentials of user `agent` for CONNECT {target} (HTTP 40",
            proxy.port
        )),
        "{line}"
    );
    assert!(!line.contains("wrong-pw"), "{line}");
    assert_eq!(health(agent.health_addr()).await, "OK\n");
    let attempts = proxy.connects().len();
    wait_for_async("the agent retries", DEADLINE, || async {
        proxy.connects().len() > attempts
    })
    .await;
    drop(agent);

    // The right password, percent-encoded in the URL (%2D is '-'): READY, traffic flows.
    let right = proxy.url(Some("agent:s3cret%2Dpw"));
    let env = [("NC_TRUST_ENV", "true"), ("ALL_PROXY", &*right)];
    let agent = start(agent_config(&yaml, &env, dir.path())).await;
    wait_health(agent.health_addr(), "READY\n").await;
    assert_eq!(agent.last_error(), None);
    echo_through(&relay, "echo", b"authenticated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_403_is_one_line() {
    // tinyproxy allows CONNECT only to port 1: the relay's port is refused with 403.
    let Some(proxy) = Tinyproxy::start(Options {
        connect_ports: vec![1],
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let echo = target::echo().await;
    let relay = relay(&["echo"]).await;
    let dir = TempDir::new("proxy-403");
    let url = format!("ws://{}/tunnel", relay.tunnel_addr());
    let yaml = agent_yaml_url(
        &url,
        echo.addr,
        &format!("proxy: {{https_proxy: '{}'}}\n", proxy.url(None)),
    );
    let agent = start(agent_config(&yaml, &[], dir.path())).await;
    let line = wait_error(&agent, &["HTTP 403"]).await;
    assert_eq!(
        line,
        format!(
            "proxy 127.0.0.1:{} forbids CONNECT to {} (HTTP 403 Access violation)",
            proxy.port,
            relay.tunnel_addr()
        )
    );
    assert_eq!(health(agent.health_addr()).await, "OK\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_bypasses_the_proxy() {
    let Some(proxy) = Tinyproxy::start(Options::default()).await else {
        return;
    };
    let echo = target::echo().await;
    let relay = relay(&["echo"]).await;
    let dir = TempDir::new("no-proxy");
    let url = format!("ws://{}/tunnel", relay.tunnel_addr());
    let yaml = agent_yaml_url(&url, echo.addr, "");
    let proxy_url = proxy.url(None);

    // With HTTPS_PROXY alone the tunnel goes through the proxy (so its log does show use)...
    let env = [("NC_TRUST_ENV", "true"), ("HTTPS_PROXY", &*proxy_url)];
    let agent = start(agent_config(&yaml, &env, dir.path())).await;
    wait_health(agent.health_addr(), "READY\n").await;
    assert_eq!(proxy.connects().len(), 1);
    drop(agent);

    // ...and with NO_PROXY matching the relay it does not: every rule form that matches.
    for no_proxy in [
        "127.0.0.1".to_owned(),
        "example.com, 127.0.0.0/8".to_owned(),
        relay.tunnel_addr().to_string(),
        "*".to_owned(),
    ] {
        let env = [
            ("NC_TRUST_ENV", "true"),
            ("HTTPS_PROXY", &*proxy_url),
            ("no_proxy", &*no_proxy),
        ];
        let agent = start(agent_config(&yaml, &env, dir.path())).await;
        wait_health(agent.health_addr(), "READY\n").await;
        echo_through(&relay, "echo", no_proxy.as_bytes()).await;
        assert_eq!(
            proxy.connects().len(),
            1,
            "NO_PROXY={no_proxy}: the proxy saw no request"
        );
    }

    // YAML no_proxy does the same without the environment.
    let yaml_np = agent_yaml_url(
        &url,
        echo.addr,
        &format!("proxy: {{https_proxy: '{proxy_url}', no_proxy: '127.0.0.1'}}\n"),
    );
    let agent = start(agent_config(&yaml_np, &[], dir.path())).await;
    wait_health(agent.health_addr(), "READY\n").await;
    assert_eq!(proxy.connects().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_inside_the_connect_tunnel_checks_the_relays_certificate() {
    let Some(proxy) = Tinyproxy::start(Options::default()).await else {
        return;
    };
    let ca = Ca::new("NowConnect E2E CA");
    let leaf = ca.issue(&["localhost"]);
    let dir = TempDir::new("proxy-wss");
    let cert = dir.write("relay.pem", &leaf.cert_pem);
    let key = dir.write("relay.key", &leaf.key_pem);
    let bundle = dir.write("ca.pem", &ca.pem());
    let echo = target::echo().await;
    let relay = start_relay(&relay_yaml_tls(&["echo"], Some((&cert, &key, None)))).await;
    let port = relay.tunnel_addr().port();
    // The proxy resolves "localhost"; the agent checks the relay's certificate for that name.
    let yaml = agent_yaml_url(
        &format!("wss://localhost:{port}/tunnel"),
        echo.addr,
        &format!("proxy: {{https_proxy: '{}'}}\n", proxy.url(None)),
    );
    let bundle_env = bundle.display().to_string();
    let agent = start(agent_config(
        &yaml,
        &[("NC_CA_BUNDLE", &bundle_env)],
        dir.path(),
    ))
    .await;
    wait_health(agent.health_addr(), "READY\n").await;
    assert_eq!(proxy.connects(), vec![format!("localhost:{port}")]);
    echo_through(&relay, "echo", b"tls inside the proxy tunnel").await;
    drop(agent);

    // Without the bundle the same path fails on the relay's certificate, not on the proxy.
    let agent = start(agent_config(&yaml, &[], dir.path())).await;
    wait_error(
        &agent,
        &[
            "TLS to relay localhost: certificate not trusted",
            "CN=NowConnect E2E CA",
        ],
    )
    .await;
}
