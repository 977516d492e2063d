//! The HTTP surface: accept loop, routing, the connect path, `/internal/send`,
//! health, metrics, heartbeats and the shutdown drain.
//!
//! HTTP/1.1 only, served by hyper with one task per connection. Each
//! connection task also listens to an abort token, so a stream whose client
//! stopped reading can be cut even while its socket write is blocked.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::Shared;
use crate::command::SendCommand;
use crate::error::ApiError;
use crate::hook::{ClientRequest, ConnectHook, DisconnectReason, Refusal};
use crate::router::{Opened, SendOutcome};
use crate::stream::{EndHook, PushError, ResponseBody, SseBody, StreamQueue};

type Resp = Response<ResponseBody>;

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let graceful = GracefulShutdown::new();
    // Connection tasks, so the drain knows when every body has been dropped
    // (and every disconnect callback spawned).
    let connections = TaskTracker::new();
    let heartbeat = tokio::spawn(heartbeat_loop(Arc::clone(&shared)));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => spawn_connection(&shared, &graceful, &connections, tcp),
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    heartbeat.abort();
    let deadline = Instant::now() + shared.config.shutdown_timeout;
    let streams = shared.router.start_draining();
    info!(streams = streams.len(), "shutting down: draining streams");
    for q in &streams {
        q.close(Some(drain_hint()), DisconnectReason::ServerClosed);
    }
    drop(streams);
    if tokio::time::timeout_at(deadline, graceful.shutdown()).await.is_err() {
        warn!("connections still open at the shutdown deadline; cutting them");
        shared.cut.cancel();
    }
    connections.close();
    if tokio::time::timeout(Duration::from_secs(1), connections.wait()).await.is_err() {
        warn!("connection tasks did not stop after being cut");
    }
    shared.tracker.close();
    let callbacks_deadline = Instant::now() + shared.config.callback_timeout + Duration::from_secs(1);
    if tokio::time::timeout_at(callbacks_deadline, shared.tracker.wait()).await.is_err() {
        warn!("some disconnect callbacks did not finish before exit");
    }
    info!("shutdown complete");
}

