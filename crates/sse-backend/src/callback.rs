//! The connect/disconnect/roster callback (docs/BACKEND.md, Callback handler),
//! one implementation for both
//! ingresses: the `POST /api/sse/callback` axum route ([`CallbackHandler::router`])
//! and the in-process [`crate::in_process::InProcessHook`].
//!
//! Order of checks, as in the original backends: secret (when configured) -> body present and
//! JSON -> action -> payload shape -> `request_id` (first `request_id` query
//! parameter; missing/empty or containing `:` -> 400). A connect then resolves
//! the identity (never rejecting for it), registers the stream with the
//! [`ConnectionManager`] (which binds the identity before running the connect
//! observers, so a version notice is sent while the gateway still buffers),
//! and answers `{}` or, with [`AnswerMode::Routing`], the routing answer; both
//! carry `expires_at` when the identity came from a token. A roster (sent by
//! gateways with rosters on) goes to [`ConnectionManager::on_roster`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use serde_json::{Value, json};

use crate::connections::{ConnectionInfo, ConnectionManager, Roster};
use crate::identity::IdentityResolver;

/// What a connect answer carries. In both modes `expires_at` is added when the
/// identity came from a token (a gateway that does not know it ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnswerMode {
    /// `{}` (as the original backends answer; the gateway knows the stream by token only).
    #[default]
    Empty,
    /// `{"request_id","subject","role","bindings"}`, so a gateway that
    /// publishes by key can reach the stream (needed with publish).
    Routing,
}

/// Settings of the callback.
#[derive(Debug, Clone, Default)]
pub struct CallbackConfig {
    /// Required value of the `secret` query parameter. `Some("")` refuses every
    /// callback (a production deployment that forgot the secret fails closed).
    pub secret: Option<String>,
    /// Shape of the connect answer.
    pub answer: AnswerMode,
}

/// A refused callback: status and JSON body exactly as the original backends answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// 401 `{"error":"Unauthorized"}`.
    #[error("Unauthorized")]
    Unauthorized,
    /// 400 `{"error":"Missing JSON body"}`.
    #[error("Missing JSON body")]
    MissingBody,
    /// 400 `{"error":"Invalid JSON"}`.
    #[error("Invalid JSON")]
    InvalidJson,
    /// 400 `{"error":"Invalid payload","details":[...]}`.
    #[error("Invalid payload")]
    InvalidPayload(Vec<String>),
    /// 400 `{"error":"Missing request_id in URL"}`.
    #[error("Missing request_id in URL")]
    MissingRequestId,
    /// 400 `{"error":"Invalid request_id format"}`.
    #[error("Invalid request_id format")]
    InvalidRequestId,
    /// 400 `{"error":"Unknown action: <action>"}`.
    #[error("Unknown action: {0}")]
    UnknownAction(String),
    /// 500 `{"error":"Internal server error"}`.
    #[error("Internal server error")]
    Internal,
}

impl CallbackError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        match self {
            Self::InvalidPayload(details) => json!({"error": "Invalid payload", "details": details}),
            other => json!({"error": other.to_string()}),
        }
    }
}

impl IntoResponse for CallbackError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}

/// The accepted connect's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectAnswer {
    /// The registered connection.
    pub info: ConnectionInfo,
    /// Its routing keys.
    pub bindings: Vec<String>,
    /// When the stream's credential expires (Unix seconds, the JWT `exp`);
    /// the gateway then ends the stream with `auth_expired`.
    pub expires_at: Option<u64>,
}

impl ConnectAnswer {
    /// The JSON answer for `mode`.
    pub fn to_json(&self, mode: AnswerMode) -> Value {
        let mut answer = match mode {
            AnswerMode::Empty => json!({}),
            AnswerMode::Routing => json!({
                "request_id": self.info.request_id,
                "subject": self.info.subject,
                "role": self.info.role,
                "bindings": self.bindings,
            }),
        };
        if let (Some(exp), Value::Object(map)) = (self.expires_at, &mut answer) {
            map.insert("expires_at".to_owned(), exp.into());
        }
        answer
    }
}

/// The callback logic, shared by the HTTP route and the in-process hook.
pub struct CallbackHandler {
    config: CallbackConfig,
    manager: ConnectionManager,
    identity: Arc<IdentityResolver>,
}

