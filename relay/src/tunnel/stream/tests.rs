//! The stream task on a real client socket pair, every channel of its tunnel in reach.

use std::net::SocketAddr;

use nowconnect_shared::{Dir, Role, StreamParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::audit::{Audit, AUDIT_RING};
use crate::config::PolicyDefaults;
use crate::sessions::TunnelInfo;
use crate::state::State;

const STEP: Duration = Duration::from_secs(10);

/// Takes the clients a stream reroutes (or refuses them, as a relay with no other agent).
#[derive(Debug, Default)]
struct Catch {
    accept: bool,
    got: std::sync::Mutex<Vec<(NewConn, String)>>,
}

impl Reroute for Catch {
    fn reroute(&self, conn: NewConn, except: &str) -> Result<(), Box<NewConn>> {
        if !self.accept {
            return Err(Box::new(conn));
        }
        self.got
            .lock()
            .expect("lock")
            .push((conn, except.to_owned()));
        Ok(())
    }
}

/// A stream task on a real client socket pair, with every channel of its tunnel in reach.
struct Rig {
    client: TcpStream,
    to_stream: mpsc::UnboundedSender<ToStream>,
    out: mpsc::Receiver<Out>,
    events: mpsc::UnboundedReceiver<StreamEvent>,
    task: tokio::task::JoinHandle<()>,
    router: Arc<Catch>,
    metrics: Arc<Metrics>,
}

async fn rig(window: u32, idle: Option<Duration>) -> Rig {
    rig_with(window, idle, false).await
}

/// [`rig`] whose router takes rerouted clients when `accept`.
async fn rig_with(window: u32, idle: Option<Duration>, accept: bool) -> Rig {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
    let (sock, peer) = accepted.expect("accept");
    let metrics = Arc::new(Metrics::new());
    let audit = Arc::new(Audit::open(AUDIT_RING, None, &metrics).expect("audit"));
    let defaults = PolicyDefaults {
        mfa_required: false,
        connector_scopes: false,
        pdp_enforce: false,
        cidr_allowlists: false,
    };
    let state = Arc::new(State::open(None, defaults, metrics.clone()).expect("state"));
    let (data, out) = mpsc::channel(16);
    let (events_tx, events) = mpsc::unbounded_channel();
    let agent_id: Arc<str> = Arc::from("a");
    let router = Arc::new(Catch {
        accept,
        ..Catch::default()
    });
    let t = Arc::new(TunnelCtx {
        version: Version::V2,
        max_payload: 64 * 1024,
        idle_timeout: idle,
        data,
        events: events_tx,
        token: CancellationToken::new(),
        active: Arc::new(AtomicUsize::new(1)),
        authz: Authorizer {
            agent_id: agent_id.clone(),
            tunnel_id: 1,
            grants: None,
            pdp: Default::default(),
            state,
            audit,
            metrics: metrics.clone(),
        },
        metrics: metrics.clone(),
        sessions: Arc::new(Sessions::default()),
        buffered: Arc::new(Budget::new(1 << 30, Default::default())),
        outbound: Arc::new(Budget::new(1 << 30, Default::default())),
        router: router.clone(),
    });
    let tunnel = Arc::new(TunnelInfo {
        tunnel_id: 1,
        agent_id,
        connectors: vec!["ad".into()],
        peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        since_ms: 0,
        protocol: "nowconnect.v2",
        agent_version: String::new(),
        active: Arc::new(AtomicUsize::new(0)),
        closed_c2a: AtomicU64::new(0),
        closed_a2c: AtomicU64::new(0),
        kick: CancellationToken::new(),
        epoch: Default::default(),
        targets: Default::default(),
    });
    let listener = Arc::new(ListenerCtx {
        name: "l".into(),
        connector: "ad".into(),
        allow_cidrs: Vec::new(),
        max_conn_per_source: 1,
        sources: Default::default(),
        metrics: metrics.connector("ad"),
        proxy_protocol: false,
        proxy_pending: Arc::default(),
        sni: None,
    });
    let conns = Arc::new(AtomicUsize::new(0));
    let params = StreamParams {
        window,
        ..StreamParams::new(Version::V2)
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let task = StreamTask {
        key: Key { id: 7, serial: 1 },
        send: SendHalf::new(7, Role::Relay, &params),
        sock: Arc::new(crate::conn::ClientSock::Tcp(sock)),
        rx,
        listener,
        info: Arc::new(SessionInfo {
            tunnel,
            cid: 7,
            connector: "ad".into(),
            client: peer,
            started_ms: 0,
            bytes_c2a: AtomicU64::new(0),
            bytes_a2c: AtomicU64::new(0),
            kill: CancellationToken::new(),
        }),
        activity: Arc::new(Activity::new()),
        guard: ConnGuard::try_acquire(&conns, 1).expect("slot"),
        replay: Replay::first(Instant::now()),
        reopen: None,
    };
    Rig {
        client: client.expect("connect"),
        to_stream: tx,
        out,
        events,
        task: tokio::spawn(run(t, task)),
        router,
        metrics,
    }
}

async fn next_out(r: &mut Rig) -> Out {
    tokio::time::timeout(STEP, r.out.recv())
        .await
        .expect("a frame in time")
        .expect("writer queue open")
}

/// The next item, which must be a frame to encode.
async fn next_frame(r: &mut Rig) -> Frame {
    match next_out(r).await {
        Out::Frame(f) => *f,
        other => panic!("expected a frame, got {other:?}"),
    }
}

async fn next_event(r: &mut Rig) -> StreamEvent {
    tokio::time::timeout(STEP, r.events.recv())
        .await
        .expect("an event in time")
        .expect("open")
}

#[tokio::test]
async fn relays_both_ways_within_credit_and_finishes_on_both_fins() {
    let mut r = rig(8, None).await;
    assert!(matches!(
        next_event(&mut r).await,
        StreamEvent::Opened(Key { id: 7, .. })
    ));
    assert!(matches!(
        next_frame(&mut r).await,
        Frame::Open { id: 7, .. }
    ));
    // c2a: one read of at most the credit (8 bytes), with the v2 header in front.
    r.client.write_all(b"0123456789").await.expect("write");
    let Out::Raw(frame, _) = next_out(&mut r).await else {
        panic!("DATA")
    };
    assert_eq!(&frame[nowconnect_shared::binary::HEADER_LEN..], b"01234567");
    // Out of credit: nothing more is read until WINDOW.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), r.out.recv())
            .await
            .is_err()
    );
    r.to_stream.send(ToStream::Window(8)).expect("send");
    let Out::Raw(frame, _) = next_out(&mut r).await else {
        panic!("DATA")
    };
    assert_eq!(&frame[nowconnect_shared::binary::HEADER_LEN..], b"89");
    // a2c: queued bytes reach the client and are reported as drained.
    r.to_stream
        .send(ToStream::Data(Bytes::from_static(b"hello")))
        .expect("send");
    let mut got = [0u8; 5];
    tokio::time::timeout(STEP, r.client.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&got, b"hello");
    assert!(matches!(
        next_event(&mut r).await,
        StreamEvent::Drained {
            bytes: 5,
            frames: 1,
            ..
        }
    ));
    // The agent's FIN (the session says when): the client sees EOF.
    r.to_stream.send(ToStream::ShutWrite).expect("send");
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, r.client.read_to_end(&mut rest))
        .await
        .expect("in time")
        .expect("read");
    assert!(rest.is_empty());
    // The client's EOF: FIN c2a, and the stream is over, cleanly.
    r.client.shutdown().await.expect("shutdown");
    assert!(matches!(
        next_frame(&mut r).await,
        Frame::Fin {
            id: 7,
            dir: Dir::C2a
        }
    ));
    assert!(matches!(
        next_event(&mut r).await,
        StreamEvent::Closed(Key { id: 7, .. })
    ));
    tokio::time::timeout(STEP, r.task)
        .await
        .expect("ends")
        .expect("no panic");
}

