//! A demo backend built with `sse-backend`, used by the black-box tests
//! (`tests/gateway.rs` includes this file) and runnable on its own:
//!
//! ```sh
//! SSE_GATEWAY_URL=http://127.0.0.1:3000 LISTEN_ADDR=127.0.0.1:5000 \
//!   cargo run -p sse-backend --example demo_backend
//! CALLBACK_URL=http://127.0.0.1:5000/api/sse/callback PORT=3000 sse-gateway
//! ```
//!
//! Routes: the callback, the task routes, the version push (internal and a
//! testing alias), health, `/metrics`, `/version.json` (a stand-in frontend),
//! and `/demo/*` triggers for broadcasts, targeted sends, tasks and
//! subscriptions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{Value, json};
use sse_backend::broadcaster::Event;
use sse_backend::config::{BackendConfig, Setting};
use sse_backend::identity::IdentityResolver;
use sse_backend::lifecycle::Lifecycle;
use sse_backend::subscriptions::Subscriptions;
use sse_backend::tasks::{TaskFailure, TaskService, task_fn};
use sse_backend::version::VersionService;
use sse_backend::{CallbackHandler, ConnectionManager, HttpBroadcaster, Metrics};

/// Everything the demo wires together; tests reach into it.
#[derive(Clone)]
pub struct Demo {
    pub manager: ConnectionManager,
    pub broadcaster: Arc<HttpBroadcaster>,
    pub tasks: TaskService,
    pub version: VersionService,
    pub subscriptions: Subscriptions,
    pub lifecycle: Lifecycle,
    pub identity: Arc<IdentityResolver>,
    /// What `/version.json` serves; `None` answers 503.
    pub frontend_version: Arc<Mutex<Option<String>>>,
    registry: Arc<Registry>,
}

impl Demo {
    /// Wires the toolkit from `config`; returns the demo and its router.
    pub fn build(config: BackendConfig) -> (Demo, Router) {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let broadcaster = Arc::new(HttpBroadcaster::new(config.gateway.clone()));
        let manager = ConnectionManager::new(broadcaster.clone(), metrics.clone());
        let identity = Arc::new(IdentityResolver::new(config.oidc.clone()));
        let callback = Arc::new(CallbackHandler::new(config.callback.clone(), manager.clone(), identity.clone()));
        let tasks = TaskService::new(config.tasks.clone(), manager.clone());
        tasks.start_cleanup();
        let version = VersionService::new(config.version.clone(), manager.clone());
        let subscriptions = Subscriptions::new(manager.clone());
        let lifecycle = Lifecycle::new(config.graceful_shutdown_timeout, metrics);
        lifecycle.manage_services(&tasks, &version, &subscriptions);
        lifecycle.fire_startup();
        let demo = Demo {
            manager,
            broadcaster,
            tasks: tasks.clone(),
            version: version.clone(),
            subscriptions,
            lifecycle: lifecycle.clone(),
            identity,
            frontend_version: Arc::new(Mutex::new(Some("v1".to_owned()))),
            registry: Arc::new(registry),
        };
        let routes = Router::new()
            .route("/version.json", get(version_json))
            .route("/metrics", get(metrics_text))
            .route("/demo/broadcast", post(broadcast))
            .route("/demo/send", post(send))
            .route("/demo/tasks/start", post(start_task))
            .route("/api/testing/deployments/version", post(testing_version))
            .route("/demo/subscribe", post(subscribe))
            .route("/demo/unsubscribe", post(unsubscribe))
            .route("/demo/forward", post(forward))
            .route("/demo/subscriptions", get(subscriptions_list))
            .with_state(demo.clone());
        let router = routes
            .merge(callback.router())
            .merge(tasks.router())
            .merge(version.router(config.internal_secret.clone()))
            .merge(lifecycle.health_router(Some(config.gateway.gateway_url.clone()), config.drain_auth_key.clone()));
        (demo, router)
    }

    /// The caller's subject from the request's own bearer/cookie (None when OIDC is off).
    async fn caller(&self, headers: &HeaderMap) -> Result<Option<String>, Response> {
        if !self.identity.enabled() {
            return Ok(None);
        }
        let pairs: Vec<(String, String)> = headers
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
            .collect();
        match self.identity.resolve(&pairs).await {
            Ok(id) => Ok(Some(id.subject)),
            Err(e) => Err((StatusCode::UNAUTHORIZED, Json(json!({"error": e.to_string()}))).into_response()),
        }
    }
}

