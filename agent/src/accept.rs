//! The accept loop of the agent's small local servers (the health port, the metrics port): at
//! most `max` connections answered at once (more wait in the listen backlog), each within
//! `deadline`, so a slow or silent client loses its connection, never a slot for good; an
//! accept error (EMFILE and friends) backs off instead of spinning.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Answers each connection of `listener` with `answer` until `cancel`.
pub async fn serve_bounded<F, Fut>(
    listener: TcpListener,
    max: usize,
    deadline: Duration,
    what: &'static str,
    cancel: CancellationToken,
    mut answer: F,
) where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    // Owns the answering tasks: dropping `serve_bounded` aborts them with it.
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
        let sock = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((sock, _)) => sock,
                Err(e) => {
                    tracing::warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let reply = answer(sock);
        answering.spawn(async move {
            let _ = tokio::time::timeout(deadline, reply).await;
            drop(permit);
        });
    }
}
