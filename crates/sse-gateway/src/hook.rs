//! The connect hook: who decides whether a stream opens, and who hears that it ended.
//!
//! [`ConnectHook`] is the seam between the gateway and a backend. The binary
//! uses [`HttpCallbackHook`] (SSEGateway's `CALLBACK_URL` contract); an
//! in-process backend implements the trait directly. The gateway calls
//! `connect` once per stream and `disconnect` exactly once per stream that was
//! accepted and opened.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::ser::SerializeMap;
use uuid::Uuid;

use crate::callback_client::CallbackClient;

/// A boxed future, so the trait stays object-safe.
pub type HookFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the client sent: the raw URL and its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    /// Raw path and query exactly as received.
    pub url: String,
    /// Lower-case names in order of first occurrence; repeated values joined
    /// (`; ` for `cookie`, `, ` otherwise); non-UTF-8 bytes replaced.
    pub headers: Vec<(String, String)>,
}

impl ClientRequest {
    /// Collects the forwarded form of a request's URL and headers.
    pub fn from_parts(url: String, headers: &http::HeaderMap) -> Self {
        let mut out: Vec<(String, String)> = Vec::with_capacity(headers.keys_len());
        for name in headers.keys() {
            let sep = if name == http::header::COOKIE { "; " } else { ", " };
            let joined = headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()))
                .collect::<Vec<_>>()
                .join(sep);
            out.push((name.as_str().to_owned(), joined));
        }
        Self { url, headers: out }
    }
}

impl ClientRequest {
    /// Collects the forwarded form from raw header pairs (name, value bytes),
    /// with the same rules as [`ClientRequest::from_parts`].
    pub fn from_raw<'a>(url: String, headers: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut out: Vec<(String, String)> = Vec::new();
        for (name, value) in headers {
            let name = String::from_utf8_lossy(name).to_ascii_lowercase();
            let value = String::from_utf8_lossy(value);
            match out.iter_mut().find(|(k, _)| *k == name) {
                Some((k, v)) => {
                    v.push_str(if k == "cookie" { "; " } else { ", " });
                    v.push_str(&value);
                }
                None => out.push((name, value.into_owned())),
            }
        }
        out.shrink_to_fit();
        Self { url, headers: out }
    }
}

impl Serialize for ClientRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Headers<'a>(&'a [(String, String)]);
        impl Serialize for Headers<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (k, v) in self.0 {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("url", &self.url)?;
        m.serialize_entry("headers", &Headers(&self.headers))?;
        m.end()
    }
}

/// The hook accepted the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The backend's id for this client (`request_id` in the answer).
    pub request_id: Option<String>,
    /// Routing keys the stream should be reachable by.
    pub bindings: Vec<String>,
    /// When the client's credentials expire (extension): the stream then gets
    /// `auth_expired`, a `retry:` hint, and ends.
    pub expires_at: Option<std::time::SystemTime>,
}

/// The hook did not accept the stream; each variant maps to one client answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400/401/403: answered in-stream with a `rejected` event.
    #[error("rejected by backend: {status} {message}")]
    Rejected {
        /// The backend's status.
        status: u16,
        /// The backend's reason phrase (or the standard one).
        message: String,
    },
    /// Any other non-2xx status: passed through as `BACKEND_ERROR`.
    #[error("backend returned {0}")]
    Status(u16),
    /// No answer within the callback timeout: 504.
    #[error("backend callback timed out")]
    Timeout,
    /// The backend could not be reached: 503.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
}

/// Why a stream ended, as sent in the disconnect callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// The client went away.
    ClientClosed,
    /// The gateway closed it (a `close` command or shutdown).
    ServerClosed,
    /// A write failed or the stream's queue overflowed.
    Error,
}

impl DisconnectReason {
    /// The wire name (`client_closed`, `server_closed`, `error`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::ServerClosed => "server_closed",
            Self::Error => "error",
        }
    }
}

/// Decides about new streams and hears about ended ones.
pub trait ConnectHook: Send + Sync + 'static {
    /// Called once per SSE request, after its token is registered.
    fn connect<'a>(&'a self, token: Uuid, request: &'a ClientRequest) -> HookFuture<'a, Result<Accepted, Refusal>>;

    /// Called for every accepted stream when it ends: once, or again (same
    /// arguments) when it failed and the gateway retries it.
    fn disconnect<'a>(
        &'a self,
        token: Uuid,
        reason: DisconnectReason,
        request: &'a ClientRequest,
    ) -> HookFuture<'a, Result<(), Refusal>>;

    /// Called every roster interval (when rosters are on) with every token
    /// this instance holds. An in-process backend has no use for it.
    fn roster<'a>(
        &'a self,
        instance: &'a str,
        tokens: &'a [Uuid],
        interval: Duration,
    ) -> HookFuture<'a, Result<(), Refusal>> {
        let _ = (instance, tokens, interval);
        Box::pin(async { Ok(()) })
    }
}

impl Refusal {
    /// True when trying again later may succeed: no answer, or a 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout | Self::Unavailable(_) => true,
            Self::Status(code) => *code >= 500,
            Self::Rejected { .. } => false,
        }
    }
}

/// The SSEGateway callback: `POST CALLBACK_URL` with a JSON body.
pub struct HttpCallbackHook {
    timeout: Duration,
    /// Sent in every callback when rosters are on.
    instance: Option<String>,
    /// Kept-alive connections to `CALLBACK_URL`.
    client: CallbackClient,
}

/// How long a connect callback may run in all. The gateway answers the
/// client after `CALLBACK_TIMEOUT_MS`, but keeps listening this long so that
/// a late accept gets its disconnect instead of staying a phantom.
const CONNECT_LATE_LIMIT: Duration = Duration::from_secs(60);