async fn version_json(State(d): State<Demo>) -> Response {
    let v = d.frontend_version.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match v {
        Some(v) => Json(json!({"version": v})).into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn metrics_text(State(d): State<Demo>) -> String {
    sse_backend::metrics::encode(&d.registry)
}

#[derive(Deserialize)]
struct BroadcastBody {
    name: String,
    data: Value,
    subject: Option<String>,
}

async fn broadcast(State(d): State<Demo>, Json(b): Json<BroadcastBody>) -> Json<Value> {
    let delivered = d.manager.broadcast(&Event::json(&b.name, &b.data), b.subject.as_deref(), "demo").await;
    Json(json!({"delivered": delivered}))
}

#[derive(Deserialize)]
struct SendBody {
    request_id: String,
    name: String,
    data: Value,
}

async fn send(State(d): State<Demo>, Json(b): Json<SendBody>) -> Json<Value> {
    let delivered = d.manager.send_to(&b.request_id, &Event::json(&b.name, &b.data), "demo").await;
    Json(json!({"delivered": delivered}))
}

#[derive(Deserialize, Default)]
struct TaskParams {
    steps: Option<u32>,
    delay_ms: Option<u64>,
    error_message: Option<String>,
}

#[derive(Deserialize)]
struct StartBody {
    task_type: String,
    #[serde(default)]
    params: TaskParams,
}

async fn start_task(State(d): State<Demo>, headers: HeaderMap, Json(b): Json<StartBody>) -> Response {
    let caller = match d.caller(&headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let steps = b.params.steps.unwrap_or(3).max(1);
    let delay = Duration::from_millis(b.params.delay_ms.unwrap_or(0));
    let task = match b.task_type.as_str() {
        "demo_task" => task_fn(move |ctx| async move {
            for i in 1..=steps {
                if ctx.is_cancelled() {
                    return Ok(Some(json!({"status": "cancelled"})));
                }
                tokio::time::sleep(delay).await;
                ctx.progress().send(&format!("Step {i}/{steps}"), f64::from(i) / f64::from(steps)).await;
            }
            Ok(Some(json!({"status": "success"})))
        }),
        "failing_task" => {
            let msg = b.params.error_message.unwrap_or_else(|| "Task failed".to_owned());
            task_fn(move |_| async move {
                tokio::time::sleep(delay).await;
                Err(TaskFailure(msg))
            })
        }
        // Runs until cancelled (or timed out).
        "waiting_task" => task_fn(|ctx| async move {
            ctx.progress().send_text("waiting").await;
            ctx.cancelled().await;
            Ok(None)
        }),
        other => {
            return (StatusCode::BAD_REQUEST, Json(json!({"error": format!("unknown task_type {other}")})))
                .into_response();
        }
    };
    match d.tasks.start_task(task, caller) {
        Ok(info) => Json(json!({"task_id": info.task_id, "status": "started"})).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct VersionBody {
    request_id: String,
    version: String,
    changelog: Option<String>,
}

async fn testing_version(State(d): State<Demo>, Json(b): Json<VersionBody>) -> Response {
    let delivered = d.version.push(&b.request_id, &b.version, b.changelog.as_deref()).await;
    let status = if delivered { "delivered" } else { "queued" };
    (StatusCode::ACCEPTED, Json(json!({"request_id": b.request_id, "delivered": delivered, "status": status})))
        .into_response()
}

#[derive(Deserialize)]
struct SubscribeBody {
    request_id: String,
    topic: String,
}

async fn subscribe(State(d): State<Demo>, headers: HeaderMap, Json(b): Json<SubscribeBody>) -> Response {
    let caller = match d.caller(&headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match d.subscriptions.subscribe(&b.request_id, &b.topic, caller.as_deref()) {
        Ok(()) => Json(json!({"status": "subscribed", "topic": b.topic})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn unsubscribe(State(d): State<Demo>, headers: HeaderMap, Json(b): Json<SubscribeBody>) -> Response {
    let caller = match d.caller(&headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match d.subscriptions.unsubscribe(&b.request_id, &b.topic, caller.as_deref()) {
        Ok(()) => Json(json!({"status": "unsubscribed"})).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct ForwardBody {
    topic: String,
    data: Value,
}

async fn forward(State(d): State<Demo>, Json(b): Json<ForwardBody>) -> Json<Value> {
    let sent = d.subscriptions.forward(&b.topic, "device-logs", &b.data, "device-logs").await;
    Json(json!({"sent": sent}))
}

#[derive(Deserialize)]
struct SubscriptionsQuery {
    topic: Option<String>,
}

async fn subscriptions_list(State(d): State<Demo>, Query(q): Query<SubscriptionsQuery>) -> Json<Value> {
    let list: Vec<Value> = d
        .subscriptions
        .subscriptions(q.topic.as_deref())
        .into_iter()
        .map(|(topic, rids)| json!({"topic": topic, "request_ids": rids}))
        .collect();
    Json(json!({"subscriptions": list}))
}

#[allow(dead_code)] // unused when the tests include this file
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The demo's one setting of its own, read by the same rules as the toolkit's.
    const LISTEN_ADDR: Setting =
        Setting { env: "LISTEN_ADDR", flag: "listen", default: Some("127.0.0.1:5000"), help: "Listen address ip:port" };
    let env = |k: &str| std::env::var(k).ok();
    let config = BackendConfig::from_lookup(env)?;
    let addr = LISTEN_ADDR.value(&env).unwrap_or_default();
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("demo backend listening on http://{}", listener.local_addr()?);
    let (demo, router) = Demo::build(config);
    let lifecycle = demo.lifecycle.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        lifecycle.shutdown().await;
    });
    let done = demo.lifecycle.clone();
    axum::serve(listener, router).with_graceful_shutdown(async move { done.finished().await }).await?;
    Ok(())
}
