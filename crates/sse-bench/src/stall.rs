//! Scenario `stall`: H healthy streams receive a steady broadcast rate next
//! to S streams whose clients send their request and then never read (not
//! even the response head), with the kernel's default buffers. Run it with
//! `--stalled 0` too: the same healthy load with nothing stalled is the
//! baseline the healthy latency is compared with.
//!
//! Measured: the healthy streams' delivery latency (overall and per 10 s of
//! the publish sequence) and losses; sampled every second, the server's RSS,
//! the kernel's TCP memory (`/proc/net/sockstat`: the whole machine, so both
//! ends of every loopback connection), the bytes queued on the server's side
//! of its port (`/proc/net/tcp`), the stalled connections the server has
//! closed (seen on the client socket: reset or end), and with `--metrics-url`
//! (our gateway) its own count of streams closed as stalled or overflowed.
//!
//! A stalled client whose connection the server closed is dropped at the next
//! sample: a real client's unread bytes sit in its own machine's memory, not
//! the server's, and the load generator should not stand in for them.
//!
//! Publishing stops at the end of `--duration-secs` even if the server
//! answered too slowly to take every broadcast by then (Nchan answers a
//! publish only after writing it to every subscriber), and early if the
//! server's RSS passes `--max-server-rss-mb` (a server that keeps a copy of
//! every event for every stalled subscriber would otherwise take the
//! machine's memory); both are in the report.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::client::{Dialer, Endpoint, HttpConn};
use crate::fleet::{Counters, Fleet, FleetResult, FleetSpec};
use crate::payload;
use crate::proc::{PhaseCpu, PhaseMeter, PortQueues, ProcessProbe, SockStat, port_queues, sockstat};
use crate::publisher::accepted;
use crate::report::{Progress, Report};
use crate::stats::LatencySummary;
use crate::target::Target;

/// Width of the latency windows, in seconds of the publish sequence.
const WINDOW_SECS: f64 = 10.0;
/// `tcpi_state` of an established connection.
const TCP_ESTABLISHED: u8 = 1;

/// Options of `sse-bench stall`.
#[derive(Debug, clap::Args)]
pub struct StallArgs {
    /// Stream URL; `{i}` becomes the stream's index (healthy first, then stalled).
    #[arg(long)]
    pub url: String,
    /// Publish URL (ours: `.../internal/publish`; nchan: `.../pub/broadcast`).
    #[arg(long)]
    pub publish: String,
    #[arg(long, value_enum, default_value = "ours")]
    pub target: Target,
    /// Streams that read everything.
    #[arg(long, default_value_t = 1500)]
    pub healthy: usize,
    /// Streams that never read.
    #[arg(long, default_value_t = 5000)]
    pub stalled: usize,
    /// Broadcasts per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 90)]
    pub duration_secs: u64,
    /// Padding in each event's payload, bytes.
    #[arg(long, default_value_t = 2048)]
    pub pad_bytes: usize,
    /// Server process to measure (repeat for several).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Our gateway's internal listener (`http://IP:PORT`), for its `/metrics`.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Seconds to wait after the last publish for deliveries still in flight.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Stop publishing once the server's RSS passes this many MiB.
    #[arg(long, default_value_t = 4096)]
    pub max_server_rss_mb: u64,
}

/// One reading, every second from the first publish.
#[derive(Debug, Clone, Serialize)]
pub struct StallSample {
    /// Seconds since the first publish.
    pub t_secs: f64,
    pub server_rss_kb: Option<u64>,
    pub sockstat: SockStat,
    /// Queues of the server port's connections, by side.
    pub queues: PortQueues,
    /// Stalled connections the server closed so far (seen on the client socket).
    pub stalled_closed: u64,
    /// Our gateway: streams it closed as stalled (`STREAM_STALL_SECONDS`).
    pub gateway_closed_stalled: Option<u64>,
    /// Our gateway: streams it closed for a full queue (`STREAM_QUEUE_BYTES`).
    pub gateway_closed_overflow: Option<u64>,
    /// Healthy events received so far.
    pub healthy_events: u64,
}

/// Healthy latency of the events published in one window.
#[derive(Debug, Serialize)]
pub struct LatencyWindow {
    /// Seconds of the publish sequence, from..to.
    pub from_secs: f64,
    pub to_secs: f64,
    pub latency: LatencySummary,
}

