//! The hub's own metrics (beside the toolkit's), registered in one place.
//! Each notable occurrence has one counter with fixed labels.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `event` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    /// `lease_added`, `lease_updated`, `lease_removed`, `lease_expired`, `data_changed`,
    /// `leases_snapshot` (bulk changes and snapshots sent to one stream).
    pub event: String,
}

/// `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `accepted`, `parse_error`, `no_entity`.
    pub outcome: String,
}

/// Hub metrics handles. Cheap to clone.
#[derive(Clone, Default)]
pub struct HubMetrics {
    /// `sse_hub_lease_read_failures_total`.
    pub lease_read_failures: Counter,
    /// `sse_hub_lease_events_total{event}`.
    pub lease_events: Family<EventLabel, Counter>,
    /// `sse_hub_device_log_lines_total{outcome}`.
    pub device_log_lines: Family<OutcomeLabel, Counter>,
    /// `sse_hub_device_log_events_total`: `device-logs` events delivered.
    pub device_log_events: Counter,
    /// `sse_hub_mqtt_connected` (0/1).
    pub mqtt_connected: Gauge,
    /// `sse_hub_rotation_nudges_total`.
    pub rotation_nudges: Counter,
}

impl HubMetrics {
    /// New handles registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("sse_hub_lease_read_failures", "Lease file reads that failed", m.lease_read_failures.clone());
        registry.register("sse_hub_lease_events", "Lease change events sent", m.lease_events.clone());
        registry.register("sse_hub_device_log_lines", "Device log lines by outcome", m.device_log_lines.clone());
        registry.register(
            "sse_hub_device_log_events",
            "device-logs events delivered to subscribers",
            m.device_log_events.clone(),
        );
        registry.register("sse_hub_mqtt_connected", "1 while connected to the MQTT broker", m.mqtt_connected.clone());
        registry.register("sse_hub_rotation_nudges", "Rotation nudges broadcast", m.rotation_nudges.clone());
        m
    }

    /// Counts one lease event.
    pub fn count_lease_event(&self, event: &str) {
        self.lease_events.get_or_create(&EventLabel { event: event.to_owned() }).inc();
    }

    /// Counts device log lines.
    pub fn count_log_lines(&self, outcome: &str, n: usize) {
        self.device_log_lines.get_or_create(&OutcomeLabel { outcome: outcome.to_owned() }).inc_by(n as u64);
    }
}
