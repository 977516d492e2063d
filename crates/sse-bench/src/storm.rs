//! Scenario `storm` (our gateway only): N clients that behave like the
//! browser's `EventSource` connect at once through a gateway in front of a
//! slow backend (`sse-bench backend --connects-per-sec R`); once all are in,
//! the gateway is killed (`kill -9`) and restarted on the same port, and the
//! clients come back on their own, as browsers would.
//!
//! Each client: an answer other than 200 `text/event-stream` is fatal (the
//! browser gives up for good; counted, the client stops); a connection that
//! fails, or a stream that ends before or after `ready`, is tried again after
//! the reconnection time, which the latest `retry:` sets (3 s before any).
//!
//! Measured for the first opening and for the recovery after the kill: the
//! time until every client is at `ready` (recovery: from the first broken
//! stream), each client's own wait, fatal answers (must be 0), `retry:`
//! hints followed (streams that ended before `ready`), failed connections
//! (the gateway was down), attempts, and from the backend the most callbacks
//! it held at once and the connect callbacks it heard.
//!
//! The kill and restart are not done here: once every client is ready this
//! prints `storm: all N streams ready` on stderr and waits for the streams
//! to break (`scripts/bench --faults` does the rest).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sse_wire::Frame;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backend::{BackendStats, fetch_stats, reset_peak};
use crate::client::{Dialer, Endpoint, Opening, SseStream};
use crate::proc::{PhaseCpu, PhaseMeter, ProcessProbe};
use crate::report::{Progress, Report};
use crate::stats::{LatencySummary, micros_between};

/// The reconnection time before any `retry:` (what browsers use).
const DEFAULT_RETRY: Duration = Duration::from_millis(3000);

/// Options of `sse-bench storm`.
#[derive(Debug, clap::Args)]
pub struct StormArgs {
    /// Stream URL; `{i}` becomes the client's index.
    #[arg(long)]
    pub url: String,
    /// Base URL of the bench backend (`GET /stats`, `POST /stats/reset-peak`).
    #[arg(long)]
    pub backend_url: String,
    #[arg(long, default_value_t = 19_000)]
    pub streams: usize,
    /// The backend's `--connects-per-sec` (context in the report only).
    #[arg(long)]
    pub backend_connects_per_sec: Option<f64>,
    /// Seconds for every client to be ready the first time.
    #[arg(long, default_value_t = 900)]
    pub open_timeout_secs: u64,
    /// Seconds to wait for the gateway to go away once all are ready.
    #[arg(long, default_value_t = 300)]
    pub kill_timeout_secs: u64,
    /// Seconds, from the first broken stream, for every client to be back.
    #[arg(long, default_value_t = 900)]
    pub recover_timeout_secs: u64,
}

/// One phase: the first opening, or the recovery after the kill.
#[derive(Debug, Serialize)]
pub struct StormPhase {
    /// Every client (not lost to a fatal answer) reached `ready`.
    pub all_ready: bool,
    /// Clients at `ready` at the end of the phase.
    pub ready: u64,
    /// From the phase's start (launch, or the first broken stream) to the last client at `ready`.
    pub secs_until_all_ready: f64,
    /// Each client's wait: from the phase's start (opening) or from its own
    /// broken stream (recovery) to its `ready`.
    pub wait: LatencySummary,
    /// Answers `EventSource` gives up on.
    pub fatal: u64,
    /// 200 streams that ended before `ready` (a `retry:` hint followed).
    pub retry_hints: u64,
    /// Connections that failed or closed before a response head.
    pub failed_connections: u64,
    pub attempts: u64,
    /// The most callbacks the backend held at once in this phase.
    pub backend_peak_in_flight: u64,
    /// Connect callbacks the backend heard in this phase.
    pub backend_connects: u64,
    /// This process and the machine over the phase (the gateway's PID
    /// changes at the restart, so there is no server figure).
    pub cpu: PhaseCpu,
}

/// Result of `storm`.
#[derive(Debug, Serialize)]
pub struct StormReport {
    pub scenario: &'static str,
    pub streams: usize,
    pub backend_connects_per_sec: Option<f64>,
    /// `streams / backend_connects_per_sec`: no gateway can be faster.
    pub backend_bound_secs: Option<f64>,
    pub open: StormPhase,
    /// `None` if the gateway never went away.
    pub recovery: Option<StormPhase>,
    /// Fatal answers over the whole run, by status and content type.
    pub fatal_answers: BTreeMap<String, u64>,
    pub backend_after: BackendStats,
}

