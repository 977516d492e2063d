//! Everything hyper serves: the internal API (`/internal/send`,
//! `/internal/publish`), health, metrics, `OPTIONS`, and the streams that do
//! not take the raw path (`HEAD`, HTTP/1.0, later requests on a kept-alive
//! connection).
//!
//! Access rule for the internal API: `/internal/send` is served on both
//! listeners (its tokens are unguessable; SSEGateway compatibility).
//! `/internal/publish` and `/metrics` are served on the internal listener, and
//! on the public one only with `Authorization: Bearer <INTERNAL_API_SECRET>`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Shared;
use crate::command::{PublishCommand, SendCommand};
use crate::connect::{self, Decision};
use crate::connection::{Listener, Rewind};
use crate::deliver::{self, DeliveryError};
use crate::error::ApiError;
use crate::hook::ClientRequest;
use crate::stream::{ResponseBody, SseBody};

type Resp = Response<ResponseBody>;

/// Oversized bodies up to this size are read and discarded before the 413.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// Serves a connection with hyper; `prefix` holds the bytes already read.
pub(crate) async fn serve_hyper(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    prefix: Bytes,
    listener: Listener,
) {
    // Cuts the connection when one of its streams overflows, or at the shutdown deadline.
    let abort = shared.cut.child_token();
    let svc_shared = Arc::clone(&shared);
    let svc_abort = abort.clone();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(peer);
        let shared = Arc::clone(&svc_shared);
        let abort = svc_abort.clone();
        async move { Ok::<_, Infallible>(handle(shared, abort, listener, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(shared.config.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(Rewind::new(prefix, tcp)), svc);
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            // Finish the response in flight, then close instead of keeping alive.
            _ = shared.shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = abort.cancelled() => {
                debug!("connection aborted");
                break;
            }
        }
    }
}

async fn handle(shared: Arc<Shared>, abort: CancellationToken, listener: Listener, req: Request<Incoming>) -> Resp {
    let mut resp = route(shared, abort, listener, req).await;
    if matches!(resp.body(), ResponseBody::App(_)) {
        return resp;
    }
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type, Cache-Control"));
    resp
}

async fn route(shared: Arc<Shared>, abort: CancellationToken, listener: Listener, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    if method == Method::OPTIONS {
        return status_only(StatusCode::NO_CONTENT);
    }
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/healthz" if get => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        "/readyz" if get => readiness(&shared),
        "/metrics" if get => match authorize(&shared, listener, &req) {
            Ok(()) => text(shared.metrics.render()),
            Err(e) => error(&e),
        },
        "/internal/send" if post => timed(&shared, "send", internal_send(&shared, req)).await,
        "/internal/publish" if post => match authorize(&shared, listener, &req) {
            Ok(()) => timed(&shared, "publish", internal_publish(&shared, req)).await,
            Err(e) => {
                shared.metrics.api_answered("publish", e.status.as_u16(), Duration::ZERO);
                error(&e)
            }
        },
        p if get && listener == Listener::Public && shared.is_stream_path(p) => stream(shared, abort, req).await,
        _ if listener == Listener::Public && shared.app.get().is_some() => match shared.app.get() {
            Some((_, app)) => app(req).await.map(ResponseBody::App),
            None => status_only(StatusCode::NOT_FOUND),
        },
        p if crate::connection::is_gateway_route(p) || shared.app.get().is_some() => {
            error(&ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("No route for {method} {p}")))
        }
        p if listener == Listener::Internal => error(&ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("No route for {method} {p} on the internal listener; streams are on the public port"),
        )),
        p => error(&ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("{method} is not allowed on {p}; streams are opened with GET"),
        )),
    }
}

