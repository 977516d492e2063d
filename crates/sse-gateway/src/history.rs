//! The event history behind resumable streams (`HISTORY_SECONDS`, ext.).
//!
//! With history on, every event written to a stream gets a cursor, written
//! as its `id:` line, and is kept here for `HISTORY_SECONDS` (at most
//! `HISTORY_MAX_BYTES`). A client that reconnects with `Last-Event-ID` gets
//! every event for its keys after that cursor, or a `gap` when the history
//! cannot cover it. The kept frame is the very buffer the live path wrote
//! (id line included): one encoding, one copy, shared.
//!
//! Cursors are `<epoch>-<n>`. In HTTP mode `n` counts this process's events
//! and the epoch is random per start, so a cursor from a previous run is
//! unknown (gap). In AMQP mode `n` is the offset of the event in the
//! cluster's RabbitMQ stream and the epoch is fixed, so a cursor is valid on
//! every instance; offsets only grow, so a repeated one (a redelivery after
//! a broker reconnect) is recognised and dropped.
//!
//! Pure bookkeeping: the router calls it under its locks; nothing here
//! blocks or knows about sockets.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

/// The epoch of AMQP-mode cursors (stream offsets are cluster-wide).
pub(crate) const AMQP_EPOCH: u32 = 0;

/// A position in the history: the `id:` of an event or of `ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) epoch: u32,
    pub(crate) n: u64,
}

impl Cursor {
    /// Reads a cursor as written by [`fmt::Display`]; `None` if malformed.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let (epoch, n) = s.trim().split_once('-')?;
        if epoch.is_empty() || epoch.len() > 8 || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Self { epoch: u32::from_str_radix(epoch, 16).ok()?, n: n.parse().ok()? })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{}", self.epoch, self.n)
    }
}

/// Why a resume could not be served from the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GapCause {
    /// Malformed, from another run (HTTP mode) or never seen here.
    Unknown,
    /// Older than what the history still keeps (age or size).
    Expired,
    /// Events were lost between the cursor and now (the broker dropped
    /// them during an outage longer than its retention).
    Lost,
}

impl GapCause {
    /// The `cause` label and JSON field.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::Lost => "lost",
        }
    }
}

/// What a resume gets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resume {
    /// These frames (possibly none), in order; then live events.
    Replay(Vec<Bytes>),
    /// A `gap` event; then live events.
    Gap(GapCause),
    /// The cursor is beyond this instance's position (AMQP: another
    /// instance consumed further); wait for it, then ask again.
    Ahead(u64),
}

#[derive(Debug)]
struct Entry {
    n: u64,
    /// The routing key it was published to (`connection.<request_id>` for a send).
    key: Option<Box<str>>,
    frame: Bytes,
    at: Instant,
}

/// Bytes an entry costs beyond its frame and key (struct, deque slot, Bytes header).
const ENTRY_OVERHEAD: usize = 96;

impl Entry {
    fn cost(&self) -> usize {
        ENTRY_OVERHEAD + self.frame.len() + self.key.as_ref().map_or(0, |k| k.len())
    }
}

/// The kept events, oldest first, bounded by age and bytes.
#[derive(Debug)]
pub(crate) struct History {
    epoch: u32,
    max_age: Duration,
    max_bytes: usize,
    entries: VecDeque<Entry>,
    bytes: usize,
    /// `n` of the last event seen (0: none yet).
    position: u64,
    /// Every event with `n > floor` is still kept (or was never for anyone).
    floor: u64,
    /// Whether `floor` was set by the first event seen (AMQP consumption
    /// starts somewhere in the stream, not at offset 0).
    started: bool,
    /// What evicting an event means for a cursor below `floor`.
    floor_cause: GapCause,
    /// Events evicted since the last [`History::sweep`].
    evicted: usize,
}

impl History {
    /// An empty history. `epoch` is [`AMQP_EPOCH`] for a cluster stream, or
    /// a random non-zero number for this process alone.
    pub(crate) fn new(epoch: u32, max_age: Duration, max_bytes: usize) -> Self {
        Self {
            epoch,
            max_age,
            max_bytes,
            entries: VecDeque::new(),
            bytes: 0,
            position: 0,
            floor: 0,
            started: epoch != AMQP_EPOCH,
            floor_cause: GapCause::Expired,
            evicted: 0,
        }
    }

    /// A random epoch for an HTTP-mode history.
    pub(crate) fn local_epoch() -> u32 {
        loop {
            let e = (uuid::Uuid::new_v4().as_u128() & 0xffff_ffff) as u32;
            if e != AMQP_EPOCH {
                return e;
            }
        }
    }

    /// The cursor of the latest event (what `ready` carries).
    pub(crate) fn position(&self) -> Cursor {
        Cursor { epoch: self.epoch, n: self.position }
    }

    /// The raw position (AMQP: the last stream offset seen).
    pub(crate) fn offset(&self) -> u64 {
        self.position
    }