/// The `request_id` of a forwarded URL: the first `request_id` parameter.
pub fn request_id_of(url: &str) -> Result<String, CallbackError> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    let first = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "request_id").map(|(_, v)| v);
    match first {
        None => Err(CallbackError::MissingRequestId),
        Some(v) if v.is_empty() => Err(CallbackError::MissingRequestId),
        Some(v) if v.contains(':') => Err(CallbackError::InvalidRequestId),
        Some(v) => Ok(v.into_owned()),
    }
}

fn first_query_param<'q>(query: &'q str, name: &str) -> Option<std::borrow::Cow<'q, str>> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v)
}

/// A validated connect/disconnect payload.
struct Payload {
    token: String,
    url: String,
    headers: Vec<(String, String)>,
    instance: Option<String>,
}

/// The optional `instance` of a connect/disconnect: absent or `null` is none
/// (gateways without rosters send none), else a non-empty string.
fn instance_of(body: &Value, details: &mut Vec<String>) -> Option<String> {
    match body.get("instance") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            details.push("instance: a non-empty string is required".to_owned());
            None
        }
    }
}

fn validate(body: &Value, action: &str) -> Result<Payload, CallbackError> {
    let mut details = Vec::new();
    let token = body.get("token").and_then(Value::as_str);
    if token.is_none() {
        details.push("token: a string is required".to_owned());
    }
    let instance = instance_of(body, &mut details);
    if action == "disconnect" && !body.get("reason").is_some_and(Value::is_string) {
        details.push("reason: a string is required".to_owned());
    }
    let request = body.get("request");
    let url = request.and_then(|r| r.get("url")).and_then(Value::as_str);
    let mut headers = Vec::new();
    match request {
        Some(Value::Object(_)) => {
            if url.is_none() {
                details.push("request.url: a string is required".to_owned());
            }
            match request.and_then(|r| r.get("headers")) {
                Some(Value::Object(map)) => {
                    for (k, v) in map {
                        match v.as_str() {
                            Some(s) => headers.push((k.clone(), s.to_owned())),
                            None => details.push(format!("request.headers.{k}: a string is required")),
                        }
                    }
                }
                _ => details.push("request.headers: an object of strings is required".to_owned()),
            }
        }
        _ => details.push("request: an object is required".to_owned()),
    }
    match (token, url) {
        (Some(t), Some(u)) if details.is_empty() => {
            Ok(Payload { token: t.to_owned(), url: u.to_owned(), headers, instance })
        }
        _ => Err(CallbackError::InvalidPayload(details)),
    }
}

/// A roster body: `instance` a non-empty string, `tokens` an array of
/// strings, `interval_seconds` a positive integer.
fn validate_roster(body: &Value) -> Result<Roster, CallbackError> {
    let mut details = Vec::new();
    let instance = body.get("instance").and_then(Value::as_str).filter(|s| !s.is_empty());
    if instance.is_none() {
        details.push("instance: a non-empty string is required".to_owned());
    }
    let mut tokens = Vec::new();
    match body.get("tokens") {
        Some(Value::Array(list)) => {
            for (n, t) in list.iter().enumerate() {
                match t.as_str() {
                    Some(t) => tokens.push(t.to_owned()),
                    None => details.push(format!("tokens.{n}: a string is required")),
                }
            }
        }
        _ => details.push("tokens: an array of strings is required".to_owned()),
    }
    let interval = body.get("interval_seconds").and_then(Value::as_u64).filter(|n| *n > 0);
    if interval.is_none() {
        details.push("interval_seconds: a positive integer is required".to_owned());
    }
    match (instance, interval) {
        (Some(i), Some(n)) if details.is_empty() => {
            Ok(Roster { instance: i.to_owned(), tokens, interval: std::time::Duration::from_secs(n) })
        }
        _ => Err(CallbackError::InvalidPayload(details)),
    }
}

/// Largest callback body read. Rosters list every token of an instance
/// (about 40 bytes each), so this is far above axum's 2 MiB default.
pub const MAX_CALLBACK_BODY: usize = 32 * 1024 * 1024;

impl CallbackHandler {
    /// A handler registering streams with `manager`.
    pub fn new(config: CallbackConfig, manager: ConnectionManager, identity: Arc<IdentityResolver>) -> Self {
        Self { config, manager, identity }
    }

    /// The connection manager.
    pub fn manager(&self) -> &ConnectionManager {
        &self.manager
    }

