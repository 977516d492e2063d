//! Scenario `send` (our gateway only): token sends per second to
//! `/internal/send` over C keep-alive connections, and a full check that
//! every accepted send reached its stream.
//!
//! The tokens come from the bench `backend` (`GET /tokens`), which is the
//! gateway's callback backend and so learns every stream's token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::client::{Dialer, Endpoint, HttpConn};
use crate::fleet::{Fleet, FleetSpec};
use crate::payload;
use crate::proc::{PhaseCpu, PhaseMeter, ProcessProbe};
use crate::report::{Progress, Report};
use crate::stats::LatencySummary;
use crate::target::{EVENT_NAME, Target};

/// Options of `sse-bench send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Stream URL; `{i}` becomes the stream's index.
    #[arg(long)]
    pub url: String,
    /// The gateway's `/internal/send` URL.
    #[arg(long)]
    pub publish_url: String,
    /// Base URL of the bench backend (serves `GET /tokens`).
    #[arg(long)]
    pub backend_url: String,
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Concurrent keep-alive sender connections.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Server process to measure (repeat for several).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Seconds to wait after the last send for events still in flight.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
}

/// Result of `send`.
#[derive(Debug, Serialize)]
pub struct SendReport {
    pub scenario: &'static str,
    pub target: Target,
    pub streams_requested: usize,
    pub streams_opened: u64,
    pub streams_failed: u64,
    pub streams_lost: u64,
    pub tokens: usize,
    pub concurrency: usize,
    pub duration_secs: f64,
    /// Sends answered 200.
    pub sends_ok: u64,
    pub sends_per_sec: f64,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Sends that got no answer (connection errors).
    pub send_errors: u64,
    pub events_received: u64,
    /// Accepted sends whose event did not arrive (by count).
    pub missing: u64,
    pub drained: bool,
    pub send_rtt: LatencySummary,
    /// Publish timestamp to the client having read and parsed the event, per
    /// event per stream. Includes the load generator's own queueing: it
    /// handles every stream on the same two cores as the server.
    pub latency: LatencySummary,
    /// Publish timestamp to the event's bytes arriving in the client socket
    /// (kernel receive timestamp): the server's share of the latency.
    pub latency_arrival: LatencySummary,
    pub cpu: PhaseCpu,
    pub server_pids: Vec<u32>,
    pub errors: BTreeMap<String, u64>,
}

impl Report for SendReport {
    fn summary(&self) -> String {
        let mut s = format!(
            "send: {} of {} streams open ({} failed, {} lost), {} tokens, {} connections\n\
             {} sends ok in {:.1} s = {:.0}/s; statuses {:?}; {} send errors\n\
             events received {} (missing {}), send rtt {}\n\
             latency (parsed by the client): {}\n\
             latency (arrived in the client socket): {}",
            self.streams_opened,
            self.streams_requested,
            self.streams_failed,
            self.streams_lost,
            self.tokens,
            self.concurrency,
            self.sends_ok,
            self.duration_secs,
            self.sends_per_sec,
            self.statuses,
            self.send_errors,
            self.events_received,
            self.missing,
            self.send_rtt.line(),
            self.latency.line(),
            self.latency_arrival.line(),
        );
        s.push_str(&self.cpu.lines());
        for (e, n) in &self.errors {
            s.push_str(&format!("\n  {n} × {e}"));
        }
        s
    }
}