/// Result of `stall`.
#[derive(Debug, Serialize)]
pub struct StallReport {
    pub scenario: &'static str,
    pub target: Target,
    pub healthy_requested: usize,
    pub healthy_opened: u64,
    pub healthy_failed: u64,
    /// Healthy streams the server ended or cut: must be 0.
    pub healthy_lost: u64,
    pub stalled_requested: usize,
    /// Stalled connections whose server answered (bytes waiting unread) before publishing.
    pub stalled_answered: u64,
    /// Stalled connections the server closed by the end.
    pub stalled_closed: u64,
    /// Seconds from the first publish to the sample that saw the last of them closed.
    pub stalled_all_closed_secs: Option<f64>,
    pub rate_requested: f64,
    /// Bytes of one event's data.
    pub event_data_bytes: usize,
    pub publishes_ok: u64,
    pub publishes_failed: u64,
    /// Broadcasts never sent: the duration was over, or publishing stopped.
    pub publishes_not_sent: u64,
    /// Why publishing stopped early (the server's RSS), if it did.
    pub stopped_early: Option<String>,
    pub publish_rate_achieved: f64,
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    pub missing: u64,
    pub out_of_order: u64,
    pub drained: bool,
    /// Healthy streams: publish timestamp to the client having parsed the event.
    pub latency: LatencySummary,
    /// Healthy streams: publish timestamp to the kernel's receive timestamp.
    pub latency_arrival: LatencySummary,
    /// `latency` per 10 s of the publish sequence (only when nothing was
    /// missing or out of order, which makes an event's index its sequence number).
    pub latency_windows: Option<Vec<LatencyWindow>>,
    pub server_rss_kb_before_stalled: Option<u64>,
    pub server_rss_kb_before_publish: Option<u64>,
    pub server_rss_kb_peak: Option<u64>,
    pub server_rss_kb_end: Option<u64>,
    pub sockstat_before_stalled: SockStat,
    pub sockstat_before_publish: SockStat,
    pub tcp_mem_pages_peak: u64,
    pub server_send_bytes_peak: u64,
    /// Over the publish phase.
    pub cpu: PhaseCpu,
    pub samples: Vec<StallSample>,
    pub server_pids: Vec<u32>,
    pub errors: BTreeMap<String, u64>,
}

impl Report for StallReport {
    fn summary(&self) -> String {
        let kb = |v: Option<u64>| v.map_or("-".to_owned(), |k| format!("{k}"));
        let mut s = format!(
            "stall ({:?}): {} healthy open ({} failed, {} lost), {} stalled answered, {} closed by the server \
             (all by {} s)\n\
             publishes: {} ok, {} failed, {} not sent{}, {:.1}/s (asked {}/s), {} bytes of data each; deliveries {} of {} \
             (missing {}, out of order {})\n\
             healthy latency: {}\nhealthy arrival: {}\n\
             server RSS KiB: {} before the stalled, {} before publishing, {} peak, {} at the end\n\
             TCP memory pages: {} before the stalled, {} before publishing, {} peak; server send queues peak {} bytes",
            self.target,
            self.healthy_opened,
            self.healthy_failed,
            self.healthy_lost,
            self.stalled_answered,
            self.stalled_closed,
            self.stalled_all_closed_secs.map_or("-".to_owned(), |t| format!("{t:.0}")),
            self.publishes_ok,
            self.publishes_failed,
            self.publishes_not_sent,
            self.stopped_early.as_ref().map_or(String::new(), |w| format!(" (stopped: {w})")),
            self.publish_rate_achieved,
            self.rate_requested,
            self.event_data_bytes,
            self.deliveries_received,
            self.deliveries_expected,
            self.missing,
            self.out_of_order,
            self.latency.line(),
            self.latency_arrival.line(),
            kb(self.server_rss_kb_before_stalled),
            kb(self.server_rss_kb_before_publish),
            kb(self.server_rss_kb_peak),
            kb(self.server_rss_kb_end),
            self.sockstat_before_stalled.mem_pages,
            self.sockstat_before_publish.mem_pages,
            self.tcp_mem_pages_peak,
            self.server_send_bytes_peak,
        );
        for w in self.latency_windows.iter().flatten() {
            s.push_str(&format!("\n  events of {:.0}-{:.0} s: {}", w.from_secs, w.to_secs, w.latency.line()));
        }
        s.push_str(&self.cpu.lines());
        for (e, n) in &self.errors {
            s.push_str(&format!("\n  {n} × {e}"));
        }
        s
    }
}

