//! Latency summaries: exact percentiles over every recorded sample.
//!
//! Samples are microseconds in `u32` (71 minutes at most), kept in full and
//! sorted once at the end: 7.5 million deliveries cost 30 MB, which is
//! cheaper and simpler than a histogram with its own error bounds.
//!
//! The exception is a run too long to keep every sample (`soak`: 10,000
//! streams × 10 events/s is 360 million deliveries an hour): there the
//! streams record into an [`AtomicHistogram`], log-linear with 1,024
//! buckets per power of two (exact below 2,048 µs, within 0.05 % above),
//! which is emptied into a [`Histogram`] per sample window.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Percentiles of one set of latencies, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises microsecond samples (sorted in place).
    pub fn from_micros(samples: &mut [u32]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let sum: u64 = samples.iter().map(|&s| u64::from(s)).sum();
        let ms = |us: u32| f64::from(us) / 1000.0;
        Self {
            count: samples.len() as u64,
            mean_ms: sum as f64 / samples.len() as f64 / 1000.0,
            p50_ms: ms(nearest_rank(samples, 50.0)),
            p90_ms: ms(nearest_rank(samples, 90.0)),
            p99_ms: ms(nearest_rank(samples, 99.0)),
            max_ms: ms(samples[samples.len() - 1]),
        }
    }

    /// One line for the human summary.
    pub fn line(&self) -> String {
        format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms, mean {:.2} ms ({} samples)",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms, self.mean_ms, self.count
        )
    }
}

/// Buckets per power of two above [`EXACT_BELOW`] (10 bits of mantissa).
const SUB_BUCKETS: usize = 1024;
/// Values under this many microseconds have a bucket each.
const EXACT_BELOW: usize = 2 * SUB_BUCKETS;
/// Buckets for the whole `u32` range: the exact ones, then 1,024 for each
/// power of two from 2^11 to 2^31.
const BUCKETS: usize = EXACT_BELOW + 21 * SUB_BUCKETS;

/// The bucket of `us` microseconds.
fn bucket_of(us: u32) -> usize {
    let v = us as usize;
    if v < EXACT_BELOW {
        return v;
    }
    let msb = 31 - us.leading_zeros() as usize; // 11..=31
    let shift = msb - 10; // v >> shift is in 1024..2048
    EXACT_BELOW + (shift - 1) * SUB_BUCKETS + ((v >> shift) - SUB_BUCKETS)
}

/// The smallest value and the width of bucket `i`.
fn bucket_range(i: usize) -> (u64, u64) {
    if i < EXACT_BELOW {
        return (i as u64, 1);
    }
    let j = i - EXACT_BELOW;
    let shift = j / SUB_BUCKETS + 1;
    let mantissa = (j % SUB_BUCKETS + SUB_BUCKETS) as u64;
    (mantissa << shift, 1 << shift)
}

/// Latency counts that many tasks record into at once (relaxed atomics:
/// a sample recorded while [`AtomicHistogram::take`] runs lands in this
/// window or the next, never nowhere).
pub struct AtomicHistogram {
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicHistogram").field("sum_us", &self.sum_us).finish_non_exhaustive()
    }
}

impl AtomicHistogram {
    /// Counts one sample of `us` microseconds.
    pub fn record(&self, us: u32) {
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(u64::from(us), Ordering::Relaxed);
        self.max_us.fetch_max(u64::from(us), Ordering::Relaxed);
    }

    /// Everything recorded since the last `take`, leaving it empty.
    pub fn take(&self) -> Histogram {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.swap(0, Ordering::Relaxed)).collect();
        Histogram {
            count: counts.iter().sum(),
            counts,
            sum_us: self.sum_us.swap(0, Ordering::Relaxed),
            max_us: self.max_us.swap(0, Ordering::Relaxed),
        }
    }
}

/// A window's (or a whole run's) latency counts, from [`AtomicHistogram::take`].
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum_us: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS], count: 0, sum_us: 0, max_us: 0 }
    }
}

