//! A reference-style v1 agent, written here with tungstenite, against our relay.

use base64::Engine as _;
use nowconnect_shared::Version;
use nowconnect_testkit::mock_agent::{self, MockAgent};
use nowconnect_testkit::net;
use nowconnect_testkit::wait::{within, DEADLINE};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{listener, relay};

async fn raw_v1_agent_round_trip(offer_subprotocol: bool) {
    let relay = relay(&["addomain"]).await;
    let offer = offer_subprotocol.then_some("nowconnect.v1");
    let (ws, selected) = mock_agent::connect(relay.tunnel_addr(), offer)
        .await
        .expect("upgrade");
    assert_eq!(selected.as_deref(), offer);
    let mut ws = MockAgent::new(ws, Version::V1);

    let hello = json!({"t":"HELLO","agent_id":"premise-01","connectors":["addomain"],"ver":"1.5"});
    ws.send_json(&hello).await;
    assert_eq!(ws.recv_json().await, json!({"t":"HELLO_ACK"}));

    let mut client = net::connect(listener(&relay, "addomain")).await;
    client.write_all(b"ping through v1").await.expect("write");
    let open = ws.recv_json().await;
    assert_eq!(open["t"], "OPEN");
    assert_eq!(open["connector"], "addomain");
    let cid = open["cid"].as_str().expect("cid is a string").to_owned();

    // Collect DATA until we have the client's bytes, checking seq grows by one.
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut got = Vec::new();
    let mut next_seq = None;
    while got.len() < b"ping through v1".len() {
        let data = ws.recv_json().await;
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
        ws.send_json(&frame).await;
    }
    ws.send_json(&json!({"t":"FIN","cid":cid,"dir":"a2c"}))
        .await;
    client.shutdown().await.expect("client half-close");
    let mut reply = Vec::new();
    within("the reply", DEADLINE, client.read_to_end(&mut reply))
        .await
        .expect("read");
    assert_eq!(reply, b"pong from v1");
    let fin = ws.recv_json().await;
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