    /// Handles a connect: `request_id` from `url`, identity from `headers`,
    /// registration with the gateway `instance` holding the stream (if
    /// named), replacement, observers. Never refuses for identity.
    pub async fn connect(
        &self,
        token: &str,
        url: &str,
        headers: &[(String, String)],
        instance: Option<&str>,
    ) -> Result<ConnectAnswer, CallbackError> {
        let request_id = request_id_of(url)?;
        let identity = match self.identity.resolve(headers).await {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(request_id, error = %e, "no identity bound to the stream");
                if self.identity.enabled() && e != crate::identity::IdentityError::NoToken {
                    self.manager.metrics().count_identity(false);
                }
                None
            }
        };
        // EventSource sends Last-Event-ID when it reconnects (or the page passes lastEventId).
        let resumed = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("last-event-id") && !v.is_empty())
            || first_query_param(url.split_once('?').map_or("", |(_, q)| q), "lastEventId")
                .is_some_and(|v| !v.is_empty());
        self.manager.on_connect_resuming(&request_id, token, url, identity.as_ref(), instance, resumed).await;
        let info = self.manager.connection_info(&request_id).unwrap_or_else(|| ConnectionInfo {
            request_id: request_id.clone(),
            token: token.to_owned(),
            url: url.to_owned(),
            subject: identity.as_ref().map(|i| i.subject.clone()),
            role: identity.as_ref().and_then(|i| i.role.clone()),
            instance: instance.map(str::to_owned),
            resumed,
        });
        let bindings = ConnectionManager::bindings(&info);
        Ok(ConnectAnswer { info, bindings, expires_at: identity.and_then(|i| i.expires_at) })
    }

    /// Handles a disconnect with the gateway's `reason`. A stream the gateway
    /// ended with `error` (its client did not keep up: the stream's queue
    /// overflowed or its socket stalled; or a write failed) is logged at warn
    /// with its token, `request_id` and URL, so a dropped slow page is never
    /// silent.
    pub async fn disconnect(&self, token: &str, reason: &str) {
        if reason == "error" {
            let info = self.manager.connection_by_token(token);
            tracing::warn!(
                token,
                request_id = info.as_ref().map_or("", |c| c.request_id.as_str()),
                url = info.as_ref().map_or("", |c| c.url.as_str()),
                "the gateway closed a stream with error: its client did not keep up (queue overflow or \
                 stalled socket) or a write failed"
            );
        }
        self.manager.on_disconnect(token).await;
    }

    /// The whole HTTP exchange, from raw parts to status and JSON.
    pub async fn handle(&self, query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> (StatusCode, Value) {
        let run = AssertUnwindSafe(self.handle_inner(query, headers, body)).catch_unwind();
        match run.await {
            Ok(Ok(v)) => (StatusCode::OK, v),
            Ok(Err(e)) => (e.status(), e.body()),
            Err(p) => {
                tracing::error!(panic = %crate::observer::panic_message(p.as_ref()), "callback handler panicked");
                (StatusCode::INTERNAL_SERVER_ERROR, CallbackError::Internal.body())
            }
        }
    }

    async fn handle_inner(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Value, CallbackError> {
        if let Some(expected) = &self.config.secret {
            let given = query.and_then(|q| first_query_param(q, "secret"));
            if expected.is_empty() || given.as_deref() != Some(expected.as_str()) {
                return Err(CallbackError::Unauthorized);
            }
        }
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
        if body.is_empty() || !is_json {
            return Err(CallbackError::MissingBody);
        }
        let value: Value = serde_json::from_slice(body).map_err(|_| CallbackError::InvalidJson)?;
        let Value::Object(_) = &value else {
            return Err(CallbackError::InvalidPayload(vec!["body: a JSON object is required".to_owned()]));
        };
        match value.get("action") {
            Some(Value::String(a)) if a == "connect" => {
                let p = validate(&value, "connect")?;
                let answer = self.connect(&p.token, &p.url, &p.headers, p.instance.as_deref()).await?;
                Ok(answer.to_json(self.config.answer))
            }
            Some(Value::String(a)) if a == "disconnect" => {
                let p = validate(&value, "disconnect")?;
                let reason = value.get("reason").and_then(Value::as_str).unwrap_or_default();
                self.disconnect(&p.token, reason).await;
                Ok(json!({}))
            }
            Some(Value::String(a)) if a == "roster" => {
                let roster = validate_roster(&value)?;
                self.manager.on_roster(&roster).await;
                Ok(json!({}))
            }
            Some(Value::String(a)) => Err(CallbackError::UnknownAction(a.clone())),
            Some(other) => Err(CallbackError::UnknownAction(other.to_string())),
            None => Err(CallbackError::UnknownAction("null".to_owned())),
        }
    }

    /// The answer mode (the in-process hook always returns the routing fields).
    pub fn answer_mode(&self) -> AnswerMode {
        self.config.answer
    }

    /// `POST /api/sse/callback` (bodies up to [`MAX_CALLBACK_BODY`]).
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/api/sse/callback", axum::routing::post(serve))
            .layer(DefaultBodyLimit::max(MAX_CALLBACK_BODY))
            .with_state(self)
    }
}

