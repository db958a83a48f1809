//! Bulk transfers: 10 MiB of random bytes each way, hashed on both ends, v1 and v2.

use nowconnect_testkit::io::{recv_hash, send_random};
use nowconnect_testkit::net;
use nowconnect_testkit::target;
use nowconnect_testkit::wait::{within, DEADLINE};
use tokio::sync::oneshot;

use crate::{listener, ready_agent, relay};

const TEN_MIB: usize = 10 * 1024 * 1024;

async fn ten_mib_each_way(protocol: &str) {
    // Target: hashes all it receives while sending its own 10 MiB, then reports both hashes.
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
    let relay = relay(&["bulk"]).await;
    let _agent = ready_agent(&relay, protocol, &[("bulk", bulk.addr)]).await;

    let mut client = net::connect(listener(&relay, "bulk")).await;
    let (mut r, mut w) = client.split();
    let transfer = async { tokio::join!(send_random(&mut w, 1, TEN_MIB), recv_hash(&mut r)) };
    let (client_sent, (client_got_len, client_got)) =
        within("the transfer", DEADLINE * 2, transfer).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_each_way_v2() {
    ten_mib_each_way("v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_each_way_v1() {
    ten_mib_each_way("v1").await;
}
