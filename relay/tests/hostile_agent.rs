//! A hostile (or compromised) agent against the relay, each attack sent for real over loopback:
//! the relay's memory stays bounded, the attacker's tunnel is closed or its stream reset, the
//! journal is not flooded, and another agent's clients are served throughout.
//!
//! The relay runs in this process, so its memory is this process's resident set
//! ([`process::rss_kib`]); bounds are generous against allocator noise and far below what the
//! attacks held before they were bounded (hundreds of MiB to GiB).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use nowconnect_relay::{RelayConfig, RelayHandle};
use nowconnect_shared::{Frame, RstCode, DEFAULT_WINDOW};
use nowconnect_testkit::log::{Capture, Format};
use nowconnect_testkit::mock_agent::{data, v2_agent, MockAgent};
use nowconnect_testkit::process::rss_kib;
use nowconnect_testkit::wait::{wait_for, DEADLINE};
use nowconnect_testkit::{net, yaml};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// How long one send may wait before the test calls the relay "not reading".
const SEND: Duration = Duration::from_secs(2);
/// A stream id the relay never gave out.
const UNKNOWN: u32 = 0x7000_0000;

/// A relay with listeners `ldap` (connector `addomain`, the attacker's) and `pg` (connector
/// `db`, an honest agent's), dev bypass, and `extra` lines under `tunnel:` / later sections.
async fn relay(extra: &str) -> RelayHandle {
    // Every test here captures the log (one global subscriber per test process).
    let _ = Capture::global(Format::Text);
    let yaml = yaml::relay(
        &[("ldap", "addomain"), ("pg", "db")],
        &format!("{extra}{}", yaml::DEV),
    );
    let cfg = RelayConfig::from_yaml_str(&yaml).expect("valid relay config");
    nowconnect_relay::start(cfg).await.expect("relay starts")
}

fn addr(relay: &RelayHandle, listener: &str) -> SocketAddr {
    relay.listener_addr(listener).expect("listener")
}

/// A client that never reads, with a small receive buffer: the kernel absorbs little of what
/// the relay writes to it, so the relay soon has to hold (or refuse) the rest.
async fn stuck_client(relay: &RelayHandle, listener: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    sock.connect(addr(relay, listener)).await.expect("connect")
}

/// A metric's value (first series whose line starts with `line`), 0 when absent.
fn metric(relay: &RelayHandle, line: &str) -> u64 {
    nowconnect_testkit::metrics::value(&relay.metrics_text(), line)
}

