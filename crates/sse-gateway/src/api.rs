//! The gateway's own answers, independent of how they are transported:
//! the internal API (`/internal/send`, `/internal/publish`), readiness, the
//! access rule, and the messages of the routes it does not serve.
//!
//! Access rule: `/internal/send` is served on both listeners (its tokens are
//! unguessable; SSEGateway compatibility). `/internal/publish` and `/metrics`
//! are served on the internal listener, and on the public one only with
//! `Authorization: Bearer <INTERNAL_API_SECRET>`.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::command::{CloseCommand, CloseTarget, PublishCommand, SendCommand};
use crate::deliver::{self, DeliveryError};
use crate::error::{ApiError, ErrorCode};
use crate::events::{Event, Ingress};
use crate::keys::{is_valid_key, query_param};
use crate::router::SendOutcome;
use crate::routes::{Listener, Route};
use crate::shared::Shared;

/// The internal listener is trusted; the public one needs the bearer secret.
/// `authorization` is the request's `Authorization` header, if any.
pub(crate) fn authorize(shared: &Shared, listener: Listener, authorization: Option<&str>) -> Result<(), ApiError> {
    if listener == Listener::Internal {
        return Ok(());
    }
    let Some(secret) = &shared.config.internal_api_secret else {
        return Err(ApiError::new(
            ErrorCode::InternalListenerOnly,
            "This endpoint is served on the internal listener (INTERNAL_PORT), or here with INTERNAL_API_SECRET",
        ));
    };
    let given = authorization.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    if constant_time_eq(given.as_bytes(), secret.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Unauthorized, "Missing or wrong bearer token"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /internal/send`: `{"status": "ok" | "buffered"}`.
///
/// With RabbitMQ and history, an event for an open stream goes through the
/// cluster's history stream (so a resume on any instance replays it) and
/// the answer waits for it to be written here.
pub(crate) async fn send(shared: &Shared, body: &[u8]) -> Result<Value, ApiError> {
    let cmd = SendCommand::parse(body)?;
    if let (Some(amqp), Some(frame)) = (shared.amqp.as_ref().filter(|a| a.has_history()), &cmd.frame)
        && let Some(token) = deliver::parse_token(&cmd.token)
        && let Some(key) = shared.router.send_key(token)
    {
        let matched = amqp.publish_frame(&key, frame, Some(token), cmd.close, ()).await.map_err(broker_error)?;
        if matched == 0 {
            return Err(delivery_error(DeliveryError::NotFound));
        }
        return Ok(json!({"status": "ok"}));
    }
    let status =
        deliver::send(&shared.router, &shared.metrics, &cmd.token, cmd.frame, cmd.close).map_err(delivery_error)?;
    Ok(json!({"status": status.as_str()}))
}

/// `POST /internal/publish`: `{"matched": n}`, plus `results` for a batch.
///
/// With RabbitMQ and history, each event goes through the cluster's
/// history stream (reaching the streams of every instance) in order;
/// `matched` counts this instance's streams.
pub(crate) async fn publish(shared: &Shared, body: &[u8]) -> Result<Value, ApiError> {
    let (messages, batch) = PublishCommand::parse_batch(body)?;
    let results: Vec<usize> = match shared.amqp.as_ref().filter(|a| a.has_history()) {
        None => messages
            .iter()
            .map(|m| {
                deliver::publish(&shared.router, &shared.metrics, Ingress::Publish, &m.key, m.frame.as_ref(), m.close)
            })
            .collect(),
        Some(amqp) => {
            let mut results = Vec::with_capacity(messages.len());
            for m in &messages {
                let frame = m.frame.as_deref().unwrap_or_default();
                results.push(amqp.publish_frame(&m.key, frame, None, m.close, ()).await.map_err(broker_error)?);
            }
            results
        }
    };
    let total: usize = results.iter().sum();
    Ok(if batch { json!({"matched": total, "results": results}) } else { json!({"matched": total}) })
}

/// `GET /internal/history`: `{"id": "<cursor>"|null}`, the position of the
/// latest event (null with history off). A backend reads it before taking a
/// snapshot; a client that opens its stream with `lastEventId=<id>` then
/// gets every event after the snapshot's position.
pub(crate) fn history(shared: &Shared) -> Value {
    json!({"id": shared.router.history_position()})
}

fn broker_error(e: crate::amqp::AmqpError) -> ApiError {
    ApiError::new(ErrorCode::BrokerUnavailable, format!("the event could not be published to RabbitMQ: {e}"))
}

/// Default and largest page of `GET /internal/streams`.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

/// `GET /internal/streams?key=&limit=&after=`: one page of open streams in
/// token order, and `next_after` for the next page (null on the last).
pub(crate) fn streams(shared: &Shared, path_and_query: &str) -> Result<Value, ApiError> {
    let key = query_param(path_and_query, "key");
    if let Some(k) = &key
        && !is_valid_key(k)
    {
        return Err(ApiError::new(ErrorCode::InvalidKey, "key must be a valid routing key"));
    }
    let limit = match query_param(path_and_query, "limit") {
        None => DEFAULT_LIMIT,
        Some(l) => l.parse::<usize>().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidLimit, format!("limit must be an integer from 1 to {MAX_LIMIT}"))
        })?,
    };
    let after = match query_param(path_and_query, "after") {
        None => None,
        Some(t) => Some(
            deliver::parse_token(&t)
                .ok_or_else(|| ApiError::new(ErrorCode::InvalidToken, "after must be a token from next_after"))?,
        ),
    };
    let (page, next) = shared.router.list(key.as_deref(), after, limit);
    let streams: Vec<Value> = page
        .iter()
        .map(|s| {
            json!({
                "token": s.token.to_string(),
                "request_id": s.request_id.as_deref(),
                "keys": s.keys.iter().map(|k| k.as_ref()).collect::<Vec<&str>>(),
                "peer": s.peer.map(|p| p.to_string()),
                "connected_at": rfc3339(s.connected_at),
                "queued_bytes": s.queued_bytes,
                "events_sent": s.events_sent,
            })
        })
        .collect();
    Ok(json!({
        "instance": shared.config.instance_id,
        "streams": streams,
        "next_after": next.map(|t| t.to_string()),
    }))
}

fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// `POST /internal/close`: ends the streams of a key (on every instance,
/// through the broker, when there is one) or one token, each after a
/// `retry:` hint; their disconnect reason is `server_closed`.
pub(crate) async fn close(shared: &Shared, body: &[u8]) -> Result<Value, ApiError> {
    let cmd = CloseCommand::parse(body)?;
    let hint = crate::retry::close_hint(cmd.retry_ms);
    match cmd.target {
        CloseTarget::Token(t) => {
            // A pending stream counts too: it ends right after its connect decision.
            let outcome = deliver::parse_token(&t).map(|token| shared.router.send_control(token, hint(), true));
            let matched = usize::from(matches!(outcome, Some(SendOutcome::Delivered | SendOutcome::Buffered)));
            shared.metrics.emit(Event::AdminClosed { matched });
            Ok(json!({"matched": matched}))
        }
        CloseTarget::Key(key) => match &shared.amqp {
            None => {
                let matched = shared.router.close_key(&key, hint);
                shared.metrics.emit(Event::AdminClosed { matched });
                Ok(json!({"matched": matched}))
            }
            Some(amqp) => {
                let (matched, instances) = amqp.close_everywhere(&key, cmd.retry_ms).await.map_err(|e| {
                    ApiError::new(ErrorCode::BrokerUnavailable, format!("cannot reach the other instances: {e}"))
                })?;
                Ok(json!({"matched": matched, "instances": instances}))
            }
        },
    }
}

fn delivery_error(e: DeliveryError) -> ApiError {
    match e {
        DeliveryError::NotFound => ApiError::new(ErrorCode::TokenNotFound, "Token not found"),
        DeliveryError::InvalidEvent(m) => ApiError::new(ErrorCode::InvalidEventName, m),
        DeliveryError::BufferFull => ApiError::new(
            ErrorCode::BufferFull,
            "Too many events buffered for a stream whose connect callback is still running",
        ),
        DeliveryError::WriteFailed => {
            ApiError::new(ErrorCode::WriteFailed, "Stream write failed; the stream was closed")
        }
        DeliveryError::BrokerUnavailable => ApiError::new(ErrorCode::BrokerUnavailable, "RabbitMQ is unavailable"),
    }
}

/// `GET /readyz`: 200 when a callback is configured, the broker (if any) is
/// connected and the gateway is not draining; else 503 with the reasons.
pub(crate) fn readiness(shared: &Shared) -> (StatusCode, Value) {
    let configured = shared.hook.is_some();
    let draining = shared.router.is_draining();
    let rabbitmq = match &shared.amqp {
        None => "disabled",
        Some(a) if a.is_connected() => "connected",
        Some(_) => "disconnected",
    };
    if configured && !draining && rabbitmq != "disconnected" {
        return (StatusCode::OK, json!({"status": "ready", "configured": true, "rabbitmq": rabbitmq}));
    }
    let mut reasons = Vec::new();
    if !configured {
        reasons.push("CALLBACK_URL is not configured");
    }
    if rabbitmq == "disconnected" {
        reasons.push("RabbitMQ is disconnected");
    }
    if draining {
        reasons.push("shutting down");
    }
    let body = json!({"status": "not_ready", "configured": configured, "rabbitmq": rabbitmq, "reasons": reasons});
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

/// The answer to a request no handler serves.
pub(crate) fn unserved(route: Route, method: &Method, path: &str) -> ApiError {
    match route {
        Route::NotOnInternal => ApiError::new(
            ErrorCode::NotFound,
            format!("No route for {method} {path} on the internal listener; streams are on the public port"),
        ),
        Route::MethodNotAllowed => ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed on {path}; streams are opened with GET"),
        ),
        _ => ApiError::new(ErrorCode::NotFound, format!("No route for {method} {path}")),
    }
}
