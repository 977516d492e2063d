//! The access rule of every `/internal/*` route the hub serves: with
//! `INTERNAL_API_SECRET` set, `Authorization: Bearer <secret>` is required
//! (401 otherwise); without it, only loopback peers are answered (403
//! otherwise). The peer address comes from the in-process gateway (a
//! `SocketAddr` request extension) or from axum's `ConnectInfo` (external
//! gateway mode); a request without either is treated as not loopback.
//!
//! Also the small internal routes that need nothing else: the rotation
//! nudge and the version push.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use sse_backend::ConnectionManager;
use sse_backend::broadcaster::Event;
use sse_backend::version::{Delivery, VersionService, bearer_matches};

use crate::metrics::HubMetrics;

/// The rule's setting.
#[derive(Clone)]
pub struct InternalAccess {
    secret: Option<Arc<str>>,
}

impl InternalAccess {
    /// `secret`: `INTERNAL_API_SECRET` (empty counts as unset).
    pub fn new(secret: Option<String>) -> Self {
        Self { secret: secret.filter(|s| !s.is_empty()).map(Arc::from) }
    }

    /// The decision for a request to an internal route.
    pub fn check(&self, headers: &axum::http::HeaderMap, peer: Option<SocketAddr>) -> Result<(), Refused> {
        match &self.secret {
            Some(secret) if bearer_matches(headers, secret) => Ok(()),
            Some(_) => Err(Refused::Unauthorized),
            None if peer.is_some_and(|p| p.ip().is_loopback()) => Ok(()),
            None => Err(Refused::NotLoopback),
        }
    }
}

/// Why an internal route was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// 401: a secret is configured and the bearer does not match.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403: no secret is configured and the peer is not loopback.
    #[error("internal routes are only served to loopback clients when INTERNAL_API_SECRET is not set")]
    NotLoopback,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotLoopback => StatusCode::FORBIDDEN,
        };
        (status, Json(json!({"error": self.to_string()}))).into_response()
    }
}

fn peer_of(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<SocketAddr>()
        .copied()
        .or_else(|| req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0))
}

/// Middleware applying [`InternalAccess`] to paths under `/internal/`.
pub async fn guard(State(access): State<InternalAccess>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/internal/")
        && let Err(refused) = access.check(req.headers(), peer_of(&req))
    {
        return refused.into_response();
    }
    next.run(req).await
}

/// Rotation nudges (docs/BACKEND.md, Rotation nudges): `rotation-updated {}`
/// to every stream.
#[derive(Clone)]
pub struct Rotation {
    manager: ConnectionManager,
    metrics: HubMetrics,
    shutting_down: Arc<AtomicBool>,
}

impl Rotation {
    /// A nudger broadcasting through `manager`.
    pub fn new(manager: ConnectionManager, metrics: HubMetrics) -> Self {
        Self { manager, metrics, shutting_down: Arc::default() }
    }

    /// Broadcasts the nudge; false while shutting down or when no stream got it.
    pub async fn nudge(&self, source: &str) -> bool {
        if self.shutting_down.load(Ordering::SeqCst) {
            return false;
        }
        self.metrics.rotation_nudges.inc();
        tracing::info!(source, "rotation nudge");
        self.manager.broadcast(&Event::json("rotation-updated", &json!({})), None, "rotation").await
    }

    /// PREPARE_SHUTDOWN: nudges are ignored from now on.
    pub fn prepare_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// `POST /internal/rotation-nudge` (body ignored) -> 200 `{"status":"ok"}`.
    pub fn router(&self) -> axum::Router {
        axum::Router::new().route("/internal/rotation-nudge", post(nudge_route)).with_state(self.clone())
    }
}

async fn nudge_route(State(r): State<Rotation>) -> Json<serde_json::Value> {
    r.nudge("internal").await;
    Json(json!({"status": "ok"}))
}

/// `POST /internal/deployments/version` `{"version","changelog"?,"request_id"?}`
/// (access by [`InternalAccess`], so it also works on loopback without a
/// secret):
///
/// * with `request_id`: to that stream only (remembered for its reconnects);
///   404 when no stream with that id is open;
/// * without: to every open stream;
///
/// -> 202 `{"request_id","delivered","status":"delivered"|"not delivered"}`,
/// 400 for a bad body, 503 once shutdown began.
pub fn version_router(version: VersionService) -> axum::Router {
    axum::Router::new().route("/internal/deployments/version", post(version_route)).with_state(version)
}

/// Body of a version push.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionPush {
    /// The one stream to tell; absent: every stream.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The new version.
    pub version: String,
    /// Optional changelog.
    #[serde(default)]
    pub changelog: Option<String>,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

async fn version_route(State(v): State<VersionService>, body: Bytes) -> Response {
    let body: VersionPush = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("Invalid payload: {e}")),
    };
    if body.version.is_empty() || body.request_id.as_deref() == Some("") {
        return error(StatusCode::BAD_REQUEST, "version is required; request_id, when given, is not empty".into());
    }
    let changelog = body.changelog.as_deref();
    let delivery = match &body.request_id {
        Some(rid) => v.push_to(rid, &body.version, changelog).await,
        None => v.push_all(&body.version, changelog).await,
    };
    let status = match delivery {
        Delivery::Delivered => "delivered",
        Delivery::NotDelivered => "not delivered",
        Delivery::NotConnected => {
            let rid = body.request_id.unwrap_or_default();
            return error(StatusCode::NOT_FOUND, format!("no open stream with request_id {rid:?}"));
        }
        Delivery::ShuttingDown => return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()),
    };
    let delivered = delivery == Delivery::Delivered;
    (StatusCode::ACCEPTED, Json(json!({"request_id": body.request_id, "delivered": delivered, "status": status})))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, header};

    fn peer(s: &str) -> Option<SocketAddr> {
        s.parse().ok()
    }

    #[test]
    fn without_secret_only_loopback_and_with_secret_only_the_bearer() {
        let open = InternalAccess::new(None);
        assert!(open.check(&HeaderMap::new(), peer("127.0.0.1:9")).is_ok());
        assert!(open.check(&HeaderMap::new(), peer("[::1]:9")).is_ok());
        assert_eq!(open.check(&HeaderMap::new(), peer("10.0.0.1:9")), Err(Refused::NotLoopback));
        assert_eq!(open.check(&HeaderMap::new(), None), Err(Refused::NotLoopback));
        assert_eq!(Refused::NotLoopback.into_response().status(), StatusCode::FORBIDDEN);
        let locked = InternalAccess::new(Some("s3".into()));
        let mut h = HeaderMap::new();
        assert_eq!(locked.check(&h, peer("127.0.0.1:9")), Err(Refused::Unauthorized));
        assert_eq!(Refused::Unauthorized.into_response().status(), StatusCode::UNAUTHORIZED);
        h.insert(header::AUTHORIZATION, "Bearer s3".parse().unwrap());
        assert!(locked.check(&h, peer("10.0.0.1:9")).is_ok());
        assert!(InternalAccess::new(Some(String::new())).check(&HeaderMap::new(), peer("127.0.0.1:1")).is_ok());
    }
}
