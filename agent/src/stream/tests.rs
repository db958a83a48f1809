//! What an idle open stream holds on the agent (issue 20, "Embedded footprint").

use super::*;
use nowconnect_shared::stream::{Role, StreamParams};

fn ctx() -> StreamCtx {
    let (out, _) = mpsc::channel(1);
    let (drained, _) = mpsc::unbounded_channel();
    StreamCtx {
        serial: 1,
        connector: "ldap".into(),
        target: Arc::new(crate::targets::TargetSet::new(
            crate::targets::Target::single("127.0.0.1", 1),
            std::time::Instant::now(),
        )),
        connect_timeout: Duration::from_secs(1),
        version: Version::V2,
        max_payload: 16 * 1024,
        send: SendHalf::new(1, Role::Agent, &StreamParams::new(Version::V2)),
        out,
        drained,
        sock: Arc::new(OnceLock::new()),
        metrics: AgentMetrics::default(),
        changed: Arc::new(tokio::sync::watch::channel(0).0),
    }
}

#[test]
fn stream_task_future_size() {
    let (_tx, rx) = inbox::inbox();
    let fut = run(ctx(), rx);
    let size = std::mem::size_of_val(&fut);
    println!("stream task future: {size} bytes (unoptimised build)");
    // Every idle open stream holds this much in its task: 1,584 bytes before issue 20 (a
    // tokio channel, readable()/writable() waiter nodes, an always-present timer), 1,200 after.
    assert!(size <= 1280, "the stream task grew to {size} bytes");
}