impl Report for StormReport {
    fn summary(&self) -> String {
        let phase = |name: &str, p: &StormPhase| {
            format!(
                "{name}: {} of {} ready (all: {}) after {:.1} s; per client wait {}\n  \
                 fatal {}, retry hints {}, failed connections {}, attempts {}; backend: peak {} callbacks at once, {} connects\n  \
                 load generator CPU {:.1} % of one core, whole machine {:.1} %",
                p.ready,
                self.streams,
                p.all_ready,
                p.secs_until_all_ready,
                p.wait.line(),
                p.fatal,
                p.retry_hints,
                p.failed_connections,
                p.attempts,
                p.backend_peak_in_flight,
                p.backend_connects,
                p.cpu.load_generator.percent_of_one_core,
                p.cpu.machine.percent_of_one_core,
            )
        };
        let mut s = format!(
            "storm: {} clients, backend {} connects/s (at best {} s for all)\n{}",
            self.streams,
            self.backend_connects_per_sec.map_or("?".to_owned(), |r| format!("{r}")),
            self.backend_bound_secs.map_or("?".to_owned(), |b| format!("{b:.1}")),
            phase("opening", &self.open)
        );
        match &self.recovery {
            Some(r) => s.push_str(&format!("\n{}", phase("after kill -9 and restart", r))),
            None => s.push_str("\nthe gateway never went away: no recovery measured"),
        }
        for (e, n) in &self.fatal_answers {
            s.push_str(&format!("\n  {n} × fatal {e}"));
        }
        s
    }
}

/// Live totals over every client.
#[derive(Default)]
struct Counters {
    ready_now: AtomicU64,
    /// Clients back at `ready` after their stream broke.
    recovered: AtomicU64,
    fatal: AtomicU64,
    retry_hints: AtomicU64,
    failed_connections: AtomicU64,
    attempts: AtomicU64,
    /// Microseconds since the launch of the first broken stream (`u64::MAX`: none yet).
    first_break_us: AtomicU64,
    fatal_answers: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Counts now, to subtract at the end of a phase.
    fn snapshot(&self) -> [u64; 4] {
        [
            Self::get(&self.fatal),
            Self::get(&self.retry_hints),
            Self::get(&self.failed_connections),
            Self::get(&self.attempts),
        ]
    }
}

/// What one client went through, in microseconds since the launch.
#[derive(Default, Clone, Copy)]
struct ClientRecord {
    first_ready_us: Option<u64>,
    lost_us: Option<u64>,
    back_us: Option<u64>,
}

