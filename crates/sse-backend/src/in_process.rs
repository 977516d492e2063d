//! The toolkit inside the gateway's process: [`InProcessHook`] is the
//! gateway's `ConnectHook`, running exactly the callback logic of
//! [`crate::callback`] without HTTP; [`InProcessBroadcaster`] delivers
//! through a direct handle to the gateway's router.
//!
//! The broadcaster is written against [`GatewayPort`], implemented for
//! `sse_gateway::GatewayHandle` here and by fakes in tests. Because the
//! gateway needs the hook before it exists and the broadcaster needs the
//! gateway's handle, [`InProcessBroadcaster::deferred`] makes one whose port
//! is attached once the gateway is built.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use futures_util::FutureExt;
use sse_gateway::{Accepted, ClientRequest, ConnectHook, DisconnectReason, HookFuture, Refusal};
use uuid::Uuid;

use crate::BoxFuture;
use crate::broadcaster::{BroadcastError, Broadcaster, Event, PublishOutcome, SendStatus};
use crate::callback::{CallbackError, CallbackHandler};

/// The gateway's connect hook, answered in-process by a [`CallbackHandler`].
pub struct InProcessHook {
    handler: Arc<CallbackHandler>,
}

impl InProcessHook {
    /// A hook over `handler` (the same handler an HTTP route would use).
    pub fn new(handler: Arc<CallbackHandler>) -> Arc<Self> {
        Arc::new(Self { handler })
    }
}

fn refusal(e: &CallbackError) -> Refusal {
    match e.status().as_u16() {
        code @ (400 | 401 | 403) => Refusal::Rejected { status: code, message: e.to_string() },
        code => Refusal::Status(code),
    }
}

impl ConnectHook for InProcessHook {
    fn connect<'a>(&'a self, token: Uuid, request: &'a ClientRequest) -> HookFuture<'a, Result<Accepted, Refusal>> {
        Box::pin(async move {
            let token = token.to_string();
            // No instance: an in-process gateway shares the backend's fate, so
            // its streams never need roster management.
            let run =
                AssertUnwindSafe(self.handler.connect(&token, &request.url, &request.headers, None)).catch_unwind();
            match run.await {
                Ok(Ok(answer)) => Ok(Accepted {
                    request_id: Some(answer.info.request_id),
                    bindings: answer.bindings,
                    expires_at: answer.expires_at.and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s))),
                }),
                Ok(Err(e)) => Err(refusal(&e)),
                Err(p) => {
                    tracing::error!(panic = %crate::observer::panic_message(p.as_ref()), "connect hook panicked");
                    Err(Refusal::Status(500))
                }
            }
        })
    }

    fn disconnect<'a>(
        &'a self,
        token: Uuid,
        reason: DisconnectReason,
        _request: &'a ClientRequest,
    ) -> HookFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            let token = token.to_string();
            match AssertUnwindSafe(self.handler.disconnect(&token, reason.as_str())).catch_unwind().await {
                Ok(()) => Ok(()),
                Err(_) => Err(Refusal::Status(500)),
            }
        })
    }
}

/// An event as the gateway handle takes it.
#[derive(Debug, Clone, Copy)]
pub struct PortEvent<'a> {
    /// Event name (`None`: an unnamed event).
    pub name: Option<&'a str>,
    /// Data, written verbatim.
    pub data: &'a str,
}

/// Why the gateway handle did not deliver (mirrors `sse_gateway::DeliveryError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortError {
    /// No such token.
    NotFound,
    /// The event cannot be written (bad name).
    InvalidEvent(String),
    /// The pending buffer is full.
    BufferFull,
    /// The stream's queue overflowed; it was closed.
    WriteFailed,
    /// The gateway's broker is down (RabbitMQ mode with history).
    BrokerUnavailable,
}

