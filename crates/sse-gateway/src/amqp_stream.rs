//! The cluster's event history in RabbitMQ (AMQP mode with
//! `HISTORY_SECONDS`): one durable **stream queue**, `<exchange>.history`,
//! bound to the exchange with `#`, so every event any backend or gateway
//! publishes is appended once, in one order, with an offset every instance
//! agrees on. That offset is the event's cursor (`id:`), valid on every
//! instance.
//!
//! Each gateway consumes the stream (not per-key queues): first from
//! `now - HISTORY_SECONDS`, so its in-memory history covers the retention
//! from the start, and after a broker outage from the offset after the last
//! one it saw, so events the broker confirmed meanwhile still arrive (or,
//! if the broker dropped them, every stream gets a `gap`). It knows it has
//! caught up when it reads back a marker it published itself; only then
//! does it take streams.
//!
//! Events that enter through a gateway (`/internal/publish`, `/internal/send`
//! to a token, the in-process handle) are published to the exchange as
//! ready-encoded frames (AMQP `type` `sse.frame`) and delivered when read
//! back from the stream, like everyone else's, so their cursors are the
//! cluster's too. The publisher learns when its own instance delivered
//! them (by `message_id`).
//!
//! This module holds the stream's vocabulary and mechanics; `amqp` runs the
//! connection and the consume loop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::oneshot;
use tracing::warn;
use uuid::Uuid;

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AmqpError {
    /// The broker connection is down.
    #[error("not connected to RabbitMQ")]
    Disconnected,
    /// The broker refused a publish (negative confirm).
    #[error("RabbitMQ refused the message")]
    Refused,
    /// The broker refused or failed an operation.
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
}

/// AMQP `type` of a frame published by a gateway (body: one encoded SSE event, or empty for a close only).
pub(crate) const FRAME: &str = "sse.frame";
/// AMQP `type` of the catch-up marker an instance publishes to itself.
pub(crate) const MARK: &str = "sse.mark";
/// Header of a frame meant for one token (a send).
const TOKEN: &str = "x-sse-token";
/// Header of a frame whose streams end after it.
const CLOSE: &str = "x-sse-close";
/// Header RabbitMQ puts on every message read from a stream.
const OFFSET: &str = "x-stream-offset";
/// Stream consumers must set a prefetch; this many unacknowledged messages.
const PREFETCH: u16 = 1000;
/// Stream segment size: retention drops whole segments, so smaller ones
/// keep the disk use close to `HISTORY_SECONDS`.
const SEGMENT_BYTES: i64 = 16 << 20;
/// How long a publisher waits for its own instance to read its event back.
const OWN_DELIVERY: Duration = Duration::from_secs(5);

/// The stream queue's name for `exchange`.
pub(crate) fn stream_name(exchange: &str) -> String {
    format!("{exchange}.history")
}

/// Declares the stream queue (or uses an existing one as it is) and binds it to everything.
pub(crate) async fn declare(
    conn: &Connection,
    ch: &Channel,
    exchange: &str,
    name: &str,
    retention: Duration,
) -> Result<(), AmqpError> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    args.insert("x-max-age".into(), AMQPValue::LongString(format!("{}s", retention.as_secs().max(1)).into()));
    args.insert("x-stream-max-segment-size-bytes".into(), AMQPValue::LongLongInt(SEGMENT_BYTES));
    let opts = QueueDeclareOptions { durable: true, ..Default::default() };
    if let Err(e) = ch.queue_declare(name.into(), opts, args).await {
        // Declared before with other arguments (another HISTORY_SECONDS): use it as it is.
        warn!(stream = name, error = %e, "history stream exists with other settings; using it as it is");
        let probe = conn.create_channel().await?;
        probe
            .queue_declare(
                name.into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        let _ = probe.close(200, "declared".into()).await;
    }
    ch.queue_bind(name.into(), exchange.into(), "#".into(), QueueBindOptions::default(), FieldTable::default()).await?;
    Ok(())
}

/// Where a consumer starts reading the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// The first message at or after `now - retention`.
    Since(Duration),
    /// This offset.
    Offset(u64),
}

/// Starts consuming the stream on `ch` (its own channel).
pub(crate) async fn consume(ch: &Channel, name: &str, start: Start) -> Result<lapin::Consumer, AmqpError> {
    ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let spec = match start {
        Start::Since(age) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            AMQPValue::Timestamp(now.saturating_sub(age).as_secs())
        }
        Start::Offset(o) => AMQPValue::LongLongInt(i64::try_from(o).unwrap_or(i64::MAX)),
    };
    let mut args = FieldTable::default();
    args.insert(OFFSET.into(), spec);
    Ok(ch.basic_consume(name.into(), "sse-gateway-history".into(), BasicConsumeOptions::default(), args).await?)
}