struct Shared {
    endpoint: Endpoint,
    dialer: Arc<Dialer>,
    launched: Instant,
    counters: Counters,
    cancel: CancellationToken,
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.launched.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// Runs `storm`.
pub async fn run(args: StormArgs, dialer: Arc<Dialer>) -> anyhow::Result<StormReport> {
    let backend = Endpoint::parse(&args.backend_url)?;
    let n = args.streams as u64;
    let shared = Arc::new(Shared {
        endpoint: Endpoint::parse(&args.url)?,
        dialer: Arc::clone(&dialer),
        launched: Instant::now(),
        counters: Counters { first_break_us: AtomicU64::new(u64::MAX), ..Counters::default() },
        cancel: CancellationToken::new(),
    });
    let no_server = ProcessProbe::default();
    let before = fetch_stats(&dialer, &backend).await?;
    reset_peak(&dialer, &backend).await?;

    // Phase 1: everyone connects at once.
    let meter = PhaseMeter::start(&no_server)?;
    let mut clients = JoinSet::new();
    for i in 0..args.streams {
        clients.spawn(client(i as u64, Arc::clone(&shared)));
    }
    let c = &shared.counters;
    let all_open = {
        let s = Arc::clone(&shared);
        let _progress = Progress::start("storm open", move || progress(&s.counters, n));
        wait_until(Duration::from_secs(args.open_timeout_secs), || {
            Counters::get(&c.ready_now) + Counters::get(&c.fatal) >= n
        })
        .await
    };
    let open_cpu = meter.read()?;
    let open_counts = c.snapshot();
    let open_stats = fetch_stats(&dialer, &backend).await?;
    reset_peak(&dialer, &backend).await?;
    let all_open = all_open && Counters::get(&c.fatal) == 0;
    if !all_open {
        shared.cancel.cancel();
        let records = collect(clients).await;
        let open = phase_open(&records, open_counts, [0; 4], &before, &open_stats, open_cpu);
        return Ok(report(&args, &shared, open, None, open_stats));
    }
    eprintln!("storm: all {n} streams ready; waiting for their gateway to go away");

    // Phase 2: the gateway goes away (kill -9) and comes back; everyone returns.
    let broke =
        wait_until(Duration::from_secs(args.kill_timeout_secs), || Counters::get(&c.first_break_us) != u64::MAX).await;
    let recovery = if broke {
        let meter = PhaseMeter::start(&no_server)?;
        {
            let s = Arc::clone(&shared);
            let _progress = Progress::start("storm recovery", move || progress(&s.counters, n));
            // No client was lost at the opening, so each is either back or lost now.
            wait_until(Duration::from_secs(args.recover_timeout_secs), || {
                Counters::get(&c.recovered) + Counters::get(&c.fatal) >= n
            })
            .await;
        }
        let cpu = meter.read()?;
        let end_counts = c.snapshot();
        let stats = fetch_stats(&dialer, &backend).await?;
        Some((cpu, end_counts, stats))
    } else {
        None
    };
    shared.cancel.cancel();
    let records = collect(clients).await;
    let open = phase_open(&records, open_counts, [0; 4], &before, &open_stats, open_cpu);
    let (recovery, after) = match recovery {
        Some((cpu, end_counts, stats)) => {
            let phase = phase_recovery(&shared, &records, end_counts, open_counts, &open_stats, &stats, cpu);
            (Some(phase), stats)
        }
        None => (None, fetch_stats(&dialer, &backend).await?),
    };
    Ok(report(&args, &shared, open, recovery, after))
}

fn report(
    args: &StormArgs,
    shared: &Shared,
    open: StormPhase,
    recovery: Option<StormPhase>,
    after: BackendStats,
) -> StormReport {
    StormReport {
        scenario: "storm",
        streams: args.streams,
        backend_connects_per_sec: args.backend_connects_per_sec,
        backend_bound_secs: args.backend_connects_per_sec.filter(|r| *r > 0.0).map(|r| args.streams as f64 / r),
        open,
        recovery,
        fatal_answers: shared.counters.fatal_answers.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        backend_after: after,
    }
}

fn progress(c: &Counters, n: u64) -> String {
    format!(
        "{} of {n} ready ({} back after a break), {} fatal, {} retry hints, {} failed connections",
        Counters::get(&c.ready_now),
        Counters::get(&c.recovered),
        Counters::get(&c.fatal),
        Counters::get(&c.retry_hints),
        Counters::get(&c.failed_connections)
    )
}

/// Polls `done` every 50 ms until it holds (true) or `limit` passes (false).
async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

async fn collect(mut clients: JoinSet<ClientRecord>) -> Vec<ClientRecord> {
    let mut records = Vec::with_capacity(clients.len());
    while let Some(joined) = clients.join_next().await {
        records.push(joined.unwrap_or_default());
    }
    records
}

fn phase_open(
    records: &[ClientRecord],
    end: [u64; 4],
    start: [u64; 4],
    before: &BackendStats,
    stats: &BackendStats,
    cpu: PhaseCpu,
) -> StormPhase {
    let mut waits: Vec<u32> = records.iter().filter_map(|r| r.first_ready_us).map(|t| micros_between(0, t)).collect();
    let last = records.iter().filter_map(|r| r.first_ready_us).max().unwrap_or(0);
    phase(&mut waits, 0, last, records.len() as u64, end, start, before, stats, cpu)
}

fn phase_recovery(
    shared: &Shared,
    records: &[ClientRecord],
    end: [u64; 4],
    start: [u64; 4],
    before: &BackendStats,
    stats: &BackendStats,
    cpu: PhaseCpu,
) -> StormPhase {
    let mut waits: Vec<u32> = records.iter().filter_map(|r| Some(micros_between(r.lost_us?, r.back_us?))).collect();
    let first_break = Counters::get(&shared.counters.first_break_us);
    let last = records.iter().filter_map(|r| r.back_us).max().unwrap_or(first_break);
    let broke = records.iter().filter(|r| r.lost_us.is_some()).count() as u64;
    phase(&mut waits, first_break, last, broke, end, start, before, stats, cpu)
}

#[allow(clippy::too_many_arguments)]
fn phase(
    waits: &mut [u32],
    from_us: u64,
    last_us: u64,
    expected: u64,
    end: [u64; 4],
    start: [u64; 4],
    before: &BackendStats,
    stats: &BackendStats,
    cpu: PhaseCpu,
) -> StormPhase {
    let ready = waits.len() as u64;
    let fatal = end[0] - start[0];
    StormPhase {
        all_ready: ready + fatal >= expected && fatal == 0,
        ready,
        secs_until_all_ready: last_us.saturating_sub(from_us) as f64 / 1e6,
        wait: LatencySummary::from_micros(waits),
        fatal,
        retry_hints: end[1] - start[1],
        failed_connections: end[2] - start[2],
        attempts: end[3] - start[3],
        backend_peak_in_flight: stats.peak_in_flight,
        backend_connects: stats.connects.saturating_sub(before.connects),
        cpu,
    }
}

/// One `EventSource`-like client until the scenario ends or an answer is fatal.
async fn client(i: u64, shared: Arc<Shared>) -> ClientRecord {
    let path = shared.endpoint.path_for(i);
    let c = &shared.counters;
    let mut record = ClientRecord::default();
    let mut retry = DEFAULT_RETRY;
    loop {
        c.attempts.fetch_add(1, Ordering::Relaxed);
        let opening = tokio::select! {
            () = shared.cancel.cancelled() => return record,
            o = SseStream::try_open(&shared.dialer, &shared.endpoint, &path) => o,
        };
        match opening {
            Err(_) => {
                c.failed_connections.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Opening::Refused(head)) => {
                fatal(c, head.status, head.event_stream);
                return record;
            }
            Ok(Opening::Stream(stream)) if !stream.is_event_stream() => {
                fatal(c, 200, false);
                return record;
            }
            Ok(Opening::Stream(stream)) => {
                if !follow(*stream, &shared, &mut record, &mut retry).await {
                    return record;
                }
            }
        }
        tokio::select! {
            () = shared.cancel.cancelled() => return record,
            () = tokio::time::sleep(retry) => {}
        }
    }
}

fn fatal(c: &Counters, status: u16, event_stream: bool) {
    c.fatal.fetch_add(1, Ordering::Relaxed);
    let what = if event_stream { format!("HTTP {status}") } else { format!("HTTP {status}, not text/event-stream") };
    *c.fatal_answers.lock().unwrap_or_else(|p| p.into_inner()).entry(what).or_default() += 1;
}

/// Reads a 200 stream until it ends; false if the scenario ended meanwhile.
async fn follow(mut stream: SseStream, shared: &Shared, record: &mut ClientRecord, retry: &mut Duration) -> bool {
    let c = &shared.counters;
    let mut ready = false;
    loop {
        let read = tokio::select! {
            () = shared.cancel.cancelled() => return false,
            r = stream.read() => r,
        };
        let Ok(Some(batch)) = read else { break };
        for frame in batch.frames {
            match frame {
                Frame::Retry(ms) => *retry = Duration::from_millis(ms),
                Frame::Event(e) if e.event_type == "ready" && !ready => {
                    ready = true;
                    c.ready_now.fetch_add(1, Ordering::Relaxed);
                    let now = shared.now_us();
                    if record.first_ready_us.is_none() {
                        record.first_ready_us = Some(now);
                    } else if record.lost_us.is_some() && record.back_us.is_none() {
                        record.back_us = Some(now);
                        c.recovered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
        }
    }
    if ready {
        c.ready_now.fetch_sub(1, Ordering::Relaxed);
        if record.lost_us.is_none() {
            let now = shared.now_us();
            record.lost_us = Some(now);
            c.first_break_us.fetch_min(now, Ordering::Relaxed);
        }
    } else {
        c.retry_hints.fetch_add(1, Ordering::Relaxed);
    }
    true
}
