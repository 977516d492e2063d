//! Every Prometheus metric of the toolkit, with the original backends' names
//! (docs/BACKEND.md, Metrics).
//!
//! [`Metrics::register`] puts them in a caller's `Registry` (a process that also
//! runs the gateway in-process, whose `sse_gateway_active_connections` has the
//! same name, registers these under a prefix with
//! `Registry::sub_registry_with_prefix`). [`Metrics::default`] makes
//! unregistered handles for tests. Handles are cheap clones.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `action` label (`connect` / `disconnect`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    /// `connect` or `disconnect`.
    pub action: String,
}

/// `service` + `status` labels of sent events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SentLabels {
    /// Metrics-only service name (`task`, `version`, ...).
    pub service: String,
    /// `success` or `error`.
    pub status: String,
}

/// `service` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    /// Metrics-only service name.
    pub service: String,
}

/// `status` label (`success` / `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// `success` or `failed`.
    pub status: String,
}

fn send_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// The toolkit's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// `sse_gateway_connections_total{action}`.
    pub connections: Family<ActionLabel, Counter>,
    /// `sse_gateway_active_connections`: always the number of live mappings.
    pub active_connections: Gauge,
    /// `sse_gateway_events_sent_total{service,status}`: per gateway call.
    pub events_sent: Family<SentLabels, Counter>,
    /// `sse_gateway_send_duration_seconds{service}`: per gateway call.
    pub send_duration: Family<ServiceLabel, Histogram, fn() -> Histogram>,
    /// `sse_identity_binding_total{status}`.
    pub identity_binding: Family<StatusLabel, Counter>,
    /// `active_tasks_at_shutdown`.
    pub active_tasks_at_shutdown: Gauge,
    /// `application_shutting_down` (0/1).
    pub shutting_down: Gauge,
    /// `graceful_shutdown_duration_seconds`.
    pub graceful_shutdown_duration: Histogram,
    /// `sse_backend_rosters_received_total`: roster callbacks accepted.
    pub rosters_received: Counter,
    /// `sse_backend_instance_lost_total`: connections ended as `instance_lost`
    /// (left out of a roster, or their instance fell silent).
    pub instance_lost: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections: Family::default(),
            active_connections: Gauge::default(),
            events_sent: Family::default(),
            send_duration: Family::new_with_constructor(send_histogram as fn() -> Histogram),
            identity_binding: Family::default(),
            active_tasks_at_shutdown: Gauge::default(),
            shutting_down: Gauge::default(),
            graceful_shutdown_duration: Histogram::new(exponential_buckets(0.1, 2.0, 14)),
            rosters_received: Counter::default(),
            instance_lost: Counter::default(),
        }
    }
}

impl Metrics {
    /// New handles, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("sse_gateway_connections", "SSE connections by action", m.connections.clone());
        registry.register("sse_gateway_active_connections", "Live SSE connections", m.active_connections.clone());
        registry.register("sse_gateway_events_sent", "Events sent to the gateway", m.events_sent.clone());
        registry.register(
            "sse_gateway_send_duration_seconds",
            "Duration of one gateway send or publish",
            m.send_duration.clone(),
        );
        registry.register("sse_identity_binding", "Identity bindings by outcome", m.identity_binding.clone());
        registry.register(
            "active_tasks_at_shutdown",
            "Pending and running tasks when shutdown began",
            m.active_tasks_at_shutdown.clone(),
        );
        registry.register("application_shutting_down", "1 once shutdown began", m.shutting_down.clone());
        registry.register(
            "graceful_shutdown_duration_seconds",
            "Time spent in shutdown waiters",
            m.graceful_shutdown_duration.clone(),
        );
        registry.register(
            "sse_backend_rosters_received",
            "Roster callbacks received from gateway instances",
            m.rosters_received.clone(),
        );
        registry.register(
            "sse_backend_instance_lost",
            "Connections ended because their gateway instance no longer held them (instance_lost)",
            m.instance_lost.clone(),
        );
        m
    }

    pub(crate) fn count_connection(&self, action: &str) {
        self.connections.get_or_create(&ActionLabel { action: action.to_owned() }).inc();
    }

    pub(crate) fn count_sent(&self, service: &str, ok: bool, seconds: f64) {
        let status = if ok { "success" } else { "error" };
        self.events_sent.get_or_create(&SentLabels { service: service.to_owned(), status: status.to_owned() }).inc();
        self.send_duration.get_or_create(&ServiceLabel { service: service.to_owned() }).observe(seconds);
    }

    pub(crate) fn count_identity(&self, ok: bool) {
        let status = if ok { "success" } else { "failed" };
        self.identity_binding.get_or_create(&StatusLabel { status: status.to_owned() }).inc();
    }
}

/// The Prometheus text exposition of a registry (for a `/metrics` route).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sse_lifecycle_and_task_metrics_are_registered_in_text_format() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        m.count_connection("connect");
        m.active_connections.set(1);
        m.count_sent("task", true, 0.01);
        m.count_identity(false);
        m.shutting_down.set(1);
        m.rosters_received.inc();
        m.instance_lost.inc_by(2);
        let text = encode(&reg);
        for needle in [
            "sse_gateway_connections_total{action=\"connect\"} 1",
            "sse_gateway_active_connections 1",
            "sse_gateway_events_sent_total{service=\"task\",status=\"success\"} 1",
            "sse_gateway_send_duration_seconds_count{service=\"task\"} 1",
            "sse_identity_binding_total{status=\"failed\"} 1",
            "active_tasks_at_shutdown 0",
            "application_shutting_down 1",
            "graceful_shutdown_duration_seconds_count 0",
            "sse_backend_rosters_received_total 1",
            "sse_backend_instance_lost_total 2",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
