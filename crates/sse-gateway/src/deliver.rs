//! The event path's entry points, shared by every ingress (the HTTP API,
//! RabbitMQ and the in-process [`crate::GatewayHandle`]): resolve through the
//! router, count, and report in one vocabulary.

use bytes::Bytes;

use crate::events::{Event, Ingress};
use crate::metrics::Metrics;
use crate::router::{Published, Router, SendOutcome};

/// A send was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// Queued on the open stream.
    Ok,
    /// Held until the connect decision, then written before `ready`.
    Buffered,
}

impl SendStatus {
    /// The `status` field of the HTTP answer.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Buffered => "buffered",
        }
    }
}

/// A send or publish was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// No stream with that token.
    #[error("token not found")]
    NotFound,
    /// The event cannot be written (e.g. a name with a line break).
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// The stream is still being decided and its buffer is full.
    #[error("too many events buffered for a stream whose connect decision is pending")]
    BufferFull,
    /// The stream could not take the event and was closed.
    #[error("stream write failed; the stream was closed")]
    WriteFailed,
    /// RabbitMQ mode with history: the broker is down, so the event cannot
    /// enter the cluster's history.
    #[error("RabbitMQ is unavailable")]
    BrokerUnavailable,
}

/// Sends to one token.
pub(crate) fn send(
    router: &Router,
    metrics: &Metrics,
    token: &str,
    frame: Option<Bytes>,
    close: bool,
) -> Result<SendStatus, DeliveryError> {
    let token = parse_token(token).ok_or(DeliveryError::NotFound)?;
    let had_frame = frame.is_some();
    match router.send(token, frame, close) {
        SendOutcome::Delivered => {
            if had_frame {
                metrics.emit(Event::Published { ingress: Ingress::Send, streams: 1 });
            }
            Ok(SendStatus::Ok)
        }
        SendOutcome::Buffered => Ok(SendStatus::Buffered),
        SendOutcome::NotFound => Err(DeliveryError::NotFound),
        SendOutcome::BufferFull => Err(DeliveryError::BufferFull),
        SendOutcome::Overflow(peer) => {
            metrics.emit(Event::SlowConsumersClosed { count: 1, first: Some((token, peer)) });
            Err(DeliveryError::WriteFailed)
        }
        SendOutcome::WriteFailed => Err(DeliveryError::WriteFailed),
    }
}

/// Publishes to every stream bound to `key`; returns how many matched.
pub(crate) fn publish(
    router: &Router,
    metrics: &Metrics,
    ingress: Ingress,
    key: &str,
    frame: Option<&Bytes>,
    close: bool,
) -> usize {
    let result = router.publish(key, frame, close);
    report(metrics, ingress, key, &result, frame.is_some());
    result.matched
}

/// Counts (and logs) what a publish did.
pub(crate) fn report(metrics: &Metrics, ingress: Ingress, key: &str, result: &Published, event: bool) {
    if event {
        metrics.emit(Event::Published { ingress, streams: result.matched - result.overflowed });
    }
    if result.overflowed > 0 {
        metrics.emit(Event::SlowConsumersClosed { count: result.overflowed, first: result.first_overflowed });
    }
    if result.held + result.hold_dropped > 0 {
        metrics.emit(Event::Held { key, held: result.held, dropped: result.hold_dropped });
    }
}

/// Tokens are lower-case hyphenated UUIDs, compared exactly (as SSEGateway's map keys are).
pub(crate) fn parse_token(s: &str) -> Option<uuid::Uuid> {
    let u = uuid::Uuid::try_parse(s).ok()?;
    let mut buf = uuid::Uuid::encode_buffer();
    (u.hyphenated().encode_lower(&mut buf) == s).then_some(u)
}