    /// Moves the position to `n` without keeping an event (AMQP control
    /// messages and rejected ones occupy offsets too). Returns
    /// [`Advance::Jumped`] when offsets between the position and `n` were
    /// never seen: those events are lost, and the history is reset.
    pub(crate) fn advance(&mut self, n: u64) -> Advance {
        if !self.started {
            self.started = true;
            self.floor = n.saturating_sub(1);
            self.position = self.floor;
        }
        if n <= self.position {
            return Advance::Seen;
        }
        let jumped = n > self.position + 1;
        self.position = n;
        if jumped {
            self.entries.clear();
            self.bytes = 0;
            self.floor = n - 1;
            self.floor_cause = GapCause::Lost;
            return Advance::Jumped;
        }
        Advance::Next
    }

    /// Keeps an event: `frame` is the encoded event without an id; the
    /// returned buffer has its `id:` line and is what every stream writes.
    /// `n`: its stream offset (AMQP), or `None` for the next local number.
    /// `None` back: the offset was seen already (a redelivery; drop it).
    pub(crate) fn record(
        &mut self,
        n: Option<u64>,
        key: Option<&str>,
        frame: &[u8],
        now: Instant,
    ) -> Option<(Bytes, Advance)> {
        let n = n.unwrap_or(self.position + 1);
        let advance = self.advance(n);
        if advance == Advance::Seen {
            return None;
        }
        let cursor = Cursor { epoch: self.epoch, n }.to_string();
        let mut buf = BytesMut::with_capacity(5 + cursor.len() + frame.len());
        buf.put_slice(b"id: ");
        buf.put_slice(cursor.as_bytes());
        buf.put_u8(b'\n');
        buf.put_slice(frame);
        let frame = buf.freeze();
        let entry = Entry { n, key: key.map(Box::from), frame: frame.clone(), at: now };
        self.bytes += entry.cost();
        self.entries.push_back(entry);
        self.evict(now);
        Some((frame, advance))
    }

    /// Drops events older than the age bound, then the oldest until the
    /// byte bound holds.
    pub(crate) fn evict(&mut self, now: Instant) {
        while let Some(front) = self.entries.front() {
            let too_old = now.saturating_duration_since(front.at) > self.max_age;
            if !too_old && self.bytes <= self.max_bytes {
                break;
            }
            self.bytes -= front.cost();
            self.floor = front.n;
            self.floor_cause = GapCause::Expired;
            self.evicted += 1;
            self.entries.pop_front();
        }
    }

    /// What a client that last saw `last_event_id` gets, for a stream bound
    /// to `keys`.
    pub(crate) fn resume(&mut self, last_event_id: &str, keys: &[String], now: Instant) -> Resume {
        let Some(cursor) = Cursor::parse(last_event_id) else { return Resume::Gap(GapCause::Unknown) };
        if cursor.epoch != self.epoch {
            return Resume::Gap(GapCause::Unknown);
        }
        if cursor.n > self.position || !self.started {
            return Resume::Ahead(cursor.n);
        }
        self.evict(now);
        if cursor.n < self.floor {
            return Resume::Gap(self.floor_cause);
        }
        let from = self.entries.partition_point(|e| e.n <= cursor.n);
        let frames = self
            .entries
            .range(from..)
            .filter(|e| e.key.as_deref().is_some_and(|k| keys.iter().any(|b| b == k)))
            .map(|e| e.frame.clone())
            .collect();
        Resume::Replay(frames)
    }

    /// (events kept, bytes, age of the oldest).
    pub(crate) fn stats(&self, now: Instant) -> (usize, usize, Duration) {
        let age = self.entries.front().map_or(Duration::ZERO, |e| now.saturating_duration_since(e.at));
        (self.entries.len(), self.bytes, age)
    }

    /// Evicts what is due and reports the size, and the events evicted
    /// since the previous sweep.
    pub(crate) fn sweep(&mut self, now: Instant) -> HistoryStats {
        self.evict(now);
        let (events, bytes, oldest) = self.stats(now);
        HistoryStats { events, bytes, oldest, evicted: std::mem::take(&mut self.evicted) }
    }
}

/// The history's size, for the gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistoryStats {
    pub(crate) events: usize,
    pub(crate) bytes: usize,
    /// Age of the oldest kept event.
    pub(crate) oldest: Duration,
    /// Events evicted (age or size) since the previous sweep.
    pub(crate) evicted: usize,
}

/// How an offset moved the position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Advance {
    /// The next one.
    Next,
    /// Seen before (dropped).
    Seen,
    /// Offsets were skipped: events were lost; live streams need a `gap`.
    Jumped,
}

/// `event: gap` with `{"last_event_id": ..., "cause": ...}`.
pub(crate) fn gap_frame(last_event_id: &str, cause: GapCause) -> Bytes {
    let data = serde_json::json!({"last_event_id": last_event_id, "cause": cause.as_str()}).to_string();
    let mut buf = BytesMut::with_capacity(data.len() + 24);
    buf.put_slice(b"event: gap\ndata: ");
    buf.put_slice(data.as_bytes());
    buf.put_slice(b"\n\n");
    buf.freeze()
}

