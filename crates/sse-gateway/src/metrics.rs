//! Prometheus metrics: every counter the gateway keeps, registered in one
//! place. They move through `events` (one occurrence type each, with fixed
//! label values); only the socket writers add bytes here directly.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

fn histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The gateway's metrics and their registry.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) active: Gauge,
    pub(crate) connections: Family<Labels1, Counter>,
    pub(crate) disconnects: Family<Labels1, Counter>,
    pub(crate) refused: Family<Labels1, Counter>,
    pub(crate) callbacks: Family<Labels2, Counter>,
    pub(crate) callback_seconds: Family<Labels1, Histogram, fn() -> Histogram>,
    pub(crate) api: Family<Labels2, Counter>,
    pub(crate) api_seconds: Family<Labels1, Histogram, fn() -> Histogram>,
    pub(crate) overflows: Family<Labels1, Counter>,
    pub(crate) published: Family<Labels1, Counter>,
    pub(crate) delivered: Counter,
    bytes_written: Counter,
    writer_runs: Counter,
    writer_streams: Counter,
    pub(crate) broker_up: Gauge,
    pub(crate) broker_connects: Counter,
    pub(crate) broker_messages: Family<Labels1, Counter>,
    pub(crate) held: Counter,
    pub(crate) hold_dropped: Counter,
    pub(crate) errors: Family<Labels2, Counter>,
    pub(crate) disconnect_retries: Family<Labels1, Counter>,
    pub(crate) disconnect_retries_waiting: Gauge,
    pub(crate) late_connects: Family<Labels1, Counter>,
    pub(crate) connects_waiting: Gauge,
    pub(crate) rosters: Family<Labels1, Counter>,
    pub(crate) admin_closed: Counter,
    pub(crate) expired: Counter,
    pub(crate) replayed: Counter,
    pub(crate) gaps: Family<Labels1, Counter>,
    pub(crate) history_events: Gauge,
    pub(crate) history_bytes: Gauge,
    pub(crate) history_age: Gauge,
    pub(crate) history_evicted: Counter,
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
            writer_runs: Counter::default(),
            writer_streams: Counter::default(),
            broker_up: Gauge::default(),
            broker_connects: Counter::default(),
            broker_messages: Family::default(),
            held: Counter::default(),
            hold_dropped: Counter::default(),
            errors: Family::default(),
            disconnect_retries: Family::default(),
            disconnect_retries_waiting: Gauge::default(),
            late_connects: Family::default(),
            connects_waiting: Gauge::default(),
            rosters: Family::default(),
            admin_closed: Counter::default(),
            expired: Counter::default(),
            replayed: Counter::default(),
            gaps: Family::default(),
            history_events: Gauge::default(),
            history_bytes: Gauge::default(),
            history_age: Gauge::default(),
            history_evicted: Counter::default(),
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
        registry.register(
            "sse_gateway_writer_runs",
            "Turns of the writer shards (each writes the streams that publishes to many handed it)",
            m.writer_runs.clone(),
        );
        registry.register(
            "sse_gateway_writer_streams",
            "Streams written by the writer shards (one per stream per turn, however many events it took)",
            m.writer_streams.clone(),
        );
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
        registry.register(
            "sse_gateway_error_answers",
            "Errors by fault class (client, backend, broker, internal) and code",
            m.errors.clone(),
        );
        registry.register(
            "sse_gateway_disconnect_retries",
            "Disconnect callback retries by outcome (retry, delivered, window, too_many)",
            m.disconnect_retries.clone(),
        );
        registry.register(
            "sse_gateway_rosters",
            "Roster callbacks by outcome (ok, unsupported, failed)",
            m.rosters.clone(),
        );
        registry.register("sse_gateway_admin_closed", "Streams closed through /internal/close", m.admin_closed.clone());
        registry.register(
            "sse_gateway_credentials_expired",
            "Streams ended with auth_expired at their expires_at",
            m.expired.clone(),
        );
        registry.register(
            "sse_gateway_disconnect_retries_waiting",
            "Disconnect callbacks waiting for a retry now",
            m.disconnect_retries_waiting.clone(),
        );
        registry.register(
            "sse_gateway_late_connect_answers",
            "Connect callbacks answered after their client was told they timed out, by outcome (an accepted one gets its disconnect)",
            m.late_connects.clone(),
        );
        registry.register(
            "sse_gateway_connects_waiting",
            "Connect callbacks waiting for a free callback slot (MAX_CONCURRENT_CALLBACKS)",
            m.connects_waiting.clone(),
        );
        registry.register(
            "sse_gateway_history_replayed_events",
            "Events replayed to streams resuming from Last-Event-ID",
            m.replayed.clone(),
        );
        registry.register(
            "sse_gateway_history_gaps",
            "gap events written, by cause (unknown, expired, lost)",
            m.gaps.clone(),
        );
        registry.register("sse_gateway_history_events", "Events kept in the history", m.history_events.clone());
        registry.register("sse_gateway_history_bytes", "Bytes the kept events use", m.history_bytes.clone());
        registry.register("sse_gateway_history_age_seconds", "Age of the oldest kept event", m.history_age.clone());
        registry.register(
            "sse_gateway_history_evicted_events",
            "Events dropped from the history (older than HISTORY_SECONDS, or over HISTORY_MAX_BYTES)",
            m.history_evicted.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// Bytes went out on a client socket.
    pub(crate) fn bytes_written(&self, n: usize) {
        self.bytes_written.inc_by(n as u64);
    }

    /// The bytes-written counter itself (a shared handle), for socket writers.
    pub(crate) fn bytes_counter(&self) -> Counter {
        self.bytes_written.clone()
    }

    /// The writer shards' counters (shared handles): turns, streams written.
    pub(crate) fn writer_counters(&self) -> (Counter, Counter) {
        (self.writer_runs.clone(), self.writer_streams.clone())
    }

    /// The text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
