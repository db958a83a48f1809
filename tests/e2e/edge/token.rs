//! Token rotation against the real relay: a token with a short `exp`; the file is replaced with a
//! fresh token; the agent opens a new tunnel with it before the old token expires, health stays
//! READY, new client connections keep flowing and one opened before the switch keeps working.
//! The relay runs with dev bypass (it does not judge tokens), so a tap in front of it records
//! the Authorization header of every tunnel.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use nowconnect_testkit::health::wait_health;
use nowconnect_testkit::idp::{now as unix_now, unsigned};
use nowconnect_testkit::io::read_head;
use nowconnect_testkit::net;
use nowconnect_testkit::target;
use nowconnect_testkit::temp::{self, TempDir};
use nowconnect_testkit::wait::{wait_for, within, DEADLINE};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::relay;

/// An unsigned JWT-shaped token; the agent reads only `exp`.
fn jwt(exp: u64, sub: &str) -> String {
    unsigned(&json!({"sub": sub, "exp": exp, "agent_id": "premise-01"}))
}

/// A TCP relay in front of the relay's `/tunnel` that records each upgrade's Authorization.
struct Tap {
    addr: SocketAddr,
    auths: Arc<Mutex<Vec<String>>>,
}

async fn tap(upstream: SocketAddr) -> Tap {
    let l = net::bind().await;
    let addr = net::addr(&l);
    let auths = Arc::new(Mutex::new(Vec::new()));
    let seen = auths.clone();
    tokio::spawn(async move {
        while let Ok((mut agent, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let text = read_head(&mut agent, DEADLINE).await;
                let auth = text
                    .lines()
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                            .map(|(_, v)| v.trim().to_owned())
                    })
                    .unwrap_or_default();
                seen.lock().expect("auths").push(auth);
                let Ok(mut relay) = TcpStream::connect(upstream).await else {
                    return;
                };
                if relay.write_all(text.as_bytes()).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut agent, &mut relay).await;
                }
            });
        }
    });
    Tap { addr, auths }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_token_is_used_before_expiry_and_traffic_keeps_flowing() {
    let echo = target::echo().await;
    let relay = relay(&["echo"]).await;
    let tap = tap(relay.tunnel_addr()).await;
    let dir = TempDir::new("rotation");
    let exp1 = unix_now() + 6;
    let t1 = jwt(exp1, "first");
    let tok = dir.write("token", &t1);
    // Refresh 4 s before exp: about 1-2 s after the first connect.
    let yaml = agent_yaml_url(&format!("ws://{}/tunnel", tap.addr), echo.addr, "").replacen(
        "tunnel:\n",
        &format!(
            "tunnel:\n  auth: {{token_file: '{}', refresh_before_exp_sec: 4}}\n",
            tok.display()
        ),
        1,
    );
    let agent = start(agent_config(&yaml, &[], dir.path())).await;
    wait_health(agent.health_addr(), "READY\n", DEADLINE).await;
    assert_eq!(
        *tap.auths.lock().expect("auths"),
        vec![format!("Bearer {t1}")]
    );

    // A client connection made before the switch.
    let mut early = net::connect(crate::listener(&relay, "echo")).await;
    early.write_all(b"early").await.expect("write");
    let mut back = [0u8; 5];
    early.read_exact(&mut back).await.expect("echo");

    // From here on READY must hold: the agent counts every loss of READY (every moment its
    // health port would answer OK), however short.
    assert!(agent.is_ready());
    let lost_before = agent.ready_lost();

    // The rotator replaces the file.
    let t2 = jwt(unix_now() + 3600, "second");
    temp::replace(&tok, &t2);

    wait_for("a second tunnel through the tap", DEADLINE, || {
        tap.auths.lock().expect("auths").len() >= 2
    })
    .await;
    assert!(
        unix_now() < exp1,
        "the agent reconnected before the old token expired"
    );
    assert_eq!(
        tap.auths.lock().expect("auths")[1],
        format!("Bearer {t2}"),
        "the relay saw the new token"
    );
    wait_for("the new tunnel READY", DEADLINE, || agent.connects() == 2).await;

    // New connections keep flowing, and the one from before the switch still works.
    for i in 0..5u8 {
        echo_through(&relay, "echo", &[b'n', b'e', b'w', b'0' + i]).await;
    }
    early.write_all(b"still").await.expect("write");
    let mut back = [0u8; 5];
    within(
        "the old stream's echo",
        DEADLINE,
        early.read_exact(&mut back),
    )
    .await
    .expect("old stream still open");
    assert_eq!(&back, b"still");
    drop(early);

    assert_eq!(
        agent.ready_lost(),
        lost_before,
        "READY was lost during the refresh"
    );
    assert_eq!(agent.last_error(), None);
    assert_eq!(
        tap.auths.lock().expect("auths").len(),
        2,
        "one refresh, no loop"
    );
}
