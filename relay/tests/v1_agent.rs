//! The relay against a raw v1 agent speaking the reference system's JSON text frames.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type Agent = Ws<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn send(ws: &mut Agent, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

async fn recv(ws: &mut Agent) -> Value {
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("a frame before the deadline")
            .expect("open")
            .expect("ok");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Binary(_) => panic!("binary message on a v1 tunnel"),
            Message::Close(_) => panic!("closed"),
            _ => continue,
        }
    }
}

/// Connects like a reference agent (no subprotocol header) and says HELLO.
async fn v1_agent(relay: &nowconnect_relay::RelayHandle, offer: Option<&str>) -> Agent {
    let (mut ws, proto) = ws_connect(relay.tunnel_addr(), offer).await.unwrap();
    assert_eq!(proto.as_deref(), offer, "v1 echoed only when offered");
    send(
        &mut ws,
        json!({"t":"HELLO","agent_id":"premise-01","connectors":["addomain"],"ver":"1.5"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await, json!({"t":"HELLO_ACK"}));
    ws
}

#[tokio::test]
async fn reference_v1_agent_relays_bytes_with_seq_and_fin() {
    let relay = dev_relay().await;
    let mut ws = v1_agent(&relay, None).await;
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    let open = recv(&mut ws).await;
    assert_eq!(open["t"], "OPEN");
    assert_eq!(open["connector"], "addomain");
    let cid = open["cid"].as_str().unwrap().to_owned();
    assert_eq!(cid.len(), 36, "cid is UUID-shaped: {cid}");

    client.write_all(b"bind request").await.unwrap();
    let d = recv(&mut ws).await;
    assert_eq!(d["t"], "DATA");
    assert_eq!(d["cid"], cid.as_str());
    assert_eq!(d["seq"], 0);
    assert_eq!(
        B64.decode(d["b64"].as_str().unwrap()).unwrap(),
        b"bind request"
    );

    for (seq, part) in ["bind ", "response"].iter().enumerate() {
        send(
            &mut ws,
            json!({"t":"DATA","cid":cid,"seq":seq,"b64":B64.encode(part)}),
        )
        .await;
    }
    let mut buf = [0u8; 13];
    tokio::time::timeout(T, client.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"bind response");

    client.shutdown().await.unwrap();
    assert_eq!(
        recv(&mut ws).await,
        json!({"t":"FIN","cid":cid,"dir":"c2a"})
    );
    send(&mut ws, json!({"t":"FIN","cid":cid,"dir":"a2c"})).await;
    let (rest, closed) = read_to_close(&mut client, T).await;
    assert!(closed && rest.is_empty());
}

#[tokio::test]
async fn v1_offered_explicitly_and_rst_closes_client() {
    let relay = dev_relay().await;
    let mut ws = v1_agent(&relay, Some("nowconnect.v1")).await;
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    let cid = recv(&mut ws).await["cid"].as_str().unwrap().to_owned();
    send(&mut ws, json!({"t":"RST","cid":cid,"err":"connect_failed"})).await;
    let (_, closed) = read_to_close(&mut client, Duration::from_secs(1)).await;
    assert!(closed);
}

#[tokio::test]
async fn v1_seq_gap_resets_the_stream() {
    let relay = dev_relay().await;
    let mut ws = v1_agent(&relay, None).await;
    let mut client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    let cid = recv(&mut ws).await["cid"].as_str().unwrap().to_owned();
    send(
        &mut ws,
        json!({"t":"DATA","cid":cid,"seq":0,"b64":B64.encode("a")}),
    )
    .await;
    send(
        &mut ws,
        json!({"t":"DATA","cid":cid,"seq":2,"b64":B64.encode("b")}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
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
    let mut ws = v1_agent(&relay, None).await;
    // The client never reads: kernel buffers fill, then the relay's queue.
    let _client = TcpStream::connect(relay.listener_addr("ldap").unwrap())
        .await
        .unwrap();
    let cid = recv(&mut ws).await["cid"].as_str().unwrap().to_owned();
    let (mut tx, mut rx) = ws.split();
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
                break serde_json::from_str::<Value>(t.as_str()).unwrap();
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
    ws.send(Message::Ping(Vec::new().into())).await.unwrap();
}

#[tokio::test]
async fn binary_message_on_v1_closes_tunnel() {
    let relay = dev_relay().await;
    let mut ws = v1_agent(&relay, None).await;
    ws.send(Message::binary(vec![4u8, 0, 0, 0, 1]))
        .await
        .unwrap();
    let end = tokio::time::timeout(T, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(end, Some(1002));
    eventually("unregistered", || relay.agents_for("addomain") == 0).await;
}
