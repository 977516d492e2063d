//! Disconnect callbacks, delivered reliably: a callback that fails with a
//! transient error (no answer, timeout, 5xx) is retried with jittered
//! exponential backoff for up to `DISCONNECT_RETRY_SECONDS`, with the same
//! body each time (the token is the backend's idempotency key).
//!
//! Each callback runs in its own tracked task, so a backend that is down
//! never delays a connect or a stream. Retries waiting at once are bounded
//! in count and in bytes (the requests they hold); beyond the bound a
//! failed callback is given up at once and counted. During the drain a
//! waiting retry is tried again at once, then every 200 ms, until the drain
//! gives up on it.
//!
//! Callbacks not finished yet (waiting for a slot, in flight, or waiting for
//! a retry) are counted, so a drain that must exit before they are can say
//! how many the backend may never hear.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::{Event, GiveUp};
use crate::hook::{ClientRequest, ConnectHook, DisconnectReason};
use crate::metrics::Metrics;
use crate::pacing::Pacing;

/// Most disconnect callbacks waiting for a retry at once.
const MAX_WAITING: usize = 100_000;
/// Most bytes (of the client requests they carry) held by waiting retries.
const MAX_WAITING_BYTES: usize = 64 * 1024 * 1024;
/// First retry delay; doubles up to [`MAX_BACKOFF`], each with ±50 % jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Retry period once the gateway is draining.
const DRAIN_BACKOFF: Duration = Duration::from_millis(200);

/// Counts the retries waiting (count, bytes), against the bounds.
#[derive(Debug, Default)]
struct Waiting {
    state: Mutex<(usize, usize)>,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, usize)> {
        // Two integers updated together cannot be left half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self) -> usize {
        self.lock().0
    }

    fn reserve<'a>(&'a self, bytes: usize, metrics: &'a Metrics) -> Option<Reservation<'a>> {
        let mut st = self.lock();
        if st.0 >= MAX_WAITING || st.1 + bytes > MAX_WAITING_BYTES {
            return None;
        }
        st.0 += 1;
        st.1 += bytes;
        metrics.emit(Event::DisconnectRetriesWaiting { count: st.0 });
        Some(Reservation { waiting: self, bytes, metrics })
    }
}

struct Reservation<'a> {
    waiting: &'a Waiting,
    bytes: usize,
    metrics: &'a Metrics,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut st = self.waiting.lock();
        st.0 -= 1;
        st.1 -= self.bytes;
        self.metrics.emit(Event::DisconnectRetriesWaiting { count: st.0 });
    }
}

fn request_bytes(request: &ClientRequest) -> usize {
    request.url.len() + request.headers.iter().map(|(k, v)| k.len() + v.len() + 16).sum::<usize>() + 128
}

/// How disconnect callbacks are delivered: the retry window, the retries
/// waiting, and what a retry watches (the drain).
pub(crate) struct Disconnects {
    window: Duration,
    waiting: Waiting,
    /// Callbacks between the start of [`Disconnects::deliver`] and its return.
    unfinished: AtomicUsize,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Every attempt takes a callback slot (paced like connects).
    pacing: Arc<Pacing>,
}

impl Disconnects {
    pub(crate) fn new(
        window: Duration,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        pacing: Arc<Pacing>,
    ) -> Self {
        Self { window, waiting: Waiting::default(), unfinished: AtomicUsize::new(0), metrics, shutdown, pacing }
    }

    /// Retries waiting now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.count()
    }

    /// Callbacks not finished now: waiting for a slot, in flight, or waiting
    /// for a retry (neither taken, refused nor given up yet).
    pub(crate) fn unfinished(&self) -> usize {
        self.unfinished.load(Ordering::Relaxed)
    }

    /// Sends the disconnect callback of `token`, retrying transient failures
    /// within the window; returns when it was taken, refused, or given up.
    pub(crate) async fn deliver(
        &self,
        hook: &dyn ConnectHook,
        token: Uuid,
        reason: DisconnectReason,
        request: &ClientRequest,
    ) {
        self.unfinished.fetch_add(1, Ordering::Relaxed);
        let _finished = Finished(&self.unfinished);
        let window_end = Instant::now() + self.window;
        let mut backoff = FIRST_BACKOFF;
        let mut reservation = None;
        let mut attempt: u32 = 1;
        loop {
            let slot = self.pacing.slot().await;
            let started = Instant::now();
            let result = hook.disconnect(token, reason, request).await;
            let elapsed = started.elapsed();
            drop(slot);
            self.metrics.emit(Event::DisconnectAnswered { token, result: result.as_ref().copied(), elapsed, attempt });
            let Err(error) = result else { return };
            if !error.is_transient() {
                return;
            }
            let now = Instant::now();
            if now >= window_end {
                if !self.window.is_zero() {
                    self.metrics.emit(Event::DisconnectGivenUp { token, why: GiveUp::Window, attempts: attempt });
                }
                return;
            }
            if reservation.is_none() {
                reservation = self.waiting.reserve(request_bytes(request), &self.metrics);
                if reservation.is_none() {
                    self.metrics.emit(Event::DisconnectGivenUp { token, why: GiveUp::TooMany, attempts: attempt });
                    return;
                }
            }
            let delay = if self.shutdown.is_cancelled() { DRAIN_BACKOFF } else { crate::retry::spread(backoff, 0.5) };
            let wake = (now + delay).min(window_end);
            self.metrics.emit(Event::DisconnectRetryScheduled { token, attempt, delay: wake - now });
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                // The drain flushes waiting retries now rather than after their backoff.
                () = self.shutdown.cancelled(), if !self.shutdown.is_cancelled() => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }
}

/// Takes one callback off the unfinished count when its delivery returns
/// (or is dropped with the runtime).
struct Finished<'a>(&'a AtomicUsize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_retries_are_bounded_and_released() {
        let w = Waiting::default();
        let m = Metrics::default();
        let a = w.reserve(MAX_WAITING_BYTES / 2, &m).expect("first fits");
        assert!(w.reserve(MAX_WAITING_BYTES, &m).is_none(), "over the byte bound");
        assert_eq!(w.count(), 1);
        drop(a);
        assert_eq!(*w.lock(), (0, 0));
    }
}
