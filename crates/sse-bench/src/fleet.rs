//! A fleet of N client streams, one task each: opening them with bounded
//! concurrency, deciding when each is open (per [`Target`]), and recording
//! every benchmark event it receives (latency, sequence checks).
//!
//! Owns the streams and their per-stream delivery records; scenarios only
//! read the shared [`Counters`] while running and the [`FleetResult`] after
//! [`Fleet::close`]. Latencies are kept per stream, or, for runs too long
//! for that, counted into one [`SharedLatencies`] the scenario empties as it
//! goes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use sse_wire::Frame;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{Batch, Dialer, Endpoint, SseStream};
use crate::h2::{H2Pool, H2Stream};
use crate::payload;
use crate::report::Progress;
use crate::stats::{AtomicHistogram, micros_between};
use crate::target::Target;

/// What to open.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Stream URL; `{i}` in it becomes the stream's index.
    /// Where streams open; stream `i` uses `endpoints[i % len]` (several
    /// gateway instances share the fleet round robin).
    pub endpoints: Vec<Endpoint>,
    pub target: Target,
    pub streams: usize,
    /// Streams being opened at once (connect + head + `ready`).
    pub connect_concurrency: usize,
    /// Per stream, from the start of its connect to its being open.
    pub ready_timeout: Duration,
    /// Check sequence numbers `0..n` (fan-out); `None` only counts events.
    pub expected_seqs: Option<usize>,
    /// Open the streams over these HTTP/2 connections instead of one
    /// HTTP/1.1 connection each.
    pub h2: Option<Arc<H2Pool>>,
    /// Count every stream's latencies here instead of keeping them per
    /// stream (`Delivery::latencies_us` then stays empty).
    pub shared_latencies: Option<Arc<SharedLatencies>>,
}

/// Latencies of every stream of a fleet, counted as they arrive (see `stats`).
#[derive(Debug, Default)]
pub struct SharedLatencies {
    /// Send time to the client having parsed the event.
    pub parsed: AtomicHistogram,
    /// Send time to the kernel's receive timestamp.
    pub arrived: AtomicHistogram,
}

/// One client stream: its own HTTP/1.1 connection, or a stream of an h2 one.
pub enum ClientStream {
    Http1(SseStream),
    Http2(H2Stream),
}

impl ClientStream {
    /// The frames completed by the next read; `None` once the stream ended.
    pub async fn read(&mut self) -> anyhow::Result<Option<Batch>> {
        match self {
            ClientStream::Http1(s) => s.read().await,
            ClientStream::Http2(s) => s.read().await,
        }
    }
}

/// Live totals over the fleet, for progress lines and waiting.
#[derive(Debug, Default)]
pub struct Counters {
    pub opened: AtomicU64,
    pub failed: AtomicU64,
    /// Open streams the server ended or cut before the fleet was closed.
    pub ended: AtomicU64,
    /// Benchmark events received, over all streams.
    pub events: AtomicU64,
}

impl Counters {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
    pub fn opened(&self) -> u64 {
        Self::get(&self.opened)
    }
    pub fn failed(&self) -> u64 {
        Self::get(&self.failed)
    }
    pub fn ended(&self) -> u64 {
        Self::get(&self.ended)
    }
    pub fn events(&self) -> u64 {
        Self::get(&self.events)
    }
}

/// Sequence bookkeeping for one stream: which of `0..len` arrived, how often,
/// and in which order.
#[derive(Debug)]
pub struct SeqTracker {
    seen: Vec<u64>,
    len: usize,
    highest: Option<u64>,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Sequence numbers outside `0..len`.
    pub unexpected: u64,
}

impl SeqTracker {
    fn new(len: usize) -> Self {
        Self { seen: vec![0; len.div_ceil(64)], len, highest: None, duplicates: 0, out_of_order: 0, unexpected: 0 }
    }

    fn see(&mut self, seq: u64) {
        let Some(i) = usize::try_from(seq).ok().filter(|&i| i < self.len) else {
            self.unexpected += 1;
            return;
        };
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        if self.highest.is_some_and(|h| seq < h) {
            self.out_of_order += 1;
        }
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
    }