#[tokio::test]
async fn an_abort_cuts_the_client_with_a_reset_and_sends_nothing() {
    let mut r = rig(1024, None).await;
    assert!(matches!(next_frame(&mut r).await, Frame::Open { .. }));
    r.to_stream
        .send(ToStream::Abort(Abort::PeerReset(RstCode::ConnectFailed)))
        .expect("send");
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(STEP, r.client.read(&mut buf))
        .await
        .expect("in time");
    assert_eq!(
        read.map_err(|e| e.kind()).err(),
        Some(io::ErrorKind::ConnectionReset)
    );
    tokio::time::timeout(STEP, r.task)
        .await
        .expect("ends")
        .expect("no panic");
    assert!(r.out.try_recv().is_err(), "no RST answers the agent's RST");
}

#[tokio::test(start_paused = true)]
async fn an_idle_stream_is_reset_after_the_timeout() {
    let mut r = rig(1024, Some(Duration::from_secs(60))).await;
    assert!(matches!(next_frame(&mut r).await, Frame::Open { .. }));
    let start = Instant::now();
    // The paused clock jumps to each timer: the idle checks, then the reset.
    let rst = tokio::time::timeout(Duration::from_secs(600), r.out.recv()).await;
    let Ok(Some(Out::Frame(rst))) = rst else {
        panic!("RST")
    };
    let Frame::Rst { code, .. } = *rst else {
        panic!("RST")
    };
    assert_eq!(code, RstCode::IdleTimeout);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(60) && waited < Duration::from_secs(61),
        "reset after {waited:?}"
    );
}