/// Runs `stall`.
pub async fn run(args: StallArgs, dialer: Arc<Dialer>) -> anyhow::Result<StallReport> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a positive number");
    }
    let count = (args.rate * args.duration_secs as f64).round() as usize;
    let probe = ProcessProbe::new(args.server_pids.clone());
    let endpoint = Endpoint::parse(&args.url)?;
    let mut publisher = HttpConn::new(Endpoint::parse(&args.publish)?);
    let metrics = args.metrics_url.as_deref().map(|u| Endpoint::parse(u).map(|e| e.with_path("/metrics")));
    let metrics = metrics.transpose()?;

    let spec = FleetSpec {
        endpoints: vec![endpoint.clone()],
        target: args.target,
        streams: args.healthy,
        connect_concurrency: args.connect_concurrency,
        ready_timeout: Duration::from_secs(30),
        expected_seqs: Some(count),
        h2: None,
        shared_latencies: None,
    };
    let fleet = Fleet::launch(spec, Arc::clone(&dialer));
    fleet.wait_open().await;
    let counters = fleet.counters();
    if counters.opened() == 0 {
        let result = fleet.close().await;
        bail!("no healthy stream opened; errors: {:?}", result.errors);
    }
    let rss_before_stalled = probe.rss_kb()?;
    let sockstat_before_stalled = sockstat()?;

    let stalled = open_stalled(&dialer, &endpoint, args.healthy, args.stalled, args.connect_concurrency).await?;
    let stalled_answered = wait_answered(&stalled, Duration::from_secs(60)).await;
    let rss_before_publish = probe.rss_kb()?;
    let sockstat_before_publish = sockstat()?;
    let open_streams = counters.opened() - counters.ended();

    let started = Instant::now();
    let stop = CancellationToken::new();
    let too_big = CancellationToken::new();
    let sampler = tokio::spawn(sample(Sampler {
        max_rss_kb: args.max_server_rss_mb * 1024,
        too_big: too_big.clone(),
        stalled,
        probe: probe.clone(),
        port: endpoint.addr.port(),
        metrics,
        dialer: Arc::clone(&dialer),
        counters: Arc::clone(&counters),
        started,
        stop: stop.clone(),
    }));
    let meter = PhaseMeter::start(&probe)?;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut published = vec![false; count];
    let sent = Arc::new(AtomicU64::new(0));
    let mut event_data_bytes = 0;
    {
        let (c, sent_so_far) = (Arc::clone(&counters), Arc::clone(&sent));
        let _progress = Progress::start("stall", move || {
            format!(
                "{} of {count} published, {} healthy deliveries, {} healthy lost",
                sent_so_far.load(Ordering::Relaxed),
                c.events(),
                c.ended()
            )
        });
        let end = started + Duration::from_secs(args.duration_secs);
        for seq in 0..count as u64 {
            let due = started + Duration::from_secs_f64(seq as f64 / args.rate);
            tokio::time::sleep_until(due.into()).await;
            if Instant::now() >= end || too_big.is_cancelled() {
                break;
            }
            let data = payload::encode_padded(seq, payload::now_micros(), args.pad_bytes);
            event_data_bytes = data.len();
            let answer = publisher.request_default(&dialer, "POST", &args.target.publish_body(&data)).await;
            sent.fetch_add(1, Ordering::Relaxed);
            published[seq as usize] = accepted(answer, &mut errors).is_some();
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let publishes_ok = published.iter().filter(|p| **p).count() as u64;
    let expected = open_streams * publishes_ok;
    let drained = fleet.wait_events(expected, Instant::now() + Duration::from_secs(args.drain_secs)).await;
    let cpu = meter.read()?;
    stop.cancel();
    let samples = sampler.await.context("the sampler")??;
    let mut result = fleet.close().await;
    if publishes_ok == 0 {
        bail!("no publish succeeded: {errors:?}");
    }
    let (mut missing, mut out_of_order) = (0, 0);
    for d in &result.deliveries {
        if let Some(seqs) = &d.seqs {
            missing += seqs.missing(&published);
            out_of_order += seqs.out_of_order;
        }
    }
    let latency_windows =
        (missing == 0 && out_of_order == 0).then(|| windows(&result, args.rate, args.duration_secs as f64));
    let received: u64 = result.deliveries.iter().map(|d| d.received).sum();
    let (mut parsed, mut arrived) = result.take_latencies();
    for (e, n) in std::mem::take(&mut result.errors) {
        *errors.entry(e).or_default() += n;
    }
    let last = samples.last();
    let all_closed = samples.iter().find(|s| s.stalled_closed >= stalled_answered && stalled_answered > 0);
    Ok(StallReport {
        scenario: "stall",
        target: args.target,
        healthy_requested: args.healthy,
        healthy_opened: result.opened,
        healthy_failed: result.failed,
        healthy_lost: result.ended_early,
        stalled_requested: args.stalled,
        stalled_answered,
        stalled_closed: last.map_or(0, |s| s.stalled_closed),
        stalled_all_closed_secs: all_closed.map(|s| s.t_secs),
        rate_requested: args.rate,
        event_data_bytes,
        publishes_ok,
        publishes_failed: sent.load(Ordering::Relaxed) - publishes_ok,
        publishes_not_sent: count as u64 - sent.load(Ordering::Relaxed),
        stopped_early: too_big
            .is_cancelled()
            .then(|| format!("the server's RSS passed {} MiB", args.max_server_rss_mb)),
        publish_rate_achieved: sent.load(Ordering::Relaxed) as f64 / publish_secs.max(1e-9),
        deliveries_expected: expected,
        deliveries_received: received,
        missing,
        out_of_order,
        drained,
        latency: LatencySummary::from_micros(&mut parsed),
        latency_arrival: LatencySummary::from_micros(&mut arrived),
        latency_windows,
        server_rss_kb_before_stalled: rss_before_stalled,
        server_rss_kb_before_publish: rss_before_publish,
        server_rss_kb_peak: samples.iter().filter_map(|s| s.server_rss_kb).max(),
        server_rss_kb_end: last.and_then(|s| s.server_rss_kb),
        sockstat_before_stalled,
        sockstat_before_publish,
        tcp_mem_pages_peak: samples.iter().map(|s| s.sockstat.mem_pages).max().unwrap_or(0),
        server_send_bytes_peak: samples.iter().map(|s| s.queues.server_send_bytes).max().unwrap_or(0),
        cpu,
        samples,
        server_pids: probe.pids().to_vec(),
        errors,
    })
}

/// Connects `n` clients (stream indices `first..first + n`) that send their
/// request and never read.
async fn open_stalled(
    dialer: &Arc<Dialer>,
    endpoint: &Endpoint,
    first: usize,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<TcpStream>> {
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut opening = tokio::task::JoinSet::new();
    for i in first..first + n {
        let (gate, endpoint, dialer) = (Arc::clone(&gate), endpoint.clone(), Arc::clone(dialer));
        opening.spawn(async move {
            let _turn = gate.acquire_owned().await?;
            let mut tcp = dialer.connect(endpoint.addr).await.context("connect")?;
            let path = endpoint.path_for(i as u64);
            let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n", endpoint.host);
            tcp.write_all(req.as_bytes()).await.context("write request")?;
            anyhow::Ok(tcp)
        });
    }
    let mut stalled = Vec::with_capacity(n);
    while let Some(joined) = opening.join_next().await {
        stalled.push(joined??);
    }
    Ok(stalled)
}

/// Waits (at most `limit`) until the server has answered every stalled
/// connection (bytes wait unread in each); returns how many it has.
async fn wait_answered(stalled: &[TcpStream], limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let answered = stalled.iter().filter(|t| unread_bytes(t) > 0).count() as u64;
        if answered == stalled.len() as u64 || Instant::now() >= deadline {
            return answered;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn unread_bytes(tcp: &TcpStream) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into a live local.
    let rc = unsafe { libc::ioctl(tcp.as_raw_fd(), libc::FIONREAD, &raw mut n) };
    if rc == 0 { n } else { 0 }
}

/// The kernel's TCP state of the socket (`tcpi_state`), if it can be read.
fn tcp_state(tcp: &TcpStream) -> Option<u8> {
    // SAFETY: an all-zero tcp_info is valid; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: as above, with a live local and its size.
    let rc = unsafe {
        libc::getsockopt(tcp.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &raw mut len)
    };
    (rc == 0).then_some(info.tcpi_state)
}

struct Sampler {
    max_rss_kb: u64,
    too_big: CancellationToken,
    stalled: Vec<TcpStream>,
    probe: ProcessProbe,
    port: u16,
    metrics: Option<Endpoint>,
    dialer: Arc<Dialer>,
    counters: Arc<Counters>,
    started: Instant,
    stop: CancellationToken,
}

/// One sample a second until stopped (and one more then).
async fn sample(mut s: Sampler) -> anyhow::Result<Vec<StallSample>> {
    let mut samples = Vec::new();
    let mut closed = 0;
    let mut metrics = s.metrics.take().map(HttpConn::new);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            () = s.stop.cancelled() => true,
        };
        // Drop the stalled connections the server has closed.
        s.stalled.retain(|t| {
            let open = tcp_state(t).is_none_or(|st| st == TCP_ESTABLISHED);
            closed += u64::from(!open);
            open
        });
        let (mut stalled_metric, mut overflow_metric) = (None, None);
        if let Some(conn) = metrics.as_mut()
            && let Ok(resp) = conn.request_default(&s.dialer, "GET", b"").await
        {
            let text = String::from_utf8_lossy(&resp.body);
            stalled_metric = Some(metric(&text, "sse_gateway_queue_overflows_total{reason=\"stalled\"}"));
            overflow_metric = Some(metric(&text, "sse_gateway_queue_overflows_total{reason=\"slow_consumer\"}"));
        }
        let server_rss_kb = s.probe.rss_kb()?;
        if server_rss_kb.is_some_and(|kb| kb > s.max_rss_kb) {
            s.too_big.cancel();
        }
        samples.push(StallSample {
            t_secs: s.started.elapsed().as_secs_f64(),
            server_rss_kb,
            sockstat: sockstat()?,
            queues: port_queues(s.port)?,
            stalled_closed: closed,
            gateway_closed_stalled: stalled_metric,
            gateway_closed_overflow: overflow_metric,
            healthy_events: s.counters.events(),
        });
        if last {
            return Ok(samples);
        }
    }
}

/// The value of a Prometheus text line starting with `prefix` (0 if absent).
fn metric(text: &str, prefix: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(prefix).and_then(|v| v.trim().parse::<f64>().ok())).map_or(0, |v| v as u64)
}

