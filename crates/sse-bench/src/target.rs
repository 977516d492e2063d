//! What differs between the two servers under test: when a stream counts as
//! open, and what a publish request looks like.
//!
//! Everything else (URLs, payload, measurement) is the same for both, so the
//! figures compare like with like.

use serde::Serialize;

/// The server being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// sse-gateway: streams are open at the `ready` event (after the connect
    /// callback); events are published by routing key on `/internal/publish`.
    Ours,
    /// Nginx + Nchan in EventSource mode: streams are open at the response
    /// head; the publish body is the event data itself.
    Nchan,
}

/// The routing key every benchmark stream is bound to (`DEFAULT_BINDINGS`).
pub const BROADCAST_KEY: &str = "broadcast";

/// The event name the gateway wraps payloads in (`{"type":"bench",...}`).
pub const EVENT_NAME: &str = "bench";

impl Target {
    /// True when the response head alone shows the subscription is live;
    /// false when the client must wait for a `ready` event.
    pub fn open_at_head(self) -> bool {
        self == Target::Nchan
    }

    /// The body of one publish request carrying `payload` (JSON text).
    pub fn publish_body(self, payload: &str) -> Vec<u8> {
        match self {
            Target::Ours => serde_json::json!({"key": BROADCAST_KEY, "event": {"name": EVENT_NAME, "data": payload}})
                .to_string()
                .into_bytes(),
            Target::Nchan => payload.as_bytes().to_vec(),
        }
    }
}
