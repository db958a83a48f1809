//! Token rotation against the real relay: a token with a short `exp`; the file is replaced with a
//! fresh token; the agent opens a new tunnel with it before the old token expires, health stays
//! READY, new client connections keep flowing and one opened before the switch keeps working.
//! The relay runs with dev bypass (it does not judge tokens), so a tap in front of it records
//! the Authorization header of every tunnel.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use tokio::net::TcpListener;

use super::*;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An unsigned JWT-shaped token; the agent reads only `exp`.
fn jwt(exp: u64, sub: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.c2ln",
        b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64.encode(format!(
            r#"{{"sub":"{sub}","exp":{exp},"agent_id":"premise-01"}}"#
        ))
    )
}

/// A TCP relay in front of the relay's `/tunnel` that records each upgrade's Authorization.
struct Tap {
    addr: SocketAddr,
    auths: Arc<Mutex<Vec<String>>>,
}

async fn tap(upstream: SocketAddr) -> Tap {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind tap");
    let addr = l.local_addr().expect("addr");
    let auths = Arc::new(Mutex::new(Vec::new()));
    let seen = auths.clone();
    tokio::spawn(async move {
        while let Ok((mut agent, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match agent.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
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
                if relay.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut agent, &mut relay).await;
                }
            });
        }
    });
    Tap { addr, auths }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_token_is_used_before_expiry_and_traffic_keeps_flowing() {
    let (echo, _t) = echo_server().await;
    let relay = relay(&["echo"]).await;
    let tap = tap(relay.tunnel_addr()).await;
    let dir = temp_dir("rotation");
    let exp1 = unix_now() + 6;
    let t1 = jwt(exp1, "first");
    let tok = write(&dir, "token", &t1);
    // Refresh 4 s before exp: about 1-2 s after the first connect.
    let yaml = agent_yaml_url(&format!("ws://{}/tunnel", tap.addr), echo, "").replacen(
        "tunnel:\n",
        &format!(
            "tunnel:\n  auth: {{token_file: '{}', refresh_before_exp_sec: 4}}\n",
            tok.display()
        ),
        1,
    );
    let agent = start(agent_config(&yaml, &[], &dir)).await;
    wait_health(agent.health_addr(), "READY\n").await;
    assert_eq!(
        *tap.auths.lock().expect("auths"),
        vec![format!("Bearer {t1}")]
    );

    // A client connection made before the switch.
    let mut early = TcpStream::connect(listener(&relay, "echo"))
        .await
        .expect("connect");
    early.write_all(b"early").await.expect("write");
    let mut back = [0u8; 5];
    early.read_exact(&mut back).await.expect("echo");

    // Health is sampled from here on: it must never leave READY.
    let left_ready = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (left_ready, stop, addr) = (left_ready.clone(), stop.clone(), agent.health_addr());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if health(addr).await != "READY\n" {
                    left_ready.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // The rotator replaces the file.
    let t2 = jwt(unix_now() + 3600, "second");
    let tmp = dir.join("token.new");
    std::fs::write(&tmp, &t2).expect("write");
    std::fs::rename(&tmp, &tok).expect("rename");

    wait_until("a second tunnel through the tap", DEADLINE, || async {
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
    wait_until("the new tunnel READY", DEADLINE, || async {
        agent.connects() == 2
    })
    .await;

    // New connections keep flowing, and the one from before the switch still works.
    for i in 0..5u8 {
        echo_through(&relay, "echo", &[b'n', b'e', b'w', b'0' + i]).await;
    }
    early.write_all(b"still").await.expect("write");
    let mut back = [0u8; 5];
    tokio::time::timeout(DEADLINE, early.read_exact(&mut back))
        .await
        .expect("in time")
        .expect("old stream still open");
    assert_eq!(&back, b"still");
    drop(early);

    stop.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    assert!(
        !left_ready.load(Ordering::Relaxed),
        "health stayed READY across the refresh"
    );
    assert_eq!(agent.last_error(), None);
    assert_eq!(
        tap.auths.lock().expect("auths").len(),
        2,
        "one refresh, no loop"
    );
}