/// Largest connect answer the gateway reads; bigger answers are treated as `{}`.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Serialize)]
struct CallbackBody<'a> {
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    token: String,
    request: &'a ClientRequest,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<&'a str>,
}

#[derive(Serialize)]
struct RosterBody<'a> {
    action: &'static str,
    instance: &'a str,
    tokens: Vec<String>,
    interval_seconds: u64,
}

impl HttpCallbackHook {
    /// A hook posting to `url` with the given timeout per callback; with
    /// `instance`, every callback names this gateway instance (rosters on).
    pub fn new(url: http::Uri, timeout: Duration, instance: Option<String>) -> Arc<Self> {
        Arc::new(Self { timeout, instance, client: CallbackClient::new(&url) })
    }

    async fn post(
        &self,
        body: &impl Serialize,
        timeout: Duration,
    ) -> Result<(http::StatusCode, Option<String>, Bytes), Refusal> {
        let json = serde_json::to_vec(body).map_err(|e| Refusal::Unavailable(e.to_string()))?;
        // A body that fails to arrive or is too large counts as empty, i.e. `{}`.
        let call = self.client.post_json(&json, MAX_ANSWER_BYTES);
        let answer = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| Refusal::Timeout)?
            .map_err(|e| Refusal::Unavailable(error_chain(&e)))?;
        Ok((answer.status, answer.phrase, answer.body))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Reads the optional connect answer: a JSON object with `request_id`,
/// `bindings` and `expires_at` (unix seconds); other fields are ignored,
/// anything else is the same as `{}`.
fn parse_answer(body: &[u8]) -> Accepted {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Accepted::default();
    };
    let string = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let bindings = obj
        .get("bindings")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|b| b.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let expires_at = obj
        .get("expires_at")
        .and_then(serde_json::Value::as_f64)
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e12)
        .map(|s| std::time::UNIX_EPOCH + Duration::from_secs_f64(s));
    Accepted { request_id: string("request_id"), bindings, expires_at }
}

impl ConnectHook for HttpCallbackHook {
    fn connect<'a>(&'a self, token: Uuid, request: &'a ClientRequest) -> HookFuture<'a, Result<Accepted, Refusal>> {
        Box::pin(async move {
            let instance = self.instance.as_deref();
            let body = CallbackBody { action: "connect", reason: None, token: token.to_string(), request, instance };
            let (status, phrase, answer) = self.post(&body, self.timeout.max(CONNECT_LATE_LIMIT)).await?;
            match status.as_u16() {
                200..=299 => Ok(parse_answer(&answer)),
                code @ (400 | 401 | 403) => Err(Refusal::Rejected {
                    status: code,
                    message: phrase.or_else(|| status.canonical_reason().map(str::to_owned)).unwrap_or_default(),
                }),
                code => Err(Refusal::Status(code)),
            }
        })
    }

    fn disconnect<'a>(
        &'a self,
        token: Uuid,
        reason: DisconnectReason,
        request: &'a ClientRequest,
    ) -> HookFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            let body = CallbackBody {
                action: "disconnect",
                reason: Some(reason.as_str()),
                token: token.to_string(),
                request,
                instance: self.instance.as_deref(),
            };
            let (status, _, _) = self.post(&body, self.timeout).await?;
            if status.is_success() { Ok(()) } else { Err(Refusal::Status(status.as_u16())) }
        })
    }

    fn roster<'a>(
        &'a self,
        instance: &'a str,
        tokens: &'a [Uuid],
        interval: Duration,
    ) -> HookFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            let tokens = tokens.iter().map(Uuid::to_string).collect();
            let body = RosterBody { action: "roster", instance, tokens, interval_seconds: interval.as_secs() };
            let (status, _, _) = self.post(&body, self.timeout).await?;
            if status.is_success() { Ok(()) } else { Err(Refusal::Status(status.as_u16())) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_fields_are_read_and_junk_is_empty() {
        let a = parse_answer(br#"{"request_id":"r1","bindings":["a",1,"b"],"subject":"u","role":"admin","x":1}"#);
        assert_eq!(a.request_id.as_deref(), Some("r1"));
        assert_eq!(a.bindings, vec!["a", "b"]);
        assert_eq!(a.expires_at, None);
        let e = parse_answer(br#"{"expires_at":1700000000.5}"#).expires_at.unwrap();
        assert_eq!(e.duration_since(std::time::UNIX_EPOCH).unwrap(), Duration::from_millis(1_700_000_000_500));
        assert_eq!(parse_answer(br#"{"expires_at":"soon"}"#).expires_at, None);
        assert_eq!(parse_answer(b""), Accepted::default());
        assert_eq!(parse_answer(b"[1]"), Accepted::default());
        assert_eq!(parse_answer(b"not json"), Accepted::default());
        assert_eq!(parse_answer(br#"{"request_id":5}"#), Accepted::default());
    }

    #[test]
    fn headers_keep_order_and_join_repeats() {
        let mut h = http::HeaderMap::new();
        h.append("x-b", "1".parse().unwrap());
        h.append("cookie", "a=1".parse().unwrap());
        h.append("x-b", "2".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        h.append("x-bin", http::HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let r = ClientRequest::from_parts("/s?a=%20".into(), &h);
        let raw: Vec<(&[u8], &[u8])> =
            vec![(b"X-B", b"1"), (b"Cookie", b"a=1"), (b"x-b", b"2"), (b"cookie", b"b=2"), (b"X-Bin", b"caf\xe9")];
        assert_eq!(ClientRequest::from_raw("/s?a=%20".into(), raw.into_iter()), r);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"url":"/s?a=%20","headers":{"x-b":"1, 2","cookie":"a=1; b=2","x-bin":"caf�"}}"#
        );
    }
}