fn retries(metrics: &Metrics, result: &str) -> u64 {
    let line = format!("nowconnect_open_retries_total{{connector=\"ad\",result=\"{result}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&line).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// `connect_failed` before the agent answered anything: the client (not reset) goes to the
/// router with every byte it sent, in order, and its EOF; the failed agent is excluded.
#[tokio::test]
async fn connect_failed_hands_the_client_and_its_bytes_to_another_agent() {
    let mut r = rig_with(1024, None, true).await;
    assert!(matches!(next_frame(&mut r).await, Frame::Open { .. }));
    r.client.write_all(b"bind request").await.expect("write");
    let Out::Raw(frame, _) = next_out(&mut r).await else {
        panic!("DATA")
    };
    assert_eq!(
        &frame[nowconnect_shared::binary::HEADER_LEN..],
        b"bind request"
    );
    r.client.write_all(b", more").await.expect("write");
    let Out::Raw(_, _) = next_out(&mut r).await else {
        panic!("DATA")
    };
    r.client.shutdown().await.expect("shutdown");
    assert!(matches!(next_frame(&mut r).await, Frame::Fin { .. }));
    r.to_stream
        .send(ToStream::Abort(Abort::PeerReset(RstCode::ConnectFailed)))
        .expect("send");
    tokio::time::timeout(STEP, r.task)
        .await
        .expect("ends")
        .expect("no panic");
    let (conn, except) = r.router.got.lock().expect("lock").pop().expect("rerouted");
    assert_eq!(except, "a", "never the agent that failed");
    let reopen = conn.reopen.expect("bytes to resend");
    let kept: Vec<u8> = reopen
        .chunks
        .iter()
        .flat_map(|c| c.payload.to_vec())
        .collect();
    assert_eq!(kept, b"bind request, more");
    assert!(reopen.eof);
    assert_eq!(retries(&r.metrics, "rerouted"), 1);
    // The client's connection lives on: the next agent's bytes reach it.
    conn.sock.writable().await.expect("writable");
    conn.sock.try_write(b"ok").expect("write");
    let mut got = [0u8; 2];
    tokio::time::timeout(STEP, r.client.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("not reset");
    assert_eq!(&got, b"ok");
}

/// An agent that answered (here WINDOW) has connected: its `connect_failed` is not retried.
#[tokio::test]
async fn an_agent_that_answered_is_not_retried() {
    let mut r = rig_with(1024, None, true).await;
    assert!(matches!(next_frame(&mut r).await, Frame::Open { .. }));
    r.client.write_all(b"x").await.expect("write");
    let Out::Raw(_, _) = next_out(&mut r).await else {
        panic!("DATA")
    };
    r.to_stream.send(ToStream::Window(1)).expect("send");
    r.to_stream
        .send(ToStream::Abort(Abort::PeerReset(RstCode::ConnectFailed)))
        .expect("send");
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(STEP, r.client.read(&mut buf))
        .await
        .expect("in time");
    assert_eq!(
        read.map_err(|e| e.kind()).err(),
        Some(io::ErrorKind::ConnectionReset)
    );
    tokio::time::timeout(STEP, r.task)
        .await
        .expect("ends")
        .expect("no panic");
    assert!(r.router.got.lock().expect("lock").is_empty());
    assert_eq!(retries(&r.metrics, "not_replayable"), 1);
}