    /// How many of the sequence numbers marked in `published` never arrived.
    pub fn missing(&self, published: &[bool]) -> u64 {
        published
            .iter()
            .enumerate()
            .filter(|&(i, &p)| p && i < self.len && self.seen[i / 64] & (1 << (i % 64)) == 0)
            .count() as u64
    }
}

/// Everything one stream received.
#[derive(Debug)]
pub struct Delivery {
    /// Benchmark events (with a readable payload).
    pub received: u64,
    /// `message` events whose data had no `seq`/`ts`.
    pub unparsable: u64,
    /// Send time to the client having parsed the event, microseconds.
    pub latencies_us: Vec<u32>,
    /// Send time to the event's bytes reaching this machine's TCP stack
    /// (kernel receive timestamp), microseconds: excludes the load
    /// generator's own scheduling delays.
    pub arrival_latencies_us: Vec<u32>,
    pub seqs: Option<SeqTracker>,
    /// Where the latencies go instead of the two vectors, if set.
    shared: Option<Arc<SharedLatencies>>,
}

impl Delivery {
    fn new(expected_seqs: Option<usize>, shared: Option<Arc<SharedLatencies>>) -> Self {
        let capacity = if shared.is_some() { 0 } else { expected_seqs.unwrap_or(0) };
        Self {
            received: 0,
            unparsable: 0,
            latencies_us: Vec::with_capacity(capacity),
            arrival_latencies_us: Vec::with_capacity(capacity),
            seqs: expected_seqs.map(SeqTracker::new),
            shared,
        }
    }

    /// Records the events of a read; returns how many were benchmark events.
    fn take(&mut self, batch: Batch) -> u64 {
        let now = payload::now_micros();
        let mut n = 0;
        for frame in batch.frames {
            if let Frame::Event(event) = frame
                && event.event_type == "message"
            {
                match payload::decode(&event.data) {
                    Some((seq, ts)) => {
                        self.received += 1;
                        n += 1;
                        let parsed = micros_between(ts, now);
                        let arrived = batch.arrived_us.map(|at| micros_between(ts, at));
                        match &self.shared {
                            Some(shared) => {
                                shared.parsed.record(parsed);
                                if let Some(a) = arrived {
                                    shared.arrived.record(a);
                                }
                            }
                            None => {
                                self.latencies_us.push(parsed);
                                self.arrival_latencies_us.extend(arrived);
                            }
                        }
                        if let Some(seqs) = &mut self.seqs {
                            seqs.see(seq);
                        }
                    }
                    None => self.unparsable += 1,
                }
            }
        }
        n
    }
}

/// The fleet after it was closed.
#[derive(Debug)]
pub struct FleetResult {
    pub opened: u64,
    pub failed: u64,
    pub ended_early: u64,
    /// Failure and early-end messages with their counts.
    pub errors: BTreeMap<String, u64>,
    /// One per stream that opened.
    pub deliveries: Vec<Delivery>,
}

impl FleetResult {
    /// Every stream's latency samples in one vector each: (parsed, arrived).
    pub fn take_latencies(&mut self) -> (Vec<u32>, Vec<u32>) {
        let total = self.deliveries.iter().map(|d| d.latencies_us.len()).sum();
        let (mut parsed, mut arrived) = (Vec::with_capacity(total), Vec::with_capacity(total));
        for d in &mut self.deliveries {
            parsed.append(&mut d.latencies_us);
            arrived.append(&mut d.arrival_latencies_us);
        }
        (parsed, arrived)
    }
}

struct StreamOutcome {
    opened: bool,
    ended_early: bool,
    error: Option<String>,
    delivery: Delivery,
}

struct Shared {
    spec: FleetSpec,
    dialer: Arc<Dialer>,
    gate: Semaphore,
    counters: Arc<Counters>,
    cancel: CancellationToken,
}

/// N running client streams.
pub struct Fleet {
    shared: Arc<Shared>,
    tasks: JoinSet<StreamOutcome>,
}

