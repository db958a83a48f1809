//! The relay against a raw v1 agent speaking the reference system's JSON text frames, written
//! here as JSON (so the wire format itself is pinned).

use std::net::SocketAddr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use nowconnect_relay::{RelayConfig, RelayHandle};
use nowconnect_shared::Version;
use nowconnect_testkit::io::read_to_close;
use nowconnect_testkit::log;
use nowconnect_testkit::mock_agent::{self, MockAgent};
use nowconnect_testkit::net;
use nowconnect_testkit::wait::{wait_for, within, DEADLINE};
use nowconnect_testkit::yaml::{self, DEV};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(5);

type Agent = MockAgent<TcpStream>;

/// A relay with listener `ldap` (connector `addomain`) and `extra` config.
async fn relay(extra: &str) -> RelayHandle {
    log::init();
    let cfg = RelayConfig::from_yaml_str(&yaml::relay(&[("ldap", "addomain")], extra))
        .expect("valid relay config");
    nowconnect_relay::start(cfg).await.expect("relay starts")
}

fn ldap(relay: &RelayHandle) -> SocketAddr {
    relay.listener_addr("ldap").expect("listener ldap")
}

/// Connects like a reference agent (no subprotocol header unless `offer`) and says HELLO.
async fn v1_agent(relay: &RelayHandle, offer: Option<&str>) -> Agent {
    let (ws, proto) = mock_agent::connect(relay.tunnel_addr(), offer)
        .await
        .expect("upgrade");
    assert_eq!(proto.as_deref(), offer, "v1 echoed only when offered");
    let mut a = MockAgent::new(ws, Version::V1);
    a.send_json(
        &json!({"t":"HELLO","agent_id":"premise-01","connectors":["addomain"],"ver":"1.5"}),
    )
    .await;
    assert_eq!(a.recv_json().await, json!({"t":"HELLO_ACK"}));
    a
}

fn cid(open: &Value) -> String {
    open["cid"].as_str().expect("cid is a string").to_owned()
}

#[tokio::test]
async fn reference_v1_agent_relays_bytes_with_seq_and_fin() {
    let relay = relay(DEV).await;
    let mut agent = v1_agent(&relay, None).await;
    let mut client = net::connect(ldap(&relay)).await;
    let open = agent.recv_json().await;
    assert_eq!(open["t"], "OPEN");
    assert_eq!(open["connector"], "addomain");
    let cid = cid(&open);
    assert_eq!(cid.len(), 36, "cid is UUID-shaped: {cid}");

    client
        .write_all(b"bind request")
        .await
        .expect("client write");
    let d = agent.recv_json().await;
    assert_eq!(d["t"], "DATA");
    assert_eq!(d["cid"], cid.as_str());
    assert_eq!(d["seq"], 0);
    assert_eq!(
        B64.decode(d["b64"].as_str().expect("b64 is a string"))
            .expect("base64"),
        b"bind request"
    );

    for (seq, part) in ["bind ", "response"].iter().enumerate() {
        agent
            .send_json(&json!({"t":"DATA","cid":cid,"seq":seq,"b64":B64.encode(part)}))
            .await;
    }
    let mut buf = [0u8; 13];
    within("the answer at the client", T, client.read_exact(&mut buf))
        .await
        .expect("client read");
    assert_eq!(&buf, b"bind response");

    client.shutdown().await.expect("client half-close");
    assert_eq!(
        agent.recv_json().await,
        json!({"t":"FIN","cid":cid,"dir":"c2a"})
    );
    agent
        .send_json(&json!({"t":"FIN","cid":cid,"dir":"a2c"}))
        .await;
    let (rest, closed) = read_to_close(&mut client, T).await;
    assert!(closed && rest.is_empty());
}

#[tokio::test]
async fn v1_offered_explicitly_and_rst_closes_client() {
    let relay = relay(DEV).await;
    let mut agent = v1_agent(&relay, Some("nowconnect.v1")).await;
    let mut client = net::connect(ldap(&relay)).await;
    let cid = cid(&agent.recv_json().await);
    agent
        .send_json(&json!({"t":"RST","cid":cid,"err":"connect_failed"}))
        .await;
    let (_, closed) = read_to_close(&mut client, Duration::from_secs(1)).await;
    assert!(closed);
}

#[tokio::test]
async fn v1_seq_gap_resets_the_stream() {
    let relay = relay(DEV).await;
    let mut agent = v1_agent(&relay, None).await;
    let mut client = net::connect(ldap(&relay)).await;
    let cid = cid(&agent.recv_json().await);
    agent
        .send_json(&json!({"t":"DATA","cid":cid,"seq":0,"b64":B64.encode("a")}))
        .await;
    agent
        .send_json(&json!({"t":"DATA","cid":cid,"seq":2,"b64":B64.encode("b")}))
        .await;
    assert_eq!(
        agent.recv_json().await,
        json!({"t":"RST","cid":cid,"err":"protocol_error"})
    );
    let (_, closed) = read_to_close(&mut client, T).await;
    assert!(closed);
}