/// The stream offset of a delivery read from the stream.
pub(crate) fn offset(delivery: &lapin::message::Delivery) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref()?;
    let v = headers.inner().get(&ShortString::from(OFFSET))?;
    match v {
        AMQPValue::LongLongInt(o) => u64::try_from(*o).ok(),
        AMQPValue::LongUInt(o) => Some(u64::from(*o)),
        AMQPValue::LongInt(o) => u64::try_from(*o).ok(),
        _ => None,
    }
}

/// A gateway-published frame, read back: its target and whether it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameMeta {
    pub(crate) token: Option<Uuid>,
    pub(crate) close: bool,
}

/// The headers of a gateway-published frame.
pub(crate) fn frame_meta(delivery: &lapin::message::Delivery) -> FrameMeta {
    let headers = delivery.properties.headers().as_ref();
    let get = |k: &str| headers.and_then(|h| h.inner().get(&ShortString::from(k)));
    let token = get(TOKEN).and_then(|v| match v {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().and_then(|s| Uuid::try_parse(s).ok()),
        _ => None,
    });
    let close = matches!(get(CLOSE), Some(AMQPValue::Boolean(true)));
    FrameMeta { token, close }
}

/// True for one well-formed SSE event block (what a gateway publishes), or
/// an empty body (a close without an event): anything else could corrupt
/// the streams it reaches.
pub(crate) fn valid_frame(b: &[u8]) -> bool {
    if b.is_empty() {
        return true;
    }
    b.len() >= 2 && b.ends_with(b"\n\n") && !b.contains(&b'\r') && !b[..b.len() - 1].windows(2).any(|w| w == b"\n\n")
}

/// Publishes through the broker and waits for this instance to read the
/// events back, so the answer can say how many local streams got each.
#[derive(Debug, Default)]
pub(crate) struct Publisher {
    waiting: Mutex<HashMap<String, oneshot::Sender<usize>>>,
}

impl Publisher {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<usize>>> {
        // Inserts and removes cannot leave the map half-changed.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `frame` (empty: close only) to `key` and waits for the
    /// broker's confirm, then (bounded) for this instance to deliver it.
    /// Returns the local streams it reached (0 if the read-back is late).
    /// `on_channel` is dropped as soon as the message is on the channel
    /// (before the confirm), so publishes ordered by it keep their order on
    /// the wire and still await their confirms concurrently.
    pub(crate) async fn publish<G: Send>(
        &self,
        ch: &Channel,
        exchange: &str,
        key: &str,
        frame: &[u8],
        meta: FrameMeta,
        on_channel: G,
    ) -> Result<usize, AmqpError> {
        let id = Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.waiting().insert(id.clone(), tx);
        let mut headers = FieldTable::default();
        if let Some(t) = meta.token {
            headers.insert(TOKEN.into(), AMQPValue::LongString(LongString::from(t.to_string())));
        }
        if meta.close {
            headers.insert(CLOSE.into(), AMQPValue::Boolean(true));
        }
        let props = BasicProperties::default()
            .with_type(FRAME.into())
            .with_message_id(id.as_str().into())
            .with_headers(headers);
        let sent = ch.basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), frame, props).await;
        drop(on_channel);
        let confirmed = match sent {
            Ok(confirm) => confirm.await,
            Err(e) => Err(e),
        };
        match confirmed {
            Ok(Confirmation::Nack(_)) => {
                self.waiting().remove(&id);
                return Err(AmqpError::Refused);
            }
            Err(e) => {
                self.waiting().remove(&id);
                return Err(e.into());
            }
            Ok(_) => {}
        }
        match tokio::time::timeout(OWN_DELIVERY, rx).await {
            Ok(Ok(matched)) => Ok(matched),
            _ => {
                self.waiting().remove(&id);
                Ok(0)
            }
        }
    }

    /// Publishes the catch-up marker; returns its id.
    pub(crate) async fn mark(&self, ch: &Channel, exchange: &str, instance: &str) -> Result<String, AmqpError> {
        let id = Uuid::new_v4().to_string();
        let props = BasicProperties::default().with_type(MARK.into()).with_message_id(id.as_str().into());
        let key = format!("sse.mark.{instance}");
        match ch
            .basic_publish(exchange.into(), key.as_str().into(), BasicPublishOptions::default(), b"", props)
            .await?
            .await?
        {
            Confirmation::Nack(_) => Err(AmqpError::Refused),
            _ => Ok(id),
        }
    }

    /// This instance delivered the event published as `message_id`.
    pub(crate) fn delivered(&self, message_id: &str, matched: usize) {
        if let Some(tx) = self.waiting().remove(message_id) {
            let _ = tx.send(matched);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_event_blocks_pass() {
        assert!(valid_frame(b""));
        assert!(valid_frame(b"data: x\n\n"));
        assert!(valid_frame(b"data: a\ndata: b\n\n"));
        assert!(!valid_frame(b"data: x\n"));
        assert!(!valid_frame(b"data: x\n\ndata: y\n\n"));
        assert!(!valid_frame(b"data: x\r\n\n"));
        assert!(!valid_frame(b"\n"));
    }
}
