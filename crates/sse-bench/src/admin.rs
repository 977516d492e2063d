//! Scenario `admin` (our gateway only): the admin API under a load of N open
//! streams bound to `broadcast` and `connection.<request_id>`.
//!
//! In order: `GET /internal/streams?limit=N` (every stream in one answer),
//! then paging through `?key=broadcast&limit=P` until `next_after` is null,
//! each repeated; then `POST /internal/close` by `connection.<request_id>`
//! (one stream each) until the client sees that stream end; then one close
//! by `broadcast` (every stream left) until every client has seen its end
//! and, with `--backend-url`, the backend has heard every disconnect
//! callback. Server and load generator CPU are read over the listing phase
//! and over the close of everything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::backend::fetch_stats;
use crate::client::{Dialer, Endpoint, HttpConn};
use crate::fleet::{Counters, Fleet, FleetSpec};
use crate::proc::{PhaseCpu, PhaseMeter, ProcessProbe};
use crate::report::Report;
use crate::stats::LatencySummary;
use crate::target::{BROADCAST_KEY, Target};

/// Options of `sse-bench admin`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// Stream URL with `{i}` in the request id (e.g. `.../stream?request_id=bench-{i}`).
    #[arg(long)]
    pub url: String,
    /// Base URL of the gateway's admin API (its internal listener, e.g. `http://127.0.0.1:3001`).
    #[arg(long)]
    pub admin_url: String,
    /// Request ids are this prefix plus the stream index (must match `--url`).
    #[arg(long, default_value = "bench-")]
    pub request_id_prefix: String,
    /// Base URL of the bench backend (`GET /stats`): also wait for every disconnect callback.
    #[arg(long)]
    pub backend_url: Option<String>,
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    /// Repetitions of each listing (full list, and paging through the key).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Page size when paging by key.
    #[arg(long, default_value_t = 1000)]
    pub page_limit: usize,
    /// Single-stream closes (by `connection.<request_id>`) before the close of everything.
    #[arg(long, default_value_t = 5)]
    pub close_one: usize,
    /// Server process to measure.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
}

/// One request: how long the answer took and how big it was.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    pub ms: f64,
    /// Decoded body bytes of the answer.
    pub bytes: usize,
}

/// Repeated listings of every stream in one answer.
#[derive(Debug, Serialize)]
pub struct FullListing {
    pub path: String,
    /// Streams in each answer (should be every open stream).
    pub streams_listed: Vec<usize>,
    pub calls: Vec<Call>,
    pub latency: LatencySummary,
}

/// Repeated walks through every page of one key.
#[derive(Debug, Serialize)]
pub struct PagedListing {
    pub first_path: String,
    pub pages_per_walk: Vec<usize>,
    pub streams_per_walk: Vec<usize>,
    /// Whole walk (all pages, one after the other), per repetition.
    pub walk_ms: Vec<f64>,
    pub walk: LatencySummary,
    /// Every page of every walk.
    pub page: LatencySummary,
    /// Answer bytes of one page (the largest seen) and of a whole walk.
    pub page_bytes_max: usize,
    pub walk_bytes: usize,
}

/// One close by `connection.<request_id>`.
#[derive(Debug, Serialize)]
pub struct CloseOne {
    pub key: String,
    pub matched: u64,
    /// Until the close answer arrived.
    pub answer_ms: f64,
    /// Until the client saw its stream end.
    pub ended_ms: Option<f64>,
}

/// The close of every stream by `broadcast`.
#[derive(Debug, Serialize)]
pub struct CloseAll {
    pub matched: u64,
    /// Open streams just before the close.
    pub streams_open_before: u64,
    pub answer_ms: f64,
    /// Until every client saw its stream end (`None`: not within the timeout).
    pub all_ended_ms: Option<f64>,
    pub streams_ended: u64,
    /// Until the backend had heard every disconnect callback (with `--backend-url`).
    pub callbacks_done_ms: Option<f64>,
    /// From the close request to the last of the above.
    pub cpu: PhaseCpu,
}

/// Result of `admin`.
#[derive(Debug, Serialize)]
pub struct AdminReport {
    pub scenario: &'static str,
    pub target: Target,
    pub streams_requested: usize,
    pub streams_opened: u64,
    pub streams_failed: u64,
    pub open_secs: f64,
    pub list_all: FullListing,
    pub list_by_key: PagedListing,
    /// Over both listing phases.
    pub listing_cpu: PhaseCpu,
    pub close_one: Vec<CloseOne>,
    pub close_one_answer: LatencySummary,
    pub close_one_ended: LatencySummary,
    pub close_all: CloseAll,
    pub server_pids: Vec<u32>,
    pub errors: BTreeMap<String, u64>,
}