impl Histogram {
    /// Adds `other`'s samples to these.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum_us += other.sum_us;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Nearest-rank percentiles, each the middle of its bucket (at most the
    /// largest sample); the mean and the maximum are exact.
    pub fn summary(&self) -> LatencySummary {
        if self.count == 0 {
            return LatencySummary::default();
        }
        let ms = |us: f64| us / 1000.0;
        let percentile = |p: f64| {
            let rank = (((p / 100.0) * self.count as f64).ceil() as u64).clamp(1, self.count);
            let mut seen = 0;
            for (i, &c) in self.counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    let (low, width) = bucket_range(i);
                    let mid = low as f64 + (width - 1) as f64 / 2.0;
                    return ms(mid.min(self.max_us as f64));
                }
            }
            ms(self.max_us as f64)
        };
        LatencySummary {
            count: self.count,
            mean_ms: ms(self.sum_us as f64 / self.count as f64),
            p50_ms: percentile(50.0),
            p90_ms: percentile(90.0),
            p99_ms: percentile(99.0),
            max_ms: ms(self.max_us as f64),
        }
    }
}

/// The nearest-rank percentile of sorted, non-empty samples.
fn nearest_rank(sorted: &[u32], p: f64) -> u32 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Microseconds between `from` and `to`, clamped to the `u32` range.
pub fn micros_between(from: u64, to: u64) -> u32 {
    u32::try_from(to.saturating_sub(from)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u32> = (1..=100).rev().map(|x| x * 1000).collect();
        let s = LatencySummary::from_micros(&mut v);
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p90_ms, 90.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(s.mean_ms, 50.5);
    }

    #[test]
    fn buckets_cover_u32_without_gaps_or_overlaps() {
        for i in 0..BUCKETS - 1 {
            let (low, width) = bucket_range(i);
            assert_eq!(bucket_range(i + 1).0, low + width, "bucket {i} ends where {} starts", i + 1);
        }
        let (low, width) = bucket_range(BUCKETS - 1);
        assert_eq!(low + width - 1, u64::from(u32::MAX));
        for v in [0, 1, 2047, 2048, 2049, 4095, 4096, 123_456, u32::MAX - 1, u32::MAX] {
            let (low, width) = bucket_range(bucket_of(v));
            assert!(low <= u64::from(v) && u64::from(v) < low + width, "{v} in [{low}, +{width})");
        }
    }

    #[test]
    fn histogram_percentiles_match_exact_ones_within_the_bucket_width() {
        // 1 ms .. 1 s, spread unevenly (squares), in a scrambled order.
        let mut samples: Vec<u32> = (1..=1000u32).map(|k| k * k).collect();
        samples.reverse();
        let (first, second) = (AtomicHistogram::default(), AtomicHistogram::default());
        for (i, &s) in samples.iter().enumerate() {
            if i % 2 == 0 { first.record(s) } else { second.record(s) }
        }
        let mut merged = first.take();
        merged.merge(&second.take());
        let approx = merged.summary();
        let exact = LatencySummary::from_micros(&mut samples);
        assert_eq!(approx.count, exact.count);
        assert_eq!((approx.mean_ms, approx.max_ms), (exact.mean_ms, exact.max_ms));
        for (a, e) in [(approx.p50_ms, exact.p50_ms), (approx.p90_ms, exact.p90_ms), (approx.p99_ms, exact.p99_ms)] {
            assert!((a - e).abs() <= e / 1024.0, "histogram {a} ms against exact {e} ms");
        }
        assert_eq!(first.take().count, 0, "take empties the histogram");
        assert_eq!(Histogram::default().summary().count, 0);
    }

    #[test]
    fn one_sample_and_none() {
        let s = LatencySummary::from_micros(&mut [1500]);
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (1.5, 1.5, 1.5));
        assert_eq!(LatencySummary::from_micros(&mut []).count, 0);
    }
}
