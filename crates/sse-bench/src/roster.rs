//! Scenario `roster` (our gateway only): N idle streams held for a window;
//! the gateway's and the callback backend's CPU over it, and the roster
//! callbacks the backend received meanwhile (count, body bytes, tokens).
//!
//! Run it once against a gateway with `ROSTER_INTERVAL_SECONDS` > 0 and once
//! with rosters off, same streams: the difference in gateway CPU is what the
//! rosters cost (the idle streams' own cost, heartbeats, is in both).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use crate::backend::{BackendStats, fetch_stats};
use crate::client::{Dialer, Endpoint};
use crate::fleet::{Fleet, FleetSpec};
use crate::proc::{PhaseCpu, PhaseMeter, ProcessProbe};
use crate::report::{Progress, Report};
use crate::target::Target;

/// Options of `sse-bench roster`.
#[derive(Debug, clap::Args)]
pub struct RosterArgs {
    /// Stream URL; `{i}` becomes the stream's index.
    #[arg(long)]
    pub url: String,
    /// Base URL of the bench backend (the gateway's CALLBACK_URL server; serves `GET /stats`).
    #[arg(long)]
    pub backend_url: String,
    /// The gateway's ROSTER_INTERVAL_SECONDS (0: rosters off, the baseline run).
    #[arg(long)]
    pub interval_secs: u64,
    #[arg(long, default_value_t = 19_000)]
    pub streams: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 30)]
    pub window_secs: u64,
    /// Gateway process to measure.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Callback backend process to measure.
    #[arg(long = "backend-pid")]
    pub backend_pids: Vec<u32>,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
}

/// Result of `roster`.
#[derive(Debug, Serialize)]
pub struct RosterReport {
    pub scenario: &'static str,
    pub target: Target,
    pub interval_secs: u64,
    pub streams_requested: usize,
    pub streams_opened: u64,
    pub streams_failed: u64,
    /// Streams that ended during the run.
    pub streams_lost: u64,
    pub window_secs: f64,
    /// Roster callbacks the backend received within the window.
    pub rosters_in_window: u64,
    /// Body bytes of those, on average (`None`: none arrived).
    pub roster_bytes_mean: Option<f64>,
    /// Tokens in the last roster received.
    pub roster_tokens_last: u64,
    /// Gateway, load generator and machine CPU over the window.
    pub cpu: PhaseCpu,
    /// Gateway CPU seconds per roster interval (per second with rosters off).
    pub server_cpu_secs_per_interval: Option<f64>,
    /// Over the window, measured on the backend's PIDs (`None` without
    /// `--backend-pid`): its `server` field is the backend process; the
    /// other fields repeat the load generator and machine readings.
    pub backend_cpu: Option<PhaseCpu>,
    pub backend_before: BackendStats,
    pub backend_after: BackendStats,
    pub server_pids: Vec<u32>,
    pub backend_pids: Vec<u32>,
    pub errors: BTreeMap<String, u64>,
}

impl Report for RosterReport {
    fn summary(&self) -> String {
        let mut s = format!(
            "roster (interval {} s): {} of {} streams open ({} failed, {} lost); over {:.1} s: {} rosters, \
             {} bytes each on average, {} tokens in the last\n\
             gateway CPU per interval: {}",
            self.interval_secs,
            self.streams_opened,
            self.streams_requested,
            self.streams_failed,
            self.streams_lost,
            self.window_secs,
            self.rosters_in_window,
            self.roster_bytes_mean.map_or("-".to_owned(), |b| format!("{b:.0}")),
            self.roster_tokens_last,
            self.server_cpu_secs_per_interval.map_or("-".to_owned(), |c| format!("{:.2} ms", c * 1000.0)),
        );
        s.push_str(&self.cpu.lines());
        if let Some(cpu) = self.backend_cpu.as_ref().and_then(|b| b.server.as_ref()) {
            s.push_str(&format!(
                "\nbackend CPU: {:.1} % of one core ({:.2} s over {:.1} s)",
                cpu.percent_of_one_core, cpu.cpu_secs, cpu.wall_secs
            ));
        }
        for (e, n) in &self.errors {
            s.push_str(&format!("\n  {n} × {e}"));
        }
        s
    }
}

/// Runs `roster`.
pub async fn run(args: RosterArgs, dialer: Arc<Dialer>) -> anyhow::Result<RosterReport> {
    let probe = ProcessProbe::new(args.server_pids.clone());
    let backend_probe = ProcessProbe::new(args.backend_pids.clone());
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
    let opened = counters.opened();
    // Settle: with rosters on, until a roster listing every stream arrived
    // (so the window measures full rosters); off, until the backend knows
    // every stream (the connect callbacks are over).
    let settle_deadline = Instant::now() + Duration::from_secs(30 + 3 * args.interval_secs);
    loop {
        let stats = fetch_stats(&dialer, &backend).await?;
        let settled = if args.interval_secs > 0 { stats.last_tokens >= opened } else { stats.live_tokens >= opened };
        if settled {
            break;
        }
        if Instant::now() >= settle_deadline {
            let result = fleet.close().await;
            bail!("not settled within the deadline (backend: {stats:?}); stream errors: {:?}", result.errors);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let before = fetch_stats(&dialer, &backend).await?;
    let meter = PhaseMeter::start(&probe)?;
    let backend_meter = if args.backend_pids.is_empty() { None } else { Some(PhaseMeter::start(&backend_probe)?) };
    {
        let c = Arc::clone(&counters);
        let _progress =
            Progress::start("roster", move || format!("{} open, {} lost", c.opened() - c.ended(), c.ended()));
        tokio::time::sleep(Duration::from_secs(args.window_secs)).await;
    }
    let cpu = meter.read()?;
    let backend_cpu = backend_meter.map(|m| m.read()).transpose()?;
    let after = fetch_stats(&dialer, &backend).await?;
    let result = fleet.close().await;

    let rosters = after.rosters - before.rosters;
    let window = cpu.load_generator.wall_secs;
    let per = if args.interval_secs > 0 { args.interval_secs as f64 } else { 1.0 };
    let server_cpu_secs_per_interval = cpu.server.as_ref().map(|s| s.cpu_secs / window.max(1e-9) * per);
    Ok(RosterReport {
        scenario: "roster",
        target: Target::Ours,
        interval_secs: args.interval_secs,
        streams_requested: args.streams,
        streams_opened: result.opened,
        streams_failed: result.failed,
        streams_lost: result.ended_early,
        window_secs: window,
        rosters_in_window: rosters,
        roster_bytes_mean: (rosters > 0).then(|| (after.bytes_total - before.bytes_total) as f64 / rosters as f64),
        roster_tokens_last: after.last_tokens,
        cpu,
        server_cpu_secs_per_interval,
        backend_cpu,
        backend_before: before,
        backend_after: after,
        server_pids: probe.pids().to_vec(),
        backend_pids: backend_probe.pids().to_vec(),
        errors: result.errors,
    })
}
