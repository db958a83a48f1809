//! A reference-style v1 agent, written here with tungstenite, against our relay.

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .expect("ok");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("relay sends JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("v1 relay sent a non-text message: {other:?}"),
        }
    }
}

async fn raw_v1_agent_round_trip(offer_subprotocol: bool) {
    let relay = relay(&["addomain"]).await;
    let mut req = format!("ws://{}/tunnel", relay.tunnel_addr())
        .into_client_request()
        .expect("request");
    if offer_subprotocol {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "nowconnect.v1".parse().expect("header"),
        );
    }
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    let selected = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().expect("ascii").to_owned());
    assert_eq!(
        selected.as_deref(),
        offer_subprotocol.then_some("nowconnect.v1")
    );

    let hello = json!({"t":"HELLO","agent_id":"premise-01","connectors":["addomain"],"ver":"1.5"});
    ws.send(Message::text(hello.to_string()))
        .await
        .expect("send HELLO");
    assert_eq!(next_json(&mut ws).await, json!({"t":"HELLO_ACK"}));

    let mut client = TcpStream::connect(listener(&relay, "addomain"))
        .await
        .expect("client connects");
    client.write_all(b"ping through v1").await.expect("write");
    let open = next_json(&mut ws).await;
    assert_eq!(open["t"], "OPEN");
    assert_eq!(open["connector"], "addomain");
    let cid = open["cid"].as_str().expect("cid is a string").to_owned();

    // Collect DATA until we have the client's bytes, checking seq grows by one.
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut got = Vec::new();
    let mut next_seq = None;
    while got.len() < b"ping through v1".len() {
        let data = next_json(&mut ws).await;
        assert_eq!(data["t"], "DATA", "{data}");
        assert_eq!(data["cid"], cid.as_str());
        let seq = data["seq"].as_u64().expect("seq");
        if let Some(want) = next_seq {
            assert_eq!(seq, want, "seq grows by one");
        }
        next_seq = Some(seq + 1);
        got.extend(
            b64.decode(data["b64"].as_str().expect("b64"))
                .expect("base64"),
        );
    }
    assert_eq!(got, b"ping through v1");

    // Answer in two DATA frames, then FIN a2c.
    for (seq, part) in [(0, "pong "), (1, "from v1")] {
        let frame = json!({"t":"DATA","cid":cid,"seq":seq,"b64":b64.encode(part)});
        ws.send(Message::text(frame.to_string()))
            .await
            .expect("send DATA");
    }
    ws.send(Message::text(
        json!({"t":"FIN","cid":cid,"dir":"a2c"}).to_string(),
    ))
    .await
    .expect("send FIN");
    client.shutdown().await.expect("client half-close");
    let mut reply = Vec::new();
    tokio::time::timeout(DEADLINE, client.read_to_end(&mut reply))
        .await
        .expect("reply in time")
        .expect("read");
    assert_eq!(reply, b"pong from v1");
    let fin = next_json(&mut ws).await;
    assert_eq!(fin, json!({"t":"FIN","cid":cid,"dir":"c2a"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_v1_agent_without_subprotocol() {
    raw_v1_agent_round_trip(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_v1_agent_offering_nowconnect_v1() {
    raw_v1_agent_round_trip(true).await;
}