/// The only tunnel ending counted, once it is: the relay takes a tunnel out of the registry
/// before it counts why it ended (teardown runs in between, longer on a loaded machine), so
/// "gone" is not yet "counted". Every `agent_disconnects` series, joined, so a test can assert
/// that exactly one ending was counted and under which reason.
async fn the_disconnect(relay: &RelayHandle) -> String {
    let series = || {
        relay
            .metrics_text()
            .lines()
            .filter(|l| l.starts_with("nowconnect_agent_disconnects_total"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    wait_for("the tunnel's ending to be counted", DEADLINE, || {
        !series().is_empty()
    })
    .await;
    series().join("; ")
}

/// An honest agent serving `db` with one client: the relay still serves it.
struct Honest {
    agent: MockAgent<TcpStream>,
    client: TcpStream,
    id: u32,
}

impl Honest {
    async fn start(relay: &RelayHandle) -> Honest {
        let mut agent = v2_agent(relay.tunnel_addr(), "honest", &["db"]).await;
        let client = net::connect(addr(relay, "pg")).await;
        let id = agent.expect_open("db").await;
        Honest { agent, client, id }
    }

    /// A frame to the relay: with short keepalive settings, an agent that only waits (and so
    /// does not answer pings) would be timed out while the attack runs.
    async fn poke(&mut self) {
        let f = Frame::Window {
            id: self.id,
            credit: 1,
        };
        self.agent.try_feed(&f, SEND).await.expect("honest agent");
        self.agent.try_flush(SEND).await.expect("honest agent");
    }

    async fn still_served(&mut self) {
        self.agent.ping_pong(&mut self.client, self.id).await;
    }
}

/// Sends credited DATA on `id` (whose client never reads) until the relay stops returning
/// credit, keeping `reserve` bytes of credit back. Then the relay holds unwritten bytes for
/// the stream, so what comes next is queued, not written through. Returns the credit left.
async fn fill_until_queued(agent: &mut MockAgent<TcpStream>, id: u32, reserve: usize) -> usize {
    let chunk = vec![7u8; 16 * 1024];
    let mut credit = DEFAULT_WINDOW as usize;
    let mut sent = 0usize;
    loop {
        while credit > reserve {
            let n = chunk.len().min(credit - reserve);
            agent.send(&data(id, &chunk[..n])).await;
            credit -= n;
            sent += n;
        }
        match agent.try_recv(Duration::from_millis(500)).await {
            Some(Frame::Window { credit: c, .. }) => credit += c as usize,
            None => return credit,
            Some(other) => panic!("unexpected {other:?}"),
        }
        assert!(sent < 256 << 20, "credit never stopped coming back");
    }
}

/// The agent keeps talking (50 frames a second, silence is not what must end it) and reads
/// nothing, until the relay drops its tunnel (at most 20 s); `each` runs between frames.
async fn talk_until_closed(
    relay: &RelayHandle,
    agent: &mut MockAgent<TcpStream>,
    mut honest: Option<&mut Honest>,
    mut each: impl FnMut(),
) {
    let start = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for n in 0u32.. {
        if relay.agents_for("addomain") == 0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the stalled tunnel is still open"
        );
        each();
        if let Some(h) = honest.as_deref_mut() {
            h.poke().await;
        }
        let keepalive = Frame::Window {
            id: UNKNOWN + n,
            credit: 1,
        };
        if agent.try_feed(&keepalive, SEND).await.is_err() || agent.try_flush(SEND).await.is_err() {
            return;
        }
        pace.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_junk_cannot_pin_read_buffers() {
    const ROUNDS: usize = 20_000;
    // A fixed window, so what the stuck stream may hold is known to the byte below (with
    // autotuning its window, and the budget reserved for it, grow while the kernel takes the
    // bytes; `one_agent_holds_only_its_share_of_the_relay_wide_budget` bounds that).
    let relay = relay(&format!(
        "limits:\n  max_stream_window_bytes: {DEFAULT_WINDOW}\n"
    ))
    .await;
    let mut honest = Honest::start(&relay).await;
    let mut hostile = v2_agent(relay.tunnel_addr(), "hostile", &["addomain"]).await;
    let _stuck = stuck_client(&relay, "ldap").await;
    let id = hostile.expect_open("addomain").await;
    let credit = fill_until_queued(&mut hostile, id, ROUNDS).await;
    assert!(credit >= ROUNDS, "a byte of credit for every round");

    // [64 KiB for a stream that does not exist][1 credited byte for the stuck stream]: kept as
    // slices of the WebSocket read buffer, each byte would keep ~64 KiB alive (1.3 GiB here).
    let before = rss_kib();
    let junk = data(UNKNOWN, &[0xA5; 64 * 1024]);
    let one = data(id, b"x");
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..ROUNDS {
        hostile
            .try_feed(&junk, SEND)
            .await
            .expect("relay reads junk");
        hostile
            .try_feed(&one, SEND)
            .await
            .expect("relay reads data");
        if i % 64 == 63 {
            hostile.try_flush(SEND).await.expect("flush");
        }
        assert!(Instant::now() < deadline, "flood took too long");
    }
    hostile.try_flush(SEND).await.expect("flush");
    wait_for("the relay to read every junk frame", DEADLINE, || {
        metric(&relay, "nowconnect_frames_ignored_total") >= ROUNDS as u64
    })
    .await;
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 32 * 1024, "relay grew {grown} KiB");
    // What the relay holds for the stuck stream is what was credited (each queued frame
    // charged its bytes plus 96 for its buffer), not the junk around it.
    let held = metric(&relay, "nowconnect_buffered_bytes{dir=\"a2c\"} ");
    let most = DEFAULT_WINDOW as u64 + (ROUNDS as u64 + 64) * 96;
    assert!(held <= most, "held {held} bytes (at most {most})");
    assert!(
        held >= ROUNDS as u64 * 96,
        "the tiny frames are charged what they hold"
    );
    honest.still_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_reading_agent_flooding_unanswerable_frames_is_closed() {
    let relay = relay("").await;
    let mut honest = Honest::start(&relay).await;
    // This agent never reads: whatever the relay answered would pile up on its side. Its own
    // agent_id: the log is shared with the other tests of this file, which run at the same time.
    let mut hostile = v2_agent(relay.tunnel_addr(), "flooder", &["addomain"]).await;
    // The capture keeps every line (a debug line per ignored frame) in this process: it is not
    // the relay's memory, so what it adds is taken off.
    let capture = Capture::global(Format::Text);
    let (before, logged) = (rss_kib(), capture.len());
    let undecodable = Message::Binary(Bytes::from_static(&[0xff; 7]));
    let start = Instant::now();
    let mut sent = 0u32;
    let mut stopped = None;
    while start.elapsed() < Duration::from_secs(20) && sent < 2_000_000 {
        let r = match sent % 3 {
            0 => hostile.try_feed_msg(undecodable.clone(), SEND).await,
            // OPEN from an agent is answered RST; WINDOW for an unknown id is not.
            1 => {
                let open = Frame::Open {
                    id: UNKNOWN + sent,
                    connector: "addomain".into(),
                    client_addr: None,
                };
                hostile.try_feed(&open, SEND).await
            }
            _ => {
                let window = Frame::Window {
                    id: UNKNOWN + sent,
                    credit: 1,
                };
                hostile.try_feed(&window, SEND).await
            }
        };
        sent += 1;
        let r = if r.is_ok() && sent.is_multiple_of(256) {
            hostile.try_flush(SEND).await
        } else {
            r
        };
        if let Err(e) = r {
            stopped = Some(e);
            break;
        }
    }
    assert!(stopped.is_some(), "the relay kept reading {sent} frames");
    wait_for("the hostile tunnel to be gone", DEADLINE, || {
        relay.agents_for("addomain") == 0
    })
    .await;
    assert_eq!(
        the_disconnect(&relay).await,
        "nowconnect_agent_disconnects_total{reason=\"protocol_error\"} 1"
    );
    let log_kib = (capture.len().saturating_sub(logged) / 1024) as u64;
    let grown = rss_kib().saturating_sub(before).saturating_sub(log_kib);
    assert!(
        grown < 64 * 1024,
        "relay grew {grown} KiB after {sent} frames (the log capture's {log_kib} KiB taken off)"
    );
    let log = Capture::global(Format::Text).text();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("flooder"))
        .count();
    assert!(
        warnings <= 20,
        "{warnings} warnings for one agent after {sent} frames"
    );
    assert!(metric(&relay, "nowconnect_frames_ignored_total") >= 65_536);
    honest.still_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_reading_agent_beyond_credit_is_reset_and_then_closed_as_stalled() {
    let relay = relay("  ping_interval_sec: 1\n  ping_timeout_sec: 2\n").await;
    let mut honest = Honest::start(&relay).await;
    let mut hostile = v2_agent(relay.tunnel_addr(), "hostile", &["addomain"]).await;
    let _stuck = stuck_client(&relay, "ldap").await;
    let stuck = hostile.expect_open("addomain").await;
    let mut uploader = net::connect(addr(&relay, "ldap")).await;
    let upload = hostile.expect_open("addomain").await;
    let before = rss_kib();
    // From now on the agent reads nothing. Credit for a large upload, so the relay has bytes
    // to write that the agent never takes.
    let grant = Frame::Window {
        id: upload,
        credit: 1 << 30,
    };
    hostile.try_feed(&grant, SEND).await.expect("window");
    // DATA on the stuck stream without waiting for credit: the kernel takes little, the
    // window the rest, and then the relay must refuse.
    let chunk = data(stuck, &[9; 64 * 1024]);
    let flow_control = "nowconnect_rst_sent{code=\"flow_control\"}";
    for i in 0..128 {
        hostile.try_feed(&chunk, SEND).await.expect("data");
        if i % 8 == 7 {
            hostile.try_flush(SEND).await.expect("flush");
            if metric(&relay, flow_control) > 0 {
                break;
            }
        }
    }
    wait_for("RST flow_control", DEADLINE, || {
        metric(&relay, flow_control) == 1
    })
    .await;
    honest.poke().await;
    // The upload fills the agent's socket; the relay gives up on the tunnel after
    // ping_timeout without progress, though the agent keeps sending.
    let block = vec![3u8; 256 * 1024];
    let upload_done = tokio::spawn(async move {
        for _ in 0..256 {
            if uploader.write_all(&block).await.is_err() {
                break;
            }
        }
    });
    talk_until_closed(&relay, &mut hostile, Some(&mut honest), || {}).await;
    wait_for("the stalled tunnel to be gone", DEADLINE, || {
        relay.agents_for("addomain") == 0
    })
    .await;
    assert_eq!(
        the_disconnect(&relay).await,
        "nowconnect_agent_disconnects_total{reason=\"write_stall\"} 1"
    );
    upload_done.abort();
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "relay grew {grown} KiB");
    honest.still_served().await;
}

/// Honours credit on `id` (whose client never reads) until it stops coming back (the relay then
/// holds 128-256 KiB for the stream) or the relay resets streams of this agent. Returns how many
/// RSTs (all `queue_overflow`) arrived; it stops at the one for `id`.
async fn fill_or_reset(agent: &mut MockAgent<TcpStream>, id: u32) -> usize {
    let chunk = vec![5u8; 16 * 1024];
    let mut credit = DEFAULT_WINDOW as usize;
    let mut sent = 0usize;
    let mut reset = 0;
    loop {
        while credit > 0 {
            let n = chunk.len().min(credit);
            agent
                .try_feed(&data(id, &chunk[..n]), SEND)
                .await
                .expect("data");
            credit -= n;
            sent += n;
        }
        agent.try_flush(SEND).await.expect("flush");
        loop {
            match agent.try_recv(Duration::from_millis(500)).await {
                Some(Frame::Window { id: w, credit: c }) if w == id => {
                    credit += c as usize;
                    break;
                }
                Some(Frame::Window { .. }) => continue,
                Some(Frame::Rst { id: r, code, .. }) => {
                    assert_eq!(code, RstCode::QueueOverflow);
                    reset += 1;
                    if r == id {
                        return reset;
                    }
                }
                None => return reset,
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(sent < 64 << 20, "credit never stopped coming back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_holds_only_its_share_of_the_relay_wide_budget() {
    const STREAMS: usize = 16;
    const SHARE: u64 = 512 << 10;
    let a2c = "nowconnect_buffered_bytes{dir=\"a2c\"} ";
    // 4 MiB: 2 MiB for client-bound bytes, a quarter of that per tunnel; a stream alone holds
    // up to its 256 KiB window.
    let relay = relay("limits:\n  max_buffered_bytes: 4194304\n").await;
    let mut honest = Honest::start(&relay).await;
    let mut hostile = v2_agent(relay.tunnel_addr(), "hostile", &["addomain"]).await;
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..STREAMS {
        clients.push(stuck_client(&relay, "ldap").await);
        ids.push(hostile.expect_open("addomain").await);
    }
    // Sixteen streams of 128-256 KiB cannot fit in the tunnel's 512 KiB; two always do.
    let mut reset = 0;
    for id in &ids {
        reset += fill_or_reset(&mut hostile, *id).await;
    }
    assert_eq!(
        metric(&relay, "nowconnect_rst_sent{code=\"queue_overflow\"}"),
        reset as u64
    );
    assert!((1..STREAMS).contains(&reset), "{reset} of {STREAMS} reset");
    let held = metric(&relay, a2c);
    assert!(
        held <= SHARE,
        "one tunnel holds {held} bytes, over its share"
    );
    assert!(held >= 256 << 10, "held only {held} bytes");

    // Another site's client that does not read yet: its bytes wait in its own tunnel's share,
    // the relay-wide budget still has room, nothing of it is reset.
    let _slow = stuck_client(&relay, "pg").await;
    let slow = honest.agent.expect_open("db").await;
    assert_eq!(fill_or_reset(&mut honest.agent, slow).await, 0);
    let now = metric(&relay, a2c);
    assert!(
        now > held,
        "the slow client's bytes wait in the budget ({held} -> {now})"
    );
    honest.still_served().await;
    drop(clients);
    drop(_slow);
    wait_for("budget given back", DEADLINE, || metric(&relay, a2c) == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_bound_budget_pauses_clients_and_comes_back_when_the_tunnel_dies() {
    const UPLOADS: usize = 4;
    let c2a = "nowconnect_buffered_bytes{dir=\"c2a\"} ";
    let relay = relay(
        "  ping_interval_sec: 1\n  ping_timeout_sec: 2\nlimits:\n  max_buffered_bytes: 4194304\n",
    )
    .await;
    let mut hostile = v2_agent(relay.tunnel_addr(), "hostile", &["addomain"]).await;
    let mut uploads = Vec::new();
    for _ in 0..UPLOADS {
        let client = net::connect(addr(&relay, "ldap")).await;
        let id = hostile.expect_open("addomain").await;
        let grant = Frame::Window {
            id,
            credit: 1 << 30,
        };
        hostile.try_feed(&grant, SEND).await.expect("window");
        uploads.push(client);
    }
    hostile.try_flush(SEND).await.expect("flush");
    // From now on the agent reads nothing; the clients upload as fast as they can.
    let pushers: Vec<_> = uploads
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let block = vec![1u8; 64 * 1024];
                for _ in 0..1024 {
                    if c.write_all(&block).await.is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    let mut most = 0;
    talk_until_closed(&relay, &mut hostile, None, || {
        most = most.max(metric(&relay, c2a))
    })
    .await;
    // 4 MiB: 2 MiB for agent-bound bytes, this tunnel's share a quarter of that.
    assert!(
        most <= 512 << 10,
        "held {most} client bytes over the tunnel's share"
    );
    assert!(most >= 256 << 10, "the budget never filled ({most} bytes)");
    assert_eq!(
        the_disconnect(&relay).await,
        "nowconnect_agent_disconnects_total{reason=\"write_stall\"} 1"
    );
    wait_for("the dead tunnel's bytes given back", DEADLINE, || {
        metric(&relay, c2a) == 0
    })
    .await;
    for p in pushers {
        p.abort();
    }
    // With the budget back, other agents' clients upload again.
    let mut honest = Honest::start(&relay).await;
    honest.still_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_a_non_reading_agent_leaves_unread_stop_its_reader() {
    let c2a = "nowconnect_buffered_bytes{dir=\"c2a\"} ";
    let ignored = "nowconnect_frames_ignored_total";
    // Keepalive and stall limits far away: only backpressure is at work here.
    let relay = relay("  ping_interval_sec: 60\n  ping_timeout_sec: 60\n").await;
    let mut hostile = v2_agent(relay.tunnel_addr(), "hostile", &["addomain"]).await;
    let mut uploader = net::connect(addr(&relay, "ldap")).await;
    let id = hostile.expect_open("addomain").await;
    let grant = Frame::Window {
        id,
        credit: 1 << 30,
    };
    hostile.try_feed(&grant, SEND).await.expect("window");
    hostile.try_flush(SEND).await.expect("flush");
    // The agent reads nothing from now on. An upload fills its socket and blocks the writer.
    let upload = tokio::spawn(async move {
        let block = vec![4u8; 64 * 1024];
        for _ in 0..1024 {
            if uploader.write_all(&block).await.is_err() {
                break;
            }
        }
    });
    wait_for(
        "the writer blocked behind the agent's full socket",
        DEADLINE,
        || metric(&relay, c2a) >= 8 << 20,
    )
    .await;
    // Every OPEN from an agent is answered with an RST, which now has nowhere to go.
    let mut sent = 0u32;
    let blocked = loop {
        let open = Frame::Open {
            id: UNKNOWN + sent,
            connector: "addomain".into(),
            client_addr: None,
        };
        let r = hostile.try_feed(&open, SEND).await;
        let r = if r.is_ok() && sent.is_multiple_of(256) {
            hostile.try_flush(SEND).await
        } else {
            r
        };
        if r.is_err() {
            break true;
        }
        sent += 1;
        if sent >= 400_000 {
            break false;
        }
    };
    assert!(
        blocked,
        "the relay kept reading {sent} frames it could not answer"
    );
    // It stopped once its control queue (1,024) and the answers waiting behind it were full,
    // long before the flood limit (65,536): the rest waits in socket buffers. Besides the
    // queue, the writer's WebSocket buffer (256 KiB) takes what RSTs fit before the writer
    // blocks: a few thousand, depending on how much DATA it held when the socket filled (CI
    // once saw 5,122).
    let read = metric(&relay, ignored);
    assert!(
        (1024..16_384).contains(&read),
        "the relay read {read} of {sent} OPENs"
    );
    assert_eq!(
        relay.agents_for("addomain"),
        1,
        "closed for flooding instead"
    );
    upload.abort();
}
