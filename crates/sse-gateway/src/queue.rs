//! One client stream's bounded byte queue and its state machine, and the
//! guard that reports the stream's end.
//!
//! Producers (the router, the heartbeat ticker) push shared, already-encoded
//! `Bytes` into a [`StreamQueue`]; a writer takes them out in order: for a
//! raw stream, into its [`Sink`], the pusher itself (write-through, see
//! [`Write`]), a writer shard ([`StreamQueue::write_queued`]) or the
//! stream's own task ([`StreamQueue::poll_flush`]); for the hyper path,
//! [`StreamQueue::take_batch`]. Nothing is copied per stream: every queue
//! holds clones of the same reference-counted buffer. This module knows
//! nothing of sockets or hyper.
//!
//! The queue is bounded in bytes. The push that would exceed the bound drops
//! what is queued, queues a `retry:` hint instead, marks the stream closing
//! with reason `error` and wakes the writer, which writes the hint if the
//! peer takes it and ends the stream; a hyper-served stream is cut through
//! its abort token instead.
//!
//! Lock rule: the queue lock is taken after the router lock, never before,
//! and under it only non-blocking calls happen (a [`Sink`] write is one
//! non-blocking vectored write); nothing awaits while holding it.
//!
//! Whatever ends a stream, dropping its [`StreamHandle`] runs the end hook
//! once with the recorded reason: the single place disconnects are reported.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::chunk::{Chunk, MAX_FRAMES};
use crate::hook::{ClientRequest, DisconnectReason};
use crate::retry::RetryHint;

/// Where a stream's bytes go when a writer owns its connection (the raw
/// socket). Its methods run under the queue lock, so each must return at
/// once: no blocking call, no await.
pub(crate) trait Sink: Send + Sync + std::fmt::Debug {
    /// Writes as much of `chunk` as the peer takes now; `Ok(true)` once all of it is out.
    fn write(&self, chunk: &mut Chunk) -> io::Result<bool>;
    /// Ready when the sink can take more bytes (or has failed).
    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The stream is closing or gone; the reason it ended.
    Closed(DisconnectReason),
    /// This push would exceed the queue bound; the stream is now closing with `error`.
    Overflow,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Bytes>,
    bytes: usize,
    /// Set once: the stream ends after `items` are written.
    closing: Option<DisconnectReason>,
    /// Stop at once, even mid-write (shutdown deadline).
    cut: bool,
    /// The chunk being written to the sink (under this lock).
    out: Chunk,
    /// The sink, while its writer runs: lets `push` write through.
    sink: Option<Arc<dyn Sink>>,
    /// Application events accepted for this stream (admin listing).
    events: u64,
    /// Frames handed to hyper (its progress; the raw path counts `out.written`).
    taken: u64,
    /// Replayed bytes (a resume) that may exceed the bound while they drain.
    allowance: usize,
    /// Handed to a writer shard that has not written it yet (so a stream is
    /// in at most one shard list, however many publishes queue meanwhile).
    for_writer: bool,
    /// Set by the stall sweep only, never on the delivery path: the progress
    /// count and the time it was last seen to change while bytes waited.
    stall_mark: Option<(u64, Instant)>,
}

impl QueueState {
    fn pending(&self) -> bool {
        !self.items.is_empty() || !self.out.is_empty()
    }
}

/// Who writes a pushed frame to a raw stream's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// The stream's own task, woken now.
    Wake,
    /// The pusher, right here, when nothing is pending (one non-blocking
    /// vectored write, no task wake-up): worth it for one stream or a few.
    Through,
    /// A writer shard, which the pusher hands the stream to (for a
    /// broadcast: one wake-up per shard instead of one per stream).
    Shard,
}

/// What a push left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Queued (or written); nothing more to do.
    Done,
    /// Queued; hand the stream to a writer shard.
    ForWriter,
}

/// How flushing a stream into its sink stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// The stream ended and the terminating chunk went out.
    Ended,
    /// The sink failed (the peer went away).
    Failed,
    /// Dropped at once (overflow while the sink was blocked, or the shutdown cut).
    Abandoned,
}

