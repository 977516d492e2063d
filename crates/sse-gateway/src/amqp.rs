//! The RabbitMQ ingress: one queue per gateway instance, bound to the union of
//! its live streams' routing keys, demultiplexed by the router.
//!
//! * Backends publish `{"event"|"event_name": "<name>", "data": "<string>"}`
//!   to the topic exchange (`sse.events`, or `<prefix>.sse.events`) with a
//!   routing key; each message is handed to `Router::publish` for that key,
//!   encoded once, exactly like `/internal/publish`. Anything else is rejected
//!   without requeue and counted.
//! * The instance queue is exclusive (it lives as long as this gateway's
//!   connection), so the broker holds one queue per instance, never one per
//!   stream. A key is bound when its first stream (or hold) needs it and
//!   unbound when its last one is gone; [`Amqp::acquire`] returns only once
//!   the binding is in place, so `ready` is written strictly after it.
//! * When the connection drops: `/readyz` turns 503, new streams get a
//!   `retry:` hint, and the run loop reconnects with jittered exponential
//!   backoff (1 s doubling to 5 s), re-declares, re-binds every needed key, resumes
//!   consuming and writes `ready` again on every stream.
//!
//! Bind and unbind calls are serialised by one async mutex, which also owns
//! the reference counts, so a key can never be unbound while a stream that
//! needs it is being set up.
//!
//! Cluster-wide admin close (extension): `/internal/close` by key publishes
//! a control message (AMQP `type` `sse.close`) to the exchange with that
//! routing key, so it reaches exactly the instances with streams bound to
//! the key. Each closes its streams and replies (`sse.close.reply`, to the
//! asker's queue through the default exchange) with its count; the asker
//! sums the replies that arrive within a short window. Event messages from
//! backends carry no such type and are unaffected.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use tokio_util::sync::CancellationToken;

use crate::amqp_stream::{self, Publisher, Start};
use crate::config::AmqpConfig;
use crate::deliver;
use crate::events::{Event, Ingress};
use crate::metrics::Metrics;
use crate::router::Router;

pub(crate) use crate::amqp_stream::AmqpError;

/// The reconnect delay doubles from 1 s up to this, each ±25 %: a broker
/// back after an outage is used again within seconds, and instances that lost
/// it together do not all come back at the same instant.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);

/// How long the asker of a cluster-wide close waits for the first reply,
/// and for each further one after the last.
const CLOSE_FIRST_REPLY: Duration = Duration::from_secs(2);
const CLOSE_NEXT_REPLY: Duration = Duration::from_millis(300);
const CLOSE: &str = "sse.close";
const CLOSE_REPLY: &str = "sse.close.reply";

#[derive(Default)]
struct Binder {
    counts: HashMap<Box<str>, usize>,
    channel: Option<Channel>,
    /// The live connection, for the short-lived channels of admin closes.
    connection: Option<Arc<Connection>>,
    /// With history: the confirm-mode channel events are published on.
    publish: Option<Channel>,
}

/// What a connection consumes.
struct Consumers {
    conn: Arc<Connection>,
    /// The instance queue's channel and consumer (admin close replies; without history also events).
    ch: Channel,
    instance: lapin::Consumer,
    /// With history: the stream's consumer (on its own channel).
    history: Option<lapin::Consumer>,
}

/// The AMQP ingress of one gateway instance.
pub(crate) struct Amqp {
    config: AmqpConfig,
    /// `HISTORY_SECONDS`; zero: no history stream.
    history: Duration,
    publisher: Publisher,
    binder: tokio::sync::Mutex<Binder>,
    connected: AtomicBool,
    /// Cluster-wide closes waiting for replies, by correlation id.
    replies: std::sync::Mutex<HashMap<String, mpsc::UnboundedSender<usize>>>,
    /// The order of in-process publishes.
    turns: Turns,
}

