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
//! never the reverse; no lock is held across an `.await`, and under either
//! lock only non-blocking calls happen (a write-through is one non-blocking
//! vectored write). Publishing holds the
//! read lock while pushing the one shared buffer to each matched queue, so a
//! publish never allocates per stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use uuid::Uuid;

use crate::history::{self, Advance, GapCause, History, Resume};
use crate::hook::DisconnectReason;
use crate::queue::{PushError, Queued, StreamQueue, Write};
use crate::writers::Writers;

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
    request_id: Option<Box<str>>,
    /// Who opened it and when (admin listing).
    peer: Option<SocketAddr>,
    connected_at: SystemTime,
}

/// One open stream as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamInfo {
    pub(crate) token: Uuid,
    pub(crate) request_id: Option<Box<str>>,
    pub(crate) keys: Box<[Box<str>]>,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) connected_at: SystemTime,
    pub(crate) queued_bytes: usize,
    pub(crate) events_sent: u64,
}

/// Events published to `connection.<request_id>` after its stream went away,
/// kept for the resume TTL so a client that comes back gets them first.
#[derive(Debug)]
struct Hold {
    key: Box<str>,
    frames: Vec<Bytes>,
    bytes: usize,
    expires: Instant,
}

#[derive(Debug)]
enum Slot {
    Pending(Pending),
    Open(Open),
}

/// The streams bound to one routing key. Most keys of a stream are its own
/// (`connection.<request_id>`, `subject.<sub>`) and have one stream: those
/// cost no map of their own (a map per key was about 130 bytes per idle
/// stream).
#[derive(Debug)]
enum Bound {
    One(Uuid, Arc<StreamQueue>),
    Many(HashMap<Uuid, Arc<StreamQueue>>),
}

impl Bound {
    fn insert(&mut self, token: Uuid, queue: Arc<StreamQueue>) {
        match self {
            Self::One(t, _) if *t == token => *self = Self::One(token, queue),
            Self::One(t, q) => {
                let mut map = HashMap::with_capacity(2);
                map.insert(*t, Arc::clone(q));
                map.insert(token, queue);
                *self = Self::Many(map);
            }
            Self::Many(map) => {
                map.insert(token, queue);
            }
        }
    }

    /// Removes `token`; true when no stream is left.
    fn remove(&mut self, token: &Uuid) -> bool {
        match self {
            Self::One(t, _) => t == token,
            Self::Many(map) => {
                map.remove(token);
                map.is_empty()
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::One(..) => 1,
            Self::Many(map) => map.len(),
        }
    }

    fn iter(&self) -> BoundIter<'_> {
        match self {
            Self::One(t, q) => BoundIter::One(Some((t, q))),
            Self::Many(map) => BoundIter::Many(map.iter()),
        }
    }
}

enum BoundIter<'a> {
    One(Option<(&'a Uuid, &'a Arc<StreamQueue>)>),
    Many(std::collections::hash_map::Iter<'a, Uuid, Arc<StreamQueue>>),
}

impl<'a> Iterator for BoundIter<'a> {
    type Item = (&'a Uuid, &'a Arc<StreamQueue>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::One(one) => one.take(),
            Self::Many(it) => it.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match self {
            Self::One(one) => usize::from(one.is_some()),
            Self::Many(it) => it.len(),
        };
        (n, Some(n))
    }
}

impl ExactSizeIterator for BoundIter<'_> {}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<Uuid, Slot>,
    keys: HashMap<Box<str>, Bound>,
    /// request_id -> held events; `held_keys` maps the hold's key back to it.
    holds: HashMap<Box<str>, Hold>,
    held_keys: HashMap<Box<str>, Box<str>>,
    draining: bool,
}

impl State {
    /// The client address of an open stream.
    fn peer(&self, token: &Uuid) -> Option<SocketAddr> {
        match self.slots.get(token) {
            Some(Slot::Open(o)) => o.peer,
            _ => None,
        }
    }

