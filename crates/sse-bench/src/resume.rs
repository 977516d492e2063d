//! Scenario `resume` (history on): how fast a stream that missed N events
//! gets them back when it reconnects with `Last-Event-ID`.
//!
//! Per repetition: open one stream and note the cursor it went live at (the
//! `id:` of `ready`); close it; publish N events to `broadcast` (in order,
//! each accepted before the next, or all confirmed by RabbitMQ); wait until
//! every gateway has them in its history (its `GET /internal/history`
//! position, when `--history-url` is given), so none is still busy reading
//! them; then reconnect with `Last-Event-ID: <cursor>` and time the request until
//! `ready`, checking that exactly the N events came before it, in publish
//! order, with increasing ids and no `gap`. Finally one live event is
//! published and must arrive next (no duplicate, no hole at the seam).
//!
//! With two URLs the stream opens on the first gateway and resumes on the
//! last (AMQP mode: cursors are valid on every instance).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use sse_wire::Frame;

use crate::client::{Dialer, Endpoint, HttpConn, SseStream};
use crate::fleet::{ClientStream, open_until_ready};
use crate::payload;
use crate::proc::{PhaseCpu, PhaseMeter, ProcessProbe, own_cpu_nanos};
use crate::publisher::Publisher;
use crate::report::Report;
use crate::stats::LatencySummary;
use crate::target::Target;

/// Options of `sse-bench resume`.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// Stream URL; `{i}` becomes the repetition's index (so each repetition
    /// is another request_id). Two comma-separated URLs: open on the first,
    /// resume on the second.
    #[arg(long)]
    pub url: String,
    /// Publish URL (`http://127.0.0.1:INTERNAL_PORT/internal/publish`), or
    /// `amqp://...` to publish to the `--exchange` with key `broadcast`.
    #[arg(long)]
    pub publish: String,
    /// Topic exchange for `amqp://` publishing (the gateways' `<prefix>.sse.events`).
    #[arg(long, default_value = "sse.events")]
    pub exchange: String,
    /// Internal base URLs (`http://127.0.0.1:INTERNAL_PORT`) of the
    /// gateways, comma-separated, in the order of `--url`. With RabbitMQ each
    /// instance reads the history stream at its own pace, so through their
    /// `GET /internal/history`: before reconnecting, wait until every one has
    /// the published events (the timed span is then the replay alone, not
    /// another instance still reading them); before each repetition, until
    /// all have read as far as the furthest (so the new stream's cursor is
    /// after the previous repetition's events).
    #[arg(long)]
    pub history_url: Option<String>,
    /// Events missed (published while the stream is away).
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Repetitions on the same gateway (each with a new request_id).
    #[arg(long, default_value_t = 1)]
    pub reps: u64,
    /// Server process to measure (repeat for several).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Deadline of each step (open, history catch-up, replay, live event), seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

/// Result of `resume`.
#[derive(Debug, Serialize)]
pub struct ResumeReport {
    pub scenario: &'static str,
    pub target: Target,
    pub events: u64,
    /// Every repetition checked out (count, order, ids, no gap, live event next).
    pub verified: bool,
    /// Request to `ready` over the repetitions.
    pub ready: LatencySummary,
    pub runs: Vec<ResumeRun>,
    pub server_pids: Vec<u32>,
}

/// One repetition.
#[derive(Debug, Serialize)]
pub struct ResumeRun {
    /// The cursor the first stream went live at (sent as `Last-Event-ID`).
    pub last_event_id: String,
    /// Publishing the N events: seconds, and events per second.
    pub publish_secs: f64,
    pub publish_rate: f64,
    /// Waiting for the gateways' histories to cover them (about 0 without `--history-url`).
    pub catch_up_secs: f64,
    /// From the reconnect (before the TCP connect) to the response head.
    pub head_ms: f64,
    /// ... to the first replayed event.
    pub first_event_ms: Option<f64>,
    /// ... to `ready` (every replayed event before it): the figure.
    pub ready_ms: f64,
    /// Replayed events per second (N / time to `ready`).
    pub replay_rate: f64,
    /// Benchmark events received before `ready`.
    pub replayed: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Benchmark events with a sequence number outside `0..N`.
    pub unexpected: u64,
    /// Every replayed event had an `id:` greater than the one before, and
    /// greater than the cursor resumed from.
    pub ids_increasing: bool,
    /// The `id:` of `ready` after the replay.
    pub ready_id: String,
    /// The data of a `gap` event, if one came (it must not).
    pub gap: Option<String>,
    /// One event published after `ready` arrived next, once.
    pub live_next: bool,
    /// Its publish-to-arrival time.
    pub live_ms: Option<f64>,
    /// CPU from the reconnect to `ready` (10 ms ticks: see the `_ms` figures).
    pub cpu: PhaseCpu,
    /// The server's CPU time over the same span, from per-thread `schedstat` (ms).
    pub server_cpu_ms: Option<f64>,
    /// The load generator's, likewise (it reads and parses the replay).
    pub load_generator_cpu_ms: f64,
}

