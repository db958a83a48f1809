//! wss:// with a relay certificate from a private CA made here: trusted only with the bundle.

use nowconnect_agent::AgentConfig;
use nowconnect_shared::Frame;
use nowconnect_testkit::health::probe as health;
use nowconnect_testkit::mock_relay::{upgrade, MockConn, Select, STEP};
use nowconnect_testkit::net;
use nowconnect_testkit::pki::Ca;
use nowconnect_testkit::target;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::{wait_for, within, DEADLINE};
use nowconnect_testkit::yaml;

/// The agent's YAML for a wss:// relay on `port`, with the CA `bundle` when given.
fn yaml(port: u16, echo: std::net::SocketAddr, bundle: Option<&std::path::Path>) -> String {
    let mut y = yaml::agent(
        &format!("wss://localhost:{port}/tunnel"),
        "v2",
        &[("echo", echo)],
    )
    .replace("  allow_insecure_ws: true\n", "");
    if let Some(b) = bundle {
        y.push_str(&format!("proxy: {{ca_bundle: '{}'}}\n", b.display()));
    }
    y
}

#[tokio::test]
async fn wss_with_private_ca_bundle() {
    let ca = Ca::new("NowConnect Test CA");
    let acceptor = ca.acceptor(&["localhost"], None);
    let dir = TempDir::new("agent-tls");
    let bundle = ca.write(dir.path(), "ca.pem");
    let echo = target::echo().await;
    let l = net::bind().await;
    let port = net::addr(&l).port();

    // Without the bundle the relay's certificate is not trusted: no tunnel, health stays OK.
    let cfg = AgentConfig::from_yaml_str(&yaml(port, echo.addr, None)).expect("config");
    let agent = nowconnect_agent::start(cfg).await.expect("start");
    let (sock, _) = within("agent dial", STEP, l.accept())
        .await
        .expect("accept");
    assert!(
        within("TLS refusal", STEP, acceptor.accept(sock))
            .await
            .is_err(),
        "agent must refuse a certificate from an unknown CA"
    );
    assert_eq!(health(agent.health_addr()).await, "OK\n");
    wait_for("the untrusted-certificate error", DEADLINE, || {
        agent.last_error().as_deref()
            == Some(
                "TLS to relay localhost: certificate not trusted: issued by `CN=NowConnect Test CA`, \
                 which is not a trusted root; add its CA certificate to proxy.ca_bundle (NC_CA_BUNDLE)",
            )
    })
    .await;
    drop(agent);

    // With the bundle: TLS, upgrade, HELLO.
    let cfg = AgentConfig::from_yaml_str(&yaml(port, echo.addr, Some(&bundle))).expect("config");
    let _agent = nowconnect_agent::start(cfg).await.expect("start");
    let tls = loop {
        let (sock, _) = within("agent dial", STEP, l.accept())
            .await
            .expect("accept");
        // A retry of the first agent may still arrive; it fails TLS and we take the next.
        if let Ok(tls) = acceptor.accept(sock).await {
            break tls;
        }
    };
    let (ws, version, up) = upgrade(tls, Select::Negotiate).await;
    let mut conn = MockConn::new(ws, version, up);
    match conn.recv().await {
        Frame::Hello(h) => assert_eq!(h.agent_id, "premise-01"),
        other => panic!("expected HELLO, got {other:?}"),
    }
}