/// Healthy latency per [`WINDOW_SECS`] of the publish sequence (windows
/// with no event left out): with nothing missing or out of order, a
/// stream's k-th sample is event k.
fn windows(result: &FleetResult, rate: f64, duration: f64) -> Vec<LatencyWindow> {
    let per_window = ((WINDOW_SECS * rate).round() as usize).max(1);
    let n = (duration / WINDOW_SECS).ceil().max(1.0) as usize;
    let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); n];
    for d in &result.deliveries {
        for (k, &lat) in d.latencies_us.iter().enumerate() {
            buckets[(k / per_window).min(n - 1)].push(lat);
        }
    }
    buckets
        .into_iter()
        .enumerate()
        .filter(|(_, b)| !b.is_empty())
        .map(|(i, mut b)| LatencyWindow {
            from_secs: i as f64 * WINDOW_SECS,
            to_secs: ((i + 1) as f64 * WINDOW_SECS).min(duration),
            latency: LatencySummary::from_micros(&mut b),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_metric_line() {
        let text = "# HELP x\nsse_gateway_queue_overflows_total{reason=\"stalled\"} 42\nother 1\n";
        assert_eq!(metric(text, "sse_gateway_queue_overflows_total{reason=\"stalled\"}"), 42);
        assert_eq!(metric(text, "sse_gateway_queue_overflows_total{reason=\"slow_consumer\"}"), 0);
    }
}
