//! Credential expiry (extension): a connect answer may say when the
//! client's credentials expire (`expires_at`); at that time the stream gets
//! `event: auth_expired`, a `retry:` hint, and ends (`server_closed`), so
//! `EventSource` reconnects and the connect callback checks the browser's
//! current credentials.
//!
//! One task serves every stream: a min-heap of (deadline, token) and a
//! `Notify` for an earlier deadline, instead of a timer per stream. A stream
//! that ends cancels its entry; cancelled entries are skipped when due and
//! dropped in bulk once they outnumber the live ones, so the heap stays
//! within twice the streams that have an expiry (plus a constant), whatever
//! the reconnect churn.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use crate::events::Event;
use crate::metrics::Metrics;
use crate::retry::RetryHint;
use crate::router::{Router, SendOutcome};

/// The streams with an expiry, soonest first.
#[derive(Debug, Default)]
pub(crate) struct Expiries {
    state: Mutex<State>,
    earlier: Notify,
}

#[derive(Debug, Default)]
struct State {
    heap: BinaryHeap<Reverse<(Instant, Uuid)>>,
    /// Tokens whose entry is still wanted.
    live: HashSet<Uuid>,
}

/// Cancelled entries tolerated in the heap beyond twice the live ones.
const SLACK: usize = 1024;

impl Expiries {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Pushes and pops cannot leave the heap half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets `token`'s expiry (its stream ended).
    pub(crate) fn cancel(&self, token: Uuid) {
        let mut st = self.lock();
        if st.live.remove(&token) && st.heap.len() > 2 * st.live.len() + SLACK {
            let State { heap, live } = &mut *st;
            heap.retain(|Reverse((_, t))| live.contains(t));
        }
    }

    /// Ends `token`'s stream at `at` (now, if `at` has passed).
    pub(crate) fn schedule(&self, token: Uuid, at: SystemTime) {
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        let deadline = Instant::now() + wait;
        let mut st = self.lock();
        let soonest = st.heap.peek().is_none_or(|Reverse((d, _))| deadline < *d);
        st.heap.push(Reverse((deadline, token)));
        st.live.insert(token);
        drop(st);
        if soonest {
            self.earlier.notify_one();
        }
    }

    /// Takes the entries due at `now`.
    fn due(&self, now: Instant) -> (Vec<Uuid>, Option<Instant>) {
        let mut st = self.lock();
        let mut due = Vec::new();
        while let Some(Reverse((deadline, token))) = st.heap.peek().copied() {
            if deadline > now {
                return (due, Some(deadline));
            }
            st.heap.pop();
            if st.live.remove(&token) {
                due.push(token);
            }
        }
        (due, None)
    }

    /// Ends streams as their credentials expire, until the task is dropped.
    pub(crate) async fn run(&self, router: &Router, metrics: &Metrics) {
        loop {
            let (due, next) = self.due(Instant::now());
            for token in due {
                if router.send_control(token, frame(), true) == SendOutcome::Delivered {
                    metrics.emit(Event::CredentialsExpired { token });
                }
            }
            match next {
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = self.earlier.notified() => {}
                    }
                }
                None => self.earlier.notified().await,
            }
        }
    }
}

/// `auth_expired`, then a jittered `retry:` hint.
fn frame() -> Bytes {
    let hint = RetryHint::Reauthenticate.frame();
    let mut b = BytesMut::with_capacity(sse_wire::encode::AUTH_EXPIRED.len() + hint.len());
    b.extend_from_slice(sse_wire::encode::AUTH_EXPIRED);
    b.extend_from_slice(&hint);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn entries_come_due_in_deadline_order() {
        let e = Expiries::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        e.schedule(a, SystemTime::now() + Duration::from_secs(60));
        e.schedule(b, SystemTime::now() - Duration::from_secs(1));
        let (due, next) = e.due(Instant::now());
        assert_eq!(due, vec![b]);
        assert!(next.is_some());
        let (due, next) = e.due(Instant::now() + Duration::from_secs(61));
        assert_eq!((due, next), (vec![a], None));
    }

    #[test]
    fn ended_streams_are_skipped_and_the_heap_stays_bounded() {
        let e = Expiries::default();
        let far = SystemTime::now() + Duration::from_secs(3600);
        let kept = Uuid::new_v4();
        e.schedule(kept, far);
        for _ in 0..10 * SLACK {
            let t = Uuid::new_v4();
            e.schedule(t, far);
            e.cancel(t);
        }
        assert!(e.lock().heap.len() <= 2 + SLACK + 1, "heap {}", e.lock().heap.len());
        let (due, _) = e.due(Instant::now() + Duration::from_secs(3601));
        assert_eq!(due, vec![kept], "only the live entry fires");
    }

    #[test]
    fn the_frame_is_auth_expired_then_a_retry_hint() {
        let f = frame();
        let text = std::str::from_utf8(&f).unwrap();
        assert!(text.starts_with("event: auth_expired\ndata: {}\n\nretry: "), "{text}");
    }
}
