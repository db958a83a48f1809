//! Configuration reload (SIGHUP): listeners added, removed and re-bound while streams flow,
//! allowlists, the TLS pair, refused files that leave the running configuration in place, and
//! the binary answering SIGHUP instead of dying.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use nowconnect_relay::config::ProcessEnv;
use nowconnect_relay::{start, AuditFilter, RelayConfig, RelayHandle};
use nowconnect_shared::Frame;
use nowconnect_testkit::log;
use nowconnect_testkit::metrics::value;
use nowconnect_testkit::mock_agent::{self, data, v2_agent, MockAgent, OFFER_BOTH};
use nowconnect_testkit::net;
use nowconnect_testkit::pki::{self, Ca};
use nowconnect_testkit::process;
use nowconnect_testkit::temp::{self, TempDir};
use nowconnect_testkit::wait::{wait_for_async, within, DEADLINE};
use nowconnect_testkit::yaml::{self, DEV};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(5);

/// Starts a relay from `yaml` written to `dir/cloud.yaml`; returns it and the file's path.
async fn relay_from(dir: &TempDir, yaml: &str) -> (RelayHandle, std::path::PathBuf) {
    log::init();
    let path = dir.write("cloud.yaml", yaml);
    let cfg = RelayConfig::load(&path, &ProcessEnv).expect("valid relay config");
    (start(cfg).await.expect("relay starts"), path)
}

/// Writes `yaml` over `path` and reloads it.
async fn reload(relay: &RelayHandle, path: &std::path::Path, yaml: &str) -> Result<String, String> {
    temp::replace(path, yaml);
    relay.reload(path, &ProcessEnv).await.map(|r| r.summary())
}

/// `n` bytes through stream `id` each way: client -> agent, agent -> client, byte-exact.
async fn both_ways(agent: &mut MockAgent<TcpStream>, client: &mut TcpStream, id: u32, tag: u8) {
    let up: Vec<u8> = (0..1000u32).map(|i| (i as u8) ^ tag).collect();
    client.write_all(&up).await.expect("client write");
    let mut got = Vec::new();
    while got.len() < up.len() {
        match within("client bytes at the agent", T, agent.recv()).await {
            Frame::Data { id: i, payload } if i == id => got.extend_from_slice(&payload),
            Frame::Window { .. } => {}
            other => panic!("expected DATA on {id}, got {other:?}"),
        }
    }
    assert_eq!(got, up, "client -> agent byte-exact");
    let down: Vec<u8> = up.iter().rev().copied().collect();
    agent.send(&data(id, &down)).await;
    let mut back = vec![0u8; down.len()];
    within("agent bytes at the client", T, client.read_exact(&mut back))
        .await
        .expect("client read");
    assert_eq!(back, down, "agent -> client byte-exact");
}

/// Connecting to `addr` is refused (the listener stopped and its socket closed).
async fn refused(addr: SocketAddr) {
    wait_for_async("the listener's socket closed", DEADLINE, || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
}

#[tokio::test]
async fn listeners_added_removed_and_rebound_by_reload_while_a_stream_flows() {
    let dir = TempDir::new("reload-listeners");
    let one = yaml::relay(&[("ldap", "addomain")], DEV);
    let (relay, path) = relay_from(&dir, &one).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "r-agent", &["addomain", "db"]).await;
    let ldap = relay.listener_addr("ldap").expect("ldap");
    let mut long = net::connect(ldap).await;
    let id = agent.expect_open("addomain").await;
    both_ways(&mut agent, &mut long, id, 1).await;

    // Added: `pg` serves; the stream opened before the reload goes on byte-exact.
    let two = yaml::relay(&[("ldap", "addomain"), ("pg", "db")], DEV);
    let summary = reload(&relay, &path, &two).await.expect("reload applied");
    assert!(summary.contains("listeners +pg"), "{summary}");
    assert_eq!(
        relay.listener_addr("ldap"),
        Some(ldap),
        "an unchanged listener keeps its socket"
    );
    let pg = relay.listener_addr("pg").expect("pg is bound");
    let mut c = net::connect(pg).await;
    let pg_id = agent.next_open("db").await;
    both_ways(&mut agent, &mut c, pg_id, 2).await;
    both_ways(&mut agent, &mut long, id, 3).await;

    // Removed: `ldap` stops accepting; its open stream still runs.
    let pg_only = yaml::relay(&[("pg", "db")], DEV);
    let summary = reload(&relay, &path, &pg_only)
        .await
        .expect("reload applied");
    assert!(summary.contains("-ldap"), "{summary}");
    refused(ldap).await;
    assert_eq!(relay.listener_addr("ldap"), None);
    both_ways(&mut agent, &mut long, id, 4).await;

    // Re-bound: `pg` moves to another loopback address; the old one stops accepting.
    let other = net::other_loopback();
    let moved = pg_only.replace("bind: 127.0.0.1:0", &format!("bind: {other}:0"));
    let summary = reload(&relay, &path, &moved).await.expect("reload applied");
    assert!(summary.contains("~pg(bind)"), "{summary}");
    let pg2 = relay.listener_addr("pg").expect("pg re-bound");
    assert_eq!(pg2.ip(), other);
    refused(pg).await;
    let mut c2 = net::connect(pg2).await;
    let id2 = agent.next_open("db").await;
    both_ways(&mut agent, &mut c2, id2, 5).await;
    // The stream accepted on the old `pg` socket is not dropped either.
    both_ways(&mut agent, &mut c, pg_id, 6).await;
    both_ways(&mut agent, &mut long, id, 7).await;

    let page = relay.metrics_text();
    assert_eq!(
        value(&page, "nowconnect_config_reloads_total{result=\"applied\"}"),
        3
    );
    let audited = relay.audit_records(&AuditFilter {
        action: Some(nowconnect_relay::Action::ConfigReload),
        ..AuditFilter::default()
    });
    assert_eq!(audited.len(), 3);
    assert!(audited.iter().all(|r| r.success));
}