    fn unbind(&mut self, token: Uuid, keys: &[Box<str>]) {
        for key in keys {
            if let Some(streams) = self.keys.get_mut(key)
                && streams.remove(&token)
            {
                self.keys.remove(key);
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
pub(crate) enum SendOutcome {
    /// Queued on an open stream.
    Delivered,
    /// Held until the connect hook answers.
    Buffered,
    /// No such token (or the stream already ended).
    NotFound,
    /// The pending buffer is full; the event was not accepted.
    BufferFull,
    /// The stream's queue overflowed on this send; it is now closed with
    /// `error`. Its client's address, for the log.
    Overflow(Option<SocketAddr>),
    /// The stream had already failed (closed with `error`).
    WriteFailed,
}

/// What a publish did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Published {
    /// Streams bound to the key.
    pub(crate) matched: usize,
    /// Of those, streams whose queue overflowed and which are now closed.
    pub(crate) overflowed: usize,
    /// 1 when the event was kept for a client expected back (resume), else 0.
    pub(crate) held: usize,
    /// 1 when a hold overflowed and was dropped (its events are lost), else 0.
    pub(crate) hold_dropped: usize,
    /// The first stream closed for overflow, for the log: token and peer.
    pub(crate) first_overflowed: Option<(Uuid, Option<SocketAddr>)>,
}

/// Publishes to at most this many streams write through to idle sockets
/// inline; bigger ones go to the writer shards (see [`crate::writers`]).
const WRITE_THROUGH_MAX: usize = 64;

/// Pushes one shared frame to each queue (then closes them if asked), and
/// hands the streams that need a write to the writer shards.
/// Streams already closing are skipped and not counted.
fn deliver_each<'a>(
    st: &State,
    queues: impl ExactSizeIterator<Item = (&'a Uuid, &'a Arc<StreamQueue>)>,
    frame: Option<&Bytes>,
    close: bool,
    how: Write,
    writers: &Writers,
    result: &mut Published,
) {
    let mut fanout = writers.fanout(if how == Write::Shard { queues.len() } else { 0 });
    for (token, queue) in queues {
        if let Some(f) = frame {
            match queue.push_event(f.clone(), how) {
                Ok(Queued::Done) => {}
                Ok(Queued::ForWriter) => fanout.add(queue),
                Err(PushError::Overflow) => {
                    result.matched += 1;
                    result.overflowed += 1;
                    if result.first_overflowed.is_none() {
                        result.first_overflowed = Some((*token, st.peer(token)));
                    }
                    continue;
                }
                Err(PushError::Closed(_)) => continue,
            }
        }
        if close && !queue.close(None, DisconnectReason::ServerClosed) && frame.is_none() {
            continue;
        }
        result.matched += 1;
    }
    fanout.send();
}

/// Pushes to every stream bound to `key`: written through inline for a few,
/// by the writer shards for many.
fn deliver_key(st: &State, writers: &Writers, key: &str, frame: Option<&Bytes>, close: bool, result: &mut Published) {
    if let Some(streams) = st.keys.get(key) {
        let how = if streams.len() <= WRITE_THROUGH_MAX { Write::Through } else { Write::Shard };
        deliver_each(st, streams.iter(), frame, close, how, writers, result);
    }
}

/// Routing keys a removed stream (or an expired hold) no longer needs.
pub(crate) type Released = Vec<Box<str>>;

/// How a newly opened stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opened {
    /// Buffered events then `ready` are queued; the stream is live.
    Live,
    /// A buffered `close` (or a drain) ends the stream after the buffered events.
    Closing,
    /// The token is gone (removed while the hook decided).
    Gone,
}

/// Why a new stream was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The gateway is shutting down.
    Draining,
    /// `MAX_CONNECTIONS` streams are already pending or open.
    Full,
}

/// How a new stream resumed (for counting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resumed {
    /// No `Last-Event-ID`, or history off.
    Fresh,
    /// This many events were replayed (possibly none).
    Replayed(usize),
    /// A `gap` was written.
    Gap(GapCause),
}

/// Token and routing-key index of every pending and open stream.
///
/// With history on, the history is locked (after the router lock, before
/// any queue lock) around recording an event and pushing it to its streams,
/// and around a new stream's replay and registration, so every stream sees
/// events in cursor order with no gap and no duplicate at the seam.
#[derive(Debug)]
pub(crate) struct Router {
    state: RwLock<State>,
    queue_limit: usize,
    max_streams: usize,
    resume_ttl: Duration,
    history: Option<Mutex<History>>,
    /// The history's latest raw position (AMQP: a resume may wait for it).
    position: tokio::sync::watch::Sender<u64>,
    /// Who writes a publish to many streams.
    writers: Writers,
}

impl Router {
    /// A router for at most `max_streams` streams whose pending buffers hold
    /// at most `queue_limit` bytes each. With a non-zero `resume_ttl`, events
    /// for `connection.<request_id>` are held that long after the stream of
    /// that request_id went away unexpectedly.
    /// With a `history`, events get cursors and holds are off (the history
    /// covers what they did).
    pub(crate) fn new(queue_limit: usize, max_streams: usize, resume_ttl: Duration, history: Option<History>) -> Self {
        let resume_ttl = if history.is_some() { Duration::ZERO } else { resume_ttl };
        Self {
            state: RwLock::default(),
            queue_limit,
            max_streams,
            resume_ttl,
            history: history.map(Mutex::new),
            position: tokio::sync::watch::Sender::new(0),
            writers: Writers::default(),
        }
    }

