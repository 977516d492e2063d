//! The built-in tasks and their start route, `POST /api/tasks`
//! `{"task_type","params"}` -> 201 `{"task_id","status":"pending"}`:
//!
//! * `demo`: `steps` steps of `delay_ms` each, progress `"Step i/n"` = i/n,
//!   result `{"status":"success"}`;
//! * `failing`: waits `delay_ms`, then fails with `error_message`;
//! * `long`: reports progress every `delay_ms` until cancelled or timed out.
//!
//! Running, progress, cancel and timeout are the toolkit's [`TaskService`].

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use sse_backend::IdentityResolver;
use sse_backend::tasks::{Task, TaskFailure, TaskService, task_fn};

use crate::device_logs::caller_subject;

/// Largest `steps` accepted.
const MAX_STEPS: u32 = 10_000;
/// Largest `delay_ms` accepted.
const MAX_DELAY_MS: u64 = 60_000;

/// Parameters of the built-in tasks.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TaskParams {
    /// Steps of `demo` (default 5).
    pub steps: Option<u32>,
    /// Delay per step (default 500 ms).
    pub delay_ms: Option<u64>,
    /// Error text of `failing`.
    pub error_message: Option<String>,
}

/// Body of `POST /api/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// `demo`, `failing` or `long`.
    pub task_type: String,
    /// Parameters.
    #[serde(default)]
    pub params: TaskParams,
}

/// A start request that names no known task or has out-of-range parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// Unknown `task_type`.
    #[error("unknown task_type {0:?}: expected demo, failing or long")]
    UnknownType(String),
    /// A parameter out of range.
    #[error("{0}")]
    OutOfRange(&'static str),
}

/// Builds the task a start body asks for.
pub fn build(body: StartBody) -> Result<Box<dyn Task>, StartError> {
    let steps = body.params.steps.unwrap_or(5);
    if steps == 0 || steps > MAX_STEPS {
        return Err(StartError::OutOfRange("params.steps must be between 1 and 10000"));
    }
    let delay_ms = body.params.delay_ms.unwrap_or(500);
    if delay_ms > MAX_DELAY_MS {
        return Err(StartError::OutOfRange("params.delay_ms must be at most 60000"));
    }
    let delay = Duration::from_millis(delay_ms);
    Ok(match body.task_type.as_str() {
        "demo" => task_fn(move |ctx| async move {
            for i in 1..=steps {
                tokio::time::sleep(delay).await;
                ctx.progress().send(&format!("Step {i}/{steps}"), f64::from(i) / f64::from(steps)).await;
            }
            Ok(Some(json!({"status": "success"})))
        }),
        "failing" => {
            let msg = body.params.error_message.unwrap_or_else(|| "Demo task failed on purpose".to_owned());
            task_fn(move |_| async move {
                tokio::time::sleep(delay).await;
                Err(TaskFailure(msg))
            })
        }
        "long" => task_fn(move |ctx| async move {
            let tick = delay.max(Duration::from_millis(10));
            let mut n: u64 = 0;
            loop {
                n += 1;
                ctx.progress().send_text(&format!("Working ({n})")).await;
                tokio::select! {
                    () = ctx.cancelled() => return Ok(None),
                    () = tokio::time::sleep(tick) => {}
                }
            }
        }),
        other => return Err(StartError::UnknownType(other.to_owned())),
    })
}

#[derive(Clone)]
struct StartState {
    tasks: TaskService,
    identity: Arc<IdentityResolver>,
}

/// `POST /api/tasks` plus the toolkit's status / cancel / delete routes.
pub fn router(tasks: TaskService, identity: Arc<IdentityResolver>) -> axum::Router {
    axum::Router::new()
        .route("/api/tasks", post(start_route))
        .with_state(StartState { tasks: tasks.clone(), identity })
        .merge(tasks.router())
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message, "code": "VALIDATION_ERROR"}))).into_response()
}

async fn start_route(State(s): State<StartState>, headers: HeaderMap, body: Bytes) -> Response {
    let body: StartBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(&format!("invalid body: {e}")),
    };
    let task = match build(body) {
        Ok(t) => t,
        Err(e) => return bad_request(&e.to_string()),
    };
    let caller = match caller_subject(&s.identity, &headers).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    match s.tasks.start_task(task, caller) {
        Ok(info) => (StatusCode::CREATED, Json(json!({"task_id": info.task_id, "status": "pending"}))).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(t: &str, params: serde_json::Value) -> StartBody {
        serde_json::from_value(json!({"task_type": t, "params": params})).unwrap()
    }

    #[test]
    fn known_types_build_and_bad_ones_are_refused() {
        assert!(build(body("demo", json!({"steps": 3, "delay_ms": 1}))).is_ok());
        assert!(build(body("failing", json!({"error_message": "x"}))).is_ok());
        assert!(build(body("long", json!({}))).is_ok());
        assert_eq!(build(body("nope", json!({}))).err(), Some(StartError::UnknownType("nope".into())));
        assert!(matches!(build(body("demo", json!({"steps": 0}))), Err(StartError::OutOfRange(_))));
        assert!(matches!(build(body("demo", json!({"delay_ms": 999_999}))), Err(StartError::OutOfRange(_))));
        assert!(serde_json::from_value::<StartBody>(json!({"task_type": "demo", "params": {"x": 1}})).is_err());
    }
}
