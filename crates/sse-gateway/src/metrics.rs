//! Prometheus metrics: every counter the gateway keeps, registered in one place.
//!
//! Other modules call the small methods here (one per occurrence), so names
//! and label values are fixed in this file and nowhere else.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::hook::DisconnectReason;

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

fn histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The gateway's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    active: Gauge,
    connections: Family<Labels1, Counter>,
    disconnects: Family<Labels1, Counter>,
    refused: Family<Labels1, Counter>,
    callbacks: Family<Labels2, Counter>,
    callback_seconds: Family<Labels1, Histogram, fn() -> Histogram>,
    api: Family<Labels2, Counter>,
    api_seconds: Family<Labels1, Histogram, fn() -> Histogram>,
    overflows: Family<Labels1, Counter>,
    published: Family<Labels1, Counter>,
    delivered: Counter,
    bytes_written: Counter,
    broker_up: Gauge,
    broker_connects: Counter,
    broker_messages: Family<Labels1, Counter>,
    held: Counter,
    hold_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            registry: Registry::default(),
            active: Gauge::default(),
            connections: Family::default(),
            disconnects: Family::default(),
            refused: Family::default(),
            callbacks: Family::default(),
            callback_seconds: Family::new_with_constructor(histogram),
            api: Family::default(),
            api_seconds: Family::new_with_constructor(histogram),
            overflows: Family::default(),
            published: Family::default(),
            delivered: Counter::default(),
            bytes_written: Counter::default(),
            broker_up: Gauge::default(),
            broker_connects: Counter::default(),
            broker_messages: Family::default(),
            held: Counter::default(),
            hold_dropped: Counter::default(),
        };
        let mut registry = Registry::default();
        registry.register("sse_gateway_active_connections", "Open SSE streams", m.active.clone());
        registry.register(
            "sse_gateway_connections",
            "SSE connection lifecycle events by action (connect, disconnect)",
            m.connections.clone(),
        );
        registry.register("sse_gateway_disconnects", "Ended streams by reason", m.disconnects.clone());
        registry.register(
            "sse_gateway_streams_refused",
            "Stream requests answered with a retry hint without asking the backend, by reason",
            m.refused.clone(),
        );
        registry.register("sse_gateway_callbacks", "Backend callbacks by action and outcome", m.callbacks.clone());
        registry.register(
            "sse_gateway_callback_duration_seconds",
            "Backend callback latency by action",
            m.callback_seconds.clone(),
        );
        registry.register("sse_gateway_api_requests", "Internal API answers by endpoint and status", m.api.clone());
        registry.register(
            "sse_gateway_api_duration_seconds",
            "Internal API latency by endpoint",
            m.api_seconds.clone(),
        );
        registry.register(
            "sse_gateway_queue_overflows",
            "Streams closed because their client did not read fast enough, by reason",
            m.overflows.clone(),
        );
        registry.register(
            "sse_gateway_events_published",
            "Events accepted for delivery, by ingress (send, publish, in_process)",
            m.published.clone(),
        );
        registry.register("sse_gateway_events_delivered", "Events queued to open streams", m.delivered.clone());
        registry.register("sse_gateway_bytes_written", "Bytes written to client streams", m.bytes_written.clone());
        registry.register("sse_gateway_rabbitmq_connected", "1 while connected to RabbitMQ", m.broker_up.clone());
        registry.register(
            "sse_gateway_rabbitmq_connections",
            "Successful RabbitMQ (re)connections",
            m.broker_connects.clone(),
        );
        registry.register(
            "sse_gateway_rabbitmq_messages",
            "AMQP messages by outcome (delivered, rejected)",
            m.broker_messages.clone(),
        );
        registry.register(
            "sse_gateway_events_held",
            "Events kept for a request_id whose client is expected back",
            m.held.clone(),
        );
        registry.register(
            "sse_gateway_holds_dropped",
            "Holds dropped because they outgrew the stream queue bound (their events are lost)",
            m.hold_dropped.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// A stream opened.
    pub fn stream_opened(&self) {
        self.active.inc();
        self.connections.get_or_create(&[("action", "connect")]).inc();
    }

    /// A stream ended.
    pub fn stream_ended(&self, reason: DisconnectReason) {
        self.active.dec();
        self.connections.get_or_create(&[("action", "disconnect")]).inc();
        self.disconnects.get_or_create(&[("reason", reason.as_str())]).inc();
    }

    /// A stream request was answered with a retry hint (`max_connections`).
    pub fn stream_refused(&self, reason: &'static str) {
        self.refused.get_or_create(&[("reason", reason)]).inc();
    }

    /// A callback finished with `outcome` after `elapsed`.
    pub fn callback(&self, action: &'static str, outcome: &'static str, elapsed: Duration) {
        self.callbacks.get_or_create(&[("action", action), ("outcome", outcome)]).inc();
        self.callback_seconds.get_or_create(&[("action", action)]).observe(elapsed.as_secs_f64());
    }

    /// An internal API request was answered.
    pub fn api_answered(&self, endpoint: &'static str, status: u16, elapsed: Duration) {
        let label = match status {
            200 => "200",
            400 => "400",
            401 => "401",
            403 => "403",
            404 => "404",
            413 => "413",
            429 => "429",
            500 => "500",
            _ => "other",
        };
        self.api.get_or_create(&[("endpoint", endpoint), ("status", label)]).inc();
        self.api_seconds.get_or_create(&[("endpoint", endpoint)]).observe(elapsed.as_secs_f64());
    }

    /// Streams closed as slow consumers.
    pub fn queue_overflow(&self, n: usize) {
        self.overflows.get_or_create(&[("reason", "slow_consumer")]).inc_by(n as u64);
    }

    /// An event was accepted through `ingress` and queued on `streams` streams.
    pub fn events_published(&self, ingress: &'static str, streams: usize) {
        self.published.get_or_create(&[("ingress", ingress)]).inc();
        self.delivered.inc_by(streams as u64);
    }

    /// The broker connection went up or down.
    pub fn broker_connected(&self, up: bool) {
        self.broker_up.set(i64::from(up));
        if up {
            self.broker_connects.inc();
        }
    }

    /// An AMQP message was handled.
    pub fn broker_message(&self, outcome: &'static str) {
        self.broker_messages.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// A publish was held for a returning client (or its hold dropped).
    pub fn held(&self, held: usize, dropped: usize) {
        self.held.inc_by(held as u64);
        self.hold_dropped.inc_by(dropped as u64);
    }

    /// Bytes went out on a client socket.
    pub fn bytes_written(&self, n: usize) {
        self.bytes_written.inc_by(n as u64);
    }

    /// The bytes-written counter itself (a shared handle), for socket writers.
    pub fn bytes_counter(&self) -> Counter {
        self.bytes_written.clone()
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
