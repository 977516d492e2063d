//! Writer shards: how one published buffer gets into thousands of sockets
//! without one task wake-up per stream.
//!
//! A publish to many streams queues the shared frame on each matched stream
//! (under that stream's lock, which fixes its order) and collects the
//! streams that need a write into a [`Fanout`], one list per shard. Handing
//! the fan-out over wakes each shard's writer task once; the writer walks its
//! list and writes each stream's queued frames with one non-blocking
//! vectored write ([`StreamQueue::write_queued`]). There is one shard per
//! runtime worker, so a broadcast's writes run on every core at once.
//!
//! Under load a shard's list collects several publishes before its writer
//! runs, and each stream then gets all of them in one write: batching comes
//! for free. A stream is in at most one list at a time however many
//! publishes queue for it, so the lists are bounded by the number of streams.
//!
//! A stream whose socket takes only part of a write is handed back to its
//! own task (in `raw_stream`), which waits for the socket; pushes to it
//! meanwhile only queue, wake nobody, and are written when it drains. The
//! stream task also still watches for the client's EOF.

use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

use crate::queue::StreamQueue;

/// Streams a writer writes before it lets the worker run other tasks (a
/// socket write costs a few microseconds: about a millisecond between yields).
const YIELD_EVERY: usize = 256;

/// One list of streams to write and its writer's wake-up.
#[derive(Debug, Default)]
struct Shard {
    todo: Mutex<Vec<Arc<StreamQueue>>>,
    wake: Notify,
}

impl Shard {
    fn todo(&self) -> MutexGuard<'_, Vec<Arc<StreamQueue>>> {
        // Only pushes, appends and swaps happen under it: never inconsistent.
        self.todo.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer shards (one per runtime worker).
#[derive(Debug)]
pub(crate) struct Writers {
    shards: Box<[Shard]>,
}

impl Default for Writers {
    /// One shard per core (the runtime's default worker count).
    fn default() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl Writers {
    /// `n` shards (at least one).
    pub(crate) fn new(n: usize) -> Self {
        Self { shards: (0..n.max(1)).map(|_| Shard::default()).collect() }
    }

    /// How many shards (and writer tasks) there are.
    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }

    /// An empty fan-out for up to `streams` streams (its lists are sized
    /// once; with 0, as for a publish written inline, nothing is allocated
    /// until a stream is added).
    pub(crate) fn fanout(&self, streams: usize) -> Fanout<'_> {
        let mut fanout = Fanout { writers: self, lists: Vec::new(), next: 0 };
        if streams > 0 {
            fanout.size(streams);
        }
        fanout
    }

    /// Shard `i`'s writer: runs until its task is aborted, counting its
    /// turns and the streams it wrote.
    pub(crate) async fn run(&self, i: usize, (runs, streams): (Counter, Counter)) {
        let shard = &self.shards[i % self.shards.len()];
        let mut batch = Vec::new();
        loop {
            shard.wake.notified().await;
            std::mem::swap(&mut batch, &mut *shard.todo());
            runs.inc();
            streams.inc_by(batch.len() as u64);
            for (n, queue) in batch.drain(..).enumerate() {
                queue.write_queued();
                if n % YIELD_EVERY == YIELD_EVERY - 1 {
                    // A long list must not hold this worker: connects,
                    // publishes and other streams run in between.
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// Streams collected by one publish, dealt round-robin over the shards;
/// [`Fanout::send`] hands them to the writers.
#[derive(Debug)]
pub(crate) struct Fanout<'a> {
    writers: &'a Writers,
    lists: Vec<Vec<Arc<StreamQueue>>>,
    next: usize,
}

impl Fanout<'_> {
    fn size(&mut self, streams: usize) {
        let each = streams.div_ceil(self.writers.shards.len());
        self.lists = (0..self.writers.shards.len()).map(|_| Vec::with_capacity(each)).collect();
    }

    /// Adds a stream that needs a write.
    pub(crate) fn add(&mut self, queue: &Arc<StreamQueue>) {
        if self.lists.is_empty() {
            self.size(1);
        }
        self.lists[self.next].push(Arc::clone(queue));
        self.next = (self.next + 1) % self.lists.len();
    }

    /// Hands every list to its shard and wakes each shard that got work.
    pub(crate) fn send(self) {
        for (shard, mut list) in self.writers.shards.iter().zip(self.lists) {
            if list.is_empty() {
                continue;
            }
            {
                let mut todo = shard.todo();
                if todo.is_empty() {
                    std::mem::swap(&mut *todo, &mut list);
                } else {
                    todo.append(&mut list);
                }
            }
            shard.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use uuid::Uuid;

    use super::*;
    use crate::chunk::{Chunk, MAX_SLICES};
    use crate::hook::ClientRequest;
    use crate::queue::{Queued, Sink, Write};

    /// A sink that takes everything and remembers it.
    #[derive(Debug, Default)]
    struct Taken(Mutex<Vec<u8>>);

    impl Sink for Taken {
        fn write(&self, out: &mut Chunk) -> io::Result<bool> {
            let mut slices = [io::IoSlice::new(&[]); MAX_SLICES];
            let n = out.slices(&mut slices);
            let bytes: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
            self.0.lock().unwrap().extend_from_slice(&bytes);
            out.advance(bytes.len());
            Ok(true)
        }
        fn poll_writable(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn stream() -> (Arc<StreamQueue>, Arc<Taken>) {
        let req = Arc::new(ClientRequest { url: "/".into(), headers: vec![] });
        let q = StreamQueue::new(Uuid::new_v4(), req, 1 << 20, None);
        let sink = Arc::new(Taken::default());
        q.attach_sink(Arc::clone(&sink) as Arc<dyn Sink>);
        (q, sink)
    }

    #[tokio::test]
    async fn a_fanout_is_written_by_the_shards_in_order_and_each_stream_is_listed_once() {
        let writers = Arc::new(Writers::new(2));
        let streams: Vec<_> = (0..5).map(|_| stream()).collect();
        let mut fanout = writers.fanout(5);
        for frame in [&b"a"[..], b"b", b"c"] {
            for (q, _) in &streams {
                if q.push_event(Bytes::copy_from_slice(frame), Write::Shard).unwrap() == Queued::ForWriter {
                    fanout.add(q);
                }
            }
        }
        let listed: usize = fanout.lists.iter().map(Vec::len).sum();
        assert_eq!(listed, 5, "three publishes, one entry per stream");
        assert!(streams.iter().all(|(_, s)| s.0.lock().unwrap().is_empty()), "nothing written before the writers run");
        fanout.send();
        let tasks: Vec<_> = (0..writers.len())
            .map(|i| {
                let w = Arc::clone(&writers);
                tokio::spawn(async move { w.run(i, Default::default()).await })
            })
            .collect();
        for (_, sink) in &streams {
            while sink.0.lock().unwrap().is_empty() {
                tokio::task::yield_now().await;
            }
            assert_eq!(&sink.0.lock().unwrap()[..], b"3\r\nabc\r\n", "one chunk, in order");
        }
        for (q, _) in &streams {
            assert_eq!(q.push_event(Bytes::from_static(b"d"), Write::Shard).unwrap(), Queued::ForWriter);
        }
        for t in tasks {
            t.abort();
        }
    }
}