/// Direct delivery into a gateway router in this process.
pub trait GatewayPort: Send + Sync + 'static {
    /// Sends to one token (`Ok`/`Buffered`; `NotFound` is an error here).
    fn send(&self, token: &str, event: Option<PortEvent<'_>>, close: bool) -> Result<SendStatus, PortError>;
    /// Publishes to a routing key; returns the number of streams matched.
    fn publish(&self, key: &str, event: Option<PortEvent<'_>>, close: bool) -> Result<usize, PortError>;
    /// The history's position (`None`: history off).
    fn history_position(&self) -> Option<String> {
        None
    }
}

/// A [`Broadcaster`] over a [`GatewayPort`]: every call is a function call,
/// broadcasts are one publish.
pub struct InProcessBroadcaster<P> {
    port: OnceLock<P>,
}

impl<P: GatewayPort> InProcessBroadcaster<P> {
    /// Wraps a gateway handle.
    pub fn new(port: P) -> Self {
        Self { port: OnceLock::from(port) }
    }

    /// A broadcaster whose handle is attached later (calls fail until then).
    pub fn deferred() -> Self {
        Self { port: OnceLock::new() }
    }

    /// Attaches the handle; false if one was already attached.
    pub fn attach(&self, port: P) -> bool {
        self.port.set(port).is_ok()
    }

    fn port(&self) -> Result<&P, BroadcastError> {
        self.port.get().ok_or_else(|| BroadcastError::Unreachable("in-process gateway not attached yet".into()))
    }
}

impl GatewayPort for sse_gateway::GatewayHandle {
    fn send(&self, token: &str, event: Option<PortEvent<'_>>, close: bool) -> Result<SendStatus, PortError> {
        let event = event.map(|e| sse_gateway::OutEvent { name: e.name, data: e.data });
        match sse_gateway::GatewayHandle::send(self, token, event, close) {
            Ok(sse_gateway::SendStatus::Ok) => Ok(SendStatus::Ok),
            Ok(sse_gateway::SendStatus::Buffered) => Ok(SendStatus::Buffered),
            Err(e) => Err(port_error(e)),
        }
    }

    fn publish(&self, key: &str, event: Option<PortEvent<'_>>, close: bool) -> Result<usize, PortError> {
        let event = event.map(|e| sse_gateway::OutEvent { name: e.name, data: e.data });
        sse_gateway::GatewayHandle::publish(self, key, event, close).map_err(port_error)
    }

    fn history_position(&self) -> Option<String> {
        sse_gateway::GatewayHandle::history_position(self)
    }
}

fn port_error(e: sse_gateway::DeliveryError) -> PortError {
    match e {
        sse_gateway::DeliveryError::NotFound => PortError::NotFound,
        sse_gateway::DeliveryError::InvalidEvent(m) => PortError::InvalidEvent(m),
        sse_gateway::DeliveryError::BufferFull => PortError::BufferFull,
        sse_gateway::DeliveryError::WriteFailed => PortError::WriteFailed,
        sse_gateway::DeliveryError::BrokerUnavailable => PortError::BrokerUnavailable,
    }
}

fn port_event(e: &Event) -> PortEvent<'_> {
    PortEvent { name: Some(e.name.as_str()).filter(|n| !n.is_empty()), data: &e.data }
}

fn map_err(e: PortError) -> BroadcastError {
    match e {
        PortError::NotFound => BroadcastError::Status { status: 404, body: "not found".into() },
        PortError::InvalidEvent(m) => BroadcastError::InvalidEvent(m),
        PortError::BufferFull => BroadcastError::BufferFull,
        PortError::WriteFailed => BroadcastError::WriteFailed,
        PortError::BrokerUnavailable => BroadcastError::Status { status: 503, body: "broker unavailable".into() },
    }
}

