//! Prometheus metrics: every counter the gateway keeps, registered in one place.
//!
//! Other modules call the small methods here (one per occurrence), so names
//! and label values are fixed in this file and nowhere else.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::hook::DisconnectReason;

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// The gateway's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    active: Gauge,
    connections: Family<Labels1, Counter>,
    disconnects: Family<Labels1, Counter>,
    callbacks: Family<Labels2, Counter>,
    sends: Family<Labels1, Counter>,
    overflows: Counter,
    events_delivered: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let active = Gauge::default();
        let connections = Family::<Labels1, Counter>::default();
        let disconnects = Family::<Labels1, Counter>::default();
        let callbacks = Family::<Labels2, Counter>::default();
        let sends = Family::<Labels1, Counter>::default();
        let overflows = Counter::default();
        let events_delivered = Counter::default();
        registry.register("sse_gateway_active_connections", "Open SSE streams", active.clone());
        registry.register(
            "sse_gateway_connections",
            "SSE connection lifecycle events by action (connect, disconnect)",
            connections.clone(),
        );
        registry.register("sse_gateway_disconnects", "Ended streams by reason", disconnects.clone());
        registry.register("sse_gateway_callbacks", "Backend callbacks by action and outcome", callbacks.clone());
        registry.register("sse_gateway_send_requests", "/internal/send answers by status", sends.clone());
        registry.register(
            "sse_gateway_queue_overflows",
            "Streams closed because their client did not read fast enough",
            overflows.clone(),
        );
        registry.register("sse_gateway_events_delivered", "Events queued to open streams", events_delivered.clone());
        Self { registry, active, connections, disconnects, callbacks, sends, overflows, events_delivered }
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

    /// A callback finished with `outcome` (`accepted`, `rejected`, `status`, `timeout`, `unavailable`, `ok`).
    pub fn callback(&self, action: &'static str, outcome: &'static str) {
        self.callbacks.get_or_create(&[("action", action), ("outcome", outcome)]).inc();
    }

    /// `/internal/send` answered with `status`.
    pub fn send_answered(&self, status: u16) {
        let label = match status {
            200 => "200",
            400 => "400",
            404 => "404",
            413 => "413",
            429 => "429",
            500 => "500",
            _ => "other",
        };
        self.sends.get_or_create(&[("status", label)]).inc();
    }

    /// A slow consumer was closed.
    pub fn queue_overflow(&self) {
        self.overflows.inc();
    }

    /// An event was queued on an open stream.
    pub fn event_delivered(&self) {
        self.events_delivered.inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
