//! Scenario `soak`: N streams held for D minutes under a steady broadcast
//! rate R. The questions are the slow ones: does the server's memory stay
//! flat, does every stream still get every event in order after thousands
//! of them, and does latency drift.
//!
//! Every `--sample-secs` from the first publish (and once more after the
//! drain) one sample: the server's RSS, the server's, the load generator's
//! and the machine's CPU over the window since the previous sample, and the
//! latency of the events received in that window. Latencies go into one
//! shared histogram per fleet (see `stats`) that each sample empties: at the
//! defaults a 30-minute run is 180 million deliveries, too many to keep one
//! by one as `fanout` does. The sequence check (one bit per event per
//! stream) is kept whole: 22 MB for 10,000 streams × 18,000 events.
//!
//! Publishing stops when the D minutes are over even if the server took
//! fewer than R × D broadcasts by then (Nchan answers a publish only after
//! writing it to every subscriber, about 3 a second to 10,000 streams on
//! this machine): the samples cover the D minutes either way, and the
//! broadcasts not sent are in the report.
//!
//! At the end: the RSS slope, a least-squares line through the samples' RSS
//! against time, in bytes per minute and per stream per hour, over all the
//! samples and over the second half alone (after any warm-up: allocator
//! arenas, buffers that grow to their working size); first, last and peak
//! RSS; CPU over the whole publish phase; latency overall; losses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::client::{Dialer, Endpoint};
use crate::fleet::{Counters, Fleet, FleetSpec, SharedLatencies};
use crate::payload;
use crate::proc::{PhaseCpu, PhaseMeter, ProcessProbe};
use crate::publisher::{Publisher, accepted};
use crate::report::Report;
use crate::stats::{Histogram, LatencySummary};
use crate::target::Target;

/// Options of `sse-bench soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
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
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    /// Broadcasts per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Minutes of publishing (fractions allowed).
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    pub sample_secs: u64,
    /// Server process to measure (repeat for several).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Seconds to wait after the last publish for deliveries still in flight.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
    /// Streams being opened at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
}

/// One reading, every `--sample-secs` from the first publish, and one after the drain.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    /// Seconds since the first publish.
    pub t_secs: f64,
    /// The server's resident memory (`None` without `--server-pid`).
    pub rss_bytes: Option<u64>,
    /// CPU over the window since the previous sample (`None` for the first).
    pub cpu: Option<PhaseCpu>,
    /// Broadcasts sent so far.
    pub published: u64,
    /// Benchmark events received so far, over all streams.
    pub deliveries: u64,
    /// Streams the server ended or cut so far.
    pub streams_lost: u64,
    /// Latency of the events received in the window (parsed by the client).
    pub latency: LatencySummary,
    /// The same events, to the kernel's receive timestamp.
    pub latency_arrival: LatencySummary,
}

/// A least-squares line `y = slope · x + intercept`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineFit {
    pub slope: f64,
    pub intercept: f64,
    /// Share of y's variance the line explains (`None` if y does not vary).
    pub r_squared: Option<f64>,
}

/// The least-squares line through `points` (x, y); `None` with fewer than
/// two points or when every x is the same.
pub fn least_squares(points: &[(f64, f64)]) -> Option<LineFit> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for &(x, y) in points {
        let (dx, dy) = (x - mean_x, y - mean_y);
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r_squared = (syy > 0.0).then(|| (sxy * sxy / (sxx * syy)).clamp(0.0, 1.0));
    Some(LineFit { slope, intercept: mean_y - slope * mean_x, r_squared })
}

/// How fast the server's RSS grew over some of the samples.
#[derive(Debug, Clone, Serialize)]
pub struct RssSlope {
    /// The samples fitted: first and last time, and how many.
    pub from_secs: f64,
    pub to_secs: f64,
    pub samples: usize,
    pub bytes_per_min: f64,
    /// `bytes_per_min` × 60 / streams open when publishing started.
    pub bytes_per_stream_per_hour: Option<f64>,
    /// How well a straight line describes the samples (1: exactly; near 0:
    /// no trend, the slope is noise).
    pub r_squared: Option<f64>,
}