/// In-process publishes (RabbitMQ mode with history) are made from
/// synchronous calls and sent by one task each: each takes a [`Turn`] when
/// made, waits until the previous one's message is on the channel, and passes
/// its turn on as soon as its own message is (before the broker's confirm).
/// So they reach the broker, the history and every stream in the order they
/// were made, their confirms are still awaited concurrently, and passing a
/// turn on wakes exactly one task (a chain of one-shot signals).
#[derive(Debug, Default)]
struct Turns {
    /// The signal of the latest turn handed out: fires (or is dropped) when
    /// that turn's message is on the channel.
    last: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl Turns {
    fn take(&self) -> Turn {
        let (release, signal) = oneshot::channel();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        Turn { previous: last.replace(signal), _release: release }
    }
}

/// One in-process publish's place in the order; dropping it lets the next go.
#[derive(Debug)]
pub(crate) struct Turn {
    /// The previous turn's signal (`None`: the first, or already waited).
    previous: Option<oneshot::Receiver<()>>,
    /// Dropped with the turn, which releases the next one.
    _release: oneshot::Sender<()>,
}

impl Turn {
    /// Resolves when the previous turn's message is on the channel (or that
    /// publish gave up). Cancel-safe: a wait dropped early keeps the signal.
    pub(crate) async fn wait(&mut self) {
        if let Some(previous) = self.previous.as_mut() {
            // Err: the previous turn was dropped, which is its release too.
            let _ = previous.await;
        }
        self.previous = None;
    }
}

impl Amqp {
    pub(crate) fn new(config: AmqpConfig, history: Duration) -> Arc<Self> {
        Arc::new(Self {
            config,
            history,
            publisher: Publisher::default(),
            binder: tokio::sync::Mutex::default(),
            connected: AtomicBool::new(false),
            replies: std::sync::Mutex::default(),
            turns: Turns::default(),
        })
    }

