//! Frontend version notices (docs/BACKEND.md, Version notices; decision D5).
//!
//! On every connect the stream gets a `version` event: the version pushed for
//! its `request_id` if any, else the document at `FRONTEND_VERSION_URL`
//! (forwarded verbatim; `{"version":"unknown","error":...}` when it cannot be
//! fetched). It is sent from the connect observer, i.e. while the gateway
//! still buffers, so it arrives before `ready`. A push broadcasts to every
//! stream and is remembered as pending for its `request_id`. The push is
//! reachable through [`VersionService::router`], behind a bearer secret.
//! [`VersionService::push_to`] (one open stream, or `NotConnected`) and
//! [`VersionService::push_all`] / [`VersionService::notify_all`] (everyone)
//! are for servers whose route validates its target.
//!
//! The last notice sent to each `request_id` is remembered so that a resumed
//! stream is not told it twice; a `request_id` that left is forgotten after
//! [`VersionConfig::resume_window`], so the memory follows the open streams,
//! not every id ever seen.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::broadcaster::Event;
use crate::connections::ConnectionManager;

/// Settings.
#[derive(Debug, Clone)]
pub struct VersionConfig {
    /// `FRONTEND_VERSION_URL` (e.g. `http://frontend/version.json`).
    pub version_url: Option<String>,
    /// Fetch timeout (2 s).
    pub fetch_timeout: Duration,
    /// How long the last notice sent to a `request_id` is remembered after
    /// its stream ended, for a resume within that time (300 s: the gateway's
    /// history window in the hub). A client that resumes later may be told
    /// the same version again.
    pub resume_window: Duration,
}

impl Default for VersionConfig {
    fn default() -> Self {
        Self { version_url: None, fetch_timeout: Duration::from_secs(2), resume_window: Duration::from_secs(300) }
    }
}

/// The last notice sent to each `request_id`, and when the ids whose streams
/// ended left (oldest first), to forget them after the resume window.
#[derive(Default)]
struct Notified {
    by_request: HashMap<String, Sent>,
    left: VecDeque<(String, Instant)>,
}

struct Sent {
    payload: Value,
    /// When its stream ended; `None` while one is open.
    left_at: Option<Instant>,
}

impl Notified {
    #[cfg(test)]
    fn get(&self, request_id: &str) -> Option<&Value> {
        self.by_request.get(request_id).map(|s| &s.payload)
    }

    /// A stream of `request_id` opened again: true (and it is remembered as
    /// open) if `payload` is the last notice it was sent.
    fn back(&mut self, request_id: &str, payload: &Value) -> bool {
        match self.by_request.get_mut(request_id) {
            Some(sent) if sent.payload == *payload => {
                sent.left_at = None;
                true
            }
            _ => false,
        }
    }

    fn sent(&mut self, request_id: &str, payload: Value, now: Instant, window: Duration) {
        self.by_request.insert(request_id.to_owned(), Sent { payload, left_at: None });
        self.forget_left(now, window);
    }

    fn stream_ended(&mut self, request_id: &str, now: Instant, window: Duration) {
        if let Some(sent) = self.by_request.get_mut(request_id) {
            sent.left_at = Some(now);
            self.left.push_back((request_id.to_owned(), now));
        }
        self.forget_left(now, window);
    }

    /// Drops the ids that left more than `window` ago and did not come back
    /// (an id that left again later has a newer entry further on).
    fn forget_left(&mut self, now: Instant, window: Duration) {
        while let Some((rid, at)) = self.left.front() {
            if now.duration_since(*at) < window {
                break;
            }
            if self.by_request.get(rid).is_some_and(|s| s.left_at == Some(*at)) {
                self.by_request.remove(rid);
            }
            self.left.pop_front();
        }
    }

    fn clear(&mut self) {
        self.by_request.clear();
        self.left.clear();
    }
}

