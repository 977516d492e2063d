//! One client stream: its bounded byte queue and the HTTP body that drains it.
//!
//! Producers (the router, the heartbeat ticker) push shared, already-encoded
//! `Bytes` into a [`StreamQueue`]; the connection task polls the matching
//! [`SseBody`], which hands each buffer to hyper as one chunk (hyper writes
//! queued chunks with a vectored write, so nothing is copied per stream).
//!
//! The queue is bounded in bytes. A client that stops reading lets the queue
//! fill; the push that would exceed the bound closes the stream with reason
//! `error` and fires the stream's abort signal, which drops the connection (a
//! blocked socket would otherwise never let the body finish).
//!
//! When the body is dropped, for whatever reason, its end hook runs once with
//! the reason the stream ended: this is the single place disconnects are
//! reported.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::hook::{ClientRequest, DisconnectReason};

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The stream is closing or gone; the reason it ended.
    Closed(DisconnectReason),
    /// This push would exceed the queue bound; the stream is now closed with `error`.
    Overflow,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Bytes>,
    bytes: usize,
    /// Set once: the stream ends after `items` are written.
    closing: Option<DisconnectReason>,
}

/// The per-stream queue, shared by producers and the stream's body.
#[derive(Debug)]
pub struct StreamQueue {
    token: Uuid,
    request: Arc<ClientRequest>,
    limit: usize,
    state: Mutex<QueueState>,
    waker: AtomicWaker,
    abort: CancellationToken,
}

impl StreamQueue {
    /// A new, empty queue bounded to `limit` bytes. `abort` cuts the connection.
    pub fn new(token: Uuid, request: Arc<ClientRequest>, limit: usize, abort: CancellationToken) -> Arc<Self> {
        Arc::new(Self { token, request, limit, state: Mutex::default(), waker: AtomicWaker::new(), abort })
    }

    /// The stream's token.
    pub fn token(&self) -> Uuid {
        self.token
    }

    /// The client's original request (forwarded in the disconnect callback).
    pub fn request(&self) -> &Arc<ClientRequest> {
        &self.request
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // (every mutation is a single push/pop), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame. Fails if the stream is closing, or overflows it.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let mut st = self.lock();
        if let Some(reason) = st.closing {
            return Err(PushError::Closed(reason));
        }
        if st.bytes + frame.len() > self.limit {
            st.items.clear();
            st.bytes = 0;
            st.closing = Some(DisconnectReason::Error);
            drop(st);
            self.abort.cancel();
            self.waker.wake();
            return Err(PushError::Overflow);
        }
        st.bytes += frame.len();
        st.items.push_back(frame);
        drop(st);
        self.waker.wake();
        Ok(())
    }

    /// Ends the stream after what is queued plus `last` (written even past the bound).
    /// Returns false if it was already closing.
    pub fn close(&self, last: Option<Bytes>, reason: DisconnectReason) -> bool {
        let mut st = self.lock();
        if st.closing.is_some() {
            return false;
        }
        if let Some(b) = last {
            st.bytes += b.len();
            st.items.push_back(b);
        }
        st.closing = Some(reason);
        drop(st);
        self.waker.wake();
        true
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn next(&self) -> Poll<Option<Bytes>> {
        let mut st = self.lock();
        match st.items.pop_front() {
            Some(b) => {
                st.bytes -= b.len();
                Poll::Ready(Some(b))
            }
            None if st.closing.is_some() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    /// Marks the stream gone and returns why it ended (client_closed unless
    /// something else closed it first).
    fn finish(&self) -> DisconnectReason {
        let mut st = self.lock();
        st.items.clear();
        st.bytes = 0;
        *st.closing.get_or_insert(DisconnectReason::ClientClosed)
    }
}

/// Runs once when a stream's body is dropped, with the reason it ended.
pub type EndHook = Box<dyn FnOnce(&Arc<StreamQueue>, DisconnectReason) + Send + Sync>;

/// The response body of an open stream.
pub struct SseBody {
    queue: Arc<StreamQueue>,
    on_end: Option<EndHook>,
}

impl SseBody {
    /// A body draining `queue`; `on_end` runs when the body is dropped.
    pub fn new(queue: Arc<StreamQueue>, on_end: EndHook) -> Self {
        Self { queue, on_end: Some(on_end) }
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        let reason = self.queue.finish();
        if let Some(hook) = self.on_end.take() {
            hook(&self.queue, reason);
        }
    }
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Poll::Ready(item) = self.queue.next() {
            return Poll::Ready(item.map(|b| Ok(Frame::data(b))));
        }
        self.queue.waker.register(cx.waker());
        self.queue.next().map(|item| item.map(|b| Ok(Frame::data(b))))
    }
}

/// Every response body the gateway produces.
pub enum ResponseBody {
    /// A complete body with a known length (JSON answers).
    Full(Option<Bytes>),
    /// A complete body sent chunked, like a stream that ends at once (in-stream rejection).
    Chunked(Option<Bytes>),
    /// A live SSE stream.
    Stream(SseBody),
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ResponseBody::Full(b) | ResponseBody::Chunked(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ResponseBody::Full(None) | ResponseBody::Chunked(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(limit: usize) -> Arc<StreamQueue> {
        let req = Arc::new(ClientRequest { url: "/".into(), headers: vec![] });
        StreamQueue::new(Uuid::new_v4(), req, limit, CancellationToken::new())
    }

    #[test]
    fn overflow_closes_with_error_and_aborts() {
        let q = queue(10);
        q.push(Bytes::from_static(b"12345")).unwrap();
        assert_eq!(q.push(Bytes::from_static(b"123456")), Err(PushError::Overflow));
        assert!(q.abort.is_cancelled());
        assert_eq!(q.queued_bytes(), 0);
        assert_eq!(q.push(Bytes::from_static(b"1")), Err(PushError::Closed(DisconnectReason::Error)));
        assert_eq!(q.finish(), DisconnectReason::Error);
    }

    #[test]
    fn close_drains_then_ends_in_order() {
        let q = queue(100);
        q.push(Bytes::from_static(b"a")).unwrap();
        assert!(q.close(Some(Bytes::from_static(b"z")), DisconnectReason::ServerClosed));
        assert!(!q.close(None, DisconnectReason::Error));
        assert_eq!(q.next(), Poll::Ready(Some(Bytes::from_static(b"a"))));
        assert_eq!(q.next(), Poll::Ready(Some(Bytes::from_static(b"z"))));
        assert_eq!(q.next(), Poll::Ready(None));
        assert_eq!(q.finish(), DisconnectReason::ServerClosed);
    }

    #[test]
    fn dropped_body_reports_client_closed_once() {
        let q = queue(100);
        let (tx, rx) = std::sync::mpsc::channel();
        let body = SseBody::new(q, Box::new(move |_, reason| tx.send(reason).unwrap()));
        drop(body);
        assert_eq!(rx.try_recv(), Ok(DisconnectReason::ClientClosed));
        assert!(rx.try_recv().is_err());
    }
}
