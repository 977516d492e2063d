//! The router: which streams exist, by token, and where a send goes.
//!
//! A token is registered *pending* before the connect hook is asked, so sends
//! to it are buffered (bounded like a stream queue) and written, in order,
//! right after the 200 headers and before `ready`. Once the hook accepts, the
//! slot becomes an open [`StreamQueue`].
//!
//! Lock order: the router's map lock may be held while taking a stream
//! queue's lock, never the reverse; no lock is held across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use uuid::Uuid;

use crate::hook::DisconnectReason;
use crate::stream::{PushError, StreamQueue};

/// Events sent to a token while its connect hook is deciding.
#[derive(Debug, Default)]
struct Pending {
    frames: Vec<Bytes>,
    bytes: usize,
    close: bool,
}

#[derive(Debug)]
enum Slot {
    Pending(Pending),
    Open(Arc<StreamQueue>),
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<Uuid, Slot>,
    draining: bool,
}

/// What happened to a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Queued on an open stream.
    Delivered,
    /// Held until the connect hook answers.
    Buffered,
    /// No such token (or the stream already ended).
    NotFound,
    /// The pending buffer is full; the event was not accepted.
    BufferFull,
    /// The stream's queue overflowed on this send; it is now closed with `error`.
    Overflow,
    /// The stream had already failed (closed with `error`).
    WriteFailed,
}

/// How a newly opened stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Buffered events then `ready` are queued; the stream is live.
    Live,
    /// A buffered `close` (or a drain) ends the stream after the buffered events.
    Closing,
    /// The token is gone (removed while the hook decided).
    Gone,
}

/// Token index of every pending and open stream.
#[derive(Debug)]
pub struct Router {
    state: Mutex<State>,
    limit: usize,
}