/// What a writer found in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Batch {
    /// Frames were moved into the batch.
    Frames,
    /// Nothing queued; the waker is registered.
    Empty,
    /// Everything is written and the stream is closing with this reason.
    End(DisconnectReason),
    /// Abandon the connection now (overflow after its hint, or the deadline cut).
    Abandon,
}

/// The per-stream queue, shared by producers and the stream's writer.
#[derive(Debug)]
pub(crate) struct StreamQueue {
    token: Uuid,
    request: Arc<ClientRequest>,
    limit: usize,
    state: Mutex<QueueState>,
    waker: AtomicWaker,
    /// Cuts a hyper-served connection; raw streams watch `cut` instead.
    abort: Option<CancellationToken>,
}

impl StreamQueue {
    /// A new, empty queue bounded to `limit` bytes.
    pub(crate) fn new(
        token: Uuid,
        request: Arc<ClientRequest>,
        limit: usize,
        abort: Option<CancellationToken>,
    ) -> Arc<Self> {
        Arc::new(Self { token, request, limit, state: Mutex::default(), waker: AtomicWaker::new(), abort })
    }

    /// The stream's token.
    pub(crate) fn token(&self) -> Uuid {
        self.token
    }

    /// The client's original request (forwarded in the disconnect callback).
    pub(crate) fn request(&self) -> &Arc<ClientRequest> {
        &self.request
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Every mutation is a few field updates that cannot panic midway, so a
        // poisoned lock still guards a consistent queue.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame for the stream's writer task. Fails if the stream is
    /// closing, or overflows it.
    pub(crate) fn push(&self, frame: Bytes) -> Result<(), PushError> {
        self.push_with(frame, Write::Wake, false).map(drop)
    }

    /// Like [`StreamQueue::push`] for an application event (counted for the
    /// admin listing), written the way `how` says.
    pub(crate) fn push_event(&self, frame: Bytes, how: Write) -> Result<Queued, PushError> {
        self.push_with(frame, how, true)
    }

    /// Queues `frame` (see [`Write`] for who writes it). Returns
    /// [`Queued::ForWriter`] when the caller must hand this stream to a
    /// writer shard ([`crate::writers`]).
    pub(crate) fn push_with(&self, frame: Bytes, how: Write, event: bool) -> Result<Queued, PushError> {
        let mut st = self.lock();
        if let Some(reason) = st.closing {
            return Err(PushError::Closed(reason));
        }
        st.events += u64::from(event);
        if how == Write::Through
            && let Some(sink) = st.sink.clone()
            && st.items.is_empty()
            && st.out.is_empty()
        {
            st.out.frames.push(frame);
            st.out.start_chunk();
            let done = sink.write(&mut st.out);
            if !matches!(done, Ok(true)) {
                // Blocked or failed: the writer task takes over (and sees the error).
                drop(st);
                self.waker.wake();
            }
            return Ok(Queued::Done);
        }
        if st.bytes + frame.len() > self.limit + st.allowance {
            st.items.clear();
            let hint = RetryHint::SlowConsumer.frame();
            st.bytes = hint.len();
            st.items.push_back(hint);
            st.closing = Some(DisconnectReason::Error);
            drop(st);
            if let Some(abort) = &self.abort {
                abort.cancel();
            }
            self.waker.wake();
            return Err(PushError::Overflow);
        }
        st.bytes += frame.len();
        st.items.push_back(frame);
        if how == Write::Shard && st.sink.is_some() {
            if !st.out.is_empty() {
                // The socket took only part of the last write: the stream's
                // task waits for it to drain and writes this after.
                return Ok(Queued::Done);
            }
            if st.for_writer {
                return Ok(Queued::Done);
            }
            st.for_writer = true;
            return Ok(Queued::ForWriter);
        }
        drop(st);
        self.waker.wake();
        Ok(Queued::Done)
    }

    /// A writer shard's turn at this stream: writes what is queued with
    /// non-blocking vectored writes, and leaves the rest (a socket that took
    /// only part, or a stream that is ending) to the stream's own task.
    pub(crate) fn write_queued(&self) {
        let mut st = self.lock();
        st.for_writer = false;
        if st.closing.is_some() || !st.out.is_empty() {
            // `close`, `cut` and a partial write each woke the stream's task.
            return;
        }
        let QueueState { items, bytes, allowance, out, sink, .. } = &mut *st;
        let Some(sink) = sink.as_ref() else { return };
        while !items.is_empty() {
            let n = items.len().min(MAX_FRAMES);
            for b in items.drain(..n) {
                *bytes -= b.len();
                *allowance = allowance.saturating_sub(b.len());
                out.frames.push(b);
            }
            out.start_chunk();
            if !matches!(sink.write(out), Ok(true)) {
                // Blocked or failed: the stream's task waits for the socket
                // (or meets the error).
                drop(st);
                self.waker.wake();
                return;
            }
        }
    }

    /// Queues a resume's replayed events (counted as events). They may
    /// exceed the bound: the history already bounds them, and the bound
    /// applies again to what comes after them once they drain.
    pub(crate) fn push_replay(&self, frames: Vec<Bytes>) {
        let mut st = self.lock();
        if st.closing.is_some() {
            return;
        }
        let total: usize = frames.iter().map(Bytes::len).sum();
        st.events += frames.len() as u64;
        st.bytes += total;
        st.allowance += total;
        st.items.extend(frames);
        drop(st);
        self.waker.wake();
    }

    /// Ends the stream after what is queued plus `last` (written even past the bound).
    /// Returns false if it was already closing.
    pub(crate) fn close(&self, last: Option<Bytes>, reason: DisconnectReason) -> bool {
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

    /// The stall sweep's check (about once a second): true when bytes have
    /// waited `limit` or longer while the writer made no progress, and the
    /// stream is not already ending. All clock reads happen here, never on
    /// the delivery path.
    pub(crate) fn sweep_stalled(&self, now: Instant, limit: Duration) -> bool {
        let mut st = self.lock();
        if st.closing.is_some() || !st.pending() {
            st.stall_mark = None;
            return false;
        }
        let progress = st.out.written + st.taken;
        match st.stall_mark {
            Some((seen, since)) if seen == progress => now.saturating_duration_since(since) >= limit,
            _ => {
                st.stall_mark = Some((progress, now));
                false
            }
        }
    }

    /// Ends a stalled stream at once, reason `error` (its socket is reset).
    pub(crate) fn stall(&self) {
        let mut st = self.lock();
        st.closing.get_or_insert(DisconnectReason::Error);
        st.cut = true;
        drop(st);
        if let Some(abort) = &self.abort {
            abort.cancel();
        }
        self.waker.wake();
    }

    /// Stops the stream at once (shutdown deadline); its reason stays as recorded.
    pub(crate) fn cut(&self) {
        let mut st = self.lock();
        st.cut = true;
        st.closing.get_or_insert(DisconnectReason::ServerClosed);
        drop(st);
        if let Some(abort) = &self.abort {
            abort.cancel();
        }
        self.waker.wake();
    }

    /// Bytes waiting to be written.
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Bytes waiting to be written and application events accepted so far.
    pub(crate) fn stats(&self) -> (usize, u64) {
        let st = self.lock();
        (st.bytes, st.events)
    }

    /// Moves up to `max` queued frames into `out`, or reports why there are none.
    /// Registers `waker` when it returns [`Batch::Empty`].
    pub(crate) fn take_batch(&self, out: &mut Vec<Bytes>, max: usize, waker: &Waker) -> Batch {
        let mut st = self.lock();
        if st.cut {
            return Batch::Abandon;
        }
        if st.items.is_empty() {
            return match st.closing {
                Some(reason) => Batch::End(reason),
                None => {
                    self.waker.register(waker);
                    Batch::Empty
                }
            };
        }
        let n = st.items.len().min(max);
        for _ in 0..n {
            if let Some(b) = st.items.pop_front() {
                st.bytes -= b.len();
                st.allowance = st.allowance.saturating_sub(b.len());
                out.push(b);
            }
        }
        // Hyper owns the socket: handing frames over counts as progress.
        st.taken += n as u64;
        Batch::Frames
    }

    /// Lets publishers write straight to this stream's sink.
    #[cfg(test)]
    pub(crate) fn attach_sink(&self, sink: Arc<dyn Sink>) {
        self.lock().sink = Some(sink);
    }

    /// Like [`StreamQueue::attach_sink`] for a sink that must get `lead`
    /// (the response head) first: it goes out with what is queued (the
    /// events buffered during the connect and `ready`) in one write.
    pub(crate) fn attach_sink_after(&self, sink: Arc<dyn Sink>, lead: &'static [u8]) {
        let mut st = self.lock();
        st.sink = Some(sink);
        st.out.lead_with(lead);
        if st.out.frames.is_empty() && !st.items.is_empty() {
            let QueueState { items, bytes, allowance, out, .. } = &mut *st;
            let n = items.len().min(MAX_FRAMES);
            for b in items.drain(..n) {
                *bytes -= b.len();
                *allowance = allowance.saturating_sub(b.len());
                out.frames.push(b);
            }
            out.start_chunk();
        }
    }

    /// Drains the queue into `sink` until the stream ends, the sink fails,
    /// or the queue says to abandon it; `Pending` when everything queued is
    /// written (or the sink is blocked) and the stream goes on.
    pub(crate) fn poll_flush(&self, sink: &dyn Sink, cx: &mut Context<'_>) -> Poll<Flushed> {
        loop {
            let mut st = self.lock();
            if st.cut {
                return Poll::Ready(Flushed::Abandoned);
            }
            if st.out.is_empty() {
                if st.out.terminated {
                    return Poll::Ready(Flushed::Ended);
                }
                if !st.items.is_empty() {
                    let n = st.items.len().min(MAX_FRAMES);
                    for _ in 0..n {
                        if let Some(b) = st.items.pop_front() {
                            st.bytes -= b.len();
                            st.allowance = st.allowance.saturating_sub(b.len());
                            st.out.frames.push(b);
                        }
                    }
                    st.out.start_chunk();
                } else if st.closing.is_some() {
                    st.out.start_terminator();
                } else {
                    self.waker.register(cx.waker());
                    return Poll::Pending;
                }
            }
            match sink.poll_writable(cx) {
                Poll::Pending => {
                    // Blocked on a client that does not read: an overflow (or the
                    // cut) must still be able to end this stream.
                    self.waker.register(cx.waker());
                    if st.closing == Some(DisconnectReason::Error) {
                        return Poll::Ready(Flushed::Abandoned);
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Flushed::Failed),
                Poll::Ready(Ok(())) => {}
            }
            if sink.write(&mut st.out).is_err() {
                return Poll::Ready(Flushed::Failed);
            }
        }
    }

    /// Why the stream is ending, once it is.
    pub(crate) fn closing(&self) -> Option<DisconnectReason> {
        self.lock().closing
    }

    /// Marks the stream gone and returns why it ended (client_closed unless
    /// something else closed it first).
    fn finish(&self) -> DisconnectReason {
        let mut st = self.lock();
        st.items.clear();
        st.bytes = 0;
        st.sink = None;
        *st.closing.get_or_insert(DisconnectReason::ClientClosed)
    }
}

/// Runs once when a stream ends, with the reason it ended.
pub(crate) type EndHook = Box<dyn FnOnce(&Arc<StreamQueue>, DisconnectReason) + Send + Sync>;

/// Ownership of an open stream: dropping it reports the end, exactly once.
pub(crate) struct StreamHandle {
    queue: Arc<StreamQueue>,
    on_end: Option<EndHook>,
}

impl StreamHandle {
    /// A handle for `queue`; `on_end` runs when the handle is dropped.
    pub(crate) fn new(queue: Arc<StreamQueue>, on_end: EndHook) -> Self {
        Self { queue, on_end: Some(on_end) }
    }

    /// The stream's queue.
    pub(crate) fn queue(&self) -> &Arc<StreamQueue> {
        &self.queue
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        let reason = self.queue.finish();
        if let Some(hook) = self.on_end.take() {
            hook(&self.queue, reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(limit: usize) -> Arc<StreamQueue> {
        let req = Arc::new(ClientRequest { url: "/".into(), headers: vec![] });
        StreamQueue::new(Uuid::new_v4(), req, limit, Some(CancellationToken::new()))
    }

    fn take(q: &StreamQueue) -> (Batch, Vec<Bytes>) {
        let mut out = Vec::new();
        let b = q.take_batch(&mut out, 64, Waker::noop());
        (b, out)
    }

    #[test]
    fn overflow_replaces_the_queue_with_a_retry_hint_and_aborts() {
        let q = queue(10);
        q.push(Bytes::from_static(b"12345")).unwrap();
        assert_eq!(q.push(Bytes::from_static(b"123456")), Err(PushError::Overflow));
        assert!(q.abort.as_ref().unwrap().is_cancelled());
        assert_eq!(q.push(Bytes::from_static(b"1")), Err(PushError::Closed(DisconnectReason::Error)));
        let (batch, frames) = take(&q);
        assert_eq!(batch, Batch::Frames);
        assert!(frames.len() == 1 && frames[0].starts_with(b"retry: "), "{frames:?}");
        assert_eq!(take(&q).0, Batch::End(DisconnectReason::Error));
        assert_eq!(q.finish(), DisconnectReason::Error);
    }

    #[test]
    fn close_drains_then_ends_in_order() {
        let q = queue(100);
        q.push(Bytes::from_static(b"a")).unwrap();
        assert!(q.close(Some(Bytes::from_static(b"z")), DisconnectReason::ServerClosed));
        assert!(!q.close(None, DisconnectReason::Error));
        assert_eq!(take(&q), (Batch::Frames, vec![Bytes::from_static(b"a"), Bytes::from_static(b"z")]));
        assert_eq!(take(&q).0, Batch::End(DisconnectReason::ServerClosed));
        assert_eq!(q.finish(), DisconnectReason::ServerClosed);
    }

    #[test]
    fn cut_abandons_even_with_frames_queued() {
        let q = queue(100);
        q.push(Bytes::from_static(b"a")).unwrap();
        q.cut();
        assert_eq!(take(&q).0, Batch::Abandon);
        assert_eq!(q.finish(), DisconnectReason::ServerClosed);
    }

    #[test]
    fn bytes_that_wait_without_progress_stall_and_nothing_waiting_never_does() {
        let q = queue(100);
        let limit = Duration::from_secs(1);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        assert!(!q.sweep_stalled(later, limit), "nothing waits");
        q.push(Bytes::from_static(b"a")).unwrap();
        assert!(!q.sweep_stalled(t0, limit), "the first sweep only marks");
        assert!(q.sweep_stalled(later, limit), "no progress since the mark");
        q.push(Bytes::from_static(b"b")).unwrap();
        take(&q);
        assert!(!q.sweep_stalled(later, limit), "taken: nothing waits");
        q.push(Bytes::from_static(b"c")).unwrap();
        assert!(!q.sweep_stalled(later, limit), "a new wait is marked afresh");
        q.push(Bytes::from_static(b"b")).unwrap();
        q.stall();
        assert_eq!(take(&q).0, Batch::Abandon);
        assert_eq!(q.finish(), DisconnectReason::Error);
    }

    #[test]
    fn dropped_handle_reports_client_closed_once() {
        let q = queue(100);
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = StreamHandle::new(q, Box::new(move |_, reason| tx.send(reason).unwrap()));
        drop(handle);
        assert_eq!(rx.try_recv(), Ok(DisconnectReason::ClientClosed));
        assert!(rx.try_recv().is_err());
    }
}