struct Inner {
    config: VersionConfig,
    manager: ConnectionManager,
    client: reqwest::Client,
    pending: Mutex<HashMap<String, Value>>,
    /// The last notice each request_id's stream was sent, so a resumed
    /// stream (which the gateway's history catches up) is not sent it twice.
    notified: Mutex<Notified>,
    shutting_down: AtomicBool,
}

/// The version service. Cheap to clone.
#[derive(Clone)]
pub struct VersionService {
    inner: Arc<Inner>,
}

impl VersionService {
    /// Creates the service and registers its connect observer on `manager`.
    pub fn new(config: VersionConfig, manager: ConnectionManager) -> Self {
        let client = reqwest::Client::builder().timeout(config.fetch_timeout).build().unwrap_or_default();
        let inner = Arc::new(Inner {
            config,
            manager: manager.clone(),
            client,
            pending: Mutex::default(),
            notified: Mutex::default(),
            shutting_down: AtomicBool::new(false),
        });
        // Weak: the manager owns the observers, the service owns the manager.
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        let on_connect = weak.clone();
        manager.register_on_connect(move |rid| {
            let weak = on_connect.clone();
            async move {
                if let Some(inner) = weak.upgrade() {
                    VersionService { inner }.on_connect(&rid).await;
                }
            }
        });
        manager.register_on_disconnect(move |rid| {
            if let Some(inner) = weak.upgrade() {
                let window = inner.config.resume_window;
                VersionService { inner }.notified().stream_ended(&rid, Instant::now(), window);
            }
            std::future::ready(())
        });
        Self { inner }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Value>> {
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notified(&self) -> std::sync::MutexGuard<'_, Notified> {
        self.inner.notified.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn on_connect(&self, request_id: &str) {
        let pending = self.pending().get(request_id).cloned();
        let payload = match pending {
            Some(p) => p,
            None => self.fetch().await,
        };
        let resumed = self.inner.manager.connection_info(request_id).is_some_and(|c| c.resumed);
        if resumed && self.notified().back(request_id, &payload) {
            // The client has this notice; what it missed since comes from the
            // gateway's history (or it gets a gap and refetches).
            return;
        }
        if self.inner.manager.send_to(request_id, &Event::json("version", &payload), "version").await {
            self.notified().sent(request_id, payload, Instant::now(), self.inner.config.resume_window);
        }
    }

    /// The deployed version document, or the `unknown` payload with the reason.
    pub async fn fetch(&self) -> Value {
        let Some(url) = &self.inner.config.version_url else {
            return json!({"version": "unknown", "error": "FRONTEND_VERSION_URL is not configured"});
        };
        let result = async {
            let resp = self.inner.client.get(url).send().await?.error_for_status()?;
            resp.json::<Value>().await
        }
        .await;
        result.unwrap_or_else(|e| json!({"version": "unknown", "error": e.to_string()}))
    }

    /// Broadcasts `{"version","changelog"?}` to every stream and remembers it
    /// for `request_id`; false (nothing done) while shutting down.
    pub async fn push(&self, request_id: &str, version: &str, changelog: Option<&str>) -> bool {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return false;
        }
        let payload = version_payload(version, changelog);
        self.pending().insert(request_id.to_owned(), payload.clone());
        self.inner.manager.broadcast(&Event::json("version", &payload), None, "version").await;
        true
    }

    /// Sends `{"version","changelog"?}` to the stream of `request_id` only
    /// and remembers it for that id's reconnects; nothing is done (and
    /// nothing remembered) when no stream of that id is open.
    pub async fn push_to(&self, request_id: &str, version: &str, changelog: Option<&str>) -> Delivery {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Delivery::ShuttingDown;
        }
        if !self.inner.manager.has_connection(request_id) {
            return Delivery::NotConnected;
        }
        let payload = version_payload(version, changelog);
        self.pending().insert(request_id.to_owned(), payload.clone());
        match self.inner.manager.send_to(request_id, &Event::json("version", &payload), "version").await {
            true => {
                self.notified().sent(request_id, payload, Instant::now(), self.inner.config.resume_window);
                Delivery::Delivered
            }
            false => Delivery::NotDelivered,
        }
    }

