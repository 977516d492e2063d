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

use crate::command::{PublishCommand, SendCommand};
use crate::deliver::{self, DeliveryError};
use crate::error::{ApiError, ErrorCode};
use crate::events::Ingress;
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
pub(crate) fn send(shared: &Shared, body: &[u8]) -> Result<Value, ApiError> {
    let cmd = SendCommand::parse(body)?;
    let status =
        deliver::send(&shared.router, &shared.metrics, &cmd.token, cmd.frame, cmd.close).map_err(delivery_error)?;
    Ok(json!({"status": status.as_str()}))
}

/// `POST /internal/publish`: `{"matched": n}`, plus `results` for a batch.
pub(crate) fn publish(shared: &Shared, body: &[u8]) -> Result<Value, ApiError> {
    let (messages, batch) = PublishCommand::parse_batch(body)?;
    let results: Vec<usize> = messages
        .iter()
        .map(|m| deliver::publish(&shared.router, &shared.metrics, Ingress::Publish, &m.key, m.frame.as_ref(), m.close))
        .collect();
    let total: usize = results.iter().sum();
    Ok(if batch { json!({"matched": total, "results": results}) } else { json!({"matched": total}) })
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