/// The internal listener is trusted; the public one needs the bearer secret.
fn authorize(shared: &Shared, listener: Listener, req: &Request<Incoming>) -> Result<(), ApiError> {
    if listener == Listener::Internal {
        return Ok(());
    }
    let Some(secret) = &shared.config.internal_api_secret else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "INTERNAL_LISTENER_ONLY",
            "This endpoint is served on the internal listener (INTERNAL_PORT), or here with INTERNAL_API_SECRET",
        ));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), secret.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "Missing or wrong bearer token"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn timed(shared: &Shared, endpoint: &'static str, fut: impl Future<Output = Resp>) -> Resp {
    let started = Instant::now();
    let resp = fut.await;
    shared.metrics.api_answered(endpoint, resp.status().as_u16(), started.elapsed());
    resp
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

fn readiness(shared: &Shared) -> Resp {
    let configured = shared.hook.is_some();
    let draining = shared.router.is_draining();
    let rabbitmq = match &shared.amqp {
        None => "disabled",
        Some(a) if a.is_connected() => "connected",
        Some(_) => "disconnected",
    };
    if configured && !draining && rabbitmq != "disconnected" {
        return json(StatusCode::OK, serde_json::json!({"status": "ready", "configured": true, "rabbitmq": rabbitmq}));
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
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"status": "not_ready", "configured": configured, "rabbitmq": rabbitmq, "reasons": reasons}),
    )
}

async fn stream(shared: Arc<Shared>, abort: CancellationToken, req: Request<Incoming>) -> Resp {
    let url = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let request = ClientRequest::from_parts(url, req.headers());
    drop(req);
    let decision = match connect::start(&shared, request, Some(abort)) {
        Err(d) => d,
        Ok(rx) => match rx.await {
            Ok(d) => d,
            Err(_) => {
                return error(&ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL_ERROR",
                    "connect task failed",
                ));
            }
        },
    };
    match decision {
        Decision::Stream(handle) => sse(ResponseBody::Stream(SseBody::new(handle))),
        Decision::InStream(frame) => sse(ResponseBody::Chunked(Some(frame))),
        Decision::Error(e) => error(&e),
    }
}

async fn read_body(shared: &Shared, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limit = shared.config.max_body_bytes;
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", format!("Request body exceeds {limit} bytes"))
    };
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        // Read (and discard) a moderately oversized body before answering, so
        // the client is not reset mid-upload and actually sees the 413.
        if declared.is_some_and(|n| n <= DRAIN_LIMIT) {
            let mut body = req.into_body();
            let drain = async { while let Some(Ok(_)) = body.frame().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        }
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), limit).collect().await.map_err(|e| {
        if e.is::<LengthLimitError>() {
            too_large()
        } else {
            ApiError::bad_request("INVALID_BODY", "Could not read the request body")
        }
    })?;
    Ok(body.to_bytes())
}

fn delivery_error(e: DeliveryError) -> ApiError {
    match e {
        DeliveryError::NotFound => ApiError::new(StatusCode::NOT_FOUND, "TOKEN_NOT_FOUND", "Token not found"),
        DeliveryError::InvalidEvent(m) => ApiError::bad_request("INVALID_EVENT_NAME", m),
        DeliveryError::BufferFull => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "BUFFER_FULL",
            "Too many events buffered for a stream whose connect callback is still running",
        ),
        DeliveryError::WriteFailed => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "WRITE_FAILED",
            "Stream write failed; the stream was closed",
        ),
    }
}

async fn internal_send(shared: &Shared, req: Request<Incoming>) -> Resp {
    let result = async {
        let body = read_body(shared, req).await?;
        let cmd = SendCommand::parse(&body)?;
        deliver::send(shared, &cmd.token, cmd.frame, cmd.close).map_err(delivery_error)
    }
    .await;
    match result {
        Ok(status) => json(StatusCode::OK, serde_json::json!({"status": status.as_str()})),
        Err(e) => error(&e),
    }
}

async fn internal_publish(shared: &Shared, req: Request<Incoming>) -> Resp {
    let result = async {
        let body = read_body(shared, req).await?;
        PublishCommand::parse_batch(&body)
    }
    .await;
    match result {
        Err(e) => error(&e),
        Ok((messages, batch)) => {
            let results: Vec<usize> = messages
                .iter()
                .map(|m| deliver::publish(shared, "publish", &m.key, m.frame.as_ref(), m.close))
                .collect();
            let total: usize = results.iter().sum();
            if batch {
                json(StatusCode::OK, serde_json::json!({"matched": total, "results": results}))
            } else {
                json(StatusCode::OK, serde_json::json!({"matched": total}))
            }
        }
    }
}