    fn replies(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<usize>>> {
        // Inserts and removes cannot leave the map half-changed.
        self.replies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the streams bound to `key` on every instance that has some;
    /// returns (streams closed, instances that answered).
    pub(crate) async fn close_everywhere(&self, key: &str, retry_ms: Option<u64>) -> Result<(usize, usize), AmqpError> {
        let conn = self.binder.lock().await.connection.clone().ok_or(AmqpError::Disconnected)?;
        // A channel of its own: a publish error closes only this channel, never the consumer's.
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let correlation = uuid::Uuid::new_v4().to_string();
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.replies().insert(correlation.clone(), tx);
        let result = async {
            let body = serde_json::json!({"key": key, "retry_ms": retry_ms}).to_string();
            let props = BasicProperties::default()
                .with_type(CLOSE.into())
                .with_reply_to(self.config.queue.as_str().into())
                .with_correlation_id(correlation.as_str().into());
            let confirm = ch
                .basic_publish(
                    self.config.exchange.as_str().into(),
                    key.into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    body.as_bytes(),
                    props,
                )
                .await?
                .await?;
            if matches!(confirm, Confirmation::Ack(Some(_))) {
                // Returned: no instance has a stream on this key.
                return Ok((0, 0));
            }
            let (mut matched, mut instances) = (0, 0);
            let mut deadline = tokio::time::Instant::now() + CLOSE_FIRST_REPLY;
            while let Ok(Some(n)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                matched += n;
                instances += 1;
                deadline = tokio::time::Instant::now() + CLOSE_NEXT_REPLY;
            }
            Ok((matched, instances))
        }
        .await;
        self.replies().remove(&correlation);
        let _ = ch.close(200, "close done".into()).await;
        result
    }

    /// True when events go through the cluster's history stream.
    pub(crate) fn has_history(&self) -> bool {
        !self.history.is_zero()
    }

    /// Publishes an event (an encoded frame; empty: close only) to `key`
    /// through the history stream, for the streams bound to it on every
    /// instance, or for one `token` (a send). Returns the local streams it
    /// reached once this instance read it back.
    /// `on_channel` is dropped once the message is on the channel (or the
    /// publish failed before): see [`Turn`].
    pub(crate) async fn publish_frame<G: Send>(
        &self,
        key: &str,
        frame: &[u8],
        token: Option<uuid::Uuid>,
        close: bool,
        on_channel: G,
    ) -> Result<usize, AmqpError> {
        let ch = self.binder.lock().await.publish.clone().ok_or(AmqpError::Disconnected)?;
        let meta = amqp_stream::FrameMeta { token, close };
        self.publisher.publish(&ch, &self.config.exchange, key, frame, meta, on_channel).await
    }

    /// A place in the order of in-process publishes (see [`Turn`]).
    pub(crate) fn take_turn(&self) -> Turn {
        self.turns.take()
    }

    /// True while the broker connection is up and consuming.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Takes a reference on each key, binding the ones that gain their first.
    /// On failure every reference taken here is given back.
    pub(crate) async fn acquire(&self, keys: &[String]) -> Result<(), AmqpError> {
        if self.has_history() {
            // Every event reaches every instance through the stream.
            return Ok(());
        }
        let mut b = self.binder.lock().await;
        let mut fresh = Vec::new();
        for k in keys {
            let count = b.counts.entry(Box::from(k.as_str())).or_insert(0);
            *count += 1;
            if *count == 1 {
                fresh.push(k.as_str());
            }
        }
        let result = match b.channel.clone() {
            None if fresh.is_empty() => Ok(()),
            None => Err(AmqpError::Disconnected),
            Some(ch) => {
                let mut r = Ok(());
                for k in &fresh {
                    if let Err(e) = self.bind(&ch, k).await {
                        r = Err(e);
                        break;
                    }
                }
                r
            }
        };
        if result.is_err() {
            for k in keys {
                self.drop_ref(&mut b, k).await;
            }
        }
        result
    }

    /// Gives back one reference on each key, unbinding those left with none.
    pub(crate) async fn release(&self, keys: Vec<Box<str>>) {
        if keys.is_empty() || self.has_history() {
            return;
        }
        let mut b = self.binder.lock().await;
        for k in keys {
            self.drop_ref(&mut b, &k).await;
        }
    }

    async fn drop_ref(&self, b: &mut Binder, key: &str) {
        let Some(count) = b.counts.get_mut(key) else { return };
        *count -= 1;
        if *count > 0 {
            return;
        }
        b.counts.remove(key);
        if let Some(ch) = &b.channel {
            let unbind = ch.queue_unbind(
                self.config.queue.as_str().into(),
                self.config.exchange.as_str().into(),
                key.into(),
                FieldTable::default(),
            );
            match unbind.await {
                Ok(()) => tracing::debug!("unbound routing key {key}"),
                Err(e) => warn!(key, error = %e, "queue unbind failed"),
            }
        }
    }

    async fn bind(&self, ch: &Channel, key: &str) -> Result<(), AmqpError> {
        ch.queue_bind(
            self.config.queue.as_str().into(),
            self.config.exchange.as_str().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }

    async fn connect(&self, start: Start) -> Result<Consumers, AmqpError> {
        let conn = Arc::new(Connection::connect(&self.config.url, ConnectionProperties::default()).await?);
        let ch = conn.create_channel().await?;
        let durable = !self.config.auto_delete;
        ch.exchange_declare(
            self.config.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable, auto_delete: self.config.auto_delete, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
        ch.queue_declare(
            self.config.queue.as_str().into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, durable: false, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
        ch.basic_qos(512, BasicQosOptions::default()).await?;
        let instance = ch
            .basic_consume(
                self.config.queue.as_str().into(),
                "sse-gateway".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let history = if self.has_history() {
            let name = amqp_stream::stream_name(&self.config.exchange);
            amqp_stream::declare(&conn, &ch, &self.config.exchange, &name, self.history).await?;
            let publish = conn.create_channel().await?;
            publish.confirm_select(ConfirmSelectOptions::default()).await?;
            let reader = conn.create_channel().await?;
            let consumer = amqp_stream::consume(&reader, &name, start).await?;
            self.binder.lock().await.publish = Some(publish);
            Some(consumer)
        } else {
            None
        };
        Ok(Consumers { conn, ch, instance, history })
    }

    /// Connects, consumes, and reconnects until shutdown.
    pub(crate) async fn run(self: Arc<Self>, router: Arc<Router>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        let mut first = true;
        if self.has_history() && self.config.auto_delete {
            warn!(
                "RABBITMQ_ENV_AUTO_DELETE with history: after a broker restart, events published before a gateway \
                 re-binds the history stream are unroutable (use a durable exchange in production)"
            );
        }
        loop {
            // With history: the first time from the retention's start, later
            // from the offset after the last one seen (raw position n = offset + 1).
            let start = match router.history_offset() {
                Some(n) if n > 0 => Start::Offset(n),
                _ => Start::Since(self.history),
            };
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.connect(start) => r,
            };
            match attempt {
                Ok(consumers) => {
                    let conn = Arc::clone(&consumers.conn);
                    self.binder.lock().await.connection = Some(Arc::clone(&conn));
                    if let Err(e) = self.rebind(&consumers.ch).await {
                        warn!(error = %e, "re-binding routing keys failed; reconnecting");
                        let _ = conn.close(0, "rebind failed".into()).await;
                    } else {
                        backoff = Duration::from_secs(1);
                        // With history, the instance takes streams once it has
                        // caught up with the stream (its marker read back), or
                        // at once when it resumes from where it was.
                        let marker = match (&consumers.history, start) {
                            (Some(_), Start::Since(_)) => self.mark().await,
                            _ => None,
                        };
                        if marker.is_none() {
                            self.went_live(&router, &metrics, first);
                        }
                        first = false;
                        self.consume(&router, &metrics, &shutdown, consumers, marker).await;
                        self.connected.store(false, Ordering::Release);
                        metrics.emit(Event::BrokerLost { shutting_down: shutdown.is_cancelled() });
                        let mut binder = self.binder.lock().await;
                        binder.channel = None;
                        binder.connection = None;
                        binder.publish = None;
                        drop(binder);
                        if shutdown.is_cancelled() {
                            let _ = conn.close(200, "shutting down".into()).await;
                            return;
                        }
                    }
                }
                Err(e) => warn!(error = %e, retry_in = ?backoff, "cannot connect to RabbitMQ"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(crate::retry::spread(backoff, 0.25)) => {}
            }
            backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
        }
    }

    /// Publishes the catch-up marker; `None` if that failed (then the
    /// instance goes live without waiting for it).
    async fn mark(&self) -> Option<String> {
        let ch = self.binder.lock().await.publish.clone()?;
        match self.publisher.mark(&ch, &self.config.exchange, &self.config.instance_id).await {
            Ok(id) => Some(id),
            Err(e) => {
                warn!(error = %e, "cannot publish the history catch-up marker; taking streams now");
                None
            }
        }
    }

    /// The instance takes streams again.
    fn went_live(&self, router: &Router, metrics: &Metrics, first: bool) {
        self.connected.store(true, Ordering::Release);
        let (queue, exchange) = (self.config.queue.as_str(), self.config.exchange.as_str());
        metrics.emit(Event::BrokerConnected { queue, exchange });
        if !first && !self.has_history() {
            // Streams may have missed events while the broker was away: say so.
            // (With history they get every event late, or a gap.)
            let pushed = router.push_all(&Bytes::from_static(sse_wire::encode::READY));
            if pushed.overflowed > 0 {
                metrics.emit(Event::SlowConsumersClosed { count: pushed.overflowed, first: pushed.first_overflowed });
            }
        }
    }

    async fn rebind(&self, ch: &Channel) -> Result<(), AmqpError> {
        let mut b = self.binder.lock().await;
        let keys: Vec<Box<str>> = b.counts.keys().cloned().collect();
        for k in &keys {
            self.bind(ch, k).await?;
        }
        b.channel = Some(ch.clone());
        Ok(())
    }

    async fn consume(
        &self,
        router: &Router,
        metrics: &Metrics,
        shutdown: &CancellationToken,
        consumers: Consumers,
        mut marker: Option<String>,
    ) {
        let Consumers { ch, mut instance, mut history, .. } = consumers;
        loop {
            let from_history = async {
                match history.as_mut() {
                    Some(h) => h.next().await,
                    None => std::future::pending().await,
                }
            };
            let (next, is_history) = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = instance.next() => (n, false),
                n = from_history => (n, true),
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    warn!(error = %e, "RabbitMQ consumer failed");
                    return;
                }
                None => return,
            };
            if is_history {
                self.on_history(&ch, router, metrics, &delivery, &mut marker).await;
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    warn!(error = %e, "ack failed");
                }
                continue;
            }
            let key = delivery.routing_key.as_str().to_owned();
            let kind = delivery.properties.kind().as_ref().map(|k| k.as_str().to_owned());
            if let Some(kind) = kind.as_deref().filter(|k| *k == CLOSE || *k == CLOSE_REPLY) {
                self.control(&ch, router, metrics, kind, &key, &delivery).await;
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    warn!(error = %e, "ack failed");
                }
                continue;
            }
            match parse_message(&delivery.data) {
                Ok(frame) => {
                    deliver::publish(router, metrics, Ingress::Amqp, &key, Some(&frame), false);
                    metrics.emit(Event::BrokerMessageDelivered);
                    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                        warn!(error = %e, "ack failed");
                    }
                }
                Err(reason) => {
                    metrics.emit(Event::BrokerMessageRejected { key: &key, reason });
                    if let Err(e) = delivery.reject(BasicRejectOptions { requeue: false }).await {
                        warn!(error = %e, "reject failed");
                    }
                }
            }
        }
    }

    /// One message read from the history stream: an event (a backend's, or
    /// a frame a gateway published), a control message, or this instance's
    /// catch-up marker.
    async fn on_history(
        &self,
        ch: &Channel,
        router: &Router,
        metrics: &Metrics,
        delivery: &lapin::message::Delivery,
        marker: &mut Option<String>,
    ) {
        let Some(n) = amqp_stream::offset(delivery).map(|o| o + 1) else {
            warn!("a message from the history stream has no offset; skipped");
            return;
        };
        let key = delivery.routing_key.as_str();
        let kind = delivery.properties.kind().as_ref().map(|k| k.as_str());
        let message_id = delivery.properties.message_id().as_ref().map(|m| m.as_str());
        let live = marker.is_none();
        let lost = match kind {
            Some(amqp_stream::MARK) => {
                let lost = router.advance_history(n);
                if marker.as_deref().is_some_and(|m| Some(m) == message_id) {
                    *marker = None;
                    self.went_live(router, metrics, true);
                }
                lost
            }
            Some(CLOSE) | Some(CLOSE_REPLY) => {
                let lost = router.advance_history(n);
                // Closes from before this instance caught up are history, not orders.
                if live && kind == Some(CLOSE) {
                    self.control(ch, router, metrics, CLOSE, key, delivery).await;
                }
                lost
            }
            Some(amqp_stream::FRAME) => {
                if !amqp_stream::valid_frame(&delivery.data) {
                    metrics.emit(Event::BrokerMessageRejected { key, reason: "sse.frame is not one SSE event" });
                    router.advance_history(n)
                } else if delivery.data.is_empty() {
                    // A close without an event: nothing to keep.
                    let meta = amqp_stream::frame_meta(delivery);
                    let lost = router.advance_history(n);
                    let matched = match meta.token {
                        Some(t) => usize::from(router.send_control_close(t)),
                        None => deliver::publish(router, metrics, Ingress::Amqp, key, None, meta.close),
                    };
                    if let Some(id) = message_id {
                        self.publisher.delivered(id, matched);
                    }
                    lost
                } else {
                    let meta = amqp_stream::frame_meta(delivery);
                    let (result, lost) = router.publish_at(n, key, &delivery.data, meta.close, meta.token);
                    deliver::report(metrics, Ingress::Amqp, key, &result, true);
                    metrics.emit(Event::BrokerMessageDelivered);
                    if let Some(id) = message_id {
                        self.publisher.delivered(id, result.matched);
                    }
                    lost
                }
            }
            _ => match parse_message(&delivery.data) {
                Ok(frame) => {
                    let (result, lost) = router.publish_at(n, key, &frame, false, None);
                    deliver::report(metrics, Ingress::Amqp, key, &result, true);
                    metrics.emit(Event::BrokerMessageDelivered);
                    lost
                }
                Err(reason) => {
                    metrics.emit(Event::BrokerMessageRejected { key, reason });
                    router.advance_history(n)
                }
            },
        };
        if lost > 0 {
            metrics.emit(Event::GapSignalled { token: None, cause: crate::history::GapCause::Lost, streams: lost });
        }
    }
}

impl Amqp {
    /// Handles a control message: a close (close locally, reply with the
    /// count) or a reply to one of this instance's closes.
    async fn control(
        &self,
        ch: &Channel,
        router: &Router,
        metrics: &Metrics,
        kind: &str,
        key: &str,
        delivery: &lapin::message::Delivery,
    ) {
        let correlation = delivery.properties.correlation_id().as_ref().map(|c| c.as_str().to_owned());
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap_or_default();
        if kind == CLOSE_REPLY {
            let matched = body.get("matched").and_then(serde_json::Value::as_u64).unwrap_or(0);
            if let Some(tx) = correlation.and_then(|c| self.replies().get(&c).cloned()) {
                let _ = tx.send(usize::try_from(matched).unwrap_or(usize::MAX));
            }
            return;
        }
        let retry_ms = body.get("retry_ms").and_then(serde_json::Value::as_u64);
        let matched = router.close_key(key, crate::retry::close_hint(retry_ms));
        metrics.emit(Event::AdminClosed { matched });
        let Some(reply_to) = delivery.properties.reply_to().as_ref() else { return };
        let reply = serde_json::json!({"instance": self.config.instance_id, "matched": matched}).to_string();
        let mut props = BasicProperties::default().with_type(CLOSE_REPLY.into());
        if let Some(c) = correlation {
            props = props.with_correlation_id(c.as_str().into());
        }
        let sent = ch
            .basic_publish("".into(), reply_to.as_str().into(), BasicPublishOptions::default(), reply.as_bytes(), props)
            .await;
        if let Err(e) = sent {
            warn!(error = %e, "cannot reply to a cluster-wide close");
        }
    }
}

/// Reads a backend message: `{"event"|"event_name": string, "data": string}`.
pub(crate) fn parse_message(body: &[u8]) -> Result<Bytes, &'static str> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| "not JSON")?;
    let obj = value.as_object().ok_or("not a JSON object")?;
    let name = obj
        .get("event")
        .or_else(|| obj.get("event_name"))
        .and_then(|v| v.as_str())
        .ok_or("event (or event_name) missing or not a string")?;
    let data = obj.get("data").and_then(|v| v.as_str()).ok_or("data missing or not a string")?;
    crate::command::encode_event(Some(name), data).map_err(|_| "event name contains CR, LF or NUL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_turn_waits_for_the_previous_one_only_and_a_dropped_turn_releases_the_next() {
        let turns = Turns::default();
        let mut first = turns.take();
        let mut second = turns.take();
        let mut third = turns.take();
        first.wait().await; // the first waits for nobody
        let pending = |t: &mut Turn| {
            let waker = futures_util::task::noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            std::pin::pin!(t.wait()).poll(&mut cx).is_pending()
        };
        assert!(pending(&mut second), "the second waits for the first");
        assert!(pending(&mut third), "the third waits for the second");
        drop(first); // its message is on the channel, or its publish failed
        tokio::time::timeout(Duration::from_secs(5), second.wait()).await.expect("the second may go");
        assert!(pending(&mut third), "the third still waits for the second");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), third.wait()).await.expect("the third may go");
    }

    #[test]
    fn messages_follow_the_contract() {
        assert_eq!(
            parse_message(br#"{"event":"n","data":"{}"}"#).unwrap(),
            Bytes::from_static(b"data: {\"type\":\"n\",\"payload\":{}}\n\n")
        );
        assert!(parse_message(br#"{"event_name":"n","data":"1"}"#).is_ok());
        assert!(parse_message(b"nope").is_err());
        assert!(parse_message(br#"{"event":1,"data":"1"}"#).is_err());
        assert!(parse_message(br#"{"event":"n","data":{}}"#).is_err());
        assert!(parse_message(br#"{"event":"a\nb","data":"1"}"#).is_err());
    }
}
