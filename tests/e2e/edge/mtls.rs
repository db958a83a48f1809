//! mTLS: the relay's `tunnel.tls.client_ca` requires agent certificates from that CA. An agent
//! without one, or with one from another CA, is refused with a one-line error; with one it
//! connects and carries traffic.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_requiring_client_certificates() {
    let dir = TempDir::new("mtls");
    let server_ca = Ca::new("Relay Server CA");
    let client_ca = Ca::new("Agent Client CA");
    let leaf = server_ca.issue(&["localhost"]);
    let cert = dir.write("relay.pem", &leaf.cert_pem);
    let key = dir.write("relay.key", &leaf.key_pem);
    let client_ca_file = dir.write("client-ca.pem", &client_ca.pem());
    let bundle = dir.write("server-ca.pem", &server_ca.pem());
    let relay = start_relay(&relay_yaml_tls(
        &["echo"],
        Some((&cert, &key, Some(&client_ca_file))),
    ))
    .await;
    let echo = target::echo().await;
    let url = format!("wss://localhost:{}/tunnel", relay.tunnel_addr().port());
    let yaml = agent_yaml_url(
        &url,
        echo.addr,
        &format!("proxy: {{ca_bundle: '{}'}}\n", bundle.display()),
    );

    // No client certificate: refused, and the line says what to set.
    let agent = start(agent_config(&yaml, &[], dir.path())).await;
    let line = wait_error(&agent, &["requires a client certificate"]).await;
    assert!(
        line.starts_with("TLS to relay localhost: the relay requires a client certificate"),
        "{line}"
    );
    assert!(line.contains("client_cert_file"), "{line}");
    assert_eq!(health(agent.health_addr()).await, "OK\n");
    assert_eq!(relay.agents_for("echo"), 0);
    drop(agent);

    // A certificate from a CA the relay does not accept: refused.
    let stranger = Ca::new("Stranger CA").issue(&["premise-01"]);
    let s_cert = dir.write("stranger.pem", &stranger.cert_pem);
    let s_key = dir.write("stranger.key", &stranger.key_pem);
    let (s_cert, s_key) = (s_cert.display().to_string(), s_key.display().to_string());
    let agent = start(agent_config(
        &yaml,
        &[("NC_CLIENT_CERT", &s_cert), ("NC_CLIENT_KEY", &s_key)],
        &dir,
    ))
    .await;
    wait_error(
        &agent,
        &["TLS to relay localhost: the relay refused our client certificate"],
    )
    .await;
    assert_eq!(health(agent.health_addr()).await, "OK\n");
    drop(agent);

    // The right certificate: READY and traffic.
    let mine = client_ca.issue(&["premise-01"]);
    let c_cert = dir.write("agent.pem", &mine.cert_pem);
    let c_key = dir.write("agent.key", &mine.key_pem);
    let yaml_mtls = yaml.replacen(
        "tunnel:\n",
        &format!(
            "tunnel:\n  auth: {{client_cert_file: '{}', client_key_file: '{}'}}\n",
            c_cert.display(),
            c_key.display()
        ),
        1,
    );
    let agent = start(agent_config(&yaml_mtls, &[], dir.path())).await;
    wait_health(agent.health_addr(), "READY\n").await;
    echo_through(&relay, "echo", b"mutual TLS").await;
}