impl ResumeRun {
    fn verified(&self, events: u64) -> bool {
        self.replayed == events
            && self.missing == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.unexpected == 0
            && self.ids_increasing
            && self.gap.is_none()
            && self.live_next
    }
}

impl Report for ResumeReport {
    fn summary(&self) -> String {
        let mut s = format!(
            "resume ({:?}): {} missed events, {} repetition(s), {}\nrequest to ready: {}",
            self.target,
            self.events,
            self.runs.len(),
            if self.verified { "all verified" } else { "NOT VERIFIED (see below)" },
            self.ready.line()
        );
        for (i, r) in self.runs.iter().enumerate() {
            s.push_str(&format!(
                "\n#{i}: from {}: head {:.1} ms, first event {}, ready {:.1} ms ({:.0} events/s); replayed {}, \
                 missing {}, duplicated {}, out of order {}, unexpected {}, ids increasing {}, gap {}, live event next {} ({}); \
                 published in {:.2} s ({:.0}/s), history caught up after {:.2} s\n\
                 CPU from the reconnect to ready: server {}, load generator {:.1} ms",
                r.last_event_id,
                r.head_ms,
                r.first_event_ms.map_or("-".to_owned(), |m| format!("{m:.1} ms")),
                r.ready_ms,
                r.replay_rate,
                r.replayed,
                r.missing,
                r.duplicated,
                r.out_of_order,
                r.unexpected,
                r.ids_increasing,
                r.gap.as_deref().unwrap_or("none"),
                r.live_next,
                r.live_ms.map_or("-".to_owned(), |m| format!("{m:.2} ms")),
                r.publish_secs,
                r.publish_rate,
                r.catch_up_secs,
                r.server_cpu_ms.map_or("-".to_owned(), |m| format!("{m:.1} ms")),
                r.load_generator_cpu_ms,
            ));
        }
        s
    }
}

