//! Paced backend callbacks: at most `MAX_CONCURRENT_CALLBACKS` callbacks
//! (connect, disconnect, roster) in flight at once, so the backend sees a
//! steady rate, never a thundering herd; connects beyond that wait in a FIFO
//! queue bounded by `MAX_QUEUED_CONNECTS` (a client that leaves while waiting
//! leaves the queue), and beyond the queue a new stream is refused at once.
//!
//! The slots are a fair (FIFO) semaphore; disconnects and rosters take a slot
//! per attempt and do not count against the connect queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The callback slots and the connect queue.
#[derive(Debug)]
pub(crate) struct Pacing {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// A connect waiting for its slot; leaving the queue when dropped.
pub(crate) struct InQueue {
    pacing: Arc<Pacing>,
}

impl Drop for InQueue {
    fn drop(&mut self) {
        self.pacing.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pacing {
    pub(crate) fn new(slots: usize, max_waiting: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(slots.max(1))), waiting: AtomicUsize::new(0), max_waiting }
    }

    /// Connects waiting for a slot now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Joins the connect queue, or `None` when it is full (a slot free now
    /// needs no queue place).
    pub(crate) fn enqueue(self: &Arc<Self>) -> Option<InQueue> {
        if self.slots.available_permits() > 0 {
            self.waiting.fetch_add(1, Ordering::Relaxed);
            return Some(InQueue { pacing: Arc::clone(self) });
        }
        let mut now = self.waiting.load(Ordering::Relaxed);
        loop {
            if now >= self.max_waiting {
                return None;
            }
            match self.waiting.compare_exchange(now, now + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(InQueue { pacing: Arc::clone(self) }),
                Err(actual) => now = actual,
            }
        }
    }

    /// Waits (in FIFO order) for a slot.
    pub(crate) async fn slot(&self) -> OwnedSemaphorePermit {
        match Arc::clone(&self.slots).acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => unreachable!("callback slots closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_queue_is_bounded_once_every_slot_is_taken() {
        let p = Arc::new(Pacing::new(1, 1));
        let first = p.enqueue().expect("a free slot");
        let slot = p.slot().await;
        drop(first);
        let queued = p.enqueue().expect("one queue place");
        assert!(p.enqueue().is_none(), "queue full");
        assert_eq!(p.waiting(), 1);
        drop(slot);
        let _slot = p.slot().await;
        drop(queued);
        assert_eq!(p.waiting(), 0);
    }
}
