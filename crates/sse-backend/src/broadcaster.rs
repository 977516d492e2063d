//! How events leave the backend for the gateway.
//!
//! [`Broadcaster`] is the seam: `send` reaches one stream by token (the
//! SSEGateway `/internal/send` contract, always available), `publish` reaches
//! every stream bound to a routing key in one call when the gateway offers it
//! (`broadcast`, `connection.<request_id>`, `subject.<sub>`, `role.<role>`).
//! Implementations: [`HttpBroadcaster`] (any compatible gateway over HTTP) and
//! [`crate::in_process::InProcessBroadcaster`]. Deciding *which* streams an
//! event is for is not done here but in the [`crate::ConnectionManager`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::BoxFuture;

/// One event for the gateway: a name and its data, already JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Event name (`task_event`, `version`, ...); the gateway envelopes it.
    pub name: String,
    /// Payload as JSON text, written verbatim as the envelope's `payload`.
    pub data: String,
}

impl Event {
    /// An event whose data is `payload` serialised.
    pub fn json(name: &str, payload: &serde_json::Value) -> Self {
        Self { name: name.to_owned(), data: payload.to_string() }
    }
}

/// What the gateway did with a per-token send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// Written to (or queued for) an open stream.
    Ok,
    /// Buffered for a stream whose connect callback is still running.
    Buffered,
    /// The gateway does not know the token (stale mapping).
    NotFound,
}

/// What the gateway did with a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Delivered to this many streams.
    Matched(usize),
    /// This gateway cannot publish by key; fall back to per-token sends.
    Unsupported,
}

/// A send or publish that did not reach the gateway or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BroadcastError {
    /// Network error or timeout.
    #[error("gateway unreachable: {0}")]
    Unreachable(String),
    /// Any status other than 200 (and 404 for sends).
    #[error("gateway answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Body, shortened.
        body: String,
    },
    /// The gateway refused the event (bad name); fix the caller.
    #[error("gateway refused the event: {0}")]
    InvalidEvent(String),
    /// The stream's buffer is full.
    #[error("stream buffer full")]
    BufferFull,
    /// The stream could not take the event and was closed.
    #[error("stream write failed")]
    WriteFailed,
}

/// Delivers events to a gateway.
pub trait Broadcaster: Send + Sync + 'static {
    /// Sends `event` (if any) to one stream, then closes it if `close`.
    fn send<'a>(
        &'a self,
        token: &'a str,
        event: Option<&'a Event>,
        close: bool,
    ) -> BoxFuture<'a, Result<SendStatus, BroadcastError>>;

    /// Publishes `event` to every stream bound to `key`.
    fn publish<'a>(&'a self, key: &'a str, event: &'a Event) -> BoxFuture<'a, Result<PublishOutcome, BroadcastError>> {
        let _ = (key, event);
        Box::pin(async { Ok(PublishOutcome::Unsupported) })
    }

    /// Whether `publish` is worth trying (false: go per token straight away).
    fn publishes(&self) -> bool {
        false
    }

    /// The gateway history's current position (`None`: history off, or a
    /// gateway without it). Read it *before* taking a snapshot and hand it to
    /// the client with the snapshot; a stream opened with
    /// `?lastEventId=<position>` then gets every event after it: snapshot,
    /// then live, with no gap.
    fn history_position(&self) -> BoxFuture<'_, Result<Option<String>, BroadcastError>> {
        Box::pin(async { Ok(None) })
    }
}

/// Settings of [`HttpBroadcaster`].
#[derive(Debug, Clone)]
pub struct HttpBroadcasterConfig {
    /// Base URL of the gateway (`SSE_GATEWAY_URL`), e.g. `http://127.0.0.1:3002`.
    pub gateway_url: String,
    /// Sent as `Authorization: Bearer <secret>` when set (`INTERNAL_API_SECRET`).
    pub secret: Option<String>,
    /// Try `/internal/publish` for broadcasts; switched off for good the first
    /// time the gateway answers 404/405 to it (a plain SSEGateway); a 401/403
    /// (missing secret) falls back to per-token sends for that broadcast.
    pub publish: bool,
    /// Timeout per request (2 s by default, as the original backends used).
    pub timeout: Duration,
}

impl HttpBroadcasterConfig {
    /// Defaults for `gateway_url`: no secret, no publish, 2 s timeout.
    pub fn new(gateway_url: impl Into<String>) -> Self {
        Self { gateway_url: gateway_url.into(), secret: None, publish: false, timeout: Duration::from_secs(2) }
    }
}

/// A compatible gateway over HTTP.
pub struct HttpBroadcaster {
    config: HttpBroadcasterConfig,
    client: reqwest::Client,
    publish_unsupported: AtomicBool,
    sends: AtomicU64,
    publishes: AtomicU64,
}

