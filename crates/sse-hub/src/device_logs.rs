//! Device logs live (docs/BACKEND.md, Device logs; decision D7): NDJSON log
//! messages in
//! (from MQTT or the HTTP ingest route), `device-logs` events out, to the
//! connections subscribed to that device only.
//!
//! Owns the line processing ([`process_message`]: ANSI stripped from
//! `message`, `@timestamp` set to now in the one ISO-8601 UTC format,
//! `relative_time` removed, bad lines counted and skipped) and the
//! subscribe / unsubscribe / ingest routes. The subscription table and its
//! identity rules are the toolkit's [`Subscriptions`]; the MQTT client is
//! [`crate::mqtt`]. Elasticsearch is not involved: live logs need no sink.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sse_backend::IdentityResolver;
use sse_backend::clock::now_iso;
use sse_backend::subscriptions::Subscriptions;

use crate::metrics::HubMetrics;

/// Event name of forwarded logs.
pub const EVENT: &str = "device-logs";

/// Removes ANSI escape sequences (CSI `ESC [ ... final`, OSC `ESC ] ... BEL|ESC \`,
/// and two-byte `ESC x`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// One message's lines, processed.
#[derive(Debug, Default, PartialEq)]
pub struct Processed {
    /// `(device_entity_id, docs)` in order of first appearance; docs in arrival order.
    pub groups: Vec<(String, Vec<Value>)>,
    /// Lines that were not a JSON object (or the message was not UTF-8).
    pub parse_errors: usize,
    /// Objects without a string `entity_id` (cannot be routed).
    pub no_entity: usize,
}

impl Processed {
    /// Lines accepted.
    pub fn accepted(&self) -> usize {
        self.groups.iter().map(|(_, d)| d.len()).sum()
    }
}

/// Processes one NDJSON message with `timestamp` as `@timestamp`.
pub fn process_message(payload: &[u8], timestamp: &str) -> Processed {
    let mut out = Processed::default();
    let Ok(text) = std::str::from_utf8(payload) else {
        out.parse_errors = 1;
        return out;
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut doc: Map<String, Value> = match serde_json::from_str(line) {
            Ok(Value::Object(m)) => m,
            _ => {
                out.parse_errors += 1;
                continue;
            }
        };
        if let Some(Value::String(m)) = doc.get_mut("message") {
            *m = strip_ansi(m);
        }
        doc.insert("@timestamp".to_owned(), json!(timestamp));
        doc.remove("relative_time");
        let Some(entity) = doc.get("entity_id").and_then(Value::as_str).map(str::to_owned) else {
            out.no_entity += 1;
            continue;
        };
        match out.groups.iter_mut().find(|(e, _)| *e == entity) {
            Some((_, docs)) => docs.push(Value::Object(doc)),
            None => out.groups.push((entity, vec![Value::Object(doc)])),
        }
    }
    out
}

/// The device log service. Cheap to clone.
#[derive(Clone)]
pub struct DeviceLogs {
    subscriptions: Subscriptions,
    identity: Arc<IdentityResolver>,
    metrics: HubMetrics,
}

/// What one ingested message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Lines accepted.
    pub accepted: usize,
    /// Lines skipped (parse errors and lines without `entity_id`).
    pub rejected: usize,
    /// `device-logs` events delivered.
    pub delivered: usize,
}

impl DeviceLogs {
    /// A service over the toolkit's subscription table.
    pub fn new(subscriptions: Subscriptions, identity: Arc<IdentityResolver>, metrics: HubMetrics) -> Self {
        Self { subscriptions, identity, metrics }
    }

    /// Processes one NDJSON message and forwards each device's lines to its
    /// subscribers (one event per subscriber).
    pub async fn ingest(&self, payload: &[u8]) -> IngestOutcome {
        let processed = process_message(payload, &now_iso());
        self.metrics.count_log_lines("accepted", processed.accepted());
        self.metrics.count_log_lines("parse_error", processed.parse_errors);
        self.metrics.count_log_lines("no_entity", processed.no_entity);
        if processed.parse_errors + processed.no_entity > 0 {
            tracing::debug!(
                parse_errors = processed.parse_errors,
                no_entity = processed.no_entity,
                "skipped device log lines"
            );
        }
        let mut delivered = 0;
        for (entity, logs) in &processed.groups {
            let payload = json!({"device_entity_id": entity, "logs": logs});
            delivered += self.subscriptions.forward(entity, EVENT, &payload, "device-logs").await;
        }
        self.metrics.device_log_events.inc_by(delivered as u64);
        IngestOutcome {
            accepted: processed.accepted(),
            rejected: processed.parse_errors + processed.no_entity,
            delivered,
        }
    }

