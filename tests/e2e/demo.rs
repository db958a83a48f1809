//! The README demo starts and carries bytes end to end.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_and_echoes_through_the_tunnel() {
    let demo = nowconnect::demo::start(0).await.expect("demo starts");
    demo.self_check(b"demo round trip")
        .await
        .expect("echo through the tunnel");
    demo.dashboard_check()
        .await
        .expect("the dashboard answers and the printed token signs the admin in");
    assert!(
        demo.dashboard_url.contains("/ui/#token="),
        "{}",
        demo.dashboard_url
    );
}