#[tokio::test]
async fn an_invalid_file_or_a_port_in_use_is_refused_and_the_running_config_stays() {
    let dir = TempDir::new("reload-refused");
    let one = yaml::relay(&[("ldap", "addomain")], DEV);
    let (relay, path) = relay_from(&dir, &one).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "r-agent", &["addomain"]).await;
    let ldap = relay.listener_addr("ldap").expect("ldap");

    // An unknown key: the same one-line error as at start-up.
    let bad = format!("{one}bogus_key: 1\n");
    let startup = RelayConfig::from_yaml_str(&bad)
        .expect_err("invalid at start-up")
        .to_string();
    let e = reload(&relay, &path, &bad).await.expect_err("refused");
    assert_eq!(e, startup);
    assert!(e.contains("bogus_key") && !e.contains('\n'), "{e}");

    // A new listener on a port that is taken, together with an allowlist that would lock the
    // test out: refused whole, so the allowlist is not applied either.
    let taken = net::bind().await;
    let busy = format!(
        "listeners:\n  - name: ldap\n    bind: 127.0.0.1:0\n    connector: addomain\n    \
         allow_cidrs: [10.0.0.0/8]\n  - name: busy\n    bind: {}\n    connector: addomain\n\
         tunnel:\n  host: 127.0.0.1\n  port: 0\n{DEV}",
        net::addr(&taken)
    );
    let e = reload(&relay, &path, &busy).await.expect_err("port in use");
    assert!(
        e.contains("listeners[1] (busy)") && e.contains(&net::addr(&taken).to_string()),
        "{e}"
    );
    assert_eq!(relay.listener_addr("busy"), None);

    let mut c = net::connect(ldap).await;
    let id = agent.expect_open("addomain").await;
    both_ways(&mut agent, &mut c, id, 1).await;
    let page = relay.metrics_text();
    assert_eq!(
        value(&page, "nowconnect_config_reloads_total{result=\"refused\"}"),
        2
    );
    let refusals = relay.audit_records(&AuditFilter {
        action: Some(nowconnect_relay::Action::ConfigReload),
        success: Some(false),
        ..AuditFilter::default()
    });
    assert_eq!(refusals.len(), 2);
    assert_eq!(refusals[0].reason.as_deref(), Some("invalid_config"));
}