    /// `POST /api/device-logs/subscribe`, `/api/device-logs/unsubscribe`,
    /// `POST /internal/device-logs/ingest` (NDJSON body, as an MQTT message).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/api/device-logs/subscribe", post(subscribe_route))
            .route("/api/device-logs/unsubscribe", post(unsubscribe_route))
            .route("/internal/device-logs/ingest", post(ingest_route))
            .with_state(self.clone())
    }
}

/// A refused request: status, error code and message, rendered as
/// `{"error","details":{"message"},"code"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "details": {"message": self.message}, "code": self.code});
        (self.status, Json(body)).into_response()
    }
}

/// The caller's subject from the request's bearer header or cookie; `None`
/// when OIDC is off (any bound subject passes).
pub async fn caller_subject(identity: &IdentityResolver, headers: &HeaderMap) -> Result<Option<String>, RequestError> {
    if !identity.enabled() {
        return Ok(None);
    }
    let pairs: Vec<(String, String)> =
        headers.iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned()))).collect();
    match identity.resolve(&pairs).await {
        Ok(id) => Ok(Some(id.subject)),
        Err(e) => Err(error(StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILED", &e.to_string())),
    }
}

fn error(status: StatusCode, code: &'static str, message: &str) -> RequestError {
    RequestError { status, code, message: message.to_owned() }
}

/// Body of subscribe and unsubscribe.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeBody {
    request_id: String,
    device_entity_id: String,
}

fn parse_body(body: &Bytes) -> Result<SubscribeBody, RequestError> {
    let b: SubscribeBody = serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", &format!("invalid body: {e}")))?;
    if b.request_id.is_empty() || b.device_entity_id.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "request_id and device_entity_id are required"));
    }
    Ok(b)
}

/// The body and the caller's subject of a subscribe/unsubscribe request,
/// or the error answer.
async fn subscription_request(
    svc: &DeviceLogs,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(SubscribeBody, Option<String>), Response> {
    let b = parse_body(body).map_err(IntoResponse::into_response)?;
    let caller = caller_subject(&svc.identity, headers).await.map_err(IntoResponse::into_response)?;
    Ok((b, caller))
}

async fn subscribe_route(State(svc): State<DeviceLogs>, headers: HeaderMap, body: Bytes) -> Response {
    let (b, caller) = match subscription_request(&svc, &headers, &body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match svc.subscriptions.subscribe(&b.request_id, &b.device_entity_id, caller.as_deref()) {
        Ok(()) => Json(json!({"status": "subscribed", "device_entity_id": b.device_entity_id})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn unsubscribe_route(State(svc): State<DeviceLogs>, headers: HeaderMap, body: Bytes) -> Response {
    let (b, caller) = match subscription_request(&svc, &headers, &body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match svc.subscriptions.unsubscribe(&b.request_id, &b.device_entity_id, caller.as_deref()) {
        Ok(()) => Json(json!({"status": "unsubscribed"})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn ingest_route(State(svc): State<DeviceLogs>, body: Bytes) -> Response {
    let o = svc.ingest(&body).await;
    Json(json!({"accepted": o.accepted, "rejected": o.rejected, "delivered": o.delivered})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_sequences_are_stripped() {
        assert_eq!(strip_ansi("\u{1b}[31mred\u{1b}[0m plain"), "red plain");
        assert_eq!(strip_ansi("\u{1b}]0;title\u{7}x\u{1b}]8;;u\u{1b}\\y"), "xy");
        assert_eq!(strip_ansi("no escapes"), "no escapes");
    }

    #[test]
    fn lines_are_grouped_by_entity_with_timestamp_set_and_relative_time_removed() {
        let msg =
            b"{\"entity_id\":\"a\",\"message\":\"\\u001b[32mok\\u001b[0m\",\"relative_time\":5,\"level\":\"I\"}\n\
                    \n not json\n[1,2]\n{\"message\":\"no entity\"}\n{\"entity_id\":\"b\",\"message\":\"x\"}\n\
                    {\"entity_id\":\"a\",\"message\":\"second\",\"@timestamp\":\"old\"}\n";
        let p = process_message(msg, "2026-01-01T00:00:00.000000Z");
        assert_eq!((p.parse_errors, p.no_entity, p.accepted()), (2, 1, 3));
        assert_eq!(p.groups[0].0, "a");
        assert_eq!(
            p.groups[0].1[0],
            json!({"entity_id":"a","message":"ok","level":"I","@timestamp":"2026-01-01T00:00:00.000000Z"})
        );
        assert_eq!(p.groups[0].1[1]["@timestamp"], "2026-01-01T00:00:00.000000Z");
        assert_eq!(p.groups[1].0, "b");
    }

    #[test]
    fn non_utf8_message_is_one_parse_error() {
        assert_eq!(process_message(b"\xff\xfe", "t").parse_errors, 1);
    }
}