/// Runs `resume`.
pub async fn run(args: ResumeArgs, dialer: std::sync::Arc<Dialer>) -> anyhow::Result<ResumeReport> {
    let endpoints: Vec<Endpoint> =
        args.url.split(',').map(|u| Endpoint::parse(u.trim())).collect::<anyhow::Result<_>>()?;
    let (Some(first), Some(last)) = (endpoints.first(), endpoints.last()) else { bail!("--url is empty") };
    let probe = ProcessProbe::new(args.server_pids.clone());
    let mut publisher = Publisher::connect(&args.publish, &args.exchange, Target::Ours).await?;
    let mut history: Vec<HttpConn> = match args.history_url.as_deref() {
        Some(urls) => {
            urls.split(',').map(|u| Endpoint::parse(u.trim()).map(HttpConn::new)).collect::<Result<_, _>>()?
        }
        None => Vec::new(),
    };
    let deadline = Duration::from_secs(args.timeout_secs);
    let mut runs = Vec::new();
    for rep in 0..args.reps {
        settle(&mut history, &dialer, Instant::now() + deadline).await?;
        let path = first.path_for(rep);
        let (stream, _) = tokio::time::timeout(deadline, open_until_ready(&dialer, first, &path, Target::Ours))
            .await
            .context("the first stream was not ready in time")??;
        let ClientStream::Http1(stream) = stream else { bail!("resume opens HTTP/1.1 streams only") };
        let cursor = stream.last_event_id().to_owned();
        let Some(from) = cursor_n(&cursor) else {
            bail!("`ready` carried no cursor ({cursor:?}): is HISTORY_SECONDS set on the gateway?")
        };
        drop(stream);

        // Sequence numbers of this repetition: 0..N missed, N the live one.
        let payloads: Vec<String> = (0..args.events).map(|s| payload::encode(s, payload::now_micros())).collect();
        let started = Instant::now();
        publisher.publish_all(&dialer, &payloads).await?;
        let publish_secs = started.elapsed().as_secs_f64();

        let started = Instant::now();
        for conn in &mut history {
            wait_for_position(conn, &dialer, from + args.events, started + deadline).await?;
        }
        let catch_up_secs = started.elapsed().as_secs_f64();

        let meter = PhaseMeter::start(&probe)?;
        let (server_ns, own_ns) = (probe.cpu_nanos()?, own_cpu_nanos()?);
        let header = format!("Last-Event-ID: {cursor}\r\n");
        let resume = async {
            let started = Instant::now();
            let mut stream = SseStream::open_with(&dialer, last, &last.path_for(rep), &header).await?;
            let head = started.elapsed();
            let replay = read_replay(&mut stream, from, started).await?;
            anyhow::Ok((stream, head, replay))
        };
        let (mut stream, head, replay) =
            tokio::time::timeout(deadline, resume).await.context("no `ready` in time after the reconnect")??;
        let cpu = meter.read()?;
        let server_cpu_ms = match (server_ns, probe.cpu_nanos()?) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e6),
            _ => None,
        };
        let load_generator_cpu_ms = own_cpu_nanos()?.saturating_sub(own_ns) as f64 / 1e6;

        let live = payload::encode(args.events, payload::now_micros());
        let sent = Instant::now();
        publisher.publish(&dialer, &live).await?;
        let live_seq = tokio::time::timeout(deadline, next_bench_event(&mut stream)).await.ok().transpose()?.flatten();
        let live_ms = live_seq.map(|_| sent.elapsed().as_secs_f64() * 1000.0);

        let check = check_order(&replay.seqs, args.events);
        let ready_ms = replay.ready.as_secs_f64() * 1000.0;
        runs.push(ResumeRun {
            last_event_id: cursor,
            publish_secs,
            publish_rate: args.events as f64 / publish_secs.max(1e-9),
            catch_up_secs,
            head_ms: head.as_secs_f64() * 1000.0,
            first_event_ms: replay.first_event.map(|d| d.as_secs_f64() * 1000.0),
            ready_ms,
            replay_rate: replay.seqs.len() as f64 / replay.ready.as_secs_f64().max(1e-9),
            replayed: replay.seqs.len() as u64,
            missing: check.missing,
            duplicated: check.duplicated,
            out_of_order: check.out_of_order,
            unexpected: check.unexpected,
            ids_increasing: replay.ids_increasing,
            ready_id: replay.ready_id,
            gap: replay.gap,
            live_next: live_seq == Some(args.events),
            live_ms,
            cpu,
            server_cpu_ms,
            load_generator_cpu_ms,
        });
    }
    let mut ready_us: Vec<u32> =
        runs.iter().map(|r| u32::try_from((r.ready_ms * 1000.0) as u64).unwrap_or(u32::MAX)).collect();
    Ok(ResumeReport {
        scenario: "resume",
        target: Target::Ours,
        events: args.events,
        verified: runs.iter().all(|r| r.verified(args.events)),
        ready: LatencySummary::from_micros(&mut ready_us),
        runs,
        server_pids: probe.pids().to_vec(),
    })
}

/// `n` of a gateway cursor `<epoch>-<n>`.
fn cursor_n(id: &str) -> Option<u64> {
    id.trim().split_once('-')?.1.parse().ok()
}

/// Waits until every gateway's history position is at least the furthest one's.
async fn settle(conns: &mut [HttpConn], dialer: &Dialer, deadline: Instant) -> anyhow::Result<()> {
    let mut furthest = 0;
    for conn in conns.iter_mut() {
        furthest = furthest.max(position(conn, dialer).await?);
    }
    for conn in conns.iter_mut() {
        wait_for_position(conn, dialer, furthest, deadline).await?;
    }
    Ok(())
}

/// The `n` of a gateway's `GET /internal/history` position.
async fn position(conn: &mut HttpConn, dialer: &Dialer) -> anyhow::Result<u64> {
    let resp = conn.request(dialer, "GET", "/internal/history", b"").await?;
    if resp.status != 200 {
        bail!("GET /internal/history answered HTTP {}", resp.status);
    }
    let body: serde_json::Value = serde_json::from_slice(&resp.body).context("GET /internal/history: not JSON")?;
    let id = body.get("id").and_then(serde_json::Value::as_str).unwrap_or_default();
    cursor_n(id).with_context(|| format!("GET /internal/history: no cursor in {body} (is HISTORY_SECONDS set?)"))
}