fn spawn_connection(shared: &Arc<Shared>, graceful: &GracefulShutdown, connections: &TaskTracker, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let abort = shared.cut.child_token();
    let svc_shared = Arc::clone(shared);
    let svc_abort = abort.clone();
    let svc = service_fn(move |req| {
        let shared = Arc::clone(&svc_shared);
        let abort = svc_abort.clone();
        async move { Ok::<_, Infallible>(handle(shared, abort, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(tcp), svc);
    let conn = graceful.watch(conn);
    connections.spawn(async move {
        tokio::select! {
            res = conn => if let Err(e) = res { debug!(error = %e, "connection ended with an error") },
            _ = abort.cancelled() => debug!("connection aborted"),
        }
    });
}

async fn handle(shared: Arc<Shared>, abort: CancellationToken, req: Request<Incoming>) -> Resp {
    let mut resp = route(shared, abort, req).await;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type, Cache-Control"));
    resp
}

async fn route(shared: Arc<Shared>, abort: CancellationToken, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    if method == Method::OPTIONS {
        return status_only(StatusCode::NO_CONTENT);
    }
    let get = method == Method::GET || method == Method::HEAD;
    match req.uri().path() {
        "/healthz" if get => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        "/readyz" if get => readiness(&shared),
        "/metrics" if get => text(shared.metrics.render()),
        "/internal/send" if method == Method::POST => internal_send(&shared, req).await,
        p if p == "/internal" || p.starts_with("/internal/") => {
            error(&ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("No route for {method} {p}")))
        }
        _ if get => connect(shared, abort, req).await,
        p => error(&ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("{method} is not allowed on {p}; streams are opened with GET"),
        )),
    }
}

fn status_only(status: StatusCode) -> Resp {
    let mut r = Response::new(ResponseBody::Full(None));
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Resp {
    let mut r = Response::new(ResponseBody::Full(Some(Bytes::from(v.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

fn text(body: String) -> Resp {
    let mut r = Response::new(ResponseBody::Full(Some(Bytes::from(body))));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

fn error(e: &ApiError) -> Resp {
    let mut r = Response::new(ResponseBody::Full(Some(e.body())));
    *r.status_mut() = e.status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

fn sse(body: ResponseBody) -> Resp {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// A `retry:` hint between 1 and 5 s, so drained clients do not all come back at once.
fn drain_hint() -> Bytes {
    let jitter = (Uuid::new_v4().as_u128() % 4000) as u64;
    sse_wire::encode::retry(1000 + jitter)
}

fn readiness(shared: &Shared) -> Resp {
    let configured = shared.hook.is_some();
    let draining = shared.shutdown.is_cancelled();
    if configured && !draining {
        return json(
            StatusCode::OK,
            serde_json::json!({"status": "ready", "configured": true, "rabbitmq": "disabled"}),
        );
    }
    let mut reasons = Vec::new();
    if !configured {
        reasons.push("CALLBACK_URL is not configured");
    }
    if draining {
        reasons.push("shutting down");
    }
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"status": "not_ready", "configured": configured, "rabbitmq": "disabled", "reasons": reasons}),
    )
}

/// The connect path: register the token, ask the hook, answer the client.
async fn connect(shared: Arc<Shared>, abort: CancellationToken, req: Request<Incoming>) -> Resp {
    let Some(hook) = shared.hook.clone() else {
        return error(&ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_NOT_CONFIGURED",
            "CALLBACK_URL is not configured",
        ));
    };
    let url = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let request = Arc::new(ClientRequest::from_parts(url, req.headers()));
    drop(req);
    let token = Uuid::new_v4();
    if !shared.router.register_pending(token) {
        return error(&ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "SHUTTING_DOWN", "The gateway is shutting down"));
    }
    // The hook runs in its own task: if the client leaves meanwhile (hyper then
    // drops this future), the task still learns the answer and can report it.
    let (tx, rx) = oneshot::channel();
    shared.tracker.spawn(decide(Arc::clone(&shared), hook, token, request, abort, tx));
    rx.await.unwrap_or_else(|_| {
        error(&ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "connect task failed"))
    })
}

async fn decide(
    shared: Arc<Shared>,
    hook: Arc<dyn ConnectHook>,
    token: Uuid,
    request: Arc<ClientRequest>,
    abort: CancellationToken,
    tx: oneshot::Sender<Resp>,
) {
    let result = hook.connect(token, &request).await;
    let resp = match result {
        Ok(accepted) => {
            shared.metrics.callback("connect", "accepted");
            if tx.is_closed() {
                shared.router.remove(token);
                info!(%token, "client left during the connect callback");
                spawn_disconnect(&shared, hook, token, DisconnectReason::ClientClosed, request);
                return;
            }
            let queue = StreamQueue::new(token, request, shared.config.stream_queue_bytes, abort);
            match shared.router.open(&queue, Bytes::from_static(sse_wire::encode::READY), drain_hint) {
                Opened::Gone => {
                    spawn_disconnect(&shared, hook, token, DisconnectReason::ServerClosed, Arc::clone(queue.request()));
                    error(&ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "SHUTTING_DOWN", "The stream was closed"))
                }
                Opened::Live | Opened::Closing => {
                    shared.metrics.stream_opened();
                    info!(%token, request_id = accepted.request_id.as_deref().unwrap_or(""), "stream opened");
                    sse(ResponseBody::Stream(SseBody::new(queue, end_hook(&shared, hook))))
                }
            }
        }
        Err(refusal) => {
            shared.router.remove(token);
            refusal_response(&shared, token, refusal)
        }
    };
    // If the client left just now, the response (and its body) is dropped
    // here, which reports `client_closed` for an opened stream.
    let _ = tx.send(resp);
}

fn refusal_response(shared: &Shared, token: Uuid, refusal: Refusal) -> Resp {
    match refusal {
        Refusal::Rejected { status, message } => {
            shared.metrics.callback("connect", "rejected");
            info!(%token, status, "backend rejected the stream");
            sse(ResponseBody::Chunked(Some(sse_wire::encode::rejected(status, &message))))
        }
        Refusal::Status(code) => {
            shared.metrics.callback("connect", "status");
            warn!(%token, status = code, "backend answered the connect callback with an error status");
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            error(&ApiError::new(status, "BACKEND_ERROR", format!("Backend returned {code}")))
        }
        Refusal::Timeout => {
            shared.metrics.callback("connect", "timeout");
            warn!(%token, "connect callback timed out");
            error(&ApiError::new(StatusCode::GATEWAY_TIMEOUT, "GATEWAY_TIMEOUT", "Backend callback timed out"))
        }
        Refusal::Unavailable(e) => {
            shared.metrics.callback("connect", "unavailable");
            warn!(%token, error = %e, "backend unavailable");
            error(&ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "BACKEND_UNAVAILABLE", "Backend unavailable"))
        }
    }
}

fn end_hook(shared: &Arc<Shared>, hook: Arc<dyn ConnectHook>) -> EndHook {
    let shared = Arc::clone(shared);
    Box::new(move |queue: &Arc<StreamQueue>, reason| {
        shared.router.remove_stream(queue);
        shared.metrics.stream_ended(reason);
        info!(token = %queue.token(), reason = reason.as_str(), "stream ended");
        spawn_disconnect(&shared, hook, queue.token(), reason, Arc::clone(queue.request()));
    })
}

fn spawn_disconnect(
    shared: &Arc<Shared>,
    hook: Arc<dyn ConnectHook>,
    token: Uuid,
    reason: DisconnectReason,
    request: Arc<ClientRequest>,
) {
    // Bodies can be dropped while the runtime itself shuts down; then there is
    // nobody left to send the callback.
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    let task_shared = Arc::clone(shared);
    shared.tracker.spawn_on(
        async move {
            match hook.disconnect(token, reason, &request).await {
                Ok(()) => task_shared.metrics.callback("disconnect", "ok"),
                Err(e) => {
                    task_shared.metrics.callback("disconnect", "failed");
                    warn!(%token, error = %e, "disconnect callback failed");
                }
            }
        },
        &rt,
    );
}

async fn internal_send(shared: &Shared, req: Request<Incoming>) -> Resp {
    let resp = match send(shared, req).await {
        Ok(status) => json(StatusCode::OK, serde_json::json!({"status": status})),
        Err(e) => error(&e),
    };
    shared.metrics.send_answered(resp.status().as_u16());
    resp
}

async fn send(shared: &Shared, req: Request<Incoming>) -> Result<&'static str, ApiError> {
    let limit = shared.config.max_body_bytes;
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", format!("Request body exceeds {limit} bytes"))
    };
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), limit).collect().await.map_err(|e| {
        if e.is::<LengthLimitError>() {
            too_large()
        } else {
            ApiError::bad_request("INVALID_BODY", "Could not read the request body")
        }
    })?;
    let cmd = SendCommand::parse(&body.to_bytes())?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "TOKEN_NOT_FOUND", "Token not found");
    let token = parse_token(&cmd.token).ok_or_else(not_found)?;
    let had_frame = cmd.frame.is_some();
    let outcome = shared.router.send(token, cmd.frame, cmd.close);
    match outcome {
        SendOutcome::Delivered => {
            if had_frame {
                shared.metrics.event_delivered();
            }
            Ok("ok")
        }
        SendOutcome::Buffered => Ok("buffered"),
        SendOutcome::NotFound => Err(not_found()),
        SendOutcome::BufferFull => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "BUFFER_FULL",
            "Too many events buffered for a stream whose connect callback is still running",
        )),
        SendOutcome::Overflow | SendOutcome::WriteFailed => {
            if matches!(outcome, SendOutcome::Overflow) {
                shared.metrics.queue_overflow();
            }
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "WRITE_FAILED",
                "Stream write failed; the stream was closed",
            ))
        }
    }
}

/// Tokens are lower-case hyphenated UUIDs, compared exactly (as SSEGateway's map keys are).
fn parse_token(s: &str) -> Option<Uuid> {
    let u = Uuid::try_parse(s).ok()?;
    let mut buf = Uuid::encode_buffer();
    (u.hyphenated().encode_lower(&mut buf) == s).then_some(u)
}

async fn heartbeat_loop(shared: Arc<Shared>) {
    let period = shared.config.heartbeat_interval;
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for q in shared.router.open_streams() {
            if let Err(PushError::Overflow) = q.push(Bytes::from_static(sse_wire::encode::HEARTBEAT)) {
                shared.metrics.queue_overflow();
                shared.router.remove_stream(&q);
            }
        }
    }
}