/// `ready` carrying the cursor it went live at, after an optional prefix
/// (the `retry:` block).
pub(crate) fn ready_with_id(prefix: &[u8], cursor: Cursor) -> Bytes {
    let id = cursor.to_string();
    let mut buf = BytesMut::with_capacity(prefix.len() + id.len() + 5 + sse_wire::encode::READY.len());
    buf.put_slice(prefix);
    buf.put_slice(b"id: ");
    buf.put_slice(id.as_bytes());
    buf.put_u8(b'\n');
    buf.put_slice(sse_wire::encode::READY);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor { epoch: 0xbeef, n: 42 };
        assert_eq!(c.to_string(), "beef-42");
        assert_eq!(Cursor::parse("beef-42"), Some(c));
        for bad in ["", "42", "x-1", "1-", "-1", "1-1a", "123456789-1", "1-99999999999999999999999"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn events_get_ids_and_replay_only_the_streams_keys_after_the_cursor() {
        let now = Instant::now();
        let mut h = History::new(7, Duration::from_secs(60), 1 << 20);
        let (a, _) = h.record(None, Some("broadcast"), b"data: a\n\n", now).unwrap();
        assert_eq!(&a[..], b"id: 7-1\ndata: a\n\n");
        let ready = h.position().to_string();
        h.record(None, Some("subject.bob"), b"data: b\n\n", now);
        let (c, _) = h.record(None, Some("broadcast"), b"data: c\n\n", now).unwrap();
        assert_eq!(h.resume(&ready, &keys(&["broadcast"]), now), Resume::Replay(vec![c.clone()]));
        assert_eq!(h.resume("7-0", &keys(&["broadcast", "subject.bob"]), now).replay_len(), 3);
        assert_eq!(h.resume("7-3", &keys(&["broadcast"]), now), Resume::Replay(vec![]));
        assert_eq!(h.resume("8-1", &keys(&["broadcast"]), now), Resume::Gap(GapCause::Unknown));
        assert_eq!(h.resume("nonsense", &keys(&["broadcast"]), now), Resume::Gap(GapCause::Unknown));
        assert_eq!(h.resume("7-9", &keys(&["broadcast"]), now), Resume::Ahead(9));
    }

    #[test]
    fn old_and_oversized_history_is_evicted_and_reported_as_expired() {
        let t0 = Instant::now();
        let mut h = History::new(1, Duration::from_secs(10), 1 << 20);
        h.record(None, Some("k"), b"data: 1\n\n", t0);
        h.record(None, Some("k"), b"data: 2\n\n", t0 + Duration::from_secs(5));
        let later = t0 + Duration::from_secs(12);
        assert_eq!(h.resume("1-0", &keys(&["k"]), later), Resume::Gap(GapCause::Expired));
        assert_eq!(h.resume("1-1", &keys(&["k"]), later).replay_len(), 1);
        let mut small = History::new(1, Duration::from_secs(10), 2 * (ENTRY_OVERHEAD + 20));
        for _ in 0..5 {
            small.record(None, Some("k"), b"data: 1\n\n", t0);
        }
        assert_eq!(small.stats(t0).0, 2);
        assert_eq!(small.resume("1-2", &keys(&["k"]), t0), Resume::Gap(GapCause::Expired));
        assert_eq!(small.resume("1-3", &keys(&["k"]), t0).replay_len(), 2);
    }

    #[test]
    fn stream_offsets_start_where_consumption_starts_drop_repeats_and_report_jumps() {
        let now = Instant::now();
        let mut h = History::new(AMQP_EPOCH, Duration::from_secs(60), 1 << 20);
        assert_eq!(h.resume("0-3", &keys(&["k"]), now), Resume::Ahead(3), "nothing consumed yet");
        assert_eq!(h.record(Some(100), Some("k"), b"data: x\n\n", now).unwrap().1, Advance::Next);
        assert_eq!(h.resume("0-50", &keys(&["k"]), now), Resume::Gap(GapCause::Expired));
        assert!(h.record(Some(100), Some("k"), b"data: x\n\n", now).is_none(), "redelivery dropped");
        assert_eq!(h.advance(101), Advance::Next);
        assert_eq!(h.resume("0-99", &keys(&["k"]), now).replay_len(), 1);
        assert_eq!(h.record(Some(105), Some("k"), b"data: y\n\n", now).unwrap().1, Advance::Jumped);
        assert_eq!(h.resume("0-101", &keys(&["k"]), now), Resume::Gap(GapCause::Lost));
        assert_eq!(h.resume("0-104", &keys(&["k"]), now).replay_len(), 1);
    }

    #[test]
    fn control_frames() {
        assert_eq!(
            &gap_frame("1-2", GapCause::Expired)[..],
            b"event: gap\ndata: {\"cause\":\"expired\",\"last_event_id\":\"1-2\"}\n\n"
        );
        assert_eq!(
            &ready_with_id(b"retry: 5\n\n", Cursor { epoch: 1, n: 0 })[..],
            b"retry: 5\n\nid: 1-0\nevent: ready\ndata:\n\n"
        );
    }

    impl Resume {
        fn replay_len(&self) -> usize {
            match self {
                Resume::Replay(f) => f.len(),
                other => panic!("expected a replay, got {other:?}"),
            }
        }
    }
}