impl Fleet {
    /// Starts opening every stream; returns at once.
    pub fn launch(spec: FleetSpec, dialer: Arc<Dialer>) -> Fleet {
        let shared = Arc::new(Shared {
            gate: Semaphore::new(spec.connect_concurrency.max(1)),
            spec,
            dialer,
            counters: Arc::default(),
            cancel: CancellationToken::new(),
        });
        let mut tasks = JoinSet::new();
        for i in 0..shared.spec.streams as u64 {
            tasks.spawn(run_stream(i, Arc::clone(&shared)));
        }
        Fleet { shared, tasks }
    }

    /// The live counters.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.shared.counters)
    }

    /// Waits until every stream is open or failed; returns how long it took.
    pub async fn wait_open(&self) -> Duration {
        let started = Instant::now();
        let total = self.shared.spec.streams as u64;
        let c = self.counters();
        let _progress =
            Progress::start("open", move || format!("{} open, {} failed of {total}", c.opened(), c.failed()));
        let c = &self.shared.counters;
        while c.opened() + c.failed() < total {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }

    /// Waits until `expected` events arrived in total, or `deadline`; true if all did.
    pub async fn wait_events(&self, expected: u64, deadline: Instant) -> bool {
        loop {
            if self.shared.counters.events() >= expected {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Closes every stream and collects what each received.
    pub async fn close(mut self) -> FleetResult {
        self.shared.cancel.cancel();
        let mut result = FleetResult {
            opened: 0,
            failed: 0,
            ended_early: 0,
            errors: BTreeMap::new(),
            deliveries: Vec::with_capacity(self.shared.spec.streams),
        };
        while let Some(joined) = self.tasks.join_next().await {
            let outcome = match joined {
                Ok(outcome) => outcome,
                Err(e) => {
                    result.failed += 1;
                    *result.errors.entry(format!("stream task failed: {e}")).or_default() += 1;
                    continue;
                }
            };
            if let Some(error) = outcome.error {
                *result.errors.entry(error).or_default() += 1;
            }
            if outcome.opened {
                result.opened += 1;
                result.ended_early += u64::from(outcome.ended_early);
                result.deliveries.push(outcome.delivery);
            } else {
                result.failed += 1;
            }
        }
        result
    }
}

async fn run_stream(i: u64, shared: Arc<Shared>) -> StreamOutcome {
    let mut outcome = StreamOutcome {
        opened: false,
        ended_early: false,
        error: None,
        delivery: Delivery::new(shared.spec.expected_seqs, shared.spec.shared_latencies.clone()),
    };
    let opening = async {
        let _permit = shared.gate.acquire().await;
        tokio::time::timeout(shared.spec.ready_timeout, open_ready(&shared, i)).await
    };
    let opened = tokio::select! {
        _ = shared.cancel.cancelled() => {
            outcome.error = Some("closed while opening".to_owned());
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            return outcome;
        }
        opened = opening => opened,
    };
    let (mut stream, first) = match opened {
        Ok(Ok(open)) => open,
        Ok(Err(e)) => {
            outcome.error = Some(format!("open: {e:#}"));
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            return outcome;
        }
        Err(_) => {
            outcome.error = Some(format!("open: not open within {:?}", shared.spec.ready_timeout));
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            return outcome;
        }
    };
    outcome.opened = true;
    shared.counters.opened.fetch_add(1, Ordering::Relaxed);
    let n = outcome.delivery.take(first);
    shared.counters.events.fetch_add(n, Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            read = stream.read() => match read {
                Ok(Some(batch)) => {
                    let n = outcome.delivery.take(batch);
                    if n > 0 {
                        shared.counters.events.fetch_add(n, Ordering::Relaxed);
                    }
                }
                Ok(None) => {
                    outcome.ended_early = true;
                    outcome.error = Some("stream ended by the server".to_owned());
                    break;
                }
                Err(e) => {
                    outcome.ended_early = true;
                    outcome.error = Some(format!("stream broke: {e:#}"));
                    break;
                }
            }
        }
    }
    if outcome.ended_early {
        shared.counters.ended.fetch_add(1, Ordering::Relaxed);
    }
    outcome
}

/// Opens stream `i` and waits until it is live; returns it with the frames
/// that came after the `ready` event in the same read.
async fn open_ready(shared: &Shared, i: u64) -> anyhow::Result<(ClientStream, Batch)> {
    let endpoints = &shared.spec.endpoints;
    let endpoint = &endpoints[(i as usize) % endpoints.len().max(1)];
    match &shared.spec.h2 {
        Some(pool) => {
            let stream = ClientStream::Http2(pool.open(&endpoint.path_for(i)).await?);
            wait_ready(stream, shared.spec.target).await
        }
        None => open_until_ready(&shared.dialer, endpoint, &endpoint.path_for(i), shared.spec.target).await,
    }
}

/// Opens one stream at `path` and waits until it is live (see [`Target`]);
/// returns it with what followed `ready` in the same read.
pub async fn open_until_ready(
    dialer: &Dialer,
    endpoint: &Endpoint,
    path: &str,
    target: Target,
) -> anyhow::Result<(ClientStream, Batch)> {
    wait_ready(ClientStream::Http1(SseStream::open(dialer, endpoint, path).await?), target).await
}

/// Waits until an opened stream is live (see [`Target`]).
async fn wait_ready(mut stream: ClientStream, target: Target) -> anyhow::Result<(ClientStream, Batch)> {
    if target.open_at_head() {
        return Ok((stream, Batch { frames: Vec::new(), arrived_us: None }));
    }
    loop {
        let Some(mut batch) = stream.read().await? else { bail!("stream ended before `ready`") };
        for (pos, frame) in batch.frames.iter().enumerate() {
            if let Frame::Event(e) = frame {
                match e.event_type.as_str() {
                    "ready" => {
                        let rest = batch.frames.split_off(pos + 1);
                        return Ok((stream, Batch { frames: rest, arrived_us: batch.arrived_us }));
                    }
                    "rejected" => bail!("rejected in-stream: {}", e.data),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_duplicates_out_of_order_and_missing() {
        let mut t = SeqTracker::new(100);
        for seq in [0, 1, 3, 2, 3, 5, 200] {
            t.see(seq);
        }
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.unexpected, 1);
        let mut published = vec![true; 7];
        published[6] = false;
        assert_eq!(t.missing(&published), 1, "only 4 is missing: 6 was never published");
    }

    #[test]
    fn delivery_records_message_events_only() {
        let mut d = Delivery::new(Some(10), None);
        let event = |event_type: &str, data: &str| {
            Frame::Event(sse_wire::ParsedEvent {
                event_type: event_type.to_owned(),
                data: data.to_owned(),
                last_event_id: String::new(),
            })
        };
        let frames = vec![
            event("message", &payload::encode(1, 0)),
            event("ready", ""),
            Frame::Comment("heartbeat".to_owned()),
            event("message", "not a payload"),
        ];
        assert_eq!(d.take(Batch { frames, arrived_us: Some(1500) }), 1);
        assert_eq!((d.received, d.unparsable, d.latencies_us.len()), (1, 1, 1));
        assert_eq!(d.arrival_latencies_us, vec![1500]);
    }

    #[test]
    fn shared_latencies_are_counted_instead_of_kept() {
        let shared = Arc::new(SharedLatencies::default());
        let mut d = Delivery::new(Some(10), Some(Arc::clone(&shared)));
        let frames = vec![Frame::Event(sse_wire::ParsedEvent {
            event_type: "message".to_owned(),
            data: payload::encode(2, 0),
            last_event_id: String::new(),
        })];
        assert_eq!(d.take(Batch { frames, arrived_us: Some(1500) }), 1);
        assert!(d.latencies_us.is_empty() && d.arrival_latencies_us.is_empty());
        assert_eq!(shared.parsed.take().summary().count, 1);
        assert_eq!(shared.arrived.take().summary().max_ms, 1.5);
    }
}