    /// Sends `{"version","changelog"?}` to every open stream (nothing is
    /// remembered: a stream opened later gets the version document).
    pub async fn push_all(&self, version: &str, changelog: Option<&str>) -> Delivery {
        self.notify_all(&version_payload(version, changelog)).await
    }

    /// Sends `payload` as the `version` event to every open stream (e.g. a
    /// version document that changed on disk, forwarded verbatim).
    pub async fn notify_all(&self, payload: &Value) -> Delivery {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Delivery::ShuttingDown;
        }
        match self.inner.manager.broadcast(&Event::json("version", payload), None, "version").await {
            true => Delivery::Delivered,
            false => Delivery::NotDelivered,
        }
    }

    /// PREPARE_SHUTDOWN: ignore pushes from now on.
    pub fn prepare_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
    }

    /// SHUTDOWN: forget pending versions.
    pub fn shutdown(&self) {
        self.pending().clear();
        self.notified().clear();
    }

    /// `POST /internal/deployments/version` `{"request_id","version","changelog"?}`
    /// with `Authorization: Bearer <secret>` -> 202
    /// `{"request_id","delivered","status":"delivered"|"queued"}`.
    pub fn router(&self, secret: String) -> axum::Router {
        axum::Router::new()
            .route("/internal/deployments/version", axum::routing::post(push_route))
            .with_state((self.clone(), Arc::new(secret)))
    }
}

/// What became of a targeted or broadcast push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Sent (to at least one stream).
    Delivered,
    /// Nothing was delivered (no open stream, or the send failed).
    NotDelivered,
    /// No stream with that `request_id` is open.
    NotConnected,
    /// Shutdown began; pushes are ignored.
    ShuttingDown,
}

fn version_payload(version: &str, changelog: Option<&str>) -> Value {
    let mut payload = json!({"version": version});
    if let Some(c) = changelog.filter(|c| !c.is_empty()) {
        payload["changelog"] = json!(c);
    }
    payload
}

/// Body of a version push.
#[derive(Debug, Deserialize)]
pub struct PushBody {
    /// Stored as pending for this id.
    pub request_id: String,
    /// The new version.
    pub version: String,
    /// Optional changelog.
    pub changelog: Option<String>,
}

/// Whether `headers` carry `Authorization: Bearer <secret>` (empty secret: never).
pub fn bearer_matches(headers: &HeaderMap, secret: &str) -> bool {
    !secret.is_empty()
        && headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && token.trim() == secret)
}

