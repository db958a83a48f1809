//! A stream task's inbox: what the session tells one stream, one sender (the session's stream
//! table entry) and one receiver (the stream task), unbounded.
//!
//! Why not a tokio unbounded channel: it allocates a block of 32 message slots and two
//! cache-padded halves up front, about 1.7 KiB per stream, held for as long as the stream is
//! open. This holds an empty queue and a waker while the stream is idle, and gives a queue that
//! grew in a burst back once it is drained.
//!
//! What bounds the queue: the session queues DATA only within the stream's receive window (v2)
//! or queue limit (v1), and at most a few control messages per frame from the relay.
//!
//! Dropping the sender ends the stream: the receiver returns `None` once the queue is drained.
//! Dropping the receiver drops what is queued and makes every later send fail.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// A drained queue keeps its buffer up to this many messages (a few control messages need no
/// allocation each); a larger one is given back.
const KEEP: usize = 4;

/// Creates an inbox.
pub(crate) fn inbox<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Mutex::new(State {
        queue: VecDeque::new(),
        waker: None,
        sender_gone: false,
        receiver_gone: false,
    }));
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    /// The receiver's task while it waits for a message.
    waker: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

/// Nothing panics while holding the lock (no user code runs under it), so a poisoned lock
/// still holds a consistent state.
fn lock<T>(m: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The session's end.
#[derive(Debug)]
pub(crate) struct Sender<T> {
    shared: Arc<Mutex<State<T>>>,
}

impl<T> Sender<T> {
    /// Queues `m`; gives it back when the receiver is gone.
    pub(crate) fn send(&self, m: T) -> Result<(), T> {
        let waker = {
            let mut s = lock(&self.shared);
            if s.receiver_gone {
                return Err(m);
            }
            s.queue.push_back(m);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut s = lock(&self.shared);
            s.sender_gone = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The stream task's end.
#[derive(Debug)]
pub(crate) struct Receiver<T> {
    shared: Arc<Mutex<State<T>>>,
}

impl<T> Receiver<T> {
    /// The next message; `None` once the sender is gone and everything it sent was received.
    /// Cancel safe: a message is taken only when this returns it.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = lock(&self.shared);
        if let Some(m) = s.queue.pop_front() {
            if s.queue.is_empty() && s.queue.capacity() > KEEP {
                s.queue = VecDeque::new();
            }
            return Poll::Ready(Some(m));
        }
        if s.sender_gone {
            return Poll::Ready(None);
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let queued = {
            let mut s = lock(&self.shared);
            s.receiver_gone = true;
            s.waker = None;
            std::mem::take(&mut s.queue)
        };
        // Dropped outside the lock.
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll<T>(rx: &mut Receiver<T>, count: &Arc<Count>) -> Poll<Option<T>> {
        let waker = Waker::from(count.clone());
        rx.poll_recv(&mut Context::from_waker(&waker))
    }

    #[test]
    fn messages_arrive_in_order_and_wake_the_receiver() {
        let (tx, mut rx) = inbox();
        let count = Arc::new(Count::default());
        assert!(poll(&mut rx, &count).is_pending());
        tx.send(1).expect("receiver alive");
        tx.send(2).expect("receiver alive");
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "one wake for a waiting receiver"
        );
        assert_eq!(poll(&mut rx, &count), Poll::Ready(Some(1)));
        assert_eq!(poll(&mut rx, &count), Poll::Ready(Some(2)));
        assert!(poll(&mut rx, &count).is_pending());
    }

    #[test]
    fn a_dropped_sender_ends_the_stream_after_what_it_sent() {
        let (tx, mut rx) = inbox();
        let count = Arc::new(Count::default());
        tx.send(7).expect("receiver alive");
        assert_eq!(poll(&mut rx, &count), Poll::Ready(Some(7)));
        assert!(poll(&mut rx, &count).is_pending());
        drop(tx);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the drop wakes the receiver"
        );
        assert_eq!(poll(&mut rx, &count), Poll::Ready(None));
    }

    #[test]
    fn sends_fail_once_the_receiver_is_gone_and_drop_what_was_queued() {
        let (tx, rx) = inbox();
        let held = Arc::new(());
        tx.send(held.clone()).expect("receiver alive");
        drop(rx);
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "the queued message was dropped"
        );
        assert!(tx.send(held.clone()).is_err());
    }

    #[test]
    fn a_drained_burst_gives_its_buffer_back() {
        let (tx, mut rx) = inbox();
        let count = Arc::new(Count::default());
        for i in 0..100 {
            tx.send(i).expect("receiver alive");
        }
        for i in 0..100 {
            assert_eq!(poll(&mut rx, &count), Poll::Ready(Some(i)));
        }
        assert_eq!(lock(&tx.shared).queue.capacity(), 0);
        tx.send(1).expect("receiver alive");
        assert_eq!(poll(&mut rx, &count), Poll::Ready(Some(1)));
        assert!(
            lock(&tx.shared).queue.capacity() <= KEEP,
            "a small queue is kept"
        );
    }

    #[tokio::test]
    async fn recv_waits_for_a_send_from_another_task() {
        let (tx, mut rx) = inbox();
        let task = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.send("hello").expect("receiver alive");
        assert_eq!(task.await.expect("task"), Some("hello"));
    }
}