#[tokio::test]
async fn an_allowlist_change_applies_to_the_next_client_and_fixed_keys_need_a_restart() {
    let dir = TempDir::new("reload-allow");
    let one = yaml::relay(&[("ldap", "addomain")], DEV);
    let (relay, path) = relay_from(&dir, &one).await;
    let mut agent = v2_agent(relay.tunnel_addr(), "r-agent", &["addomain"]).await;
    let ldap = relay.listener_addr("ldap").expect("ldap");
    let mut before = net::connect(ldap).await;
    let id = agent.expect_open("addomain").await;

    let locked = one.replace(
        "    connector: addomain\n",
        "    connector: addomain\n    allow_cidrs: [10.0.0.0/8]\n",
    ) + "observability:\n  metrics_port: 0\n";
    let summary = reload(&relay, &path, &locked).await.expect("applied");
    assert!(summary.contains("~ldap"), "{summary}");
    assert!(
        summary.contains("needs a restart") && summary.contains("observability"),
        "{summary}"
    );
    assert_eq!(relay.listener_addr("ldap"), Some(ldap));
    // The next client is outside the new allowlist: closed before any OPEN.
    let mut refused = net::connect(ldap).await;
    let mut buf = [0u8; 1];
    let n = within("refused client closed", T, refused.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(
        value(
            &relay.metrics_text(),
            "nowconnect_connections_rejected_total{connector=\"addomain\",reason=\"cidr_blocked\"}"
        ),
        1
    );
    // The client admitted before still flows.
    both_ways(&mut agent, &mut before, id, 9).await;
}

#[tokio::test]
async fn a_new_tls_pair_is_used_by_the_next_handshake_and_open_tunnels_keep_theirs() {
    let dir = TempDir::new("reload-tls");
    let (old_ca, new_ca) = (Ca::new("Old CA"), Ca::new("New CA"));
    let (cert, key) = old_ca.issue(&["localhost"]).write(dir.path(), "relay");
    let tls = format!(
        "  tls:\n    cert_file: {}\n    key_file: {}\n{DEV}",
        cert.display(),
        key.display()
    );
    let text = yaml::relay(&[("ldap", "addomain")], &tls);
    let (relay, path) = relay_from(&dir, &text).await;
    let handshake = |ca: &Ca| {
        let (ca, addr) = (ca.connector(), relay.tunnel_addr());
        async move {
            let tcp = TcpStream::connect(addr).await.expect("connect /tunnel");
            ca.connect(pki::server_name("localhost"), tcp).await
        }
    };
    // A tunnel over the old pair, up across the reload.
    let tls_old = handshake(&old_ca).await.expect("old CA before the reload");
    let url = format!("wss://localhost:{}/tunnel", relay.tunnel_addr().port());
    let (ws, _) = mock_agent::handshake(tls_old, &url, Some(OFFER_BOTH), None)
        .await
        .expect("upgrade over TLS");
    let mut agent = MockAgent::v2(ws);
    agent.hello("tls-agent", &["addomain"]).await;

    // The operator replaces both files (certbot style) and reloads.
    let fresh = new_ca.issue(&["localhost"]);
    let (new_cert, new_key) = fresh.write(dir.path(), "fresh");
    std::fs::rename(&new_cert, &cert).expect("replace cert");
    std::fs::rename(&new_key, &key).expect("replace key");
    let summary = reload(&relay, &path, &text).await.expect("applied");
    assert!(summary.contains("tls certificate"), "{summary}");

    handshake(&new_ca)
        .await
        .expect("the new pair serves new handshakes");
    let old = handshake(&old_ca)
        .await
        .expect_err("the old CA no longer verifies");
    assert!(format!("{old}").contains("UnknownIssuer"), "{old}");
    // The tunnel that came up over the old pair still carries streams.
    let mut c = net::connect(relay.listener_addr("ldap").expect("ldap")).await;
    let id = agent.expect_open("addomain").await;
    c.write_all(b"after reload").await.expect("client write");
    assert_eq!(agent.recv().await, data(id, b"after reload"));

    // A key that does not match the certificate: refused, the new pair stays in use.
    let (_, other_key) = new_ca.issue(&["localhost"]).write(dir.path(), "other");
    std::fs::rename(&other_key, &key).expect("replace key");
    let e = reload(&relay, &path, &text)
        .await
        .expect_err("mismatched pair");
    assert!(e.contains("tunnel.tls"), "{e}");
    handshake(&new_ca)
        .await
        .expect("still the pair from the last good reload");
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nowconnect-relay"))
}

/// The binary on SIGHUP: reloads (a new listener is logged and served), refuses a broken file
/// in one logged line, and keeps running until SIGTERM, which still exits 0.
#[test]
fn binary_reloads_on_sighup_and_refuses_a_broken_file() {
    let dir = TempDir::new("relay-hup");
    let one = yaml::relay(&[("ldap", "addomain")], DEV);
    let path = dir.write("cloud.yaml", &one);
    let mut child = bin()
        .arg("--config")
        .arg(&path)
        .env("NC_LOG_LEVEL", "info")
        .env_remove("NC_LOG_FORMAT")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the relay");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line_with = |part: &str| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(part) => return l,
                Ok(_) => {}
                Err(e) => panic!("no log line containing {part:?}: {e}"),
            }
        }
    };
    let pid = child.id();
    let kill = |sig: &str| process::signal(pid, sig);
    line_with("relay HTTP server listening");

    temp::replace(
        &path,
        &yaml::relay(&[("ldap", "addomain"), ("pg", "db")], DEV),
    );
    kill("-HUP");
    let listening = line_with("listening");
    assert!(listening.contains("pg"), "{listening}");
    let applied = line_with("reload applied");
    assert!(applied.contains("listeners +pg"), "{applied}");

    temp::replace(&path, "listeners: [\n");
    kill("-HUP");
    let refused = line_with("reload refused");
    assert!(
        refused.contains("the running configuration stays"),
        "{refused}"
    );
    assert!(
        child.try_wait().expect("poll").is_none(),
        "SIGHUP must not kill the relay"
    );

    kill("-TERM");
    assert_eq!(
        process::wait_exit(&mut child, Duration::from_secs(10)),
        Some(0)
    );
}