#[derive(Serialize)]
struct SendBody<'a> {
    token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a Event>,
    close: bool,
}

#[derive(Serialize)]
struct PublishBody<'a> {
    key: &'a str,
    event: &'a Event,
    close: bool,
}

/// Errors that describe a bad event, from the gateway's error codes.
fn classify(status: u16, body: &str) -> BroadcastError {
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    match (status, code.as_str()) {
        (400, c) if c.starts_with("INVALID_EVENT") => BroadcastError::InvalidEvent(body.to_owned()),
        (429, _) => BroadcastError::BufferFull,
        (500, "WRITE_FAILED") => BroadcastError::WriteFailed,
        _ => BroadcastError::Status { status, body: body.chars().take(200).collect() },
    }
}

impl HttpBroadcaster {
    /// A broadcaster with its own pooled client.
    pub fn new(config: HttpBroadcasterConfig) -> Self {
        let client = reqwest::Client::builder().timeout(config.timeout).build().unwrap_or_default();
        Self {
            config,
            client,
            publish_unsupported: AtomicBool::new(false),
            sends: AtomicU64::new(0),
            publishes: AtomicU64::new(0),
        }
    }

    /// `(per-token sends, publishes)` made so far (HTTP requests, not events).
    pub fn request_counts(&self) -> (u64, u64) {
        (self.sends.load(Ordering::Relaxed), self.publishes.load(Ordering::Relaxed))
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, path)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{}", self.config.gateway_url.trim_end_matches('/'), path);
        let req = self.client.request(method, url);
        match &self.config.secret {
            Some(s) => req.bearer_auth(s),
            None => req,
        }
    }
}

fn unreachable(e: reqwest::Error) -> BroadcastError {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    BroadcastError::Unreachable(msg)
}

impl Broadcaster for HttpBroadcaster {
    fn send<'a>(
        &'a self,
        token: &'a str,
        event: Option<&'a Event>,
        close: bool,
    ) -> BoxFuture<'a, Result<SendStatus, BroadcastError>> {
        Box::pin(async move {
            self.sends.fetch_add(1, Ordering::Relaxed);
            let resp = self
                .post("/internal/send")
                .json(&SendBody { token, event, close })
                .send()
                .await
                .map_err(unreachable)?;
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            match status {
                200 if body.contains("\"buffered\"") => Ok(SendStatus::Buffered),
                200 => Ok(SendStatus::Ok),
                404 => Ok(SendStatus::NotFound),
                s => Err(classify(s, &body)),
            }
        })
    }

    fn publish<'a>(&'a self, key: &'a str, event: &'a Event) -> BoxFuture<'a, Result<PublishOutcome, BroadcastError>> {
        Box::pin(async move {
            if !self.publishes() {
                return Ok(PublishOutcome::Unsupported);
            }
            self.publishes.fetch_add(1, Ordering::Relaxed);
            let resp = self
                .post("/internal/publish")
                .json(&PublishBody { key, event, close: false })
                .send()
                .await
                .map_err(unreachable)?;
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            match status {
                200 => {
                    let matched = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["matched"].as_u64())
                        .ok_or_else(|| BroadcastError::Status { status, body: body.clone() })?;
                    Ok(PublishOutcome::Matched(usize::try_from(matched).unwrap_or(usize::MAX)))
                }
                404 | 405 => {
                    tracing::warn!(status, "gateway does not offer /internal/publish; sending per token from now on");
                    self.publish_unsupported.store(true, Ordering::Relaxed);
                    Ok(PublishOutcome::Unsupported)
                }
                // Refused before anything was delivered (no or wrong secret):
                // deliver per token this time, and say so.
                401 | 403 => {
                    tracing::warn!(
                        status,
                        "gateway refused /internal/publish (check SSE_GATEWAY_SECRET); sending per token"
                    );
                    Ok(PublishOutcome::Unsupported)
                }
                s => Err(classify(s, &body)),
            }
        })
    }

    fn publishes(&self) -> bool {
        self.config.publish && !self.publish_unsupported.load(Ordering::Relaxed)
    }

    fn history_position(&self) -> BoxFuture<'_, Result<Option<String>, BroadcastError>> {
        Box::pin(async move {
            let resp = self.request(reqwest::Method::GET, "/internal/history").send().await.map_err(unreachable)?;
            let status = resp.status().as_u16();
            if status == 404 {
                // A gateway without the endpoint (the Node one) has no history.
                return Ok(None);
            }
            if status != 200 {
                let body = resp.text().await.unwrap_or_default();
                return Err(BroadcastError::Status { status, body });
            }
            let body: serde_json::Value = resp.json().await.map_err(unreachable)?;
            Ok(body.get("id").and_then(serde_json::Value::as_str).map(str::to_owned))
        })
    }
}
