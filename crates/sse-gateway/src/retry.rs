//! Named `retry:` hints: every place that tells a client to come back later
//! says why, and the range its random delay is drawn from is stated here.
//!
//! The delay is random within the range so that clients told to come back
//! at the same moment (a drain, a broker outage) do not all return at once.

use std::time::Duration;

use bytes::Bytes;

/// Why a client is told to reconnect later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryHint {
    /// Its stream could not keep up and was closed.
    SlowConsumer,
    /// `MAX_CONNECTIONS` streams are open.
    MaxConnections,
    /// The RabbitMQ connection is down.
    BrokerDown,
    /// The gateway is draining (shutdown): its stream ends or is refused.
    Draining,
    /// The client's credentials expired: reconnect and authenticate again.
    Reauthenticate,
    /// An operator closed the stream (`/internal/close`).
    Closed,
    /// The backend's connect callback failed (no answer, timeout, 5xx).
    BackendFailure,
}

impl RetryHint {
    /// The delay range in milliseconds, `min..max`.
    pub(crate) fn range_ms(self) -> (u64, u64) {
        match self {
            Self::SlowConsumer => (5_000, 10_000),
            Self::MaxConnections => (5_000, 15_000),
            Self::BrokerDown => (2_000, 10_000),
            Self::Draining | Self::Reauthenticate | Self::Closed => (1_000, 5_000),
            Self::BackendFailure => (2_000, 10_000),
        }
    }

    /// The encoded `retry:` line with a random delay in the range.
    pub(crate) fn frame(self) -> Bytes {
        let (min, max) = self.range_ms();
        jittered(min, max)
    }
}

/// A random number in `min..max` (`min` when the range is empty): the one
/// source of jitter for hints and backoffs alike.
fn random_in(min: u64, max: u64) -> u64 {
    let span = max.saturating_sub(min).max(1);
    min + (uuid::Uuid::new_v4().as_u128() % u128::from(span)) as u64
}

/// A `retry:` line with a random delay in `min..max` ms.
pub(crate) fn jittered(min: u64, max: u64) -> Bytes {
    sse_wire::encode::retry(random_in(min, max))
}

/// `d` scaled by a random factor in `1 - spread ..= 1 + spread` (spread < 1),
/// so peers that failed together do not all retry at the same instant.
pub(crate) fn spread(d: Duration, spread: f64) -> Duration {
    let unit = random_in(0, 1001) as f64 / 1000.0;
    d.mul_f64(1.0 - spread + 2.0 * spread * unit)
}

/// The last frame of a stream an operator closed: `retry_ms` when given,
/// else a jittered [`RetryHint::Closed`].
pub(crate) fn close_hint(retry_ms: Option<u64>) -> impl Fn() -> Bytes {
    move || match retry_ms {
        Some(ms) => sse_wire::encode::retry(ms),
        None => RetryHint::Closed.frame(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_stays_within_its_bounds() {
        for _ in 0..200 {
            let d = spread(Duration::from_millis(1000), 0.5);
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1500), "{d:?}");
        }
    }

    #[test]
    fn hints_stay_in_their_range() {
        for hint in [
            RetryHint::SlowConsumer,
            RetryHint::MaxConnections,
            RetryHint::BrokerDown,
            RetryHint::Draining,
            RetryHint::Reauthenticate,
            RetryHint::Closed,
            RetryHint::BackendFailure,
        ] {
            let (min, max) = hint.range_ms();
            for _ in 0..50 {
                let frame = hint.frame();
                let text = std::str::from_utf8(&frame).unwrap();
                let ms: u64 = text.strip_prefix("retry: ").unwrap().trim_end().parse().unwrap();
                assert!((min..max).contains(&ms), "{hint:?}: {ms}");
            }
        }
    }
}