/// The RSS slope over the samples at or after `from_secs` (`None`: fewer
/// than two such samples with an RSS, or all at one time).
fn rss_slope(samples: &[SoakSample], from_secs: f64, streams: u64) -> Option<RssSlope> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t_secs >= from_secs)
        .filter_map(|s| Some((s.t_secs, s.rss_bytes? as f64)))
        .collect();
    let fit = least_squares(&points)?;
    let bytes_per_min = fit.slope * 60.0;
    Some(RssSlope {
        from_secs: points[0].0,
        to_secs: points[points.len() - 1].0,
        samples: points.len(),
        bytes_per_min,
        bytes_per_stream_per_hour: (streams > 0).then(|| bytes_per_min * 60.0 / streams as f64),
        r_squared: fit.r_squared,
    })
}

/// Result of `soak`.
#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub scenario: &'static str,
    pub target: Target,
    pub streams_requested: usize,
    pub streams_opened: u64,
    pub streams_failed: u64,
    /// Streams the server ended or cut before the end: must be 0.
    pub streams_lost: u64,
    pub minutes: f64,
    pub rate_requested: f64,
    pub sample_secs: u64,
    pub publishes_requested: u64,
    pub publishes_ok: u64,
    pub publishes_failed: u64,
    /// Broadcasts not sent when the minutes were over (the server answered
    /// publishes too slowly).
    pub publishes_not_sent: u64,
    pub publish_secs: f64,
    pub publish_rate_achieved: f64,
    /// Round trip of the publish request itself.
    pub publish_rtt: LatencySummary,
    /// Open streams × successful publishes.
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected_seq: u64,
    pub unparsable: u64,
    /// Streams that opened but did not get every published event exactly
    /// once and in order.
    pub streams_incomplete: u64,
    /// True if every expected delivery arrived before the drain deadline.
    pub drained: bool,
    /// Publish timestamp to the client having parsed the event, every event
    /// of every stream (histogram percentiles, within 0.05 %).
    pub latency: LatencySummary,
    /// Publish timestamp to the kernel's receive timestamp.
    pub latency_arrival: LatencySummary,
    /// The server before the first stream was opened.
    pub rss_before_open_bytes: Option<u64>,
    /// The first sample (streams open, first publish), the last (after the drain), the largest.
    pub rss_first_bytes: Option<u64>,
    pub rss_last_bytes: Option<u64>,
    pub rss_peak_bytes: Option<u64>,
    /// Over every sample.
    pub rss_slope: Option<RssSlope>,
    /// Over the samples of the second half of the run.
    pub rss_slope_second_half: Option<RssSlope>,
    /// From the first publish to the end of the drain.
    pub cpu: PhaseCpu,
    pub samples: Vec<SoakSample>,
    pub server_pids: Vec<u32>,
    pub errors: BTreeMap<String, u64>,
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".to_owned(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

fn slope_line(label: &str, slope: Option<&RssSlope>) -> String {
    match slope {
        Some(s) => format!(
            "\nRSS slope ({label}, {} samples, {:.0}-{:.0} s): {:.0} bytes/min, {} bytes per stream per hour, r² {}",
            s.samples,
            s.from_secs,
            s.to_secs,
            s.bytes_per_min,
            s.bytes_per_stream_per_hour.map_or("-".to_owned(), |b| format!("{b:.1}")),
            s.r_squared.map_or("-".to_owned(), |r| format!("{r:.2}")),
        ),
        None => format!("\nRSS slope ({label}): not enough samples"),
    }
}

impl Report for SoakReport {
    fn summary(&self) -> String {
        let mut s = format!(
            "soak ({:?}): {} of {} streams open ({} failed, {} lost), {} min at {}/s\n\
             publishes: {} ok, {} failed, {} not sent of {}, {:.2}/s achieved, publish rtt {}\n\
             deliveries: {} of {} expected; missing {}, duplicated {}, out of order {}, unexpected {}, unparsable {}; \
             {} streams incomplete{}\n\
             latency (parsed by the client): {}\n\
             latency (arrived in the client socket): {}\n\
             server RSS: {} before the streams, {} first, {} last, {} peak",
            self.target,
            self.streams_opened,
            self.streams_requested,
            self.streams_failed,
            self.streams_lost,
            self.minutes,
            self.rate_requested,
            self.publishes_ok,
            self.publishes_failed,
            self.publishes_not_sent,
            self.publishes_requested,
            self.publish_rate_achieved,
            self.publish_rtt.line(),
            self.deliveries_received,
            self.deliveries_expected,
            self.missing,
            self.duplicated,
            self.out_of_order,
            self.unexpected_seq,
            self.unparsable,
            self.streams_incomplete,
            if self.drained { "" } else { " (not drained)" },
            self.latency.line(),
            self.latency_arrival.line(),
            mib(self.rss_before_open_bytes),
            mib(self.rss_first_bytes),
            mib(self.rss_last_bytes),
            mib(self.rss_peak_bytes),
        );
        s.push_str(&slope_line("all", self.rss_slope.as_ref()));
        s.push_str(&slope_line("second half", self.rss_slope_second_half.as_ref()));
        s.push_str(&self.cpu.lines());
        s.push_str("\n     t | server RSS | server CPU | window p50 | window p99 | window max");
        for w in &self.samples {
            let server_cpu = w.cpu.as_ref().and_then(|c| c.server.as_ref());
            let ms = |v: f64| if w.latency.count == 0 { "-".to_owned() } else { format!("{v:.2} ms") };
            s.push_str(&format!(
                "\n{:>5.0}s | {:>10} | {:>10} | {:>10} | {:>10} | {:>10}",
                w.t_secs,
                mib(w.rss_bytes),
                server_cpu.map_or("-".to_owned(), |c| format!("{:.1} %", c.percent_of_one_core)),
                ms(w.latency.p50_ms),
                ms(w.latency.p99_ms),
                ms(w.latency.max_ms),
            ));
        }
        for (e, n) in &self.errors {
            s.push_str(&format!("\n  {n} × {e}"));
        }
        s
    }
}

