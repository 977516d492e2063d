//! Scenario `fanout`: N streams, then M broadcasts at R per second; delivery
//! latency per event per stream, missing/duplicated/out-of-order counts, and
//! server CPU during the publish phase.
//!
//! With `--h2-connections M` the streams share M HTTP/2 connections over
//! TLS; their latency is then only the parsed one (no kernel timestamp per
//! h2 stream).
//!
//! Publishes go out sequentially over one keep-alive connection, each at its
//! scheduled time (no catch-up bursts beyond what a late response forces);
//! the achieved rate is reported next to the requested one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use crate::client::{Dialer, Endpoint};
use crate::fleet::{Fleet, FleetSpec};
use crate::h2::H2Args;
use crate::payload;
use crate::proc::{PhaseCpu, PhaseMeter, ProcessProbe};
use crate::publisher::{Publisher, accepted};
use crate::report::{Progress, Report};
use crate::stats::LatencySummary;
use crate::target::Target;

/// Options of `sse-bench fanout`.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// Stream URL; `{i}` becomes the stream's index. Comma-separated URLs
    /// (several gateway instances) share the streams round robin.
    #[arg(long)]
    pub url: String,
    /// Publish URL (ours: `http://127.0.0.1:INTERNAL_PORT/internal/publish`; nchan: `.../pub/broadcast`;
    /// or `amqp://...` to publish through RabbitMQ to the `--exchange` with key `broadcast`).
    #[arg(long)]
    pub publish: String,
    /// Topic exchange for `amqp://` publishing (the gateways' `<prefix>.sse.events`).
    #[arg(long, default_value = "sse.events")]
    pub exchange: String,
    #[arg(long, value_enum, default_value = "ours")]
    pub target: Target,
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Broadcasts per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Number of broadcasts.
    #[arg(long, default_value_t = 100)]
    pub count: u64,
    /// Server process to measure (repeat for several).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Seconds to wait after the last publish for deliveries still in flight.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    #[command(flatten)]
    pub h2: H2Args,
}

/// Result of `fanout`.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub target: Target,
    pub streams_requested: usize,
    /// HTTP/2 connections carrying the streams (`None`: one HTTP/1.1 connection per stream).
    pub h2_connections: Option<usize>,
    pub streams_opened: u64,
    pub streams_failed: u64,
    pub streams_lost: u64,
    pub rate_requested: f64,
    pub publishes_requested: u64,
    pub publishes_ok: u64,
    pub publishes_failed: u64,
    pub publish_secs: f64,
    pub publish_rate_achieved: f64,
    /// Round trip of the publish request itself.
    pub publish_rtt: LatencySummary,
    /// `matched` in the gateway's publish answers (smallest, largest).
    pub matched_min: Option<u64>,
    pub matched_max: Option<u64>,
    /// Open streams × successful publishes.
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    pub deliveries_per_sec: f64,
    pub missing: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected_seq: u64,
    pub unparsable: u64,
    /// True if every expected delivery arrived before the drain deadline.
    pub drained: bool,
    /// Publish timestamp to the client having read and parsed the event, per
    /// event per stream. Includes the load generator's own queueing: it
    /// handles every stream on the same two cores as the server.
    pub latency: LatencySummary,
    /// Publish timestamp to the event's bytes arriving in the client socket
    /// (kernel receive timestamp): the server's share of the latency.
    /// `None` over h2, where a stream's bytes have no receive timestamp of their own.
    pub latency_arrival: Option<LatencySummary>,
    /// From the first publish until everything arrived (or the drain deadline).
    pub cpu: PhaseCpu,
    pub server_pids: Vec<u32>,
    pub errors: BTreeMap<String, u64>,
}

impl Report for FanoutReport {
    fn summary(&self) -> String {
        let transport = match self.h2_connections {
            Some(m) => format!(" over {m} h2 connections"),
            None => String::new(),
        };
        let mut s = format!(
            "fanout ({:?}{transport}): {} of {} streams open ({} failed, {} lost)\n\
             publishes: {} ok, {} failed of {}, {:.1}/s achieved (asked {}/s), publish rtt {}\n\
             deliveries: {} of {} expected ({:.0}/s); missing {}, duplicated {}, out of order {}, unexpected {}, unparsable {}\n\
             latency (parsed by the client): {}\n\
             latency (arrived in the client socket): {}",
            self.target,
            self.streams_opened,
            self.streams_requested,
            self.streams_failed,
            self.streams_lost,
            self.publishes_ok,
            self.publishes_failed,
            self.publishes_requested,
            self.publish_rate_achieved,
            self.rate_requested,
            self.publish_rtt.line(),
            self.deliveries_received,
            self.deliveries_expected,
            self.deliveries_per_sec,
            self.missing,
            self.duplicated,
            self.out_of_order,
            self.unexpected_seq,
            self.unparsable,
            self.latency.line(),
            self.latency_arrival.as_ref().map_or_else(|| "not measured (h2)".to_owned(), LatencySummary::line),
        );
        s.push_str(&self.cpu.lines());
        if let (Some(lo), Some(hi)) = (self.matched_min, self.matched_max) {
            s.push_str(&format!("\nmatched per publish: {lo}..{hi}"));
        }
        for (e, n) in &self.errors {
            s.push_str(&format!("\n  {n} × {e}"));
        }
        s
    }
}

