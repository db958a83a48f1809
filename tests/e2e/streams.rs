//! Many streams on one tunnel, half-close, refused targets, and per-stream flow control.

use std::sync::atomic::Ordering;
use std::time::Duration;

use nowconnect_testkit::io::{connect_and_wait_closed, random_bytes};
use nowconnect_testkit::net;
use nowconnect_testkit::target;
use nowconnect_testkit::wait::{wait_for, wait_for_async, within, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::{listener, ready_agent, relay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_are_byte_exact() {
    let echo = target::echo().await;
    let relay = relay(&["echo"]).await;
    let _agent = ready_agent(&relay, "v2", &[("echo", echo.addr)]).await;
    let addr = listener(&relay, "echo");

    let clients = (0..200u64).map(|i| {
        tokio::spawn(async move {
            let data = random_bytes(i, 16 * 1024 + i as usize * 97);
            let mut s = net::connect(addr).await;
            let (mut r, mut w) = s.split();
            let write = async {
                w.write_all(&data).await.expect("write");
                w.shutdown().await.expect("shutdown");
            };
            let mut back = Vec::with_capacity(data.len());
            let (_, read) = tokio::join!(write, r.read_to_end(&mut back));
            read.expect("read");
            assert!(
                back == data,
                "stream {i}: echoed bytes differ ({} of {} bytes)",
                back.len(),
                data.len()
            );
        })
    });
    let all = futures_util::future::join_all(clients);
    for r in within("all streams to finish", DEADLINE * 2, all).await {
        r.expect("stream task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_lets_the_target_answer_after_client_eof() {
    // Target: reads until the client's EOF, then answers with what it counted.
    let half = target::serve(|mut s| async move {
        let mut all = Vec::new();
        if s.read_to_end(&mut all).await.is_ok() {
            let reply = format!("received {} bytes", all.len()).repeat(1000);
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    })
    .await;
    let relay = relay(&["half"]).await;
    for protocol in ["v2", "v1"] {
        let _agent = ready_agent(&relay, protocol, &[("half", half.addr)]).await;
        let mut s = net::connect(listener(&relay, "half")).await;
        s.write_all(&random_bytes(9, 300_000)).await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut reply = String::new();
        within("the reply", DEADLINE, s.read_to_string(&mut reply))
            .await
            .expect("read");
        assert_eq!(
            reply,
            "received 300000 bytes".repeat(1000),
            "{protocol}: full answer after half-close"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_target_closes_the_client_within_a_second() {
    let refused = target::refused();
    let relay = relay(&["gone"]).await;
    let _agent = ready_agent(&relay, "v2", &[("gone", refused.addr)]).await;
    let waited = connect_and_wait_closed(listener(&relay, "gone"), Duration::from_secs(5)).await;
    assert!(
        waited < Duration::from_secs(1),
        "client closed after {waited:?}, want < 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_without_agent_closes_the_client_at_once() {
    let relay = relay(&["orphan"]).await;
    let waited = connect_and_wait_closed(listener(&relay, "orphan"), Duration::from_secs(5)).await;
    assert!(
        waited < Duration::from_secs(1),
        "client closed after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_does_not_stall_another_stream_and_memory_stays_bounded() {
    const CAP: u64 = 256 * 1024 * 1024;
    let (hose, written) = target::firehose(CAP).await;
    let echo = target::echo().await;
    let relay = relay(&["hose", "echo"]).await;
    let _agent = ready_agent(&relay, "v2", &[("hose", hose.addr), ("echo", echo.addr)]).await;

    // Stream A: a client that never reads, with a small receive buffer.
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(64 * 1024).expect("rcvbuf");
    let _slow = sock
        .connect(listener(&relay, "hose"))
        .await
        .expect("connect slow client");
    wait_for("the firehose to start", DEADLINE, || {
        written.load(Ordering::Relaxed) > 0
    })
    .await;

    // Stream B on the same tunnel: 4 MiB echoed back while A is stuck.
    let data = random_bytes(3, 4 * 1024 * 1024);
    let mut s = net::connect(listener(&relay, "echo")).await;
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("shutdown");
    };
    let mut back = Vec::new();
    let both = async { tokio::join!(write, r.read_to_end(&mut back)) };
    within("stream B, not blocked by stream A", DEADLINE, both)
        .await
        .1
        .expect("read");
    assert!(back == data, "stream B bytes intact");

    // A's target is stalled by flow control: it has stopped far below what it tried to send.
    // Bound: kernel socket buffers on both sides (a few MiB each) plus one 256 KiB window.
    let mut last = 0;
    wait_for_async("the firehose to stall", DEADLINE, || {
        let now = written.load(Ordering::Relaxed);
        let stalled = now == last;
        last = now;
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stalled
        }
    })
    .await;
    let stalled_at = written.load(Ordering::Relaxed);
    assert!(
        stalled_at < 32 * 1024 * 1024,
        "target wrote {stalled_at} bytes: the tunnel is buffering without bound"
    );
}