/// Runs `soak`.
pub async fn run(args: SoakArgs, dialer: Arc<Dialer>) -> anyhow::Result<SoakReport> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a positive number");
    }
    if !(args.minutes > 0.0 && args.minutes.is_finite()) {
        bail!("--minutes must be a positive number");
    }
    if args.sample_secs == 0 {
        bail!("--sample-secs must be at least 1");
    }
    let count = ((args.rate * args.minutes * 60.0).round() as u64).max(1);
    let count_usize = usize::try_from(count)?;
    let probe = ProcessProbe::new(args.server_pids.clone());
    let mut publisher = Publisher::connect(&args.publish, &args.exchange, args.target).await?;
    let endpoints: Vec<Endpoint> =
        args.url.split(',').map(|u| Endpoint::parse(u.trim())).collect::<anyhow::Result<_>>()?;
    let rss_before_open = probe.rss_kb()?.map(|kb| kb * 1024);
    let latencies = Arc::new(SharedLatencies::default());
    let spec = FleetSpec {
        endpoints,
        target: args.target,
        streams: args.streams,
        connect_concurrency: args.connect_concurrency,
        ready_timeout: Duration::from_secs(30),
        expected_seqs: Some(count_usize),
        h2: None,
        shared_latencies: Some(Arc::clone(&latencies)),
    };
    let fleet = Fleet::launch(spec, Arc::clone(&dialer));
    fleet.wait_open().await;
    let counters = fleet.counters();
    if counters.opened() == 0 {
        let result = fleet.close().await;
        bail!("no stream opened; errors: {:?}", result.errors);
    }
    // Let the opening burst's tail (callbacks, logs) settle before the first sample.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open_streams = counters.opened() - counters.ended();
    // Nothing is published yet: whatever was counted (nothing, normally) is not the soak's.
    latencies.parsed.take();
    latencies.arrived.take();

    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut published = vec![false; count_usize];
    let mut rtts = Vec::with_capacity(count_usize);
    let sent = Arc::new(AtomicU64::new(0));
    let meter = PhaseMeter::start(&probe)?;
    let started = Instant::now();
    let stop = CancellationToken::new();
    let sampler = tokio::spawn(sample(Sampler {
        probe: probe.clone(),
        counters: Arc::clone(&counters),
        latencies: Arc::clone(&latencies),
        sent: Arc::clone(&sent),
        count,
        every: Duration::from_secs(args.sample_secs),
        started,
        stop: stop.clone(),
    }));
    let end = started + Duration::from_secs_f64(args.minutes * 60.0);
    for seq in 0..count {
        let due = started + Duration::from_secs_f64(seq as f64 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        if Instant::now() >= end {
            break;
        }
        let t = Instant::now();
        let answer = publisher.publish(&dialer, &payload::encode(seq, payload::now_micros())).await;
        let rtt = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
        sent.fetch_add(1, Ordering::Relaxed);
        if accepted(answer, &mut errors).is_some() {
            published[seq as usize] = true;
            rtts.push(rtt);
        }
        if seq >= 9 && rtts.is_empty() {
            break; // Ten failures in a row and no success: the endpoint is wrong.
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let publishes_ok = rtts.len() as u64;
    let expected = open_streams * publishes_ok;
    let drained = fleet.wait_events(expected, Instant::now() + Duration::from_secs(args.drain_secs)).await;
    let cpu = meter.read()?;
    stop.cancel();
    let (samples, parsed, arrived) = sampler.await.context("the sampler")??;
    let result = fleet.close().await;
    if publishes_ok == 0 {
        bail!("no publish succeeded: {errors:?}");
    }
    let (mut missing, mut duplicated, mut out_of_order, mut unexpected, mut unparsable, mut incomplete) =
        (0, 0, 0, 0, 0, 0);
    for d in &result.deliveries {
        unparsable += d.unparsable;
        if let Some(seqs) = &d.seqs {
            let m = seqs.missing(&published);
            missing += m;
            duplicated += seqs.duplicates;
            out_of_order += seqs.out_of_order;
            unexpected += seqs.unexpected;
            incomplete += u64::from(m + seqs.duplicates + seqs.out_of_order + seqs.unexpected > 0);
        }
    }
    let received: u64 = result.deliveries.iter().map(|d| d.received).sum();
    for (e, n) in result.errors {
        *errors.entry(e).or_default() += n;
    }
    let rss = |s: &SoakSample| s.rss_bytes;
    let last_t = samples.last().map_or(0.0, |s| s.t_secs);
    Ok(SoakReport {
        scenario: "soak",
        target: args.target,
        streams_requested: args.streams,
        streams_opened: result.opened,
        streams_failed: result.failed,
        streams_lost: result.ended_early,
        minutes: args.minutes,
        rate_requested: args.rate,
        sample_secs: args.sample_secs,
        publishes_requested: count,
        publishes_ok,
        publishes_failed: sent.load(Ordering::Relaxed) - publishes_ok,
        publishes_not_sent: count - sent.load(Ordering::Relaxed),
        publish_secs,
        publish_rate_achieved: sent.load(Ordering::Relaxed) as f64 / publish_secs.max(1e-9),
        publish_rtt: LatencySummary::from_micros(&mut rtts),
        deliveries_expected: expected,
        deliveries_received: received,
        missing,
        duplicated,
        out_of_order,
        unexpected_seq: unexpected,
        unparsable,
        streams_incomplete: incomplete,
        drained,
        latency: parsed.summary(),
        latency_arrival: arrived.summary(),
        rss_before_open_bytes: rss_before_open,
        rss_first_bytes: samples.first().and_then(rss),
        rss_last_bytes: samples.last().and_then(rss),
        rss_peak_bytes: samples.iter().filter_map(rss).max(),
        rss_slope: rss_slope(&samples, 0.0, open_streams),
        rss_slope_second_half: rss_slope(&samples, last_t / 2.0, open_streams),
        cpu,
        samples,
        server_pids: probe.pids().to_vec(),
        errors,
    })
}

struct Sampler {
    probe: ProcessProbe,
    counters: Arc<Counters>,
    latencies: Arc<SharedLatencies>,
    sent: Arc<AtomicU64>,
    count: u64,
    every: Duration,
    started: Instant,
    stop: CancellationToken,
}

/// One sample at once, then one every `every` until stopped, and one more
/// then; also the latencies of the whole run (parsed, arrived). Prints one
/// progress line per sample.
async fn sample(s: Sampler) -> anyhow::Result<(Vec<SoakSample>, Histogram, Histogram)> {
    let mut samples = Vec::new();
    let (mut parsed_all, mut arrived_all) = (Histogram::default(), Histogram::default());
    let mut meter: Option<PhaseMeter> = None;
    let mut tick = tokio::time::interval(s.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            () = s.stop.cancelled() => true,
        };
        let cpu = meter.as_ref().map(PhaseMeter::read).transpose()?;
        meter = Some(PhaseMeter::start(&s.probe)?);
        let (parsed, arrived) = (s.latencies.parsed.take(), s.latencies.arrived.take());
        parsed_all.merge(&parsed);
        arrived_all.merge(&arrived);
        let sample = SoakSample {
            t_secs: s.started.elapsed().as_secs_f64(),
            rss_bytes: s.probe.rss_kb()?.map(|kb| kb * 1024),
            cpu,
            published: s.sent.load(Ordering::Relaxed),
            deliveries: s.counters.events(),
            streams_lost: s.counters.ended(),
            latency: parsed.summary(),
            latency_arrival: arrived.summary(),
        };
        eprintln!(
            "[soak {:>6.0}s] {} of {} published, {} deliveries, {} streams lost, server RSS {}, window p99 {:.2} ms",
            sample.t_secs,
            sample.published,
            s.count,
            sample.deliveries,
            sample.streams_lost,
            mib(sample.rss_bytes),
            sample.latency.p99_ms
        );
        samples.push(sample);
        if last {
            return Ok((samples, parsed_all, arrived_all));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_recovers_an_exact_line() {
        let points: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i) * 10.0, 5.0 + 3.0 * f64::from(i) * 10.0)).collect();
        let fit = least_squares(&points).expect("a line");
        assert!((fit.slope - 3.0).abs() < 1e-12, "{fit:?}");
        assert!((fit.intercept - 5.0).abs() < 1e-9, "{fit:?}");
        assert!((fit.r_squared.expect("y varies") - 1.0).abs() < 1e-12);
    }

    #[test]
    fn least_squares_of_noise_around_a_line() {
        // y = 2x + 1 with residuals +1, -1, +1, -1: they sum to 0 but lean
        // against x (Σ residual·(x - x̄) = -2), so with Sxx = 5 the fit is
        // 2 - 2/5 = 1.6; Sxy = 8, Syy = 16, r² = 8² / (5 · 16) = 0.8.
        let points = [(0.0, 2.0), (1.0, 2.0), (2.0, 6.0), (3.0, 6.0)];
        let fit = least_squares(&points).expect("a line");
        assert!((fit.slope - 1.6).abs() < 1e-12, "{fit:?}");
        assert!((fit.intercept - 1.6).abs() < 1e-12, "{fit:?}");
        let r2 = fit.r_squared.expect("y varies");
        assert!((r2 - 0.8).abs() < 1e-12, "{r2}");
    }

    #[test]
    fn least_squares_needs_two_distinct_times() {
        assert_eq!(least_squares(&[]), None);
        assert_eq!(least_squares(&[(1.0, 5.0)]), None);
        assert_eq!(least_squares(&[(1.0, 5.0), (1.0, 7.0)]), None);
        let flat = least_squares(&[(0.0, 7.0), (10.0, 7.0), (20.0, 7.0)]).expect("a line");
        assert_eq!((flat.slope, flat.r_squared), (0.0, None));
    }

    fn sample_at(t_secs: f64, rss_bytes: Option<u64>) -> SoakSample {
        SoakSample {
            t_secs,
            rss_bytes,
            cpu: None,
            published: 0,
            deliveries: 0,
            streams_lost: 0,
            latency: LatencySummary::default(),
            latency_arrival: LatencySummary::default(),
        }
    }

    #[test]
    fn rss_slope_is_per_minute_and_per_stream_hour() {
        // 1 MiB at first, then 600 bytes a second: 36,000 bytes/min, for
        // 1,000 streams 2,160 bytes per stream per hour.
        let samples: Vec<SoakSample> =
            (0..=6).map(|i| sample_at(f64::from(i) * 10.0, Some((1 << 20) + 6000 * i as u64))).collect();
        let slope = rss_slope(&samples, 0.0, 1000).expect("a slope");
        assert_eq!((slope.samples, slope.from_secs, slope.to_secs), (7, 0.0, 60.0));
        assert!((slope.bytes_per_min - 36_000.0).abs() < 1e-6, "{slope:?}");
        assert!((slope.bytes_per_stream_per_hour.expect("streams") - 2160.0).abs() < 1e-6);
        let half = rss_slope(&samples, 30.0, 1000).expect("a slope");
        assert_eq!((half.samples, half.from_secs), (4, 30.0));
    }

    #[test]
    fn rss_slope_skips_samples_without_rss_and_warm_up_shows_in_the_second_half() {
        // Grows for the first 30 s, then flat; one sample without a reading.
        let rss = [100, 200, 300, 400, 400, 400, 400];
        let mut samples: Vec<SoakSample> =
            rss.iter().enumerate().map(|(i, &r)| sample_at(i as f64 * 10.0, Some(r))).collect();
        samples.push(sample_at(70.0, None));
        let all = rss_slope(&samples, 0.0, 0).expect("a slope");
        assert_eq!(all.samples, 7);
        assert!(all.bytes_per_min > 0.0);
        assert_eq!(all.bytes_per_stream_per_hour, None, "no streams, no per-stream figure");
        let second_half = rss_slope(&samples, 35.0, 10).expect("a slope");
        assert_eq!((second_half.bytes_per_min, second_half.samples), (0.0, 3));
        assert_eq!(rss_slope(&[sample_at(0.0, None)], 0.0, 10).map(|s| s.samples), None);
    }
}
