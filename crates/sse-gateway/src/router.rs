//! The router: the only fan-out in the gateway.
//!
//! It indexes every stream by token and every open stream by its routing keys
//! (`broadcast`, `connection.<request_id>`, `subject.<sub>`, ... whatever the
//! connect answer or the default bindings gave it), and resolves a target (one
//! token, or one key) to queues. Every ingress (`/internal/send`,
//! `/internal/publish`, the in-process handle) calls it; none has its own
//! fan-out.
//!
//! A token is registered *pending* before the connect hook is asked, so sends
//! to it are buffered (bounded like a stream queue) and written, in order,
//! right after the 200 headers and before `ready`.
//!
//! Lock order: the router lock may be held while taking a stream queue's lock,
//! never the reverse; no lock is held across an `.await`. Publishing holds the
//! read lock while pushing the one shared buffer to each matched queue, so a
//! publish never allocates per stream.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

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
struct Open {
    queue: Arc<StreamQueue>,
    keys: Box<[Box<str>]>,
}

#[derive(Debug)]
enum Slot {
    Pending(Pending),
    Open(Open),
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<Uuid, Slot>,
    keys: HashMap<Box<str>, HashMap<Uuid, Arc<StreamQueue>>>,
    draining: bool,
}

impl State {
    fn unbind(&mut self, token: Uuid, keys: &[Box<str>]) {
        for key in keys {
            if let Some(streams) = self.keys.get_mut(key) {
                streams.remove(&token);
                if streams.is_empty() {
                    self.keys.remove(key);
                }
            }
        }
    }

    fn remove(&mut self, token: Uuid) -> Option<Slot> {
        let slot = self.slots.remove(&token)?;
        if let Slot::Open(open) = &slot {
            self.unbind(token, &open.keys);
        }
        Some(slot)
    }
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

/// What a publish did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Streams bound to the key.
    pub matched: usize,
    /// Of those, streams whose queue overflowed and which are now closed.
    pub overflowed: usize,
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

/// Why a new stream was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The gateway is shutting down.
    Draining,
    /// `MAX_CONNECTIONS` streams are already pending or open.
    Full,
}

/// Token and routing-key index of every pending and open stream.
#[derive(Debug)]
pub struct Router {
    state: RwLock<State>,
    queue_limit: usize,
    max_streams: usize,
}

impl Router {
    /// A router for at most `max_streams` streams whose pending buffers hold
    /// at most `queue_limit` bytes each.
    pub fn new(queue_limit: usize, max_streams: usize) -> Self {
        Self { state: RwLock::default(), queue_limit, max_streams }
    }

    // Every mutation is a few map operations that cannot panic midway, so a
    // poisoned lock still guards a consistent index.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a token as pending.
    pub fn register_pending(&self, token: Uuid) -> Result<(), Refused> {
        let mut st = self.write();
        if st.draining {
            return Err(Refused::Draining);
        }
        if st.slots.len() >= self.max_streams {
            return Err(Refused::Full);
        }
        st.slots.insert(token, Slot::Pending(Pending::default()));
        Ok(())
    }