#[derive(Default)]
struct WorkerResult {
    rtts: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

/// Runs `send`.
pub async fn run(args: SendArgs, dialer: Arc<Dialer>) -> anyhow::Result<SendReport> {
    let probe = ProcessProbe::new(args.server_pids.clone());
    let send_endpoint = Endpoint::parse(&args.publish_url)?;
    let backend = Endpoint::parse(&args.backend_url)?;
    let spec = FleetSpec {
        endpoints: vec![Endpoint::parse(&args.url)?],
        target: Target::Ours,
        streams: args.streams,
        connect_concurrency: args.connect_concurrency,
        ready_timeout: Duration::from_secs(30),
        expected_seqs: None,
        h2: None,
        shared_latencies: None,
    };
    let fleet = Fleet::launch(spec, Arc::clone(&dialer));
    fleet.wait_open().await;
    let counters = fleet.counters();
    if counters.opened() == 0 {
        let result = fleet.close().await;
        bail!("no stream opened; errors: {:?}", result.errors);
    }
    let tokens = Arc::new(fetch_tokens(&dialer, &backend).await?);
    if tokens.is_empty() {
        bail!("the backend knows no tokens: is it the gateway's CALLBACK_URL?");
    }

    let ok = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let meter = PhaseMeter::start(&probe)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (dialer, tokens, ok, seq) = (Arc::clone(&dialer), Arc::clone(&tokens), Arc::clone(&ok), Arc::clone(&seq));
        let endpoint = send_endpoint.clone();
        workers.spawn(async move {
            let mut conn = HttpConn::new(endpoint);
            let mut out = WorkerResult::default();
            while Instant::now() < deadline {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let token = &tokens[(n % tokens.len() as u64) as usize];
                let data = payload::encode(n, payload::now_micros());
                let body = serde_json::json!({"token": token, "event": {"name": EVENT_NAME, "data": data}});
                let t = Instant::now();
                match conn.request_default(&dialer, "POST", body.to_string().as_bytes()).await {
                    Ok(resp) => {
                        *out.statuses.entry(resp.status).or_default() += 1;
                        if resp.status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                            out.rtts.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                        }
                    }
                    Err(e) => {
                        *out.errors.entry(format!("send: {e:#}")).or_default() += 1;
                        // Do not spin on a refused connection.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            out
        });
    }
    let mut total = WorkerResult::default();
    {
        let (c, ok) = (Arc::clone(&counters), Arc::clone(&ok));
        let _progress = Progress::start("send", move || {
            let secs = started.elapsed().as_secs_f64();
            let n = ok.load(Ordering::Relaxed);
            format!("{n} sends ok ({:.0}/s), {} events received", n as f64 / secs, c.events())
        });
        while let Some(joined) = workers.join_next().await {
            let w = joined.context("send worker failed")?;
            total.rtts.extend(w.rtts);
            for (k, v) in w.statuses {
                *total.statuses.entry(k).or_default() += v;
            }
            for (k, v) in w.errors {
                *total.errors.entry(k).or_default() += v;
            }
        }
    }
    let duration_secs = started.elapsed().as_secs_f64();
    let sends_ok = ok.load(Ordering::Relaxed);
    let drained = fleet.wait_events(sends_ok, Instant::now() + Duration::from_secs(args.drain_secs)).await;
    let cpu = meter.read()?;
    let mut result = fleet.close().await;
    let received: u64 = result.deliveries.iter().map(|d| d.received).sum();
    let (mut parsed, mut arrived) = result.take_latencies();
    let latency = LatencySummary::from_micros(&mut parsed);
    let latency_arrival = LatencySummary::from_micros(&mut arrived);
    let send_errors = total.errors.values().sum();
    for (e, n) in result.errors {
        *total.errors.entry(e).or_default() += n;
    }
    Ok(SendReport {
        scenario: "send",
        target: Target::Ours,
        streams_requested: args.streams,
        streams_opened: result.opened,
        streams_failed: result.failed,
        streams_lost: result.ended_early,
        tokens: tokens.len(),
        concurrency: args.concurrency,
        duration_secs,
        sends_ok,
        sends_per_sec: sends_ok as f64 / duration_secs.max(1e-9),
        statuses: total.statuses,
        send_errors,
        events_received: received,
        missing: sends_ok.saturating_sub(received),
        drained,
        send_rtt: LatencySummary::from_micros(&mut total.rtts),
        latency,
        latency_arrival,
        cpu,
        server_pids: probe.pids().to_vec(),
        errors: total.errors,
    })
}

async fn fetch_tokens(dialer: &Dialer, backend: &Endpoint) -> anyhow::Result<Vec<String>> {
    let path = format!("{}/tokens", backend.path.trim_end_matches('/'));
    let mut conn = HttpConn::new(backend.with_path(&path));
    let resp = conn.request_default(dialer, "GET", b"").await.context("GET /tokens from the backend")?;
    if resp.status != 200 {
        bail!("GET /tokens from the backend answered HTTP {}", resp.status);
    }
    serde_json::from_slice(&resp.body).context("GET /tokens: not a JSON list of strings")
}
