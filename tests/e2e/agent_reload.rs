//! The agent's configuration reload (what SIGHUP does, in-process through
//! `AgentHandle::reload`) against a real relay: the relay learns a new connector from the new
//! HELLO, new streams reach the changed target, and a stream opened before keeps flowing
//! byte-exact to the old one, through the reload, without READY ever dropping; an invalid file
//! changes nothing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nowconnect_agent::config::Layer;
use nowconnect_agent::{AgentConfig, AgentHandle};
use nowconnect_testkit::health::wait_health;
use nowconnect_testkit::io::random_bytes;
use nowconnect_testkit::temp::{self, TempDir};
use nowconnect_testkit::wait::{wait_for, within, DEADLINE};
use nowconnect_testkit::{net, target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{agent_yaml, listener, relay, start_agent};

/// As the binary loads it: the file, no flags, an empty environment.
fn load(path: &Path) -> Result<AgentConfig, nowconnect_agent::ConfigError> {
    AgentConfig::load(
        Layer::default(),
        Some(path),
        &HashMap::<String, String>::new(),
    )
}

/// Connects through the relay's listener `name`; returns the socket and its target's tag.
async fn client(addr: std::net::SocketAddr) -> (TcpStream, [u8; 4]) {
    let mut s = net::connect(addr).await;
    let mut tag = [0u8; 4];
    within("the target's tag", DEADLINE, s.read_exact(&mut tag))
        .await
        .expect("tag");
    (s, tag)
}

async fn echo(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).await.expect("write");
    let mut back = vec![0u8; data.len()];
    within("the echo", DEADLINE, s.read_exact(&mut back))
        .await
        .expect("read");
    assert!(back == data, "echoed byte-exact");
}

fn reload(agent: &AgentHandle, path: &Path) -> Option<nowconnect_agent::reload::Changes> {
    agent.reload(load(path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_a_target_and_announces_a_connector_without_dropping_a_stream() {
    let old = target::tagged_echo(b"old:").await;
    let new = target::tagged_echo(b"new:").await;
    let ldap2 = target::tagged_echo(b"ld2:").await;
    let relay = relay(&["x", "ldap2"]).await;
    let dir = TempDir::new("e2e-agent-reload");
    let yaml =
        |targets: &[(&str, std::net::SocketAddr)]| agent_yaml(relay.tunnel_addr(), "v2", targets);
    let path = dir.write("premise.yaml", &yaml(&[("x", old.addr)]));
    let agent = start_agent(&std::fs::read_to_string(&path).expect("read")).await;
    wait_health(agent.health_addr(), "READY\n", DEADLINE).await;
    assert_eq!(relay.agents_for("ldap2"), 0);

    // A stream opened before the reload, kept busy through it by a task of its own (bounded:
    // at most 100,000 rounds of 16 KiB).
    let (mut before, tag) = client(listener(&relay, "x")).await;
    assert_eq!(&tag, b"old:");
    let stop = Arc::new(AtomicBool::new(false));
    let flowing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rounds = 0u64;
            while rounds < 100_000 && (rounds < 20 || !stop.load(Ordering::Relaxed)) {
                echo(&mut before, &random_bytes(rounds, 16 * 1024)).await;
                rounds += 1;
            }
            (before, rounds)
        })
    };

    temp::replace(&path, &yaml(&[("x", new.addr), ("ldap2", ldap2.addr)]));
    let changes = reload(&agent, &path).expect("a valid file is applied");
    assert_eq!(changes.to_string(), "targets +ldap2 ~x, connectors +ldap2");
    assert!(
        changes.needs_restart.is_empty(),
        "{:?}",
        changes.needs_restart
    );
    // The relay learns ldap2 from the new tunnel's HELLO.
    wait_for("the relay serves ldap2", DEADLINE, || {
        relay.agents_for("ldap2") == 1
    })
    .await;
    let (mut s, tag) = client(listener(&relay, "ldap2")).await;
    assert_eq!(&tag, b"ld2:");
    echo(&mut s, b"through ldap2").await;
    let (mut s, tag) = client(listener(&relay, "x")).await;
    assert_eq!(&tag, b"new:", "a new stream reaches the new target");
    echo(&mut s, b"to the new x").await;

    // An invalid file: refused, the running configuration (the reloaded one) stays.
    let bad = yaml(&[("x", new.addr)]).replace(&format!("port: {}", new.addr.port()), "port: 0");
    temp::replace(&path, &bad);
    assert!(load(&path).is_err(), "the test's file is invalid");
    assert!(reload(&agent, &path).is_none(), "refused");
    assert_eq!(
        agent.config().connectors().collect::<Vec<_>>(),
        ["x", "ldap2"]
    );
    assert!(agent.is_ready());
    let (mut s, tag) = client(listener(&relay, "ldap2")).await;
    assert_eq!(&tag, b"ld2:", "ldap2 still served after the refused reload");
    echo(&mut s, b"still ldap2").await;

    // The first stream flowed all along, byte-exact, to the old target, and still does.
    stop.store(true, Ordering::Relaxed);
    let (mut before, rounds) = within("the first stream's task", DEADLINE, flowing)
        .await
        .expect("the first stream's task");
    assert!(rounds >= 20, "{rounds} rounds");
    echo(&mut before, &random_bytes(7, 256 * 1024)).await;
    assert_eq!(agent.ready_lost(), 0, "READY throughout: make before break");
    let tunnels =
        || nowconnect_testkit::metrics::value(&relay.metrics_text(), "nowconnect_agents_connected");
    assert_eq!(agent.connects(), 2, "one new tunnel for the new HELLO");
    assert_eq!(
        tunnels(),
        2,
        "the old tunnel drains while its stream is open"
    );
    drop(before);
    // Its last stream gone, the replaced tunnel closes; the new one serves on.
    wait_for("the old tunnel leaves the relay", DEADLINE, || {
        tunnels() == 1
    })
    .await;
    echo(
        &mut client(listener(&relay, "x")).await.0,
        b"new tunnel only",
    )
    .await;
    agent.shutdown();
    agent.wait().await;
}
