//! The tunnel's only writer: one task owns the WebSocket sink and turns queued frames into
//! messages, feeding every frame that is ready and flushing once the queues drain, so several
//! frames share one TLS record and one syscall.
//!
//! Two queues feed it. `ctrl` (unbounded) carries what the tunnel reader produces: HELLO, RST,
//! WINDOW, pings, close. The reader must never wait on the writer (both peers waiting on full
//! socket buffers would deadlock), and each control frame answers one received frame or one
//! drained half-window, so the queue stays small while the socket moves. `data` (bounded)
//! carries the stream tasks' DATA/FIN: when the tunnel is slower than the targets, the streams
//! wait here instead of buffering without bound. Control frames go first.

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use nowconnect_shared::subprotocol::Version;
use nowconnect_shared::{binary, Frame, Limits, StreamId, V1Encoder};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::transport::WsStream;

/// Capacity of the data queue, in frames (each at most one max payload).
pub(crate) const DATA_QUEUE: usize = 64;
/// Most frames fed before a flush even if more are waiting (bounds flush latency).
const MAX_BATCH: usize = 64;

/// One item for the writer.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Encoded here for the tunnel's protocol version.
    Frame(Frame),
    /// A v2 frame already encoded by its producer (DATA read straight after its header).
    Encoded(Bytes),
    /// A WebSocket ping (keepalive).
    Ping,
    /// v1: frames of this stream carry the relay's own cid (it minted it in OPEN). Sent on
    /// the control queue before any frame of the stream.
    Bind(StreamId, String),
    /// v1: the stream's last frame has been queued; drop its cid/seq state. Travels behind
    /// the stream's frames so it is applied after they are encoded.
    Forget(StreamId),
    /// Close the WebSocket and stop.
    Close { code: u16, reason: String },
}

/// How frames become messages on this tunnel; owned by the writer.
#[derive(Debug)]
pub(crate) enum Encoder {
    V2(Limits),
    /// v1 keeps per-stream seq and cid state (see `V1Encoder`); the reader's decoder is separate.
    V1(V1Encoder),
}

impl Encoder {
    pub(crate) fn new(version: Version, limits: Limits) -> Encoder {
        match version {
            Version::V2 => Encoder::V2(limits),
            Version::V1 => Encoder::V1(V1Encoder::new(limits)),
        }
    }

    /// `None` for items that produce no message (Bind, Forget) or frames that fail to encode
    /// (which would be our bug; logged).
    fn encode(&mut self, item: Outgoing) -> Option<Message> {
        match (item, self) {
            (Outgoing::Encoded(b), _) => Some(Message::Binary(b)),
            (Outgoing::Ping, _) => Some(Message::Ping(Bytes::new())),
            (Outgoing::Close { code, reason }, _) => Some(Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            }))),
            (Outgoing::Bind(id, cid), Encoder::V1(codec)) => {
                if let Err(e) = codec.bind(id, &cid) {
                    tracing::error!(id, error = %e, "cannot keep the relay's cid");
                }
                None
            }
            (Outgoing::Forget(id), Encoder::V1(codec)) => {
                codec.forget(id);
                None
            }
            (Outgoing::Forget(_) | Outgoing::Bind(..), Encoder::V2(_)) => None,
            (Outgoing::Frame(f), Encoder::V2(limits)) => {
                match binary::encode_to_bytes(&f, limits) {
                    Ok(b) => Some(Message::Binary(b)),
                    Err(e) => {
                        tracing::error!(frame = f.kind(), id = f.stream_id(), error = %e, "cannot encode frame");
                        None
                    }
                }
            }
            (Outgoing::Frame(f), Encoder::V1(codec)) => match codec.encode(&f) {
                Ok(text) => Some(Message::text(text)),
                Err(e) => {
                    tracing::error!(frame = f.kind(), id = f.stream_id(), error = %e, "cannot encode frame");
                    None
                }
            },
        }
    }
}

/// Runs until the queues close, a Close was sent, or the WebSocket fails.
/// Returns the error text when the WebSocket failed.
pub(crate) async fn run(
    mut sink: SplitSink<WsStream, Message>,
    mut ctrl: mpsc::UnboundedReceiver<Outgoing>,
    mut data: mpsc::Receiver<Outgoing>,
    mut encoder: Encoder,
) -> Result<(), String> {
    loop {
        let first = tokio::select! {
            biased;
            Some(item) = ctrl.recv() => item,
            Some(item) = data.recv() => item,
            else => return Ok(()),
        };
        let mut closing = false;
        let mut next = Some(first);
        let mut fed = 0;
        while let Some(item) = next.take() {
            closing |= matches!(item, Outgoing::Close { .. });
            if let Some(msg) = encoder.encode(item) {
                sink.feed(msg).await.map_err(|e| e.to_string())?;
            }
            fed += 1;
            if closing || fed >= MAX_BATCH {
                break;
            }
            next = ctrl.try_recv().ok().or_else(|| data.try_recv().ok());
        }
        sink.flush().await.map_err(|e| e.to_string())?;
        if closing {
            return Ok(());
        }
    }
}