async fn push_route(
    State((svc, secret)): State<(VersionService, Arc<String>)>,
    headers: HeaderMap,
    body: Result<Json<PushBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !bearer_matches(&headers, &secret) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "Unauthorized"}))).into_response();
    }
    let Ok(Json(body)) = body else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "Invalid payload"}))).into_response();
    };
    let delivered = svc.push(&body.request_id, &body.version, body.changelog.as_deref()).await;
    let status = if delivered { "delivered" } else { "queued" };
    (StatusCode::ACCEPTED, Json(json!({"request_id": body.request_id, "delivered": delivered, "status": status})))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Recorder;

    #[tokio::test]
    async fn version_pending_version_is_sent_on_connect_else_unknown_with_error() {
        let (rec, cm) = Recorder::manager();
        let svc = VersionService::new(VersionConfig::default(), cm.clone());
        cm.on_connect("r1", "t1", "/", None, None).await;
        let ev = rec.events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, "t1");
        assert_eq!(ev[0].1.name, "version");
        let v: Value = serde_json::from_str(&ev[0].1.data).unwrap();
        assert_eq!(v["version"], "unknown");
        assert!(v["error"].is_string());
        rec.clear();
        assert!(svc.push("r2", "abc123", Some("fixes")).await);
        assert_eq!(rec.targets(), vec!["t1"], "a push broadcasts to every stream");
        rec.clear();
        cm.on_connect("r2", "t2", "/", None, None).await;
        assert_eq!(rec.events()[0].1.data, r#"{"changelog":"fixes","version":"abc123"}"#);
    }

    #[tokio::test]
    async fn version_push_is_ignored_during_shutdown_and_shutdown_clears_pending() {
        let (rec, cm) = Recorder::manager();
        let svc = VersionService::new(VersionConfig::default(), cm.clone());
        assert!(svc.push("r1", "v1", None).await);
        svc.prepare_shutdown();
        assert!(!svc.push("r1", "v2", None).await);
        svc.shutdown();
        assert!(svc.pending().is_empty());
        assert!(rec.calls().is_empty(), "no connections: nothing sent");
    }

    #[tokio::test]
    async fn push_to_reaches_only_its_stream_and_an_unknown_id_is_not_connected() {
        let (rec, cm) = Recorder::manager();
        let svc = VersionService::new(VersionConfig::default(), cm.clone());
        cm.on_connect("r1", "t1", "/", None, None).await;
        cm.on_connect("r2", "t2", "/", None, None).await;
        rec.clear();
        assert_eq!(svc.push_to("nope", "v2", None).await, Delivery::NotConnected);
        assert!(rec.calls().is_empty() && svc.pending().is_empty(), "nothing sent or remembered");
        assert_eq!(svc.push_to("r1", "v2", None).await, Delivery::Delivered);
        assert_eq!(rec.targets(), vec!["t1"], "only r1's stream");
        rec.clear();
        assert_eq!(svc.push_all("v3", Some("notes")).await, Delivery::Delivered);
        let mut targets = rec.targets();
        targets.sort();
        assert_eq!(targets, vec!["t1", "t2"], "everyone");
        svc.prepare_shutdown();
        assert_eq!(svc.push_all("v4", None).await, Delivery::ShuttingDown);
        assert_eq!(svc.push_to("r1", "v4", None).await, Delivery::ShuttingDown);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_notice_is_kept_through_the_resume_window_then_forgotten() {
        let (rec, cm) = Recorder::manager();
        let config = VersionConfig { resume_window: Duration::from_secs(60), ..VersionConfig::default() };
        let svc = VersionService::new(config, cm.clone());
        cm.on_connect("r1", "t1", "/", None, None).await;
        cm.on_connect("r2", "t2", "/", None, None).await;
        assert!(svc.notified().get("r1").is_some() && svc.notified().get("r2").is_some());
        cm.on_disconnect("t1").await;
        tokio::time::advance(Duration::from_secs(59)).await;
        cm.on_disconnect("t2").await;
        assert!(svc.notified().get("r1").is_some(), "r1 left 59 s ago: it may still resume");
        // r1 comes back within the window: not told again, and remembered while open.
        rec.clear();
        cm.on_connect_resuming("r1", "t1b", "/", None, None, true).await;
        assert!(rec.calls().is_empty(), "a resumed stream is not told the same version twice");
        tokio::time::advance(Duration::from_secs(2)).await;
        cm.on_connect("r3", "t3", "/", None, None).await;
        assert!(svc.notified().get("r1").is_some(), "r1 is open again: its first departure no longer counts");
        assert!(svc.notified().get("r2").is_some(), "r2 left 2 s ago");
        cm.on_disconnect("t1b").await;
        tokio::time::advance(Duration::from_secs(60)).await;
        cm.on_connect("r4", "t4", "/", None, None).await;
        let notified = svc.notified();
        assert!(notified.get("r1").is_none() && notified.get("r2").is_none(), "both left over 60 s ago");
        assert_eq!(notified.by_request.len(), 2, "only the open streams r3 and r4 are remembered");
        assert!(notified.left.is_empty());
    }

    #[test]
    fn bearer_secret_must_match_and_empty_secret_refuses() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer k".parse().unwrap());
        assert!(bearer_matches(&h, "k"));
        assert!(!bearer_matches(&h, "other"));
        assert!(!bearer_matches(&h, ""));
        assert!(!bearer_matches(&HeaderMap::new(), "k"));
    }
}