/// Polls `GET /internal/history` until its position is at least `n`.
async fn wait_for_position(conn: &mut HttpConn, dialer: &Dialer, n: u64, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let at = position(conn, dialer).await?;
        if at >= n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the gateway's history reached {at}, not {n}, in time");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What came before `ready` on the resumed stream.
struct Replay {
    seqs: Vec<u64>,
    first_event: Option<Duration>,
    ready: Duration,
    ready_id: String,
    ids_increasing: bool,
    gap: Option<String>,
}

/// Reads the resumed stream up to `ready`, recording every benchmark event.
async fn read_replay(stream: &mut SseStream, from: u64, started: Instant) -> anyhow::Result<Replay> {
    let mut replay = Replay {
        seqs: Vec::new(),
        first_event: None,
        ready: Duration::ZERO,
        ready_id: String::new(),
        ids_increasing: true,
        gap: None,
    };
    let mut last_id = from;
    loop {
        let Some(batch) = stream.read().await? else { bail!("the resumed stream ended before `ready`") };
        for frame in batch.frames {
            let Frame::Event(e) = frame else { continue };
            match e.event_type.as_str() {
                "message" => {
                    let Some((seq, _)) = payload::decode(&e.data) else { continue };
                    replay.first_event.get_or_insert_with(|| started.elapsed());
                    replay.seqs.push(seq);
                    match cursor_n(&e.last_event_id) {
                        Some(n) if n > last_id => last_id = n,
                        _ => replay.ids_increasing = false,
                    }
                }
                "gap" => replay.gap = Some(e.data),
                "ready" => {
                    replay.ready = started.elapsed();
                    replay.ready_id = e.last_event_id;
                    return Ok(replay);
                }
                "rejected" => bail!("rejected in-stream: {}", e.data),
                _ => {}
            }
        }
    }
}

/// The sequence number of the next benchmark event on `stream`; `None` if it ends.
async fn next_bench_event(stream: &mut SseStream) -> anyhow::Result<Option<u64>> {
    while let Some(batch) = stream.read().await? {
        for frame in batch.frames {
            if let Frame::Event(e) = frame
                && e.event_type == "message"
                && let Some((seq, _)) = payload::decode(&e.data)
            {
                return Ok(Some(seq));
            }
        }
    }
    Ok(None)
}

/// How far `seqs` is from exactly `0..n` in order.
#[derive(Debug, PartialEq, Eq)]
struct OrderCheck {
    missing: u64,
    duplicated: u64,
    out_of_order: u64,
    /// Outside `0..n` (e.g. a previous repetition's).
    unexpected: u64,
}

fn check_order(seqs: &[u64], n: u64) -> OrderCheck {
    let mut seen = vec![false; usize::try_from(n).unwrap_or(0)];
    let (mut distinct, mut duplicated, mut out_of_order, mut unexpected) = (0, 0, 0, 0);
    for (i, &s) in seqs.iter().enumerate() {
        if i > 0 && s < seqs[i - 1] {
            out_of_order += 1;
        }
        match usize::try_from(s).ok().and_then(|s| seen.get_mut(s)) {
            Some(true) => duplicated += 1,
            Some(slot) => {
                *slot = true;
                distinct += 1;
            }
            None => unexpected += 1,
        }
    }
    OrderCheck { missing: n - distinct, duplicated, out_of_order, unexpected }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_name_their_position() {
        assert_eq!(cursor_n("1a2b-42"), Some(42));
        assert_eq!(cursor_n("0-7"), Some(7));
        assert_eq!(cursor_n(""), None);
        assert_eq!(cursor_n("1700000000:0"), None);
    }

    #[test]
    fn order_check_counts_holes_repeats_and_reversals() {
        let check = |missing, duplicated, out_of_order, unexpected| OrderCheck {
            missing,
            duplicated,
            out_of_order,
            unexpected,
        };
        assert_eq!(check_order(&[0, 1, 2, 3], 4), check(0, 0, 0, 0));
        assert_eq!(check_order(&[0, 2, 1, 1], 4), check(1, 1, 1, 0));
        assert_eq!(check_order(&[9, 0], 2), check(1, 0, 1, 1));
        assert_eq!(check_order(&[], 3), check(3, 0, 0, 0));
    }
}