async fn serve(
    State(handler): State<Arc<CallbackHandler>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (status, json) = handler.handle(query.as_deref(), &headers, &body).await;
    (status, Json(json)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Recorder;
    use std::future::Future;
    use std::sync::Mutex;

    fn handler(secret: Option<&str>) -> (Arc<Recorder>, CallbackHandler) {
        let (rec, cm) = Recorder::manager();
        let cfg = CallbackConfig { secret: secret.map(str::to_owned), answer: AnswerMode::Empty };
        (rec, CallbackHandler::new(cfg, cm, Arc::new(IdentityResolver::disabled())))
    }

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h
    }

    fn connect_body(url: &str) -> Vec<u8> {
        json!({"action":"connect","token":"tok-1","request":{"url":url,"headers":{"cookie":"a=1"}}})
            .to_string()
            .into_bytes()
    }

    #[tokio::test]
    async fn callback_api_connect_extracts_request_id_and_calls_on_connect_returns_empty_object() {
        let (_rec, h) = handler(None);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        h.manager().register_on_connect(move |rid| {
            let s = Arc::clone(&s);
            async move { s.lock().unwrap().push(rid) }
        });
        let (status, body) =
            h.handle(None, &json_headers(), &connect_body("/api/sse/stream?x=1&request_id=abc&request_id=zzz")).await;
        assert_eq!((status, body), (StatusCode::OK, json!({})));
        assert_eq!(*seen.lock().unwrap(), vec!["abc"], "the first request_id parameter");
        let info = h.manager().connection_info("abc").unwrap();
        assert_eq!(info.token, "tok-1");
        assert_eq!(info.url, "/api/sse/stream?x=1&request_id=abc&request_id=zzz");
        assert_eq!(info.subject.as_deref(), Some("local-user"), "OIDC off binds local-user");
    }

    #[tokio::test]
    async fn callback_api_disconnect_calls_on_disconnect() {
        let (_rec, h) = handler(None);
        h.handle(None, &json_headers(), &connect_body("/s?request_id=abc")).await;
        let body =
            json!({"action":"disconnect","reason":"client_closed","token":"tok-1","request":{"url":"/s","headers":{}}});
        let (status, answer) = h.handle(None, &json_headers(), body.to_string().as_bytes()).await;
        assert_eq!((status, answer), (StatusCode::OK, json!({})));
        assert!(!h.manager().has_connection("abc"));
    }

    #[tokio::test]
    async fn callback_api_secret_enforced_only_when_configured() {
        let (_rec, open) = handler(None);
        assert_eq!(open.handle(None, &json_headers(), &connect_body("/s?request_id=a")).await.0, StatusCode::OK);
        let (_rec, guarded) = handler(Some("s3cret"));
        for q in [None, Some("secret=wrong"), Some("other=1")] {
            let (status, body) = guarded.handle(q, &json_headers(), &connect_body("/s?request_id=a")).await;
            assert_eq!((status, body), (StatusCode::UNAUTHORIZED, json!({"error":"Unauthorized"})), "{q:?}");
        }
        let ok = guarded.handle(Some("secret=s3cret"), &json_headers(), &connect_body("/s?request_id=a")).await;
        assert_eq!(ok.0, StatusCode::OK);
        let (_rec, empty_setting) = handler(Some(""));
        let (status, _) =
            empty_setting.handle(Some("secret="), &json_headers(), &connect_body("/s?request_id=a")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "an empty configured secret refuses everything");
    }

    #[tokio::test]
    async fn callback_api_missing_request_id_invalid_json_missing_body_unknown_action_schema_error_colon_are_400() {
        let (_rec, h) = handler(None);
        let jh = json_headers();
        let cases: Vec<(HeaderMap, Vec<u8>, Value)> = vec![
            (jh.clone(), connect_body("/s?other=1"), json!({"error":"Missing request_id in URL"})),
            (jh.clone(), connect_body("/s?request_id="), json!({"error":"Missing request_id in URL"})),
            (jh.clone(), connect_body("/s?request_id=task:1"), json!({"error":"Invalid request_id format"})),
            (jh.clone(), b"{not json".to_vec(), json!({"error":"Invalid JSON"})),
            (jh.clone(), Vec::new(), json!({"error":"Missing JSON body"})),
            (HeaderMap::new(), connect_body("/s?request_id=a"), json!({"error":"Missing JSON body"})),
            (jh.clone(), br#"{"action":"ping"}"#.to_vec(), json!({"error":"Unknown action: ping"})),
        ];
        for (headers, body, expected) in cases {
            let (status, got) = h.handle(None, &headers, &body).await;
            assert_eq!((status, &got), (StatusCode::BAD_REQUEST, &expected), "body {}", String::from_utf8_lossy(&body));
        }
        let bad = json!({"action":"connect","token":5,"request":{"url":"/s","headers":{"x":["a"]}}});
        let (status, got) = h.handle(None, &jh, bad.to_string().as_bytes()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(got["error"], "Invalid payload");
        let details: Vec<&str> = got["details"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(details.iter().any(|d| d.starts_with("token")), "{details:?}");
        assert!(details.iter().any(|d| d.starts_with("request.headers.x")), "array header values fail: {details:?}");
        let no_reason = json!({"action":"disconnect","token":"t","request":{"url":"/s","headers":{}}});
        assert_eq!(h.handle(None, &jh, no_reason.to_string().as_bytes()).await.0, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn callback_api_unexpected_failure_is_500_internal_server_error() {
        let (rec, h) = handler(None);
        h.handle(None, &json_headers(), &connect_body("/s?request_id=a")).await;
        rec.panic_on_send(true);
        // The replacement close hits a broadcaster that panics: not an observer,
        // so nothing isolates it, and the handler answers 500.
        let (status, body) = h.handle(None, &json_headers(), &connect_body("/s?request_id=a")).await;
        assert_eq!((status, body), (StatusCode::INTERNAL_SERVER_ERROR, json!({"error":"Internal server error"})));
    }

    #[tokio::test]
    async fn routing_answer_lists_request_id_subject_and_bindings() {
        let (rec, cm) = Recorder::manager();
        let _ = rec;
        let cfg = CallbackConfig { secret: None, answer: AnswerMode::Routing };
        let h = CallbackHandler::new(cfg, cm, Arc::new(IdentityResolver::disabled()));
        let (status, body) = h.handle(None, &json_headers(), &connect_body("/s?request_id=r9")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"request_id":"r9","subject":"local-user","role":null,
                   "bindings":["broadcast","connection.r9","subject.local-user"]})
        );
    }

    fn post_json(h: &CallbackHandler, query: Option<&str>, body: Value) -> impl Future<Output = (StatusCode, Value)> {
        let bytes = body.to_string().into_bytes();
        async move { h.handle(query, &json_headers(), &bytes).await }
    }

    #[tokio::test]
    async fn connect_and_disconnect_accept_an_instance_and_old_gateways_send_none() {
        let (_rec, h) = handler(None);
        let with =
            json!({"action":"connect","token":"t1","request":{"url":"/s?request_id=a","headers":{}},"instance":"gw-1"});
        assert_eq!(post_json(&h, None, with).await, (StatusCode::OK, json!({})));
        assert_eq!(h.manager().connection_info("a").unwrap().instance.as_deref(), Some("gw-1"));
        assert_eq!(h.handle(None, &json_headers(), &connect_body("/s?request_id=b")).await.0, StatusCode::OK);
        assert_eq!(h.manager().connection_info("b").unwrap().instance, None, "no instance field: not roster-managed");
        let bad =
            json!({"action":"connect","token":"t3","request":{"url":"/s?request_id=c","headers":{}},"instance":7});
        let (status, body) = post_json(&h, None, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["details"], json!(["instance: a non-empty string is required"]));
        assert!(!h.manager().has_connection("c"));
        let bye = json!({"action":"disconnect","reason":"client_closed","token":"t1",
                         "request":{"url":"/s?request_id=a","headers":{}},"instance":"gw-1"});
        assert_eq!(post_json(&h, None, bye).await, (StatusCode::OK, json!({})));
        assert!(!h.manager().has_connection("a"));
    }

    #[tokio::test]
    async fn roster_is_answered_empty_and_ends_connections_its_instance_no_longer_holds() {
        let (_rec, h) = handler(Some("s3cret"));
        let q = Some("secret=s3cret");
        for (rid, tok) in [("a", "t1"), ("b", "t2")] {
            let body = json!({"action":"connect","token":tok,
                              "request":{"url":format!("/s?request_id={rid}"),"headers":{}},"instance":"gw-1"});
            assert_eq!(post_json(&h, q, body).await.0, StatusCode::OK);
        }
        let roster = json!({"action":"roster","instance":"gw-1","tokens":["t1"],"interval_seconds":5});
        assert_eq!(
            post_json(&h, None, roster.clone()).await,
            (StatusCode::UNAUTHORIZED, json!({"error":"Unauthorized"})),
            "the secret guards rosters too"
        );
        assert_eq!(post_json(&h, q, roster.clone()).await, (StatusCode::OK, json!({})));
        assert_eq!(post_json(&h, q, roster).await, (StatusCode::OK, json!({})));
        assert!(h.manager().has_connection("a"));
        assert!(!h.manager().has_connection("b"), "t2 was left out of the roster: instance_lost");
        assert_eq!(h.manager().metrics().rosters_received.get(), 2);
    }

    #[tokio::test]
    async fn invalid_roster_bodies_are_400_with_details() {
        let (_rec, h) = handler(None);
        let cases = [
            (json!({"action":"roster","tokens":[],"interval_seconds":5}), "instance"),
            (json!({"action":"roster","instance":"","tokens":[],"interval_seconds":5}), "instance"),
            (json!({"action":"roster","instance":"gw","interval_seconds":5}), "tokens"),
            (json!({"action":"roster","instance":"gw","tokens":["a",1],"interval_seconds":5}), "tokens.1"),
            (json!({"action":"roster","instance":"gw","tokens":[]}), "interval_seconds"),
            (json!({"action":"roster","instance":"gw","tokens":[],"interval_seconds":0}), "interval_seconds"),
            (json!({"action":"roster","instance":"gw","tokens":[],"interval_seconds":1.5}), "interval_seconds"),
            (json!({"action":"roster","instance":"gw","tokens":[],"interval_seconds":"5"}), "interval_seconds"),
        ];
        for (body, field) in cases {
            let (status, got) = post_json(&h, None, body.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(got["error"], "Invalid payload", "{body}");
            let details: Vec<&str> = got["details"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
            assert!(details.iter().any(|d| d.starts_with(&format!("{field}:"))), "{body}: {details:?}");
        }
        assert_eq!(h.manager().metrics().rosters_received.get(), 0, "refused rosters are not counted");
    }

    #[tokio::test]
    async fn connect_answer_carries_the_token_exp_as_expires_at_in_both_modes() {
        use crate::testing::{claims, oidc_resolver, sign};
        let c = claims("alice", 300);
        let exp = c["exp"].as_u64().unwrap();
        let bearer = format!("Bearer {}", sign(c, "test-key-1"));
        let body = |rid: &str| {
            json!({"action":"connect","token":format!("t-{rid}"),
                   "request":{"url":format!("/s?request_id={rid}"),"headers":{"authorization":bearer}}})
        };
        for mode in [AnswerMode::Empty, AnswerMode::Routing] {
            let (_rec, cm) = Recorder::manager();
            let h = CallbackHandler::new(CallbackConfig { secret: None, answer: mode }, cm, Arc::new(oidc_resolver()));
            let (status, answer) = post_json(&h, None, body("a")).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(answer["expires_at"], json!(exp), "{mode:?}: {answer}");
            if mode == AnswerMode::Routing {
                assert_eq!(answer["subject"], "alice");
            } else {
                assert_eq!(answer, json!({"expires_at": exp}));
            }
            let anonymous = json!({"action":"connect","token":"t-anon",
                                   "request":{"url":"/s?request_id=n","headers":{"cookie":"access_token=garbage"}}});
            let (status, answer) = post_json(&h, None, anonymous).await;
            assert_eq!(status, StatusCode::OK);
            assert!(answer.get("expires_at").is_none(), "no identity from a token, no expiry: {answer}");
        }
        let (_rec, off) = handler(None);
        let (_, answer) = post_json(&off, None, body("b")).await;
        assert_eq!(answer, json!({}), "OIDC off: local-user has no expiry");
    }
}
