//! Several relays as one service: a client on relay B reaches the agent on relay A over the
//! mesh (issue 16). The cluster view is set through the relay's test hook until the Redis
//! registry fills it.

use std::net::SocketAddr;
use std::time::Duration;

use nowconnect_agent::AgentHandle;
use nowconnect_relay::RelayHandle;
use nowconnect_testkit::chaos::{self, Mode};
use nowconnect_testkit::health::wait_health;
use nowconnect_testkit::io::{read_to_close, recv_hash, send_random};
use nowconnect_testkit::metrics::value;
use nowconnect_testkit::net;
use nowconnect_testkit::target;
use nowconnect_testkit::wait::{wait_for, within, DEADLINE};
use nowconnect_testkit::yaml;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::{listener, start_agent, start_relay};

const TEN_MIB: usize = 10 * 1024 * 1024;
const EPOCH: u64 = 7;

/// Relay YAML in `ha.mode: active` named `id`, one listener per connector, `mesh` lines
/// under `ha.mesh:` and `tunnel` lines under `tunnel:`.
fn ha_yaml(id: &str, connectors: &[&str], tunnel: &str, mesh: &str) -> String {
    nowconnect_testkit::log::init();
    let listeners: Vec<(&str, &str)> = connectors.iter().map(|c| (*c, *c)).collect();
    yaml::relay(
        &listeners,
        &format!(
            "  ping_interval_sec: 1\n  ping_timeout_sec: 2\n{tunnel}{}ha:\n  mode: active\n  replica_id: {id}\n  redis_url: redis://127.0.0.1:1\n  mesh:\n{mesh}",
            yaml::DEV
        ),
    )
}

const PLAIN: &str = "    require_mtls: false\n";

async fn agent_on(
    relay: &RelayHandle,
    agent_id: &str,
    targets: &[(&str, SocketAddr)],
) -> AgentHandle {
    let y = crate::agent_yaml(relay.tunnel_addr(), "v2", targets)
        .replace("agent_id: premise-01", &format!("agent_id: {agent_id}"));
    let agent = start_agent(&y).await;
    wait_health(agent.health_addr(), "READY\n", DEADLINE).await;
    agent
}

/// Relay A holds `premise-01` (epoch [`EPOCH`]) for `db`; B knows it through its view and
/// dials A at `a_url` (default: A's `/mesh`).
struct Pair {
    a: RelayHandle,
    b: RelayHandle,
    _agent: AgentHandle,
}

async fn pair_with(
    db: SocketAddr,
    a_mesh: &str,
    b_mesh: &str,
    b_connectors: &[&str],
    a_url: Option<String>,
) -> Pair {
    let a = start_relay(&ha_yaml("relay-a", &["db"], "", a_mesh)).await;
    let b = start_relay(&ha_yaml("relay-b", b_connectors, "", b_mesh)).await;
    let agent = agent_on(&a, "premise-01", &[("db", db)]).await;
    assert!(a.set_tunnel_epoch_for_test("premise-01", EPOCH));
    let url =
        a_url.unwrap_or_else(|| format!("ws://{}/mesh", a.mesh_addr().expect("A serves /mesh")));
    b.set_cluster_view_for_test(
        &[("db", "relay-a", "premise-01", EPOCH)],
        &[],
        &[("relay-a", &url)],
    );
    wait_for("B's link to A up", DEADLINE, || b.mesh_links_up() == 1).await;
    Pair {
        a,
        b,
        _agent: agent,
    }
}

/// A client at `addr` is closed without a byte (reset so early that even the connect may
/// report it).
async fn closed_without_data(addr: SocketAddr) {
    if let Ok(mut c) = tokio::net::TcpStream::connect(addr).await {
        let _ = c.write_all(b"ping").await;
        let (got, closed) = read_to_close(&mut c, DEADLINE).await;
        assert!(
            closed && got.is_empty(),
            "closed, nothing from a refused stream"
        );
    }
}