impl Router {
    /// A router whose pending buffers hold at most `limit` bytes each.
    pub fn new(limit: usize) -> Self {
        Self { state: Mutex::default(), limit }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each mutation is a single map operation; a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a token as pending. Returns false if the gateway is draining.
    pub fn register_pending(&self, token: Uuid) -> bool {
        let mut st = self.lock();
        if st.draining {
            return false;
        }
        st.slots.insert(token, Slot::Pending(Pending::default()));
        true
    }

    /// Sends an encoded frame (if any) to a token, then closes it if asked.
    pub fn send(&self, token: Uuid, frame: Option<Bytes>, close: bool) -> SendOutcome {
        let mut st = self.lock();
        let queue = match st.slots.get_mut(&token) {
            None => return SendOutcome::NotFound,
            Some(Slot::Pending(p)) => {
                if p.close {
                    return SendOutcome::NotFound;
                }
                if let Some(f) = frame {
                    if p.bytes + f.len() > self.limit {
                        return SendOutcome::BufferFull;
                    }
                    p.bytes += f.len();
                    p.frames.push(f);
                }
                p.close = close;
                return SendOutcome::Buffered;
            }
            Some(Slot::Open(q)) => Arc::clone(q),
        };
        if close {
            st.slots.remove(&token);
        }
        drop(st);
        if let Some(f) = frame {
            match queue.push(f) {
                Ok(()) => {}
                Err(PushError::Overflow) => {
                    self.remove_stream(&queue);
                    return SendOutcome::Overflow;
                }
                Err(PushError::Closed(DisconnectReason::Error)) => return SendOutcome::WriteFailed,
                Err(PushError::Closed(_)) => return SendOutcome::NotFound,
            }
        }
        if close && !queue.close(None, DisconnectReason::ServerClosed) {
            return SendOutcome::NotFound;
        }
        SendOutcome::Delivered
    }

    /// Turns a pending token into an open stream, moving buffered frames into
    /// `queue` followed by `ready` (or by the end, if a `close` was buffered or
    /// the gateway is draining, in which case `drain_hint` is written last).
    pub fn open(&self, queue: &Arc<StreamQueue>, ready: Bytes, drain_hint: impl FnOnce() -> Bytes) -> Opened {
        let mut st = self.lock();
        let draining = st.draining;
        let token = queue.token();
        let pending = match st.slots.remove(&token) {
            Some(Slot::Pending(p)) => p,
            Some(other) => {
                st.slots.insert(token, other);
                return Opened::Gone;
            }
            None => return Opened::Gone,
        };
        for f in pending.frames {
            // Cannot overflow: the pending buffer has the same bound as the queue.
            let _ = queue.push(f);
        }
        if pending.close {
            queue.close(None, DisconnectReason::ServerClosed);
            return Opened::Closing;
        }
        if draining {
            queue.close(Some(drain_hint()), DisconnectReason::ServerClosed);
            return Opened::Closing;
        }
        let _ = queue.push(ready);
        st.slots.insert(token, Slot::Open(Arc::clone(queue)));
        Opened::Live
    }

    /// Forgets a token (pending or open).
    pub fn remove(&self, token: Uuid) {
        self.lock().slots.remove(&token);
    }

    /// Forgets an open stream if the token still maps to this very queue.
    pub fn remove_stream(&self, queue: &Arc<StreamQueue>) {
        let mut st = self.lock();
        if matches!(st.slots.get(&queue.token()), Some(Slot::Open(q)) if Arc::ptr_eq(q, queue)) {
            st.slots.remove(&queue.token());
        }
    }

    /// Every open stream (a snapshot; the lock is released on return).
    pub fn open_streams(&self) -> Vec<Arc<StreamQueue>> {
        self.lock()
            .slots
            .values()
            .filter_map(|s| match s {
                Slot::Open(q) => Some(Arc::clone(q)),
                Slot::Pending(_) => None,
            })
            .collect()
    }

    /// Refuses new registrations and returns every open stream, to be closed.
    pub fn start_draining(&self) -> Vec<Arc<StreamQueue>> {
        self.lock().draining = true;
        self.open_streams()
    }

    /// Number of (pending, open) tokens.
    pub fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        let open = st.slots.values().filter(|s| matches!(s, Slot::Open(_))).count();
        (st.slots.len() - open, open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hook::ClientRequest;
    use tokio_util::sync::CancellationToken;

    fn queue(token: Uuid) -> Arc<StreamQueue> {
        let req = Arc::new(ClientRequest { url: "/".into(), headers: vec![] });
        StreamQueue::new(token, req, 1000, CancellationToken::new())
    }

    const READY: Bytes = Bytes::from_static(b"R");

    #[test]
    fn pending_sends_are_buffered_then_flushed_before_ready() {
        let r = Router::new(1000);
        let t = Uuid::new_v4();
        assert_eq!(r.send(t, None, false), SendOutcome::NotFound);
        r.register_pending(t);
        assert_eq!(r.send(t, Some(Bytes::from_static(b"1")), false), SendOutcome::Buffered);
        assert_eq!(r.send(t, Some(Bytes::from_static(b"2")), false), SendOutcome::Buffered);
        let q = queue(t);
        assert_eq!(r.open(&q, READY, Bytes::new), Opened::Live);
        assert_eq!(q.queued_bytes(), 3);
        assert_eq!(r.send(t, Some(Bytes::from_static(b"3")), false), SendOutcome::Delivered);
        assert_eq!(r.counts(), (0, 1));
    }

    #[test]
    fn buffered_close_ends_the_stream_and_later_sends_are_not_found() {
        let r = Router::new(1000);
        let t = Uuid::new_v4();
        r.register_pending(t);
        assert_eq!(r.send(t, Some(Bytes::from_static(b"1")), true), SendOutcome::Buffered);
        assert_eq!(r.send(t, Some(Bytes::from_static(b"2")), false), SendOutcome::NotFound);
        let q = queue(t);
        assert_eq!(r.open(&q, READY, Bytes::new), Opened::Closing);
        assert_eq!(q.queued_bytes(), 1);
        assert_eq!(r.counts(), (0, 0));
    }

    #[test]
    fn pending_buffer_is_bounded() {
        let r = Router::new(4);
        let t = Uuid::new_v4();
        r.register_pending(t);
        assert_eq!(r.send(t, Some(Bytes::from_static(b"1234")), false), SendOutcome::Buffered);
        assert_eq!(r.send(t, Some(Bytes::from_static(b"5")), false), SendOutcome::BufferFull);
    }

    #[test]
    fn close_removes_the_token_at_once() {
        let r = Router::new(1000);
        let t = Uuid::new_v4();
        r.register_pending(t);
        let q = queue(t);
        r.open(&q, READY, Bytes::new);
        assert_eq!(r.send(t, None, true), SendOutcome::Delivered);
        assert_eq!(r.send(t, None, false), SendOutcome::NotFound);
    }

    #[test]
    fn draining_refuses_new_tokens_and_closes_late_opens() {
        let r = Router::new(1000);
        let t = Uuid::new_v4();
        r.register_pending(t);
        assert!(r.start_draining().is_empty());
        assert!(!r.register_pending(Uuid::new_v4()));
        let q = queue(t);
        assert_eq!(r.open(&q, READY, || Bytes::from_static(b"retry")), Opened::Closing);
    }
}