/// v1 has no credit: once a client's queue is full the relay stops reading that tunnel
/// (backpressure), and a client that still has not read after `ping_timeout_sec` is reset
/// with queue_overflow; then the tunnel is read again.
#[tokio::test]
async fn v1_queue_overflow_resets_with_queue_overflow() {
    // The first line continues the `tunnel` section.
    let cfg = format!("  ping_timeout_sec: 1\n{DEV}limits:\n  queue_depth_per_cid: 4\n");
    let relay = relay(&cfg).await;
    let mut agent = v1_agent(&relay, None).await;
    // The client never reads: kernel buffers fill, then the relay's queue.
    let _client = net::connect(ldap(&relay)).await;
    let cid = cid(&agent.recv_json().await);
    let (mut tx, mut rx) = agent.ws.split();
    let chunk = B64.encode(vec![0u8; 64 * 1024]);
    let frames = 400u64;
    let pusher = {
        let cid = cid.clone();
        tokio::spawn(async move {
            // Blocks while the relay does not read; 400 x 64 KiB is far more than the kernel
            // buffers and 4 queued frames hold.
            for seq in 0..frames {
                let f = json!({"t":"DATA","cid":cid,"seq":seq,"b64":chunk});
                if tx.send(Message::text(f.to_string())).await.is_err() {
                    break;
                }
            }
            tx
        })
    };
    let rst = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(Ok(Message::Text(t))) = rx.next().await {
                break serde_json::from_str::<Value>(t.as_str()).expect("JSON text");
            }
        }
    })
    .await
    .expect("an RST within 15 s");
    assert_eq!(rst, json!({"t":"RST","cid":cid,"err":"queue_overflow"}));
    assert!(relay
        .metrics_text()
        .contains("nowconnect_queue_overflow_total{side=\"relay\",connector=\"addomain\"} 1"));
    // The relay reads the tunnel again: every remaining frame (for the reset stream) is taken.
    let tx = tokio::time::timeout(Duration::from_secs(15), pusher)
        .await
        .expect("the rest of the frames were read")
        .expect("pusher");
    let mut ws = tx.reunite(rx).expect("same stream");
    ws.send(Message::Ping(Vec::new().into()))
        .await
        .expect("the tunnel is still open");
}

/// The relay's `nowconnect_buffered_bytes` gauge.
fn buffered(relay: &RelayHandle) -> u64 {
    relay
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix("nowconnect_buffered_bytes{dir=\"a2c\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("nowconnect_buffered_bytes gauge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_stream_of_a_non_reading_client_holds_under_a_mebibyte() {
    // Default queue limits: 256 frames but 512 KiB (256 x 64 KiB would be 16 MiB).
    let relay = relay(&format!("  ping_timeout_sec: 2\n{DEV}")).await;
    let mut agent = v1_agent(&relay, None).await;
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let _client = sock.connect(ldap(&relay)).await.expect("connect");
    let cid = cid(&agent.recv_json().await);
    let (mut tx, mut rx) = agent.ws.split();
    let chunk = B64.encode(vec![0u8; 64 * 1024]);
    let pusher = tokio::spawn(async move {
        // Far more than kernel buffers and the queue hold; blocks while the relay stalls.
        for seq in 0..1024u64 {
            let f = json!({"t":"DATA","cid":cid,"seq":seq,"b64":chunk});
            if tx.send(Message::text(f.to_string())).await.is_err() {
                break;
            }
        }
    });
    let mut most = 0;
    let rst = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            most = most.max(buffered(&relay));
            let next = tokio::time::timeout(Duration::from_millis(20), rx.next()).await;
            if let Ok(Some(Ok(Message::Text(t)))) = next {
                break serde_json::from_str::<Value>(t.as_str()).expect("JSON text");
            }
        }
    })
    .await
    .expect("an RST within 15 s");
    assert_eq!(rst["err"], "queue_overflow");
    assert!(
        most < 1 << 20,
        "the relay held {most} bytes for one v1 stream"
    );
    assert!(most >= 256 << 10, "the queue never filled ({most} bytes)");
    pusher.abort();
    wait_for("the stream's bytes given back", DEADLINE, || {
        buffered(&relay) == 0
    })
    .await;
}

#[tokio::test]
async fn binary_message_on_v1_closes_tunnel() {
    let relay = relay(DEV).await;
    let mut agent = v1_agent(&relay, None).await;
    agent
        .ws
        .send(Message::binary(vec![4u8, 0, 0, 0, 1]))
        .await
        .expect("send");
    assert_eq!(agent.close_code().await, Some(1002));
    wait_for("unregistered", DEADLINE, || {
        relay.agents_for("addomain") == 0
    })
    .await;
}
