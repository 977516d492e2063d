//! Scenario `churn`: C workers each connect, wait until the stream is open
//! (our gateway: `ready`, i.e. after the connect callback's round trip),
//! close, and repeat; connects per second and the time to open.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::client::{Dialer, Endpoint};
use crate::fleet::open_until_ready;
use crate::proc::{PhaseCpu, PhaseMeter, ProcessProbe};
use crate::report::{Progress, Report};
use crate::stats::LatencySummary;
use crate::target::Target;

/// Options of `sse-bench churn`.
#[derive(Debug, clap::Args)]
pub struct ChurnArgs {
    /// Stream URL; `{i}` becomes the connection's number.
    #[arg(long)]
    pub url: String,
    #[arg(long, value_enum, default_value = "ours")]
    pub target: Target,
    /// Seconds of churning.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Concurrent workers.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Server process to measure (repeat for several).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
}

/// Result of `churn`.
#[derive(Debug, Serialize)]
pub struct ChurnReport {
    pub scenario: &'static str,
    pub target: Target,
    pub concurrency: usize,
    pub duration_secs: f64,
    pub connects_ok: u64,
    pub connects_per_sec: f64,
    pub connect_errors: u64,
    /// Connect to open (`ready` for ours, response head for Nchan).
    pub open_latency: LatencySummary,
    pub cpu: PhaseCpu,
    pub server_pids: Vec<u32>,
    pub errors: BTreeMap<String, u64>,
}

impl Report for ChurnReport {
    fn summary(&self) -> String {
        let mut s = format!(
            "churn ({:?}): {} connects in {:.1} s = {:.0}/s with {} workers, {} errors\nopen latency: {}",
            self.target,
            self.connects_ok,
            self.duration_secs,
            self.connects_per_sec,
            self.concurrency,
            self.connect_errors,
            self.open_latency.line()
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
    latencies: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

/// Runs `churn`.
pub async fn run(args: ChurnArgs, dialer: Arc<Dialer>) -> anyhow::Result<ChurnReport> {
    let probe = ProcessProbe::new(args.server_pids.clone());
    let endpoint = Arc::new(Endpoint::parse(&args.url)?);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let meter = PhaseMeter::start(&probe)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (dialer, endpoint) = (Arc::clone(&dialer), Arc::clone(&endpoint));
        let (ok, failed, next) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&next));
        let target = args.target;
        workers.spawn(async move {
            let mut out = WorkerResult::default();
            while Instant::now() < deadline {
                let path = endpoint.path_for(next.fetch_add(1, Ordering::Relaxed));
                let t = Instant::now();
                let opened =
                    tokio::time::timeout(Duration::from_secs(10), open_until_ready(&dialer, &endpoint, &path, target))
                        .await;
                match opened {
                    // Dropping the stream closes the connection: the client leaves.
                    Ok(Ok(_stream)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        out.latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                    }
                    Ok(Err(e)) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        *out.errors.entry(format!("open: {e:#}")).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        *out.errors.entry("open: not open within 10 s".to_owned()).or_default() += 1;
                    }
                }
            }
            out
        });
    }
    let mut total = WorkerResult::default();
    {
        let (ok, failed) = (Arc::clone(&ok), Arc::clone(&failed));
        let _progress = Progress::start("churn", move || {
            let n = ok.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64();
            format!("{n} connects ({:.0}/s), {} errors", n as f64 / secs, failed.load(Ordering::Relaxed))
        });
        while let Some(joined) = workers.join_next().await {
            let w = joined.context("churn worker failed")?;
            total.latencies.extend(w.latencies);
            for (k, v) in w.errors {
                *total.errors.entry(k).or_default() += v;
            }
        }
    }
    let duration_secs = started.elapsed().as_secs_f64();
    let cpu = meter.read()?;
    let connects_ok = ok.load(Ordering::Relaxed);
    if connects_ok == 0 {
        bail!("no stream opened; errors: {:?}", total.errors);
    }
    Ok(ChurnReport {
        scenario: "churn",
        target: args.target,
        concurrency: args.concurrency,
        duration_secs,
        connects_ok,
        connects_per_sec: connects_ok as f64 / duration_secs.max(1e-9),
        connect_errors: failed.load(Ordering::Relaxed),
        open_latency: LatencySummary::from_micros(&mut total.latencies),
        cpu,
        server_pids: probe.pids().to_vec(),
        errors: total.errors,
    })
}