    /// Sends an encoded frame (if any) to a token, then closes it if asked.
    pub fn send(&self, token: Uuid, frame: Option<Bytes>, close: bool) -> SendOutcome {
        let mut st = self.write();
        let queue = match st.slots.get_mut(&token) {
            None => return SendOutcome::NotFound,
            Some(Slot::Pending(p)) => {
                if p.close {
                    return SendOutcome::NotFound;
                }
                if let Some(f) = frame {
                    if p.bytes + f.len() > self.queue_limit {
                        return SendOutcome::BufferFull;
                    }
                    p.bytes += f.len();
                    p.frames.push(f);
                }
                p.close = close;
                return SendOutcome::Buffered;
            }
            Some(Slot::Open(open)) => Arc::clone(&open.queue),
        };
        if close {
            st.remove(token);
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

    /// Pushes one shared frame to every stream bound to `key`, then closes them if asked.
    pub fn publish(&self, key: &str, frame: Option<&Bytes>, close: bool) -> Published {
        let mut result = Published::default();
        let mut failed: Vec<Arc<StreamQueue>> = Vec::new();
        {
            let st = self.read();
            let Some(streams) = st.keys.get(key) else { return result };
            result.matched = streams.len();
            for queue in streams.values() {
                if let Some(f) = frame
                    && queue.push(f.clone()) == Err(PushError::Overflow)
                {
                    result.overflowed += 1;
                    failed.push(Arc::clone(queue));
                    continue;
                }
                if close {
                    queue.close(None, DisconnectReason::ServerClosed);
                    failed.push(Arc::clone(queue));
                }
            }
        }
        if !failed.is_empty() {
            let mut st = self.write();
            for q in &failed {
                st.remove(q.token());
            }
        }
        result
    }

    /// Turns a pending token into an open stream bound to `keys`, moving the
    /// buffered frames into `queue` followed by `ready` (or by the end, if a
    /// `close` was buffered or the gateway is draining, in which case
    /// `drain_hint` is written last).
    pub fn open(
        &self,
        queue: &Arc<StreamQueue>,
        keys: Vec<String>,
        ready: Bytes,
        drain_hint: impl FnOnce() -> Bytes,
    ) -> Opened {
        let mut st = self.write();
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
        let mut bound: Vec<Box<str>> = Vec::with_capacity(keys.len());
        for key in keys {
            let key: Box<str> = key.into_boxed_str();
            if bound.contains(&key) {
                continue;
            }
            st.keys.entry(key.clone()).or_default().insert(token, Arc::clone(queue));
            bound.push(key);
        }
        st.slots.insert(token, Slot::Open(Open { queue: Arc::clone(queue), keys: bound.into_boxed_slice() }));
        Opened::Live
    }

    /// Forgets a token (pending or open).
    pub fn remove(&self, token: Uuid) {
        self.write().remove(token);
    }

    /// Forgets an open stream if the token still maps to this very queue.
    pub fn remove_stream(&self, queue: &Arc<StreamQueue>) {
        let mut st = self.write();
        if matches!(st.slots.get(&queue.token()), Some(Slot::Open(o)) if Arc::ptr_eq(&o.queue, queue)) {
            st.remove(queue.token());
        }
    }

    /// Every open stream (a snapshot; the lock is released on return).
    pub fn open_streams(&self) -> Vec<Arc<StreamQueue>> {
        self.read()
            .slots
            .values()
            .filter_map(|s| match s {
                Slot::Open(o) => Some(Arc::clone(&o.queue)),
                Slot::Pending(_) => None,
            })
            .collect()
    }

    /// Pushes `frame` to every open stream; returns the streams that overflowed
    /// (already removed from the index).
    pub fn push_all(&self, frame: &Bytes) -> usize {
        let failed: Vec<Arc<StreamQueue>> = {
            let st = self.read();
            st.slots
                .values()
                .filter_map(|s| match s {
                    Slot::Open(o) if o.queue.push(frame.clone()) == Err(PushError::Overflow) => {
                        Some(Arc::clone(&o.queue))
                    }
                    _ => None,
                })
                .collect()
        };
        for q in &failed {
            self.remove_stream(q);
        }
        failed.len()
    }

    /// Refuses new registrations and returns every open stream, to be closed.
    pub fn start_draining(&self) -> Vec<Arc<StreamQueue>> {
        self.write().draining = true;
        self.open_streams()
    }

    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        self.read().draining
    }

    /// Number of (pending, open) streams and of distinct routing keys.
    pub fn counts(&self) -> (usize, usize, usize) {
        let st = self.read();
        let open = st.slots.values().filter(|s| matches!(s, Slot::Open(_))).count();
        (st.slots.len() - open, open, st.keys.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hook::ClientRequest;

    fn queue(token: Uuid) -> Arc<StreamQueue> {
        let req = Arc::new(ClientRequest { url: "/".into(), headers: vec![] });
        StreamQueue::new(token, req, 1000, None)
    }

    const READY: Bytes = Bytes::from_static(b"R");

    fn open(r: &Router, keys: &[&str]) -> (Uuid, Arc<StreamQueue>) {
        let t = Uuid::new_v4();
        r.register_pending(t).unwrap();
        let q = queue(t);
        assert_eq!(r.open(&q, keys.iter().map(|k| k.to_string()).collect(), READY, Bytes::new), Opened::Live);
        (t, q)
    }

    #[test]
    fn pending_sends_are_buffered_then_flushed_before_ready() {
        let r = Router::new(1000, 10);
        let t = Uuid::new_v4();
        assert_eq!(r.send(t, None, false), SendOutcome::NotFound);
        r.register_pending(t).unwrap();
        assert_eq!(r.send(t, Some(Bytes::from_static(b"1")), false), SendOutcome::Buffered);
        assert_eq!(r.send(t, Some(Bytes::from_static(b"2")), false), SendOutcome::Buffered);
        let q = queue(t);
        assert_eq!(r.open(&q, vec![], READY, Bytes::new), Opened::Live);
        assert_eq!(q.queued_bytes(), 3);
        assert_eq!(r.send(t, Some(Bytes::from_static(b"3")), false), SendOutcome::Delivered);
        assert_eq!(r.counts(), (0, 1, 0));
    }

    #[test]
    fn buffered_close_ends_the_stream_and_later_sends_are_not_found() {
        let r = Router::new(1000, 10);
        let t = Uuid::new_v4();
        r.register_pending(t).unwrap();
        assert_eq!(r.send(t, Some(Bytes::from_static(b"1")), true), SendOutcome::Buffered);
        assert_eq!(r.send(t, Some(Bytes::from_static(b"2")), false), SendOutcome::NotFound);
        let q = queue(t);
        assert_eq!(r.open(&q, vec!["broadcast".into()], READY, Bytes::new), Opened::Closing);
        assert_eq!(q.queued_bytes(), 1);
        assert_eq!(r.counts(), (0, 0, 0));
    }

    #[test]
    fn pending_buffer_is_bounded() {
        let r = Router::new(4, 10);
        let t = Uuid::new_v4();
        r.register_pending(t).unwrap();
        assert_eq!(r.send(t, Some(Bytes::from_static(b"1234")), false), SendOutcome::Buffered);
        assert_eq!(r.send(t, Some(Bytes::from_static(b"5")), false), SendOutcome::BufferFull);
    }

    #[test]
    fn max_streams_counts_pending_and_open() {
        let r = Router::new(100, 2);
        open(&r, &[]);
        r.register_pending(Uuid::new_v4()).unwrap();
        assert_eq!(r.register_pending(Uuid::new_v4()), Err(Refused::Full));
    }

    #[test]
    fn publish_reaches_exactly_the_bound_streams_with_one_shared_buffer() {
        let r = Router::new(1000, 10);
        let (_, a) = open(&r, &["broadcast", "subject.alice"]);
        let (_, b) = open(&r, &["broadcast", "subject.bob", "broadcast"]);
        let frame = Bytes::from(b"data: x\n\n".to_vec());
        assert_eq!(r.publish("subject.alice", Some(&frame), false).matched, 1);
        assert_eq!(r.publish("broadcast", Some(&frame), false).matched, 2);
        assert_eq!(r.publish("nobody", Some(&frame), false).matched, 0);
        let mut out = Vec::new();
        a.take_batch(&mut out, 64, std::task::Waker::noop());
        assert_eq!(out.len(), 3, "ready + two publishes");
        assert_eq!(out[1].as_ptr(), frame.as_ptr(), "the same buffer, not a copy");
        out.clear();
        b.take_batch(&mut out, 64, std::task::Waker::noop());
        assert_eq!(out.len(), 2, "ready + one broadcast (duplicate binding ignored)");
    }

    #[test]
    fn removing_a_stream_unbinds_its_keys() {
        let r = Router::new(1000, 10);
        let (t, _) = open(&r, &["broadcast", "connection.r1"]);
        let (_, _) = open(&r, &["broadcast"]);
        assert_eq!(r.counts(), (0, 2, 2));
        r.remove(t);
        assert_eq!(r.counts(), (0, 1, 1));
        assert_eq!(r.publish("connection.r1", None, false).matched, 0);
    }

    #[test]
    fn publish_with_close_removes_the_streams() {
        let r = Router::new(1000, 10);
        let (t, q) = open(&r, &["connection.r1"]);
        assert_eq!(r.publish("connection.r1", None, true).matched, 1);
        assert_eq!(r.send(t, None, false), SendOutcome::NotFound);
        let mut out = Vec::new();
        q.take_batch(&mut out, 64, std::task::Waker::noop());
        assert_eq!(
            q.take_batch(&mut out, 64, std::task::Waker::noop()),
            crate::stream::Batch::End(DisconnectReason::ServerClosed)
        );
    }

    #[test]
    fn draining_refuses_new_tokens_and_closes_late_opens() {
        let r = Router::new(1000, 10);
        let t = Uuid::new_v4();
        r.register_pending(t).unwrap();
        assert!(r.start_draining().is_empty());
        assert_eq!(r.register_pending(Uuid::new_v4()), Err(Refused::Draining));
        let q = queue(t);
        assert_eq!(r.open(&q, vec![], READY, || Bytes::from_static(b"retry")), Opened::Closing);
    }
}