    fn history(&self) -> Option<MutexGuard<'_, History>> {
        // Every history mutation completes or leaves it as it was.
        self.history.as_ref().map(|h| h.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// True when events carry cursors.
    pub(crate) fn has_history(&self) -> bool {
        self.history.is_some()
    }

    /// The writer shards; the server runs one task per shard ([`Writers::run`]).
    pub(crate) fn writers(&self) -> &Writers {
        &self.writers
    }

    /// Follows the history's raw position.
    pub(crate) fn watch_position(&self) -> tokio::sync::watch::Receiver<u64> {
        self.position.subscribe()
    }

    /// The raw position a cursor names, when it is ahead of this history's
    /// (another instance consumed further): the caller may wait for it.
    pub(crate) fn ahead_of_history(&self, last_event_id: &str) -> Option<u64> {
        let h = self.history()?;
        let c = history::Cursor::parse(last_event_id)?;
        (c.epoch == h.position().epoch && c.n > h.offset()).then_some(c.n)
    }

    /// The cursor of the latest event (what `ready` would carry now), when history is on.
    pub(crate) fn history_position(&self) -> Option<String> {
        Some(self.history()?.position().to_string())
    }

    /// The history's raw position (AMQP: the offset after the last one seen), when history is on.
    pub(crate) fn history_offset(&self) -> Option<u64> {
        Some(self.history()?.offset())
    }

    /// Open streams bound to `key` now.
    pub(crate) fn bound(&self, key: &str) -> usize {
        self.read().keys.get(key).map_or(0, Bound::len)
    }

    /// Ends one open stream (`server_closed`) after what is queued; true if it was open.
    pub(crate) fn send_control_close(&self, token: Uuid) -> bool {
        self.send_inner(token, None, true, false) == SendOutcome::Delivered
    }

    /// Evicts old history and reports its size, when history is on.
    pub(crate) fn sweep_history(&self, now: Instant) -> Option<history::HistoryStats> {
        Some(self.history()?.sweep(now))
    }

    /// Moves the history past an offset that carries no event (AMQP).
    /// Returns how many live streams got a `gap` because offsets were skipped.
    pub(crate) fn advance_history(&self, n: u64) -> usize {
        let st = self.read();
        let Some(mut h) = self.history() else { return 0 };
        let gaps = if h.advance(n) == Advance::Jumped { Self::gap_all(&st, &h) } else { 0 };
        self.position.send_replace(h.offset());
        gaps
    }

    fn gap_all(st: &State, h: &History) -> usize {
        let frame = history::gap_frame(&h.position().to_string(), GapCause::Lost);
        st.slots.values().filter(|s| matches!(s, Slot::Open(o) if o.queue.push(frame.clone()).is_ok())).count()
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
    pub(crate) fn register_pending(&self, token: Uuid) -> Result<(), Refused> {
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
    pub(crate) fn send(&self, token: Uuid, frame: Option<Bytes>, close: bool) -> SendOutcome {
        self.send_inner(token, frame, close, true)
    }

    /// Like [`Router::send`] for a frame that is not an application event
    /// (a `retry:` hint): never recorded in the history.
    pub(crate) fn send_control(&self, token: Uuid, frame: Bytes, close: bool) -> SendOutcome {
        self.send_inner(token, Some(frame), close, false)
    }

    fn send_inner(&self, token: Uuid, frame: Option<Bytes>, close: bool, event: bool) -> SendOutcome {
        let mut st = self.write();
        let (queue, request_id, peer) = match st.slots.get_mut(&token) {
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
            Some(Slot::Open(open)) => (Arc::clone(&open.queue), open.request_id.clone(), open.peer),
        };
        drop(st);
        match queue.closing() {
            None => {}
            Some(DisconnectReason::Error) => return SendOutcome::WriteFailed,
            Some(_) => return SendOutcome::NotFound,
        }
        // With history, an event is recorded (under its stream's connection
        // key, so a resume replays it) and pushed under the history lock, in
        // cursor order with publishes.
        let mut h = if event && frame.is_some() { self.history() } else { None };
        let frame = match (frame, h.as_mut()) {
            (Some(f), Some(h)) => {
                let key = request_id.map(|r| format!("connection.{r}"));
                let recorded = h.record(None, key.as_deref(), &f, Instant::now()).map(|(f, _)| f);
                self.position.send_replace(h.offset());
                recorded
            }
            (f, _) => f,
        };
        if let Some(f) = frame {
            match queue.push_with(f, Write::Through, event) {
                Ok(_) => {}
                Err(PushError::Overflow) => return SendOutcome::Overflow(peer),
                Err(PushError::Closed(DisconnectReason::Error)) => return SendOutcome::WriteFailed,
                Err(PushError::Closed(_)) => return SendOutcome::NotFound,
            }
        }
        if close && !queue.close(None, DisconnectReason::ServerClosed) {
            return SendOutcome::NotFound;
        }
        SendOutcome::Delivered
    }

    /// Pushes one shared frame to every stream bound to `key`, then closes them
    /// if asked. Streams already closing are skipped and not counted. Ended
    /// streams leave the index through [`Router::end_stream`] only, so their
    /// keys are always released in one place.
    pub(crate) fn publish(&self, key: &str, frame: Option<&Bytes>, close: bool) -> Published {
        let mut result = Published::default();
        let st = self.read();
        if st.held_keys.contains_key(key) {
            drop(st);
            self.hold(key, frame, &mut result);
            return result;
        }
        if let (Some(f), Some(mut h)) = (frame, self.history()) {
            let Some((f, _)) = h.record(None, Some(key), f, Instant::now()) else { return result };
            self.position.send_replace(h.offset());
            deliver_key(&st, &self.writers, key, Some(&f), close, &mut result);
            return result;
        }
        deliver_key(&st, &self.writers, key, frame, close, &mut result);
        result
    }

    /// Delivers an event read from the cluster's history stream at raw
    /// position `n` (AMQP): recorded under `key`, then pushed to the streams
    /// bound to `key`, or only to `token` (a send) when given. A position
    /// seen before is dropped; skipped positions give every live stream a
    /// `gap` first. Returns the publish result and the gaps written.
    pub(crate) fn publish_at(
        &self,
        n: u64,
        key: &str,
        frame: &[u8],
        close: bool,
        token: Option<Uuid>,
    ) -> (Published, usize) {
        let mut result = Published::default();
        let st = self.read();
        let Some(mut h) = self.history() else { return (result, 0) };
        let Some((f, advance)) = h.record(Some(n), Some(key), frame, Instant::now()) else { return (result, 0) };
        self.position.send_replace(h.offset());
        let gaps = if advance == Advance::Jumped { Self::gap_all(&st, &h) } else { 0 };
        match token {
            Some(t) => {
                if let Some(Slot::Open(o)) = st.slots.get(&t) {
                    deliver_each(
                        &st,
                        std::iter::once((&t, &o.queue)),
                        Some(&f),
                        close,
                        Write::Through,
                        &self.writers,
                        &mut result,
                    );
                }
            }
            None => deliver_key(&st, &self.writers, key, Some(&f), close, &mut result),
        }
        (result, gaps)
    }

    /// The routing key a send to an open `token` is recorded under:
    /// `connection.<request_id>`, or `token.<token>` for a stream without a
    /// request_id (which no resume matches). `None` when it is not open.
    pub(crate) fn send_key(&self, token: Uuid) -> Option<String> {
        match self.read().slots.get(&token) {
            Some(Slot::Open(o)) => Some(match &o.request_id {
                Some(r) => format!("connection.{r}"),
                None => format!("token.{token}"),
            }),
            _ => None,
        }
    }

    fn hold(&self, key: &str, frame: Option<&Bytes>, result: &mut Published) {
        let Some(frame) = frame else { return };
        let mut st = self.write();
        let Some(rid) = st.held_keys.get(key).cloned() else { return };
        let Some(hold) = st.holds.get_mut(&rid) else { return };
        if hold.bytes + frame.len() > self.queue_limit {
            st.holds.remove(&rid);
            st.held_keys.remove(key);
            result.hold_dropped = 1;
            return;
        }
        hold.bytes += frame.len();
        hold.frames.push(frame.clone());
        result.held = 1;
    }
}

/// What a new stream is opened with.
#[derive(Debug)]
pub(crate) struct NewStream<'a> {
    /// Its routing keys.
    pub(crate) keys: Vec<String>,
    pub(crate) request_id: Option<&'a str>,
    pub(crate) peer: Option<SocketAddr>,
    /// `ready` (after an optional `retry:` block); `None`: its routing could
    /// not be set up, and it ends with `error` after the buffered events.
    pub(crate) ready: Option<Bytes>,
    /// The client's `Last-Event-ID` (used with history on).
    pub(crate) last_event_id: Option<&'a str>,
}

impl Router {
    /// Turns a pending token into an open stream bound to its keys, moving
    /// the buffered frames into `queue`, then any events held for its
    /// request_id, then (history on, with a `Last-Event-ID`) the replay or a
    /// `gap`, followed by `ready` (with history: carrying the cursor it went
    /// live at). A buffered `close` ends it after the buffered frames
    /// (`server_closed`), and so does a drain, in which case `drain_hint` is
    /// written last.
    ///
    /// Returns how it opened, the key of a hold it took over (whose
    /// reference the caller releases once the new stream's keys are bound),
    /// and how it resumed.
    pub(crate) fn open(
        &self,
        queue: &Arc<StreamQueue>,
        new: NewStream<'_>,
        drain_hint: impl FnOnce() -> Bytes,
    ) -> (Opened, Option<Box<str>>, Resumed) {
        let mut st = self.write();
        let mut taken = None;
        if let Some(hold) = new.request_id.and_then(|r| st.holds.remove(r)) {
            st.held_keys.remove(&hold.key);
            taken = Some(hold);
        }
        let taken_key = taken.as_ref().map(|h| h.key.clone());
        let (opened, resumed) = self.open_locked(&mut st, queue, new, drain_hint, taken);
        (opened, taken_key, resumed)
    }

    fn open_locked(
        &self,
        st: &mut State,
        queue: &Arc<StreamQueue>,
        new: NewStream<'_>,
        drain_hint: impl FnOnce() -> Bytes,
        held: Option<Hold>,
    ) -> (Opened, Resumed) {
        let draining = st.draining;
        let token = queue.token();
        let pending = match st.slots.remove(&token) {
            Some(Slot::Pending(p)) => p,
            Some(other) => {
                st.slots.insert(token, other);
                return (Opened::Gone, Resumed::Fresh);
            }
            None => return (Opened::Gone, Resumed::Fresh),
        };
        for f in pending.frames {
            // Cannot overflow: the pending buffer has the same bound as the queue.
            let _ = queue.push_event(f, Write::Wake);
        }
        if pending.close {
            queue.close(None, DisconnectReason::ServerClosed);
            return (Opened::Closing, Resumed::Fresh);
        }
        let Some(ready) = new.ready else {
            queue.close(None, DisconnectReason::Error);
            return (Opened::Closing, Resumed::Fresh);
        };
        for f in held.into_iter().flat_map(|h| h.frames) {
            // A hold and a pending buffer share one bound each; together they can
            // exceed the queue's, in which case the stream closes as a slow consumer.
            let _ = queue.push_event(f, Write::Wake);
        }
        if draining {
            queue.close(Some(drain_hint()), DisconnectReason::ServerClosed);
            return (Opened::Closing, Resumed::Fresh);
        }
        let (ready, resumed) = match self.history() {
            None => (ready, Resumed::Fresh),
            Some(mut h) => {
                let resumed = match new.last_event_id {
                    None => Resumed::Fresh,
                    Some(id) => {
                        let mut keys = new.keys.clone();
                        keys.extend(new.request_id.map(|r| format!("connection.{r}")));
                        match h.resume(id, &keys, Instant::now()) {
                            Resume::Replay(frames) => {
                                let n = frames.len();
                                queue.push_replay(frames);
                                Resumed::Replayed(n)
                            }
                            Resume::Gap(cause) => {
                                let _ = queue.push(history::gap_frame(id, cause));
                                Resumed::Gap(cause)
                            }
                            // The caller waited for it already; it did not come.
                            Resume::Ahead(_) => {
                                let _ = queue.push(history::gap_frame(id, GapCause::Unknown));
                                Resumed::Gap(GapCause::Unknown)
                            }
                        }
                    }
                };
                let prefix = ready.strip_suffix(sse_wire::encode::READY).unwrap_or_default();
                (history::ready_with_id(prefix, h.position()), resumed)
            }
        };
        let _ = queue.push(ready);
        let mut bound: Vec<Box<str>> = Vec::with_capacity(new.keys.len());
        for key in new.keys {
            let key: Box<str> = key.into_boxed_str();
            if bound.contains(&key) {
                continue;
            }
            match st.keys.get_mut(&key) {
                Some(streams) => streams.insert(token, Arc::clone(queue)),
                None => {
                    st.keys.insert(key.clone(), Bound::One(token, Arc::clone(queue)));
                }
            }
            bound.push(key);
        }
        st.slots.insert(
            token,
            Slot::Open(Open {
                queue: Arc::clone(queue),
                keys: bound.into_boxed_slice(),
                request_id: new.request_id.map(Box::from),
                peer: new.peer,
                connected_at: SystemTime::now(),
            }),
        );
        (Opened::Live, resumed)
    }

    /// Forgets a token (pending or open).
    pub(crate) fn remove(&self, token: Uuid) {
        self.write().remove(token);
    }

    /// Forgets an ended stream (if still indexed) and returns the keys it
    /// no longer needs. A stream that ended unexpectedly (client gone, error)
    /// leaves a hold on `connection.<request_id>` when resume is on and no
    /// other stream of that request_id is live; that key stays needed.
    pub(crate) fn end_stream(&self, queue: &Arc<StreamQueue>, reason: DisconnectReason) -> Released {
        let mut st = self.write();
        let token = queue.token();
        if !matches!(st.slots.get(&token), Some(Slot::Open(o)) if Arc::ptr_eq(&o.queue, queue)) {
            return Vec::new();
        }
        let Some(Slot::Open(open)) = st.remove(token) else { return Vec::new() };
        let mut released: Released = open.keys.into_vec();
        let hold_key = open.request_id.as_ref().and_then(|rid| {
            let key: Box<str> = format!("connection.{rid}").into_boxed_str();
            let wanted = !self.resume_ttl.is_zero()
                && reason != DisconnectReason::ServerClosed
                && !st.draining
                && released.contains(&key)
                && !st.keys.contains_key(&key)
                && st.holds.len() < self.max_streams;
            wanted.then_some((rid.clone(), key))
        });
        if let Some((rid, key)) = hold_key {
            released.retain(|k| *k != key);
            st.held_keys.insert(key.clone(), rid.clone());
            let expires = Instant::now() + self.resume_ttl;
            st.holds.insert(rid, Hold { key, frames: Vec::new(), bytes: 0, expires });
        }
        released
    }

    /// Drops holds whose TTL passed; returns their keys (no longer needed).
    pub(crate) fn expire_holds(&self, now: Instant) -> Released {
        let mut st = self.write();
        let expired: Vec<Box<str>> =
            st.holds.iter().filter(|(_, h)| h.expires <= now).map(|(rid, _)| rid.clone()).collect();
        let mut released = Vec::new();
        for rid in expired {
            if let Some(h) = st.holds.remove(&rid) {
                st.held_keys.remove(&h.key);
                released.push(h.key);
            }
        }
        released
    }

    /// Every routing key some stream or hold needs.
    #[cfg(test)]
    pub(crate) fn bound_keys(&self) -> Vec<Box<str>> {
        let st = self.read();
        st.keys.keys().chain(st.held_keys.keys()).cloned().collect()
    }

    /// Every open stream (a snapshot; the lock is released on return).
    pub(crate) fn open_streams(&self) -> Vec<Arc<StreamQueue>> {
        self.read()
            .slots
            .values()
            .filter_map(|s| match s {
                Slot::Open(o) => Some(Arc::clone(&o.queue)),
                Slot::Pending(_) => None,
            })
            .collect()
    }

    /// Pushes `frame` (not an application event) to every open stream
    /// through the writer shards; the result counts (and names the first
    /// of) the streams that overflowed.
    pub(crate) fn push_all(&self, frame: &Bytes) -> Published {
        let st = self.read();
        let mut fanout = self.writers.fanout(st.slots.len());
        let mut result = Published::default();
        for (token, slot) in &st.slots {
            let Slot::Open(o) = slot else { continue };
            match o.queue.push_with(frame.clone(), Write::Shard, false) {
                Ok(Queued::ForWriter) => fanout.add(&o.queue),
                Ok(Queued::Done) | Err(PushError::Closed(_)) => {}
                Err(PushError::Overflow) => {
                    result.overflowed += 1;
                    result.first_overflowed.get_or_insert((*token, o.peer));
                }
            }
        }
        fanout.send();
        result
    }

    /// Open streams whose bytes have waited `limit` without progress: token,
    /// peer and queue (a snapshot; the lock is released on return).
    pub(crate) fn stalled(
        &self,
        now: std::time::Instant,
        limit: Duration,
    ) -> Vec<(Uuid, Option<SocketAddr>, Arc<StreamQueue>)> {
        let st = self.read();
        st.slots
            .iter()
            .filter_map(|(t, s)| match s {
                Slot::Open(o) if o.queue.sweep_stalled(now, limit) => Some((*t, o.peer, Arc::clone(&o.queue))),
                _ => None,
            })
            .collect()
    }

    /// Every token held, pending or open (the roster).
    pub(crate) fn tokens(&self) -> Vec<Uuid> {
        self.read().slots.keys().copied().collect()
    }

    /// Open streams (all, or those bound to `key`) with tokens after
    /// `after`, in token order, at most `limit`; and the token to pass as
    /// `after` for the next page, when there is one.
    pub(crate) fn list(&self, key: Option<&str>, after: Option<Uuid>, limit: usize) -> (Vec<StreamInfo>, Option<Uuid>) {
        let st = self.read();
        let mut tokens: Vec<Uuid> = match key {
            Some(k) => st.keys.get(k).map(|m| m.iter().map(|(t, _)| *t).collect()).unwrap_or_default(),
            None => st.slots.iter().filter(|(_, s)| matches!(s, Slot::Open(_))).map(|(t, _)| *t).collect(),
        };
        tokens.retain(|t| after.is_none_or(|a| *t > a));
        tokens.sort_unstable();
        let more = tokens.len() > limit;
        tokens.truncate(limit);
        let infos: Vec<StreamInfo> = tokens
            .iter()
            .filter_map(|t| match st.slots.get(t) {
                Some(Slot::Open(o)) => {
                    let (queued_bytes, events_sent) = o.queue.stats();
                    Some(StreamInfo {
                        token: *t,
                        request_id: o.request_id.clone(),
                        keys: o.keys.clone(),
                        peer: o.peer,
                        connected_at: o.connected_at,
                        queued_bytes,
                        events_sent,
                    })
                }
                _ => None,
            })
            .collect();
        let next = if more { tokens.last().copied() } else { None };
        (infos, next)
    }

    /// Ends every open stream bound to `key` after a last frame (`hint()`,
    /// per stream); returns how many. Holds are not affected.
    pub(crate) fn close_key(&self, key: &str, hint: impl Fn() -> Bytes) -> usize {
        let st = self.read();
        let Some(streams) = st.keys.get(key) else { return 0 };
        streams.iter().filter(|(_, q)| q.close(Some(hint()), DisconnectReason::ServerClosed)).count()
    }

    /// Refuses new registrations and returns every open stream, to be closed.
    pub(crate) fn start_draining(&self) -> Vec<Arc<StreamQueue>> {
        self.write().draining = true;
        self.open_streams()
    }

    /// True once draining started.
    pub(crate) fn is_draining(&self) -> bool {
        self.read().draining
    }

    /// Number of (pending, open) streams and of distinct routing keys.
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
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

    fn new(keys: Vec<String>, request_id: Option<&str>) -> NewStream<'_> {
        NewStream { keys, request_id, peer: None, ready: Some(READY), last_event_id: None }
    }

    fn open(r: &Router, keys: &[&str]) -> (Uuid, Arc<StreamQueue>) {
        let t = Uuid::new_v4();
        r.register_pending(t).unwrap();
        let q = queue(t);
        let rid = keys.iter().find_map(|k| k.strip_prefix("connection."));
        assert_eq!(r.open(&q, new(keys.iter().map(|k| k.to_string()).collect(), rid), Bytes::new).0, Opened::Live);
        (t, q)
    }

    #[test]
    fn pending_sends_are_buffered_then_flushed_before_ready() {
        let r = Router::new(1000, 10, Duration::ZERO, None);
        let t = Uuid::new_v4();
        assert_eq!(r.send(t, None, false), SendOutcome::NotFound);
        r.register_pending(t).unwrap();
        assert_eq!(r.send(t, Some(Bytes::from_static(b"1")), false), SendOutcome::Buffered);
        assert_eq!(r.send(t, Some(Bytes::from_static(b"2")), false), SendOutcome::Buffered);
        let q = queue(t);
        assert_eq!(r.open(&q, new(vec![], None), Bytes::new).0, Opened::Live);
        assert_eq!(q.queued_bytes(), 3);
        assert_eq!(r.send(t, Some(Bytes::from_static(b"3")), false), SendOutcome::Delivered);
        assert_eq!(r.counts(), (0, 1, 0));
    }

    #[test]
    fn buffered_close_ends_the_stream_and_later_sends_are_not_found() {
        let r = Router::new(1000, 10, Duration::ZERO, None);
        let t = Uuid::new_v4();
        r.register_pending(t).unwrap();
        assert_eq!(r.send(t, Some(Bytes::from_static(b"1")), true), SendOutcome::Buffered);
        assert_eq!(r.send(t, Some(Bytes::from_static(b"2")), false), SendOutcome::NotFound);
        let q = queue(t);
        assert_eq!(r.open(&q, new(vec!["broadcast".into()], None), Bytes::new).0, Opened::Closing);
        assert_eq!(q.queued_bytes(), 1);
        assert_eq!(r.counts(), (0, 0, 0));
    }

    #[test]
    fn pending_buffer_is_bounded() {
        let r = Router::new(4, 10, Duration::ZERO, None);
        let t = Uuid::new_v4();
        r.register_pending(t).unwrap();
        assert_eq!(r.send(t, Some(Bytes::from_static(b"1234")), false), SendOutcome::Buffered);
        assert_eq!(r.send(t, Some(Bytes::from_static(b"5")), false), SendOutcome::BufferFull);
    }

    #[test]
    fn max_streams_counts_pending_and_open() {
        let r = Router::new(100, 2, Duration::ZERO, None);
        open(&r, &[]);
        r.register_pending(Uuid::new_v4()).unwrap();
        assert_eq!(r.register_pending(Uuid::new_v4()), Err(Refused::Full));
    }

    #[test]
    fn a_key_holds_one_stream_without_a_map_and_grows_and_shrinks_through_one() {
        let r = Router::new(1000, 10, Duration::ZERO, None);
        let (t1, q1) = open(&r, &["k"]);
        assert!(matches!(r.read().keys.get("k"), Some(Bound::One(t, _)) if *t == t1));
        let (t2, _q2) = open(&r, &["k"]);
        assert_eq!(r.bound("k"), 2);
        r.write().remove(t1);
        assert_eq!(r.bound("k"), 1);
        r.write().remove(t2);
        assert_eq!(r.bound("k"), 0);
        assert!(r.read().keys.is_empty(), "an unbound key leaves the index");
        drop(q1);
    }

    #[test]
    fn publish_reaches_exactly_the_bound_streams_with_one_shared_buffer() {
        let r = Router::new(1000, 10, Duration::ZERO, None);
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
    fn a_large_fan_out_reaches_every_stream_once() {
        let r = Router::new(1000, 2000, Duration::ZERO, None);
        let queues: Vec<_> = (0..WRITE_THROUGH_MAX + 1).map(|_| open(&r, &["broadcast"]).1).collect();
        let frame = Bytes::from_static(b"data: x\n\n");
        assert_eq!(r.publish("broadcast", Some(&frame), false).matched, WRITE_THROUGH_MAX + 1);
        for q in &queues {
            let mut out = Vec::new();
            q.take_batch(&mut out, 64, std::task::Waker::noop());
            assert_eq!(out, vec![READY, frame.clone()]);
        }
    }

    #[test]
    fn removing_a_stream_unbinds_its_keys() {
        let r = Router::new(1000, 10, Duration::ZERO, None);
        let (_, q) = open(&r, &["broadcast", "connection.r1"]);
        let (_, _) = open(&r, &["broadcast"]);
        assert_eq!(r.counts(), (0, 2, 2));
        assert_eq!(
            r.end_stream(&q, DisconnectReason::ClientClosed),
            vec![Box::from("broadcast"), Box::from("connection.r1")]
        );
        assert_eq!(r.counts(), (0, 1, 1));
        assert_eq!(r.publish("connection.r1", None, false).matched, 0);
    }

    #[test]
    fn publish_with_close_ends_the_streams() {
        let r = Router::new(1000, 10, Duration::ZERO, None);
        let (t, q) = open(&r, &["connection.r1"]);
        assert_eq!(r.publish("connection.r1", None, true).matched, 1);
        assert_eq!(r.send(t, None, false), SendOutcome::NotFound);
        assert_eq!(r.publish("connection.r1", None, true).matched, 0, "already closing");
        let mut out = Vec::new();
        q.take_batch(&mut out, 64, std::task::Waker::noop());
        assert_eq!(
            q.take_batch(&mut out, 64, std::task::Waker::noop()),
            crate::queue::Batch::End(DisconnectReason::ServerClosed)
        );
    }

    #[test]
    fn unexpected_end_holds_connection_events_until_the_request_id_returns() {
        let r = Router::new(1000, 10, Duration::from_secs(60), None);
        let (_, q) = open(&r, &["broadcast", "connection.r1"]);
        let released = r.end_stream(&q, DisconnectReason::ClientClosed);
        assert_eq!(released, vec![Box::from("broadcast")], "the hold keeps connection.r1 bound");
        let frame = Bytes::from_static(b"data: held\n\n");
        let p = r.publish("connection.r1", Some(&frame), false);
        assert_eq!((p.matched, p.held), (0, 1));
        assert_eq!(r.bound_keys(), vec![Box::from("connection.r1")]);
        let t = Uuid::new_v4();
        r.register_pending(t).unwrap();
        let q2 = queue(t);
        let (opened, taken, _) = r.open(&q2, new(vec!["connection.r1".into()], Some("r1")), Bytes::new);
        assert_eq!((opened, taken.as_deref()), (Opened::Live, Some("connection.r1")));
        let mut out = Vec::new();
        q2.take_batch(&mut out, 64, std::task::Waker::noop());
        assert_eq!(out, vec![frame, READY], "held events come before ready");
    }

    #[test]
    fn server_closed_streams_and_expired_holds_keep_nothing() {
        let r = Router::new(1000, 10, Duration::from_millis(1), None);
        let (_, q) = open(&r, &["connection.a"]);
        assert_eq!(r.end_stream(&q, DisconnectReason::ServerClosed), vec![Box::from("connection.a")]);
        let (_, q) = open(&r, &["connection.b"]);
        assert!(r.end_stream(&q, DisconnectReason::Error).is_empty());
        let later = Instant::now() + Duration::from_secs(1);
        assert_eq!(r.expire_holds(later), vec![Box::from("connection.b")]);
        assert!(r.bound_keys().is_empty());
    }

    #[test]
    fn draining_refuses_new_tokens_and_closes_late_opens() {
        let r = Router::new(1000, 10, Duration::ZERO, None);
        let t = Uuid::new_v4();
        r.register_pending(t).unwrap();
        assert!(r.start_draining().is_empty());
        assert_eq!(r.register_pending(Uuid::new_v4()), Err(Refused::Draining));
        let q = queue(t);
        assert_eq!(r.open(&q, new(vec![], None), || Bytes::from_static(b"retry")).0, Opened::Closing);
    }
}