impl<P: GatewayPort> Broadcaster for InProcessBroadcaster<P> {
    fn send<'a>(
        &'a self,
        token: &'a str,
        event: Option<&'a Event>,
        close: bool,
    ) -> BoxFuture<'a, Result<SendStatus, BroadcastError>> {
        let result = self.port().and_then(|p| match p.send(token, event.map(port_event), close) {
            Err(PortError::NotFound) => Ok(SendStatus::NotFound),
            other => other.map_err(map_err),
        });
        Box::pin(async move { result })
    }

    fn publish<'a>(&'a self, key: &'a str, event: &'a Event) -> BoxFuture<'a, Result<PublishOutcome, BroadcastError>> {
        let result = self
            .port()
            .and_then(|p| p.publish(key, Some(port_event(event)), false).map(PublishOutcome::Matched).map_err(map_err));
        Box::pin(async move { result })
    }

    fn publishes(&self) -> bool {
        true
    }

    fn history_position(&self) -> BoxFuture<'_, Result<Option<String>, BroadcastError>> {
        let result = self.port().map(GatewayPort::history_position);
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::{AnswerMode, CallbackConfig};
    use crate::identity::IdentityResolver;
    use crate::testing::Recorder;
    use std::sync::Mutex;

    #[tokio::test]
    async fn in_process_hook_runs_the_callback_logic_and_answers_routing_fields() {
        let (_rec, cm) = Recorder::manager();
        let cfg = CallbackConfig { secret: None, answer: AnswerMode::Empty };
        let handler = Arc::new(CallbackHandler::new(cfg, cm.clone(), Arc::new(IdentityResolver::disabled())));
        let hook = InProcessHook::new(handler);
        let token = Uuid::new_v4();
        let req = ClientRequest { url: "/api/sse/stream?request_id=r1".into(), headers: vec![] };
        let accepted = hook.connect(token, &req).await.unwrap();
        assert_eq!(accepted.request_id.as_deref(), Some("r1"));
        assert_eq!(accepted.bindings, vec!["broadcast", "connection.r1", "subject.local-user"]);
        assert_eq!(cm.connection_info("r1").unwrap().token, token.to_string());
        let bad = ClientRequest { url: "/s?request_id=a:b".into(), headers: vec![] };
        assert_eq!(
            hook.connect(Uuid::new_v4(), &bad).await,
            Err(Refusal::Rejected { status: 400, message: "Invalid request_id format".into() })
        );
        hook.disconnect(token, DisconnectReason::ClientClosed, &req).await.unwrap();
        assert!(!cm.has_connection("r1"));
    }

    #[tokio::test]
    async fn in_process_hook_maps_the_token_exp_to_accepted_expires_at() {
        use crate::testing::{claims, oidc_resolver, sign};
        let (_rec, cm) = Recorder::manager();
        let cfg = CallbackConfig { secret: None, answer: AnswerMode::Empty };
        let hook = InProcessHook::new(Arc::new(CallbackHandler::new(cfg, cm, Arc::new(oidc_resolver()))));
        let c = claims("alice", 300);
        let exp = c["exp"].as_u64().unwrap();
        let headers = vec![("authorization".to_owned(), format!("Bearer {}", sign(c, "test-key-1")))];
        let req = ClientRequest { url: "/s?request_id=r1".into(), headers };
        let accepted = hook.connect(Uuid::new_v4(), &req).await.unwrap();
        assert_eq!(accepted.expires_at, Some(UNIX_EPOCH + Duration::from_secs(exp)));
        let anonymous = ClientRequest { url: "/s?request_id=r2".into(), headers: vec![] };
        assert_eq!(hook.connect(Uuid::new_v4(), &anonymous).await.unwrap().expires_at, None);
    }

    #[derive(Default)]
    struct FakePort {
        log: Mutex<Vec<String>>,
    }

    impl GatewayPort for Arc<FakePort> {
        fn send(&self, token: &str, event: Option<PortEvent<'_>>, close: bool) -> Result<SendStatus, PortError> {
            self.log.lock().unwrap().push(format!("send {token} {:?} {close}", event.map(|e| e.data.to_owned())));
            if token == "gone" { Err(PortError::NotFound) } else { Ok(SendStatus::Ok) }
        }
        fn publish(&self, key: &str, _event: Option<PortEvent<'_>>, _close: bool) -> Result<usize, PortError> {
            self.log.lock().unwrap().push(format!("publish {key}"));
            Ok(2)
        }
    }

    #[tokio::test]
    async fn in_process_broadcaster_publishes_broadcasts_and_maps_not_found() {
        let port = Arc::new(FakePort::default());
        let b = InProcessBroadcaster::new(Arc::clone(&port));
        let ev = Event { name: "n".into(), data: "{}".into() };
        assert!(b.publishes());
        assert_eq!(b.publish("broadcast", &ev).await, Ok(PublishOutcome::Matched(2)));
        assert_eq!(b.send("t1", Some(&ev), false).await, Ok(SendStatus::Ok));
        assert_eq!(b.send("gone", None, true).await, Ok(SendStatus::NotFound));
        assert_eq!(port.log.lock().unwrap().len(), 3);
    }
}
