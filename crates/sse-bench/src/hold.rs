//! Scenario `hold`: N idle streams; the server's resident memory before and
//! after, per stream. With `--h2-connections M` the streams share M HTTP/2
//! connections over TLS (the per-stream figure then includes 1/(N/M) of a
//! connection's TLS and h2 state).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use crate::client::{Dialer, Endpoint};
use crate::fleet::{Fleet, FleetSpec};
use crate::h2::H2Args;
use crate::proc::ProcessProbe;
use crate::report::{Progress, Report};
use crate::target::Target;

/// Options of `sse-bench hold`.
#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    /// Stream URL; `{i}` becomes the stream's index (e.g. `.../stream?request_id=bench-{i}`).
    #[arg(long)]
    pub url: String,
    #[arg(long, value_enum, default_value = "ours")]
    pub target: Target,
    /// Streams to open.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Server process to measure (repeat for several, e.g. Nginx master and worker).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Seconds to hold every stream open before the second memory reading.
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    #[command(flatten)]
    pub h2: H2Args,
}

/// Result of `hold`.
#[derive(Debug, Serialize)]
pub struct HoldReport {
    pub scenario: &'static str,
    pub target: Target,
    pub streams_requested: usize,
    /// HTTP/2 connections carrying the streams (`None`: one HTTP/1.1 connection per stream).
    pub h2_connections: Option<usize>,
    pub streams_opened: u64,
    pub streams_failed: u64,
    /// Streams that ended before the hold was over.
    pub streams_lost: u64,
    pub open_secs: f64,
    pub opens_per_sec: f64,
    pub hold_secs: u64,
    pub server_pids: Vec<u32>,
    pub rss_baseline_kb: Option<u64>,
    pub rss_held_kb: Option<u64>,
    /// (held − baseline) / opened streams.
    pub rss_per_stream_bytes: Option<f64>,
    /// h2: RSS the idle TLS + h2 connections added before any stream, per connection.
    pub rss_per_h2_connection_bytes: Option<f64>,
    pub errors: BTreeMap<String, u64>,
}

impl Report for HoldReport {
    fn summary(&self) -> String {
        let transport = match self.h2_connections {
            Some(m) => format!(" over {m} h2 connections"),
            None => String::new(),
        };
        let mut s = format!(
            "hold ({:?}{transport}): {} of {} streams open ({} failed, {} lost during the hold), opened in {:.1} s ({:.0}/s)\n",
            self.target,
            self.streams_opened,
            self.streams_requested,
            self.streams_failed,
            self.streams_lost,
            self.open_secs,
            self.opens_per_sec
        );
        if let (Some(base), Some(held), Some(per)) = (self.rss_baseline_kb, self.rss_held_kb, self.rss_per_stream_bytes)
        {
            s.push_str(&format!(
                "server RSS: baseline {:.1} MiB, held {:.1} MiB, {:.0} bytes ({:.2} KiB) per stream",
                base as f64 / 1024.0,
                held as f64 / 1024.0,
                per,
                per / 1024.0
            ));
        } else {
            s.push_str("server RSS: not measured (no --server-pid)");
        }
        if let Some(per) = self.rss_per_h2_connection_bytes {
            s.push_str(&format!("\nserver RSS per idle h2 connection (before its streams): {per:.0} bytes"));
        }
        for (e, n) in &self.errors {
            s.push_str(&format!("\n  {n} × {e}"));
        }
        s
    }
}

/// Runs `hold`.
pub async fn run(args: HoldArgs, dialer: Arc<Dialer>) -> anyhow::Result<HoldReport> {
    let probe = ProcessProbe::new(args.server_pids.clone());
    let endpoint = Endpoint::parse(&args.url)?;
    let before_connections = probe.rss_kb()?;
    let h2 = args.h2.pool(&dialer, &endpoint).await?;
    if h2.is_some() {
        // Let the handshakes' transient buffers go before the reading.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // After the h2 connections are up: the figure is per stream, not per connection.
    let baseline = probe.rss_kb()?;
    let per_connection = match (&h2, before_connections, baseline) {
        (Some(pool), Some(before), Some(after)) => {
            Some((after as f64 - before as f64) * 1024.0 / pool.connections() as f64)
        }
        _ => None,
    };
    let h2_connections = h2.as_ref().map(|p| p.connections());
    let spec = FleetSpec {
        endpoints: vec![endpoint],
        target: args.target,
        streams: args.streams,
        connect_concurrency: args.connect_concurrency,
        ready_timeout: Duration::from_secs(30),
        expected_seqs: None,
        h2,
        shared_latencies: None,
    };
    let fleet = Fleet::launch(spec, dialer);
    let open_time = fleet.wait_open().await;
    let counters = fleet.counters();
    if counters.opened() == 0 {
        let result = fleet.close().await;
        bail!("no stream opened; errors: {:?}", result.errors);
    }
    {
        let c = Arc::clone(&counters);
        let p = probe.clone();
        let _progress = Progress::start("hold", move || {
            let rss = p.rss_kb().ok().flatten().map_or("?".to_owned(), |kb| format!("{:.1} MiB", kb as f64 / 1024.0));
            format!("{} open, {} lost, server RSS {rss}", c.opened() - c.ended(), c.ended())
        });
        tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    }
    let held = probe.rss_kb()?;
    let result = fleet.close().await;
    let per_stream = match (baseline, held) {
        (Some(b), Some(h)) if result.opened > 0 => Some((h as f64 - b as f64) * 1024.0 / result.opened as f64),
        _ => None,
    };
    Ok(HoldReport {
        scenario: "hold",
        target: args.target,
        streams_requested: args.streams,
        h2_connections,
        streams_opened: result.opened,
        streams_failed: result.failed,
        streams_lost: result.ended_early,
        open_secs: open_time.as_secs_f64(),
        opens_per_sec: result.opened as f64 / open_time.as_secs_f64().max(1e-9),
        hold_secs: args.hold_secs,
        server_pids: probe.pids().to_vec(),
        rss_baseline_kb: baseline,
        rss_held_kb: held,
        rss_per_stream_bytes: per_stream,
        rss_per_h2_connection_bytes: per_connection,
        errors: result.errors,
    })
}