async fn pair(db: SocketAddr) -> Pair {
    pair_with(db, PLAIN, PLAIN, &["db"], None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_b_reaches_the_agent_on_a_ten_mib_each_way() {
    let (tx, rx) = oneshot::channel();
    let tx = std::sync::Arc::new(std::sync::Mutex::new(Some(tx)));
    let bulk = target::serve(move |mut s| {
        let tx = tx.clone();
        async move {
            let (mut r, mut w) = s.split();
            let (got, sent) = tokio::join!(recv_hash(&mut r), send_random(&mut w, 2, TEN_MIB));
            if let Some(tx) = tx.lock().expect("lock").take() {
                let _ = tx.send((got, sent));
            }
        }
    })
    .await;
    let p = pair(bulk.addr).await;
    assert_eq!(p.b.agents_for("db"), 0, "no agent on B itself");

    let mut client = net::connect(listener(&p.b, "db")).await;
    let (mut r, mut w) = client.split();
    let transfer = async { tokio::join!(send_random(&mut w, 1, TEN_MIB), recv_hash(&mut r)) };
    let (client_sent, (client_got_len, client_got)) =
        within("the cross-relay transfer", DEADLINE * 3, transfer).await;
    let ((target_got_len, target_got), target_sent) = rx.await.expect("target reports");
    assert_eq!(target_got_len, TEN_MIB, "target received every byte");
    assert_eq!(
        target_got, client_sent,
        "client -> target bytes are identical"
    );
    assert_eq!(client_got_len, TEN_MIB, "client received every byte");
    assert_eq!(
        client_got, target_sent,
        "target -> client bytes are identical"
    );

    let page = p.b.metrics_text();
    assert!(
        value(
            &page,
            "nowconnect_mesh_frames_total{dir=\"tx\",type=\"forward\"}"
        ) >= 1
    );
    assert!(
        value(
            &page,
            "nowconnect_mesh_frames_total{dir=\"rx\",type=\"data\"}"
        ) >= 10
    );
    assert_eq!(
        value(
            &page,
            "nowconnect_mesh_links{peer=\"relay-a\",state=\"up\"}"
        ),
        1
    );
    assert!(
        page.contains("nowconnect_mesh_rtt_seconds"),
        "rtt histogram exported"
    );
    wait_for("streams closed on both relays", DEADLINE, || {
        p.a.open_connections() == 0 && p.b.open_connections() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_on_b_stalls_only_its_own_stream() {
    // Target: a firehose for the slow client's stream, echo for the others (first byte picks).
    let fire = target::serve(|mut s| async move {
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).await.is_err() {
            return;
        }
        if first[0] == b'F' {
            let chunk = vec![0x5au8; 64 * 1024];
            // Bounded: 256 MiB at most, far more than every window and buffer on the way.
            for _ in 0..4096 {
                if s.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        } else {
            let _ = s.write_all(&first).await;
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let p = pair(fire.addr).await;
    let mut slow = net::connect(listener(&p.b, "db")).await;
    slow.write_all(b"F")
        .await
        .expect("slow client asks for the firehose");
    // Let the slow stream fill every window and buffer on its way (it never reads): the
    // bytes B received from A stop growing.
    let rx_data = |relay: &RelayHandle| {
        value(
            &relay.metrics_text(),
            "nowconnect_mesh_frames_total{dir=\"rx\",type=\"data\"}",
        )
    };
    let mut last = rx_data(&p.b);
    let mut still = 0;
    within("the slow stream stalls", DEADLINE * 2, async {
        while still < 5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = rx_data(&p.b);
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
    })
    .await;
    // Another stream on the same link keeps flowing, many round trips.
    let mut other = net::connect(listener(&p.b, "db")).await;
    let msg = vec![b'e'; 32 * 1024];
    for _ in 0..20 {
        other.write_all(&msg).await.expect("write");
        let mut back = vec![0u8; msg.len()];
        within(
            "an echo while the slow stream is stalled",
            DEADLINE,
            other.read_exact(&mut back),
        )
        .await
        .expect("echo");
        assert_eq!(back, msg);
    }
    // The slow stream was held back by credit, not dropped: it still reads its bytes.
    let mut buf = vec![0u8; 64 * 1024];
    let n = within(
        "the slow client reads at last",
        DEADLINE,
        slow.read(&mut buf),
    )
    .await
    .expect("read");
    assert!(n > 0 && buf[..n].iter().all(|b| *b == 0x5a));
    let page = p.b.metrics_text();
    // Every RST code is registered at 0, so the series is there to read.
    assert!(page.contains("\nnowconnect_rst_sent{code=\"flow_control\"} "));
    assert_eq!(
        value(&page, "nowconnect_rst_sent{code=\"flow_control\"}"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_a_stale_epoch_is_refused_by_the_owner_and_counted() {
    let echo = target::echo().await;
    let p = pair(echo.addr).await;
    // The agent reconnected to A under a newer claim; B's view still names the old one.
    assert!(p.a.set_tunnel_epoch_for_test("premise-01", EPOCH + 1));
    closed_without_data(listener(&p.b, "db")).await;
    let page = p.a.metrics_text();
    assert_eq!(value(&page, "nowconnect_owner_epoch_mismatch_total"), 1);
    // The directory knows a newer claim than A's tunnel: refused as well.
    assert!(p.a.set_tunnel_epoch_for_test("premise-01", EPOCH));
    p.a.set_cluster_view_for_test(&[], &[("premise-01", EPOCH + 5)], &[]);
    closed_without_data(listener(&p.b, "db")).await;
    assert_eq!(
        value(&p.a.metrics_text(), "nowconnect_owner_epoch_mismatch_total"),
        2
    );
    // With the current claim, the same path works.
    p.a.set_cluster_view_for_test(&[], &[], &[]);
    nowconnect_testkit::io::echo_through(listener(&p.b, "db"), b"fenced and fine", DEADLINE).await;
}

/// A registry entry whose fields cannot go into a FORWARD frame (an agent_id over 255 bytes):
/// the client is reset at once, not left waiting for a stream that never opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_that_does_not_encode_resets_the_client_at_once() {
    let echo = target::echo().await;
    let p = pair(echo.addr).await;
    let url = format!("ws://{}/mesh", p.a.mesh_addr().expect("A serves /mesh"));
    let long = "x".repeat(300);
    p.b.set_cluster_view_for_test(
        &[("db", "relay-a", &long, EPOCH)],
        &[],
        &[("relay-a", &url)],
    );
    closed_without_data(listener(&p.b, "db")).await;
    assert_eq!(
        value(
            &p.b.metrics_text(),
            "nowconnect_mesh_backpressure_drops_total{peer=\"relay-a\",reason=\"bad_forward\"}"
        ),
        1
    );
    // The link still serves a well-formed entry.
    p.b.set_cluster_view_for_test(
        &[("db", "relay-a", "premise-01", EPOCH)],
        &[],
        &[("relay-a", &url)],
    );
    nowconnect_testkit::io::echo_through(listener(&p.b, "db"), b"after a bad entry", DEADLINE)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_the_mesh_link_fails_only_cross_relay_flows_and_it_comes_back() {
    let echo = target::echo().await;
    let a = start_relay(&ha_yaml("relay-a", &["db"], "", PLAIN)).await;
    let b = start_relay(&ha_yaml("relay-b", &["db", "local"], "", PLAIN)).await;
    let _a_agent = agent_on(&a, "premise-01", &[("db", echo.addr)]).await;
    let _b_agent = agent_on(&b, "premise-02", &[("local", echo.addr)]).await;
    assert!(a.set_tunnel_epoch_for_test("premise-01", EPOCH));
    let proxy = chaos::proxy(a.mesh_addr().expect("mesh")).await;
    b.set_cluster_view_for_test(
        &[("db", "relay-a", "premise-01", EPOCH)],
        &[],
        &[("relay-a", &format!("ws://{}/mesh", proxy.addr))],
    );
    wait_for("link up through the proxy", DEADLINE, || {
        b.mesh_links_up() == 1
    })
    .await;

    let mut cross = net::connect(listener(&b, "db")).await;
    let mut local = net::connect(listener(&b, "local")).await;
    for s in [&mut cross, &mut local] {
        s.write_all(b"before").await.expect("write");
        let mut buf = [0u8; 6];
        within("echo before the cut", DEADLINE, s.read_exact(&mut buf))
            .await
            .expect("echo");
    }

    proxy.set(Mode::Cut);
    let (_, closed) = read_to_close(&mut cross, DEADLINE).await;
    assert!(closed, "the cross-relay stream ends with the link");
    local.write_all(b"during").await.expect("local write");
    let mut buf = [0u8; 6];
    within(
        "the local flow during the cut",
        DEADLINE,
        local.read_exact(&mut buf),
    )
    .await
    .expect("local echo");
    assert_eq!(&buf, b"during");
    let page = b.metrics_text();
    assert!(value(&page, "nowconnect_mesh_link_errors_total{peer=\"relay-a\"}") >= 1);
    assert_eq!(
        value(
            &page,
            "nowconnect_mesh_links{peer=\"relay-a\",state=\"up\"}"
        ),
        0
    );
    // `/readyz` names the link: it is needed (the view has an agent on relay-a).
    let (status, body) = nowconnect_testkit::http::get(b.tunnel_addr(), "/readyz").await;
    assert_eq!(
        status, 200,
        "degraded is still ready for local traffic: {body}"
    );
    assert!(
        body.contains("\"degraded\"") && body.contains("mesh_link_down:relay-a"),
        "{body}"
    );
    // A new cross-relay client is closed at once while the link is down.
    // (Reset so early that even the connect may report it.)
    if let Ok(mut refused) = tokio::net::TcpStream::connect(listener(&b, "db")).await {
        let (got, closed) = read_to_close(&mut refused, DEADLINE).await;
        assert!(closed && got.is_empty());
    }

    proxy.set(Mode::Pass);
    wait_for("the link is back by itself", DEADLINE * 2, || {
        b.mesh_links_up() == 1
    })
    .await;
    let page = b.metrics_text();
    assert!(
        value(
            &page,
            "nowconnect_mesh_link_reconnects_total{peer=\"relay-a\"}"
        ) >= 1
    );
    assert_eq!(
        value(
            &page,
            "nowconnect_mesh_links{peer=\"relay-a\",state=\"up\"}"
        ),
        1
    );
    nowconnect_testkit::io::echo_through(listener(&b, "db"), b"after", DEADLINE).await;
    let (_, body) = nowconnect_testkit::http::get(b.tunnel_addr(), "/readyz").await;
    assert!(!body.contains("mesh_link_down"), "{body}");

    // A stall: nothing moves but nothing closes; the keepalive finds it, and it heals.
    proxy.set(Mode::Stall);
    wait_for("a stalled link is declared down", DEADLINE * 2, || {
        b.mesh_links_up() == 0
    })
    .await;
    proxy.set(Mode::Pass);
    wait_for("and comes back", DEADLINE * 2, || b.mesh_links_up() == 1).await;
    nowconnect_testkit::io::echo_through(listener(&b, "db"), b"healed", DEADLINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_observes_the_mesh_but_never_forwards() {
    let echo = target::echo().await;
    let b_yaml = ha_yaml("relay-b", &["db"], "", PLAIN).replace("mode: active", "mode: shadow");
    let a = start_relay(&ha_yaml("relay-a", &["db"], "", PLAIN)).await;
    let b = start_relay(&b_yaml).await;
    let _agent = agent_on(&a, "premise-01", &[("db", echo.addr)]).await;
    assert!(a.set_tunnel_epoch_for_test("premise-01", EPOCH));
    let url = format!("ws://{}/mesh", a.mesh_addr().expect("mesh"));
    b.set_cluster_view_for_test(
        &[("db", "relay-a", "premise-01", EPOCH)],
        &[],
        &[("relay-a", &url)],
    );
    wait_for("the shadow relay links up", DEADLINE, || {
        b.mesh_links_up() == 1
    })
    .await;
    if let Ok(mut c) = tokio::net::TcpStream::connect(listener(&b, "db")).await {
        let (got, closed) = read_to_close(&mut c, DEADLINE).await;
        assert!(
            closed && got.is_empty(),
            "shadow: no local agent, the client is closed"
        );
    }
    let page = b.metrics_text();
    assert_eq!(
        value(
            &page,
            "nowconnect_mesh_frames_total{dir=\"tx\",type=\"forward\"}"
        ),
        0
    );
    assert_eq!(
        value(
            &page,
            "nowconnect_mesh_links{peer=\"relay-a\",state=\"up\"}"
        ),
        1
    );
}

mod raw {
    //! The owner's rules, driven by a raw mesh peer: duplicates, stale epochs, a lying origin.
    use nowconnect_shared::{Forward, Frame, RstCode};
    use nowconnect_testkit::mesh_peer::{self, Outcome};
    use nowconnect_testkit::mock_agent::data;

    use super::*;

    fn forward(id: u32, epoch: u64, origin: &str) -> Frame {
        Frame::Forward(Box::new(Forward {
            id,
            connector: "db".into(),
            agent_id: "premise-01".into(),
            epoch,
            client_addr: "127.0.0.9:4242".into(),
            origin: origin.into(),
        }))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplicates_are_dropped_and_stale_or_lying_forwards_refused() {
        let echo = target::echo().await;
        let a = start_relay(&ha_yaml("relay-a", &["db"], "", PLAIN)).await;
        let _agent = agent_on(&a, "premise-01", &[("db", echo.addr)]).await;
        assert!(a.set_tunnel_epoch_for_test("premise-01", EPOCH));
        let Outcome::Linked(mut peer) =
            mesh_peer::plain(a.mesh_addr().expect("mesh"), "relay-b").await
        else {
            panic!("a plain mesh peer links when require_mtls is off");
        };
        peer.send(&forward(1, EPOCH, "relay-b")).await;
        peer.send(&data(1, b"one")).await;
        let echoed = |f: Option<Frame>| match f {
            Some(Frame::Data { id: 1, payload }) => payload.to_vec(),
            other => panic!("expected DATA on 1, got {other:?}"),
        };
        assert_eq!(echoed(peer.recv().await), b"one");
        // The same stream offered again while live: dropped, the live one unharmed.
        peer.send(&forward(1, EPOCH, "relay-b")).await;
        peer.send(&data(1, b"two")).await;
        assert_eq!(echoed(peer.recv().await), b"two");
        assert_eq!(
            value(&a.metrics_text(), "nowconnect_cid_dedup_dropped_total"),
            1
        );
        // A stale claim, and an origin that is not the link's peer: RST each.
        peer.send(&forward(3, EPOCH - 1, "relay-b")).await;
        match peer.recv().await {
            Some(Frame::Rst { id: 3, code, .. }) => assert_eq!(code, RstCode::Denied),
            other => panic!("expected RST on 3, got {other:?}"),
        }
        assert_eq!(
            value(&a.metrics_text(), "nowconnect_owner_epoch_mismatch_total"),
            1
        );
        peer.send(&forward(5, EPOCH, "relay-x")).await;
        match peer.recv().await {
            Some(Frame::Rst { id: 5, code, .. }) => assert_eq!(code, RstCode::Protocol),
            other => panic!("expected RST on 5, got {other:?}"),
        }
    }
}

mod mtls {
    //! Mutual TLS between relays: good peers link, bad ones are refused (really sent).
    use nowconnect_testkit::mesh_peer::{self, Outcome};
    use nowconnect_testkit::pki::Ca;
    use nowconnect_testkit::temp::TempDir;

    use super::*;

    struct Pki {
        ca: Ca,
        dir: TempDir,
    }

    impl Pki {
        fn new() -> Pki {
            Pki {
                ca: Ca::new("Mesh CA"),
                dir: TempDir::new("mesh-pki"),
            }
        }

        /// `ha.mesh.tls` lines for a fresh leaf naming `id`.
        fn tls_lines(&self, id: &str) -> String {
            let ca = self.ca.write(self.dir.path(), "mesh-ca.pem");
            let (cert, key) = self.ca.issue(&[id]).write(self.dir.path(), id);
            format!(
                "    tls:\n      ca_bundle: {}\n      cert_file: {}\n      key_file: {}\n",
                ca.display(),
                cert.display(),
                key.display()
            )
        }
    }

    /// The three refusals, against a `/mesh` that expects relay-b to be a real relay.
    async fn refuses_bad_peers(pki: &Pki, addr: SocketAddr) {
        let no_cert = mesh_peer::tls(addr, "relay-a", pki.ca.client_config(), "relay-b").await;
        assert!(!no_cert.is_linked(), "no client certificate: {no_cert:?}");
        let other = Ca::new("Other CA").issue(&["relay-b"]);
        let foreign = mesh_peer::tls(
            addr,
            "relay-a",
            pki.ca.client_config_with(&other),
            "relay-b",
        )
        .await;
        assert!(
            !foreign.is_linked(),
            "another CA's certificate: {foreign:?}"
        );
        let wrong = pki.ca.issue(&["relay-c"]);
        let mismatch = mesh_peer::tls(
            addr,
            "relay-a",
            pki.ca.client_config_with(&wrong),
            "relay-b",
        )
        .await;
        assert!(
            matches!(mismatch, Outcome::Refused(403)),
            "SAN relay-c claiming relay-b: {mismatch:?}"
        );
        // The right certificate, same path: linked (so the refusals were about the certificate).
        let right = pki.ca.issue(&["relay-b"]);
        let ok = mesh_peer::tls(
            addr,
            "relay-a",
            pki.ca.client_config_with(&right),
            "relay-b",
        )
        .await;
        assert!(ok.is_linked(), "a certificate naming relay-b: {ok:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relays_link_over_mtls_on_their_own_listener_and_refuse_bad_peers() {
        let pki = Pki::new();
        let echo = target::echo().await;
        let mesh = |id: &str| format!("    listen: 127.0.0.1:0\n{}", pki.tls_lines(id));
        let a = start_relay(&ha_yaml("relay-a", &["db"], "", &mesh("relay-a"))).await;
        let b = start_relay(&ha_yaml("relay-b", &["db"], "", &mesh("relay-b"))).await;
        assert_ne!(
            a.mesh_addr(),
            Some(a.tunnel_addr()),
            "a listener of its own"
        );
        let _agent = agent_on(&a, "premise-01", &[("db", echo.addr)]).await;
        assert!(a.set_tunnel_epoch_for_test("premise-01", EPOCH));
        let url = format!("wss://{}/mesh", a.mesh_addr().expect("mesh"));
        b.set_cluster_view_for_test(
            &[("db", "relay-a", "premise-01", EPOCH)],
            &[],
            &[("relay-a", &url)],
        );
        wait_for("B's mTLS link to A", DEADLINE, || b.mesh_links_up() == 1).await;
        nowconnect_testkit::io::echo_through(listener(&b, "db"), b"over mtls", DEADLINE).await;
        refuses_bad_peers(&pki, a.mesh_addr().expect("mesh")).await;
        assert!(
            value(
                &a.metrics_text(),
                "nowconnect_mesh_link_errors_total{peer=\"unauthenticated\"}"
            ) >= 1,
            "the SAN mismatch is counted"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mesh_on_the_tunnel_server_asks_for_a_certificate_and_the_handler_checks_it() {
        let pki = Pki::new();
        let (cert, key) = pki
            .ca
            .issue(&["relay-a", "127.0.0.1"])
            .write(pki.dir.path(), "tunnel-a");
        let tunnel = format!(
            "  tls:\n    cert_file: {}\n    key_file: {}\n",
            cert.display(),
            key.display()
        );
        let a = start_relay(&ha_yaml(
            "relay-a",
            &["db"],
            &tunnel,
            &pki.tls_lines("relay-a"),
        ))
        .await;
        assert_eq!(
            a.mesh_addr(),
            Some(a.tunnel_addr()),
            "/mesh shares the tunnel server"
        );
        refuses_bad_peers(&pki, a.tunnel_addr()).await;
        let no_cert = mesh_peer::tls(
            a.tunnel_addr(),
            "relay-a",
            pki.ca.client_config(),
            "relay-b",
        )
        .await;
        assert!(
            matches!(no_cert, Outcome::Refused(403)),
            "agents have no certificate, so TLS lets it through and /mesh refuses: {no_cert:?}"
        );
        let page = a.metrics_text();
        assert!(
            value(
                &page,
                "nowconnect_mesh_link_errors_total{peer=\"unauthenticated\"}"
            ) >= 2
        );
    }
}