/// Runs `fanout`.
pub async fn run(args: FanoutArgs, dialer: Arc<Dialer>) -> anyhow::Result<FanoutReport> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a positive number");
    }
    let count = usize::try_from(args.count)?;
    let probe = ProcessProbe::new(args.server_pids.clone());
    let mut publisher = Publisher::connect(&args.publish, &args.exchange, args.target).await?;
    let endpoints: Vec<Endpoint> =
        args.url.split(',').map(|u| Endpoint::parse(u.trim())).collect::<anyhow::Result<_>>()?;
    let h2 = match endpoints.as_slice() {
        [one] => args.h2.pool(&dialer, one).await?,
        _ if args.h2.h2_connections.is_some() => bail!("--h2-connections takes one stream URL"),
        _ => None,
    };
    let h2_connections = h2.as_ref().map(|p| p.connections());
    let spec = FleetSpec {
        endpoints,
        target: args.target,
        streams: args.streams,
        connect_concurrency: args.connect_concurrency,
        ready_timeout: Duration::from_secs(30),
        expected_seqs: Some(count),
        h2,
        shared_latencies: None,
    };
    let fleet = Fleet::launch(spec, Arc::clone(&dialer));
    fleet.wait_open().await;
    let counters = fleet.counters();
    if counters.opened() == 0 {
        let result = fleet.close().await;
        bail!("no stream opened; errors: {:?}", result.errors);
    }
    // Let the opening burst's tail (callbacks, logs) settle before measuring CPU.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open_streams = counters.opened() - counters.ended();

    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut published = vec![false; count];
    let mut rtts = Vec::with_capacity(count);
    let (mut matched_min, mut matched_max) = (None::<u64>, None::<u64>);
    let sent = Arc::new(AtomicU64::new(0));
    let meter = PhaseMeter::start(&probe)?;
    let started = Instant::now();
    {
        let (c, sent_so_far) = (Arc::clone(&counters), Arc::clone(&sent));
        let _progress = Progress::start("fanout", move || {
            format!(
                "{} of {} published, {} deliveries, {} streams lost",
                sent_so_far.load(Ordering::Relaxed),
                args.count,
                c.events(),
                c.ended()
            )
        });
        for seq in 0..args.count {
            let due = started + Duration::from_secs_f64(seq as f64 / args.rate);
            tokio::time::sleep_until(due.into()).await;
            let t = Instant::now();
            let answer = publisher.publish(&dialer, &payload::encode(seq, payload::now_micros())).await;
            let rtt = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
            sent.fetch_add(1, Ordering::Relaxed);
            if let Some(resp) = accepted(answer, &mut errors) {
                published[seq as usize] = true;
                rtts.push(rtt);
                if let Some(m) = matched(&resp.body) {
                    matched_min = Some(matched_min.map_or(m, |x| x.min(m)));
                    matched_max = Some(matched_max.map_or(m, |x| x.max(m)));
                }
            }
            if seq >= 9 && rtts.is_empty() {
                break; // Ten failures in a row and no success: the endpoint is wrong.
            }
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let publishes_ok = rtts.len() as u64;
    let expected = open_streams * publishes_ok;
    let drained = fleet.wait_events(expected, Instant::now() + Duration::from_secs(args.drain_secs)).await;
    let cpu = meter.read()?;
    let phase_secs = started.elapsed().as_secs_f64();
    let mut result = fleet.close().await;
    if publishes_ok == 0 {
        bail!("no publish succeeded: {errors:?}");
    }
    let (mut missing, mut duplicated, mut out_of_order, mut unexpected, mut unparsable) = (0, 0, 0, 0, 0);
    for d in &result.deliveries {
        unparsable += d.unparsable;
        if let Some(seqs) = &d.seqs {
            missing += seqs.missing(&published);
            duplicated += seqs.duplicates;
            out_of_order += seqs.out_of_order;
            unexpected += seqs.unexpected;
        }
    }
    let received: u64 = result.deliveries.iter().map(|d| d.received).sum();
    let (mut parsed, mut arrived) = result.take_latencies();
    let latency = LatencySummary::from_micros(&mut parsed);
    let latency_arrival = h2_connections.is_none().then(|| LatencySummary::from_micros(&mut arrived));
    for (e, n) in result.errors {
        *errors.entry(e).or_default() += n;
    }
    Ok(FanoutReport {
        scenario: "fanout",
        target: args.target,
        streams_requested: args.streams,
        h2_connections,
        streams_opened: result.opened,
        streams_failed: result.failed,
        streams_lost: result.ended_early,
        rate_requested: args.rate,
        publishes_requested: args.count,
        publishes_ok,
        publishes_failed: sent.load(Ordering::Relaxed) - publishes_ok,
        publish_secs,
        publish_rate_achieved: sent.load(Ordering::Relaxed) as f64 / publish_secs.max(1e-9),
        publish_rtt: LatencySummary::from_micros(&mut rtts),
        matched_min,
        matched_max,
        deliveries_expected: expected,
        deliveries_received: received,
        deliveries_per_sec: received as f64 / phase_secs.max(1e-9),
        missing,
        duplicated,
        out_of_order,
        unexpected_seq: unexpected,
        unparsable,
        drained,
        latency,
        latency_arrival,
        cpu,
        server_pids: probe.pids().to_vec(),
        errors,
    })
}

/// `matched` from the gateway's `{"matched":N}` answer (Nchan answers otherwise).
fn matched(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body).ok()?.get("matched")?.as_u64()
}