/// A rotated JWKS file takes effect on reload (same path, new key); a new `jwks_url` that gives
/// no keys refuses the reload and the running keys stay.
#[tokio::test]
async fn a_rotated_jwks_file_is_read_on_reload_and_an_unreachable_new_url_refused() {
    use nowconnect_testkit::idp::{claims, ed_key, jwks, mint, ISSUER};
    let dir = TempDir::new("reload-jwks");
    let (old_key, new_key) = (ed_key("old-1"), ed_key("new-1"));
    let keys = dir.write("jwks.json", &jwks(&[&old_key]));
    let security = |url: &str| {
        yaml::relay(
            &[("ldap", "addomain")],
            &format!(
                "security:\n  jwks_url: {url}\n  issuer: {ISSUER}\n  auth_failure_limit: 100000\n"
            ),
        )
    };
    let file_url = format!("file://{}", keys.display());
    let (relay, path) = relay_from(&dir, &security(&file_url)).await;
    let accepted = |token: String| {
        let addr = relay.tunnel_addr();
        async move { mock_agent::upgrade(addr, Some(&token), None).await.is_ok() }
    };
    let new_token = mint(&new_key, &claims("premise-01"));
    assert!(accepted(mint(&old_key, &claims("premise-01"))).await);
    assert!(
        !accepted(new_token.clone()).await,
        "the new key is not known yet"
    );

    // Rotated together with a listener on a taken port: refused whole, the new key unused.
    temp::replace(&keys, &jwks(&[&new_key]));
    let taken = net::bind().await;
    let busy = security(&file_url).replace(
        "tunnel:\n",
        &format!(
            "  - name: busy\n    bind: {}\n    connector: db\ntunnel:\n",
            net::addr(&taken)
        ),
    );
    reload(&relay, &path, &busy).await.expect_err("port in use");
    assert!(
        !accepted(new_token.clone()).await,
        "a refused reload installed the new key"
    );
    assert!(accepted(mint(&old_key, &claims("premise-01"))).await);

    let summary = reload(&relay, &path, &security(&file_url))
        .await
        .expect("applied");
    assert!(!summary.contains("needs a restart"), "{summary}");
    assert!(
        accepted(new_token.clone()).await,
        "the rotated file was read on reload"
    );

    // A new URL nobody answers on: refused, the file's keys stay in use.
    let dead = net::bind().await;
    let dead_url = format!("http://{}/jwks.json", net::addr(&dead));
    drop(dead);
    let insecure =
        security(&dead_url).replace("security:\n", "security:\n  allow_insecure_http: true\n");
    let e = reload(&relay, &path, &insecure)
        .await
        .expect_err("no keys at the new URL");
    assert!(e.starts_with("security.jwks_url:"), "{e}");
    assert!(accepted(new_token).await);
}

/// The dev bypass can be turned off by a reload (tokens are required from then on), never on.
#[tokio::test]
async fn a_reload_turns_the_dev_bypass_off_but_never_on() {
    use nowconnect_testkit::idp::{claims, ed_key, jwks, mint, ISSUER};
    let dir = TempDir::new("reload-bypass");
    let key = ed_key("k-1");
    let keys = dir.write("jwks.json", &jwks(&[&key]));
    let dev = yaml::relay(&[("ldap", "addomain")], DEV);
    let (relay, path) = relay_from(&dir, &dev).await;
    let addr = relay.tunnel_addr();
    assert!(
        mock_agent::upgrade(addr, None, None).await.is_ok(),
        "bypass on at start"
    );

    let jwt = yaml::relay(
        &[("ldap", "addomain")],
        &format!(
            "security:\n  jwks_url: file://{}\n  issuer: {ISSUER}\n  auth_failure_limit: 100000\n",
            keys.display()
        ),
    );
    let summary = reload(&relay, &path, &jwt).await.expect("applied");
    assert!(summary.contains("security.dev_bypass off"), "{summary}");
    assert!(
        mock_agent::upgrade(addr, None, None).await.is_err(),
        "no token, no tunnel"
    );
    let token = mint(&key, &claims("premise-01"));
    assert!(mock_agent::upgrade(addr, Some(&token), None).await.is_ok());

    let e = reload(&relay, &path, &dev)
        .await
        .expect_err("bypass on by reload");
    assert!(e.starts_with("security.dev_bypass:"), "{e}");
    assert!(
        mock_agent::upgrade(addr, None, None).await.is_err(),
        "still off"
    );
}