impl Report for AdminReport {
    fn summary(&self) -> String {
        let l = &self.list_all;
        let p = &self.list_by_key;
        let c = &self.close_all;
        let opt = |v: Option<f64>| v.map_or("not reached".to_owned(), |ms| format!("{ms:.1} ms"));
        let mut s = format!(
            "admin: {} of {} streams open ({} failed) in {:.1} s\n\
             GET {}: {} answers of {:?} streams, {} bytes each; {}\n\
             GET {} paged: {:?} pages, {:?} streams, {} bytes per walk (page ≤ {} bytes)\n\
             \x20 walk {}\n\x20 page {}\n\
             listing CPU:{}\n\
             close one by connection.<id> ({}): answer {}\n\x20 until the client saw the end: {}\n\
             close all by broadcast: matched {} of {} open, answer {:.1} ms, every client saw the end after {}, \
             every disconnect callback heard after {}{}",
            self.streams_opened,
            self.streams_requested,
            self.streams_failed,
            self.open_secs,
            l.path,
            l.calls.len(),
            l.streams_listed,
            l.calls.first().map_or(0, |c| c.bytes),
            l.latency.line(),
            p.first_path,
            p.pages_per_walk,
            p.streams_per_walk,
            p.walk_bytes,
            p.page_bytes_max,
            p.walk.line(),
            p.page.line(),
            self.listing_cpu.lines().replace('\n', "\n  "),
            self.close_one.len(),
            self.close_one_answer.line(),
            self.close_one_ended.line(),
            c.matched,
            c.streams_open_before,
            c.answer_ms,
            opt(c.all_ended_ms),
            opt(c.callbacks_done_ms),
            c.cpu.lines(),
        );
        for (e, n) in &self.errors {
            s.push_str(&format!("\n  {n} × {e}"));
        }
        s
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn micros(ms: f64) -> u32 {
    (ms * 1000.0).round().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// `GET path` on the admin API; the answer must be 200 JSON.
async fn get_json(conn: &mut HttpConn, dialer: &Dialer, path: &str) -> anyhow::Result<(Call, serde_json::Value)> {
    let t = Instant::now();
    let resp = conn.request(dialer, "GET", path, b"").await.with_context(|| format!("GET {path}"))?;
    let ms = millis(t.elapsed());
    if resp.status != 200 {
        bail!("GET {path} answered HTTP {}: {}", resp.status, String::from_utf8_lossy(&resp.body));
    }
    let value = serde_json::from_slice(&resp.body).with_context(|| format!("GET {path}: not JSON"))?;
    Ok((Call { ms, bytes: resp.body.len() }, value))
}

/// `POST /internal/close` with `body`; returns the time to the answer and `matched`.
async fn close(conn: &mut HttpConn, dialer: &Dialer, body: serde_json::Value) -> anyhow::Result<(f64, u64)> {
    let t = Instant::now();
    let resp = conn.request(dialer, "POST", "/internal/close", body.to_string().as_bytes()).await.context("close")?;
    let ms = millis(t.elapsed());
    if resp.status != 200 {
        bail!("POST /internal/close {body} answered HTTP {}: {}", resp.status, String::from_utf8_lossy(&resp.body));
    }
    let answer: serde_json::Value = serde_json::from_slice(&resp.body).context("close answer: not JSON")?;
    let matched = answer.get("matched").and_then(serde_json::Value::as_u64).context("close answer without matched")?;
    Ok((ms, matched))
}

fn streams_in(answer: &serde_json::Value) -> anyhow::Result<usize> {
    answer.get("streams").and_then(serde_json::Value::as_array).map(Vec::len).context("answer without streams")
}

/// Waits until `counters.ended()` reaches `target` or `timeout` passes; the time it took.
async fn wait_ended(counters: &Counters, target: u64, since: Instant, timeout: Duration) -> Option<f64> {
    while counters.ended() < target {
        if since.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Some(millis(since.elapsed()))
}

async fn list_all(conn: &mut HttpConn, dialer: &Dialer, streams: usize, reps: usize) -> anyhow::Result<FullListing> {
    let path = format!("/internal/streams?limit={streams}");
    let (mut calls, mut listed) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (call, answer) = get_json(conn, dialer, &path).await?;
        listed.push(streams_in(&answer)?);
        calls.push(call);
    }
    let mut us: Vec<u32> = calls.iter().map(|c| micros(c.ms)).collect();
    Ok(FullListing { path, streams_listed: listed, calls, latency: LatencySummary::from_micros(&mut us) })
}

async fn list_by_key(conn: &mut HttpConn, dialer: &Dialer, limit: usize, reps: usize) -> anyhow::Result<PagedListing> {
    let first_path = format!("/internal/streams?key={BROADCAST_KEY}&limit={limit}");
    let mut out = PagedListing {
        first_path: first_path.clone(),
        pages_per_walk: Vec::new(),
        streams_per_walk: Vec::new(),
        walk_ms: Vec::new(),
        walk: LatencySummary::default(),
        page: LatencySummary::default(),
        page_bytes_max: 0,
        walk_bytes: 0,
    };
    let mut page_us = Vec::new();
    for _ in 0..reps {
        let started = Instant::now();
        let (mut pages, mut streams, mut bytes) = (0, 0, 0);
        let mut path = first_path.clone();
        loop {
            let (call, answer) = get_json(conn, dialer, &path).await?;
            pages += 1;
            streams += streams_in(&answer)?;
            bytes += call.bytes;
            out.page_bytes_max = out.page_bytes_max.max(call.bytes);
            page_us.push(micros(call.ms));
            match answer.get("next_after").and_then(serde_json::Value::as_str) {
                Some(after) => path = format!("{first_path}&after={after}"),
                None => break,
            }
            if pages > 100_000 {
                bail!("paging did not end after {pages} pages");
            }
        }
        out.walk_ms.push(millis(started.elapsed()));
        out.pages_per_walk.push(pages);
        out.streams_per_walk.push(streams);
        out.walk_bytes = bytes;
    }
    let mut walk_us: Vec<u32> = out.walk_ms.iter().map(|&ms| micros(ms)).collect();
    out.walk = LatencySummary::from_micros(&mut walk_us);
    out.page = LatencySummary::from_micros(&mut page_us);
    Ok(out)
}

/// Runs `admin`.
pub async fn run(args: AdminArgs, dialer: Arc<Dialer>) -> anyhow::Result<AdminReport> {
    let probe = ProcessProbe::new(args.server_pids.clone());
    let admin = Endpoint::parse(&args.admin_url)?;
    let backend = args.backend_url.as_deref().map(Endpoint::parse).transpose()?;
    if !args.url.contains("{i}") {
        bail!("--url must contain {{i}} in the request id, e.g. ...?request_id={}{{i}}", args.request_id_prefix);
    }
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
    let open_time = fleet.wait_open().await;
    let counters = fleet.counters();
    if counters.failed() > 0 || counters.opened() == 0 {
        let result = fleet.close().await;
        bail!("{} of {} streams failed to open; errors: {:?}", result.failed, args.streams, result.errors);
    }
    let opened = counters.opened();
    let mut conn = HttpConn::new(admin);

    eprintln!("[admin] listing {opened} streams, {} repetitions", args.reps);
    let meter = PhaseMeter::start(&probe)?;
    let full = list_all(&mut conn, &dialer, args.streams, args.reps).await?;
    let paged = list_by_key(&mut conn, &dialer, args.page_limit, args.reps).await?;
    let listing_cpu = meter.read()?;

    eprintln!("[admin] closing {} streams one by one", args.close_one);
    let mut singles = Vec::new();
    for n in 0..args.close_one.min(args.streams) {
        // Spread over the fleet: first, last and evenly in between.
        let i = n * (args.streams - 1) / args.close_one.saturating_sub(1).max(1);
        let key = format!("connection.{}{i}", args.request_id_prefix);
        let before = counters.ended();
        let started = Instant::now();
        let (answer_ms, matched) = close(&mut conn, &dialer, serde_json::json!({"key": key})).await?;
        let ended_ms = wait_ended(&counters, before + matched, started, Duration::from_secs(10)).await;
        singles.push(CloseOne { key, matched, answer_ms, ended_ms });
    }

    let open_before = opened - counters.ended();
    eprintln!("[admin] closing all {open_before} streams by {BROADCAST_KEY}");
    let meter = PhaseMeter::start(&probe)?;
    let started = Instant::now();
    let (answer_ms, matched) = close(&mut conn, &dialer, serde_json::json!({"key": BROADCAST_KEY})).await?;
    let all_ended_ms = wait_ended(&counters, opened, started, Duration::from_secs(60)).await;
    let mut callbacks_done_ms = None;
    if let Some(backend) = &backend {
        while started.elapsed() < Duration::from_secs(60) {
            if fetch_stats(&dialer, backend).await?.live_tokens == 0 {
                callbacks_done_ms = Some(millis(started.elapsed()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let close_cpu = meter.read()?;
    let close_all = CloseAll {
        matched,
        streams_open_before: open_before,
        answer_ms,
        all_ended_ms,
        streams_ended: counters.ended(),
        callbacks_done_ms,
        cpu: close_cpu,
    };

    let result = fleet.close().await;
    let mut answer_us: Vec<u32> = singles.iter().map(|c| micros(c.answer_ms)).collect();
    let mut ended_us: Vec<u32> = singles.iter().filter_map(|c| c.ended_ms).map(micros).collect();
    Ok(AdminReport {
        scenario: "admin",
        target: Target::Ours,
        streams_requested: args.streams,
        streams_opened: result.opened,
        streams_failed: result.failed,
        open_secs: open_time.as_secs_f64(),
        list_all: full,
        list_by_key: paged,
        listing_cpu,
        close_one: singles,
        close_one_answer: LatencySummary::from_micros(&mut answer_us),
        close_one_ended: LatencySummary::from_micros(&mut ended_us),
        close_all,
        server_pids: probe.pids().to_vec(),
        errors: result.errors,
    })
}
