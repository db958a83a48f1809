//! wss:// with a relay certificate from a private CA made here: trusted only with the bundle.
#![allow(clippy::result_large_err)]

mod common;

use std::sync::Arc;

use common::*;
use futures_util::StreamExt;
use nowconnect_agent::AgentConfig;
use nowconnect_shared::{binary, Frame, Limits};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;

struct Pki {
    ca_pem: String,
    acceptor: TlsAcceptor,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "NowConnect Test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("leaf");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    Pki {
        ca_pem: ca_cert.pem(),
        acceptor: TlsAcceptor::from(Arc::new(server)),
    }
}

fn yaml(port: u16, bundle: Option<&std::path::Path>) -> String {
    let echo: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let mut y = agent_yaml(
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
    let pki = pki();
    let dir = std::env::temp_dir().join(format!("nc-agent-tls-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bundle = dir.join("ca.pem");
    std::fs::write(&bundle, &pki.ca_pem).expect("write");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();

    // Without the bundle the relay's certificate is not trusted: no tunnel, health stays OK.
    let cfg = AgentConfig::from_yaml_str(&yaml(port, None)).expect("config");
    let agent = nowconnect_agent::start(cfg).await.expect("start");
    let (sock, _) = within("agent dial", l.accept()).await.expect("accept");
    assert!(
        within("TLS refusal", pki.acceptor.accept(sock))
            .await
            .is_err(),
        "agent must refuse a certificate from an unknown CA"
    );
    assert_eq!(health(agent.health_addr()).await, "OK\n");
    wait_until("the untrusted-certificate error", || async {
        agent.last_error().as_deref()
            == Some(
                "TLS to relay localhost: certificate not trusted: issued by `CN=NowConnect Test CA`, \
                 which is not a trusted root; add its CA certificate to proxy.ca_bundle (NC_CA_BUNDLE)",
            )
    })
    .await;
    drop(agent);

    // With the bundle: TLS, upgrade, HELLO.
    let cfg = AgentConfig::from_yaml_str(&yaml(port, Some(&bundle))).expect("config");
    let _agent = nowconnect_agent::start(cfg).await.expect("start");
    let tls = loop {
        let (sock, _) = within("agent dial", l.accept()).await.expect("accept");
        // A retry of the first agent may still arrive; it fails TLS and we take the next.
        if let Ok(tls) = pki.acceptor.accept(sock).await {
            break tls;
        }
    };
    let cb = |_: &tokio_tungstenite::tungstenite::handshake::server::Request,
              mut resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
        resp.headers_mut().insert(
            "sec-websocket-protocol",
            "nowconnect.v2".parse().expect("header"),
        );
        Ok(resp)
    };
    let mut ws = within("upgrade", tokio_tungstenite::accept_hdr_async(tls, cb))
        .await
        .expect("upgrade");
    let msg = within("HELLO", ws.next())
        .await
        .expect("message")
        .expect("ok");
    let Message::Binary(b) = msg else {
        panic!("expected a binary frame, got {msg:?}")
    };
    match binary::decode(&b, &Limits::default()).expect("decode") {
        Frame::Hello(h) => assert_eq!(h.agent_id, "premise-01"),
        other => panic!("expected HELLO, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
