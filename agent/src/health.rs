//! The health port: every connection gets `OK\n` (tunnel not acknowledged) or `READY\n`
//! (HELLO_ACK received, tunnel up), then the socket is closed. Nothing is read or parsed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Shared READY flag: set by the tunnel after HELLO_ACK, cleared when the tunnel drops.
#[derive(Debug, Clone, Default)]
pub struct HealthState {
    ready: Arc<AtomicBool>,
}

impl HealthState {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn answer(&self) -> &'static [u8] {
        if self.is_ready() {
            b"READY\n"
        } else {
            b"OK\n"
        }
    }
}

/// Most health connections answered at once; more wait in the listen backlog.
const MAX_CONCURRENT: usize = 32;
/// How long we wait for a prober to close after our answer (so it never sees a reset).
const LINGER: Duration = Duration::from_secs(1);

/// Serves the health port until `cancel`.
pub async fn serve(listener: TcpListener, state: HealthState, cancel: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    // Owns the answering tasks: dropping `serve` aborts them with it.
    let mut answering = tokio::task::JoinSet::new();
    loop {
        while answering.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (sock, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "health accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let answer = state.answer();
        answering.spawn(async move {
            let _ = tokio::time::timeout(LINGER, respond(sock, answer)).await;
            drop(permit);
        });
    }
}

async fn respond(mut sock: TcpStream, answer: &[u8]) -> std::io::Result<()> {
    sock.write_all(answer).await?;
    sock.shutdown().await?;
    // Drain whatever the prober sent (an HTTP GET, say) so closing does not reset the socket
    // before it has read our answer.
    let mut sink = [0u8; 256];
    while sock.read(&mut sink).await? > 0 {}
    Ok(())
}
